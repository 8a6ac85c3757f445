"""The contract every loss follows.

A loss is built once per trial, on the trial's device, from the training class counts and its
parameters (``build_loss``), and called on one batch::

    loss(logits, targets, features=None, epoch=0) -> scalar tensor

``logits`` is N x C (any float dtype; computed in float32), ``targets`` N class indices,
``features`` the N x D penultimate features (only losses with ``uses_features`` read them),
``epoch`` the 0-based epoch, for schedules that live in the loss (warm-up, deferred
re-weighting). A loss keeps no state that one call changes for the next, except what its
method defines (GHM's momentum counts), and that state belongs to its one trial.

Shared rules of the implementations: log-probabilities only through ``log_softmax`` /
``logsigmoid``; class weights and margins are buffers built once in ``__init__``; float64
inputs stay float64 (so ``gradcheck`` can run on the real code), everything else is
computed in float32; a schedule switches at ``switch_epoch(fraction, total_epochs)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from search_spaces.catalogue import switch_epoch as switch_epoch  # one rule for losses and pruning

Counts = Sequence[int] | Tensor
Device = torch.device | str | None


def compute_dtype(x: Tensor) -> Tensor:
    """``x`` in float32, or left in float64 (half / bfloat16 / float16 are upcast)."""
    return x if x.dtype == torch.float64 else x.float()


class _PrecomputedGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad: Tensor) -> Tensor:
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_out, None, None


def with_gradient(x: Tensor, value: Tensor, grad: Tensor | None) -> Tensor:
    """The scalar ``value``, a function of ``x`` whose gradient ``grad`` (shape of ``x``) was
    computed by hand, as a differentiable output of ``x``.

    For losses fused by hand: the autograd graph of their plain expression costs a dozen
    N x C passes and allocations forward and backward, several times cross-entropy on the CPU.
    ``gradcheck`` on the loss checks ``grad`` against finite differences.
    """
    if grad is None or not x.requires_grad:
        return value
    return _PrecomputedGradient.apply(x, value, grad)


class ImbalanceLoss(nn.Module):
    """Base class: holds the class counts as a float tensor on the trial's device."""

    uses_features: bool = False

    def __init__(self, class_counts: Counts, *, total_epochs: int = 1,
                 device: Device = None) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float32, device=device)
        if counts.ndim != 1 or counts.numel() < 2:
            raise ValueError(
                f"class_counts must list at least 2 classes, got shape {tuple(counts.shape)}")
        if bool((counts <= 0).any()):
            raise ValueError("every class needs at least one training example (class_counts > 0)")
        self.register_buffer("class_counts", counts, persistent=False)
        self.num_classes = int(counts.numel())
        self.total_epochs = int(total_epochs)

    def _inputs(self, logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Check shapes and return ``(logits in the compute dtype, targets as int64)``."""
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be N x {self.num_classes}, got {tuple(logits.shape)}")
        if targets.shape != logits.shape[:1]:
            raise ValueError(f"targets must have shape ({logits.shape[0]},), "
                             f"got {tuple(targets.shape)}")
        return compute_dtype(logits), targets.long()

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        raise NotImplementedError


def check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
