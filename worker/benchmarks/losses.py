"""Forward + backward time of every loss against plain cross-entropy, in one interleaved run.

    python -m worker.benchmarks.losses [--batch 4096] [--classes 100] [--repeat 30]
                                       [--device cpu|cuda] [--threads T] [--out FILE.md]

Each loss is built with its catalogue defaults on a long-tailed class-count profile (ratio 100)
and called at the last epoch, past every warm-up / re-weighting switch, so the real branch
runs; influence-balanced losses get 64-dimensional features that need gradients, LDAM gets
cosine logits in [-1, 1]. Every repetition times cross-entropy and then the loss on the same
inputs, and the table reports the medians and their ratio against the target (2x CE, 3x for
GHM, whose histogram is extra work). Exit status 0 when every loss meets its target.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

from search_spaces.catalogue import LOSSES
from worker.losses import REGISTRY, build_loss

TOTAL_EPOCHS = 10
TARGETS = {"ghm": 3.0}
DEFAULT_TARGET = 2.0
FEATURE_DIM = 64


def long_tail_counts(num_classes: int, ratio: float = 100.0, n_max: int = 5000) -> list[int]:
    """CIFAR-LT profile: ``int(n_max · (1/ratio)^(i/(C-1)))`` examples of class i."""
    return [max(1, int(n_max * (1 / ratio) ** (i / (num_classes - 1))))
            for i in range(num_classes)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


def _step(name: str, batch: int, classes: int, device: torch.device) -> Callable[[], None]:
    """A closure that runs forward + backward of loss ``name`` on fixed random inputs."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    loss = build_loss(name, long_tail_counts(classes), total_epochs=TOTAL_EPOCHS, device=device)
    if LOSSES[name].head == "cosine":
        raw = torch.rand(batch, classes, generator=gen) * 2 - 1
    else:
        raw = torch.randn(batch, classes, generator=gen) * 3
    logits = raw.to(device).requires_grad_()
    targets = torch.randint(0, classes, (batch,), generator=gen).to(device)
    features = None
    if LOSSES[name].uses_features:
        features = torch.randn(batch, FEATURE_DIM, generator=gen).to(device).requires_grad_()
    epoch = TOTAL_EPOCHS - 1

    def step() -> None:
        logits.grad = None
        if features is not None:
            features.grad = None
        loss(logits, targets, features=features, epoch=epoch).backward()

    return step


def run(batch: int, classes: int, repeat: int, device: torch.device,
        warmup: int = 3) -> list[dict[str, object]]:
    names = [n for n in LOSSES if n != "ce"]
    ce = _step("ce", batch, classes, device)
    steps = {n: _step(n, batch, classes, device) for n in names}
    for _ in range(warmup):
        ce()
        for s in steps.values():
            s()
    ce_ms: dict[str, list[float]] = {n: [] for n in names}
    loss_ms: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeat):
        for n in names:
            ce_ms[n].append(_timed(ce, device))
            loss_ms[n].append(_timed(steps[n], device))
    rows = []
    for n in names:
        med, med_ce = statistics.median(loss_ms[n]), statistics.median(ce_ms[n])
        target = TARGETS.get(n, DEFAULT_TARGET)
        rows.append({"loss": n, "ms": med, "ce_ms": med_ce, "ratio": med / med_ce,
                     "target": target, "ok": med / med_ce <= target})
    return rows


def markdown(rows: list[dict[str, object]], batch: int, classes: int, repeat: int,
             device: torch.device) -> str:
    threads = torch.get_num_threads()
    lines = [
        f"Loss forward + backward, batch {batch}, {classes} classes, median of {repeat}, "
        f"device {device} ({platform.processor() or platform.machine()}, {threads} threads), "
        f"torch {torch.__version__}",
        "",
        "| loss | median ms | CE median ms | ratio to CE | target | result |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['loss']} | {r['ms']:.3f} | {r['ce_ms']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['target']:.0f}x | {'pass' if r['ok'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.benchmarks.losses",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--out", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.batch < 1 or args.classes < 2 or args.repeat < 1:
        parser.error("--batch and --repeat must be >= 1, --classes >= 2")
    missing = set(LOSSES) - set(REGISTRY)
    if missing:
        parser.error(f"catalogue losses without an implementation: {sorted(missing)}")
    device = torch.device(args.device)
    rows = run(args.batch, args.classes, args.repeat, device)
    table = markdown(rows, args.batch, args.classes, args.repeat, device)
    print(table, end="")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
