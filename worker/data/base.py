"""The long-tailed split every data set goes through."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


class DataMissing(RuntimeError):
    """The files of a data set are not there; the message names the fix."""


@dataclass
class LongTailData:
    name: str
    x_train: Tensor  # float32, N x ... (images N x C x H x W, normalised per channel)
    y_train: Tensor  # int64
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    # Per-channel statistics of the long-tailed training split that normalised every split
    # (in the units of the raw data, e.g. 0..255 for uint8 images).
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # Whether a horizontal flip keeps an image in its class (clothes, CIFAR objects: yes;
    # digits, unknown user data: no).
    hflip: bool = False
    # Images per class the imbalance profile asked for, before any validation shortfall.
    profile_counts: list[int] = field(default_factory=list)

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


def longtail_counts(n_max: int, num_classes: int, ratio: float,
                    profile: str = "exp") -> list[int]:
    """Images per class: ``exp`` is ``int(n_max * (1/ratio)^(i/(C-1)))``, class 0 the head;
    ``step`` keeps the first half of the classes at ``n_max`` and the rest at ``n_max/ratio``."""
    c = num_classes
    if profile == "exp":
        return [max(1, int(n_max * (1.0 / ratio) ** (i / (c - 1)))) for i in range(c)]
    if profile == "step":
        return [n_max if i < c // 2 else max(1, int(n_max / ratio)) for i in range(c)]
    raise ValueError(f"unknown imbalance profile {profile!r}; valid: exp, step")


def normalise(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> Tensor:
    """float32 ``(x - mean) / std`` per channel (axis 1: image channels or vector features)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    out = torch.from_numpy(np.array(x, dtype=np.float32))  # always a copy: x stays untouched
    out -= torch.from_numpy(mean.astype(np.float32)).reshape(shape)
    out /= torch.from_numpy(std.astype(np.float32)).reshape(shape)
    return out


def split_longtail(
    x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, name: str,
    num_classes: int, ratio: float, profile: str, seed: int, n_max: int | None,
    val_per_class: int, hflip: bool = False,
) -> LongTailData:
    """Draw the long-tailed training subset and a balanced validation split from ``x, y``.

    ``x`` is N x C x H x W images or N x D vectors in any numeric dtype (uint8 stays uint8
    until the subset is drawn, so a full data set never exists as float32). Validation images
    come from the images the subset left unused; where a class has too few of those, they come
    out of its long-tailed share (the train count then drops by as many, keeping at least one).
    Every split is normalised per channel with the statistics of the training split.
    """
    rng = np.random.default_rng(seed)
    available = np.bincount(y, minlength=num_classes)
    if (available < 2).any():
        short = np.flatnonzero(available < 2).tolist()
        raise ValueError(f"{name}: classes {short} have fewer than 2 images; need train + val")
    head = int(min(available.max(), n_max or available.max()))
    wanted = longtail_counts(head, num_classes, ratio, profile)
    train_idx, val_idx = [], []
    for c in range(num_classes):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_train = min(wanted[c], len(idx))
        n_val = min(val_per_class, len(idx) - 1)
        if len(idx) - n_train < n_val:
            n_train = len(idx) - n_val
        train_idx.append(idx[:n_train])
        val_idx.append(idx[n_train:n_train + n_val])
    tr, va = np.concatenate(train_idx), np.concatenate(val_idx)
    x_tr = x[tr]
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x_tr.mean(axis=axes, dtype=np.float64)
    std = np.maximum(x_tr.std(axis=axes, dtype=np.float64), 1e-6)  # a constant channel stays 0
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return LongTailData(
        name, normalise(x_tr, mean, std), as_y(y[tr]), normalise(x[va], mean, std), as_y(y[va]),
        normalise(x_test, mean, std), as_y(y_test), num_classes,
        mean=mean.tolist(), std=std.tolist(), hflip=hflip, profile_counts=wanted,
    )
