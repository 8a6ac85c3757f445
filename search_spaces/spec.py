"""The study spec: what a team submits, validated field by field.

A spec arrives as JSON (HTTP) or YAML (CLI); ``load_spec`` reads either. Every error names the
field and the reason, and unknown names list the valid ones. A validated spec is
self-contained: a preset name is resolved to its search space, so a worker needs nothing but
the spec stored in the study.
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from search_spaces.catalogue import DATASETS, LOSSES, METRICS, MODELS, PRUNERS, SAMPLERS

FILE_PATTERN = re.compile(r"^[\w\-][\w.\-]*\.npz$")

NAME_MAX_LENGTH = 120
NAME_SEPARATORS = frozenset(" .:()+-_")
# Emoji are symbols ("So"), but a few emoji sequences also need the zero-width joiner
# (U+200D, a format character) and the skin-tone modifiers (U+1F3FB-U+1F3FF, "Sk").
_EMOJI_PARTS = frozenset(["\u200d", *map(chr, range(0x1F3FB, 0x1F400))])
NAME_RULE = (
    f"1 to {NAME_MAX_LENGTH} characters: letters, digits and combining marks of any script, emoji "
    "and other pictographic symbols, and the separators space . : ( ) + - _ ; it starts with a "
    "letter, digit, symbol or _ and does not end with a space. No path separators (/ \\), "
    "quotes, semicolons, control or invisible formatting characters. Stored and returned exactly "
    "as given (no Unicode normalisation)."
)


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid study name, or None when it is (see ``NAME_RULE``).

    Study names are shown in the dashboard, logs and CSV file names, so besides letters of any
    script they allow only characters that cannot be read as paths, quoting, SQL or terminal
    control.
    """
    if not name:
        return "must not be empty"
    first = unicodedata.category(name[0])
    if not (first[0] in "LN" or first == "So" or name[0] == "_"):
        return f"must start with a letter, digit, symbol or _, not {name[0]!r}"
    if name[-1].isspace():
        return "must not end with whitespace"
    for position, char in enumerate(name):
        category = unicodedata.category(char)
        if category[0] in "LMN" or category == "So" or char in NAME_SEPARATORS or char in _EMOJI_PARTS:
            continue
        return f"character {char!r} (U+{ord(char):04X}) at position {position} is not allowed"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse ``true``/``false`` where a number is expected (pydantic would read them as 1/0)."""
        if isinstance(value, bool) and info.field_name is not None:
            members = _type_members(cls.model_fields[info.field_name].annotation)
            if bool not in members and members & {int, float}:
                raise ValueError(f"must be a number, got {value!r}")
        return value


def _type_members(annotation: Any) -> set[Any]:
    """The plain types of an annotation: ``int | None`` -> {int, NoneType}; Annotated unwrapped."""
    if typing.get_origin(annotation) is Annotated:
        return _type_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_type_members(a) for a in typing.get_args(annotation)))
    return {annotation}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(str(value))} characters)"


def _known(kind: str, value: str, valid: Any) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {_short(value)}; valid: {', '.join(sorted(valid))}")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value!r}")
    return value


# A fixed value or one of a Distribution's choices: one error for NaN or infinity, not one
# per member of the union.
Scalar = Annotated[float | int | str | bool, BeforeValidator(_finite)]


class Distribution(_Strict):
    """A searched value: a numeric range (``low``/``high``, optional ``log``/``step``) or ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list[Scalar] | None = Field(default=None, min_length=1, max_length=100)

    @model_validator(mode="after")
    def _shape(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs both low and high (or give choices)")
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self

    def values_to_check(self) -> list[Any]:
        return list(self.choices) if self.choices is not None else [self.low, self.high]


def _searchable_kind(value: Any) -> str:
    return "value" if isinstance(value, float | int | str | bool) else "range"


# A fixed value or a Distribution. The discriminator sends a mapping to Distribution and a
# scalar to the scalar types, so an error names the one that applies ("range" or "value")
# instead of one error per member of the union.
Searchable = Annotated[
    Annotated[Distribution, Tag("range")]
    | Annotated[Scalar, Tag("value")],
    Discriminator(_searchable_kind),
]


class SearchSpace(_Strict):
    """Loss type (a categorical over the keys of ``loss``) with each loss's parameters
    conditional on it, plus optional optimiser settings. A parameter left out of a loss's
    mapping stays at its published default."""

    loss: dict[str, dict[str, Searchable]] = Field(min_length=1, max_length=len(LOSSES))
    lr: Searchable | None = None
    weight_decay: Searchable | None = None

    @field_validator("loss")
    @classmethod
    def _losses_exist(cls, value: dict[str, dict[str, Searchable]]) -> dict[str, dict[str, Searchable]]:
        for loss_name, params in value.items():
            _known("loss", loss_name, LOSSES)
            entry = LOSSES[loss_name]
            valid = [p.name for p in entry.params]
            for pname, dist in (params or {}).items():
                if pname not in valid:
                    hint = f"valid: {', '.join(valid)}" if valid else "it takes no parameters"
                    raise ValueError(f"loss {loss_name!r} has no parameter {pname!r}; {hint}")
                spec = entry.param(pname)
                values = dist.values_to_check() if isinstance(dist, Distribution) else [dist]
                for v in values:
                    reason = spec.check(v)
                    if reason:
                        raise ValueError(f"loss {loss_name!r} parameter {pname!r} {reason}")
        return value

    @field_validator("lr", "weight_decay")
    @classmethod
    def _positive(cls, value: Searchable | None, info: ValidationInfo) -> Searchable | None:
        values = value.values_to_check() if isinstance(value, Distribution) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v > 10:
                raise ValueError(f"{info.field_name} values must be numbers in [0, 10], got {v!r}")
        return value


class DatasetSpec(_Strict):
    name: str
    imbalance_ratio: float = Field(default=100.0, ge=1.0, le=10000.0)
    profile: Literal["exp", "step"] = "exp"
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    n_max: int | None = Field(default=None, ge=1, le=1_000_000, description="head-class size cap")
    val_per_class: int | None = Field(
        default=None, ge=1, le=10_000,
        description="balanced validation images per class, from training images the long-tailed "
        "subset left unused; default 100 (fashion-mnist, cifar), 20 digits, 50 synthetic")
    num_classes: int | None = Field(default=None, ge=2, le=1000, description="synthetic-lt only")
    file: str | None = Field(default=None, max_length=200, description="npz only: a file name")

    _name = field_validator("name")(lambda v: _known("data set", v, DATASETS))

    @field_validator("file")
    @classmethod
    def _plain_file_name(cls, value: str | None) -> str | None:
        if value is not None and not FILE_PATTERN.match(value):
            raise ValueError("must be a plain file name ending in .npz (no directories)")
        return value

    @model_validator(mode="after")
    def _file_for_npz(self) -> DatasetSpec:
        if (self.name == "npz") != (self.file is not None):
            raise ValueError("'file' is required for the npz data set and only for it")
        return self


class ModelSpec(_Strict):
    name: str

    _name = field_validator("name")(lambda v: _known("model", v, MODELS))


class TrainingSpec(_Strict):
    epochs: int = Field(default=30, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=1, le=65536)
    lr: float = Field(default=0.1, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=2e-4, ge=0, le=1)
    schedule: Literal["step", "cosine", "constant"] = "step"
    warmup_epochs: int = Field(default=5, ge=0, le=1000,
                               description="linear warm-up, at most a quarter of the epochs")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    augment: bool | None = Field(default=None, description="None: crop+flip where it fits the data")


class ObjectiveSpec(_Strict):
    metric: str = "val_balanced_accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"

    _metric = field_validator("metric")(lambda v: _known("metric", v, METRICS))


class SamplerSpec(_Strict):
    name: str = "tpe"
    seed: int | None = Field(default=0, ge=0, le=2**31 - 1)

    _name = field_validator("name")(lambda v: _known("sampler", v, SAMPLERS))


class PrunerSpec(_Strict):
    name: str = "median"
    min_epochs: int = Field(default=1, ge=0, le=1000, description="no pruning before this epoch")

    _name = field_validator("name")(lambda v: _known("pruner", v, PRUNERS))


class BudgetSpec(_Strict):
    n_trials: int = Field(default=20, ge=1, le=10000)


class StudySpec(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=NAME_MAX_LENGTH, description=NAME_RULE)]
    dataset: DatasetSpec
    model: ModelSpec
    training: TrainingSpec = TrainingSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    search_space: SearchSpace = Field(description="a preset name or an inline search space")
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    budget: BudgetSpec = BudgetSpec()
    baselines: bool = False

    @field_validator("name")
    @classmethod
    def _name_chars(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(f"{problem}; use letters, digits, marks, emoji and space . : ( ) + - _ "
                             "only, starting with a letter, digit or symbol")
        return value

    @field_validator("search_space", mode="before")
    @classmethod
    def _resolve_preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            from search_spaces.presets import load_preset

            return load_preset(value)
        return value

    @model_validator(mode="after")
    def _compatible(self) -> StudySpec:
        data = DATASETS[self.dataset.name]
        if MODELS[self.model.name].needs_image and data.shape is not None and len(data.shape) != 3:
            raise ValueError(f"model {self.model.name!r} needs images; {self.dataset.name!r} has none")
        if self.sampler.name == "grid":
            space = self.search_space
            dists = [d for params in space.loss.values() for d in params.values()]
            dists += [space.lr, space.weight_decay]
            if any(isinstance(d, Distribution) and d.choices is None for d in dists):
                raise ValueError("the grid sampler needs 'choices' for every searched value")
        if self.budget.n_trials < self.n_baselines():
            raise ValueError(
                f"budget.n_trials ({self.budget.n_trials}) is below the {self.n_baselines()} "
                "baseline trials; raise it or set baselines: false"
            )
        return self

    @property
    def space(self) -> SearchSpace:
        return self.search_space

    def n_baselines(self) -> int:
        return len(self.space.loss) if self.baselines else 0


def parse_spec(data: dict[str, Any]) -> StudySpec:
    return StudySpec.model_validate(data)


def load_spec(path: str | Path) -> StudySpec:
    """Read a spec from a ``.json``, ``.yaml`` or ``.yml`` file."""
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a spec is a mapping, got {type(data).__name__}")
    return parse_spec(data)
