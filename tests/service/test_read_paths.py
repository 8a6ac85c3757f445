"""The read routes answer from Optuna's tables directly (a page of trials, the best trial, one
trial by number); these tests hold them to what Optuna's own storage API gives, over SQLite and
PostgreSQL."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search_spaces import make_storage
from service import studies as svc
from tests.conftest import tiny_spec


@pytest.fixture
def client(storage_url, make_client):
    return make_client(storage_url)


LOSS = CategoricalDistribution(["ce", "weighted_ce"])
POWER = FloatDistribution(0.0, 1.0)


def _finish(study: optuna.Study, loss: str, value: float | None,
            state: TrialState = TrialState.COMPLETE) -> int:
    """Claim the next queued trial, give it ``loss`` (and a power), end it."""
    t = study.ask()
    study._storage.set_trial_param(t._trial_id, "loss", LOSS.to_internal_repr(loss), LOSS)
    if loss == "weighted_ce":
        study._storage.set_trial_param(t._trial_id, "weighted_ce.power", 0.1 * t.number, POWER)
    # What a worker writes, among it what a trial page shows and what only one trial shows.
    for key, attr in (("val_balanced_accuracy", value), ("worker", "node:1"), ("device", "cpu"),
                      ("loss_params", {"power": 0.5}), ("test_per_class_accuracy", [0.5, None]),
                      ("val_confusion", [[3, 1], [0, 2]]), ("wall_time_s", 1.5)):
        t.set_user_attr(key, attr)
    t.report(0.25, 0)
    study.tell(t, value if state == TrialState.COMPLETE else None, state=state)
    return t.number


@pytest.fixture
def study_with_history(client, storage_url) -> tuple[int, optuna.Study]:
    """Trials 0-2 complete (1 and 2 tie for best), 3 failed and retried as 6 (a copy, with its
    parameters), 4-6 queued."""
    sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=6)).json()["id"]
    study = optuna.load_study(study_name="tiny", storage=make_storage(storage_url))
    _finish(study, "ce", 0.5)
    _finish(study, "weighted_ce", 0.9)
    _finish(study, "weighted_ce", 0.9)
    failed = _finish(study, "ce", None, TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study.trials[failed])
    return sid, study


def _expected_items(study: optuna.Study) -> list[dict]:
    """What the routes answered when they read every trial through Optuna."""
    trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
    retried = svc.retried_numbers(trials)
    return [svc.trial_dict(t, retried) for t in trials]


def test_pages_match_every_trial_read_through_optuna(client, study_with_history) -> None:
    sid, study = study_with_history
    everything = _expected_items(study)
    assert [t["number"] for t in everything] == list(range(7))
    full = client.get(f"/api/v1/studies/{sid}/trials").json()
    assert full["total"] == 7 and full["items"] == everything
    page = client.get(f"/api/v1/studies/{sid}/trials", params={"offset": 2, "limit": 3}).json()
    assert page["total"] == 7 and page["items"] == everything[2:5]
    beyond = client.get(f"/api/v1/studies/{sid}/trials", params={"offset": 50}).json()
    assert beyond["total"] == 7 and beyond["items"] == []
    assert "retried as trial 6" in everything[3]["fail_reason"] and everything[6]["retry_of"] == 3


@pytest.mark.parametrize(("query", "numbers"), [
    ({"state": "complete"}, [0, 1, 2]),
    ({"state": "waiting"}, [4, 5, 6]),
    ({"state": "fail"}, [3]),
    ({"loss": "weighted_ce"}, [1, 2]),
    ({"loss": "ce"}, [0, 3, 6]),
    ({"loss": "focal"}, []),
    ({"state": "complete", "loss": "ce", "limit": 1}, [0]),
])
def test_filters(client, study_with_history, query, numbers) -> None:
    sid, study = study_with_history
    by_number = {t["number"]: t for t in _expected_items(study)}
    r = client.get(f"/api/v1/studies/{sid}/trials", params=query).json()
    assert [t["number"] for t in r["items"]] == numbers
    assert r["items"] == [by_number[n] for n in numbers]
    assert r["total"] == len(numbers)


def test_one_trial_by_number(client, study_with_history) -> None:
    sid, _ = study_with_history
    t = client.get(f"/api/v1/studies/{sid}/trials/3").json()
    assert t["state"] == "fail" and "retried as trial 6" in t["fail_reason"]
    assert client.get(f"/api/v1/studies/{sid}/trials/6").json()["retry_of"] == 3
    assert client.get(f"/api/v1/studies/{sid}/trials/99").status_code == 404


def test_every_route_names_the_same_best_trial(client, study_with_history) -> None:
    sid, study = study_with_history
    summary = client.get(f"/api/v1/studies/{sid}").json()["best_trial"]
    listed = client.get("/api/v1/studies").json()[0]["best_trial"]
    best = client.get(f"/api/v1/studies/{sid}/best").json()
    assert summary == listed
    assert summary["number"] == best["number"] == 1  # 1 and 2 tie: the earliest
    assert summary["value"] == best["value"] == 0.9
    assert summary["params"] == best["params"] == {"loss": "weighted_ce", "weighted_ce.power": 0.1}


def test_best_trial_when_minimising_and_with_infinities(client, storage_url) -> None:
    spec = tiny_spec(name="low", n_trials=4, objective={"metric": "val_accuracy", "direction": "minimize"})
    sid = client.post("/api/v1/studies", json=spec).json()["id"]
    study = optuna.load_study(study_name="low", storage=make_storage(storage_url))
    _finish(study, "ce", 0.7)
    _finish(study, "ce", 0.3)
    _finish(study, "ce", math.inf)
    assert client.get(f"/api/v1/studies/{sid}").json()["best_trial"]["number"] == 1
    _finish(study, "weighted_ce", -math.inf)
    best = client.get(f"/api/v1/studies/{sid}").json()["best_trial"]
    assert best["number"] == 3 and best["value"] is None  # -inf, shown as null
    assert client.get(f"/api/v1/studies/{sid}/best").json()["number"] == 3


def test_no_best_trial_before_one_completes(client) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec()).json()["id"]
    assert client.get(f"/api/v1/studies/{sid}").json()["best_trial"] is None
    assert client.get(f"/api/v1/studies/{sid}/best").status_code == 404


def test_trials_load_as_optuna_builds_them(client, study_with_history, storage_url) -> None:
    _, study = study_with_history
    t = study.ask()
    t.report(math.inf, 0)
    t.report(-math.inf, 1)
    study.tell(t, math.inf)
    storage = make_storage(storage_url)
    expected = storage.get_all_trials(study._study_id)
    ids = [x._trial_id for x in expected]
    assert svc.load_trials(storage, ids) == expected
    assert svc.load_trials(storage, ids[2:4]) == expected[2:4]
    assert svc.load_trials(storage, []) == []
    light = svc.load_trials(storage, ids, steps=False, user_keys=svc.LIST_ATTRS)
    assert [x.intermediate_values for x in light] == [{}] * len(ids)
    assert [x.user_attrs for x in light] == [
        {k: v for k, v in x.user_attrs.items() if k in svc.LIST_ATTRS} for x in expected]
    assert "val_confusion" in expected[0].user_attrs and "val_confusion" not in light[0].user_attrs


def test_the_study_list_names_each_studys_own_best_trial(client, storage_url) -> None:
    """The list ranks every study's trials in one query per direction: each study gets the
    trial Optuna calls its best, a study without a completed trial gets none."""
    storage = make_storage(storage_url)
    low = tiny_spec(name="low", n_trials=3, objective={"metric": "val_accuracy", "direction": "minimize"})
    ids = {name: client.post("/api/v1/studies", json=spec).json()["id"]
           for name, spec in (("high", tiny_spec(name="high", n_trials=3)), ("low", low),
                              ("none-yet", tiny_spec(name="none-yet", n_trials=2)))}
    high = optuna.load_study(study_name="high", storage=storage)
    _finish(high, "ce", 0.4)
    _finish(high, "weighted_ce", math.inf)
    _finish(high, "ce", 0.8)
    low_study = optuna.load_study(study_name="low", storage=storage)
    _finish(low_study, "ce", 0.4)
    _finish(low_study, "weighted_ce", 0.2)
    _finish(low_study, "ce", 0.2)

    listed = {s["name"]: s["best_trial"] for s in client.get("/api/v1/studies").json()}
    assert listed["none-yet"] is None
    assert listed["high"]["number"] == high.best_trial.number == 1  # +inf beats 0.8
    assert listed["low"]["number"] == low_study.best_trial.number == 1  # ties: the earliest
    assert listed["low"]["params"] == {"loss": "weighted_ce", "weighted_ce.power": 0.1}
    for name in ("high", "low"):
        assert listed[name] == client.get(f"/api/v1/studies/{ids[name]}").json()["best_trial"]


def test_a_trial_is_read_again_until_it_finishes(client, storage_url) -> None:
    """Finished trials are answered from the API's memory: one read while running must not
    stand in for the finished trial, on a page or alone."""
    sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=2)).json()["id"]
    study = optuna.load_study(study_name="tiny", storage=make_storage(storage_url))
    t = study.ask()
    study._storage.set_trial_param(t._trial_id, "loss", LOSS.to_internal_repr("ce"), LOSS)
    page = client.get(f"/api/v1/studies/{sid}/trials").json()["items"]
    assert page[0]["state"] == "running" and page[0]["metrics"] == {}
    assert client.get(f"/api/v1/studies/{sid}/trials/0").json()["intermediate_values"] == {}
    t.set_user_attr("val_balanced_accuracy", 0.75)
    t.report(0.5, 0)
    study.tell(t, 0.75)
    for _ in range(2):  # the second read comes from memory
        done = client.get(f"/api/v1/studies/{sid}/trials").json()["items"][0]
        assert done["state"] == "complete" and done["value"] == 0.75
        assert done["metrics"] == {"val_balanced_accuracy": 0.75}
        whole = client.get(f"/api/v1/studies/{sid}/trials/0").json()
        assert whole["value"] == 0.75 and whole["intermediate_values"] == {"0": 0.5}
        assert client.get(f"/api/v1/studies/{sid}/best").json()["number"] == 0


def test_a_deleted_studys_trials_never_answer_for_a_new_one(client, storage_url) -> None:
    """SQLite may give a new study the ids of a deleted one's study and trials; what the API
    remembers of the old trials must not be shown as the new ones."""
    storage = make_storage(storage_url)
    seen = []
    for value in (0.25, 0.5):
        sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=1)).json()["id"]
        _finish(optuna.load_study(study_name="tiny", storage=storage), "ce", value)
        items = client.get(f"/api/v1/studies/{sid}/trials").json()["items"]
        seen.append((sid, items[0]["value"], client.get(f"/api/v1/studies/{sid}/best").json()["value"]))
        assert client.delete(f"/api/v1/studies/{sid}").status_code == 204
    assert [(v, b) for _, v, b in seen] == [(0.25, 0.25), (0.5, 0.5)]
