"""The store: a worker's storage claims queued trials and never creates new ones."""

from __future__ import annotations

import datetime as dt

import optuna
import pytest
import sqlalchemy as sa

from search_spaces import make_storage, study_state, trial_counts
from search_spaces.store import (
    ATTR_CANCELLED,
    NoQueuedTrial,
    StoreUnavailable,
    TrialCounts,
    is_transient_store_error,
    retry_store,
)


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


def test_a_running_trial_without_heartbeat_is_stale_after_the_grace_period(storage_url) -> None:
    """A worker that died between claiming a trial and its first heartbeat."""
    storage = make_storage(storage_url, worker=True, grace_period=60)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({})
    study.enqueue_trial({})
    old, fresh = (t._trial_id for t in study.get_trials())
    for trial_id in (old, fresh):
        assert storage.set_trial_state_values(trial_id, optuna.trial.TrialState.RUNNING)
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:  # it was claimed two minutes ago
        conn.execute(sa.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :id"),
                     {"t": dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=2),
                      "id": old})
    engine.dispose()
    assert storage._get_stale_trial_ids(study._study_id) == [old]
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states[:2] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING]
    assert states[2] == optuna.trial.TrialState.WAITING  # the retry callback queued a copy


def test_transient_store_errors_are_told_apart_and_retried() -> None:
    refused = sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = refused
    assert is_transient_store_error(refused) and is_transient_store_error(wrapped)
    assert not is_transient_store_error(sa.exc.IntegrityError("INSERT", {}, Exception("dup")))
    assert not is_transient_store_error(ValueError("bad"))

    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise wrapped
        return "written"

    assert retry_store(flaky, within_s=30, what="a test write") == "written"
    assert len(attempts) == 3
    with pytest.raises(ValueError):
        retry_store(lambda: (_ for _ in ()).throw(ValueError("bad")), within_s=30, what="x")
    attempts.clear()
    with pytest.raises(optuna.exceptions.StorageInternalError):
        retry_store(lambda: (attempts.append(1), (_ for _ in ()).throw(wrapped))[1], within_s=0.1,
                    what="x")
    assert len(attempts) == 1  # no time left for a second try


def test_the_heartbeat_survives_a_store_outage(sqlite_url, monkeypatch) -> None:
    storage = make_storage(sqlite_url, worker=True)
    study = optuna.create_study(study_name="s", storage=storage)
    study.enqueue_trial({})
    (trial,) = study.get_trials()

    def down(self, trial_id: int) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("server closed the connection"))

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", down)
    storage.record_heartbeat(trial._trial_id)  # logged, not raised

    def broken(self, trial_id: int) -> None:
        raise sa.exc.IntegrityError("UPDATE", {}, Exception("a real bug"))

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", broken)
    with pytest.raises(sa.exc.IntegrityError):
        storage.record_heartbeat(trial._trial_id)
