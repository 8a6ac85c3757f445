"""Translate a spec into Optuna: suggestions, baseline trials, sampler and pruner.

Parameter names in a trial are ``loss`` (the categorical), ``<loss>.<param>`` for a loss's
own parameters (so each loss keeps its own distribution and the parameters are conditional
on the loss), and ``lr`` / ``weight_decay`` where they are searched.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from search_spaces.catalogue import LOSSES, switch_epoch
from search_spaces.spec import Distribution, Searchable, SearchSpace, StudySpec


@dataclass(frozen=True)
class TrialParams:
    """What one trial trains with, after suggestion."""

    loss: str
    loss_params: dict[str, Any]
    lr: float
    weight_decay: float
    extra: dict[str, Any] = field(default_factory=dict)


def _suggest(trial: optuna.Trial, name: str, value: Searchable, kind: str = "float") -> Any:
    if not isinstance(value, Distribution):
        return value
    if value.choices is not None:
        return trial.suggest_categorical(name, value.choices)
    if kind == "int":
        step = max(1, int(value.step or 1))
        return trial.suggest_int(name, math.ceil(value.low), math.floor(value.high),
                                 log=value.log, step=step)
    return trial.suggest_float(name, value.low, value.high, log=value.log, step=value.step)


def suggest(trial: optuna.Trial, spec: StudySpec) -> TrialParams:
    """Ask the trial for every value of the spec's search space."""
    space = spec.space
    loss = trial.suggest_categorical("loss", list(space.loss))
    entry = LOSSES[loss]
    params = entry.defaults
    for pname, value in (space.loss[loss] or {}).items():
        params[pname] = _suggest(trial, f"{loss}.{pname}", value, entry.param(pname).kind)
    lr = spec.training.lr if space.lr is None else float(_suggest(trial, "lr", space.lr))
    wd = (spec.training.weight_decay if space.weight_decay is None
          else float(_suggest(trial, "weight_decay", space.weight_decay)))
    return TrialParams(loss=loss, loss_params=params, lr=lr, weight_decay=wd)


def _baseline_value(dist: Searchable, default: Any) -> Any:
    if not isinstance(dist, Distribution):
        return dist
    if dist.choices is not None:
        return default if default in dist.choices else dist.choices[0]
    return min(max(default, dist.low), dist.high)


def baseline_params(spec: StudySpec) -> list[dict[str, Any]]:
    """Fixed parameters of one trial per searched loss at its published defaults."""
    space: SearchSpace = spec.space
    out = []
    for loss, dists in space.loss.items():
        entry = LOSSES[loss]
        params: dict[str, Any] = {"loss": loss}
        for pname, dist in (dists or {}).items():
            if isinstance(dist, Distribution):
                params[f"{loss}.{pname}"] = _baseline_value(dist, entry.param(pname).default)
        for key, default in (("lr", spec.training.lr), ("weight_decay", spec.training.weight_decay)):
            dist = getattr(space, key)
            if isinstance(dist, Distribution):
                params[key] = _baseline_value(dist, default)
        out.append(params)
    return out


def _grid_space(spec: StudySpec) -> dict[str, list[Any]]:
    space = spec.space
    grid: dict[str, list[Any]] = {"loss": list(space.loss)}
    for loss, dists in space.loss.items():
        for pname, dist in (dists or {}).items():
            if isinstance(dist, Distribution):
                grid[f"{loss}.{pname}"] = list(dist.choices or [])
    for key in ("lr", "weight_decay"):
        dist = getattr(space, key)
        if isinstance(dist, Distribution):
            grid[key] = list(dist.choices or [])
    return grid


def _seed_for(seed: int, number: int) -> int:
    digest = hashlib.sha256(f"{seed}:{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class TrialSeededSampler(BaseSampler):
    """Builds the spec's sampler anew for each trial, seeded from (spec seed, trial number).

    Workers are separate processes that each load the study per trial; a sampler seeded once
    with the spec's seed would hand every worker the same "random" start-up points. Seeding by
    trial number makes a trial's suggestion depend only on the seed, its number and the history.
    """

    def __init__(self, spec: StudySpec) -> None:
        self._spec = spec
        self._inner = build_sampler(spec, spec.sampler.seed)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        seed = self._spec.sampler.seed
        if seed is not None:
            self._inner = build_sampler(self._spec, _seed_for(seed, trial.number))
        self._inner.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self._inner.after_trial(study, trial, state, values)


def build_sampler(spec: StudySpec, seed: int | None) -> BaseSampler:
    name = spec.sampler.name
    if name == "tpe":
        # group=True lets multivariate TPE model each loss's conditional parameters.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)
    if name == "grid":
        return optuna.samplers.GridSampler(_grid_space(spec), seed=seed)
    raise ValueError(f"unknown sampler {name!r}")


def make_sampler(spec: StudySpec) -> BaseSampler:
    return TrialSeededSampler(spec)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    name, epochs = spec.pruner.name, spec.training.epochs
    warmup = spec.pruner.min_epochs
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, warmup), max_resource=epochs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup))
    raise ValueError(f"unknown pruner {name!r}")


def first_prunable_epoch(spec: StudySpec, params: TrialParams) -> int:
    """The first epoch (0-based) at which a trial of this loss may be pruned.

    A loss that switches behaviour part-way (influence-balanced at its warm-up, LDAM-DRW at its
    re-weighting epoch) is not judged before the switch has had a few epochs to act: the
    larger of 2 epochs and a tenth of the run. Before that its reports are recorded (and
    inform other trials' pruning) but it is never pruned.
    """
    epochs = spec.training.epochs
    first = spec.pruner.min_epochs
    switch = LOSSES[params.loss].switch_param
    if switch is not None:
        first = max(first, switch_epoch(params.loss_params[switch], epochs) + max(2, epochs // 10))
    return first
