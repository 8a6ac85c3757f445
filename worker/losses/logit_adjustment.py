"""Losses that add a class prior to the logits before softmax cross-entropy: balanced softmax
(Ren et al. NeurIPS 2020) and logit-adjusted loss (Menon et al. ICLR 2021)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss


class _PriorShiftedCE(ImbalanceLoss):
    """Cross-entropy on ``z + shift_c`` (``shift`` a C buffer), mean over the batch."""

    shift: Tensor

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        return F.cross_entropy(z + self.shift.to(z.dtype), y)


class BalancedSoftmaxLoss(_PriorShiftedCE):
    """Cross-entropy on ``z + log n_c``; ``logits`` N x C, ``targets`` N; mean over the batch."""

    def __init__(self, class_counts: Counts, *, total_epochs: int = 1,
                 device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        self.register_buffer("shift", self.class_counts.log(), persistent=False)


class LogitAdjustedLoss(_PriorShiftedCE):
    """Cross-entropy on ``z + τ · log π_c`` with ``π_c = n_c / Σ n``; ``logits`` N x C,
    ``targets`` N; mean over the batch. τ = 0 is cross-entropy; τ = 1 equals balanced softmax
    (the two differ by a constant shift, which softmax ignores)."""

    def __init__(self, class_counts: Counts, *, tau: float = 1.0, total_epochs: int = 1,
                 device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        self.tau = float(tau)
        log_prior = (self.class_counts.double() / self.class_counts.double().sum()).log()
        self.register_buffer("shift", (self.tau * log_prior).float(), persistent=False)
