"""The translation of a spec into Optuna suggestions, baselines, samplers and pruners."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import (
    LOSSES,
    baseline_params,
    first_prunable_epoch,
    make_pruner,
    make_sampler,
    parse_spec,
    suggest,
)
from search_spaces.optuna_space import TrialParams
from tests.conftest import tiny_spec

SPACE = {
    "loss": {
        "ce": {},
        "focal": {"gamma": {"low": 0.0, "high": 5.0}, "alpha": {"choices": ["none", "inverse_frequency"]}},
        "ghm": {"bins": {"low": 5, "high": 30}, "momentum": 0.5},
    },
    "lr": {"low": 0.01, "high": 0.3, "log": True},
}


def run(spec, n: int) -> optuna.Study:
    study = optuna.create_study(sampler=make_sampler(spec), direction="maximize")
    for _ in range(n):
        trial = study.ask()
        suggest(trial, spec)
        study.tell(trial, 0.5)
    return study


def test_loss_parameters_are_conditional_on_the_loss() -> None:
    spec = parse_spec(tiny_spec(search_space=SPACE, sampler={"name": "random", "seed": 1}))
    study = run(spec, 40)
    for t in study.trials:
        loss = t.params["loss"]
        own = {k for k in t.params if "." in k}
        assert all(k.startswith(f"{loss}.") for k in own)
        if loss == "ghm":
            assert own == {"ghm.bins"} and isinstance(t.params["ghm.bins"], int)
            assert 5 <= t.params["ghm.bins"] <= 30
        assert 0.01 <= t.params["lr"] <= 0.3
    assert {t.params["loss"] for t in study.trials} == {"ce", "focal", "ghm"}


def test_suggest_fills_defaults_and_fixed_values() -> None:
    spec = parse_spec(tiny_spec(search_space=SPACE))
    study = optuna.create_study()
    study.enqueue_trial({"loss": "ghm", "ghm.bins": 12, "lr": 0.1})
    params = suggest(study.ask(), spec)
    assert params == TrialParams("ghm", {"bins": 12, "momentum": 0.5}, 0.1, spec.training.weight_decay)


def test_baselines_are_the_published_defaults() -> None:
    spec = parse_spec(tiny_spec(search_space=SPACE, baselines=True))
    base = {b["loss"]: b for b in baseline_params(spec)}
    assert base["ce"] == {"loss": "ce", "lr": spec.training.lr}
    assert base["focal"]["focal.gamma"] == LOSSES["focal"].param("gamma").default == 2.0
    assert base["focal"]["focal.alpha"] == "none"
    assert base["ghm"]["ghm.bins"] == LOSSES["ghm"].param("bins").default
    assert "ghm.momentum" not in base["ghm"]  # fixed in the spec, not searched


def test_baseline_clamps_a_default_outside_the_searched_range() -> None:
    space = {"loss": {"focal": {"gamma": {"low": 3.0, "high": 5.0}}}}
    spec = parse_spec(tiny_spec(search_space=space, baselines=True))
    assert baseline_params(spec)[0]["focal.gamma"] == 3.0


def test_trial_seeded_sampler_repeats_per_trial_number_not_per_process() -> None:
    spec = parse_spec(tiny_spec(search_space=SPACE, sampler={"name": "tpe", "seed": 7}))
    first = [t.params for t in run(spec, 6).trials]
    again = [t.params for t in run(spec, 6).trials]
    assert first == again  # reproducible from the seed
    assert len({tuple(sorted(p.items())) for p in first}) == 6  # and not one point six times


@pytest.mark.parametrize("name", ["none", "median", "hyperband", "successive_halving"])
def test_every_pruner_builds(name: str) -> None:
    spec = parse_spec(tiny_spec(pruner={"name": name}))
    assert isinstance(make_pruner(spec), optuna.pruners.BasePruner)


@pytest.mark.parametrize("name", ["tpe", "random", "cmaes", "qmc"])
def test_every_sampler_suggests(name: str) -> None:
    spec = parse_spec(tiny_spec(search_space=SPACE, sampler={"name": name, "seed": 0}))
    assert len(run(spec, 3).trials) == 3


def test_grid_sampler_walks_the_grid() -> None:
    space = {"loss": {"ce": {}, "focal": {"gamma": {"choices": [1.0, 2.0]}}}}
    spec = parse_spec(tiny_spec(search_space=space, sampler={"name": "grid", "seed": 0}))
    study = run(spec, 3)  # the grid has 4 points; the sampler stops the study after the last
    for t in study.trials:
        assert t.params["loss"] in ("ce", "focal")
        if t.params["loss"] == "focal":
            assert t.params["focal.gamma"] in (1.0, 2.0)


def test_late_switching_losses_are_not_pruned_before_their_switch() -> None:
    spec = parse_spec(tiny_spec(epochs=20, pruner={"name": "median", "min_epochs": 1}))
    ce = TrialParams("ce", {}, 0.1, 0.0)
    ib = TrialParams("influence_balanced", {**LOSSES["influence_balanced"].defaults, "warmup": 0.5}, 0.1, 0.0)
    drw = TrialParams("ldam_drw", LOSSES["ldam_drw"].defaults, 0.1, 0.0)
    assert first_prunable_epoch(spec, ce) == 1
    assert first_prunable_epoch(spec, ib) == 10 + 2
    assert first_prunable_epoch(spec, drw) == 16 + 2
