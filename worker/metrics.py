"""The metrics the long-tail papers report, from one confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def confusion_matrix(y_true: Tensor, y_pred: Tensor, num_classes: int) -> Tensor:
    idx = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(cm: Tensor, train_counts: list[int], prefix: str) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class accuracy, and many (> 100 training
    images) / medium (20-100) / few (< 20) shot accuracy; a group with no class is None."""
    cm = cm.double().cpu()
    support = cm.sum(1)
    tp = cm.diag()
    predicted = cm.sum(0)
    per_class = torch.where(support > 0, tp / support.clamp(min=1), torch.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros(()))
    f1 = torch.where(precision + per_class.nan_to_num() > 0,
                     2 * precision * per_class.nan_to_num() / (precision + per_class.nan_to_num()),
                     torch.zeros(()))
    counts = torch.tensor(train_counts, dtype=torch.float64)
    present = support > 0

    def group(mask: Tensor) -> float | None:
        m = mask & present
        return float(per_class[m].mean()) if bool(m.any()) else None

    return {
        f"{prefix}_accuracy": float(tp.sum() / support.sum().clamp(min=1)),
        f"{prefix}_balanced_accuracy": float(per_class[present].mean()),
        f"{prefix}_macro_f1": float(f1[present].mean()),
        f"{prefix}_many_shot_accuracy": group(counts > 100),
        f"{prefix}_medium_shot_accuracy": group((counts >= 20) & (counts <= 100)),
        f"{prefix}_few_shot_accuracy": group(counts < 20),
        f"{prefix}_per_class_accuracy": [None if v != v else round(float(v), 6) for v in per_class],
    }
