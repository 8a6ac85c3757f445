"""Gradient harmonizing classification loss, GHM-C (Li et al. AAAI 2019), on sigmoid outputs."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from worker.losses.base import Counts, Device, ImbalanceLoss


class _GHMCSum(torch.autograd.Function):
    """``Σ w · BCE(z, onehot(y)) / tot`` for fixed (detached) element weights ``w``; the
    gradient ``w · (σ(z) - t) / tot`` is formed in the forward pass from the σ it already
    has, so forward + backward makes a handful of N x C passes instead of BCE's dozen."""

    @staticmethod
    def forward(ctx, z: Tensor, y: Tensor, sig: Tensor, w: Tensor) -> Tensor:
        y1 = y[:, None]
        tot = float(z.numel())
        # BCE against 0 is softplus(z) = relu(z) - log σ(|z|), σ(|z|) = max(σ, 1 - σ) in
        # [0.5, 1]; at the target entries BCE against 1 is that minus z.
        bce = torch.sub(z.clamp(min=0), torch.maximum(sig, 1.0 - sig).log_())
        bce.scatter_add_(1, y1, -z.gather(1, y1))
        loss = torch.dot(w.reshape(-1), bce.reshape(-1)) / tot
        if ctx.needs_input_grad[0]:
            grad = sig.clone().scatter_add_(1, y1, torch.full_like(y1, -1.0, dtype=sig.dtype))
            ctx.save_for_backward(grad.mul_(w).div_(tot))
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None, None


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
    def element_weights(self, sig: Tensor, targets: Tensor) -> Tensor:
        """The GHM weight of every element (N x C) from ``σ(z)``; updates the momentum counts.

        Bin of ``g``: ``min(floor(g · M), M - 1)``, the bins of the reference's edges ``i/M``
        (with ``g = 1`` in the last one). ``g = σ`` off the target and ``1 - σ`` on it, so the
        N x C pass runs on σ and only the N target entries are recomputed.
        """
        y1 = targets[:, None]
        top = self.bins - 1
        idx = sig.mul(self.bins).clamp_(max=top).long()  # truncation = floor, g >= 0
        g_t = 1.0 - sig.gather(1, y1)
        idx.scatter_(1, y1, g_t.mul_(self.bins).clamp_(max=top).long())
        count = torch.bincount(idx.reshape(-1), minlength=self.bins).to(sig.dtype)
        nonempty = count > 0
        if self.momentum > 0:
            acc = self.acc_sum.to(sig.dtype)
            acc = torch.where(nonempty, self.momentum * acc + (1 - self.momentum) * count, acc)
            self.acc_sum.copy_(acc)
            count = acc
        tot = float(sig.numel())
        bin_weight = torch.where(nonempty, tot / count.clamp(min=1e-12), 0.0) / nonempty.sum()
        return bin_weight.take(idx)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        z, y = self._inputs(logits, targets)
        sig = torch.sigmoid(z.detach())
        return _GHMCSum.apply(z, y, sig, self.element_weights(sig, y))
