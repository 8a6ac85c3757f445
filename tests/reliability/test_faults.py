"""Faults: killed workers, a restarted API and database, many workers, failing trials, wrong
stores. Each test ends with the promise itself: every asked trial ended once, with a reason
when it failed."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from search_spaces.store import make_storage, trial_counts
from tests.conftest import running_api, tailtune, tiny_spec, wait_until
from tests.reliability.conftest import assert_every_trial_ended_once, study_when

pytestmark = [pytest.mark.slow]

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def fast(tmp_path: Path) -> list[str]:
    """Worker options for tests: look for work often; a lost worker is noticed in 3 s."""
    return ["--device", "cpu", "--poll-interval", "0.1", "--heartbeat-interval", "1",
            "--grace-period", "3", "--artifacts-dir", str(tmp_path / "artifacts")]


# Where no worker is killed: a heartbeat starved by 32 processes on two cores must not make a
# live trial look lost (it would be retried: the promise holds, but the counts below are exact).
PATIENT = ("--heartbeat-interval", "2", "--grace-period", "120")


@contextlib.contextmanager
def workers(n: int, url: str, tmp_path: Path, *extra: str, name: str = "worker") -> Iterator[list]:
    """``n`` worker processes; each is killed on the way out if it is still running."""
    (tmp_path / "workers").mkdir(exist_ok=True)
    procs = [tailtune("worker", "--storage", url, *fast(tmp_path), *extra, env=ONE_THREAD,
                      log=tmp_path / "workers" / f"{name}{i}.log") for i in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)


def logs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "workers").glob("*.log"))


def submit(api: str, spec: dict) -> int:
    r = httpx.post(f"{api}/api/v1/studies", json=spec, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def counts(api: str, sid: int) -> dict[str, int]:
    return httpx.get(f"{api}/api/v1/studies/{sid}", timeout=30).json()["trials"]


def training(api: str, sid: int) -> bool:
    """A trial is RUNNING with its parameters suggested (a claimed trial has none yet)."""
    running = httpx.get(f"{api}/api/v1/studies/{sid}/trials", params={"state": "running"},
                        timeout=30).json()["items"]
    return any(t["params"] for t in running)


def long_spec(name: str, n_trials: int, epochs: int = 30) -> dict:
    """Trials of a few seconds each, so that faults land mid-trial."""
    spec = tiny_spec(name=name, n_trials=n_trials, epochs=epochs)
    spec["dataset"]["n_max"] = 400
    return spec


@pytest.mark.postgres
def test_a_killed_workers_trial_is_failed_retried_and_the_study_completes(pg_url, tmp_path) -> None:
    """SIGKILL mid-trial: within the grace period the next worker fails the trial, Optuna
    queues a copy, and the study ends with every asked trial done once."""
    with running_api(pg_url, tmp_path) as api:
        sid = submit(api, long_spec("kill", n_trials=3, epochs=40))
        with workers(1, pg_url, tmp_path, name="victim") as (victim,):
            wait_until(lambda: training(api, sid), 120, "the victim to be training a trial")
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=30)
        with workers(1, pg_url, tmp_path, "--exit-when-idle", name="survivor") as (survivor,):
            done = study_when(api, sid, "completed", "failed")
            assert survivor.wait(timeout=120) == 0
        assert done["state"] == "completed"
        assert done["trials"] == {"waiting": 0, "running": 0, "complete": 3, "pruned": 0, "fail": 1}
        trials = assert_every_trial_ended_once(api, sid, 3, logs(tmp_path), "kill")
        (failed,) = [t for t in trials if t["state"] == "fail"]
        assert "heartbeat" in failed["fail_reason"] and "retried as trial 3" in failed["fail_reason"]
        retry = next(t for t in trials if t["number"] == 3)
        assert retry["retry_of"] == failed["number"] and retry["params"] == failed["params"]
        assert retry["state"] == "complete"


@pytest.mark.postgres
def test_workers_carry_on_while_the_api_restarts_and_nothing_is_lost(pg_url, tmp_path) -> None:
    spec = long_spec("api-restart", n_trials=6, epochs=10)
    with running_api(pg_url, tmp_path) as api:
        sid = submit(api, spec)
        before = httpx.get(f"{api}/api/v1/studies/{sid}", timeout=30).json()
    # The API is gone; the workers only need the store.
    with workers(2, pg_url, tmp_path, *PATIENT) as procs:
        storage = make_storage(pg_url)
        wait_until(lambda: trial_counts(storage, [sid])[sid].complete >= 2, 240,
                   "trials to complete while the API is down")
        with running_api(pg_url, tmp_path) as api:
            after = httpx.get(f"{api}/api/v1/studies/{sid}", timeout=30).json()
            assert after["spec"] == before["spec"] and after["n_trials"] == 6
            assert after["trials"]["complete"] >= 2
            other = submit(api, tiny_spec(name="after-restart", n_trials=2, epochs=1))
            done = study_when(api, sid, "completed", "failed")
            study_when(api, other, "completed", "failed")
            for p in procs:
                p.terminate()
                assert p.wait(timeout=120) == 0
            assert done["state"] == "completed"
            assert done["trials"]["complete"] == 6
            assert_every_trial_ended_once(api, sid, 6, logs(tmp_path), "api-restart")
            assert_every_trial_ended_once(api, other, 2, logs(tmp_path), "after-restart")


def test_a_postgres_restart_mid_study_is_survived(pg_cluster, tmp_path) -> None:
    """A throwaway cluster is stopped and started while trials run: the API answers 503 in
    between, then both it and the workers reconnect and the study completes."""
    url = pg_cluster.url
    with running_api(url, tmp_path) as api:
        sid = submit(api, long_spec("pg-restart", n_trials=4, epochs=300))
        with workers(2, url, tmp_path, "--exit-when-idle", *PATIENT) as procs:
            wait_until(lambda: counts(api, sid)["running"] == 2, 240, "both workers to run a trial")
            pg_cluster.stop("fast")
            down = httpx.get(f"{api}/api/v1/studies/{sid}", timeout=30)
            assert down.status_code == 503, down.text
            assert "store" in down.json()["detail"]
            assert httpx.get(f"{api}/readyz", timeout=30).status_code == 503
            wait_until(lambda: "unavailable" in "".join(p.read_text() for p in logs(tmp_path)), 60,
                       "the workers to run into the outage")
            pg_cluster.start()
            done = study_when(api, sid, "completed", "failed")
            for p in procs:
                assert p.wait(timeout=120) == 0
        assert httpx.get(f"{api}/readyz", timeout=30).status_code == 200
        assert done["state"] == "completed"
        trials = assert_every_trial_ended_once(api, sid, 4, logs(tmp_path), "pg-restart")
        assert sum(t["state"] == "complete" for t in trials) == 4


def test_four_workers_on_sqlite_never_see_a_locked_database(sqlite_url, tmp_path) -> None:
    with running_api(sqlite_url, tmp_path) as api:
        sid = submit(api, tiny_spec(name="sqlite-4", n_trials=24, epochs=1))
        with workers(4, sqlite_url, tmp_path, "--exit-when-idle", *PATIENT) as procs:
            done = study_when(api, sid, "completed", "failed")
            for p in procs:
                assert p.wait(timeout=120) == 0
        trials = assert_every_trial_ended_once(api, sid, 24, logs(tmp_path), "sqlite-4")
        assert done["trials"]["complete"] == 24, [t["fail_reason"] for t in trials]
        assert len({t["worker"] for t in trials}) >= 2  # they really shared the study
        text = "".join(p.read_text() for p in logs(tmp_path))
        assert "locked" not in text and "Traceback" not in text


@pytest.mark.timeout(900)  # 32 processes each import torch on two cores before their first trial
def test_thirty_two_workers_run_exactly_the_asked_trials(pg_cluster, tmp_path) -> None:
    url = pg_cluster.url
    n = 64
    with running_api(url, tmp_path) as api:
        sid = submit(api, tiny_spec(name="crowd", n_trials=n, epochs=1))
        with workers(32, url, tmp_path, "--exit-when-idle", *PATIENT) as procs:
            done = study_when(api, sid, "completed", "failed", timeout_s=600)
            for p in procs:
                assert p.wait(timeout=300) == 0
        assert done["trials"] == {"waiting": 0, "running": 0, "complete": n, "pruned": 0, "fail": 0}
        trials = assert_every_trial_ended_once(api, sid, n, logs(tmp_path), "crowd")
        assert sorted(t["number"] for t in trials) == list(range(n))  # no extra trial was made
        assert len({t["worker"] for t in trials}) >= 8


def test_failing_trials_end_with_their_reason_and_the_worker_goes_on(sqlite_url, tmp_path,
                                                                      monkeypatch) -> None:
    """A real missing data file, an injected out-of-memory error, and a loss that turns NaN."""
    import math

    import torch

    import worker.train
    from search_spaces import parse_spec
    from service.studies import Principal, create_study
    from worker.trial_loop import Worker, WorkerConfig

    storage = make_storage(sqlite_url)
    who = Principal("local", "local")
    missing = tiny_spec(name="missing-data", n_trials=1)
    missing["dataset"] = {"name": "npz", "file": "absent.npz"}
    create_study(storage, parse_spec(missing), who)
    faults = create_study(storage, parse_spec(tiny_spec(name="faults", n_trials=4)), who)

    real_train, real_build = worker.train.train_trial, worker.train.build_loss
    calls: list[str] = []

    def nan_loss(*a, **kw):
        inner = real_build(*a, **kw)
        return lambda logits, targets, **k: inner(logits, targets, **k) * math.nan

    def injected(spec, params, **kw):
        calls.append(spec.name)
        nth = calls.count("faults")
        if spec.name == "faults" and nth == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if spec.name == "faults" and nth == 2:
            monkeypatch.setattr(worker.train, "build_loss", nan_loss)
            try:
                return real_train(spec, params, **kw)
            finally:
                monkeypatch.setattr(worker.train, "build_loss", real_build)
        return real_train(spec, params, **kw)

    monkeypatch.setattr(worker.train, "train_trial", injected)
    config = WorkerConfig(storage_url=sqlite_url, data_root=str(tmp_path / "data"),
                          artifacts_dir=str(tmp_path / "artifacts"), poll_interval_s=0.05)
    assert Worker(config).run(exit_when_idle=True) == 5

    import optuna

    (lost,) = optuna.load_study(study_name="missing-data", storage=storage).trials
    assert lost.state.name == "FAIL"
    assert lost.user_attrs["fail_reason"].startswith("DataMissing: npz file not found")
    trials = optuna.load_study(study_name="faults", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "NonFiniteLoss" in trials[1].user_attrs["fail_reason"]
    assert trial_counts(storage, [faults])[faults].total == 4


def _dump(url: str) -> dict[str, list]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
                    for t in sa.inspect(conn).get_table_names()}
    finally:
        engine.dispose()


@pytest.mark.parametrize("revision", ["v3.0.0.a", "v99.0.0.z"], ids=["older", "newer"])
def test_a_worker_refuses_a_store_of_another_schema_and_writes_nothing(storage_url, tmp_path,
                                                                        revision) -> None:
    make_storage(storage_url).engine.dispose()
    engine = sa.create_engine(storage_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
    engine.dispose()
    before = _dump(storage_url)
    proc = tailtune("worker", "--storage", storage_url, *fast(tmp_path), log=tmp_path / "w.log")
    assert proc.wait(timeout=120) == 2
    message = (tmp_path / "w.log").read_text()
    assert "schema" in message and "Traceback" not in message
    assert _dump(storage_url) == before


def test_a_worker_refuses_an_unreachable_or_empty_store(tmp_path, pg_url) -> None:
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    empty_before = _dump(pg_url)
    for i, url in enumerate((unreachable, pg_url, f"sqlite:///{tmp_path / 'absent.db'}")):
        proc = tailtune("worker", "--storage", url, *fast(tmp_path), log=tmp_path / f"w{i}.log")
        assert proc.wait(timeout=120) == 2, url
        message = (tmp_path / f"w{i}.log").read_text()
        assert "tailtune worker:" in message and "Traceback" not in message, message
    assert "cannot open the store at postgresql+psycopg://postgres@127.0.0.1:1" in \
        (tmp_path / "w0.log").read_text()
    assert _dump(pg_url) == empty_before == {}
    assert not (tmp_path / "absent.db").exists()
