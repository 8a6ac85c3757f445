"""The study language shared by the API and the workers: spec, catalogue, presets, Optuna
translation and the store. Nothing here imports torch or FastAPI."""

from search_spaces.catalogue import DATASETS, LOSSES, METRICS, MODELS, PRUNERS, SAMPLERS, LossEntry
from search_spaces.optuna_space import (
    TrialParams,
    baseline_params,
    first_prunable_epoch,
    make_pruner,
    make_sampler,
    suggest,
)
from search_spaces.presets import load_preset, preset_names, read_preset
from search_spaces.spec import StudySpec, load_spec, parse_spec
from search_spaces.store import (
    DEFAULT_URL,
    StoreUnavailable,
    StudyState,
    TrialCounts,
    make_storage,
    study_state,
    trial_counts,
)

__all__ = [
    "DATASETS", "DEFAULT_URL", "LOSSES", "METRICS", "MODELS", "PRUNERS", "SAMPLERS", "LossEntry",
    "StoreUnavailable", "StudySpec", "StudyState", "TrialCounts", "TrialParams", "baseline_params",
    "first_prunable_epoch", "load_preset", "load_spec", "make_pruner", "make_sampler",
    "make_storage", "parse_spec", "preset_names", "read_preset", "study_state", "suggest",
    "trial_counts",
]
