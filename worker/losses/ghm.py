"""Gradient harmonizing classification loss, GHM-C (Li et al. AAAI 2019), on sigmoid outputs."""

from __future__ import annotations

import torch
from torch import Tensor

from worker.losses.base import Counts, Device, ImbalanceLoss, with_gradient


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
    The histogram is one ``floor`` + ``bincount`` (``bucketize`` is 15x slower on the CPU);
    there are no edge tensors to modify.
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
        self.register_buffer("acc_sum", torch.zeros(self.bins, device=device), persistent=False)

    @torch.no_grad()
    def _histogram_weights(self, sig: Tensor, y1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-bin weights (M), the bin of every element (N x C, int32) and a free float
        N x C buffer, from ``σ(z)``; updates the momentum counts.

        Bin of ``g``: ``min(floor(g · M), M - 1)``, the bins of the reference's edges ``i/M``
        (with ``g = 1`` in the last one). ``g = σ`` off the target and ``1 - σ`` on it, so the
        N x C pass runs on σ and only the N target entries are recomputed.
        """
        top = self.bins - 1
        work = sig.mul(self.bins).clamp_(max=top)
        idx = work.int()  # truncation = floor, g >= 0
        g_t = 1.0 - sig.gather(1, y1)
        idx.scatter_(1, y1, g_t.mul_(self.bins).clamp_(max=top).int())
        count = torch.bincount(idx.reshape(-1), minlength=self.bins).to(sig.dtype)
        nonempty = count > 0
        if self.momentum > 0:
            acc = self.acc_sum.to(sig.dtype)
            acc = torch.where(nonempty, self.momentum * acc + (1 - self.momentum) * count, acc)
            self.acc_sum.copy_(acc)
            count = acc
        tot = float(sig.numel())
        bin_weight = torch.where(nonempty, tot / count.clamp(min=1e-12), 0.0) / nonempty.sum()
        return bin_weight, idx, work

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        y1 = y[:, None]
        tot = float(z.numel())
        need_grad = torch.is_grad_enabled() and z.requires_grad
        with torch.no_grad():
            sig = torch.sigmoid(z)
            bin_weight, idx, work = self._histogram_weights(sig, y1)
            # BCE against 0 is softplus(z) = relu(z) - log σ(|z|), σ(|z|) = max(σ, 1 - σ) in
            # [0.5, 1]; at the target entries BCE against 1 is that minus z.
            relu = torch.clamp(z, min=0, out=work)
            bce = torch.sub(1.0, sig).clamp_(min=sig).log_()
            bce = torch.sub(relu, bce, out=bce)
            bce.scatter_add_(1, y1, -z.gather(1, y1))
            # w / tot per element, in the buffer again
            w = torch.index_select(bin_weight / tot, 0, idx.reshape(-1), out=work.reshape(-1))
            loss = torch.dot(w, bce.reshape(-1))
            grad = None
            if need_grad:  # w · (σ - t) / tot, in σ's storage
                grad = sig.scatter_add_(1, y1, torch.full_like(y1, -1, dtype=sig.dtype))
                grad.mul_(w.view_as(sig))
        return with_gradient(z, loss, grad)
