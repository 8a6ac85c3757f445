"""One trial's training run, top to bottom: data on the device, model, loss, SGD, evaluation.

The recipe of the long-tail papers: SGD with momentum, linear learning-rate warm-up, then a step
decay (x0.01 at 80% and x0.0001 at 90% of the epochs) or a cosine schedule. The whole data set
is one tensor on the device; batches are index slices of it. One ``on_epoch`` call per epoch
with the validation objective: the caller reports it to Optuna and may raise to stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from search_spaces.catalogue import LOSSES
from search_spaces.optuna_space import TrialParams
from search_spaces.spec import StudySpec
from worker.data import LongTailData, build_dataset
from worker.losses import build_loss
from worker.metrics import classification_metrics, confusion_matrix
from worker.models import build_model

EpochCallback = Callable[[int, float, dict[str, Any]], None]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    value: float
    metrics: dict[str, Any]
    counts: dict[str, list[int]]
    val_confusion: list[list[int]]
    test_confusion: list[list[int]]
    history: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    device: str = "cpu"


def lr_at(epoch: float, spec: StudySpec, base_lr: float) -> float:
    """Learning rate at a fractional epoch."""
    t = spec.training
    warm = min(t.warmup_epochs, t.epochs - 1)
    if warm > 0 and epoch < warm:
        return base_lr * (epoch + 1e-3) / warm
    if t.schedule == "cosine":
        span = max(1e-9, t.epochs - warm)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch - warm) / span)))
    if t.schedule == "step":
        if epoch >= 0.9 * t.epochs:
            return base_lr * 1e-4
        if epoch >= 0.8 * t.epochs:
            return base_lr * 1e-2
    return base_lr


@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def evaluate(model: torch.nn.Module, x: Tensor, y: Tensor, num_classes: int,
             train_counts: list[int], prefix: str) -> tuple[dict[str, Any], Tensor]:
    cm = confusion_matrix(y, predict(model, x), num_classes)
    return classification_metrics(cm, train_counts, prefix), cm


def train_trial(spec: StudySpec, params: TrialParams, *, device: str = "cpu",
                data_root: str | None = None, on_epoch: EpochCallback | None = None,
                data: LongTailData | None = None) -> TrainResult:
    start = time.perf_counter()
    t = spec.training
    dev = torch.device(device)
    torch.manual_seed(t.seed)
    data = data or build_dataset(spec.dataset, data_root=data_root)
    x_tr, y_tr = data.x_train.to(dev), data.y_train.to(dev)
    x_va, y_va = data.x_val.to(dev), data.y_val.to(dev)
    counts = data.class_counts

    entry = LOSSES[params.loss]
    model = build_model(spec.model.name, in_shape=tuple(x_tr.shape[1:]),
                        num_classes=data.num_classes, head=entry.head).to(dev)
    loss_fn = build_loss(params.loss, counts, total_epochs=t.epochs, device=dev, **params.loss_params)
    opt = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=t.momentum,
                          weight_decay=params.weight_decay, nesterov=False)
    objective = spec.objective.metric
    gen = torch.Generator(device=dev).manual_seed(t.seed)
    steps = max(1, math.ceil(len(x_tr) / t.batch_size))
    history: list[dict[str, float]] = []

    for epoch in range(t.epochs):
        model.train()
        order = torch.randperm(len(x_tr), device=dev, generator=gen)
        total = torch.zeros((), device=dev)
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch + step / steps, spec, params.lr)
            idx = order[step * t.batch_size:(step + 1) * t.batch_size]
            xb, yb = x_tr[idx], y_tr[idx]
            h = model.forward_features(xb)
            loss = loss_fn(model.head(h), yb, features=h, epoch=epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
        train_loss = float(total) / steps
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss is {train_loss} at epoch {epoch}")
        val, _ = evaluate(model, x_va, y_va, data.num_classes, counts, "val")
        value = val[objective]
        value = float("nan") if value is None else float(value)
        history.append({"epoch": epoch, "train_loss": train_loss, objective: value})
        if on_epoch is not None:
            on_epoch(epoch, value, val)

    val, val_cm = evaluate(model, x_va, y_va, data.num_classes, counts, "val")
    test, test_cm = evaluate(model, data.x_test.to(dev), data.y_test.to(dev), data.num_classes,
                             counts, "test")
    value = val[objective]
    return TrainResult(
        value=float("nan") if value is None else float(value),
        metrics={**val, **test},
        counts=data.counts(),
        val_confusion=val_cm.tolist(),
        test_confusion=test_cm.tolist(),
        history=history,
        wall_time_s=time.perf_counter() - start,
        device=str(dev),
    )
