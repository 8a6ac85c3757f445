"""Hostile input: every malformed, oversized or out-of-range request answers 4xx with the reason
and changes no row of any table; Unicode study names come back exactly; and no one reads or
changes what is not theirs.

Each test runs over SQLite and PostgreSQL (``storage_url``). To stay fast, one client and one
database serve a whole list of cases; a failing case is reported by name, with all the others
that failed, instead of stopping at the first.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
import pytest
import sqlalchemy as sa
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from service.auth import ApiToken, issue_token
from tests.conftest import tiny_spec

STUDIES = "/api/v1/studies"
JSON = {"content-type": "application/json"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()}


@pytest.fixture
def count_rows(storage_url: str) -> Iterator[Callable[[], dict[str, int]]]:
    """Rows per table, for every table the store has (enumerated, not a fixed list)."""
    engine = sa.create_engine(storage_url)

    def count() -> dict[str, int]:
        tables = sa.inspect(engine).get_table_names()
        query = sa.union_all(*(sa.select(sa.literal(t), sa.func.count()).select_from(sa.table(t))
                               for t in tables))
        with engine.connect() as conn:
            return dict(conn.execute(query).all())

    yield count
    engine.dispose()


# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One hostile request and what the answer must say.

    ``where`` is the start of the ``loc`` of a 422 error that must carry ``says`` in its
    ``msg``; for other statuses ``says`` must be in the ``detail`` (or the dashboard's
    ``reason``). ``path`` may contain ``{sid}``, the id of a study that exists.
    """

    name: str
    status: int
    says: str
    where: tuple[Any, ...] = ()
    body: bytes | Callable[[], Iterator[bytes]] | None = None  # a callable: sent chunked
    method: str = "POST"
    path: str = STUDIES
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))


def spec_bytes(spec: dict[str, Any]) -> bytes:
    """JSON as Python writes it: NaN and Infinity come out as the bare words ``NaN``, ``Infinity``."""
    return json.dumps(spec).encode("utf-8")


def broken(path: str, value: Any, **spec_args: Any) -> bytes:
    """``tiny_spec`` with the field at dotted ``path`` set to ``value``."""
    spec = copy.deepcopy(tiny_spec(**spec_args))
    *parents, last = path.split(".")
    target = spec
    for key in parents:
        target = target.setdefault(key, {})
    target[last] = value
    return spec_bytes(spec)


def with_extra(path: str, key: str, value: Any) -> bytes:
    spec = copy.deepcopy(tiny_spec())
    target = spec
    for part in filter(None, path.split(".")):
        target = target[part]
    target[key] = value
    return spec_bytes(spec)


def bad(name: str, where: str, says: str, body: bytes) -> Case:
    """A body refused with 422 at ``body.<where>``."""
    loc = ("body", *(int(p) if p.isdigit() else p for p in where.split("."))) if where else ("body",)
    return Case(name, 422, says, loc, body)


NAN, INF = float("nan"), float("inf")
LONG = "x" * 10_000
LOSSES_LISTED = "valid: balanced_softmax, ce, class_balanced"


def name_cases() -> list[Case]:
    refused = [
        ("slash", "a/b", "U+002F"),
        ("backslash", "a\\b", "U+005C"),
        ("Windows path", "C:\\Windows", "U+005C"),
        ("dot dot", "..", "must start with"),
        ("path traversal", "../etc/passwd", "must start with"),
        ("percent-encoded traversal", "x%2e%2e%2f", "U+0025"),
        ("SQL", "x'; DROP TABLE studies; --", "U+0027"),
        ("double quote", 'a"b', "U+0022"),
        ("semicolon", "a;b", "U+003B"),
        ("HTML", "a<script>", "U+003C"),
        ("NUL byte", "a\x00b", "U+0000"),
        ("newline", "line\nbreak", "U+000A"),
        ("tab", "tab\tx", "U+0009"),
        ("bell", "bell\x07", "U+0007"),
        ("terminal escape", "\x1b[31mred", "must start with"),
        ("right-to-left override", "rtl\u202eevil", "U+202E"),
        ("zero-width space", "zero\u200bwidth", "U+200B"),
        ("line separator", "a\u2028b", "U+2028"),
        ("leading space", " lead", "must start with"),
        ("trailing space", "trail ", "end with whitespace"),
        ("only a space", " ", "must start with"),
        ("empty", "", "at least 1 character"),
        ("121 characters", "x" * 121, "at most 120 characters"),
        ("10,000 characters", LONG, "at most 120 characters"),
        ("lone surrogate", "a\ud800b", "unicode"),
    ]
    return [bad(f"name: {label}", "name", says, broken("name", value)) for label, value, says in refused]


def chunked_over_the_limit() -> Iterator[bytes]:
    """1.1 MB without a Content-Length: the limit must count the chunks as they arrive."""
    yield b'{"name": "'
    for _ in range(110):
        yield b"x" * 10_000
    yield b'"}'


def body_cases() -> list[Case]:
    spec = tiny_spec()
    deep = 100_000
    return [
        # size and syntax
        Case("body over the size limit", 413, "request body over 1000000 bytes",
             body=spec_bytes({**spec, "padding": "x" * 1_100_000})),
        Case("chunked body over the size limit", 413, "request body over 1000000 bytes",
             body=chunked_over_the_limit),
        Case("Content-Length not a number", 400, "Content-Length", body=b"{}",
             headers={**JSON, "content-length": "two"}),
        Case("not JSON", 422, "JSON decode error", ("body", 0), b"name=tiny&model=mlp"),
        Case("truncated JSON", 422, "JSON decode error: Expecting", ("body",), spec_bytes(spec)[:-2]),
        Case("empty body", 422, "Field required", ("body",), b""),
        Case("JSON list", 422, "valid dictionary", ("body",), b"[]"),
        Case("JSON list of the spec", 422, "valid dictionary", ("body",), spec_bytes([spec])),
        Case("JSON number", 422, "valid dictionary", ("body",), b"42"),
        Case("JSON string", 422, "valid dictionary", ("body",), b'"tiny"'),
        Case("JSON null", 422, "valid dictionary", ("body",), b"null"),
        Case("JSON NaN alone", 422, "valid dictionary", ("body",), b"NaN"),
        Case("not UTF-8", 422, "not UTF-8", ("body",), b'{"name": "caf\xe9"}'),
        Case("array nested 100,000 deep", 422, "nests too deeply", ("body",), b"[" * deep + b"]" * deep),
        Case("name nested 100,000 deep", 422, "nests too deeply", ("body",),
             b'{"name": ' + b"[" * deep + b"]" * deep + b"}"),
        bad("object nested 500 deep under an unknown field", "colour", "Extra inputs",
            with_extra("", "colour", json.loads("[" * 500 + "]" * 500))),
        Case("integer of 5,000 digits", 422, "digits", ("body",),
             spec_bytes(spec).replace(b'"n_trials": 4', b'"n_trials": ' + b"9" * 5000)),
        Case("text/plain", 422, "valid dictionary", ("body",), spec_bytes(spec),
             headers={"content-type": "text/plain"}),
        Case("form content type", 422, "valid dictionary", ("body",), b"name=tiny",
             headers={"content-type": "application/x-www-form-urlencoded"}),
        # wrong types at several depths
        bad("n_trials a word", "budget.n_trials", "valid integer", broken("budget.n_trials", "abc")),
        bad("n_trials fractional", "budget.n_trials", "fractional", broken("budget.n_trials", 2.5)),
        bad("n_trials true", "budget.n_trials", "must be a number", broken("budget.n_trials", True)),
        bad("budget a number", "budget", "valid dictionary", broken("budget", 5)),
        bad("epochs a list", "training.epochs", "valid integer", broken("training.epochs", [1, 2])),
        bad("lr an object", "training.lr", "valid number", broken("training.lr", {"v": 1})),
        bad("lr false", "training.lr", "must be a number", broken("training.lr", False)),
        bad("dataset a string", "dataset", "valid dictionary", broken("dataset", "synthetic-lt")),
        bad("model a list", "model", "valid dictionary", broken("model", ["mlp"])),
        bad("search space a number", "search_space", "valid dictionary", broken("search_space", 5)),
        bad("losses a list", "search_space.loss", "valid dictionary", broken("search_space.loss", ["ce"])),
        bad("loss parameters a list", "search_space.loss.ce", "valid dictionary",
            broken("search_space.loss", {"ce": []})),
        bad("lr range a list", "search_space.lr.range", "valid dictionary", broken("search_space.lr", [0.1])),
        bad("range bound a string", "search_space.lr.range.low", "valid number",
            broken("search_space.lr", {"low": "small", "high": 0.1})),
        bad("range bound true", "search_space.lr.range.low", "must be a number",
            broken("search_space.lr", {"low": True, "high": 0.1})),
        bad("baselines a word", "baselines", "valid boolean", broken("baselines", "perhaps")),
        bad("name a number", "name", "valid string", broken("name", 42)),
        # NaN and infinity (Python's json reads and writes them)
        bad("n_trials NaN", "budget.n_trials", "finite", broken("budget.n_trials", NAN)),
        bad("n_trials Infinity", "budget.n_trials", "finite", broken("budget.n_trials", INF)),
        bad("lr NaN", "training.lr", "finite", broken("training.lr", NAN)),
        bad("lr Infinity", "training.lr", "finite", broken("training.lr", INF)),
        bad("lr -Infinity", "training.lr", "finite", broken("training.lr", -INF)),
        bad("imbalance ratio NaN", "dataset.imbalance_ratio", "finite",
            broken("dataset.imbalance_ratio", NAN)),
        bad("searched lr low NaN", "search_space.lr.range.low", "finite",
            broken("search_space.lr", {"low": NAN, "high": 0.1})),
        bad("searched lr high Infinity", "search_space.lr.range.high", "finite",
            broken("search_space.lr", {"low": 0.01, "high": INF})),
        bad("searched lr fixed NaN", "search_space.lr.value", "finite", broken("search_space.lr", NAN)),
        bad("loss parameter low NaN", "search_space.loss.weighted_ce.power.range.low", "finite",
            broken("search_space.loss.weighted_ce.power", {"low": NAN, "high": 1.0})),
        bad("loss parameter high -Infinity", "search_space.loss.weighted_ce.power.range.high", "finite",
            broken("search_space.loss.weighted_ce.power", {"low": 0.0, "high": -INF})),
        bad("loss parameter fixed Infinity", "search_space.loss.weighted_ce.power.value", "finite",
            broken("search_space.loss.weighted_ce.power", INF)),
        bad("choice NaN", "search_space.loss.focal.gamma.range.choices.1", "finite",
            broken("search_space.loss", {"focal": {"gamma": {"choices": [1.0, NAN]}}})),
        bad("step NaN", "search_space.lr.range.step", "finite",
            broken("search_space.lr", {"low": 0.01, "high": 0.1, "step": NAN})),
        # ranges
        bad("lr low above high", "search_space.lr", "is above high",
            broken("search_space.lr", {"low": 0.3, "high": 0.1})),
        bad("loss parameter low above high", "search_space.loss.weighted_ce.power", "is above high",
            broken("search_space.loss.weighted_ce.power", {"low": 1.0, "high": 0.5})),
        bad("log range from zero", "search_space.lr", "log range needs low > 0",
            broken("search_space.lr", {"low": 0.0, "high": 0.1, "log": True})),
        bad("log range from below zero", "search_space.weight_decay", "log range needs low > 0",
            broken("search_space.weight_decay", {"low": -1e-4, "high": 1e-3, "log": True})),
        bad("loss parameter log range from zero", "search_space.loss.focal.gamma", "log range needs low > 0",
            broken("search_space.loss", {"focal": {"gamma": {"low": 0.0, "high": 2.0, "log": True}}})),
        bad("loss parameter outside its valid range", "search_space.loss", "must lie in [0.0, 10.0]",
            broken("search_space.loss", {"focal": {"gamma": {"low": -1.0, "high": 2.0}}})),
        bad("step zero", "search_space.lr.range.step", "greater than 0",
            broken("search_space.lr", {"low": 0.01, "high": 0.1, "step": 0})),
        bad("101 choices", "search_space.lr.range.choices", "at most 100",
            broken("search_space.lr", {"choices": [0.01] * 101})),
        bad("range and choices", "search_space.lr", "not both",
            broken("search_space.lr", {"low": 0.01, "high": 0.1, "choices": [0.05]})),
        bad("lr above 10", "search_space.lr", "in [0, 10]",
            broken("search_space.lr", {"low": 1, "high": 20})),
        bad("n_trials zero", "budget.n_trials", "greater than or equal to 1", broken("budget.n_trials", 0)),
        bad("n_trials negative", "budget.n_trials", "greater than or equal to 1",
            broken("budget.n_trials", -5)),
        bad("n_trials above the cap", "budget.n_trials", "less than or equal to 10000",
            broken("budget.n_trials", 10_001)),
        bad("n_trials 10^30", "budget.n_trials", "less than or equal to 10000",
            broken("budget.n_trials", 10**30)),
        bad("epochs zero", "training.epochs", "greater than or equal to 1", broken("training.epochs", 0)),
        bad("batch size 2^40", "training.batch_size", "less than or equal",
            broken("training.batch_size", 2**40)),
        bad("seed negative", "training.seed", "greater than or equal to 0", broken("training.seed", -1)),
        bad("seed beyond 32 bits", "sampler.seed", "less than or equal", broken("sampler.seed", 2**31)),
        bad("lr zero", "training.lr", "greater than 0", broken("training.lr", 0)),
        bad("baselines above the budget", "", "baseline", broken("baselines", True, n_trials=1)),
        # long strings in other fields
        bad("10,000-char data set", "dataset.name", "valid: cifar10-lt", broken("dataset.name", LONG)),
        bad("10,000-char model", "model.name", "valid: mlp", broken("model.name", LONG)),
        bad("10,000-char sampler", "sampler.name", "valid: cmaes", broken("sampler.name", LONG)),
        bad("10,000-char pruner", "pruner.name", "valid: hyperband", broken("pruner.name", LONG)),
        bad("10,000-char metric", "objective.metric", "valid: val_accuracy",
            broken("objective.metric", LONG)),
        bad("10,000-char schedule", "training.schedule", "'step', 'cosine' or 'constant'",
            broken("training.schedule", LONG)),
        bad("10,000-char preset", "search_space", "valid: class-balanced", broken("search_space", LONG)),
        bad("10,000-char loss", "search_space.loss", LOSSES_LISTED, broken("search_space.loss", {LONG: {}})),
        bad("10,000-char choice", "search_space.loss", "must be one of",
            broken("search_space.loss", {"focal": {"alpha": {"choices": [LONG]}}})),
        bad("10,000-char npz file", "dataset.file", "at most 200",
            broken("dataset", {"name": "npz", "file": LONG + ".npz"})),
        bad("npz file outside the data root", "dataset.file", "plain file name",
            broken("dataset", {"name": "npz", "file": "../../etc/x.npz"})),
        # unknown fields and names
        bad("unknown top-level field", "colour", "Extra inputs", with_extra("", "colour", "red")),
        bad("unknown training field", "training.momentum2", "Extra inputs",
            with_extra("training", "momentum2", 0.9)),
        bad("unknown range field", "search_space.lr.range.mean", "Extra inputs",
            broken("search_space.lr", {"low": 0.01, "high": 0.1, "mean": 0.05})),
        bad("10,000-char unknown field", "", "Extra inputs", with_extra("", LONG, 1)),
        bad("unknown field a lone surrogate", "", "", with_extra("", "\ud800", 1)),
        bad("loss a lone surrogate", "search_space.loss", "", broken("search_space.loss", {"\ud800": {}})),
        bad("unknown loss", "search_space.loss", LOSSES_LISTED, broken("search_space.loss", {"hinge": {}})),
        bad("unknown loss parameter", "search_space.loss", "valid: gamma, alpha",
            broken("search_space.loss", {"focal": {"beta": 1}})),
        bad("unknown data set", "dataset.name", "valid: cifar10-lt, cifar100-lt, digits-lt",
            broken("dataset.name", "imagenet-lt")),
        bad("unknown model", "model.name", "valid: mlp, resnet18", broken("model.name", "vit")),
        bad("unknown sampler", "sampler.name", "valid: cmaes, grid, qmc, random, tpe",
            broken("sampler", {"name": "bayes"})),
        bad("unknown pruner", "pruner.name", "valid: hyperband, median, none, successive_halving",
            broken("pruner", {"name": "early"})),
        bad("unknown preset", "search_space", "valid: class-balanced", broken("search_space", "../focal")),
        bad("unknown metric", "objective.metric", "valid: val_accuracy", broken("objective.metric", "loss")),
        # the name of a study that exists
        Case("name taken", 409, "already exists", body=spec_bytes(tiny_spec(name="existing"))),
        *name_cases(),
    ]


def query_cases() -> list[Case]:
    """Path and query parameters of the read routes (and of the two write routes)."""
    base = f"{STUDIES}/{{sid}}"
    get = [
        ("list: unknown state", STUDIES + "?state=bogus", 422, ("query", "state"), "'queued', 'running'"),
        ("list: 10,000-char state", STUDIES + "?state=" + LONG, 422, ("query", "state"), "'queued'"),
        ("study id a word", f"{STUDIES}/abc", 422, ("path", "study_id"), "valid integer"),
        ("study id a float", f"{STUDIES}/1.5", 422, ("path", "study_id"), "valid integer"),
        ("study id SQL", f"{STUDIES}/1%20OR%201=1", 422, ("path", "study_id"), "valid integer"),
        ("study id Arabic-Indic digit", f"{STUDIES}/%D9%A3", 422, ("path", "study_id"), "valid integer"),
        ("study id negative", f"{STUDIES}/-1", 422, ("path", "study_id"), "greater than or equal to 1"),
        ("study id zero", f"{STUDIES}/0/trials", 422, ("path", "study_id"), "greater than or equal to 1"),
        ("study id 2^31", f"{STUDIES}/{2**31}", 422, ("path", "study_id"),
         "less than or equal to 2147483647"),
        ("study id 30 digits", f"{STUDIES}/{10**30}/best", 422, ("path", "study_id"), "less than or equal"),
        ("study that does not exist", f"{STUDIES}/999999/report", 404, (), "study 999999 not found"),
        ("trials: negative offset", base + "/trials?offset=-1", 422, ("query", "offset"), "greater than"),
        ("trials: offset 10^30", base + f"/trials?offset={10**30}", 422, ("query", "offset"), "less than"),
        ("trials: offset a word", base + "/trials?offset=ten", 422, ("query", "offset"), "valid integer"),
        ("trials: limit zero", base + "/trials?limit=0", 422, ("query", "limit"),
         "greater than or equal to 1"),
        ("trials: huge limit", base + "/trials?limit=1000000", 422, ("query", "limit"),
         "less than or equal to 500"),
        ("trials: limit NaN", base + "/trials?limit=NaN", 422, ("query", "limit"), "valid integer"),
        ("trials: unknown state", base + "/trials?state=bogus", 422, ("query", "state"), "'waiting'"),
        ("trials: upper-case state", base + "/trials?state=COMPLETE", 422, ("query", "state"), "'complete'"),
        ("trials: unknown loss", base + "/trials?loss=hinge", 422, ("query", "loss"), "'ce', 'weighted_ce'"),
        ("trials: 10,000-char loss", base + "/trials?loss=" + LONG, 422, ("query", "loss"), "'focal'"),
        ("trials.csv: unknown state", base + "/trials.csv?state=done", 422, ("query", "state"), "'fail'"),
        ("trial number a word", base + "/trials/first", 422, ("path", "number"), "valid integer"),
        ("trial number negative", base + "/trials/-1", 422, ("path", "number"), "greater than or equal to 0"),
        ("trial number 2^31", base + f"/trials/{2**31}", 422, ("path", "number"), "less than or equal"),
        ("trial that does not exist", base + "/trials/999", 404, (), "trial 999 of study"),
        ("artifact id not hex", base + "/trials/0/artifacts/zzz", 422, ("path", "artifact_id"), "pattern"),
        ("artifact id traversal", base + "/trials/0/artifacts/..%2F..%2Fetc%2Fpasswd", 404, (), "not found"),
        ("artifact id 100 chars", base + "/trials/0/artifacts/" + "a" * 100, 422, ("path", "artifact_id"),
         "pattern"),
        ("preset traversal", "/api/v1/search-spaces/..%2F..%2Fpyproject", 404, (), "not found"),
        ("preset unknown", "/api/v1/search-spaces/nope", 404, (), "search space 'nope' not found"),
        # the dashboard's routes
        ("dashboard: study id a word", "/api/studies/abc", 404, (), "not found"),
        ("dashboard: study id 30 digits", f"/api/studies/{10**30}", 404, (), "not found"),
        ("dashboard: study id Arabic-Indic digit", "/api/studies/%D9%A3", 404, (), "not found"),
        ("dashboard: csv of study id 2^31", f"/csv/{2**31}", 404, (), "not found"),
        ("dashboard: after a word", "/api/studies/{sid}?after=abc", 400, (), "'after'"),
        ("dashboard: after negative", "/api/studies/{sid}?after=-1", 400, (), "'after'"),
        ("dashboard: csv trial ids not numbers", "/csv/{sid}?trial_ids=a,b", 400, (), "trial_ids"),
        ("dashboard: artifact of trial id 30 digits", f"/artifacts/{{sid}}/{10**30}/abc", 404, (),
         "not found"),
        ("dashboard: unknown route", "/api/compare-studies?study_ids={sid}", 404, (), "not found"),
    ]
    cases = [Case(name, status, says, where, method="GET", path=path)
             for name, path, status, where, says in get]
    cases += [
        Case("cancel: study id a word", 422, "valid integer", ("path", "study_id"),
             path=f"{STUDIES}/x/cancel"),
        Case("cancel: study id 2^31", 422, "less than", ("path", "study_id"),
             path=f"{STUDIES}/{2**31}/cancel"),
        Case("delete: study id a word", 422, "valid integer", ("path", "study_id"), method="DELETE",
             path=f"{STUDIES}/x"),
        Case("delete: study id negative", 422, "greater than", ("path", "study_id"), method="DELETE",
             path=f"{STUDIES}/-3"),
        Case("dashboard: delete", 405, "read-only", method="DELETE", path="/api/studies/{sid}"),
        Case("dashboard: create", 405, "read-only", path="/api/studies", body=b'{"study_name": "x"}'),
        Case("dashboard: upload artifact", 405, "read-only", path="/api/artifacts/{sid}/1", body=b"x"),
    ]
    return cases


def check(client: Any, case: Case, rows_changed: Callable[[], str | None], sid: int) -> str | None:
    """Send ``case``; return what is wrong with the answer, or None."""
    content = case.body() if callable(case.body) else case.body
    try:
        r = client.request(case.method, case.path.replace("{sid}", str(sid)), content=content,
                           headers=case.headers)
    except Exception as exc:  # the test client re-raises what the app did not handle (a 500)
        return f"the app raised {exc!r} {rows_changed() or ''}"
    changed = rows_changed()  # counted after every case, so a write is pinned on its case
    if r.status_code != case.status:
        return f"status {r.status_code}, expected {case.status}: {r.text[:300]} {changed or ''}"
    if changed:
        return changed
    try:
        body = json.loads(r.content.decode("utf-8"))
    except ValueError as exc:
        return f"the answer is not UTF-8 JSON ({exc}): {r.content[:200]!r}"
    if len(r.content) > 3000:  # what a 422 echoes (a key, a name) is cut short
        return f"the answer echoes too much ({len(r.content)} bytes): {r.text[:300]}"
    detail = body.get("detail", body.get("reason"))
    if r.status_code != 422:
        if not isinstance(detail, str) or case.says.lower() not in detail.lower():
            return f"expected {case.says!r} in the detail: {r.text[:300]}"
        return None
    if not detail or not all(isinstance(e.get("loc"), list) and e["loc"] and e.get("msg") for e in detail):
        return f"every error needs a loc and a msg: {r.text[:300]}"
    where = list(case.where)
    if not any(e["loc"][:len(where)] == where and case.says in e["msg"] for e in detail):
        return f"no error at {where} saying {case.says!r}: {r.text[:600]}"
    return None


def run_cases(client: Any, cases: list[Case], count_rows: Callable[[], dict[str, int]], sid: int) -> None:
    assert len({c.name for c in cases}) == len(cases), "case names must be unique"
    counts = count_rows()

    def rows_changed() -> str | None:
        nonlocal counts
        before, counts = counts, count_rows()
        changed = {t: (before.get(t), n) for t, n in counts.items() if before.get(t) != n}
        return f"rows changed (before, after): {changed}" if changed else None

    failures = [f"{c.name}: {problem}" for c in cases if (problem := check(client, c, rows_changed, sid))]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)


@pytest.fixture
def client(storage_url: str, make_client: Any) -> Any:
    return make_client(storage_url)


def existing_study(client: Any) -> int:
    r = client.post(STUDIES, json=tiny_spec(name="existing", n_trials=2))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_hostile_requests_are_refused_with_the_reason_and_write_nothing(client, count_rows) -> None:
    sid = existing_study(client)
    run_cases(client, body_cases() + query_cases(), count_rows, sid)
    # The counts do see a write: the same client still creates a study.
    before = count_rows()
    assert client.post(STUDIES, json=tiny_spec(name="after all that")).status_code == 201
    assert count_rows() != before


# -- Unicode names ----------------------------------------------------------------------------

UNICODE_NAMES = [
    "études-不平衡-🙂",
    "Ελληνικά δοκιμή",
    "تجربة غير متوازنة",
    "e\u0301tude combine\u0301e",  # decomposed: e + COMBINING ACUTE ACCENT, not normalised
    "हिन्दी प्रयोग",
    "👩\u200d🔬 lab 👍🏽",  # zero-width joiner and a skin-tone modifier
    "Z\u0351\u0352a\u0353\u0354l\u0355go (v2)",
    "ｆｕｌｌｗｉｄｔｈ １２３",
    "長尾 étude (v2)",
    "🙂" * 120,  # the longest name: 120 characters, 480 bytes
]


def test_unicode_names_are_accepted_and_come_back_exactly(client) -> None:
    ids = {}
    for name in UNICODE_NAMES:
        r = client.post(STUDIES, json=tiny_spec(name=name, n_trials=1))
        assert r.status_code == 201, (name, r.text)
        assert r.json()["name"] == name
        ids[r.json()["id"]] = name
    listed = {s["id"]: s["name"] for s in client.get(STUDIES).json()}
    assert listed == ids
    dashboard = {s["study_id"]: s["study_name"]
                 for s in client.get("/api/studies").json()["study_summaries"]}
    assert dashboard == ids
    for sid, name in ids.items():
        detail = client.get(f"{STUDIES}/{sid}").json()
        assert detail["name"].encode("utf-8") == name.encode("utf-8")
        assert detail["spec"]["name"] == name
        assert client.get(f"/api/studies/{sid}").json()["name"] == name
        csv = client.get(f"/csv/{sid}")
        assert csv.status_code == 200
        disposition = csv.headers["content-disposition"]
        assert disposition.isascii(), disposition
        assert unquote(disposition.split("filename*=UTF-8''")[1]) == name.replace(" ", "-") + ".csv"


# -- isolation between teams (token mode) -----------------------------------------------------


@dataclass
class World:
    """Ann and Bob are in team vision, Eve in team speech. Ann's study has a finished trial
    with an artifact and a running trial; Eve has a study of her own."""

    client: Any
    tokens: dict[str, str]
    sid: int
    eve_sid: int
    trial_id: int
    artifact_id: str


@pytest.fixture
def world(storage_url: str, make_client: Any, tmp_path: Path) -> World:
    client = make_client(storage_url, auth="token")
    storage = client.app.state.storage
    tokens = {who: issue_token(storage.engine, who, team)
              for who, team in (("ann", "vision"), ("bob", "vision"), ("eve", "speech"))}
    sid = client.post(STUDIES, json=tiny_spec(name="ann-study", n_trials=3),
                      headers=bearer(tokens["ann"])).json()["id"]
    eve_sid = client.post(STUDIES, json=tiny_spec(name="eve-study", n_trials=1),
                          headers=bearer(tokens["eve"])).json()["id"]
    study = optuna.load_study(study_name="ann-study", storage=storage)
    done = study.ask()
    done.suggest_categorical("loss", ["ce", "weighted_ce"])
    picture = tmp_path / "curve.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    artifact_id = upload_artifact(artifact_store=FileSystemArtifactStore(str(tmp_path / "artifacts")),
                                  file_path=str(picture), study_or_trial=done)
    study.tell(done, 0.5)
    study.ask()  # left running: a worker is busy with it
    return World(client, tokens, sid, eve_sid, done._trial_id, artifact_id)


def readable_paths(w: World, sid: int) -> list[str]:
    """Every read route that names the study ``sid`` (API and dashboard)."""
    api = f"{STUDIES}/{sid}"
    return [
        api, f"{api}/trials", f"{api}/trials?state=complete", f"{api}/trials.csv", f"{api}/trials/0",
        f"{api}/trials/0/artifacts/{w.artifact_id}", f"{api}/best", f"{api}/report",
        f"/api/studies/{sid}", f"/api/studies/{sid}?after=0", f"/api/studies/{sid}/param_importances",
        f"/csv/{sid}", f"/artifacts/{sid}/{w.trial_id}/{w.artifact_id}",
    ]


def test_no_one_reads_or_changes_what_is_not_theirs(world: World, count_rows) -> None:
    """Other teams get 404 (as for a study that does not exist), team mates 403 on writes,
    bad tokens 401; every refused write leaves every table as it was. One world serves all."""
    before = count_rows()
    other_teams_get_404_for_everything(world, count_rows)
    team_mates_read_but_get_403_on_writes(world, count_rows)
    bad_tokens_get_401_and_learn_nothing(world, count_rows)
    assert count_rows() == before
    ann = bearer(world.tokens["ann"])
    assert world.client.get(f"{STUDIES}/{world.sid}", headers=ann).json()["state"] == "running"
    assert world.client.post(f"{STUDIES}/{world.sid}/cancel", headers=ann).status_code == 200
    assert count_rows() != before  # the counts would have seen a refused write


def other_teams_get_404_for_everything(w: World, count_rows: Callable[[], dict[str, int]]) -> None:
    c = w.client
    eve, ann, bob = (bearer(w.tokens[n]) for n in ("eve", "ann", "bob"))
    missing = 999_999
    for path in readable_paths(w, w.sid):
        assert c.get(path, headers=ann).status_code == 200, path
        assert c.get(path, headers=bob).status_code == 200, path
        r = c.get(path, headers=eve)
        # Exactly what a study that does not exist gets: nothing tells Eve that it does.
        nothing = c.get(path.replace(f"/{w.sid}", f"/{missing}", 1), headers=eve)
        assert r.status_code == 404 == nothing.status_code, (path, r.text)
        assert r.text.replace(str(w.sid), "ID") == nothing.text.replace(str(missing), "ID"), path
        assert "ann" not in r.text, path
    # Dashboard routes that name the study but have no success case for Ann here (the plot
    # needs plotly, the study has no artifact of its own, the note is written with PUT).
    for path in (f"/api/studies/{w.sid}/plot/slice", f"/artifacts/{w.sid}/{w.artifact_id}",
                 f"/api/studies/{w.sid}/{w.trial_id}/note"):
        r = c.get(path, headers=basic(w.tokens["eve"]))
        assert r.status_code == 404 and r.json() == {"detail": f"study {w.sid} not found"}, path
    # Eve's own study id with Ann's trial or artifact: artifact and trial ids are global.
    for path in (f"/artifacts/{w.eve_sid}/{w.trial_id}/{w.artifact_id}",
                 f"{STUDIES}/{w.eve_sid}/trials/0/artifacts/{w.artifact_id}"):
        assert c.get(path, headers=eve).status_code == 404, path
    # Lists: none shows Ann's study to Eve.
    assert [s["id"] for s in c.get(STUDIES, headers=eve).json()] == [w.eve_sid]
    assert c.get(STUDIES + "?state=running", headers=eve).json() == []
    assert [s["study_id"] for s in c.get("/api/studies", headers=eve).json()["study_summaries"]] \
        == [w.eve_sid]
    assert c.get("/api/v1/workers", headers=eve).json() == []
    assert [x["study"] for x in c.get("/api/v1/workers", headers=bob).json()] == [w.sid]
    # Writes: Eve gets 404 (the dashboard 405), and nothing is written.
    before = count_rows()
    refused = [
        ("POST", f"{STUDIES}/{w.sid}/cancel", 404, f"study {w.sid} not found"),
        ("DELETE", f"{STUDIES}/{w.sid}", 404, f"study {w.sid} not found"),
        ("DELETE", f"/api/studies/{w.sid}", 405, "read-only"),
        ("POST", f"/api/trials/{w.trial_id}/tell", 405, "read-only"),
        ("POST", f"/api/artifacts/{w.sid}/{w.trial_id}", 405, "read-only"),
    ]
    for method, path, status, says in refused:
        r = c.request(method, path, headers=eve)
        assert r.status_code == status and says in r.json()["detail"], (method, path, r.text)
        assert count_rows() == before, (method, path)


def team_mates_read_but_get_403_on_writes(w: World, count_rows: Callable[[], dict[str, int]]) -> None:
    bob = bearer(w.tokens["bob"])
    assert w.client.get(f"{STUDIES}/{w.sid}/trials", headers=bob).json()["total"] == 3
    before = count_rows()
    for method, path in (("POST", f"{STUDIES}/{w.sid}/cancel"), ("DELETE", f"{STUDIES}/{w.sid}")):
        r = w.client.request(method, path, headers=bob)
        assert r.status_code == 403 and "only the owner (ann)" in r.json()["detail"], (method, path)
        assert count_rows() == before, (method, path)


def bad_tokens_get_401_and_learn_nothing(w: World, count_rows: Callable[[], dict[str, int]]) -> None:
    c = w.client
    assert c.get(STUDIES, headers=bearer(w.tokens["bob"])).status_code == 200
    with c.app.state.storage.engine.begin() as conn:
        conn.execute(sa.update(ApiToken).where(ApiToken.user == "bob").values(revoked=True))
    no_access = {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "unknown token": bearer("tt_" + "x" * 43),
        "revoked token": bearer(w.tokens["bob"]),
        "revoked token as Basic": basic(w.tokens["bob"]),
        "other scheme": {"Authorization": f"Token {w.tokens['ann']}"},
        "Basic not base64": {"Authorization": "Basic !!!"},
        "10,000-char token": bearer("t" * 10_000),
    }
    # Every read route, for a study that exists and one that does not, without a token and with
    # an unknown one; a sample of them for the other kinds of bad token.
    every = [STUDIES, "/api/v1/workers", "/dashboard", "/api/studies", *readable_paths(w, w.sid),
             *readable_paths(w, 999_999)]
    sample = [STUDIES, "/api/studies", f"{STUDIES}/{w.sid}/trials", f"/api/studies/{w.sid}"]
    answers = set()
    before = count_rows()
    for label, headers in no_access.items():
        for path in every if label in ("no header", "unknown token") else sample:
            r = c.get(path, headers=headers)
            assert r.status_code == 401, (label, path, r.text)
            answers.add((path.startswith("/api/v1/"), r.text))
        for method, path, body in (("POST", STUDIES, tiny_spec(name="intruder")),
                                   ("POST", f"{STUDIES}/{w.sid}/cancel", None),
                                   ("DELETE", f"{STUDIES}/{w.sid}", None)):
            r = c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401, (label, method, path, r.text)
        assert count_rows() == before, label
    # One answer for the API and one for the dashboard, whatever the study and the token:
    # nothing tells whether a study exists.
    assert len(answers) == 2 and not any("ann" in text for _, text in answers), answers
    r = c.get("/api/studies", headers={"Authorization": "Basic !!!"})
    assert r.headers["www-authenticate"].startswith("Basic")
