"""Studies and trials as the API sees them, over the one Optuna store. No FastAPI here.

Submission is all-or-nothing: the Optuna study is created, every asked trial is queued
(baselines first, with their fixed parameters), and only then is the spec written, which is
what makes workers see the study. Any failure on the way deletes the study again.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models as optuna_models
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search_spaces.optuna_space import baseline_params
from search_spaces.spec import StudySpec, parse_spec
from search_spaces.store import (
    ATTR_CANCELLED,
    ATTR_CREATED,
    ATTR_FAIL_REASON,
    ATTR_OWNER,
    ATTR_SPEC,
    ATTR_TEAM,
    ATTR_WORKER,
    StudyState,
    TrialCounts,
    connected,
    study_state,
    trial_counts,
)
from service.errors import ApiError, conflict, not_found
from service.read_cache import LRU, remembered

T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    user: str
    team: str


METRIC_KEYS = (
    "accuracy", "balanced_accuracy", "macro_f1", "many_shot_accuracy", "medium_shot_accuracy",
    "few_shot_accuracy", "head_accuracy", "middle_accuracy", "tail_accuracy",
)


def _direction(spec: StudySpec) -> StudyDirection:
    return StudyDirection.MAXIMIZE if spec.objective.direction == "maximize" else StudyDirection.MINIMIZE


def create_study(storage: RDBStorage, spec: StudySpec, who: Principal) -> int:
    try:
        study_id = storage.create_new_study([_direction(spec)], spec.name)
    except optuna.exceptions.DuplicatedStudyError:
        raise conflict(f"a study named {spec.name!r} already exists; choose another name") from None
    try:
        baselines = baseline_params(spec) if spec.baselines else []
        _queue(storage, study_id, [(params, {"baseline": True}) for params in baselines]
               + [({}, {})] * (spec.budget.n_trials - len(baselines)))
        storage.set_study_user_attr(study_id, ATTR_OWNER, who.user)
        storage.set_study_user_attr(study_id, ATTR_TEAM, who.team)
        storage.set_study_user_attr(study_id, ATTR_CREATED, dt.datetime.now(dt.UTC).isoformat())
        storage.set_study_user_attr(study_id, ATTR_SPEC, spec.model_dump_json())
    except BaseException:
        storage.delete_study(study_id)
        raise
    return study_id


def _queue(storage: RDBStorage, study_id: int, trials: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """Queue one trial per (fixed parameters, user attributes), in order, in one transaction.

    The rows are those ``Study.enqueue_trial`` writes (a ``WAITING`` trial numbered in order,
    its ``fixed_params`` system attribute, its user attributes; a test holds them equal), in
    three statements instead of a transaction of about ten statements per trial: a 2,000-trial
    study took 24 s to submit. Numbering the trials here is safe because nothing else adds
    trials to a study before its spec is written.
    """
    if not trials:
        return
    m = optuna_models
    with storage.engine.begin() as conn:
        conn.execute(sa.insert(m.TrialModel.__table__), [
            {"study_id": study_id, "number": number, "state": TrialState.WAITING,
             "datetime_start": None, "datetime_complete": None}
            for number in range(len(trials))])
        trial_ids = dict(conn.execute(sa.select(m.TrialModel.number, m.TrialModel.trial_id)
                                      .where(m.TrialModel.study_id == study_id)).all())
        system_rows, user_rows = _attribute_rows(trial_ids, trials)
        conn.execute(sa.insert(m.TrialSystemAttributeModel.__table__), system_rows)
        if user_rows:
            conn.execute(sa.insert(m.TrialUserAttributeModel.__table__), user_rows)


def _attribute_rows(trial_ids: dict[int, int], trials: list[tuple[dict[str, Any], dict[str, Any]]],
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The system and user attribute rows of the queued ``trials`` (by number)."""
    system = [{"trial_id": trial_ids[n], "key": "fixed_params", "value_json": json.dumps(params)}
              for n, (params, _) in enumerate(trials)]
    user = [{"trial_id": trial_ids[n], "key": key, "value_json": json.dumps(value)}
            for n, (_, attrs) in enumerate(trials) for key, value in attrs.items()]
    return system, user


@dataclass
class StudyView:
    id: int
    name: str
    user_attrs: dict[str, Any]
    counts: TrialCounts
    direction: StudyDirection

    @property
    def spec(self) -> StudySpec:
        """The validated spec, parsed once per spec text: shared, so never modify it."""
        return _parse_stored_spec(self.user_attrs[ATTR_SPEC])

    @property
    def state(self) -> StudyState:
        return study_state(self.user_attrs, self.counts)


@functools.lru_cache(maxsize=256)
def _parse_stored_spec(text: str) -> StudySpec:
    # Validating a spec takes longer than reading the study; a study's spec never changes, and
    # the cache key is the whole text, so an edited spec could never be answered from it.
    return parse_spec(json.loads(text))


# Reads below go to Optuna's tables directly where its storage API would take many queries
# (one session per call, each with a connection check) or load every trial of a study with
# all its attributes: under concurrent readers those round trips, not the SQL, were the cost.

_STUDY_COLUMNS = (
    "SELECT s.study_id, s.study_name, d.direction, a.key, a.value_json FROM studies s "
    "LEFT JOIN study_directions d ON d.study_id = s.study_id AND d.objective = 0 "
    "LEFT JOIN study_user_attributes a ON a.study_id = s.study_id ")
_STUDY_ROWS = sa.text(_STUDY_COLUMNS + "WHERE s.study_id = :id")
_ALL_STUDY_ROWS = sa.text(_STUDY_COLUMNS + "ORDER BY s.study_id")


def _direction_of(stored: Any) -> StudyDirection:
    if stored is None:
        return StudyDirection.NOT_SET
    return stored if isinstance(stored, StudyDirection) else StudyDirection[str(stored)]


def _views(rows: list[Any], who: Principal) -> list[StudyView | None]:
    """A view (without trial counts) per study in ``rows``, None where ``who`` may not read
    it; only the attributes of readable studies are decoded."""
    by_study: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        by_study[row.study_id].append(row)
    out: list[StudyView | None] = []
    for study_id, of_study in by_study.items():
        raw = {row.key: row.value_json for row in of_study if row.key is not None}
        team = raw.get(ATTR_TEAM)
        if ATTR_SPEC not in raw or team is None or json.loads(team) != who.team:
            out.append(None)
            continue
        attrs = {key: json.loads(value) for key, value in raw.items()}
        first = of_study[0]
        out.append(StudyView(study_id, first.study_name, attrs, TrialCounts(),
                             _direction_of(first.direction)))
    return out


def get_study(storage: RDBStorage, study_id: int, who: Principal) -> StudyView:
    """The study if ``who`` may read it; 404 otherwise (not 403: no one learns it exists).

    Name, direction and user attributes in one query, the trial counts in a second, on
    one connection.
    """
    with storage.engine.connect() as conn:
        views = _views(conn.execute(_STUDY_ROWS, {"id": study_id}).all(), who)
        if not views or views[0] is None:
            raise not_found(f"study {study_id}")
        view = views[0]
        view.counts = trial_counts(storage, [study_id], conn=conn).get(study_id, TrialCounts())
    return view


def list_studies(storage: RDBStorage, who: Principal) -> list[StudyView]:
    """The studies ``who`` may read, in the order they were created."""
    with storage.engine.connect() as conn:
        rows = conn.execute(_ALL_STUDY_ROWS).all()
        found = [view for view in _views(rows, who) if view is not None]
        counts = trial_counts(storage, [v.id for v in found], conn=conn)
    for view in found:
        view.counts = counts.get(view.id, TrialCounts())
    return found


def _writable(view: StudyView, who: Principal) -> None:
    if view.user_attrs.get(ATTR_OWNER) != who.user:
        raise ApiError(403, f"only the owner ({view.user_attrs.get(ATTR_OWNER)}) may change study {view.id}")


def cancel_study(storage: RDBStorage, view: StudyView, who: Principal) -> None:
    """Mark the study cancelled and end its queued trials (FAIL, reason "study cancelled").

    A queued trial is claimed first (the same atomic WAITING -> RUNNING step a worker takes),
    so a trial a worker has just started is never taken from it: running trials see the
    cancellation between epochs and end themselves.
    """
    _writable(view, who)
    if view.state in (StudyState.COMPLETED, StudyState.FAILED):
        raise conflict(f"study {view.id} has already {view.state.value}")
    storage.set_study_user_attr(view.id, ATTR_CANCELLED, True)
    for trial in storage.get_all_trials(view.id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, TrialState.RUNNING):
                storage.set_trial_user_attr(trial._trial_id, ATTR_FAIL_REASON, "study cancelled")
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue


def delete_study(storage: RDBStorage, view: StudyView, who: Principal) -> None:
    _writable(view, who)
    if view.counts.running:
        raise conflict(f"study {view.id} has {view.counts.running} running trial(s); cancel it and "
                       "delete it once they have ended")
    if view.state in (StudyState.QUEUED, StudyState.RUNNING):
        raise conflict(f"study {view.id} is {view.state.value}; cancel it before deleting it")
    storage.delete_study(view.id)


# -- serialisation ------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def retried_numbers(trials: list[FrozenTrial]) -> dict[int, int]:
    """Original trial number -> number of the trial that retried it."""
    out: dict[int, int] = {}
    for t in trials:
        for n in t.system_attrs.get("retry_history", []):
            out[n] = t.number
    return out


# The user attributes ``trial_dict`` reads without ``detail``: a page of trials loads only these
# (not the confusion matrices, which grow with the square of the classes).
METRIC_ATTRS = tuple(f"{split}_{k}" for split in ("val", "test") for k in METRIC_KEYS)
PER_CLASS_ATTRS = {split: f"{split}_per_class_accuracy" for split in ("val", "test")}
LIST_ATTRS = frozenset({
    ATTR_FAIL_REASON, ATTR_WORKER, "device", "loss_params", "baseline", *METRIC_ATTRS,
    *PER_CLASS_ATTRS.values(),
})


def trial_dict(t: FrozenTrial, retried_by: dict[int, int] | None = None,
               detail: bool = False) -> dict[str, Any]:
    return with_retry(_trial_item(t, detail), retried_by or {})


def with_retry(item: dict[str, Any], retried_by: dict[int, int]) -> dict[str, Any]:
    """``item`` with "retried as" added to its fail reason where a later trial retried it:
    the one part of a finished trial's item that other trials change."""
    retried_as = retried_by.get(item["number"])
    if item["state"] != "fail" or retried_as is None:
        return item
    return {**item, "fail_reason": f"{item['fail_reason']}; retried as trial {retried_as}"}


def _trial_item(t: FrozenTrial, detail: bool) -> dict[str, Any]:
    attrs = t.user_attrs
    reason = attrs.get(ATTR_FAIL_REASON) or \
        "its worker stopped sending heartbeats (killed or cut off from the store)"
    duration = (t.datetime_complete - t.datetime_start).total_seconds() \
        if t.datetime_complete and t.datetime_start else None
    out: dict[str, Any] = {
        "number": t.number,
        "state": t.state.name.lower(),
        "value": _clean(t.value) if t.state == TrialState.COMPLETE else None,
        "params": t.params,
        "loss": t.params.get("loss"),
        "loss_params": attrs.get("loss_params"),
        "baseline": bool(attrs.get("baseline", False)),
        "metrics": {key: _clean(attrs[key]) for key in METRIC_ATTRS if key in attrs},
        "per_class_accuracy": {split: attrs[key] for split, key in PER_CLASS_ATTRS.items()
                               if key in attrs},
        "duration_s": duration,
        "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
        "worker": attrs.get(ATTR_WORKER),
        "device": attrs.get("device"),
        "fail_reason": reason if t.state == TrialState.FAIL else None,
        "retry_of": (t.system_attrs.get("retry_history") or [None])[-1],
    }
    if detail:
        out["intermediate_values"] = {str(k): _clean(v) for k, v in sorted(t.intermediate_values.items())}
        out["counts"] = attrs.get("counts")
        out["val_confusion"] = attrs.get("val_confusion")
        out["test_confusion"] = attrs.get("test_confusion")
        out["wall_time_s"] = attrs.get("wall_time_s")
    return out


@dataclass(frozen=True)
class BestTrial:
    """What a study's summary shows of its best trial."""

    trial_id: int
    number: int
    value: float
    params: dict[str, Any]


@functools.lru_cache(maxsize=1024)
def _distribution(stored: str) -> BaseDistribution:
    """A parameter's distribution from its stored JSON; a study's trials share a few texts."""
    return json_to_distribution(stored)


# Optuna's order for the best trial (``TrialModel.find_max_value_trial_id``): infinities by
# their sign, then the value; ties go to the earliest trial, so every route names the same one.
# Ranked per study, so that one query answers for a whole list of studies.
_BEST = ("SELECT trial_id, study_id, number, value, value_type FROM ("
         "SELECT t.trial_id, t.study_id, t.number, v.value, v.value_type, ROW_NUMBER() OVER ("
         "PARTITION BY t.study_id ORDER BY "
         "CASE v.value_type WHEN 'INF_NEG' THEN -1 WHEN 'FINITE' THEN 0 ELSE 1 END {order}, "
         "v.value {order}, t.number) AS pos FROM trials t "
         "JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
         "WHERE t.study_id IN :ids AND t.state = 'COMPLETE') ranked WHERE pos = 1")
_BEST_BY_DIRECTION = {
    StudyDirection.MAXIMIZE: sa.text(_BEST.format(order="DESC")).bindparams(
        sa.bindparam("ids", expanding=True)),
    StudyDirection.MINIMIZE: sa.text(_BEST.format(order="ASC")).bindparams(
        sa.bindparam("ids", expanding=True)),
}
_PARAMS_OF = sa.text("SELECT trial_id, param_name, param_value, distribution_json FROM trial_params "
                     "WHERE trial_id IN :ids ORDER BY param_id").bindparams(
    sa.bindparam("ids", expanding=True))
_STORED_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf}


def best_of_each(storage: RDBStorage, views: list[StudyView], *,
                 conn: sa.Connection | None = None) -> dict[int, BestTrial]:
    """Study id -> number, value and parameters of its best trial, for the studies that have
    a completed trial: one query per direction and one for the parameters, on one connection
    (a list of 200 studies is not 400 round trips), for the studies not remembered since their
    last completed trial."""
    cache: LRU[BestTrial] = remembered(storage, "best")
    out: dict[int, BestTrial] = {}
    keys: dict[int, tuple[Any, ...]] = {}
    by_direction: dict[StudyDirection, list[int]] = defaultdict(list)
    for view in views:
        if view.counts.complete:
            keys[view.id] = (view.id, view.name, view.user_attrs.get(ATTR_CREATED),
                             view.counts.complete)
            known = cache.get(keys[view.id])
            if known is not None:
                out[view.id] = known
                continue
            direction = view.direction if view.direction == StudyDirection.MAXIMIZE \
                else StudyDirection.MINIMIZE
            by_direction[direction].append(view.id)
    if not by_direction:
        return out
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    with connected(storage, conn) as db:
        rows = [row for direction, ids in by_direction.items()
                for row in db.execute(_BEST_BY_DIRECTION[direction], {"ids": ids})]
        if rows:
            for trial_id, name, value, dist in db.execute(
                    _PARAMS_OF, {"ids": [row.trial_id for row in rows]}):
                params[trial_id][name] = _distribution(dist).to_external_repr(value)
    for row in rows:
        kind = getattr(row.value_type, "name", str(row.value_type))
        out[row.study_id] = BestTrial(row.trial_id, row.number, _STORED_INF.get(kind, row.value),
                                      params[row.trial_id])
        # Counted before this query ran, so the best found includes at least those trials.
        cache.put(keys[row.study_id], out[row.study_id])
    return out


def best_of(storage: RDBStorage, view: StudyView, *,
            conn: sa.Connection | None = None) -> BestTrial | None:
    """Number, value and parameters of the study's best trial; None before one completes."""
    return best_of_each(storage, [view], conn=conn).get(view.id)


def best_trial(storage: RDBStorage, view: StudyView) -> FrozenTrial | None:
    """The whole best trial (the same one ``best_of`` names)."""
    if view.counts.complete == 0:
        return None
    with storage.engine.connect() as conn:
        best = best_of(storage, view, conn=conn)
        found = [] if best is None else _whole_trials(storage, conn, [best.trial_id])
    return found[0] if found else None  # none, or deleted in between


# -- pages of trials ----------------------------------------------------------------------

_LOSS_PARAMS = sa.text(
    "SELECT p.trial_id, p.param_value, p.distribution_json FROM trial_params p "
    "JOIN trials t ON t.trial_id = p.trial_id WHERE t.study_id = :id AND p.param_name = 'loss'")
_RETRIES = sa.text(
    "SELECT t.number, a.value_json FROM trial_system_attributes a "
    "JOIN trials t ON t.trial_id = a.trial_id "
    "WHERE t.study_id = :id AND a.key = 'retry_history' ORDER BY t.trial_id")
_TRIAL_BY_NUMBER = sa.text("SELECT trial_id FROM trials WHERE study_id = :id AND number = :number")


def _retried(conn: sa.Connection, study_id: int) -> dict[int, int]:
    """``retried_numbers`` of the whole study, from the retry histories alone."""
    out: dict[int, int] = {}
    for number, history in conn.execute(_RETRIES, {"id": study_id}):
        for n in json.loads(history):
            out[n] = number
    return out


def _local(utc: dt.datetime | None) -> dt.datetime | None:
    """Optuna's stored naive UTC as the naive local time its ``FrozenTrial`` carries."""
    return None if utc is None else utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)


def load_trials(storage: RDBStorage, trial_ids: list[int], *, steps: bool = True,
                user_keys: Collection[str] | None = None,
                conn: sa.Connection | None = None) -> list[FrozenTrial]:
    """These trials, in trial order, as Optuna's storage builds them (a test holds them equal).

    Read column by column, six queries on one connection: Optuna's own loader makes an ORM
    object of every attribute row, about 2 ms per trial with a worker's metrics, which is what
    made a page of 50 trials cost 100 ms. For a page of trials, ``steps=False`` leaves the
    epoch values out and ``user_keys`` names the only user attributes to read.
    """
    if not trial_ids:
        return []
    m = optuna_models
    ids = list(trial_ids)
    children: dict[str, dict[int, list[Any]]] = {}
    with connected(storage, conn) as db:
        heads = _heads(db, ids)
        tables = {
            "values": (m.TrialValueModel, ("objective", "value", "value_type"), "trial_value_id"),
            "params": (m.TrialParamModel, ("param_name", "param_value", "distribution_json"), "param_id"),
            "user": (m.TrialUserAttributeModel, ("key", "value_json"), "trial_user_attribute_id"),
            "system": (m.TrialSystemAttributeModel, ("key", "value_json"), "trial_system_attribute_id"),
        }
        if steps:
            tables["steps"] = (m.TrialIntermediateValueModel,
                               ("step", "intermediate_value", "intermediate_value_type"),
                               "trial_intermediate_value_id")
        for name, (model, columns, order) in tables.items():
            grouped = children[name] = defaultdict(list)
            query = sa.select(model.trial_id, *(getattr(model, c) for c in columns)) \
                .where(model.trial_id.in_(ids)).order_by(getattr(model, order))
            if name == "user" and user_keys is not None:
                query = query.where(model.key.in_(sorted(user_keys)))
            for row in db.execute(query).all():
                grouped[row[0]].append(row[1:])
    return [_frozen(head, {name: rows.get(head.trial_id, []) for name, rows in children.items()})
            for head in heads]


def _remembered_or_loaded(cache: LRU[T], heads: list[Any],
                          load: Callable[[list[int]], list[FrozenTrial]],
                          shown: Callable[[FrozenTrial], T]) -> list[T]:
    """What ``shown`` makes of the trial of each row in ``heads``, in trial order: finished
    trials from ``cache`` (see ``read_cache``), the others loaded with ``load`` and, once
    finished, remembered. A trial deleted in between is left out."""
    known = {head.trial_id: cache.get(tuple(head)) for head in heads if head.state.is_finished()}
    missing = [head.trial_id for head in heads if known.get(head.trial_id) is None]
    loaded = {t._trial_id: t for t in load(missing)} if missing else {}
    out = []
    for head in heads:
        value = known.get(head.trial_id)
        if value is None:
            trial = loaded.get(head.trial_id)
            if trial is None:
                continue
            value = shown(trial)
            if head.state.is_finished() and trial.state == head.state:
                cache.put(tuple(head), value)
        out.append(value)
    return out


def _whole_trials(storage: RDBStorage, conn: sa.Connection, trial_ids: list[int]) -> list[FrozenTrial]:
    """``load_trials`` of these trials, finished ones remembered."""
    return _remembered_or_loaded(remembered(storage, "whole"), _heads(conn, trial_ids),
                                 lambda ids: load_trials(storage, ids, conn=conn), lambda t: t)


def _head_rows() -> sa.Select[Any]:
    """The columns of Optuna's ``trials`` table that identify a trial and its state."""
    m = optuna_models.TrialModel
    return sa.select(m.trial_id, m.study_id, m.number, m.state, m._datetime_start_utc,
                     m._datetime_complete_utc)


def _heads(db: sa.Connection, trial_ids: list[int]) -> list[Any]:
    """The rows of these trials, in trial order."""
    if not trial_ids:
        return []
    m = optuna_models.TrialModel
    return db.execute(_head_rows().where(m.trial_id.in_(trial_ids)).order_by(m.trial_id)).all()


def _frozen(head: Any, rows: dict[str, list[Any]]) -> FrozenTrial:
    m = optuna_models
    values: list[float] | None = None
    if rows["values"]:
        values = [0.0] * len(rows["values"])
        for objective, value, kind in rows["values"]:
            values[objective] = m.TrialValueModel.stored_repr_to_value(value, kind)
    dists = {name: _distribution(dist) for name, _, dist in rows["params"]}
    return FrozenTrial(
        number=head.number, state=head.state, value=None, values=values,
        datetime_start=_local(head.datetime_start), datetime_complete=_local(head.datetime_complete),
        params={name: dists[name].to_external_repr(value) for name, value, _ in rows["params"]},
        distributions=dists,
        user_attrs={key: json.loads(value) for key, value in rows["user"]},
        system_attrs={key: json.loads(value) for key, value in rows["system"]},
        intermediate_values={
            step: m.TrialIntermediateValueModel.stored_repr_to_intermediate_value(value, kind)
            for step, value, kind in rows.get("steps", [])},
        trial_id=head.trial_id,
    )


def trial_page(storage: RDBStorage, view: StudyView, state: TrialState | None, loss: str | None,
               offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(trials matching, the page of them in trial order as ``trial_dict`` gives them).

    Only the page's trials are loaded; Optuna's ``get_all_trials`` would read every trial with
    every attribute, seconds at a few thousand trials.
    """
    m = optuna_models.TrialModel
    where = [m.study_id == view.id, *([m.state == state] if state is not None else [])]
    with storage.engine.connect() as conn:
        if loss is None:
            total = conn.execute(sa.select(sa.func.count()).select_from(m).where(*where)).scalar_one()
            heads = conn.execute(_head_rows().where(*where).order_by(m.trial_id)
                                 .limit(limit).offset(offset)).all()
        else:
            of_loss = {trial_id for trial_id, value, dist in conn.execute(_LOSS_PARAMS, {"id": view.id})
                       if _distribution(dist).to_external_repr(value) == loss}
            every = conn.execute(sa.select(m.trial_id).where(*where).order_by(m.trial_id)).scalars()
            matching = [i for i in every if i in of_loss]
            total, heads = len(matching), _heads(conn, matching[offset:offset + limit])
        retried = _retried(conn, view.id)
        items = _page_items(storage, conn, heads)
    return total, [with_retry(item, retried) for item in items]


def _page_items(storage: RDBStorage, conn: sa.Connection, heads: list[Any]) -> list[dict[str, Any]]:
    """The trials of these rows as a page shows them (without "retried as"), in trial order."""
    return _remembered_or_loaded(
        remembered(storage, "page"), heads,
        lambda ids: load_trials(storage, ids, steps=False, user_keys=LIST_ATTRS, conn=conn),
        lambda t: _trial_item(t, detail=False))


def trial_by_number(storage: RDBStorage, view: StudyView,
                    number: int) -> tuple[FrozenTrial, dict[int, int]]:
    """One trial and ``retried_numbers`` of its study; 404 if the study has no such trial."""
    with storage.engine.connect() as conn:
        trial_id = conn.execute(_TRIAL_BY_NUMBER, {"id": view.id, "number": number}).scalar()
        if trial_id is None:
            raise not_found(f"trial {number} of study {view.id}")
        retried = _retried(conn, view.id)
        found = _whole_trials(storage, conn, [trial_id])
    if not found:  # deleted in between
        raise not_found(f"trial {number} of study {view.id}")
    return found[0], retried


def study_dict(view: StudyView, best: BestTrial | FrozenTrial | None, *,
               detail: bool = False) -> dict[str, Any]:
    spec = view.spec
    out: dict[str, Any] = {
        "id": view.id,
        "name": view.name,
        "state": view.state.value,
        "owner": view.user_attrs.get(ATTR_OWNER),
        "team": view.user_attrs.get(ATTR_TEAM),
        "created": view.user_attrs.get(ATTR_CREATED),
        "n_trials": spec.budget.n_trials,
        "trials": {"waiting": view.counts.waiting, "running": view.counts.running,
                   "complete": view.counts.complete, "pruned": view.counts.pruned,
                   "fail": view.counts.fail},
        "objective": spec.objective.model_dump(),
        "best_trial": None if best is None else {"number": best.number, "value": _clean(best.value),
                                                 "params": best.params},
        "links": links(view.id),
    }
    if detail:
        out["spec"] = json.loads(view.user_attrs[ATTR_SPEC])
    return out


def links(study_id: int) -> dict[str, str]:
    base = f"/api/v1/studies/{study_id}"
    return {"self": base, "trials": f"{base}/trials", "best": f"{base}/best",
            "report": f"{base}/report", "dashboard": f"/dashboard/studies/{study_id}"}
