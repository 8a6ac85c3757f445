"""The contract every loss follows.

A loss is built once per trial, on the trial's device, from the training class counts and its
parameters (``build_loss``), and called on one batch::

    loss(logits, targets, features=None, epoch=0) -> scalar tensor

``logits`` is N x C (any float dtype; computed in float32), ``targets`` N class indices,
``features`` the N x D penultimate features (only losses with ``uses_features`` read them),
``epoch`` the 0-based epoch, for schedules that live in the loss (warm-up, deferred
re-weighting). A loss keeps no state that one call changes for the next, except what its
method defines (GHM's momentum counts), and that state belongs to its one trial.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class ImbalanceLoss(nn.Module):
    """Base class: holds the class counts as a float tensor on the trial's device."""

    uses_features: bool = False

    def __init__(self, class_counts: Sequence[int] | Tensor, *, total_epochs: int = 1,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        counts = torch.as_tensor(class_counts, dtype=torch.float32, device=device)
        if counts.ndim != 1 or counts.numel() < 2:
            raise ValueError(f"class_counts must list at least 2 classes, got shape {tuple(counts.shape)}")
        if bool((counts <= 0).any()):
            raise ValueError("every class needs at least one training example (class_counts > 0)")
        self.register_buffer("class_counts", counts, persistent=False)
        self.num_classes = int(counts.numel())
        self.total_epochs = int(total_epochs)

    def forward(self, logits: Tensor, targets: Tensor, features: Tensor | None = None,
                epoch: int = 0) -> Tensor:
        raise NotImplementedError
