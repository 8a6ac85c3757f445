"""The training recipe: schedule, batched augmentation, reproducibility, errors, the cache."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from search_spaces.optuna_space import TrialParams
from search_spaces.spec import TrainingSpec, parse_spec
from worker.data import BUILDERS, LongTailData, clear_cache
from worker.train import (
    Augment,
    NonFiniteLoss,
    augment_batch,
    augment_plan,
    batches,
    lr_at,
    train_trial,
)


def study(dataset: dict[str, Any], model: str = "small-cnn", **training: Any):
    return parse_spec({"name": "t", "dataset": dataset, "model": {"name": model},
                       "training": {"epochs": 2, "batch_size": 64, **training},
                       "search_space": {"loss": {"ce": {}}}})


CE = TrialParams("ce", {}, 0.05, 5e-4)
DIGITS = {"name": "digits-lt", "imbalance_ratio": 10, "val_per_class": 10, "n_max": 40}


def test_step_schedule_of_the_papers() -> None:
    t = TrainingSpec(epochs=200)  # the CIFAR-LT recipe: 5 warm-up epochs, decay at 160 and 180
    assert lr_at(0, t, 0.1) < 0.001
    assert lr_at(2.5, t, 0.1) == pytest.approx(0.05, rel=1e-3)
    assert lr_at(5, t, 0.1) == lr_at(159.9, t, 0.1) == 0.1
    assert lr_at(160, t, 0.1) == pytest.approx(1e-3)
    assert lr_at(180, t, 0.1) == pytest.approx(1e-5)


def test_cosine_constant_and_short_warmup() -> None:
    cos = TrainingSpec(epochs=20, schedule="cosine", warmup_epochs=0)
    assert lr_at(0, cos, 0.1) == pytest.approx(0.1)
    assert lr_at(10, cos, 0.1) == pytest.approx(0.05)
    assert lr_at(20, cos, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(15, TrainingSpec(epochs=20, schedule="constant"), 0.1) == 0.1
    short = TrainingSpec(epochs=4, warmup_epochs=5)  # warm-up capped at a quarter of the run
    assert lr_at(1.0, short, 0.1) == pytest.approx(0.1)


def test_crop_is_a_shifted_window_and_flip_mirrors() -> None:
    x = torch.arange(4 * 2 * 6 * 6, dtype=torch.float32).reshape(4, 2, 6, 6) + 1
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, Augment(pad=2), gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    flipped = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(1))
    for i in range(4):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    assert not torch.equal(flipped, x) and not torch.equal(flipped, x.flip(3))


def test_augmentation_fits_the_data() -> None:
    def data(side: int, hflip: bool) -> LongTailData:
        x = torch.zeros(2, 1, side, side)
        y = torch.tensor([0, 1])
        return LongTailData("d", x, y, x, y, x, y, 2, hflip=hflip)

    assert augment_plan(data(28, True), None) == Augment(pad=4, flip=True)
    assert augment_plan(data(32, False), None) == Augment(pad=4, flip=False)
    assert augment_plan(data(8, False), None) == Augment()  # digits: no crop, no flip
    assert augment_plan(data(8, False), True) == Augment(pad=1, flip=False)
    assert augment_plan(data(28, True), False) == Augment()


def test_a_single_leftover_image_is_dropped() -> None:
    parts = batches(129, 64, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert [len(p) for p in parts] == [64, 64]
    assert [len(p) for p in batches(130, 64, torch.Generator(), torch.device("cpu"))][-1] == 2


def test_trial_is_reproducible_and_reports_every_epoch() -> None:
    spec = study(DIGITS, augment=True)
    seen: list[tuple[int, float]] = []
    first = train_trial(spec, CE, on_epoch=lambda e, v, m: seen.append((e, v)))
    second = train_trial(spec, CE)
    assert [e for e, _ in seen] == [0, 1]
    assert seen[-1][1] == first.value == first.metrics["val_balanced_accuracy"]
    assert first.metrics == second.metrics
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]
    assert first.counts["val"] == [10] * 10 and first.counts["test"] == [30] * 10
    assert len(first.test_confusion) == 10 and sum(map(sum, first.test_confusion)) == 300
    for key in ("test_accuracy", "val_head_accuracy", "val_tail_accuracy",
                "test_few_shot_accuracy", "val_per_class_accuracy"):
        assert key in first.metrics
    other = train_trial(study(DIGITS, augment=True, seed=1, epochs=1), CE)
    assert other.history[0]["train_loss"] != first.history[0]["train_loss"]


def test_vectors_train_with_the_mlp() -> None:
    spec = study({"name": "synthetic-lt", "n_max": 60, "val_per_class": 5}, model="mlp")
    result = train_trial(spec, TrialParams("weighted_ce", {"power": 1.0}, 0.05, 0.0))
    assert 0.0 <= result.value <= 1.0
    assert result.counts["train"][0] == 60  # 60 down to 6 images: no many-shot class
    assert result.metrics["val_many_shot_accuracy"] is None
    assert len(result.notes) == 1 and result.notes[0].startswith("no many-shot classes")


def test_nan_loss_raises() -> None:
    x = torch.randn(40, 1, 8, 8)
    x[3] = math.nan
    y = torch.arange(40) % 2
    data = LongTailData("nan", x, y, x[:4], y[:4], x[:4], y[:4], 2)
    with pytest.raises(NonFiniteLoss, match="epoch 0"):
        train_trial(study(DIGITS), CE, data=data)


def test_data_set_is_built_once_for_consecutive_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = BUILDERS["synthetic-lt"]
    monkeypatch.setitem(BUILDERS, "synthetic-lt", lambda s, **kw: calls.append(1) or real(s, **kw))
    clear_cache()
    spec = study({"name": "synthetic-lt", "n_max": 40, "val_per_class": 4}, model="mlp", epochs=1)
    train_trial(spec, CE)
    train_trial(spec, CE)
    assert len(calls) == 1
    clear_cache()
