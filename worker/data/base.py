"""The long-tailed split every data set goes through."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


class DataMissing(RuntimeError):
    """The files of a data set are not there; the message names the fix."""


@dataclass
class LongTailData:
    name: str
    x_train: Tensor  # float32, N x ... (images N x C x H x W, scaled and normalised)
    y_train: Tensor  # int64
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def class_counts(self) -> list[int]:
        return torch.bincount(self.y_train, minlength=self.num_classes).tolist()

    @property
    def is_image(self) -> bool:
        return self.x_train.ndim == 4

    def counts(self) -> dict[str, list[int]]:
        """Exact images per class in each split."""
        c = self.num_classes
        return {
            "train": self.class_counts,
            "val": torch.bincount(self.y_val, minlength=c).tolist(),
            "test": torch.bincount(self.y_test, minlength=c).tolist(),
        }


def longtail_counts(n_max: int, num_classes: int, ratio: float, profile: str = "exp") -> list[int]:
    """Images per class: ``exp`` is ``int(n_max * (1/ratio)^(i/(C-1)))``, class 0 the head;
    ``step`` keeps the first half of the classes at ``n_max`` and the rest at ``n_max/ratio``."""
    if profile == "exp":
        return [max(1, int(n_max * (1.0 / ratio) ** (i / (num_classes - 1)))) for i in range(num_classes)]
    if profile == "step":
        return [n_max if i < num_classes // 2 else max(1, int(n_max / ratio)) for i in range(num_classes)]
    raise ValueError(f"unknown imbalance profile {profile!r}; valid: exp, step")


def split_longtail(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, name: str,
    num_classes: int, ratio: float, profile: str, seed: int, n_max: int | None,
    val_per_class: int,
) -> LongTailData:
    """Draw the long-tailed training subset and a balanced validation split from ``x, y``.

    Validation images come from the images the subset left unused; where a class has too few
    of those, they come out of its long-tailed share (the train count then drops by as many).
    """
    rng = np.random.default_rng(seed)
    available = np.bincount(y, minlength=num_classes)
    head = int(min(available.max(), n_max or available.max()))
    wanted = longtail_counts(head, num_classes, ratio, profile)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_train = min(wanted[c], len(idx))
        n_val = min(val_per_class, len(idx) - 1)
        spare = len(idx) - n_train
        if spare < n_val:  # take the shortfall out of the long-tailed share, keep >= 1 train image
            n_train = max(1, len(idx) - n_val)
        train_idx.append(idx[:n_train])
        val_idx.append(idx[n_train:n_train + n_val])
    tr, va = np.concatenate(train_idx), np.concatenate(val_idx)
    as_x = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return LongTailData(name, as_x(x[tr]), as_y(y[tr]), as_x(x[va]), as_y(y[va]),
                        as_x(x_test), as_y(y_test), num_classes)
