"""Long-tailed data sets: registry and the one entry point ``build_dataset``.

Every builder returns a ``LongTailData``: a long-tailed training split, a balanced validation
split drawn from the training images the long-tailed subset left unused (never from the test
set), and the balanced test set, all as tensors ready to move to the device whole.
"""

from __future__ import annotations

from pathlib import Path

from search_spaces.spec import DatasetSpec
from worker.data.base import DataMissing, LongTailData, longtail_counts
from worker.data.builtin import build_digits, build_synthetic

BUILDERS = {
    "synthetic-lt": build_synthetic,
    "digits-lt": build_digits,
}


def build_dataset(spec: DatasetSpec, *, data_root: str | Path | None = None) -> LongTailData:
    if spec.name not in BUILDERS:
        raise ValueError(f"unknown data set {spec.name!r}; valid: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[spec.name](spec, data_root=Path(data_root) if data_root else None)


__all__ = ["BUILDERS", "DataMissing", "LongTailData", "build_dataset", "longtail_counts"]
