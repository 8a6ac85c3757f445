"""Focal losses: the softmax (multi-class) form and torchvision's per-class sigmoid form.

Two conventions for ``alpha`` exist and both are used here, one per loss: the softmax focal
loss takes a per-class ``α_c`` (``none`` or inverse frequency, ``Σ α_c = C``); the sigmoid
focal loss takes one number, the weight of positives (``1 - α`` on negatives), as
``torchvision.ops.sigmoid_focal_loss``. Neither treats class 0 as background (kornia does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss, check_choice
from worker.losses.weights import inverse_frequency_weights


def focal_term(log_p: Tensor, gamma: float) -> Tensor:
    """``(1 - p)^γ`` from ``log p``, any shape.

    ``1 - p`` is ``-expm1(log p)`` (exact near p = 1), clamped at the smallest normal number:
    a log-probability a hair above 0 cannot make it negative (NaN under ``^γ`` for γ < 1), and
    at p = 1 the derivative ``γ (1 - p)^(γ-1)`` stays finite instead of ``inf · 0 = NaN``.
    """
    q = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny)
    return q.pow(gamma)


def sigmoid_focal_elementwise(z: Tensor, onehot: Tensor, gamma: float) -> Tensor:
    """Per element (N x C): ``BCE(z, t) · (1 - p_t)^γ``, with ``p_t = σ(z)`` on positives and
    ``1 - σ(z)`` on negatives.

    With ``s = ±1`` for positives / negatives, ``BCE = -logsigmoid(s z)`` and
    ``1 - p_t = σ(-s z)``, so the modulator is ``exp(γ · logsigmoid(-s z))``; unlike the
    ``exp(-γ y z - γ log(1 + exp(-z)))`` of the class-balanced reference it cannot overflow.
    """
    sz = z * (2.0 * onehot - 1.0)
    bce = -F.logsigmoid(sz)
    if gamma == 0:
        return bce
    return bce * torch.exp(gamma * F.logsigmoid(-sz))


class FocalLoss(ImbalanceLoss):
    """Softmax focal loss (Lin et al. 2017): ``-α_y (1 - p_t)^γ log p_t``, mean over the batch.

    ``logits`` N x C, ``targets`` N; ``p_t`` comes from ``log_softmax``. ``alpha``: ``"none"``
    (all ones) or ``"inverse_frequency"`` (``α_c ∝ 1/n_c``, ``Σ α_c = C``). The mean divides by
    N, not by ``Σ α_y``. γ = 0 with ``alpha="none"`` is cross-entropy.
    """

    def __init__(self, class_counts: Counts, *, gamma: float = 2.0, alpha: str = "none",
                 total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        check_choice("alpha", alpha, ("none", "inverse_frequency"))
        self.gamma = float(gamma)
        self.alpha_mode = alpha
        alpha_c = (inverse_frequency_weights(self.class_counts) if alpha == "inverse_frequency"
                   else torch.ones_like(self.class_counts))
        self.register_buffer("alpha", alpha_c, persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        log_pt = F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
        loss = -focal_term(log_pt, self.gamma) * log_pt
        if self.alpha_mode != "none":
            loss = loss * self.alpha.to(z.dtype)[y]
        return loss.mean()


class SigmoidFocalLoss(ImbalanceLoss):
    """Per-class sigmoid focal loss on one-hot targets (torchvision.ops.sigmoid_focal_loss).

    ``L_ic = α_t · BCE(z_ic, t_ic) · (1 - p_t,ic)^γ`` with ``α_t = α`` on the positive
    (``t_ic = 1``) and ``1 - α`` on the C - 1 negatives. ``logits`` N x C, ``targets`` N.
    Reduction: summed over classes, mean over the batch (``Σ_ic L_ic / N``; torchvision's
    ``"mean"`` would divide by N·C).
    """

    def __init__(self, class_counts: Counts, *, alpha: float = 0.25, gamma: float = 2.0,
                 total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)
        loss = sigmoid_focal_elementwise(z, onehot, self.gamma)
        alpha_t = (1.0 - self.alpha) + (2.0 * self.alpha - 1.0) * onehot
        return (loss * alpha_t).sum() / z.shape[0]
