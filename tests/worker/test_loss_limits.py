"""The limits of LOSSES.md: reductions to plain losses at special parameter values, and finite
losses and gradients for extreme logits in float32 and under bfloat16 autocast."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from search_spaces.catalogue import LOSSES
from worker.losses import build_loss

COUNTS = [5000, 1000, 300, 120, 50]
C = len(COUNTS)


def _batch(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, C, generator=gen) * 4, torch.randint(0, C, (n,), generator=gen),
            torch.randn(n, 8, generator=gen))


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_focal_gamma_0_is_ce(seed: int) -> None:
    z, y, _ = _batch(seed)
    _close(build_loss("focal", COUNTS, gamma=0.0, alpha="none")(z, y), F.cross_entropy(z, y))
    # and γ > 0 is not (so the test above can tell)
    assert not torch.allclose(build_loss("focal", COUNTS, gamma=0.5)(z, y), F.cross_entropy(z, y))


@pytest.mark.parametrize("seed", [0, 1])
def test_class_balanced_beta_0_is_its_base_unweighted(seed: int) -> None:
    z, y, _ = _batch(seed)
    onehot = F.one_hot(y, C).float()
    n = z.shape[0]
    cb = {base: build_loss("class_balanced", COUNTS, beta=0.0, base=base, gamma=1.5)(z, y)
          for base in ("softmax", "sigmoid", "focal")}
    _close(cb["softmax"], F.cross_entropy(z, y))
    _close(cb["sigmoid"], F.binary_cross_entropy_with_logits(z, onehot, reduction="sum") / n)
    # the focal base has no α of its own: torchvision's α = 0.5 halves every element
    sigmoid_focal = build_loss("sigmoid_focal", COUNTS, alpha=0.5, gamma=1.5)(z, y)
    _close(cb["focal"], 2 * sigmoid_focal)
    weighted = build_loss("class_balanced", COUNTS, beta=0.999, base="softmax")(z, y)
    assert not torch.allclose(weighted, cb["softmax"])


def test_logit_adjusted_tau_0_is_ce_and_tau_1_is_balanced_softmax() -> None:
    z, y, _ = _batch()
    _close(build_loss("logit_adjusted", COUNTS, tau=0.0)(z, y), F.cross_entropy(z, y))
    _close(build_loss("logit_adjusted", COUNTS, tau=1.0)(z, y),
           build_loss("balanced_softmax", COUNTS)(z, y))
    assert not torch.allclose(build_loss("logit_adjusted", COUNTS)(z, y), F.cross_entropy(z, y))


@pytest.mark.parametrize("name", ["influence_balanced", "ib_focal"])
def test_influence_balanced_before_warmup_is_ce(name: str) -> None:
    z, y, h = _batch()
    z.requires_grad_()
    loss = build_loss(name, COUNTS, total_epochs=20, warmup=0.5)
    for epoch in (0, 9):
        got = loss(z, y, features=h, epoch=epoch)
        _close(got, F.cross_entropy(z, y))
        _close(torch.autograd.grad(got, z)[0], torch.autograd.grad(F.cross_entropy(z, y), z)[0])
    assert not torch.allclose(loss(z, y, features=h, epoch=10), F.cross_entropy(z, y))


def test_weighted_ce_power_0_is_ce() -> None:
    z, y, _ = _batch()
    _close(build_loss("weighted_ce", COUNTS, power=0.0)(z, y), F.cross_entropy(z, y))
    assert not torch.allclose(build_loss("weighted_ce", COUNTS)(z, y), F.cross_entropy(z, y))


def test_ib_focal_gamma_0_is_influence_balanced() -> None:
    z, y, h = _batch()
    ib = build_loss("influence_balanced", COUNTS, total_epochs=2)(z, y, features=h, epoch=1)
    _close(build_loss("ib_focal", COUNTS, total_epochs=2, gamma=0.0)(z, y, features=h, epoch=1),
           ib)


# ---------------------------------------------------------------- extreme logits

EXTREME_CASES: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in LOSSES] + [
    ("focal", {"gamma": 0.5, "alpha": "inverse_frequency"}),
    ("ib_focal", {"gamma": 0.5}),
    ("class_balanced", {"base": "focal", "gamma": 0.5}),
    ("class_balanced", {"base": "softmax"}),
    ("class_balanced", {"base": "sigmoid"}),
    ("sigmoid_focal", {"gamma": 0.3}),
    ("dice", {"alpha": 0.5}),
    ("ghm", {"momentum": 0.75}),
]


def _extreme_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits of ±1e4 with the target at +1e4, at -1e4, and in ties, plus exact zeros."""
    z = torch.full((8, C), -1e4)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    z[torch.arange(5), y[:5]] = 1e4  # confident and right
    z[5, 3] = 1e4  # confident and wrong
    z[6] = 1e4  # all tied at +1e4
    z[7] = 0.0
    h = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)) * 1e3
    h[0] = 0.0  # a zero feature vector: the influence denominator is ε
    return z, y, h


def _check_finite(name: str, params: dict[str, Any], autocast: bool) -> None:
    z, y, h = _extreme_batch()
    z.requires_grad_()
    h.requires_grad_()
    loss = build_loss(name, COUNTS, total_epochs=2, **params)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = z.to(torch.bfloat16) if autocast else z
        feats = h.to(torch.bfloat16) if autocast else h
        out = loss(logits, y, features=feats, epoch=1)
    assert out.dtype == torch.float32
    assert torch.isfinite(out), f"{name} {params}: loss {out}"
    gz, gh = torch.autograd.grad(out, [z, h], allow_unused=True)
    assert torch.isfinite(gz).all(), f"{name} {params}: logit gradient {gz}"
    if LOSSES[name].uses_features:
        assert gh is not None and torch.isfinite(gh).all(), f"{name}: feature gradient {gh}"


@pytest.mark.parametrize(("name", "params"), EXTREME_CASES,
                         ids=[f"{n}-{p}" for n, p in EXTREME_CASES])
def test_extreme_logits_float32(name: str, params: dict[str, Any]) -> None:
    _check_finite(name, params, autocast=False)


@pytest.mark.parametrize(("name", "params"), EXTREME_CASES,
                         ids=[f"{n}-{p}" for n, p in EXTREME_CASES])
def test_extreme_logits_bf16_autocast(name: str, params: dict[str, Any]) -> None:
    _check_finite(name, params, autocast=True)


def test_confident_right_predictions_cost_nothing() -> None:
    """At p_t = 1 the losses that vanish there are 0 exactly, not a rounding error above."""
    z = torch.full((C, C), -1e4)
    y = torch.arange(C)
    z[y, y] = 1e4
    for name in ("ce", "focal", "sigmoid_focal", "balanced_softmax", "weighted_ce"):
        assert build_loss(name, COUNTS)(z, y) == 0.0, name
