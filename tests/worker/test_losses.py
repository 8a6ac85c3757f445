"""Every loss against an independent float64 reference written from its formula (LOSSES.md),
gradcheck, state between calls, and the registry / catalogue / build_loss contract.

The references below use only elementary tensor ops (exp, log, sums, explicit one-hot), never
the implementation nor torch's fused losses, so a wrong formula, weight or reduction fails.
"""

from __future__ import annotations

import inspect
import math
import zlib
from typing import Any

import pytest
import torch

from search_spaces.catalogue import LOSSES
from worker.losses import REGISTRY, build_loss, switch_epoch

C = 6
N = 24
D = 5
TOTAL_EPOCHS = 10
PROFILES = {
    "balanced": [40] * C,
    "ratio10": [int(400 * 0.1 ** (i / (C - 1))) for i in range(C)],
    "ratio100": [int(5000 * 0.01 ** (i / (C - 1))) for i in range(C)],
    "ties": [30, 30, 30, 4, 4, 1],
}


# ---------------------------------------------------------------- float64 references

def _log_softmax(z: torch.Tensor) -> torch.Tensor:
    m = z.max(1, keepdim=True).values
    return z - m - torch.log(torch.exp(z - m).sum(1, keepdim=True))


def _onehot(y: torch.Tensor) -> torch.Tensor:
    return (y[:, None] == torch.arange(C)[None, :]).double()


def _sigmoid(z: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-z))


def _bce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p = _sigmoid(z)
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p))


def _norm_c(w: torch.Tensor) -> torch.Tensor:
    return w * C / w.sum()


def _inv_freq(n: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    return _norm_c(n ** -power)


def _cb(n: torch.Tensor, beta: float) -> torch.Tensor:
    return _norm_c((1 - beta) / (1 - beta ** n))


def _ce_rows(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(_log_softmax(z) * _onehot(y)).sum(1)


def _pt(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return ((e / e.sum(1, keepdim=True)) * _onehot(y)).sum(1)


def _sigmoid_focal_elems(z: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    t = _onehot(y)
    p = _sigmoid(z)
    p_t = p * t + (1 - p) * (1 - t)
    return _bce(z, t) * (1 - p_t) ** gamma


def reference(name: str, p: dict[str, Any], z: torch.Tensor, y: torch.Tensor, n: torch.Tensor,
              h: torch.Tensor | None, epoch: int) -> torch.Tensor:
    """The loss ``name`` from the formulas of LOSSES.md, in float64 (GHM without momentum)."""
    if name == "ce":
        return _ce_rows(z, y).mean()
    if name == "weighted_ce":
        w = _inv_freq(n, p["power"])[y]
        return (w * _ce_rows(z, y)).sum() / w.sum()
    if name == "focal":
        a = _inv_freq(n) if p["alpha"] == "inverse_frequency" else torch.ones(C, dtype=z.dtype)
        return (a[y] * (1 - _pt(z, y)) ** p["gamma"] * _ce_rows(z, y)).mean()
    if name == "sigmoid_focal":
        t = _onehot(y)
        a_t = p["alpha"] * t + (1 - p["alpha"]) * (1 - t)
        return (a_t * _sigmoid_focal_elems(z, y, p["gamma"])).sum() / z.shape[0]
    if name == "class_balanced":
        w = _cb(n, p["beta"])[y]
        if p["base"] == "softmax":
            rows = _ce_rows(z, y)
        elif p["base"] == "sigmoid":
            rows = _bce(z, _onehot(y)).sum(1)
        else:
            rows = _sigmoid_focal_elems(z, y, p["gamma"]).sum(1)
        return (w * rows).sum() / z.shape[0]
    if name in ("influence_balanced", "ib_focal"):
        start = math.ceil(round(p["warmup"] * TOTAL_EPOCHS, 6))
        if epoch < start:
            return _ce_rows(z, y).mean()
        w = {"none": torch.ones(C, dtype=z.dtype), "inverse_frequency": _inv_freq(n),
             "class_balanced": _cb(n, 0.9999)}[p["weights"]][y]
        e = torch.exp(z - z.max(1, keepdim=True).values)
        grads = (e / e.sum(1, keepdim=True) - _onehot(y)).abs().sum(1)
        ib = p["alpha"] / (grads * h.abs().sum(1) + p["epsilon"])
        loss = w * _ce_rows(z, y) * ib
        if name == "ib_focal":
            loss = loss * (1 - _pt(z, y)) ** p["gamma"]
        return loss.mean()
    if name == "ghm":
        return _ghm_reference(z, y, p["bins"], 0.0, [0.0] * p["bins"])
    if name in ("ldam", "ldam_drw"):
        m = n ** -0.25
        m = m * p["max_m"] / m.max()
        rows = _ce_rows(p["s"] * (z - m[y][:, None] * _onehot(y)), y)
        if name == "ldam_drw" and epoch >= math.ceil(round(p["drw_epoch"] * TOTAL_EPOCHS, 6)):
            w = _cb(n, p["beta"])[y]
            return (w * rows).sum() / w.sum()
        return rows.mean()
    if name == "balanced_softmax":
        return _ce_rows(z + torch.log(n), y).mean()
    if name == "logit_adjusted":
        return _ce_rows(z + p["tau"] * torch.log(n / n.sum()), y).mean()
    if name == "dice":
        pt = _pt(z, y)
        a = (1 - pt) ** p["alpha"] * pt
        return (1 - (2 * a + p["gamma"]) / (a + 1 + p["gamma"])).mean()
    raise AssertionError(f"no reference for {name}")


def _ghm_reference(z: torch.Tensor, y: torch.Tensor, bins: int, mmt: float,
                   acc: list[float]) -> torch.Tensor:
    """mmdetection's GHMC loop, literally (edges with the +1e-6 on the last one)."""
    t = _onehot(y)
    g = (_sigmoid(z.detach()) - t).abs()
    edges = [i / bins for i in range(bins + 1)]
    edges[-1] += 1e-6
    w = torch.zeros_like(z)
    tot = z.numel()
    nonempty = 0
    for i in range(bins):
        inds = (g >= edges[i]) & (g < edges[i + 1])
        k = int(inds.sum())
        if k > 0:
            if mmt > 0:
                acc[i] = mmt * acc[i] + (1 - mmt) * k
                w[inds] = tot / acc[i]
            else:
                w[inds] = tot / k
            nonempty += 1
    w = w / nonempty
    return (w * _bce(z, t)).sum() / tot


# ---------------------------------------------------------------- cases

def _cases() -> list[tuple[str, dict[str, Any], int]]:
    """(loss, parameters, epoch); epochs on both sides of every schedule switch."""
    cases: list[tuple[str, dict[str, Any], int]] = [("ce", {}, 0)]
    cases += [("weighted_ce", {"power": pw}, 0) for pw in (0.0, 0.5, 1.0, 2.0)]
    cases += [("focal", {"gamma": g, "alpha": a}, 0)
              for g in (0.0, 0.5, 2.0) for a in ("none", "inverse_frequency")]
    cases += [("sigmoid_focal", {"alpha": a, "gamma": g}, 0)
              for a, g in ((0.25, 2.0), (0.5, 0.0), (1.0, 0.5), (0.0, 3.0), (0.7, 1.0))]
    cases += [("class_balanced", {"beta": b, "base": base, "gamma": g}, 0)
              for b in (0.0, 0.9, 0.9999) for base, g in
              (("softmax", 1.0), ("sigmoid", 2.0), ("focal", 0.5), ("focal", 2.0))]
    for name, extra in (("influence_balanced", {}), ("ib_focal", {"gamma": 1.0}),
                        ("ib_focal", {"gamma": 2.5})):
        for weights in ("none", "inverse_frequency", "class_balanced"):
            for epoch in (4, 5, 9):
                cases.append((name, {"alpha": 1000.0, "epsilon": 1e-3, "warmup": 0.5,
                                     "weights": weights, **extra}, epoch))
    cases.append(("influence_balanced", {"alpha": 10.0, "epsilon": 0.5, "warmup": 0.7,
                                         "weights": "inverse_frequency"}, 7))
    cases += [("ghm", {"bins": b, "momentum": 0.0}, 0) for b in (1, 3, 10, 30)]
    cases += [("ldam", {"max_m": m, "s": s}, 0) for m, s in ((0.5, 30.0), (1.0, 10.0))]
    cases += [("ldam_drw", {"max_m": 0.5, "s": 30.0, "drw_epoch": 0.8, "beta": b}, e)
              for b in (0.999, 0.9999) for e in (7, 8, 9)]
    cases += [("balanced_softmax", {}, 0)]
    cases += [("logit_adjusted", {"tau": t}, 0) for t in (0.0, 1.0, 2.5)]
    cases += [("dice", {"alpha": a, "gamma": g}, 0) for a in (0.0, 0.5, 1.0, 2.0)
              for g in (0.0, 1.0)]
    return cases


CASES = _cases()


def _case_id(case: tuple[str, dict[str, Any], int]) -> str:
    name, params, epoch = case
    return "-".join([name, *(f"{k}={v}" for k, v in params.items()), f"e{epoch}"])


def _inputs(seed: int, dtype: torch.dtype, cosine: bool = False, n_rows: int = N):
    gen = torch.Generator().manual_seed(seed)
    if cosine:
        z = torch.rand(n_rows, C, generator=gen, dtype=torch.float64) * 2 - 1
    else:
        z = torch.randn(n_rows, C, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, C, (n_rows,), generator=gen)
    h = torch.randn(n_rows, D, generator=gen, dtype=torch.float64)
    return z.to(dtype), y, h.to(dtype)


def test_cases_cover_every_catalogue_loss() -> None:
    assert {name for name, _, _ in CASES} == set(LOSSES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference(case: tuple[str, dict[str, Any], int], profile: str) -> None:
    name, params, epoch = case
    counts = PROFILES[profile]
    n = torch.tensor(counts, dtype=torch.float64)
    z, y, h = _inputs(zlib.crc32(f"{name}/{profile}".encode()) % 1000, torch.float64,
                      cosine=LOSSES[name].head == "cosine")
    expected = reference(name, params, z, y, n, h, epoch)
    loss = build_loss(name, counts, total_epochs=TOTAL_EPOCHS, **params)
    got64 = loss(z, y, features=h, epoch=epoch)
    assert got64.dtype == torch.float64
    # class weights and margins are float32 buffers, hence 1e-6 and not 1e-12 in float64
    torch.testing.assert_close(got64, expected, rtol=1e-6, atol=1e-9)
    got32 = loss(z.float(), y, features=h.float(), epoch=epoch)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES[::2] + [CASES[-1]], ids=_case_id)
def test_gradients_match_reference(case: tuple[str, dict[str, Any], int]) -> None:
    name, params, epoch = case
    counts = PROFILES["ratio100"]
    n = torch.tensor(counts, dtype=torch.float64)
    z, y, h = _inputs(7, torch.float64, cosine=LOSSES[name].head == "cosine")
    z.requires_grad_()
    h.requires_grad_()
    loss = build_loss(name, counts, total_epochs=TOTAL_EPOCHS, **params)
    got = torch.autograd.grad(loss(z, y, features=h, epoch=epoch), [z, h], allow_unused=True)
    want = torch.autograd.grad(reference(name, params, z, y, n, h, epoch), [z, h],
                               allow_unused=True)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None or bool((g == 0).all())
        else:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-9)


# Past every switch (epoch 9 > 5, 8), plus the warm-up branch once; the reference-gradient test
# above covers the other cases.
GRADCHECK_CASES = [c for c in CASES if c[2] in (0, 9)] + [
    ("influence_balanced", {"alpha": 1000.0, "epsilon": 1e-3, "warmup": 0.5,
                            "weights": "inverse_frequency"}, 4)]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=_case_id)
def test_gradcheck(case: tuple[str, dict[str, Any], int]) -> None:
    name, params, epoch = case
    z, y, h = _inputs(3, torch.float64, cosine=LOSSES[name].head == "cosine", n_rows=6)
    loss = build_loss(name, PROFILES["ratio10"], total_epochs=TOTAL_EPOCHS, **params)
    if LOSSES[name].uses_features:
        assert torch.autograd.gradcheck(lambda a, b: loss(a, y, features=b, epoch=epoch),
                                        (z.requires_grad_(), h.requires_grad_()),
                                        fast_mode=True)
    else:
        assert torch.autograd.gradcheck(lambda a: loss(a, y, epoch=epoch),
                                        (z.requires_grad_(),), fast_mode=True)


def test_ghm_momentum_matches_reference_over_batches() -> None:
    counts = PROFILES["ratio100"]
    for bins, mmt in ((10, 0.75), (30, 0.5), (3, 0.9)):
        loss = build_loss("ghm", counts, bins=bins, momentum=mmt)
        acc = [0.0] * bins
        for step in range(4):
            z, y, _ = _inputs(100 + step, torch.float64)
            torch.testing.assert_close(loss(z, y), _ghm_reference(z, y, bins, mmt, acc),
                                       rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(loss.acc_sum.double(), torch.tensor(acc, dtype=torch.float64),
                                   rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- state between calls

STATE_CASES = [c for c in CASES if c[0] != "ghm"] + [("ghm", {"bins": 10, "momentum": 0.0}, 0)]


@pytest.mark.parametrize("case", STATE_CASES[::3] + [STATE_CASES[-1]], ids=_case_id)
def test_second_call_equals_fresh_object(case: tuple[str, dict[str, Any], int]) -> None:
    """A loss called on two batches gives what two fresh objects give (the second batch has
    other targets, so a forward that caches per-batch tensors fails)."""
    name, params, epoch = case
    counts = PROFILES["ratio100"]
    z1, y1, h1 = _inputs(11, torch.float32, cosine=LOSSES[name].head == "cosine")
    z2, y2, h2 = _inputs(12, torch.float32, cosine=LOSSES[name].head == "cosine", n_rows=N // 2)
    y2 = (y2 + 1) % C
    used = build_loss(name, counts, total_epochs=TOTAL_EPOCHS, **params)
    first = used(z1, y1, features=h1, epoch=epoch)
    second = used(z2.requires_grad_(), y2, features=h2, epoch=epoch)
    (g_used,) = torch.autograd.grad(second, z2)
    fresh_1 = build_loss(name, counts, total_epochs=TOTAL_EPOCHS, **params)
    fresh_2 = build_loss(name, counts, total_epochs=TOTAL_EPOCHS, **params)
    again = fresh_2(z2, y2, features=h2, epoch=epoch)
    (g_fresh,) = torch.autograd.grad(again, z2)
    assert torch.equal(first, fresh_1(z1, y1, features=h1, epoch=epoch))
    assert torch.equal(second, again)
    assert torch.equal(g_used, g_fresh)


def test_ghm_momentum_state_belongs_to_one_object() -> None:
    counts = PROFILES["ratio10"]
    a = build_loss("ghm", counts, momentum=0.75)
    b = build_loss("ghm", counts, momentum=0.75)
    fresh = build_loss("ghm", counts, momentum=0.75)
    assert a.acc_sum.data_ptr() != b.acc_sum.data_ptr()
    z1, y1, _ = _inputs(21, torch.float32)
    z2, y2, _ = _inputs(22, torch.float32)
    first_a = a(z1, y1)
    second_a = a(z2, y2)
    assert bool((a.acc_sum > 0).any())
    assert bool((b.acc_sum == 0).all())  # a's calls did not touch b
    assert torch.equal(b(z2, y2), fresh(z2, y2))  # b starts from zero like a new object
    assert not torch.equal(second_a, b(z2, y2))  # and a's second call used a's history
    assert torch.isfinite(first_a)


# ---------------------------------------------------------------- registry, catalogue, build_loss

def test_registry_and_catalogue_match() -> None:
    assert set(REGISTRY) - set(LOSSES) == set(), "registered losses missing from the catalogue"
    assert set(LOSSES) - set(REGISTRY) == set(), "catalogue losses without an implementation"


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_constructor_matches_catalogue(name: str) -> None:
    entry, cls = LOSSES[name], REGISTRY[name]
    sig = inspect.signature(cls.__init__)
    keyword = {k: v for k, v in sig.parameters.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(keyword) == {p.name for p in entry.params} | {"total_epochs", "device"}
    for p in entry.params:
        assert keyword[p.name].default == p.default, f"{name}.{p.name} default"
    assert cls.uses_features == entry.uses_features
    loss = build_loss(name, PROFILES["ratio10"], total_epochs=200)
    if entry.switch_param is not None:
        assert loss.switch_epoch == switch_epoch(entry.param(entry.switch_param).default, 200)


@pytest.mark.parametrize(("fraction", "total", "expected"), [
    (0.5, 200, 100), (0.8, 200, 160), (0.7, 10, 7), (0.3, 10, 3), (0.55, 10, 6),
    (0.07, 100, 7), (0.55, 100, 55), (0.28, 100, 28),  # products a hair above an integer
    (0.0, 10, 0), (1.0, 10, 10), (0.5, 1, 1),
])
def test_switch_epoch_rounding(fraction: float, total: int, expected: int) -> None:
    assert switch_epoch(fraction, total) == expected


def test_schedules_switch_at_switch_epoch() -> None:
    counts = PROFILES["ratio100"]
    z, y, h = _inputs(5, torch.float32)
    ce = build_loss("ce", counts)(z, y)
    for name, param in (("influence_balanced", "warmup"), ("ib_focal", "warmup"),
                        ("ldam_drw", "drw_epoch")):
        loss = build_loss(name, counts, total_epochs=10, **{param: 0.7})
        assert loss.switch_epoch == 7
        before = loss(z, y, features=h, epoch=6)
        after = loss(z, y, features=h, epoch=7)
        assert not torch.allclose(before, after)
        if name != "ldam_drw":
            assert torch.equal(before, ce)


def test_influence_balanced_needs_features_after_warmup() -> None:
    loss = build_loss("influence_balanced", PROFILES["ratio10"], total_epochs=10)
    z, y, _ = _inputs(1, torch.float32)
    loss(z, y, epoch=0)
    with pytest.raises(ValueError, match="features"):
        loss(z, y, epoch=5)


def test_build_loss_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown loss 'foca'.*focal"):
        build_loss("foca", [10, 1])


def test_build_loss_unknown_parameter() -> None:
    with pytest.raises(ValueError, match=r"'focal'.*\['gama'\]"):
        build_loss("focal", [10, 1], gama=2.0)


@pytest.mark.parametrize(("name", "params", "pattern"), [
    ("focal", {"gamma": -1.0}, r"'gamma' must lie in \[0.0, 10.0\], got -1.0"),
    ("class_balanced", {"beta": 1.0}, r"'beta' must lie in \[0.0, 0.99999\], got 1.0"),
    ("ghm", {"bins": 2.5}, r"'bins' must be an integer"),
    ("ghm", {"momentum": float("nan")}, r"'momentum' must lie in"),
    ("class_balanced", {"base": "softmx"}, r"'base' must be one of \['softmax', 'sigmoid'"),
    ("influence_balanced", {"alpha": "big"}, r"'alpha' must be a number"),
])
def test_build_loss_out_of_range(name: str, params: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build_loss(name, [10, 1], **params)


def test_bad_inputs_are_named() -> None:
    loss = build_loss("focal", [10, 5, 1])
    with pytest.raises(ValueError, match=r"logits must be N x 3"):
        loss(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have shape \(4,\)"):
        loss(torch.zeros(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="at least one training example"):
        build_loss("ce", [10, 0, 1])
