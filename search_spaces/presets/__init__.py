"""Ready search spaces, one YAML file each: ``<name>.yaml`` with ``description`` and ``search_space``."""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml


def _files() -> dict[str, Any]:
    root = resources.files(__name__)
    return {f.name[: -len(".yaml")]: f for f in root.iterdir() if f.name.endswith(".yaml")}


def preset_names() -> list[str]:
    return sorted(_files())


def read_preset(name: str) -> dict[str, Any]:
    """The whole preset file: ``description`` and ``search_space``."""
    files = _files()
    if name not in files:
        shown = repr(name) if len(name) <= 60 else f"{name[:60]!r}... ({len(name)} characters)"
        raise ValueError(f"unknown search-space preset {shown}; valid: {', '.join(sorted(files))}")
    return yaml.safe_load(files[name].read_text(encoding="utf-8"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset's search space, ready for ``SearchSpace`` validation."""
    return read_preset(name)["search_space"]
