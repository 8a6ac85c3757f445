"""Long-tailed builders: published counts, honest splits, file formats, errors, cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from search_spaces.spec import DatasetSpec
from worker.data import (
    BUILDERS,
    DataMissing,
    build_dataset,
    cached_dataset,
    clear_cache,
    longtail_counts,
)
from worker.data import files as data_files


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1).numpy()}


def test_cifar10_lt_ratio_100_counts_are_the_published_ones() -> None:
    assert longtail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile_halves_the_classes() -> None:
    assert longtail_counts(500, 10, 10, "step") == [500] * 5 + [50] * 5
    with pytest.raises(ValueError, match="profile"):
        longtail_counts(500, 10, 10, "linear")


def test_every_catalogued_file_data_set_is_registered() -> None:
    assert {"fashion-mnist-lt", "cifar10-lt", "cifar100-lt", "npz"} <= set(BUILDERS)


def test_cifar10_counts_splits_and_channels(cifar10_root: Path) -> None:
    spec = DatasetSpec(name="cifar10-lt", imbalance_ratio=10, val_per_class=5)
    data = build_dataset(spec, data_root=cifar10_root)
    counts = data.counts()
    assert data.profile_counts == longtail_counts(40, 10, 10)
    # class 0 has 40 images, all in the profile: its 5 validation images come out of its share
    assert counts["train"] == [min(n, 35) for n in data.profile_counts]
    assert counts["val"] == [5] * 10 and counts["test"] == [10] * 10
    assert data.x_train.shape[1:] == (3, 32, 32) and data.x_train.dtype == torch.float32
    assert np.allclose(data.mean, [10, 100, 200], atol=10)
    per_channel = data.x_train.transpose(0, 1).reshape(3, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-3)
    assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-2)
    train, val, test = rows(data.x_train), rows(data.x_val), rows(data.x_test)
    assert len(train) == len(data.x_train) and not train & val and not (train | val) & test


def test_the_same_seed_gives_the_same_split_and_another_seed_does_not(cifar10_root: Path) -> None:
    def build(seed: int) -> torch.Tensor:
        spec = DatasetSpec(name="cifar10-lt", imbalance_ratio=10, val_per_class=5, seed=seed)
        return build_dataset(spec, data_root=cifar10_root).x_train

    a, b, c = build(0), build(0), build(1)
    assert torch.equal(a, b)
    assert a.shape == c.shape and not torch.equal(a, c)


def test_cifar100_reads_fine_labels(cifar100_root: Path) -> None:
    root = cifar100_root
    spec = DatasetSpec(name="cifar100-lt", imbalance_ratio=6, val_per_class=1)
    data = build_dataset(spec, data_root=root)
    assert data.num_classes == 100
    assert data.counts()["train"] == [min(n, 5) for n in longtail_counts(6, 100, 6)]
    assert data.counts()["test"] == [2] * 100


def test_missing_cifar_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataMissing, match="cifar-10-batches-py"):
        build_dataset(DatasetSpec(name="cifar10-lt"), data_root=tmp_path)


def test_fashion_mnist_from_a_data_root(fmnist_root: Path) -> None:
    spec = DatasetSpec(name="fashion-mnist-lt", imbalance_ratio=10, val_per_class=4)
    data = build_dataset(spec, data_root=fmnist_root)
    assert data.x_train.shape[1:] == (1, 28, 28) and data.hflip
    assert data.counts()["train"] == [min(n, 26) for n in longtail_counts(30, 10, 10)]
    assert data.counts()["val"] == [4] * 10 and data.counts()["test"] == [5] * 10


def test_missing_fashion_mnist_names_the_package(fmnist_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataMissing, match="apt-get install dataset-fashion-mnist"):
        build_dataset(DatasetSpec(name="fashion-mnist-lt"), data_root=tmp_path / "empty")


@pytest.mark.skipif(not data_files._find_idx(data_files.FASHION_MNIST_SYSTEM_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_validation_comes_from_unused_images() -> None:
    data = build_dataset(DatasetSpec(name="fashion-mnist-lt", imbalance_ratio=100))
    counts = data.counts()
    # 6,000 per class: only the head class lacks 100 unused images
    assert counts["train"] == [5900, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert counts["val"] == [100] * 10 and counts["test"] == [1000] * 10


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw", "vectors"])
def test_npz_layouts_and_held_out_test(tmp_path: Path, layout: str) -> None:
    shapes = {"nhw": (9, 9), "nhwc": (9, 9, 3), "nchw": (3, 9, 9), "vectors": (12,)}
    y = np.repeat(np.arange(4), 50)
    x = np.random.default_rng(0).normal(size=(len(y), *shapes[layout])).astype(np.float32)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    data = build_dataset(DatasetSpec(name="npz", file="mine.npz", imbalance_ratio=5),
                         data_root=tmp_path)
    expected = {"nhw": (1, 9, 9), "nhwc": (3, 9, 9), "nchw": (3, 9, 9), "vectors": (12,)}
    assert tuple(data.x_train.shape[1:]) == expected[layout]
    counts = data.counts()
    assert counts["test"] == [10] * 4 and counts["val"] == [10] * 4  # 50 // 5 per class
    assert sum(map(sum, counts.values())) <= len(y)


def test_npz_with_its_own_test_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 40)
    np.savez(tmp_path / "own.npz", x=rng.normal(size=(120, 5)), y=y,
             x_test=rng.normal(size=(9, 5)), y_test=np.repeat(np.arange(3), 3))
    data = build_dataset(DatasetSpec(name="npz", file="own.npz"), data_root=tmp_path)
    assert data.counts()["test"] == [3, 3, 3]


def test_npz_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside.npz"
    np.savez(outside, x=np.zeros((20, 3)), y=np.repeat(np.arange(2), 10))
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link.npz")
    with pytest.raises(ValueError, match="outside the data root"):
        build_dataset(DatasetSpec(name="npz", file="link.npz"), data_root=root)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataMissing, match="nothere.npz"):
        build_dataset(DatasetSpec(name="npz", file="nothere.npz"), data_root=tmp_path)


def test_cache_builds_once_per_spec_and_root(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = BUILDERS["synthetic-lt"]
    monkeypatch.setitem(BUILDERS, "synthetic-lt", lambda s, **kw: calls.append(s) or real(s, **kw))
    clear_cache()
    spec = DatasetSpec(name="synthetic-lt", n_max=30, val_per_class=3)
    first = cached_dataset(spec)
    assert cached_dataset(DatasetSpec(name="synthetic-lt", n_max=30, val_per_class=3)) is first
    assert cached_dataset(spec.model_copy(update={"seed": 1})) is not first
    assert len(calls) == 2
    clear_cache()
