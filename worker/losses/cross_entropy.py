"""Cross-entropy and its class-weighted form."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import ImbalanceLoss


class CrossEntropy(ImbalanceLoss):
    """``-log p_t``, mean over the batch."""

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        return F.cross_entropy(logits.float(), targets)


class WeightedCrossEntropy(ImbalanceLoss):
    """``w_y · (-log p_t)`` with ``w_c ∝ n_c^-power`` scaled so ``Σ w_c = C``.

    Reduction: PyTorch's ``weight=`` mean, ``Σ_i w_{y_i} CE_i / Σ_i w_{y_i}``.
    """

    def __init__(self, class_counts, *, power: float = 1.0, **kwargs) -> None:
        super().__init__(class_counts, **kwargs)
        w = self.class_counts.pow(-float(power))
        self.register_buffer("weight", w * self.num_classes / w.sum(), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        return F.cross_entropy(logits.float(), targets, weight=self.weight)

