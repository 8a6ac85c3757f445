"""Class-balanced loss (Cui et al. CVPR 2019): a base loss re-weighted by the inverse effective
number of samples per class."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss, check_choice
from worker.losses.focal import sigmoid_focal_sum
from worker.losses.weights import class_balanced_weights


class ClassBalancedLoss(ImbalanceLoss):
    """``w_y · L_base`` with ``w_c = (1 - β) / (1 - β^n_c)`` scaled so ``Σ w_c = C``.

    ``logits`` N x C, ``targets`` N. Bases, as in the official (TensorFlow) code:

    - ``softmax``: ``L_i = -log p_t`` (softmax cross-entropy; not the popular port's binary
      cross-entropy applied to softmax probabilities).
    - ``sigmoid``: ``L_i = Σ_c BCE(z_ic, t_ic)`` on one-hot targets.
    - ``focal``: ``L_i = Σ_c (1 - p_t,ic)^γ BCE(z_ic, t_ic)``, the sigmoid focal loss of the
      reference with no α of its own (the class weight ``w_y`` is its α, applied to all C
      elements of sample i); ``γ`` is used by this base only.

    Reduction: ``Σ_i w_{y_i} L_i / N`` for every base (the official code divides by the batch
    size / number of positives, not by ``Σ w_y`` and not by N·C). β = 0 gives all weights 1,
    i.e. the base loss unweighted.
    """

    def __init__(self, class_counts: Counts, *, beta: float = 0.9999, base: str = "focal",
                 gamma: float = 1.0, total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        check_choice("base", base, ("softmax", "sigmoid", "focal"))
        self.beta = float(beta)
        self.base = base
        self.gamma = float(gamma) if base == "focal" else 0.0
        self.register_buffer("weight", class_balanced_weights(self.class_counts, beta),
                             persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        w_y = self.weight.to(z.dtype)[y]
        if self.base == "softmax":
            return (w_y * F.cross_entropy(z, y, reduction="none")).sum() / z.shape[0]
        return sigmoid_focal_sum(z, y, self.gamma, row_weight=w_y, scale=1.0 / z.shape[0])
