"""What can be searched: losses with their parameters, data sets, models, samplers, pruners.

The catalogue lives here, not in ``worker``, so the API can validate a spec and list the
choices without importing torch. ``worker.losses`` implements every loss named here, and a
test checks both directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

ParamKind = Literal["float", "int", "categorical"]


def switch_epoch(fraction: float, total_epochs: int) -> int:
    """The first epoch (0-based) of a schedule's second phase: ``ceil(fraction · total_epochs)``.

    The product is rounded to 6 decimals first, so ``0.07 · 100`` (7.000000000000001 in
    binary) switches at epoch 7, not 8. Every loss with a schedule, and anything that waits for one
    (pruning), must use this one function.
    """
    return math.ceil(round(float(fraction) * int(total_epochs), 6))


@dataclass(frozen=True)
class ParamSpec:
    """One loss parameter: its valid range, its published default and a default search range."""

    name: str
    kind: ParamKind
    default: Any
    description: str
    low: float | None = None  # valid range, inclusive
    high: float | None = None
    choices: tuple[Any, ...] = ()
    search: dict[str, Any] = field(default_factory=dict)  # default distribution for presets

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not valid for this parameter, or None when it is."""
        if self.kind == "categorical":
            if value not in self.choices:
                return f"must be one of {list(self.choices)}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"must be a number, got {value!r}"
        if self.kind == "int" and int(value) != value:
            return f"must be an integer, got {value!r}"
        if not (self.low <= value <= self.high):  # also rejects NaN
            return f"must lie in [{self.low}, {self.high}], got {value!r}"
        return None


@dataclass(frozen=True)
class LossEntry:
    name: str
    description: str
    reference: str
    reduction: str
    params: tuple[ParamSpec, ...] = ()
    head: Literal["linear", "cosine"] = "linear"
    uses_features: bool = False
    # Name of the parameter (a fraction of the epochs) at which the loss switches behaviour;
    # pruning waits for it (see worker.trial_loop).
    switch_param: str | None = None

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}


def _float(name: str, default: float, low: float, high: float, description: str,
           search: dict[str, Any] | None = None) -> ParamSpec:
    return ParamSpec(name, "float", default, description, low=low, high=high,
                     search=search or {"low": low, "high": high})


def _int(name: str, default: int, low: int, high: int, description: str,
         search: dict[str, Any] | None = None) -> ParamSpec:
    return ParamSpec(name, "int", default, description, low=low, high=high,
                     search=search or {"low": low, "high": high})


def _choice(name: str, default: Any, choices: tuple[Any, ...], description: str) -> ParamSpec:
    return ParamSpec(name, "categorical", default, description, choices=choices,
                     search={"choices": list(choices)})


_GAMMA = _float("gamma", 2.0, 0.0, 10.0, "focusing exponent on (1 - p_t)",
                {"low": 0.0, "high": 5.0})
_WARMUP = _float("warmup", 0.5, 0.0, 1.0,
                 "fraction of the epochs trained with plain CE before the loss switches on",
                 {"low": 0.3, "high": 0.7})
_IB_ALPHA = _float("alpha", 1000.0, 1.0, 1.0e5, "influence scale (the reference script uses 1000)",
                   {"low": 10.0, "high": 10000.0, "log": True})
_IB_EPS = _float("epsilon", 1.0e-3, 1.0e-8, 1.0, "keeps the influence denominator positive",
                 {"low": 1.0e-4, "high": 1.0e-2, "log": True})
_IB_WEIGHTS = _choice("weights", "inverse_frequency", ("none", "inverse_frequency", "class_balanced"),
                      "class weights: none, 1/n_c, or class-balanced with beta 0.9999 (IB+CB)")
_MAX_M = _float("max_m", 0.5, 0.01, 2.0, "largest class margin (of the rarest class)",
                {"low": 0.1, "high": 1.0})
_SCALE = _float("s", 30.0, 1.0, 100.0, "logit scale of the cosine head", {"low": 10.0, "high": 50.0})

LOSSES: dict[str, LossEntry] = {
    e.name: e
    for e in [
        LossEntry("ce", "cross-entropy -log p_t", "-", "mean over the batch"),
        LossEntry(
            "weighted_ce", "class-weighted cross-entropy, w_c ∝ n_c^-power, Σ w_c = C",
            "per_cls_weights of the LDAM-DRW code", "sum of w_y · CE / Σ w_y (PyTorch weight=)",
            (_float("power", 1.0, 0.0, 2.0, "1.0 is inverse frequency, 0 is plain CE"),),
        ),
        LossEntry(
            "focal", "softmax focal loss -α_y (1 - p_t)^γ log p_t", "Lin et al. ICCV 2017",
            "mean over the batch",
            (_GAMMA, _choice("alpha", "none", ("none", "inverse_frequency"),
                             "per-class α: none, or 1/n_c normalised to Σ α_c = C")),
        ),
        LossEntry(
            "sigmoid_focal", "per-class sigmoid focal loss on one-hot targets",
            "torchvision.ops.sigmoid_focal_loss", "sum over classes, mean over the batch",
            (_float("alpha", 0.25, 0.0, 1.0, "weight of positives (1 - α on negatives)"), _GAMMA),
        ),
        LossEntry(
            "class_balanced", "w_y · L_base with w_c = (1-β)/(1-β^n_c), Σ w_c = C",
            "Cui et al. CVPR 2019", "see the base: softmax / sigmoid / focal divide by N",
            (
                _float("beta", 0.9999, 0.0, 0.99999, "effective-number β",
                       {"choices": [0.9, 0.99, 0.999, 0.9999]}),
                _choice("base", "focal", ("softmax", "sigmoid", "focal"), "base loss"),
                _float("gamma", 1.0, 0.0, 10.0, "focal γ (focal base only)", {"low": 0.0, "high": 3.0}),
            ),
        ),
        LossEntry(
            "influence_balanced", "CE, then CE · w_y · α / (‖p - y‖₁ ‖h‖₁ + ε) after warm-up",
            "Park et al. ICCV 2021", "mean over the batch",
            (_IB_ALPHA, _IB_EPS, _WARMUP, _IB_WEIGHTS),
            uses_features=True, switch_param="warmup",
        ),
        LossEntry(
            "ib_focal", "influence-balanced with the focal term (1 - p_t)^γ on CE",
            "Park et al. ICCV 2021", "mean over the batch",
            (_IB_ALPHA, _IB_EPS, _WARMUP, _IB_WEIGHTS,
             _float("gamma", 1.0, 0.0, 10.0, "focal γ", {"low": 0.0, "high": 3.0})),
            uses_features=True, switch_param="warmup",
        ),
        LossEntry(
            "ghm", "gradient harmonising BCE: weights ∝ 1 / density of |σ(z) - y|",
            "Li et al. AAAI 2019", "Σ w·BCE / (N·C)",
            (_int("bins", 10, 1, 100, "number of gradient-norm bins", {"low": 5, "high": 30}),
             _float("momentum", 0.0, 0.0, 0.99, "smoothing of the bin counts across batches",
                    {"low": 0.0, "high": 0.9})),
        ),
        LossEntry(
            "ldam", "CE on s·(cos - m_y·onehot), m_c ∝ n_c^-1/4", "Cao et al. NeurIPS 2019",
            "mean over the batch", (_MAX_M, _SCALE), head="cosine",
        ),
        LossEntry(
            "ldam_drw", "LDAM with class-balanced weights from the DRW epoch on",
            "Cao et al. NeurIPS 2019", "Σ w_y · L / Σ w_y (PyTorch weight=)",
            (_MAX_M, _SCALE,
             _float("drw_epoch", 0.8, 0.0, 1.0, "fraction of the epochs before re-weighting",
                    {"low": 0.6, "high": 0.9}),
             _float("beta", 0.9999, 0.0, 0.99999, "class-balanced β of the deferred weights",
                    {"choices": [0.99, 0.999, 0.9999]})),
            head="cosine", switch_param="drw_epoch",
        ),
        LossEntry("balanced_softmax", "CE on z + log n_c", "Ren et al. NeurIPS 2020",
                  "mean over the batch"),
        LossEntry(
            "logit_adjusted", "CE on z + τ log π_c", "Menon et al. ICLR 2021", "mean over the batch",
            (_float("tau", 1.0, 0.0, 5.0, "adjustment strength", {"low": 0.0, "high": 3.0}),),
        ),
        LossEntry(
            "dice", "self-adjusting dice 1 - (2(1-p)^α p + γ) / ((1-p)^α p + 1 + γ)",
            "Li et al. ACL 2020", "mean over the batch",
            (_float("alpha", 1.0, 0.0, 5.0, "self-adjusting exponent"),
             _float("gamma", 1.0, 0.0, 10.0, "smoothing", {"low": 0.0, "high": 2.0})),
        ),
    ]
}


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    description: str
    shape: tuple[int, ...] | None  # None: decided by the file (npz)
    num_classes: int | None


DATASETS: dict[str, DatasetEntry] = {
    e.name: e
    for e in [
        DatasetEntry("synthetic-lt", "generated Gaussian clusters in 32 dimensions", (32,), None),
        DatasetEntry("digits-lt", "scikit-learn's bundled 8x8 digits, made long-tailed", (1, 8, 8), 10),
        DatasetEntry("fashion-mnist-lt", "Fashion-MNIST made long-tailed", (1, 28, 28), 10),
        DatasetEntry("cifar10-lt", "CIFAR-10 (torchvision files in a data dir)", (3, 32, 32), 10),
        DatasetEntry("cifar100-lt", "CIFAR-100 (torchvision files in a data dir)", (3, 32, 32), 100),
        DatasetEntry("npz", "a user .npz file (x, y, optional x_test, y_test) under the data root",
                     None, None),
    ]
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    needs_image: bool


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in [
        ModelEntry("mlp", "two hidden layers; any input, flattened", False),
        ModelEntry("small-cnn", "three conv blocks, global pooling", True),
        ModelEntry("resnet32", "the CIFAR ResNet-32 of the long-tail papers (0.46 M parameters)", True),
        ModelEntry("resnet18", "torchvision's ResNet-18 adapted to small images", True),
    ]
}

SAMPLERS = ("tpe", "random", "cmaes", "grid", "qmc")
PRUNERS = ("none", "median", "hyperband", "successive_halving")
METRICS = (
    "val_balanced_accuracy", "val_accuracy", "val_macro_f1",
    "val_many_shot_accuracy", "val_medium_shot_accuracy", "val_few_shot_accuracy",
)
