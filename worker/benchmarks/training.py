"""One training epoch the way the reference repositories train, against tailtune's loop.

(a) reference: uint8 images as PIL images, per-sample torchvision transforms (RandomCrop with 4
    pixels of padding, RandomHorizontalFlip, ToTensor, Normalize) in a torch DataLoader with
    the LDAM-DRW code's 4 workers (capped at the CPU count), float32 NCHW.
(b) tailtune: ``worker.train.train_epoch`` on the whole data set held as one device tensor,
    batched augmentation on the device, channels_last, bf16 autocast on CUDA.

Same model, same long-tailed images, same optimiser and loss. The two alternate epoch by epoch
so that load from other processes hits both alike; the table shows medians.

    python -m worker.benchmarks.training --dataset fashion-mnist-lt --model small-cnn --out b.md
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from search_spaces.spec import DatasetSpec
from worker.data import LongTailData, cached_dataset, longtail_counts
from worker.data.base import normalise
from worker.losses import build_loss
from worker.models import build_model
from worker.train import Augment, augment_plan, to_device, train_epoch

BATCH = 128
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 2e-4
WARMUP_STEPS = 3  # untimed steps per path first: allocator and oneDNN/cuDNN kernel set-up


def cifar10_shaped(seed: int = 0) -> LongTailData:
    """Random uint8 images with CIFAR-10-LT's ratio-100 counts (12,406 images, 3x32x32)."""
    counts = longtail_counts(5000, 10, 100)
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), counts)
    x = rng.integers(0, 256, size=(len(y), 3, 32, 32), dtype=np.uint8)
    mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
    std = x.std(axis=(0, 2, 3), dtype=np.float64)
    xt, yt = normalise(x[:100], mean, std), torch.as_tensor(y[:100])
    return LongTailData("cifar10-shaped", normalise(x, mean, std), torch.as_tensor(y), xt, yt,
                        xt, yt, 10, mean=mean.tolist(), std=std.tolist(), hflip=True)


def load(name: str) -> LongTailData:
    if name == "cifar10-shaped":
        return cifar10_shaped()
    return cached_dataset(DatasetSpec(name=name, imbalance_ratio=100))


def as_uint8_hwc(data: LongTailData) -> np.ndarray:
    """The training images back in the uint8 H x W (x C) form the reference code stores."""
    mean = torch.tensor(data.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(data.std).reshape(1, -1, 1, 1)
    x = (data.x_train * std + mean).round().clamp(0, 255).to(torch.uint8).numpy()
    x = x.transpose(0, 2, 3, 1)
    return x[..., 0] if x.shape[-1] == 1 else x


class PILImages(Dataset):
    """The reference repositories' data set: one PIL image and one transform per sample."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def reference_loader(data: LongTailData, workers: int, pin: bool) -> DataLoader:
    from torchvision import transforms as T

    side = data.x_train.shape[-1]
    steps = [T.RandomCrop(side, padding=4)]
    if data.hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize([m / 255 for m in data.mean], [s / 255 for s in data.std])]
    ds = PILImages(as_uint8_hwc(data), data.y_train.numpy(), T.Compose(steps))
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, pin_memory=pin)


def reference_epoch(model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader,
                    dev: torch.device, max_steps: int | None = None) -> None:
    model.train()
    criterion = nn.CrossEntropyLoss()
    for step, (xb, yb) in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        xb, yb = xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
        loss = criterion(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()


class PeakRss:
    """Largest resident set size of this process seen while the block runs (sampled)."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()

    def _run(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, psutil.Process().memory_info().rss)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worker.benchmarks.training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist-lt",
                    choices=["fashion-mnist-lt", "cifar10-shaped"])
    ap.add_argument("--model", default="small-cnn", choices=["small-cnn", "resnet32"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per path (median)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="DataLoader workers of the reference path (LDAM-DRW uses 4)")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available here; use --device cpu", file=sys.stderr)
        return 2

    data = load(args.dataset)
    n = len(data.y_train)
    in_shape = tuple(data.x_train.shape[1:])
    torch.manual_seed(0)

    def fresh() -> tuple[nn.Module, torch.optim.Optimizer]:
        model = build_model(args.model, in_shape=in_shape, num_classes=data.num_classes).to(dev)
        return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM,
                                      weight_decay=WEIGHT_DECAY)

    # (a) the reference way
    ref_model, ref_opt = fresh()
    loader = reference_loader(data, args.workers, pin=dev.type == "cuda")
    # (b) ours
    ours_model, ours_opt = fresh()
    ours_model = ours_model.to(memory_format=torch.channels_last)
    x, y = to_device(data.x_train, dev), data.y_train.to(dev)
    plan: Augment = augment_plan(data, None)
    loss_fn = build_loss("ce", data.class_counts, device=dev)
    gen = torch.Generator(device=dev).manual_seed(0)

    def ours(max_items: int | None = None) -> None:
        xs, ys = (x, y) if max_items is None else (x[:max_items], y[:max_items])
        train_epoch(ours_model, ours_opt, loss_fn, xs, ys, epoch=0, batch_size=BATCH,
                    plan=plan, gen=gen)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    reference_epoch(ref_model, ref_opt, loader, dev, max_steps=WARMUP_STEPS)
    ours(WARMUP_STEPS * BATCH)
    times: dict[str, list[float]] = {"reference": [], "tailtune": []}
    peak = 0
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        reference_epoch(ref_model, ref_opt, loader, dev)
        times["reference"].append(time.perf_counter() - t0)
        with PeakRss() as rss:
            t0 = time.perf_counter()
            ours()
            times["tailtune"].append(time.perf_counter() - t0)
        peak = max(peak, rss.peak)

    ref_s, ours_s = statistics.median(times["reference"]), statistics.median(times["tailtune"])
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    dev_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads)")
    augment = f"crop pad {plan.pad}" + (" + flip" if plan.flip else "")
    lines = [
        f"### One training epoch: {args.dataset} ({n:,} long-tailed images, "
        f"{'x'.join(map(str, in_shape))}), {args.model}, batch {BATCH}",
        "",
        f"device: {dev_name}; torch {torch.__version__}; augmentation: {augment}; "
        f"load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}",
        "",
        f"| path | epoch seconds (median of {args.epochs}) | images / s | all epochs (s) |",
        "| --- | --- | --- | --- |",
        f"| (a) reference: PIL + per-sample transforms, DataLoader({args.workers} workers), "
        f"float32 | {ref_s:.2f} | {n / ref_s:,.0f} | "
        f"{', '.join(f'{t:.2f}' for t in times['reference'])} |",
        f"| (b) tailtune: data on the device, batched augmentation"
        f"{', bf16' if dev.type == 'cuda' else ', float32'} | {ours_s:.2f} | {n / ours_s:,.0f} | "
        f"{', '.join(f'{t:.2f}' for t in times['tailtune'])} |",
        f"| speed-up (a / b) | **{ref_s / ours_s:.2f}x** | | |",
        "",
        f"Peak RSS during tailtune's epochs: {peak / 2**20:,.0f} MiB "
        f"(whole process, reference loader included: {process_peak / 2**20:,.0f} MiB; "
        "the reference's DataLoader workers are separate processes).",
        "",
        f"command: python -m worker.benchmarks.training {' '.join(argv or sys.argv[1:])}",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
