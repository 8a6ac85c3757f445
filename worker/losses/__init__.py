"""Imbalance losses behind one interface (see ``worker.losses.base``).

``build_loss(name, class_counts, **params)`` returns the loss of one trial. The names and
parameters are declared in ``search_spaces.catalogue.LOSSES``; every catalogue entry has an
implementation here and every implementation an entry (a test checks both directions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from search_spaces.catalogue import LOSSES
from worker.losses.base import ImbalanceLoss, switch_epoch
from worker.losses.class_balanced import ClassBalancedLoss
from worker.losses.cross_entropy import CrossEntropy, WeightedCrossEntropy
from worker.losses.dice import SelfAdjustingDiceLoss
from worker.losses.focal import FocalLoss, SigmoidFocalLoss
from worker.losses.ghm import GHMCLoss
from worker.losses.influence_balanced import InfluenceBalancedFocalLoss, InfluenceBalancedLoss
from worker.losses.ldam import LDAMDRWLoss, LDAMLoss
from worker.losses.logit_adjustment import BalancedSoftmaxLoss, LogitAdjustedLoss

REGISTRY: dict[str, type[ImbalanceLoss]] = {
    "ce": CrossEntropy,
    "weighted_ce": WeightedCrossEntropy,
    "focal": FocalLoss,
    "sigmoid_focal": SigmoidFocalLoss,
    "class_balanced": ClassBalancedLoss,
    "influence_balanced": InfluenceBalancedLoss,
    "ib_focal": InfluenceBalancedFocalLoss,
    "ghm": GHMCLoss,
    "ldam": LDAMLoss,
    "ldam_drw": LDAMDRWLoss,
    "balanced_softmax": BalancedSoftmaxLoss,
    "logit_adjusted": LogitAdjustedLoss,
    "dice": SelfAdjustingDiceLoss,
}


def build_loss(name: str, class_counts: Sequence[int] | Tensor, *, total_epochs: int = 1,
               device: torch.device | str | None = None, **params: Any) -> ImbalanceLoss:
    """Build the loss ``name`` for one trial; missing parameters take their published defaults."""
    if name not in REGISTRY:
        raise ValueError(f"unknown loss {name!r}; valid: {', '.join(sorted(REGISTRY))}")
    entry = LOSSES[name]
    unknown = set(params) - {p.name for p in entry.params}
    if unknown:
        raise ValueError(f"loss {name!r} has no parameter(s) {sorted(unknown)}")
    merged = {**entry.defaults, **params}
    for p in entry.params:
        reason = p.check(merged[p.name])
        if reason:
            raise ValueError(f"loss {name!r} parameter {p.name!r} {reason}")
    loss = REGISTRY[name](class_counts, total_epochs=total_epochs, device=device, **merged)
    return loss.to(device) if device is not None else loss


__all__ = ["REGISTRY", "ImbalanceLoss", "build_loss", "switch_epoch"]
