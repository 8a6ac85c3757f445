"""Train every catalogued loss at its published defaults on one data set and print a table.

    python -m worker.reproduce fashion-mnist-lt --ratio 100 --epochs 10 --model small-cnn

One trial per loss of ``search_spaces.catalogue.LOSSES``, all with the same recipe, seed and
data (built once), through ``train_trial`` as a study would run them. Losses that
``worker.losses`` does not implement yet are skipped with a note, so the table grows as they
land. Test metrics are reported, not selected on: the model is the one after the last epoch.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from search_spaces.catalogue import DATASETS, LOSSES, MODELS
from search_spaces.optuna_space import TrialParams
from search_spaces.spec import StudySpec, parse_spec
from worker.data import cached_dataset
from worker.losses import REGISTRY
from worker.train import train_trial

COLUMNS = (("test_accuracy", "test acc"), ("test_balanced_accuracy", "test bal. acc"),
           ("test_many_shot_accuracy", "many"), ("test_medium_shot_accuracy", "medium"),
           ("test_few_shot_accuracy", "few"))


def study(args: argparse.Namespace) -> StudySpec:
    dataset: dict[str, Any] = {"name": args.dataset, "imbalance_ratio": args.ratio,
                               "seed": args.seed}
    if args.n_max:
        dataset["n_max"] = args.n_max
    training: dict[str, Any] = {"epochs": args.epochs, "seed": args.seed,
                                "schedule": args.schedule, "lr": args.lr,
                                "weight_decay": args.weight_decay}
    return parse_spec({"name": f"reproduce {args.dataset}", "dataset": dataset,
                       "model": {"name": args.model}, "training": training,
                       "search_space": {"loss": {name: {} for name in LOSSES}}})


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tailtune reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--ratio", type=float, default=100.0, help="imbalance ratio n_max / n_min")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--model", default="small-cnn", choices=sorted(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--schedule", default="step", choices=["step", "cosine", "constant"])
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=2e-4)
    ap.add_argument("--n-max", type=int, default=None, help="cap the head class (quicker runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--losses", nargs="*", default=None, help="a subset of the catalogue")
    args = ap.parse_args(argv)

    spec = study(args)
    data = cached_dataset(spec.dataset, data_root=args.data_root)
    names = args.losses or list(LOSSES)
    header = "| loss | " + " | ".join(title for _, title in COLUMNS) + " | seconds |"
    rows = [header, "|" + " --- |" * (len(COLUMNS) + 2)]
    notes = []
    for name in names:
        if name not in LOSSES:
            print(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}", file=sys.stderr)
            return 2
        if name not in REGISTRY:
            notes.append(f"- {name}: skipped, not implemented in worker.losses yet")
            continue
        params = TrialParams(name, LOSSES[name].defaults, args.lr, args.weight_decay)
        started = time.perf_counter()
        result = train_trial(spec, params, device=args.device, data_root=args.data_root,
                             data=data)
        cells = " | ".join(fmt(result.metrics[key]) for key, _ in COLUMNS)
        rows.append(f"| {name} | {cells} | {time.perf_counter() - started:.0f} |")
        print(rows[-1], file=sys.stderr, flush=True)
        notes.extend(f"- {note}" for note in result.notes if f"- {note}" not in notes)
    counts = data.counts()
    out = [
        f"### {args.dataset}, imbalance ratio {args.ratio:g}, {args.model}, {args.epochs} epochs, "
        f"{args.schedule} schedule, lr {args.lr:g}, wd {args.weight_decay:g}, seed {args.seed}",
        "",
        f"device: {args.device}; train / val / test images: {sum(counts['train']):,} / "
        f"{sum(counts['val']):,} / {sum(counts['test']):,}; train per class: {counts['train']}",
        "",
        *rows,
        "",
        "Top-1 accuracy (%) on the balanced test set after the last epoch; many > 100, "
        "medium 20-100, few < 20 training images.",
        *notes,
        "",
        f"command: python -m worker.reproduce {' '.join(sys.argv[1:] if argv is None else argv)}",
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
