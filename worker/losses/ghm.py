"""Gradient harmonizing classification loss, GHM-C (Li et al. AAAI 2019), on sigmoid outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss


class GHMCLoss(ImbalanceLoss):
    """GHM-C with one-hot targets, following mmdetection's ``GHMC``.

    Per element of the N x C logits: ``g = |σ(z) - t|`` (detached), binned into ``bins``
    equal bins over [0, 1] (``g = 1`` falls in the last bin). With ``tot = N·C`` and
    ``count_b`` the number of elements in bin b, each element of bin b gets the weight
    ``tot / count_b / n_nonempty``, where ``n_nonempty`` is the number of non-empty bins of
    this batch. With ``momentum > 0`` the count of a non-empty bin is smoothed across calls,
    ``acc_b ← m·acc_b + (1 - m)·count_b`` (empty bins keep their ``acc_b``), and ``acc_b``
    replaces ``count_b``; ``acc`` starts at 0 without bias correction, as the reference.
    ``acc`` is the only state a loss object carries between calls, one per object (per trial).

    Loss: ``Σ w · BCE(z, t) / tot``, i.e. divided by N·C (mmdetection's ``avg_factor``).
    The histogram is ``bucketize`` + ``bincount``; the bin edges are never modified.
    """

    def __init__(self, class_counts: Counts, *, bins: int = 10, momentum: float = 0.0,
                 total_epochs: int = 1, device: Device = None) -> None:
        super().__init__(class_counts, total_epochs=total_epochs, device=device)
        if int(bins) != bins or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        self.bins = int(bins)
        self.momentum = float(momentum)
        # Inner edges 1/M .. (M-1)/M; bucketize(right=True) gives bin i for edge_i <= g < edge_i+1.
        edges = torch.arange(1, self.bins, dtype=torch.float32, device=device) / self.bins
        self.register_buffer("inner_edges", edges, persistent=False)
        self.register_buffer("acc_sum", torch.zeros(self.bins, device=device), persistent=False)

    @torch.no_grad()
    def element_weights(self, z: Tensor, onehot: Tensor) -> Tensor:
        """The GHM weight of every element (N x C), updating the momentum counts."""
        g = (torch.sigmoid(z) - onehot).abs()
        idx = torch.bucketize(g, self.inner_edges.to(g.dtype), right=True)
        count = torch.bincount(idx.flatten(), minlength=self.bins).to(g.dtype)
        nonempty = count > 0
        if self.momentum > 0:
            acc = self.acc_sum.to(g.dtype)
            acc = torch.where(nonempty, self.momentum * acc + (1 - self.momentum) * count, acc)
            self.acc_sum.copy_(acc)
            count = acc
        tot = float(g.numel())
        bin_weight = torch.where(nonempty, tot / count.clamp(min=1e-12), 0.0)
        bin_weight = bin_weight / nonempty.sum()
        return bin_weight[idx]

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)
        w = self.element_weights(z, onehot)
        return F.binary_cross_entropy_with_logits(z, onehot, weight=w, reduction="sum") / z.numel()
