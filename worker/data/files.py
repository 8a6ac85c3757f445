"""Data sets read from files: Fashion-MNIST (IDX), CIFAR-10/100 (torchvision's pickles), npz.

Nothing here downloads unless ``TAILTUNE_ALLOW_DOWNLOAD=1`` is set: a worker on a closed network
fails fast with a message that names the fix instead of hanging on a socket.
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from search_spaces.spec import DatasetSpec
from worker.data.base import DataMissing, LongTailData, split_longtail

# Debian's dataset-fashion-mnist package; a module constant so tests can point it elsewhere.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEFAULT_VAL_PER_CLASS = 100


def _download_allowed() -> bool:
    return os.environ.get("TAILTUNE_ALLOW_DOWNLOAD", "") == "1"


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz`` or plain) of unsigned bytes as an array of its declared shape."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} bytes")
    return data.reshape(shape)


def _find_idx(directory: Path) -> list[Path] | None:
    found = []
    for stem in FASHION_MNIST_FILES:
        hits = [directory / f"{stem}{ext}" for ext in (".gz", "")]
        hit = next((h for h in hits if h.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def _fashion_mnist_files(data_root: Path | None) -> list[Path]:
    dirs = ([data_root / "FashionMNIST" / "raw"] if data_root else []) + [FASHION_MNIST_SYSTEM_DIR]
    for d in dirs:
        found = _find_idx(d)
        if found:
            return found
    if data_root is not None and _download_allowed():
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(data_root), train=True, download=True)
            FashionMNIST(str(data_root), train=False, download=True)
        except Exception as exc:  # noqa: BLE001 - any network or file error means "missing"
            raise DataMissing(f"Fashion-MNIST download into {data_root} failed: {exc}") from exc
        found = _find_idx(dirs[0])
        if found:
            return found
    where = " or ".join(str(d) for d in dirs)
    raise DataMissing(
        f"Fashion-MNIST files not found in {where}. Fix: `apt-get install dataset-fashion-mnist`"
        f" (files in {FASHION_MNIST_SYSTEM_DIR}), or copy {', '.join(FASHION_MNIST_FILES)}"
        " (.gz) into <data root>/FashionMNIST/raw/, or set TAILTUNE_ALLOW_DOWNLOAD=1 with a"
        " data root to let torchvision download them."
    )


def build_fashion_mnist(spec: DatasetSpec, *, data_root: Path | None = None) -> LongTailData:
    """Fashion-MNIST: 6,000 training images per class made long-tailed, the 10,000 test
    images as the balanced test set. Clothes survive a horizontal flip."""
    xtr, ytr, xte, yte = (read_idx(p) for p in _fashion_mnist_files(data_root))
    return split_longtail(
        xtr[:, None], ytr.astype(np.int64), xte[:, None], yte.astype(np.int64), name=spec.name,
        num_classes=10, ratio=spec.imbalance_ratio, profile=spec.profile, seed=spec.seed,
        n_max=spec.n_max, val_per_class=spec.val_per_class or DEFAULT_VAL_PER_CLASS, hflip=True,
    )


def _unpickle(path: Path) -> dict:
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")  # noqa: S301 - torchvision's own format


def _cifar(spec: DatasetSpec, data_root: Path | None, folder: str, train_files: list[str],
           test_file: str, label_key: str, num_classes: int) -> LongTailData:
    base = (data_root / folder) if data_root else None
    missing = [f for f in [*train_files, test_file] if base is None or not (base / f).is_file()]
    if missing:
        where = f"{base}" if base else f"<data root>/{folder} (no data root is configured)"
        raise DataMissing(
            f"{spec.name}: files {', '.join(missing)} not found in {where}. Fix: unpack "
            f"torchvision's CIFAR archive there (torchvision.datasets.CIFAR"
            f"{num_classes}(root=<data root>, download=True) on a machine with network)."
        )

    def load(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_unpickle(base / n) for n in names]
        x = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
        y = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        return x.reshape(-1, 3, 32, 32), y

    x, y = load(train_files)
    x_test, y_test = load([test_file])
    return split_longtail(
        x, y, x_test, y_test, name=spec.name, num_classes=num_classes,
        ratio=spec.imbalance_ratio, profile=spec.profile, seed=spec.seed, n_max=spec.n_max,
        val_per_class=spec.val_per_class or DEFAULT_VAL_PER_CLASS, hflip=True,
    )


def build_cifar10(spec: DatasetSpec, *, data_root: Path | None = None) -> LongTailData:
    """CIFAR-10-LT: at ratio 100 the profile is the published 5000, 2997, ..., 50 per class.
    Class 0 has no unused images, so its validation images come out of its share (4,900
    train with the default 100 validation images per class)."""
    return _cifar(spec, data_root, "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                  "test_batch", "labels", 10)


def build_cifar100(spec: DatasetSpec, *, data_root: Path | None = None) -> LongTailData:
    return _cifar(spec, data_root, "cifar-100-python", ["train"], "test", "fine_labels", 100)


def _as_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    """N x H x W, N x H x W x C or N x C x H x W images to N x C x H x W; N x D stays."""
    if x.ndim == 2:
        return x
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] <= 4:
            return x
        if x.shape[3] <= 4:
            return x.transpose(0, 3, 1, 2)
    raise ValueError(f"{path}: x must be N x D vectors or N x H x W (x C) images, got {x.shape}")


def _labels(y: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{path}: {key} must be a vector of {n} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise ValueError(f"{path}: {key} must hold class indices 0..C-1 (non-negative integers)")
    return y.astype(np.int64)


def build_npz(spec: DatasetSpec, *, data_root: Path | None = None) -> LongTailData:
    """A user's ``.npz`` under the data root: ``x``, ``y`` and optionally ``x_test``, ``y_test``.

    Without a test set, a balanced one is held out first (a fixed seed, so every study on the
    file tests on the same images). The file must resolve inside the data root, symlinks
    included: a spec names a file, never a path.
    """
    if data_root is None:
        raise DataMissing("the npz data set needs a data root (the worker's --data-root)")
    root = data_root.resolve()
    path = (root / str(spec.file)).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{spec.file!r} resolves outside the data root {root}; refused")
    if not path.is_file():
        raise DataMissing(f"npz file not found: {path}. Fix: put {spec.file} in {root}")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if "x" not in arrays or "y" not in arrays:
        raise ValueError(f"{path}: needs arrays 'x' and 'y', found {sorted(arrays)}")
    x = _as_nchw(arrays["x"], path)
    y = _labels(arrays["y"], len(x), "y", path)
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: give both x_test and y_test, or neither")
    num_classes = int(y.max()) + 1
    if "x_test" in arrays:
        x_test = _as_nchw(arrays["x_test"], path)
        y_test = _labels(arrays["y_test"], len(x_test), "y_test", path)
        num_classes = max(num_classes, int(y_test.max()) + 1 if len(y_test) else 0)
    smallest = int(np.bincount(y, minlength=num_classes).min())
    default_val = max(1, min(DEFAULT_VAL_PER_CLASS, smallest // 5))
    val = spec.val_per_class or default_val
    if "x_test" not in arrays:
        rng = np.random.default_rng(12345)
        test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:default_val]
                               for c in range(num_classes)])
        rest = np.setdiff1d(np.arange(len(y)), test)
        x, y, x_test, y_test = x[rest], y[rest], x[test], y[test]
    if x.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"{path}: x is {x.shape[1:]} per item, x_test {x_test.shape[1:]}")
    return split_longtail(
        x, y, x_test, y_test, name=spec.name, num_classes=num_classes,
        ratio=spec.imbalance_ratio, profile=spec.profile, seed=spec.seed, n_max=spec.n_max,
        val_per_class=val,
    )
