"""Per-class weights shared by several losses, computed once per trial in float64 then stored
as float32 buffers. Both are normalised so that ``Σ_c w_c = C`` (the seeds' convention), which
keeps the loss scale comparable to unweighted cross-entropy."""

from __future__ import annotations

import torch
from torch import Tensor


def _normalise(w: Tensor) -> Tensor:
    return (w * w.numel() / w.sum()).float()


def inverse_frequency_weights(counts: Tensor, power: float = 1.0) -> Tensor:
    """``w_c ∝ n_c^-power``; power 1 is inverse frequency, power 0 all ones."""
    return _normalise(counts.double().pow(-float(power)))


def class_balanced_weights(counts: Tensor, beta: float) -> Tensor:
    """Cui et al. 2019: ``w_c ∝ (1 - β) / (1 - β^n_c)``, the inverse effective number.

    β = 0 gives all ones. Computed in float64 because ``1 - β`` with β = 0.9999 loses four
    digits in float32.
    """
    n = counts.double()
    beta_t = torch.full_like(n, float(beta))
    return _normalise((1.0 - beta_t) / (1.0 - beta_t.pow(n)))
