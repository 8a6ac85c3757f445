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

from worker.losses.base import Counts, Device, ImbalanceLoss, check_choice, with_gradient
from worker.losses.weights import inverse_frequency_weights


def focal_term(log_p: Tensor, gamma: float) -> Tensor:
    """``(1 - p)^γ`` from ``log p``, any shape.

    ``1 - p`` is ``-expm1(log p)`` (exact near p = 1), clamped at the smallest normal number:
    a log-probability a hair above 0 cannot make it negative (NaN under ``^γ`` for γ < 1), and
    at p = 1 the derivative ``γ (1 - p)^(γ-1)`` stays finite instead of ``inf · 0 = NaN``.
    """
    q = (-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny)
    return q.pow(gamma)


def _softplus(z: Tensor) -> Tensor:
    """``softplus(z) = relu(z) - log σ(|z|)``: the log never sees 0 (finite for ±1e4)."""
    return z.clamp(min=0) - torch.sigmoid(z.abs()).log()


def _focal_terms(u: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """For a few logits ``u`` of negative elements: ``σ(u)^γ softplus(u)`` and its derivative
    ``σ^γ (σ + γ (1 - σ) softplus(u))``. A positive element is the negative one at ``-u``,
    derivative negated."""
    sig = torch.sigmoid(u)
    sp = _softplus(u)
    mod = sig.pow(gamma)
    return sp * mod, mod * (sig + gamma * (1 - sig) * sp)


def sigmoid_focal_sum(z: Tensor, targets: Tensor, gamma: float, *, pos: float = 1.0,
                      neg: float = 1.0, row_weight: Tensor | None = None,
                      scale: float = 1.0) -> Tensor:
    """``scale · Σ_i r_i Σ_c a_ic (1 - p_t,ic)^γ BCE(z_ic, onehot(targets)_ic)``.

    ``z`` N x C logits (float32 or float64), ``targets`` N class indices, ``p_t = σ(z)`` on
    the target class and ``1 - σ(z)`` elsewhere, ``a = pos`` on the target class and ``neg``
    on the others, ``row_weight`` ``r`` an optional N vector (1 when None). γ = 0 is
    per-class BCE.

    Fused by hand (see ``with_gradient``). Every element is first treated as a negative:
    value ``σ^γ softplus(z)``, derivative ``σ^γ (σ + γ (1 - σ) softplus(z))``, over the whole
    matrix with three fresh tensors and in-place passes (on the CPU a new N x C tensor costs
    more than a pass over an existing one); the N target entries are then replaced by the
    positive formula, the negative one at ``-z``. ``softplus(z)`` is
    ``relu(z) - log max(σ, 1 - σ)``, the log's argument in [0.5, 1]: one sigmoid and one log,
    finite for ±1e4, a third of the cost of ``F.softplus`` / ``logsigmoid``.
    """
    y1 = targets[:, None]
    need_grad = torch.is_grad_enabled() and z.requires_grad
    with torch.no_grad():
        neg_scale = neg * scale if row_weight is None else (row_weight * (neg * scale))[:, None]
        sig = torch.sigmoid(z)
        work = z.clamp(min=0)
        bce = torch.sub(1.0, sig).clamp_(min=sig).log_()
        bce = torch.sub(work, bce, out=bce)  # softplus(z)
        if need_grad:
            deriv = torch.sub(1.0, sig, out=work)
            deriv = torch.addcmul(sig, deriv, bce, value=gamma, out=deriv)
        # σ is not needed any more: its storage becomes neg_scale · σ^γ, the factor of every
        # negative's value and derivative.
        if gamma == 2 and row_weight is None:  # c·σ² in one pass (the default γ)
            mod = torch.addcmul(torch.zeros((), dtype=sig.dtype, device=sig.device), sig, sig,
                                value=neg_scale, out=sig)
        else:
            if gamma == 0:
                mod = sig.fill_(1.0)
            elif gamma == 1:
                mod = sig
            elif gamma == 2:
                mod = sig.mul_(sig)
            else:  # pow with a general exponent is several times slower than exp(γ log σ)
                mod = sig.log_().mul_(gamma).exp_()
            mod.mul_(neg_scale)
        total = torch.dot(bce.scatter_(1, y1, 0.0).reshape(-1), mod.reshape(-1))
        value_t, deriv_t = _focal_terms(-z.gather(1, y1).squeeze(1), gamma)
        pos_scale = pos * scale if row_weight is None else row_weight * (pos * scale)
        loss = total + (value_t * pos_scale).sum()
        grad = None
        if need_grad:
            grad = deriv.mul_(mod).scatter_(1, y1, (-deriv_t * pos_scale)[:, None])
    return with_gradient(z, loss, grad)


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
        return sigmoid_focal_sum(z, y, self.gamma, pos=self.alpha, neg=1.0 - self.alpha,
                                 scale=1.0 / z.shape[0])
