"""The `tailtune` command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import yaml

from tests.conftest import REPO, running_api, tiny_spec


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def test_help_lists_every_command() -> None:
    out = run_cli("--help").stdout
    for command in ("serve", "worker", "submit", "up", "token", "bench", "reproduce"):
        assert command in out


@pytest.mark.slow
def test_submit_yaml_then_a_worker_runs_it(sqlite_url, tmp_path) -> None:
    spec_file = tmp_path / "study.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec(n_trials=2)))
    with running_api(sqlite_url, tmp_path) as api:
        r = run_cli("submit", str(spec_file), "--api", api)
        assert r.returncode == 0, r.stderr
        assert "study 1 (tiny) queued: 2 trials" in r.stdout and "/dashboard/studies/1" in r.stdout
        w = run_cli("worker", "--storage", sqlite_url, "--device", "cpu", "--exit-when-idle",
                    "--poll-interval", "0.1", "--artifacts-dir", str(tmp_path / "artifacts"))
        assert w.returncode == 0, w.stderr
        assert httpx.get(f"{api}/api/v1/studies/1").json()["state"] == "completed"
        again = run_cli("submit", str(spec_file), "--api", api)
        assert again.returncode == 1 and "409" in again.stderr


def test_submit_refuses_an_invalid_file_before_sending_it(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_spec(), "model": {"name": "vit"}}))
    r = run_cli("submit", str(bad), "--api", "http://127.0.0.1:1")
    assert r.returncode == 2 and "model.name" in r.stderr and "unknown model 'vit'" in r.stderr


def test_a_worker_on_a_missing_store_says_so_and_writes_nothing(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'nothing.db'}"
    r = run_cli("worker", "--storage", url, "--device", "cpu")
    assert r.returncode == 2 and "no tailtune store" in r.stderr
    assert not (tmp_path / "nothing.db").exists()


def test_token_command_prints_a_usable_token(sqlite_url, make_client) -> None:
    r = run_cli("token", "--storage", sqlite_url, "--user", "ann", "--team", "vision")
    token = r.stdout.strip()
    assert r.returncode == 0 and token.startswith("tt_")
    client = make_client(sqlite_url, auth="token")
    assert client.get("/api/v1/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def _start_up(tmp_path):
    """``tailtune up`` on a free port and its own SQLite file; (process, API URL, log path)."""
    from tests.conftest import free_port, tailtune

    port = free_port()
    log = tmp_path / "up.log"
    proc = tailtune("up", "--port", str(port), "--device", "cpu", log=log,
                    env={"TAILTUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}",
                         "TAILTUNE_ARTIFACTS_DIR": str(tmp_path / "artifacts")})
    return proc, f"http://127.0.0.1:{port}", log


def _still_running(processes) -> list:
    import psutil

    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow
def test_up_serves_runs_the_example_and_stops_on_ctrl_c(tmp_path) -> None:
    """The README's first command: API + dashboard + a worker + the example study."""
    import signal

    import psutil

    from tests.conftest import wait_until

    proc, api, log = _start_up(tmp_path)
    try:
        wait_until(lambda: "tailtune is up" in log.read_text(), 120, "`tailtune up` to report")

        def a_trial_done() -> bool:
            (study,) = httpx.get(f"{api}/api/v1/studies", timeout=10).json()
            return study["name"] == "digits-lt-demo" and study["trials"]["complete"] >= 1

        wait_until(a_trial_done, 240, "the example study to complete a trial")
        assert httpx.get(f"{api}/dashboard", timeout=10).status_code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # the API and the worker
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{api}/healthz", timeout=2)
    assert not _still_running(children)


@pytest.mark.slow
def test_up_stopped_with_sigterm_stops_the_api_and_the_worker(tmp_path) -> None:
    """``docker stop`` or systemd end ``tailtune up`` with SIGTERM: nothing may stay behind."""
    import signal

    import psutil

    from tests.conftest import wait_until

    proc, _, log = _start_up(tmp_path)
    try:
        wait_until(lambda: "tailtune is up" in log.read_text(), 120, "`tailtune up` to report")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # the API and the worker
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
    left = _still_running(children)
    for c in left:
        c.kill()
    assert not left
