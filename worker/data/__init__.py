"""Long-tailed data sets: registry, the entry point ``build_dataset`` and a per-process cache.

Every builder returns a ``LongTailData``: a long-tailed training split, a balanced validation
split drawn from the training images the long-tailed subset left unused (never from the test
set), and the balanced test set, all as tensors ready to move to the device whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from search_spaces.spec import DatasetSpec
from worker.data.base import DataMissing, LongTailData, longtail_counts, split_longtail
from worker.data.builtin import build_digits, build_synthetic
from worker.data.files import build_cifar10, build_cifar100, build_fashion_mnist, build_npz

Builder = Callable[..., LongTailData]

BUILDERS: dict[str, Builder] = {
    "synthetic-lt": build_synthetic,
    "digits-lt": build_digits,
    "fashion-mnist-lt": build_fashion_mnist,
    "cifar10-lt": build_cifar10,
    "cifar100-lt": build_cifar100,
    "npz": build_npz,
}

# A worker trains trial after trial of one study: keep the last few data sets in memory.
CACHE_SIZE = 2
_cache: OrderedDict[tuple, LongTailData] = OrderedDict()


def build_dataset(spec: DatasetSpec, *, data_root: str | Path | None = None) -> LongTailData:
    """Build the data set of ``spec`` from scratch (files are read every call)."""
    if spec.name not in BUILDERS:
        raise ValueError(f"unknown data set {spec.name!r}; valid: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[spec.name](spec, data_root=Path(data_root) if data_root else None)


def _cache_key(spec: DatasetSpec, data_root: str | Path | None) -> tuple:
    root = str(Path(data_root).resolve()) if data_root else None
    key: tuple = (spec.model_dump_json(), root)
    if spec.name == "npz" and root is not None:
        path = Path(root) / str(spec.file)
        if path.exists():  # a replaced file is a different data set
            st = path.stat()
            key += (st.st_mtime_ns, st.st_size)
    return key


def cached_dataset(spec: DatasetSpec, *, data_root: str | Path | None = None) -> LongTailData:
    """``build_dataset`` once per process for a given spec and data root.

    The returned tensors are shared between callers: treat them as read-only.
    """
    key = _cache_key(spec, data_root)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    data = build_dataset(spec, data_root=data_root)
    _cache[key] = data
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return data


def clear_cache() -> None:
    _cache.clear()


__all__ = ["BUILDERS", "DataMissing", "LongTailData", "build_dataset", "cached_dataset",
           "clear_cache", "longtail_counts", "split_longtail"]
