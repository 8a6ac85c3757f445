"""The ``tailtune`` command line.

``serve`` runs the API with the dashboard, ``worker`` runs trials, ``submit`` sends a spec,
``up`` runs all of it locally on the embedded SQLite store. Worker-side commands import the
worker package (and torch) only when they run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from importlib import resources
from typing import Any

import httpx
from optuna.exceptions import ExperimentalWarning

from search_spaces.store import DEFAULT_URL, StoreUnavailable

DEFAULT_API = "http://127.0.0.1:8000"


def _storage_default() -> str:
    return os.environ.get("TAILTUNE_DATABASE_URL", DEFAULT_URL)


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None,
                   help=f"store URL (env TAILTUNE_DATABASE_URL; default {DEFAULT_URL})")


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings.from_env(database_url=args.storage, host=args.host, port=args.port,
                                 artifacts_dir=args.artifacts_dir)
    app = create_app(settings)  # opens the store (and creates its tables) once, before any worker
    print(f"tailtune API on http://{settings.host}:{settings.port}/api/v1 "
          f"(docs /docs, dashboard /dashboard), store {settings.database_url}"
          + (f", {args.workers} processes" if args.workers > 1 else ""), flush=True)
    if args.workers == 1:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
        return 0
    # Each process builds its own app from the environment (uvicorn imports the factory by
    # name), so the settings resolved here are handed down through it.
    app.state.storage.engine.dispose()
    os.environ.update(_settings_env(settings))
    uvicorn.run("service.app:create_app", factory=True, workers=args.workers, host=settings.host,
                port=settings.port, log_level=args.log_level)
    return 0


def _settings_env(settings: Any) -> dict[str, str]:
    """``TAILTUNE_*`` variables from which ``Settings.from_env`` gives back ``settings``."""
    from dataclasses import fields

    out = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        if value is not None:
            out[f"TAILTUNE_{f.name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.trial_loop import Worker, WorkerConfig

    if args.gpus == "all":
        return _spawn_per_gpu(args)
    storage = args.storage or _storage_default()
    config = WorkerConfig(
        storage_url=storage, device=_resolve_device(args.device), studies=args.studies,
        data_root=args.data_root or os.environ.get("TAILTUNE_DATA_ROOT"),
        artifacts_dir=args.artifacts_dir or os.environ.get("TAILTUNE_ARTIFACTS_DIR", "artifacts"),
        poll_interval_s=args.poll_interval, heartbeat_interval_s=args.heartbeat_interval,
        grace_period_s=args.grace_period,
    )
    try:
        worker = Worker(config)
    except StoreUnavailable as exc:
        print(f"tailtune worker: {exc}", file=sys.stderr)
        return 2
    worker.install_signal_handlers()
    worker.run(max_trials=args.max_trials, exit_when_idle=args.exit_when_idle)
    return 0


def _spawn_per_gpu(args: argparse.Namespace) -> int:
    import torch

    n = torch.cuda.device_count()
    if n == 0:
        print("tailtune worker: --gpus all but no GPU is visible", file=sys.stderr)
        return 2
    argv = [a for a in sys.argv[1:] if a not in ("--gpus", "all")]
    procs = [subprocess.Popen([sys.executable, "-m", "service.cli", *argv, "--device", f"cuda:{i}"])
             for i in range(n)]

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(p.wait() for p in procs)


def _client(args: argparse.Namespace) -> httpx.Client:
    token = args.token or os.environ.get("TAILTUNE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.api, headers=headers, timeout=30)


def _load_body(path: str) -> dict[str, Any]:
    from search_spaces.spec import load_spec

    spec = load_spec(path)  # validate here first: errors point at the file, not at HTTP
    return json.loads(spec.model_dump_json())


def cmd_submit(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        body = _load_body(args.file)
    except ValidationError as exc:
        print(f"{args.file}: invalid spec\n{exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        try:
            r = client.post("/api/v1/studies", json=body)
        except httpx.HTTPError as exc:
            print(f"cannot reach the API at {args.api}: {exc}", file=sys.stderr)
            return 2
        if r.status_code != 201:
            print(f"rejected ({r.status_code}): {r.text}", file=sys.stderr)
            return 1
        study = r.json()
        print(f"study {study['id']} ({study['name']}) {study['state']}: {study['n_trials']} trials")
        print(f"  REST      {args.api}{study['links']['self']}")
        print(f"  dashboard {args.api}{study['links']['dashboard']}")
        if args.wait:
            return _wait(client, study["id"])
    return 0


def _wait(client: httpx.Client, study_id: int) -> int:
    """Show progress until the study ends."""
    last = None
    while True:
        s = client.get(f"/api/v1/studies/{study_id}").json()
        t = s["trials"]
        line = (f"{s['state']}: {t['complete']} complete, {t['pruned']} pruned, {t['fail']} failed, "
                f"{t['running']} running, {t['waiting']} queued")
        if s.get("best_trial"):
            line += f"; best {s['best_trial']['value']:.4f} (trial {s['best_trial']['number']})"
        if line != last:
            print(line, flush=True)
            last = line
        if s["state"] in ("completed", "failed", "cancelled"):
            return 0 if s["state"] == "completed" else 1
        time.sleep(2)


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_up(args: argparse.Namespace) -> int:
    """Everything on one machine: API + dashboard + one worker on the SQLite store."""
    # SIGTERM (``docker stop``, systemd, ``kill``) stops the API and the worker as Ctrl-C does,
    # instead of ending this process alone and leaving them running.
    signal.signal(signal.SIGTERM, _interrupt)
    storage = args.storage or _storage_default()
    env = {**os.environ, "TAILTUNE_DATABASE_URL": storage}
    api = f"http://127.0.0.1:{args.port}"
    serve = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(args.port)],
                             env=env)
    children = [serve]
    try:
        if not _wait_ready(api, serve):
            print("the API did not start; see its output above", file=sys.stderr)
            return 1
        children.append(subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--device", args.device], env=env))
        example = resources.files("search_spaces") / "examples" / "digits-lt.yaml"
        sub = argparse.Namespace(file=str(example), api=api, token=None, wait=False)
        with _client(sub) as client:
            name = _load_body(str(example))["name"]
            existing = [s for s in client.get("/api/v1/studies").json() if s["name"] == name]
            if existing:
                print(f"the example study {name!r} is already in the store (study "
                      f"{existing[0]['id']})")
            else:
                cmd_submit(sub)
            print(f"\ntailtune is up: API {api}/docs, dashboard {api}/dashboard. Ctrl-C stops it.",
                  flush=True)
            study = next(s for s in client.get("/api/v1/studies").json() if s["name"] == name)
            _wait(client, study["id"])
        print(f"the example study has ended; the API and the worker stay up ({api}/dashboard). "
              "Ctrl-C stops them.", flush=True)
        serve.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in children:
            p.terminate()
        for p in children:
            p.wait(timeout=60)
    return 0


def _wait_ready(api: str, proc: subprocess.Popen, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{api}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def cmd_token(args: argparse.Namespace) -> int:
    from search_spaces.store import make_storage
    from service.auth import create_tables, issue_token

    storage = make_storage(args.storage or _storage_default())
    create_tables(storage.engine)
    print(issue_token(storage.engine, args.user, args.team))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"worker.benchmarks.{args.what}" if args.what != "service"
                                     else "service.benchmark")
    return module.main(args.rest)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from worker.reproduce import main

    return main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailtune", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the API and the dashboard")
    _add_storage(p)
    p.add_argument("--host", default=None, help="interface (env TAILTUNE_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (env TAILTUNE_PORT; default 8000)")
    p.add_argument("--artifacts-dir", default=None, help="artifact files (default ./artifacts)")
    p.add_argument("--workers", type=_positive, default=1,
                   help="processes answering requests (default 1); more use more cores, each with "
                        "its own connections to the store")
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run trials from the store until stopped")
    _add_storage(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--gpus", choices=["all"], default=None, help="one worker per visible GPU")
    p.add_argument("--studies", nargs="+", default=None, help="serve only these study names")
    p.add_argument("--data-root", default=None, help="data files (env TAILTUNE_DATA_ROOT)")
    p.add_argument("--artifacts-dir", default=None, help="artifact files (default ./artifacts)")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many trials")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="exit when no study has a queued or running trial")
    p.add_argument("--poll-interval", type=float, default=2.0, help="seconds between looks for work")
    p.add_argument("--heartbeat-interval", type=int, default=10, help="seconds between heartbeats")
    p.add_argument("--grace-period", type=int, default=30,
                   help="seconds without heartbeat before a trial counts as lost and is retried")
    p.set_defaults(func=cmd_worker)

    for name, helptext, func in (("submit", "submit a study spec (YAML or JSON)", cmd_submit),):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("file")
        p.add_argument("--api", default=os.environ.get("TAILTUNE_API", DEFAULT_API))
        p.add_argument("--token", default=None, help="API token (env TAILTUNE_TOKEN)")
        p.add_argument("--wait", action="store_true", help="show progress until the study ends")
        p.set_defaults(func=func)

    p = sub.add_parser("up", help="API + dashboard + one worker on SQLite, with the example study")
    _add_storage(p)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("token", help="create an API token for a user of a team")
    _add_storage(p)
    p.add_argument("--user", required=True)
    p.add_argument("--team", required=True)
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("bench", help="benchmarks: losses, training or service")
    p.add_argument("what", choices=["losses", "training", "service"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark (--help)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("reproduce", help="published defaults of every loss on a data set "
                       "(`tailtune reproduce --help` for its options)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="e.g. fashion-mnist-lt --ratio 100")
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per progress poll
    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # heartbeat, retry callback
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["reproduce"]:  # its options, --help included, belong to its own parser
        return cmd_reproduce(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
