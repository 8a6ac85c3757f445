"""How `tailtune serve` uses the machine: several processes (`--workers N`) over the one store,
and in each no more request threads than pooled connections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.app import connections_of
from service.cli import _settings_env
from service.settings import Settings
from tests.conftest import REPO, serving, tiny_spec


def test_the_settings_reach_every_process_through_the_environment(monkeypatch) -> None:
    settings = Settings(database_url="postgresql+psycopg://u@db/t", artifacts_dir="/srv/artifacts",
                        auth="token", host="0.0.0.0", port=9001, max_body_bytes=5000, dashboard=False)
    for key, value in _settings_env(settings).items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env() == settings


def test_no_more_request_threads_than_pooled_connections(storage_url, make_client) -> None:
    """A burst beyond the pool made threads wait for a connection until the pool's timeout
    (500s); the threads are limited to the pool instead."""
    import anyio.to_thread

    client = make_client(storage_url)
    capacity = connections_of(client.app.state.storage.engine)
    assert capacity == 15  # SQLAlchemy's QueuePool: 5 kept + 10 overflow
    with client:  # runs the app's lifespan
        tokens = client.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
    assert tokens == capacity


def test_zero_workers_is_refused() -> None:
    r = subprocess.run([sys.executable, "-m", "service.cli", "serve", "--workers", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "at least 1" in r.stderr


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
def test_two_processes_answer_from_one_store(storage_url: str, tmp_path: Path) -> None:
    with serving(storage_url, tmp_path, "--workers", "2", ready_timeout_s=90) as (api, proc):
        assert len(_children(proc.pid)) >= 2
        with httpx.Client(base_url=api, timeout=30) as client:
            sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=3)).json()["id"]
            for _ in range(10):  # new connections, spread over both processes
                with httpx.Client(base_url=api, timeout=30) as fresh:
                    study = fresh.get(f"/api/v1/studies/{sid}").json()
                    assert study["trials"]["waiting"] == 3 and study["name"] == "tiny"
