"""Self-adjusting dice loss (Li et al. ACL 2020)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss
from worker.losses.focal import focal_term


class SelfAdjustingDiceLoss(ImbalanceLoss):
    """Per sample, on the softmax probability of the target ``p_t``::

        L_i = 1 - (2 (1 - p_t)^α p_t + γ) / ((1 - p_t)^α p_t + 1 + γ)

    ``logits`` N x C, ``targets`` N; mean over the batch. ``alpha`` here is the self-adjusting
    exponent of the paper (not a class weight), ``gamma`` its additive smoothing. The
    denominator is at least 1, so the loss is finite for any logits.
    """

    def __init__(self, class_counts: Counts, *, alpha: float = 1.0, gamma: float = 1.0,
                 total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        log_pt = F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
        a = focal_term(log_pt, self.alpha) * log_pt.exp()
        return (1.0 - (2.0 * a + self.gamma) / (a + 1.0 + self.gamma)).mean()
