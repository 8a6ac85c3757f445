"""Submit over HTTP, two worker processes on PostgreSQL, results over REST and the dashboard.

Faults (killed workers, restarts, many workers) are in ``tests/reliability``."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from tests.conftest import running_api, tailtune, tiny_spec, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

THREE_LOSSES = {"loss": {"ce": {}, "focal": {"gamma": {"low": 0.0, "high": 3.0}},
                         "weighted_ce": {"power": {"low": 0.0, "high": 1.0}}}}


def study_when(api: str, sid: int, *states: str, timeout_s: float = 240) -> dict:
    def check() -> dict | None:
        s = httpx.get(f"{api}/api/v1/studies/{sid}", timeout=10).json()
        return s if s["state"] in states else None

    return wait_until(check, timeout_s, f"study {sid} to reach {states}", interval_s=0.5)


def test_two_workers_complete_a_study_each_trial_once(pg_url, tmp_path) -> None:
    with running_api(pg_url, tmp_path) as api:
        spec = tiny_spec(name="e2e", n_trials=6, epochs=3, search_space=THREE_LOSSES, baselines=True)
        r = httpx.post(f"{api}/api/v1/studies", json=spec, timeout=30)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        workers = [tailtune("worker", "--storage", pg_url, "--device", "cpu", "--exit-when-idle",
                            "--poll-interval", "0.2", "--artifacts-dir", str(tmp_path / "artifacts"),
                            log=tmp_path / f"worker{i}.log") for i in range(2)]
        try:
            done = study_when(api, sid, "completed", "failed")
            for w in workers:
                assert w.wait(timeout=120) == 0
        finally:
            for w in workers:
                w.kill()
        assert done["state"] == "completed"
        assert done["trials"] == {"waiting": 0, "running": 0, "complete": 6, "pruned": 0, "fail": 0}

        items = httpx.get(f"{api}/api/v1/studies/{sid}/trials", timeout=10).json()["items"]
        assert sorted(t["number"] for t in items) == list(range(6))
        assert {t["loss"] for t in items} == {"ce", "focal", "weighted_ce"}
        assert all(t["metrics"]["val_balanced_accuracy"] is not None for t in items)
        runs = Counter(t["worker"] for t in items)
        assert sum(runs.values()) == 6 and all(w for w in runs)  # each trial ran on one worker
        logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
        started = Counter(line.split("trial ")[1].split(" ")[0] for line in logs.splitlines()
                          if "tailtune.worker INFO trial " in line and " of 'e2e'" in line)
        assert sorted(started) == [str(n) for n in range(6)] and set(started.values()) == {1}

        dash = httpx.get(f"{api}/api/studies/{sid}", timeout=10).json()
        assert len(dash["trials"]) == 6
        assert {t["state"] for t in dash["trials"]} == {"Complete"}
        best = httpx.get(f"{api}/api/v1/studies/{sid}/best", timeout=10).json()
        assert best["value"] == max(t["value"] for t in items)
