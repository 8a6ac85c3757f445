"""The metrics the long-tail papers report, from one confusion matrix.

Shot groups follow the papers: many (> 100 training images), medium (20-100), few (< 20). On a
small or mildly imbalanced data set a group can be empty; its accuracy is then None, and
``{prefix}_shot_classes`` says how many classes each group holds so a reader sees why. Head /
middle / tail thirds (classes ranked by training count) are never empty for C >= 3 and make
data sets of any size comparable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

MANY_SHOT_ABOVE = 100  # many-shot: more than this many training images
FEW_SHOT_BELOW = 20  # few-shot: fewer than this many


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    """C x C counts, rows the true class, columns the prediction (on the inputs' device)."""
    idx = y_true.long() * num_classes + y_pred.long()
    cm = torch.bincount(idx, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes)


def shot_groups(train_counts: list[int]) -> dict[str, list[int]]:
    """Class indices of the many / medium / few-shot groups."""
    return {
        "many": [c for c, n in enumerate(train_counts) if n > MANY_SHOT_ABOVE],
        "medium": [c for c, n in enumerate(train_counts) if FEW_SHOT_BELOW <= n <= MANY_SHOT_ABOVE],
        "few": [c for c, n in enumerate(train_counts) if n < FEW_SHOT_BELOW],
    }


def thirds(train_counts: list[int]) -> dict[str, list[int]]:
    """Class indices of the head / middle / tail thirds by training count (ties by index;
    sizes as ``numpy.array_split`` gives them, the head third the largest)."""
    order = sorted(range(len(train_counts)), key=lambda c: (-train_counts[c], c))
    parts = np.array_split(np.array(order, dtype=np.int64), 3)
    names = ("head", "middle", "tail")
    return {name: part.tolist() for name, part in zip(names, parts, strict=True)}


def classification_metrics(cm: Tensor, train_counts: list[int], prefix: str) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class accuracy, shot-group and third
    accuracies of one confusion matrix.

    Balanced accuracy averages recall over the classes present in the split (as scikit-learn's
    ``balanced_accuracy_score``); macro-F1 averages F1 over the classes present or predicted
    (as ``f1_score(average='macro')``). A group with no class present is None.
    """
    cm = cm.double().cpu()
    support = cm.sum(1)
    tp = cm.diag()
    predicted = cm.sum(0)
    present = support > 0
    recall = torch.where(present, tp / support.clamp(min=1), torch.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros(()))
    r0 = recall.nan_to_num()
    f1 = torch.where(precision + r0 > 0, 2 * precision * r0 / (precision + r0), torch.zeros(()))
    scored = present | (predicted > 0)

    def mean_recall(classes: list[int]) -> float | None:
        m = torch.zeros_like(present)
        m[classes] = True
        m &= present
        return float(recall[m].mean()) if bool(m.any()) else None

    groups = shot_groups(train_counts)
    out: dict[str, Any] = {
        f"{prefix}_accuracy": float(tp.sum() / support.sum().clamp(min=1)),
        f"{prefix}_balanced_accuracy": float(recall[present].mean()) if bool(present.any())
        else None,
        f"{prefix}_macro_f1": float(f1[scored].mean()) if bool(scored.any()) else None,
    }
    for name, classes in groups.items():
        out[f"{prefix}_{name}_shot_accuracy"] = mean_recall(classes)
    for name, classes in thirds(train_counts).items():
        out[f"{prefix}_{name}_accuracy"] = mean_recall(classes)
    out[f"{prefix}_shot_classes"] = {name: len(classes) for name, classes in groups.items()}
    out[f"{prefix}_per_class_accuracy"] = [None if v != v else round(float(v), 6) for v in recall]
    return out


def empty_groups_note(train_counts: list[int]) -> str | None:
    """One sentence naming the shot groups with no class, or None when all three have some."""
    empty = [name for name, classes in shot_groups(train_counts).items() if not classes]
    if not empty:
        return None
    return (f"no {'/'.join(empty)}-shot classes in this training split (many > "
            f"{MANY_SHOT_ABOVE}, few < {FEW_SHOT_BELOW} images): their accuracies are None")
