"""Influence-balanced loss (Park et al. ICCV 2021) and its focal variant.

Both train with plain cross-entropy until ``switch_epoch`` and then down-weight each sample by
its influence ``‖p - onehot(y)‖₁ · ‖h‖₁`` (the norm of the gradient of CE with respect to the
last layer's weights, factorised). ``‖h‖₁`` is taken over the pooled penultimate features
``h`` (N x D) the loss is given, not detached, as in the reference code; ``‖p - onehot(y)‖₁``
is computed as its closed form ``2 (1 - p_t)``, which is the same function (and gradient).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import (
    Counts,
    Device,
    ImbalanceLoss,
    check_choice,
    compute_dtype,
    switch_epoch,
)
from worker.losses.focal import focal_term
from worker.losses.weights import class_balanced_weights, inverse_frequency_weights

IB_CB_BETA = 0.9999  # β of the IB + CB variant, fixed in the reference code


class InfluenceBalancedLoss(ImbalanceLoss):
    """Before ``switch_epoch = ceil(warmup · total_epochs)``: plain CE (mean, no weights). From
    then on::

        L = (1/N) Σ_i w_{y_i} · CE_i · α / (‖p_i - onehot(y_i)‖₁ · ‖h_i‖₁ + ε)

    ``logits`` N x C, ``targets`` N, ``features`` N x D (required from the switch epoch on).
    ``weights``: ``none``, ``inverse_frequency`` (``1/n_c``, ``Σ w_c = C``, the reference
    default) or ``class_balanced`` (β = 0.9999, IB + CB). ``alpha`` is the influence scale
    (catalogue default 1000, what the reference training script passes; the class default of
    10000 is not used there). Reduction: mean over the batch, as the reference
    (``(w_y CE · ib).mean()``).
    """

    uses_features = True
    gamma: float = 0.0  # the focal exponent; 0 here, set by InfluenceBalancedFocalLoss

    def __init__(self, class_counts: Counts, *, alpha: float = 1000.0, epsilon: float = 1e-3,
                 warmup: float = 0.5, weights: str = "inverse_frequency", total_epochs: int = 1,
                 device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        check_choice("weights", weights, ("none", "inverse_frequency", "class_balanced"))
        self.alpha = float(alpha)
        self.epsilon = float(epsilon)
        self.switch_epoch = switch_epoch(warmup, self.total_epochs)
        if weights == "inverse_frequency":
            w = inverse_frequency_weights(self.class_counts)
        elif weights == "class_balanced":
            w = class_balanced_weights(self.class_counts, IB_CB_BETA)
        else:
            w = inverse_frequency_weights(self.class_counts, power=0.0)
        self.register_buffer("weight", w, persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        if epoch < self.switch_epoch:
            return F.cross_entropy(z, y)
        if features is None or features.ndim != 2 or features.shape[0] != z.shape[0]:
            shape = None if features is None else tuple(features.shape)
            raise ValueError(f"{type(self).__name__} needs features of shape "
                             f"({z.shape[0]}, D) from epoch {self.switch_epoch}, got {shape}")
        log_pt = F.log_softmax(z, dim=1).gather(1, y[:, None]).squeeze(1)
        grad_norm = -2.0 * log_pt.expm1()  # ‖p - onehot(y)‖₁ = 2 (1 - p_t)
        feat_norm = compute_dtype(features).abs().sum(1)
        influence = self.alpha / (grad_norm * feat_norm + self.epsilon)
        loss = -log_pt * self.weight.to(z.dtype)[y] * influence
        if self.gamma != 0:
            loss = loss * focal_term(log_pt, self.gamma)
        return loss.mean()


class InfluenceBalancedFocalLoss(InfluenceBalancedLoss):
    """Influence-balanced loss with the focal term on CE: after the warm-up, ::

        L = (1/N) Σ_i (1 - p_t,i)^γ · w_{y_i} · CE_i · α / (‖p_i - onehot(y_i)‖₁ · ‖h_i‖₁ + ε)

    ``p_t`` is the unweighted softmax probability of the target; the reference derives it as
    ``exp(-CE)`` from the class-weighted CE, which is wrong whenever weights are given. γ = 0
    is ``influence_balanced``. Shapes, weights, schedule and reduction as there.
    """

    def __init__(self, class_counts: Counts, *, alpha: float = 1000.0, epsilon: float = 1e-3,
                 warmup: float = 0.5, weights: str = "inverse_frequency", gamma: float = 1.0,
                 total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, alpha=alpha, epsilon=epsilon, warmup=warmup,
                         weights=weights, total_epochs=total_epochs, device=device)
        self.gamma = float(gamma)
