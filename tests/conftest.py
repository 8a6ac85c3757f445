"""Shared fixtures: a fresh store per test (SQLite file or PostgreSQL database), tiny specs,
the API in-process, and helpers to run the API and workers as real processes."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

PG_ADMIN_URL = os.environ.get("TAILTUNE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REPO = Path(__file__).resolve().parents[1]


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def fresh_pg_database() -> Iterator[str]:
    """A new empty database on the test server, dropped afterwards."""
    import psycopg

    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL} (CI must start it)")
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
    name = f"tailtune_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test over the embedded SQLite store and over PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tailtune.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'tailtune.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database() as url:
        yield url


def tiny_spec(name: str = "tiny", n_trials: int = 4, epochs: int = 2, **overrides: Any) -> dict[str, Any]:
    """A study that trains in well under a second per trial on the CPU."""
    spec: dict[str, Any] = {
        "name": name,
        "dataset": {"name": "synthetic-lt", "imbalance_ratio": 10, "num_classes": 4, "n_max": 60,
                    "val_per_class": 10},
        "model": {"name": "mlp"},
        "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05, "warmup_epochs": 0,
                     "schedule": "constant"},
        "search_space": {"loss": {"ce": {}, "weighted_ce": {"power": {"low": 0.0, "high": 1.0}}}},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "budget": {"n_trials": n_trials},
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def make_client(tmp_path: Path):
    """Build an in-process API client for a store URL (and optional settings)."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    clients = []

    def make(url: str, **settings: Any) -> TestClient:
        s = Settings(database_url=url, artifacts_dir=str(tmp_path / "artifacts"), **settings)
        client = TestClient(create_app(s))
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tailtune(*args: str, env: dict[str, str] | None = None, log: Path | None = None,
             **popen: Any) -> subprocess.Popen:
    """Start ``tailtune ARGS`` as its own process (output to ``log`` when given)."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "service.cli", *args], cwd=REPO,
                            env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            **popen)


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}")


@contextlib.contextmanager
def serving(url: str, tmp_path: Path, *serve_args: str, ready_timeout_s: float = 60,
            **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``tailtune serve SERVE_ARGS`` on a free port; yields its base URL and process once
    /readyz answers, and stops it afterwards."""
    port = free_port()
    log = tmp_path / f"api-{port}.log"
    proc = tailtune("serve", "--storage", url, "--port", str(port), "--artifacts-dir",
                    str(tmp_path / "artifacts"), *serve_args, env=env, log=log)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the API exited: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, ready_timeout_s, "the API to answer /readyz")
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@contextlib.contextmanager
def running_api(url: str, tmp_path: Path, **env: str) -> Iterator[str]:
    """``tailtune serve`` on a free port; yields its base URL once /readyz answers."""
    with serving(url, tmp_path, **env) as (base, _):
        yield base
