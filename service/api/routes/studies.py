"""Studies and their trials."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from optuna.trial import TrialState

from search_spaces.catalogue import LOSSES
from search_spaces.spec import StudySpec
from search_spaces.store import StudyState
from service import studies as svc
from service.api.deps import MAX_ID, CurrentUser, SettingsDep, StorageDep, StudyDep
from service.api.json_body import JSONBodyRoute
from service.errors import ApiError, not_found
from service.report import study_report

router = APIRouter(prefix="/studies", tags=["studies"], route_class=JSONBodyRoute)

TrialStateName = Literal["waiting", "running", "complete", "pruned", "fail"]
# A filter naming a loss outside the catalogue is refused with the valid names, not answered
# with an empty page.
LossName = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
TrialNumber = Annotated[int, PathParam(ge=0, le=MAX_ID, description="the trial's number in its study")]


@router.post("", status_code=201)
def submit_study(spec: StudySpec, storage: StorageDep, who: CurrentUser,
                 response: Response) -> dict[str, Any]:
    """Validate the spec, create the study and queue every trial it asks for."""
    study_id = svc.create_study(storage, spec, who)
    view = svc.get_study(storage, study_id, who)
    response.headers["Location"] = f"/api/v1/studies/{study_id}"
    return svc.study_dict(view, None)


@router.get("")
def list_studies(storage: StorageDep, who: CurrentUser,
                 state: StudyState | None = None) -> list[dict[str, Any]]:
    views = svc.list_studies(storage, who)
    if state is not None:
        views = [v for v in views if v.state == state]
    best = svc.best_of_each(storage, views)
    return [svc.study_dict(v, best.get(v.id)) for v in views]


@router.get("/{study_id}")
def get_study(view: StudyDep, storage: StorageDep) -> dict[str, Any]:
    return svc.study_dict(view, svc.best_of(storage, view), detail=True)


@router.post("/{study_id}/cancel")
def cancel_study(view: StudyDep, storage: StorageDep, who: CurrentUser) -> dict[str, Any]:
    svc.cancel_study(storage, view, who)
    return svc.study_dict(svc.get_study(storage, view.id, who), svc.best_of(storage, view))


@router.delete("/{study_id}", status_code=204)
def delete_study(view: StudyDep, storage: StorageDep, who: CurrentUser) -> Response:
    svc.delete_study(storage, view, who)
    return Response(status_code=204)


def _trials(storage: StorageDep, view: svc.StudyView, state: TrialStateName | None,
            loss: str | None) -> tuple[list[Any], dict[int, int]]:
    states = (TrialState[state.upper()],) if state else None
    trials = storage.get_all_trials(view.id, deepcopy=False, states=states)
    retried = svc.retried_numbers(trials if states is None else storage.get_all_trials(
        view.id, deepcopy=False))
    if loss is not None:
        trials = [t for t in trials if t.params.get("loss") == loss]
    return trials, retried


@router.get("/{study_id}/trials")
def list_trials(
    view: StudyDep,
    storage: StorageDep,
    state: TrialStateName | None = None,
    loss: LossName | None = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    total, items = svc.trial_page(storage, view, TrialState[state.upper()] if state else None,
                                  loss, offset, limit)
    return {"total": total, "offset": offset, "limit": limit, "items": items}


CSV_COLUMNS = ["number", "state", "value", "loss", "params", "duration_s", "worker", "fail_reason"]


@router.get("/{study_id}/trials.csv")
def export_trials(view: StudyDep, storage: StorageDep,
                  state: TrialStateName | None = None) -> Response:
    trials, retried = _trials(storage, view, state, None)
    rows = [svc.trial_dict(t, retried) for t in trials]
    metric_cols = sorted({k for r in rows for k in r["metrics"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS + metric_cols)
    for r in rows:
        writer.writerow([json.dumps(r[c], sort_keys=True) if c == "params" else r[c]
                         for c in CSV_COLUMNS] + [r["metrics"].get(m) for m in metric_cols])
    return Response(buf.getvalue(), media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="study-{view.id}-trials.csv"'})


def _trial(storage: StorageDep, view: svc.StudyView, number: int) -> Any:
    return svc.trial_by_number(storage, view, number)


@router.get("/{study_id}/trials/{number}")
def get_trial(view: StudyDep, storage: StorageDep, number: TrialNumber) -> dict[str, Any]:
    t, retried = _trial(storage, view, number)
    out = svc.trial_dict(t, retried, detail=True)
    out["artifacts"] = _artifacts(storage, view.id, t)
    return out


def _artifacts(storage: StorageDep, study_id: int, t: Any) -> list[dict[str, Any]]:
    from optuna.artifacts import get_all_artifact_meta

    return [{"id": a.artifact_id, "filename": a.filename, "mimetype": a.mimetype,
             "url": f"/api/v1/studies/{study_id}/trials/{t.number}/artifacts/{a.artifact_id}"}
            for a in get_all_artifact_meta(t, storage=storage)]


@router.get("/{study_id}/trials/{number}/artifacts/{artifact_id}")
def get_artifact(view: StudyDep, storage: StorageDep, settings: SettingsDep, number: TrialNumber,
                 artifact_id: Annotated[str, PathParam(pattern=r"^[0-9a-f\-]{1,64}$")]) -> FileResponse:
    t, _ = _trial(storage, view, number)
    meta = {a["id"]: a for a in _artifacts(storage, view.id, t)}
    if artifact_id not in meta:
        raise not_found(f"artifact {artifact_id} of trial {number}")
    path = Path(settings.artifacts_dir) / artifact_id
    if not path.is_file():
        raise ApiError(410, f"artifact {artifact_id} is recorded but its file is gone")
    return FileResponse(path, media_type=meta[artifact_id]["mimetype"],
                        filename=meta[artifact_id]["filename"])


@router.get("/{study_id}/best")
def best(view: StudyDep, storage: StorageDep) -> dict[str, Any]:
    t = svc.best_trial(storage, view)
    if t is None:
        raise not_found(f"a completed trial of study {view.id}")
    return svc.trial_dict(t, detail=True)


@router.get("/{study_id}/report")
def report(view: StudyDep, storage: StorageDep) -> dict[str, Any]:
    return study_report(storage, view)
