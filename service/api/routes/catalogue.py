"""What can be searched: losses, search-space presets, data sets, models."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from search_spaces import DATASETS, LOSSES, METRICS, MODELS, PRUNERS, SAMPLERS
from search_spaces.presets import preset_names, read_preset
from service.errors import not_found

router = APIRouter(tags=["catalogue"])


@router.get("/losses")
def list_losses() -> list[dict[str, Any]]:
    return [asdict(e) for e in LOSSES.values()]


@router.get("/search-spaces")
def list_search_spaces() -> list[dict[str, Any]]:
    return [{"name": n, "description": read_preset(n)["description"]} for n in preset_names()]


@router.get("/search-spaces/{name}")
def get_search_space(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise not_found(f"search space {name!r}")
    return {"name": name, **read_preset(name)}


@router.get("/catalogue")
def catalogue() -> dict[str, Any]:
    return {
        "datasets": [asdict(e) for e in DATASETS.values()],
        "models": [asdict(e) for e in MODELS.values()],
        "samplers": list(SAMPLERS),
        "pruners": list(PRUNERS),
        "metrics": list(METRICS),
    }
