"""Fault-test fixtures: a throwaway PostgreSQL cluster the tests may restart, and the invariant
every fault test ends with."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_until


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class Cluster:
    """A PostgreSQL server of our own on a free port, in a temporary directory."""

    def __init__(self, bin_dir: Path, data: Path, port: int, run_as: str | None) -> None:
        self.bin_dir, self.data, self.port, self.run_as = bin_dir, data, port, run_as
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=120)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200 -c fsync=off")
        self._run("pg_ctl", "-D", str(self.data / "db"), "-l", str(self.data / "server.log"),
                  "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data / "db"), "-m", mode, "-w", "stop")


@pytest.fixture
def pg_cluster() -> Iterator[Cluster]:
    """A fresh cluster per test, stopped and deleted afterwards (root runs it as ``postgres``,
    since PostgreSQL refuses to run as root)."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    run_as = "postgres" if os.geteuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="tailtune-pg-"))
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(data, pw.pw_uid, pw.pw_gid)
    cluster = Cluster(bin_dir, data, free_port(), run_as)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop("immediate")
        shutil.rmtree(data, ignore_errors=True)


def study_when(api: str, sid: int, *states: str, timeout_s: float = 300) -> dict:
    def check() -> dict | None:
        try:
            s = httpx.get(f"{api}/api/v1/studies/{sid}", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return None
        return s if s.get("state") in states else None

    return wait_until(check, timeout_s, f"study {sid} to reach {states}", interval_s=0.5)


def all_trials(api: str, sid: int) -> list[dict]:
    trials: list[dict] = []
    while True:
        page = httpx.get(f"{api}/api/v1/studies/{sid}/trials",
                         params={"offset": len(trials), "limit": 500}, timeout=30).json()
        trials += page["items"]
        if len(trials) >= page["total"]:
            return trials


def assert_every_trial_ended_once(api: str, sid: int, n_trials: int, logs: list[Path],
                                  study_name: str) -> list[dict]:
    """The promise: each asked trial ended (complete, pruned, or failed with a reason), none
    left queued or running, and each attempt ran on one worker once.

    A failed trial that was retried is replaced by its retry, so the trials that count are
    those no other trial retried; exactly ``n_trials`` of them.
    """
    trials = all_trials(api, sid)
    assert not [t for t in trials if t["state"] in ("waiting", "running")], trials
    retried = {t["retry_of"] for t in trials if t["retry_of"] is not None}
    final = [t for t in trials if t["number"] not in retried]
    assert len(final) == n_trials, (len(final), n_trials)
    for t in trials:
        if t["state"] == "fail":
            assert t["fail_reason"], t
        if t["number"] in retried:
            assert t["state"] == "fail", t
    started = Counter()
    for log in logs:
        for line in log.read_text().splitlines():
            if "tailtune.worker INFO trial " in line and f" of {study_name!r}:" in line:
                started[int(line.split("tailtune.worker INFO trial ")[1].split(" ")[0])] += 1
    assert set(started.values()) <= {1}, [n for n, c in started.items() if c > 1]
    assert {t["number"] for t in trials if t["state"] in ("complete", "pruned")} <= set(started)
    return trials
