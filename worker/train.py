"""One trial's training run, top to bottom: data on the device, augmentation, model, loss, SGD.

The recipe of the long-tail papers (LDAM-DRW, influence-balanced; ResNet-32 on CIFAR-LT), with
its defaults in ``search_spaces.spec.TrainingSpec``:

    SGD, momentum 0.9, weight decay 2e-4, batch 128, learning rate 0.1
    linear warm-up over the first 5 epochs (at most a quarter of the run)
    step decay: x0.01 from 80% of the epochs, x0.0001 from 90%   (or cosine, or constant)
    augmentation: random crop with 4 pixels of padding, horizontal flip where it fits the data

What makes it fast: the whole data set is one tensor on the device, batches are index slices of
it, augmentation runs on the whole batch on the device (no DataLoader, no PIL, no per-image
Python), images are channels_last, and on CUDA the model runs in bf16 autocast. The CPU path
stays float32. One ``on_epoch`` call per epoch with the validation objective: the caller reports it
to Optuna and may raise to stop. Seeds make a run reproducible on the same device.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from search_spaces.catalogue import LOSSES
from search_spaces.optuna_space import TrialParams
from search_spaces.spec import StudySpec, TrainingSpec
from worker.data import LongTailData, cached_dataset
from worker.losses import build_loss
from worker.metrics import classification_metrics, confusion_matrix, empty_groups_note
from worker.models import build_model

EpochCallback = Callable[[int, float, dict[str, Any]], None]

CROP_PAD = 4  # pixels of padding around 28x28 / 32x32 images before the random crop
MIN_CROP_SIZE = 28  # smaller images (8x8 digits) are not cropped unless augment is True
WARMUP_MAX_FRACTION = 0.25  # a 5-epoch warm-up never takes more than a quarter of a short run
EVAL_BATCH = 1024


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
    notes: list[str] = field(default_factory=list)  # e.g. why a shot group's accuracy is None


# --- learning-rate schedule -------------------------------------------------------------------

def lr_at(epoch: float, spec: StudySpec | TrainingSpec, base_lr: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then step / cosine / constant."""
    t = spec.training if isinstance(spec, StudySpec) else spec
    warm = min(float(t.warmup_epochs), WARMUP_MAX_FRACTION * t.epochs)
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


# --- augmentation on whole batches, on the device ---------------------------------------------

@dataclass(frozen=True)
class Augment:
    pad: int = 0  # random crop of the original size from the image padded by this many pixels
    flip: bool = False  # random horizontal flip with probability 1/2


def augment_plan(data: LongTailData, augment: bool | None) -> Augment:
    """``augment`` None (auto): crop 28x28 and larger images, flip where the data set allows
    it; True: crop any image (padding an eighth of its side when small); False: nothing."""
    if augment is False or not data.is_image:
        return Augment()
    side = min(data.x_train.shape[2:])
    if augment is None and side < MIN_CROP_SIZE:
        return Augment(flip=data.hflip)
    return Augment(pad=CROP_PAD if side >= MIN_CROP_SIZE else max(1, side // 8), flip=data.hflip)


def augment_batch(x: Tensor, plan: Augment, gen: torch.Generator) -> Tensor:
    """Random crop and flip of a whole N x C x H x W batch in a few tensor ops. Padding is zero
    in normalised units, i.e. the training mean colour."""
    n, c, h, w = x.shape
    dev = x.device
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if plan.pad:
        p = plan.pad
        padded = F.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n, 1), device=dev, generator=gen)
        dx = torch.randint(0, 2 * p + 1, (n, 1), device=dev, generator=gen)
        rows = (dy + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(n, device=dev)[:, None, None, None],
                   torch.arange(c, device=dev)[None, :, None, None], rows, cols]
    if plan.flip:
        flip = torch.rand(n, device=dev, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous(memory_format=torch.channels_last) if nhwc else x


# --- device settings ----------------------------------------------------------------------------

def autocast(dev: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; the CPU stays float32."""
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(x: Tensor, dev: torch.device) -> Tensor:
    """Images go channels_last on every device: cuDNN and oneDNN (CPU) convolutions both run
    faster in NHWC (about 1.3x for ResNet-32 on the CPU)."""
    x = x.to(dev, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


# --- evaluation ---------------------------------------------------------------------------------

@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, batch_size: int = EVAL_BATCH) -> Tensor:
    model.eval()
    with autocast(x.device):
        return torch.cat([model(x[i:i + batch_size]).argmax(1)
                          for i in range(0, len(x), batch_size)])


def evaluate(model: nn.Module, x: Tensor, y: Tensor, num_classes: int,
             train_counts: list[int], prefix: str) -> tuple[dict[str, Any], Tensor]:
    cm = confusion_matrix(y, predict(model, x), num_classes)
    return classification_metrics(cm, train_counts, prefix), cm


# --- one epoch ------------------------------------------------------------------------------------

def batches(n: int, batch_size: int, gen: torch.Generator, dev: torch.device) -> list[Tensor]:
    """A shuffled epoch of index batches; a last batch of one image is dropped (BatchNorm
    cannot train on it), a different image each epoch."""
    parts = list(torch.randperm(n, device=dev, generator=gen).split(batch_size))
    if len(parts) > 1 and len(parts[-1]) < 2:
        parts.pop()
    return parts


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: nn.Module, x: Tensor,
                y: Tensor, *, epoch: int, batch_size: int, plan: Augment, gen: torch.Generator,
                lr_fn: Callable[[float], float] | None = None) -> float:
    """One pass over ``x, y`` (already on the device); returns the mean training loss.

    The loss is summed on the device and read once at the end, so the host never waits for
    the device inside the epoch.
    """
    model.train()
    parts = batches(len(x), batch_size, gen, x.device)
    total = torch.zeros((), device=x.device)
    for step, idx in enumerate(parts):
        if lr_fn is not None:
            for g in opt.param_groups:
                g["lr"] = lr_fn(epoch + step / len(parts))
        xb = augment_batch(x[idx], plan, gen) if x.ndim == 4 else x[idx]
        with autocast(x.device):
            h = model.forward_features(xb)
            logits = model.head(h)
        loss = loss_fn(logits.float(), y[idx], features=h.float(), epoch=epoch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach()
    return float(total) / len(parts)


# --- the trial ----------------------------------------------------------------------------------

def train_trial(spec: StudySpec, params: TrialParams, *, device: str = "cpu",
                data_root: str | None = None, on_epoch: EpochCallback | None = None,
                data: LongTailData | None = None) -> TrainResult:
    """Train one trial and measure it on the validation and test splits.

    The data set comes from the per-process cache unless ``data`` is given. Raises
    ``NonFiniteLoss`` when an epoch's loss is NaN or infinite, and whatever ``on_epoch``
    raises (pruning).
    """
    start = time.perf_counter()
    t = spec.training
    dev = torch.device(device)
    torch.manual_seed(t.seed)
    gen = torch.Generator(device=dev).manual_seed(t.seed)

    # Data: the whole split on the device, once.
    data = data or cached_dataset(spec.dataset, data_root=data_root)
    x_tr, y_tr = to_device(data.x_train, dev), data.y_train.to(dev)
    x_va, y_va = to_device(data.x_val, dev), data.y_val.to(dev)
    counts = data.class_counts
    plan = augment_plan(data, t.augment)

    # Model, loss, optimiser.
    entry = LOSSES[params.loss]
    model = build_model(spec.model.name, in_shape=tuple(x_tr.shape[1:]),
                        num_classes=data.num_classes, head=entry.head).to(dev)
    if x_tr.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(params.loss, counts, total_epochs=t.epochs, device=dev,
                         **params.loss_params)
    opt = torch.optim.SGD(model.parameters(), lr=params.lr, momentum=t.momentum,
                          weight_decay=params.weight_decay)
    objective = spec.objective.metric

    # Train, validating after every epoch.
    history: list[dict[str, float]] = []
    val: dict[str, Any] = {}
    val_cm = torch.zeros(0)
    for epoch in range(t.epochs):
        epoch_start = time.perf_counter()
        train_loss = train_epoch(model, opt, loss_fn, x_tr, y_tr, epoch=epoch,
                                 batch_size=t.batch_size, plan=plan, gen=gen,
                                 lr_fn=lambda e: lr_at(e, t, params.lr))
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss is {train_loss} at epoch {epoch}")
        val, val_cm = evaluate(model, x_va, y_va, data.num_classes, counts, "val")
        value = _as_float(val[objective])
        history.append({"epoch": epoch, "lr": lr_at(epoch, t, params.lr),
                        "train_loss": train_loss, objective: value,
                        "seconds": time.perf_counter() - epoch_start})
        if on_epoch is not None:
            on_epoch(epoch, value, val)

    # Test once, at the end: reported, never optimised.
    test, test_cm = evaluate(model, to_device(data.x_test, dev), data.y_test.to(dev),
                             data.num_classes, counts, "test")
    note = empty_groups_note(counts)
    return TrainResult(
        value=_as_float(val[objective]),
        metrics={**val, **test},
        counts=data.counts(),
        val_confusion=val_cm.tolist(),
        test_confusion=test_cm.tolist(),
        history=history,
        wall_time_s=time.perf_counter() - start,
        device=str(dev),
        notes=[note] if note else [],
    )


def _as_float(value: float | None) -> float:
    return float("nan") if value is None else float(value)
