"""Tiny data sets in the on-disk formats the builders read, written on the fly."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest


def unique_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``n`` uint8 images, each different from every other (the index sits in the pixels)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = x.reshape(n, -1)
    flat[:, 0] = np.arange(n) % 256
    flat[:, 1] = np.arange(n) // 256 % 256
    flat[:, 2] = seed % 256
    return x


def write_cifar10(root: Path, per_class: int = 40, test_per_class: int = 10) -> Path:
    """cifar-10-batches-py with five train batches and a test batch, channel c of every image
    filled around 10 / 100 / 200 so the channel order can be checked."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n_per_class: int, seed: int) -> dict:
        y = np.repeat(np.arange(10), n_per_class)
        x = unique_images(len(y), (3, 32, 32), seed).astype(np.int64)
        x[:, :, 1:] = np.array([10, 100, 200])[None, :, None, None] + rng.integers(0, 3, 1)
        return {"data": x.astype(np.uint8).reshape(len(y), 3072), "labels": y.tolist()}

    train = batch(per_class, 1)
    order = rng.permutation(len(train["labels"]))
    for i, part in enumerate(np.array_split(order, 5), start=1):
        with (folder / f"data_batch_{i}").open("wb") as f:
            pickle.dump({"data": train["data"][part],
                         "labels": [train["labels"][j] for j in part]}, f)
    with (folder / "test_batch").open("wb") as f:
        pickle.dump(batch(test_per_class, 2), f)
    return root


def write_cifar100(root: Path, per_class: int = 6, test_per_class: int = 2) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n, seed in (("train", per_class, 3), ("test", test_per_class, 4)):
        y = np.repeat(np.arange(100), n)
        x = unique_images(len(y), (3, 32, 32), seed).reshape(len(y), 3072)
        with (folder / name).open("wb") as f:
            pickle.dump({"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()},
                        f)
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_fashion_mnist(root: Path, per_class: int = 30, test_per_class: int = 5) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n, seed in (("train", per_class, 5), ("t10k", test_per_class, 6)):
        y = np.repeat(np.arange(10), n)
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", unique_images(len(y), (28, 28), seed))
        write_idx(raw / f"{split}-labels-idx1-ubyte.gz", y)
    return root


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path)


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path)


@pytest.fixture
def fmnist_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data root in torchvision's layout; the system copy is hidden so the root is read."""
    from worker.data import files

    monkeypatch.setattr(files, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.delenv("TAILTUNE_ALLOW_DOWNLOAD", raising=False)
    return write_fashion_mnist(tmp_path / "root")
