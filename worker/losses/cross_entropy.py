"""Cross-entropy and its class-weighted form."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss
from worker.losses.weights import inverse_frequency_weights


class CrossEntropy(ImbalanceLoss):
    """``-log p_t``, mean over the batch. ``logits`` N x C, ``targets`` N."""

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        return F.cross_entropy(z, y)


class WeightedCrossEntropy(ImbalanceLoss):
    """``w_y · (-log p_t)`` with ``w_c ∝ n_c^-power`` scaled so ``Σ w_c = C``.

    Reduction: PyTorch's ``weight=`` mean, ``Σ_i w_{y_i} CE_i / Σ_i w_{y_i}`` (the LDAM-DRW
    code's ``per_cls_weights``). ``logits`` N x C, ``targets`` N.
    """

    def __init__(self, class_counts: Counts, *, power: float = 1.0, total_epochs: int = 1,
                 device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        self.register_buffer("weight", inverse_frequency_weights(self.class_counts, power),
                             persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        return F.cross_entropy(z, y, weight=self.weight.to(z.dtype))
