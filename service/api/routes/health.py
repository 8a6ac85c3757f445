"""Liveness, readiness (the store answers), Prometheus metrics and the workers seen."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from search_spaces.store import StudyState, TrialCounts, study_state, trial_counts
from service.api.deps import CurrentUser, StorageDep
from service.errors import ApiError
from service.studies import list_studies

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(storage: StorageDep) -> dict[str, str]:
    try:
        with storage.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:
        raise ApiError(503, f"the store does not answer: {exc.__class__.__name__}") from exc
    return {"status": "ready"}


class StoreCollector:
    """Trials and studies per state, read from the store at each scrape."""

    def __init__(self, storage: Any) -> None:
        self.storage = storage

    def collect(self) -> Any:
        counts = trial_counts(self.storage)
        trials = GaugeMetricFamily("tailtune_trials", "Trials per state", labels=["state"])
        for state in ("waiting", "running", "complete", "pruned", "fail"):
            trials.add_metric([state], sum(getattr(c, state) for c in counts.values()))
        yield trials
        studies = GaugeMetricFamily("tailtune_studies", "Studies per state", labels=["state"])
        per_state = {s.value: 0 for s in StudyState}
        for s in self.storage.get_all_studies():
            per_state[study_state(s.user_attrs, counts.get(s._study_id, TrialCounts())).value] += 1
        for state, n in per_state.items():
            studies.add_metric([state], n)
        yield studies


@router.get("/metrics")
def metrics(request: Request) -> Response:
    registry = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(StoreCollector(request.app.state.storage))
        request.app.state.metrics_registry = registry
    from prometheus_client import REGISTRY

    body = generate_latest(REGISTRY) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/workers", tags=["workers"])
def workers(storage: StorageDep, who: CurrentUser) -> list[dict[str, Any]]:
    """Workers seen: one entry per running trial of the caller's studies, with its heartbeat."""
    views = {v.id: v for v in list_studies(storage, who) if v.counts.running}
    if not views:
        return []
    query = sa.text(
        "SELECT t.study_id, t.number, t.datetime_start, h.heartbeat, a.value_json "
        "FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'worker' "
        "WHERE t.state = 'RUNNING' AND t.study_id IN :ids"
    ).bindparams(sa.bindparam("ids", expanding=True)).columns(
        study_id=sa.Integer, number=sa.Integer, datetime_start=sa.DateTime, heartbeat=sa.DateTime,
        value_json=sa.String)
    with storage.engine.connect() as conn:
        rows = conn.execute(query, {"ids": list(views)}).all()
    return [{
        "worker": json.loads(worker) if worker else None,
        "study": study_id, "study_name": views[study_id].name, "trial": number,
        "started": start.isoformat() if start else None,
        "last_heartbeat": beat.isoformat() if beat else None,
    } for study_id, number, start, beat, worker in rows]
