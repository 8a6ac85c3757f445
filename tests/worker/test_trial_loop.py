"""The worker loop in-process on a SQLite store: every trial ends once, with its reason."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

import worker.train
from search_spaces import make_storage, parse_spec, study_state, trial_counts
from search_spaces.store import ATTR_CANCELLED, StoreUnavailable
from service.studies import Principal, cancel_study, create_study, get_study
from tests.conftest import tiny_spec
from worker.trial_loop import Worker, WorkerConfig

LOCAL = Principal("local", "local")


def submit(url: str, **kw) -> int:
    return create_study(make_storage(url), parse_spec(tiny_spec(**kw)), LOCAL)


def new_worker(url: str, tmp_path, **kw) -> Worker:
    return Worker(WorkerConfig(storage_url=url, artifacts_dir=str(tmp_path / "artifacts"),
                               poll_interval_s=0.05, **kw))


def trials_of(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=make_storage(url)).get_trials()


def test_a_worker_runs_a_study_to_completion(sqlite_url, tmp_path) -> None:
    sid = submit(sqlite_url, n_trials=3)
    ran = new_worker(sqlite_url, tmp_path, worker_id="w1").run(exit_when_idle=True)
    assert ran == 3
    trials = trials_of(sqlite_url)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert 0.0 <= t.value <= 1.0
        assert t.user_attrs["worker"] == "w1"
        assert len(t.user_attrs["val_per_class_accuracy"]) == 4
        assert t.user_attrs["counts"]["train"] == [60, 27, 12, 6]
        assert sorted(t.intermediate_values) == [0, 1]
        assert t.params["loss"] in ("ce", "weighted_ce")
    storage = make_storage(sqlite_url)
    view = get_study(storage, sid, LOCAL)
    assert study_state(view.user_attrs, view.counts).value == "completed"


def test_a_failing_trial_is_recorded_with_its_reason_and_the_worker_goes_on(
        sqlite_url, tmp_path, monkeypatch) -> None:
    submit(sqlite_url, n_trials=3)
    real = worker.train.train_trial
    calls = {"n": 0}

    def flaky(spec, params, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise FileNotFoundError("data file x.npz is missing")
        return real(spec, params, **kw)

    monkeypatch.setattr(worker.train, "train_trial", flaky)
    assert new_worker(sqlite_url, tmp_path).run(exit_when_idle=True) == 3
    states = [t.state for t in trials_of(sqlite_url)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert trials_of(sqlite_url)[1].user_attrs["fail_reason"] == \
        "FileNotFoundError: data file x.npz is missing"


def test_a_non_finite_loss_fails_the_trial(sqlite_url, tmp_path, monkeypatch) -> None:
    submit(sqlite_url, n_trials=1)
    real_build = worker.train.build_loss

    def nan_loss(*a, **kw):
        inner = real_build(*a, **kw)
        return lambda logits, targets, **k: inner(logits, targets, **k) * math.nan

    monkeypatch.setattr(worker.train, "build_loss", nan_loss)
    new_worker(sqlite_url, tmp_path).run(exit_when_idle=True)
    (t,) = trials_of(sqlite_url)
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"].startswith("NonFiniteLoss: training loss is nan at epoch 0")


def test_cancellation_is_seen_between_epochs(sqlite_url, tmp_path, monkeypatch) -> None:
    sid = submit(sqlite_url, n_trials=3, epochs=4)
    real = worker.train.train_trial
    storage = make_storage(sqlite_url)

    def cancel_after_first_epoch(spec, params, on_epoch, **kw):
        def hook(epoch, value, metrics):
            if epoch == 0:
                cancel_study(storage, get_study(storage, sid, LOCAL), LOCAL)
            on_epoch(epoch, value, metrics)

        return real(spec, params, on_epoch=hook, **kw)

    monkeypatch.setattr(worker.train, "train_trial", cancel_after_first_epoch)
    new_worker(sqlite_url, tmp_path).run(exit_when_idle=True)
    trials = trials_of(sqlite_url)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert {t.user_attrs["fail_reason"] for t in trials} == {"StudyCancelled: study cancelled",
                                                             "study cancelled"}
    assert sorted(trials[0].intermediate_values) == [0]  # stopped after its first epoch
    assert storage.get_study_user_attrs(sid)[ATTR_CANCELLED] is True


def test_sigterm_fails_the_trial_between_epochs_and_queues_it_again(
        sqlite_url, tmp_path, monkeypatch) -> None:
    submit(sqlite_url, n_trials=2, epochs=3)
    w = new_worker(sqlite_url, tmp_path)
    real = worker.train.train_trial

    def stop_during_first_epoch(spec, params, on_epoch, **kw):
        def hook(epoch, value, metrics):
            w.stop_event.set()  # what the SIGTERM handler does
            on_epoch(epoch, value, metrics)

        return real(spec, params, on_epoch=hook, **kw)

    monkeypatch.setattr(worker.train, "train_trial", stop_during_first_epoch)
    assert w.run() == 1
    first = trials_of(sqlite_url)
    assert [t.state for t in first] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]
    assert "SIGTERM" in first[0].user_attrs["fail_reason"]
    assert first[2].params == first[0].params  # the copy runs the same point

    monkeypatch.setattr(worker.train, "train_trial", real)
    assert new_worker(sqlite_url, tmp_path).run(exit_when_idle=True) == 2
    counts = trial_counts(make_storage(sqlite_url))
    assert counts[1].complete == 2 and counts[1].fail == 1 and counts[1].waiting == 0


def test_a_cancelled_or_foreign_study_is_not_served(sqlite_url, tmp_path) -> None:
    submit(sqlite_url, n_trials=2)
    submit(sqlite_url, name="other", n_trials=1)
    w = new_worker(sqlite_url, tmp_path, studies=["other"])
    assert w.run(exit_when_idle=True) == 1
    assert [t.state for t in trials_of(sqlite_url)] == [TrialState.WAITING] * 2


def test_workers_share_out_studies_fairly(sqlite_url, tmp_path) -> None:
    submit(sqlite_url, name="a", n_trials=2)
    submit(sqlite_url, name="b", n_trials=2)
    w = new_worker(sqlite_url, tmp_path)
    w.run(max_trials=2)
    done = {name: sum(t.state == TrialState.COMPLETE for t in trials_of(sqlite_url, name))
            for name in ("a", "b")}
    assert done == {"a": 1, "b": 1}  # fewest running, then fewest started, goes first


def test_a_worker_refuses_a_store_that_does_not_exist(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'missing.db'}"
    with pytest.raises(StoreUnavailable, match="no tailtune store"):
        new_worker(url, tmp_path)
    assert not (tmp_path / "missing.db").exists()


def test_pictures_are_stored_as_artifacts_and_served_over_rest(sqlite_url, tmp_path, make_client) -> None:
    sid = submit(sqlite_url, n_trials=1)
    new_worker(sqlite_url, tmp_path).run(exit_when_idle=True)
    (t,) = trials_of(sqlite_url)
    metas = optuna.artifacts.get_all_artifact_meta(t, storage=make_storage(sqlite_url))
    assert sorted(m.filename for m in metas) == ["confusion_test.png", "per_class_test.png"]
    for m in metas:
        assert (tmp_path / "artifacts" / m.artifact_id).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = make_client(sqlite_url)  # its artifacts_dir is tmp_path / "artifacts" too
    listed = client.get(f"/api/v1/studies/{sid}/trials/0").json()["artifacts"]
    assert sorted(a["filename"] for a in listed) == ["confusion_test.png", "per_class_test.png"]
    png = client.get(listed[0]["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:4] == b"\x89PNG"
    assert client.get(f"/api/v1/studies/{sid}/trials/0/artifacts/{'0' * 36}").status_code == 404


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


@pytest.mark.parametrize(("loss", "expected_last_epoch"), [("ce", 1), ("influence_balanced", 3 + 2)])
def test_a_late_switching_loss_is_not_pruned_before_its_switch(
        sqlite_url, tmp_path, monkeypatch, loss, expected_last_epoch) -> None:
    """With a pruner that always says prune, plain CE stops at pruner.min_epochs (1), while
    influence-balanced (warm-up 0.5 of 6 epochs: switch at 3) runs until 2 epochs after it."""
    import worker.trial_loop

    monkeypatch.setattr(worker.trial_loop, "make_pruner", lambda spec: AlwaysPrune())
    submit(sqlite_url, n_trials=1, epochs=6, pruner={"name": "median", "min_epochs": 1},
           search_space={"loss": {loss: {}}})
    new_worker(sqlite_url, tmp_path).run(exit_when_idle=True)
    (t,) = trials_of(sqlite_url)
    assert t.state == TrialState.PRUNED
    assert max(t.intermediate_values) == expected_last_epoch
