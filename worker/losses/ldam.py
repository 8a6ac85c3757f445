"""Label-distribution-aware margin loss and its deferred re-weighting schedule (Cao et al.
NeurIPS 2019). Both expect a cosine head (``worker.models.CosineHead``, logits in [-1, 1]);
the catalogue entries say ``head="cosine"`` so the trial builds one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss, switch_epoch
from worker.losses.weights import class_balanced_weights


class LDAMLoss(ImbalanceLoss):
    """Cross-entropy on ``s · (z - m_y · onehot(y))`` with ``m_c ∝ n_c^(-1/4)`` scaled so that
    ``max_c m_c = max_m`` (the rarest class gets the largest margin).

    ``logits`` N x C are the cosines of the head, ``targets`` N. Reduction: mean over the
    batch (the reference's ``F.cross_entropy`` with ``weight=None``).
    """

    def __init__(self, class_counts: Counts, *, max_m: float = 0.5, s: float = 30.0,
                 total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        m = self.class_counts.double().pow(-0.25)
        self.register_buffer("margins", (m * (float(max_m) / m.max())).float(), persistent=False)
        self.max_m = float(max_m)
        self.s = float(s)

    def margin_logits(self, z: Tensor, y: Tensor) -> Tensor:
        """``s · (z - m_y · onehot(y))``, N x C."""
        shift = (-self.s * self.margins.to(z.dtype)[y])[:, None]
        return torch.scatter_add(self.s * z, 1, y[:, None], shift)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        return F.cross_entropy(self.margin_logits(z, y), y)


class LDAMDRWLoss(LDAMLoss):
    """LDAM; from ``switch_epoch = ceil(drw_epoch · total_epochs)`` on, weighted by the
    class-balanced weights ``w_c ∝ (1 - β) / (1 - β^n_c)``, ``Σ w_c = C`` (the reference code's
    deferred re-weighting; the paper's text says 1/n_c).

    Reduction: PyTorch's ``weight=`` mean, ``Σ_i w_{y_i} L_i / Σ_i w_{y_i}`` after the switch
    (the reference passes ``weight=per_cls_weights``), plain mean before it.
    """

    def __init__(self, class_counts: Counts, *, max_m: float = 0.5, s: float = 30.0,
                 drw_epoch: float = 0.8, beta: float = 0.9999, total_epochs: int = 1,
                 device: Device = None) -> None:
        super().__init__(class_counts, max_m=max_m, s=s, total_epochs=total_epochs,
                         device=device)
        self.switch_epoch = switch_epoch(drw_epoch, self.total_epochs)
        self.beta = float(beta)
        self.register_buffer("weight", class_balanced_weights(self.class_counts, beta),
                             persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        weight = self.weight.to(z.dtype) if epoch >= self.switch_epoch else None
        return F.cross_entropy(self.margin_logits(z, y), y, weight=weight)
