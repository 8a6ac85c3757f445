"""The store: a worker's storage claims queued trials and never creates new ones."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import make_storage, study_state, trial_counts
from search_spaces.store import ATTR_CANCELLED, NoQueuedTrial, StoreUnavailable, TrialCounts


def test_a_worker_storage_claims_queued_trials_and_never_creates_one(sqlite_url) -> None:
    api = optuna.create_study(study_name="s", storage=make_storage(sqlite_url))
    api.enqueue_trial({"x": 1.0})
    # optuna.load_study wraps the storage in its cache, which must not bypass the rule
    study = optuna.load_study(study_name="s", storage=make_storage(sqlite_url, worker=True))
    trial = study.ask()
    assert trial.suggest_float("x", 0, 2) == 1.0
    study.tell(trial, 0.5)
    with pytest.raises(NoQueuedTrial):
        study.ask()
    with pytest.raises(NoQueuedTrial):
        study.optimize(lambda t: 0.0, n_trials=1)
    assert len(api.get_trials()) == 1


def test_a_worker_storage_may_copy_a_trial(sqlite_url) -> None:
    study = optuna.create_study(study_name="s", storage=make_storage(sqlite_url, worker=True))
    study.enqueue_trial({"x": 1.0})  # a copy from a template, as retries are
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.WAITING]


def test_trial_counts_per_study_and_state(storage_url) -> None:
    storage = make_storage(storage_url)
    a = optuna.create_study(study_name="a", storage=storage)
    b = optuna.create_study(study_name="b", storage=storage)
    for _ in range(3):
        a.enqueue_trial({})
    a.tell(a.ask(), 1.0)
    a.tell(a.ask(), state=optuna.trial.TrialState.PRUNED)
    counts = trial_counts(storage)
    assert counts[a._study_id] == TrialCounts(waiting=1, complete=1, pruned=1)
    assert b._study_id not in counts
    assert trial_counts(storage, [b._study_id]) == {}
    assert trial_counts(storage, []) == {}


@pytest.mark.parametrize(
    ("attrs", "counts", "state"),
    [
        ({}, TrialCounts(waiting=3), "queued"),
        ({}, TrialCounts(waiting=2, running=1), "running"),
        ({}, TrialCounts(waiting=1, complete=1), "running"),
        ({}, TrialCounts(complete=2, fail=1), "completed"),
        ({}, TrialCounts(pruned=2), "completed"),
        ({}, TrialCounts(fail=3), "failed"),
        ({ATTR_CANCELLED: True}, TrialCounts(running=1, fail=2), "cancelled"),
    ],
)
def test_study_state_is_derived_from_the_trials(attrs, counts, state) -> None:
    assert study_state(attrs, counts).value == state


def test_an_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailable, match="cannot open the store at postgresql") as info:
        make_storage("postgresql+psycopg://nobody:secret@127.0.0.1:1/x", create=False)
    assert "secret" not in str(info.value)
