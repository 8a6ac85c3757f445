"""Studies and trials as the API sees them, over the one Optuna store. No FastAPI here.

Submission is all-or-nothing: the Optuna study is created, every asked trial is queued
(baselines first, with their fixed parameters), and only then is the spec written, which is
what makes workers see the study. Any failure on the way deletes the study again.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
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
    study_state,
    trial_counts,
)
from service.errors import ApiError, conflict, not_found


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
        study = optuna.load_study(study_name=spec.name, storage=storage)
        baselines = baseline_params(spec) if spec.baselines else []
        for params in baselines:
            study.enqueue_trial(params, user_attrs={"baseline": True})
        for _ in range(spec.budget.n_trials - len(baselines)):
            study.enqueue_trial({})
        storage.set_study_user_attr(study_id, ATTR_OWNER, who.user)
        storage.set_study_user_attr(study_id, ATTR_TEAM, who.team)
        storage.set_study_user_attr(study_id, ATTR_CREATED, dt.datetime.now(dt.UTC).isoformat())
        storage.set_study_user_attr(study_id, ATTR_SPEC, spec.model_dump_json())
    except BaseException:
        storage.delete_study(study_id)
        raise
    return study_id


@dataclass
class StudyView:
    id: int
    name: str
    user_attrs: dict[str, Any]
    counts: TrialCounts
    direction: StudyDirection

    @property
    def spec(self) -> StudySpec:
        return parse_spec(json.loads(self.user_attrs[ATTR_SPEC]))

    @property
    def state(self) -> StudyState:
        return study_state(self.user_attrs, self.counts)


def _visible(user_attrs: dict[str, Any], who: Principal) -> bool:
    return ATTR_SPEC in user_attrs and user_attrs.get(ATTR_TEAM) == who.team


def list_studies(storage: RDBStorage, who: Principal) -> list[StudyView]:
    frozen = [s for s in storage.get_all_studies() if _visible(s.user_attrs, who)]
    counts = trial_counts(storage, [s._study_id for s in frozen])
    return [StudyView(s._study_id, s.study_name, s.user_attrs, counts.get(s._study_id, TrialCounts()),
                      s.direction) for s in frozen]


def get_study(storage: RDBStorage, study_id: int, who: Principal) -> StudyView:
    """The study if ``who`` may read it; 404 otherwise (not 403: no one learns it exists)."""
    try:
        attrs = storage.get_study_user_attrs(study_id)
        name = storage.get_study_name_from_id(study_id)
        direction = storage.get_study_directions(study_id)[0]
    except KeyError:
        raise not_found(f"study {study_id}") from None
    if not _visible(attrs, who):
        raise not_found(f"study {study_id}")
    counts = trial_counts(storage, [study_id]).get(study_id, TrialCounts())
    return StudyView(study_id, name, attrs, counts, direction)


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


def trial_dict(t: FrozenTrial, retried_by: dict[int, int] | None = None,
               detail: bool = False) -> dict[str, Any]:
    attrs = t.user_attrs
    reason = attrs.get(ATTR_FAIL_REASON)
    retried_as = (retried_by or {}).get(t.number)
    if t.state == TrialState.FAIL and not reason:
        reason = "its worker stopped sending heartbeats (killed or cut off from the store)"
    if t.state == TrialState.FAIL and retried_as is not None:
        reason = f"{reason}; retried as trial {retried_as}"
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
        "metrics": {f"{split}_{k}": _clean(attrs.get(f"{split}_{k}"))
                    for split in ("val", "test") for k in METRIC_KEYS if f"{split}_{k}" in attrs},
        "per_class_accuracy": {split: attrs.get(f"{split}_per_class_accuracy")
                               for split in ("val", "test")
                               if f"{split}_per_class_accuracy" in attrs},
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


def best_trial(storage: RDBStorage, view: StudyView) -> FrozenTrial | None:
    if view.counts.complete == 0:
        return None
    try:
        return storage.get_best_trial(view.id)
    except ValueError:
        return None


def study_dict(view: StudyView, best: FrozenTrial | None, *, detail: bool = False) -> dict[str, Any]:
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
