"""The study report: the best trial per loss, what tuning gained over each loss's published
defaults (the baseline trials), and parameter importance (Optuna's evaluator)."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from service.studies import StudyView, _clean


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def study_report(storage: RDBStorage, view: StudyView) -> dict[str, Any]:
    maximize = view.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = storage.get_all_trials(view.id, deepcopy=False, states=(TrialState.COMPLETE,))
    best: dict[str, FrozenTrial] = {}
    baseline: dict[str, FrozenTrial] = {}
    for t in trials:
        loss = t.params.get("loss")
        if loss is None or t.value is None:
            continue
        if loss not in best or _better(t.value, best[loss].value, maximize):
            best[loss] = t
        if t.user_attrs.get("baseline"):
            baseline[loss] = t
    per_loss = []
    for loss, t in sorted(best.items(), key=lambda kv: kv[1].value, reverse=maximize):
        b = baseline.get(loss)
        per_loss.append({
            "loss": loss,
            "best_trial": t.number,
            "best_value": _clean(t.value),
            "params": t.params,
            "test_balanced_accuracy": _clean(t.user_attrs.get("test_balanced_accuracy")),
            "baseline_trial": b.number if b else None,
            "baseline_value": _clean(b.value) if b else None,
            "gain_over_baseline": _clean(t.value - b.value) if b else None,
        })
    return {
        "study": view.id,
        "metric": view.spec.objective.metric,
        "direction": "maximize" if maximize else "minimize",
        "n_complete": len(trials),
        "best_per_loss": per_loss,
        "param_importances": _importances(storage, view),
    }


def _importances(storage: RDBStorage, view: StudyView) -> dict[str, float] | None:
    """Importance over the parameters every completed trial has (the loss type, and the
    optimiser settings when searched); None until there are enough trials."""
    if view.counts.complete < 4:
        return None
    study = optuna.load_study(study_name=view.name, storage=storage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return None
    return {k: round(float(v), 4) for k, v in imp.items()}
