"""Load benchmark of the service over one shared PostgreSQL store.

What it runs, in this order, against a real ``tailtune serve`` process (so every latency
includes HTTP, JSON and the store):

1. one study submitted over HTTP with ``--trials`` trials plus a reserve for step 4, all
   queued by the API as usual; ``--trials`` of them are then claimed (the atomic
   WAITING -> RUNNING update a worker makes), given parameters by ``suggest`` as a worker would,
   and finished with what a worker writes: metrics, per-class accuracies, confusion matrices,
   one value per epoch; some are pruned and some fail, as in a real study;
2. ``--clients`` concurrent clients for ``--duration`` seconds, each on its own keep-alive
   connection and cycling over the read routes without pause: the study summary, a page of 50
   trials, the best trial, the list of studies;
3. a burst of ``--submissions`` concurrent study submissions, then a check that each created
   exactly one study with all its trials queued;
4. with the API stopped, 1, then 8, then 32 (``--workers``) worker processes started together,
   each running ``--cycles`` ask-and-tell cycles on the big study through the worker's own
   claim path: the study loaded once per process with the spec's sampler and pruner on a
   ``ClaimOnlyStorage`` (as a worker keeps it), then per cycle ``Study.optimize(n_trials=1)``
   with an objective that calls ``suggest`` and returns a number: the worker's trial minus
   training.

It prints a markdown table (also written to ``--out``) and exits 1 on any error: a failed or
timed-out request, a submitted study missing or with the wrong trials, a failed cycle.
Without ``--storage`` it creates a throwaway PostgreSQL database and drops it at the end.

    tailtune bench service --out bench-service.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import platform
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search_spaces.optuna_space import make_pruner, make_sampler, suggest
from search_spaces.spec import StudySpec, parse_spec
from search_spaces.store import (
    ATTR_FAIL_REASON,
    ATTR_SPEC,
    ATTR_WORKER,
    NoQueuedTrial,
    make_storage,
    trial_counts,
)

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SUMMARY_TARGET_MS = 200.0
PAGE = 50
EPOCHS = 20
NUM_CLASSES = 10
FILL_THREADS = 4

# Route name -> path template; {id} is the big study, {offset} walks the trial pages.
ROUTES = {
    "summary": "/api/v1/studies/{id}",
    "trials page": "/api/v1/studies/{id}/trials?limit=" + str(PAGE) + "&offset={offset}",
    "best": "/api/v1/studies/{id}/best",
    "study list": "/api/v1/studies",
}


def study_body(name: str, n_trials: int) -> dict[str, Any]:
    """A realistic spec: every loss of the catalogue (14 baselines first), TPE, median pruning."""
    return {
        "name": name,
        "dataset": {"name": "digits-lt", "imbalance_ratio": 20, "seed": 0},
        "model": {"name": "small-cnn"},
        "training": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4,
                     "schedule": "cosine", "warmup_epochs": 1},
        "objective": {"metric": "val_balanced_accuracy", "direction": "maximize"},
        "search_space": "imbalance-losses",
        "sampler": {"name": "tpe", "seed": 0},
        "pruner": {"name": "median"},
        "budget": {"n_trials": n_trials},
        "baselines": True,
    }


# -- statistics ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Stats:
    """Latencies (seconds) of successful requests and the failures of one route or phase."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def fail(self, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(why)

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s else math.nan

    def ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "rps": self.rps, "p50_ms": self.ms(50),
                "p99_ms": self.ms(99), "errors": self.errors, "error_samples": self.error_samples}

    @staticmethod
    def merged(parts: list[Stats], elapsed_s: float) -> Stats:
        out = Stats(elapsed_s=elapsed_s)
        for p in parts:
            out.latencies += p.latencies
            out.errors += p.errors
            out.error_samples += p.error_samples[:5 - len(out.error_samples)]
        return out


# -- the store and the API process --------------------------------------------------------


@contextlib.contextmanager
def throwaway_database(admin_url: str) -> Iterator[str]:
    """A new empty PostgreSQL database on the server of ``admin_url``, dropped afterwards."""
    import psycopg

    name = f"tailtune_bench_{uuid.uuid4().hex[:12]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(plain, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = plain.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_errors(log: Path) -> list[str]:
    """The exceptions the API logged, most frequent first, as "count x exception: message"."""
    if not log.exists():
        return []
    pattern = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout)): (.*)$")
    seen = Counter(f"{m[1]}: {m[2][:200]}" for line in log.read_text(errors="replace").splitlines()
                   if (m := pattern.match(line)))
    return [f"{n} x {what}" for what, n in seen.most_common(5)]


def analyze(url: str) -> None:
    """Fresh planner statistics, as autovacuum keeps them on a store that grew over weeks.

    Without them PostgreSQL plans for the near-empty tables it last saw (and autovacuum may be
    off, as on the development machine), which here made a page of trials scan every attribute.
    """
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_api(url: str, workdir: Path, api_workers: int) -> Iterator[str]:
    """``tailtune serve`` as its own process on a free port; yields its base URL when ready."""
    port = _free_port()
    log = workdir / "api.log"
    cmd = [sys.executable, "-m", "service.cli", "serve", "--storage", url, "--port", str(port),
           "--artifacts-dir", str(workdir / "artifacts"), "--log-level", "warning"]
    if api_workers > 1:
        cmd += ["--workers", str(api_workers)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- step 1: a study with thousands of finished trials ------------------------------------


def _finished_attrs(rng: random.Random, value: float) -> dict[str, Any]:
    """The metrics a worker writes for a completed trial (see worker/train.py, worker/metrics.py)."""
    counts = [max(5, round(300 * 20 ** (-c / (NUM_CLASSES - 1)))) for c in range(NUM_CLASSES)]
    attrs: dict[str, Any] = {}
    for split in ("val", "test"):
        per_class = [round(min(1.0, max(0.0, value + rng.gauss(0, 0.08))), 6) for _ in counts]
        attrs[f"{split}_per_class_accuracy"] = per_class
        attrs[f"{split}_accuracy"] = min(1.0, value + 0.05)
        attrs[f"{split}_balanced_accuracy"] = sum(per_class) / len(per_class)
        attrs[f"{split}_macro_f1"] = value - 0.02
        for group in ("many_shot", "medium_shot", "few_shot", "head", "middle", "tail"):
            attrs[f"{split}_{group}_accuracy"] = min(1.0, max(0.0, value + rng.gauss(0, 0.1)))
        attrs[f"{split}_shot_classes"] = {"many": 3, "medium": 5, "few": 2}
        attrs[f"{split}_confusion"] = [[rng.randrange(40) for _ in counts] for _ in counts]
    attrs["counts"] = {"train": counts, "val": [30] * NUM_CLASSES, "test": [50] * NUM_CLASSES}
    attrs["wall_time_s"] = round(rng.uniform(20, 90), 3)
    return attrs


@dataclass
class Outcome:
    """What a worker would have written for one trial."""

    state: TrialState
    params: dict[str, Any]
    distributions: dict[str, BaseDistribution]
    attrs: dict[str, Any]
    curve: list[float]
    value: float | None = None


def _outcome(spec: StudySpec, mem: optuna.Study, fixed: dict[str, Any] | None, number: int) -> Outcome:
    """Parameters from ``suggest`` (on an in-memory study, honouring a baseline's fixed ones),
    then a mix of outcomes like a real study's: most complete, a quarter pruned, 5 % failed."""
    if fixed:
        mem.enqueue_trial(fixed)
    trial = mem.ask()
    params = suggest(trial, spec)
    rng = random.Random(number)
    value = min(0.95, max(0.2, 0.6 + rng.gauss(0, 0.1)))
    curve = [value * (1 - math.exp(-(e + 1) / 4)) for e in range(EPOCHS)]
    worker = f"gpu-node-{number % 8}:{4000 + number % 32}"
    attrs: dict[str, Any] = {ATTR_WORKER: worker, "device": "cuda:0", "loss_params": params.loss_params}
    out = Outcome(TrialState.COMPLETE, trial.params, trial.distributions, attrs, curve, value)
    if number % 20 == 19:
        out.state, out.curve, out.value = TrialState.FAIL, curve[:3], None
        attrs[ATTR_FAIL_REASON] = "NonFiniteLoss: the training loss is nan at epoch 3"
    elif number % 4 == 1:  # Optuna keeps a pruned trial's last epoch value as its value
        out.state, out.curve = TrialState.PRUNED, curve[:1 + number % (EPOCHS // 2)]
        out.value = out.curve[-1]
    else:
        attrs.update(_finished_attrs(rng, value))
    return out


def _write_rows(storage: RDBStorage, trial_id: int, out: Outcome) -> None:
    """Parameters, user attributes and epoch values of one trial in one transaction.

    Optuna writes each of them in a transaction of its own; a worker spreads those over minutes
    of training, but 2,000 trials' worth at that pace would make the set-up take longer than
    the measurements. The rows are Optuna's own (its models), as ``RDBStorage`` writes them.
    """
    from optuna.storages._rdb import models

    steps = models.TrialIntermediateValueModel
    params = [{"trial_id": trial_id, "param_name": name,
               "param_value": out.distributions[name].to_internal_repr(value),
               "distribution_json": distribution_to_json(out.distributions[name])}
              for name, value in out.params.items()]
    attrs = [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in out.attrs.items()]
    curve = []
    for step, v in enumerate(out.curve):
        stored, kind = steps.intermediate_value_to_stored_repr(v)
        curve.append({"trial_id": trial_id, "step": step, "intermediate_value": stored,
                      "intermediate_value_type": kind})
    with storage.engine.begin() as conn:
        for model, rows in ((models.TrialParamModel, params), (models.TrialUserAttributeModel, attrs),
                            (steps, curve)):
            if rows:
                conn.execute(sa.insert(model), rows)


def _finish_one(storage: RDBStorage, trial_id: int, number: int, out: Outcome) -> None:
    """Claim a queued trial (a worker's atomic WAITING -> RUNNING), write, end it."""
    if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
        raise RuntimeError(f"trial {number} was not queued")
    _write_rows(storage, trial_id, out)
    storage.set_trial_state_values(trial_id, out.state, None if out.value is None else [out.value])


def finish_trials(url: str, study_name: str, n: int) -> float:
    """End the first ``n`` queued trials of the study as workers would have; seconds taken."""
    started = time.perf_counter()
    storage = make_storage(url, worker=True)
    study_id = storage.get_study_id_from_name(study_name)
    spec = parse_spec(json.loads(storage.get_study_user_attrs(study_id)[ATTR_SPEC]))
    queued = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,))
    queued = sorted(queued, key=lambda t: t.number)[:n]
    mem = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    outcomes = [_outcome(spec, mem, t.system_attrs.get("fixed_params"), t.number) for t in queued]
    with ThreadPoolExecutor(FILL_THREADS) as pool:
        list(pool.map(lambda t, o: _finish_one(storage, t._trial_id, t.number, o), queued, outcomes))
    storage.engine.dispose()
    return time.perf_counter() - started


# -- step 2: read load --------------------------------------------------------------------


class KeepAliveClient:
    """One HTTP/1.1 keep-alive connection that sends GETs, as ``wrk`` or ``hey`` would.

    The load generator runs on the same cores as the API; httpx spends several milliseconds
    of CPU per request, which on two cores took a third of what the API could have had. This
    reads a response with a few buffered reads. A GET whose reused connection the server closed
    before any byte of the answer (its keep-alive timeout racing the request) is sent again
    on a new connection, as RFC 9110 allows for idempotent requests; ``resent`` counts them.
    """

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.resent = 0

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of ``GET path``."""
        reused = self.writer is not None
        try:
            try:
                return await asyncio.wait_for(self._exchange(path), self.timeout_s)
            except _ClosedBeforeAnswer:
                if not reused:
                    raise
                self.resent += 1
                return await asyncio.wait_for(self._exchange(path), self.timeout_s)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n\r\n".encode())
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (ConnectionResetError, BrokenPipeError):
            self.close()
            raise _ClosedBeforeAnswer from None
        except asyncio.IncompleteReadError as exc:
            self.close()
            if not exc.partial:
                raise _ClosedBeforeAnswer from None
            raise
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        if headers.get("transfer-encoding") == "chunked":
            body = await self._chunked()
        else:
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            self.close()
        return status, body

    async def _chunked(self) -> bytes:
        assert self.reader is not None
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await self.reader.readexactly(size + 2)
            if size == 0:
                return b"".join(parts)
            parts.append(chunk[:-2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _ClosedBeforeAnswer(ConnectionError):
    def __init__(self) -> None:
        super().__init__("the server closed the connection before answering")


async def read_load(base: str, study_id: int, n_trials: int, clients: int,
                    duration_s: float) -> tuple[dict[str, Stats], float, int]:
    """``clients`` concurrent clients, each on its own keep-alive connection and cycling over
    ``ROUTES`` until the time is up; (stats per route, seconds, requests sent again)."""
    names = list(ROUTES)
    stats = {name: Stats() for name in names}
    url = httpx.URL(base)
    conns = [KeepAliveClient(url.host, url.port or 80, timeout_s=60) for _ in range(clients)]
    for name in names:  # one untimed request per route: first-use costs are not load
        await conns[0].get(ROUTES[name].format(id=study_id, offset=0))
    started = time.perf_counter()
    deadline = started + duration_s

    async def one_client(i: int) -> None:
        k = i
        while time.perf_counter() < deadline:
            name = names[k % len(names)]
            path = ROUTES[name].format(id=study_id, offset=(k * PAGE) % max(1, n_trials))
            k += 1
            t0 = time.perf_counter()
            try:
                status, body = await conns[i].get(path)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                stats[name].fail(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if status != 200:
                stats[name].fail(f"{name}: HTTP {status}: {body[:200].decode(errors='replace')}")
            else:
                stats[name].latencies.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*(one_client(i) for i in range(clients)))
    finally:
        for c in conns:
            c.close()
    elapsed = time.perf_counter() - started
    for s in stats.values():
        s.elapsed_s = elapsed
    return stats, elapsed, sum(c.resent for c in conns)


# -- step 3: a burst of submissions -------------------------------------------------------


async def submission_burst(base: str, names: list[str], n_trials: int) -> Stats:
    """All of ``names`` submitted at once, one connection each."""
    stats = Stats()
    limits = httpx.Limits(max_connections=len(names), max_keepalive_connections=len(names))
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as client:

        async def submit(name: str) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post("/api/v1/studies", json=study_body(name, n_trials))
            except httpx.HTTPError as exc:
                stats.fail(f"{name}: {type(exc).__name__}: {exc}")
                return
            if r.status_code != 201:
                stats.fail(f"{name}: HTTP {r.status_code}: {r.text[:200]}")
            else:
                stats.latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(submit(n) for n in names))
        stats.elapsed_s = time.perf_counter() - started
    return stats


def check_submitted(url: str, names: list[str], n_trials: int) -> tuple[int, int, list[str]]:
    """(studies found with exactly ``n_trials`` queued trials, trials queued, problems)."""
    storage = make_storage(url)
    try:
        studies = {s.study_name: s for s in storage.get_all_studies()}
        found = [studies[n] for n in names if n in studies]
        counts = trial_counts(storage, [s._study_id for s in found])
    finally:
        storage.engine.dispose()
    problems = [f"study {n!r} was not created" for n in names if n not in studies]
    good, queued = 0, 0
    for s in found:
        c = counts.get(s._study_id)
        queued += c.waiting if c else 0
        if ATTR_SPEC not in s.user_attrs:
            problems.append(f"study {s.study_name!r} has no spec")
        elif c is None or c.waiting != n_trials or c.total != n_trials:
            problems.append(f"study {s.study_name!r} has {c} instead of {n_trials} queued trials")
        else:
            good += 1
    return good, queued, problems


# -- step 4: ask-and-tell cycles of concurrent workers ------------------------------------


def _objective(trial: optuna.Trial, spec: StudySpec) -> float:
    suggest(trial, spec)
    return random.Random(trial.number).uniform(0.2, 0.9)


def _cycle(study: optuna.Study, spec: StudySpec) -> float:
    """One worker trial minus training, timed: claim, suggest, tell."""
    t0 = time.perf_counter()
    study.optimize(lambda t: _objective(t, spec), n_trials=1, gc_after_trial=False)
    return time.perf_counter() - t0


def _worker_process(url: str, study_name: str, cycles: int, barrier: Any, results: Any) -> None:
    """A spawned worker: opens its store, reads the spec and loads the study (as a worker does
    once per study), waits for the others, then runs ``cycles`` timed cycles; puts (seconds per
    cycle, errors)."""
    _quiet()
    try:
        storage = make_storage(url, worker=True, create=False)
        spec = parse_spec(json.loads(storage.get_study_user_attrs(
            storage.get_study_id_from_name(study_name))[ATTR_SPEC]))
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=make_sampler(spec), pruner=make_pruner(spec))
        study.get_trials(deepcopy=False)  # the first look fills the cache, as a first trial does
    except Exception as exc:  # still meet the others at the barrier, and say why
        barrier.wait()
        results.put(([], [f"set-up: {type(exc).__name__}: {exc}"]))
        return
    barrier.wait()
    times: list[float] = []
    errors: list[str] = []
    for _ in range(cycles):
        try:
            times.append(_cycle(study, spec))
        except NoQueuedTrial as exc:
            errors.append(f"the queue ran dry: {exc}")
            break
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    storage.engine.dispose()
    results.put((times, errors))


@dataclass
class CycleStats:
    workers: int
    times: list[float]
    errors: list[str]
    wall_s: float
    finished_before: int

    def summary(self) -> dict[str, Any]:
        mean = sum(self.times) / len(self.times) if self.times else math.nan
        return {"workers": self.workers, "cycles": len(self.times), "mean_s": mean,
                "p50_s": percentile(self.times, 50), "p99_s": percentile(self.times, 99),
                "cycles_per_s": len(self.times) / self.wall_s if self.wall_s else math.nan,
                "errors": len(self.errors), "error_samples": self.errors[:5],
                "finished_trials_before": self.finished_before}


def worker_cycles(url: str, study_name: str, n_workers: int, cycles: int) -> CycleStats:
    """``n_workers`` spawned processes, started together once each has opened its store."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_workers + 1)
    results = ctx.Queue()
    storage = make_storage(url)
    study_id = storage.get_study_id_from_name(study_name)
    finished = trial_counts(storage, [study_id])[study_id].finished
    storage.engine.dispose()
    procs = [ctx.Process(target=_worker_process, args=(url, study_name, cycles, barrier, results),
                         daemon=True) for _ in range(n_workers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    times: list[float] = []
    errors: list[str] = []
    for _ in procs:
        t, e = results.get(timeout=1800)
        times += t
        errors += e
    wall = time.perf_counter() - started
    for p in procs:
        p.join(timeout=60)
    return CycleStats(n_workers, times, errors, wall, finished)


# -- the table ----------------------------------------------------------------------------


def _f(v: float, digits: int = 1) -> str:
    return "n/a" if v != v else f"{v:,.{digits}f}"


def render(r: dict[str, Any]) -> str:
    a = r["args"]
    lines = [
        f"### tailtune service under load: {a['trials']:,}-trial study, {a['clients']} clients, "
        f"{a['submissions']} submissions",
        "",
        f"store: {r['store']}; API: `tailtune serve` ({r['api_workers']} process"
        f"{'es' if r['api_workers'] > 1 else ''}) on this machine ({r['machine']}); "
        f"load average (1, 5, 15 min) at the start: {r['loadavg_start']}, at the end: {r['loadavg']}",
        "",
        f"Study: {a['trials']:,} finished trials ({r['fill']['complete']:,} complete, "
        f"{r['fill']['pruned']:,} pruned, {r['fill']['fail']:,} failed; metrics, per-class "
        f"accuracy, confusion matrices, {EPOCHS} epoch values each) + {r['reserve']} queued for "
        f"the worker phase; spec: imbalance-losses preset (14 losses), TPE, median pruner. "
        f"Set-up: submission {_f(r['fill']['submit_s'])} s, finishing trials "
        f"{_f(r['fill']['finish_s'])} s.",
        "",
        f"**Read load**: {a['clients']} concurrent clients for {_f(r['read']['elapsed_s'])} s, "
        "each on its own keep-alive connection, cycling over the four routes without pause"
        + (f"; {r['read']['resent']} GETs sent again after the server closed an idle connection"
           if r["read"]["resent"] else ""),
        "",
        "| route | requests | req/s | p50 ms | p99 ms | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, s in r["read"]["routes"].items():
        path = ROUTES.get(name, "all routes").replace("{offset}", "k")
        label = f"{name} `GET {path}`" if name in ROUTES else "**all**"
        lines.append(f"| {label} | {s['requests']:,} | {_f(s['rps'])} | {_f(s['p50_ms'])} | "
                     f"{_f(s['p99_ms'])} | {s['errors']} |")
    summary_p99 = r["read"]["routes"]["summary"]["p99_ms"]
    met = summary_p99 < SUMMARY_TARGET_MS
    lines += [
        "",
        f"Target p99 < {SUMMARY_TARGET_MS:.0f} ms for the study summary: "
        f"**{'met' if met else 'missed'}** ({_f(summary_p99)} ms).",
        "",
        f"**Submission burst**: {a['submissions']} concurrent `POST /api/v1/studies` "
        f"({a['submission_trials']} trials each)",
        "",
        "| submissions | req/s | p50 ms | p99 ms | errors | studies created, all trials queued | "
        "trials queued |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    b = r["burst"]
    lines.append(f"| {b['requests']} | {_f(b['rps'])} | {_f(b['p50_ms'])} | {_f(b['p99_ms'])} | "
                 f"{b['errors']} | {b['studies_ok']} of {a['submissions']} | {b['trials_queued']:,} |")
    lines += [
        "",
        "**Worker cycles** on the big study: `optimize(n_trials=1)` on the worker's long-lived "
        "study through `ClaimOnlyStorage` (claim, TPE suggestion, tell), no training; "
        f"{a['cycles']} timed cycles per worker process, all processes started together",
        "",
        "| concurrent workers | finished trials at start | cycles | mean s | p50 s | p99 s | "
        "cycles/s (all workers) | errors |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in r["cycles"]:
        lines.append(f"| {c['workers']} | {c['finished_trials_before']:,} | {c['cycles']} | "
                     f"{_f(c['mean_s'], 3)} | {_f(c['p50_s'], 3)} | {_f(c['p99_s'], 3)} | "
                     f"{_f(c['cycles_per_s'], 2)} | {c['errors']} |")
    lines += ["", f"errors in all: **{r['errors']}**", "", f"command: `{r['command']}`"]
    problems = r["burst"]["problems"] + [e for s in r["read"]["routes"].values()
                                         for e in s["error_samples"]]
    problems += [e for c in r["cycles"] for e in c["error_samples"]] + r["burst"]["error_samples"]
    if problems:
        lines += ["", "First errors:", ""] + [f"- {p}" for p in problems[:10]]
    if r["server_errors"]:
        lines += ["", "Exceptions in the API's log:", ""] + [f"- {e}" for e in r["server_errors"]]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected counts of at least 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="tailtune bench service", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--storage", default=None,
                    help="store URL to run against (a PostgreSQL URL; it is left in place). "
                         "Default: a throwaway database on --admin-url's server, dropped at the end")
    ap.add_argument("--admin-url", default=os.environ.get("TAILTUNE_BENCH_PG", DEFAULT_ADMIN_URL),
                    help="PostgreSQL server (and database to connect to) on which the throwaway "
                         f"database is created (env TAILTUNE_BENCH_PG; default {DEFAULT_ADMIN_URL})")
    ap.add_argument("--trials", type=int, default=2000, help="finished trials in the big study (2000)")
    ap.add_argument("--clients", type=int, default=50, help="concurrent read clients (50)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of read load (30)")
    ap.add_argument("--submissions", type=int, default=200,
                    help="concurrent study submissions in the burst (200)")
    ap.add_argument("--submission-trials", type=int, default=20,
                    help="trials per submitted study (20; at least the 14 baselines)")
    ap.add_argument("--workers", type=_positive_ints, default=[1, 8, 32],
                    help="concurrent worker processes of the ask-and-tell phases (1,8,32)")
    ap.add_argument("--cycles", type=int, default=3,
                    help="timed ask-and-tell cycles per worker process (3)")
    ap.add_argument("--api-workers", type=int, default=1,
                    help="processes of the API server (`tailtune serve --workers`; 1)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    ap.add_argument("--json", type=Path, help="also write every number measured here, as JSON")
    return ap


def _big_study(base: str, url: str, name: str, trials: int, reserve: int) -> tuple[int, dict[str, Any]]:
    """Step 1: submit over HTTP, then finish ``trials`` of the trials; (study id, set-up facts)."""
    print(f"[bench] API at {base}; submitting a study of {trials + reserve:,} trials", flush=True)
    t0 = time.perf_counter()
    resp = httpx.post(f"{base}/api/v1/studies", json=study_body(name, trials + reserve), timeout=1800)
    if resp.status_code != 201:
        raise RuntimeError(f"the big study was refused: {resp.status_code} {resp.text[:500]}")
    study_id = resp.json()["id"]
    submit_s = time.perf_counter() - t0
    print(f"[bench] finishing {trials:,} trials as workers would", flush=True)
    finish_s = finish_trials(url, name, trials)
    analyze(url)
    counts = httpx.get(f"{base}/api/v1/studies/{study_id}", timeout=60).json()["trials"]
    return study_id, {"submit_s": submit_s, "finish_s": finish_s, **counts}


def _serve_and_load(args: argparse.Namespace, url: str, workdir: Path, big: str, reserve: int,
                    r: dict[str, Any]) -> None:
    """Steps 1 to 3 against a ``tailtune serve`` of their own, results into ``r``."""
    with running_api(url, workdir, args.api_workers) as base:
        study_id, r["fill"] = _big_study(base, url, big, args.trials, reserve)
        print(f"[bench] read load: {args.clients} clients for {args.duration:g} s", flush=True)
        stats, elapsed, resent = asyncio.run(read_load(base, study_id, args.trials, args.clients,
                                                       args.duration))
        routes = {name: s.summary() for name, s in stats.items()}
        routes["all"] = Stats.merged(list(stats.values()), elapsed).summary()
        r["read"] = {"elapsed_s": elapsed, "routes": routes, "resent": resent}
        print(f"[bench] burst of {args.submissions} submissions", flush=True)
        names = [f"{big}-burst-{i:04d}" for i in range(args.submissions)]
        burst = asyncio.run(submission_burst(base, names, args.submission_trials))
        r["burst"] = {**burst.summary(), "names": names}
    r["server_errors"] = server_errors(workdir / "api.log")


def run(args: argparse.Namespace, url: str, command: str) -> dict[str, Any]:
    """Every step against the store at ``url``; the results as plain data."""
    run_id = uuid.uuid4().hex[:6]
    big = f"bench-{run_id}"
    reserve = sum(n * args.cycles for n in args.workers)
    r: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v)
                                  for k, v in vars(args).items()},
                         "command": command, "reserve": reserve, "api_workers": args.api_workers,
                         "loadavg_start": _loadavg()}
    with tempfile.TemporaryDirectory(prefix="tailtune-bench-") as tmp:
        _serve_and_load(args, url, Path(tmp), big, reserve, r)
    good, queued, problems = check_submitted(url, r["burst"]["names"], args.submission_trials)
    r["burst"].update(studies_ok=good, trials_queued=queued, problems=problems)

    r["cycles"] = []
    for n in args.workers:
        print(f"[bench] ask-and-tell: {n} worker process(es) x {args.cycles} cycles", flush=True)
        r["cycles"].append(worker_cycles(url, big, n, args.cycles).summary())
    r["store"] = _store_version(url)
    r["machine"] = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
                    f"{platform.python_version()}, Optuna {optuna.__version__}")
    r["loadavg"] = _loadavg()
    r["errors"] = (sum(s["errors"] for name, s in r["read"]["routes"].items() if name != "all")
                   + r["burst"]["errors"] + len(problems) + sum(c["errors"] for c in r["cycles"]))
    return r


def _loadavg() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def _quiet() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _store_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                version = conn.execute(sa.text("SHOW server_version")).scalar()
                return f"PostgreSQL {str(version).split()[0]}"
            return engine.dialect.name
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if min(args.trials, args.clients, args.submissions, args.cycles, args.api_workers) < 1 \
            or args.duration <= 0:
        print("tailtune bench service: counts and --duration must be positive", file=sys.stderr)
        return 2
    baselines = parse_spec(study_body("probe", 10_000)).n_baselines()
    for flag, value in (("--trials", args.trials), ("--submission-trials", args.submission_trials)):
        if value < baselines:
            print(f"tailtune bench service: {flag} must be at least {baselines} (the baseline "
                  "trials)", file=sys.stderr)
            return 2
    command = "tailtune bench service " + " ".join(argv)
    _quiet()
    with contextlib.ExitStack() as stack:
        url = args.storage or stack.enter_context(throwaway_database(args.admin_url))
        results = run(args, url, command.strip())
    table = render(results)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
