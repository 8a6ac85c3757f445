"""Settings: command line > environment (``TAILTUNE_*``) > defaults, resolved in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

from search_spaces.store import DEFAULT_URL


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_URL
    artifacts_dir: str = "artifacts"
    data_root: str | None = None
    auth: str = "none"  # "none": one local user; "token": bearer API tokens per user and team
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 1_000_000
    dashboard: bool = True

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``TAILTUNE_<FIELD>`` variables, then non-None ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"TAILTUNE_{f.name.upper()}")
            if raw is None:
                continue
            if f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("bool", bool):
                values[f.name] = raw.lower() in ("1", "true", "yes", "on")
            else:
                values[f.name] = raw
        settings = replace(cls(), **values)
        settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
        if settings.auth not in ("none", "token"):
            raise ValueError(f"TAILTUNE_AUTH must be 'none' or 'token', got {settings.auth!r}")
        return settings
