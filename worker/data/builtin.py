"""Data sets that need no files: generated clusters and scikit-learn's bundled digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_spaces.spec import DatasetSpec
from worker.data.base import LongTailData, split_longtail


def build_synthetic(spec: DatasetSpec, *, data_root: Path | None = None) -> LongTailData:
    """Gaussian clusters in 32 dimensions, overlapping enough that the tail is hard."""
    c = spec.num_classes or 10
    n_max = spec.n_max or 500
    val = spec.val_per_class or 50
    rng = np.random.default_rng(spec.seed)
    centers = rng.normal(0.0, 1.0, size=(c, 32)).astype(np.float32)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(c), per_class)
        x = centers[y] + rng.normal(0.0, 1.2, size=(len(y), 32)).astype(np.float32)
        return x, y

    x, y = draw(n_max + val)
    x_test, y_test = draw(val)
    return split_longtail(x, y, x_test, y_test, name=spec.name, num_classes=c,
                          ratio=spec.imbalance_ratio, profile=spec.profile, seed=spec.seed,
                          n_max=n_max, val_per_class=val)


def build_digits(spec: DatasetSpec, *, data_root: Path | None = None) -> LongTailData:
    """scikit-learn's 1,797 8x8 digits: a fixed balanced test split of 30 per class, the
    rest for the long-tailed subset and the validation split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(12345)  # the test split never depends on the study's seed
    test = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:30] for k in range(10)])
    rest = np.setdiff1d(np.arange(len(y)), test)
    return split_longtail(x[rest], y[rest], x[test], y[test], name=spec.name, num_classes=10,
                          ratio=spec.imbalance_ratio, profile=spec.profile, seed=spec.seed,
                          n_max=spec.n_max, val_per_class=spec.val_per_class or 20)
