"""The study spec: what is accepted, and that every rejection names the field and the reason."""

from __future__ import annotations

import copy
import math

import pytest
from pydantic import ValidationError

from search_spaces import LOSSES, load_spec, parse_spec, preset_names, read_preset
from search_spaces.spec import SearchSpace
from tests.conftest import REPO, tiny_spec


def errors_of(data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        parse_spec(data)
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in info.value.errors()]


def test_examples_load_and_agree() -> None:
    yaml_spec = load_spec(REPO / "search_spaces/examples/digits-lt.yaml")
    json_spec = load_spec(REPO / "search_spaces/examples/digits-lt.json")
    assert yaml_spec == json_spec
    assert set(yaml_spec.space.loss) == {"ce", "focal", "class_balanced", "logit_adjusted"}


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_a_valid_search_space(name: str) -> None:
    spec = parse_spec({**tiny_spec(), "search_space": name})
    assert spec.space == SearchSpace.model_validate(read_preset(name)["search_space"])


def test_all_losses_preset_covers_the_catalogue() -> None:
    assert set(parse_spec({**tiny_spec(), "search_space": "imbalance-losses"}).space.loss) == set(LOSSES)


@pytest.mark.parametrize(
    ("path", "value", "field", "needle"),
    [
        (("dataset", "name"), "imagenet-lt", "dataset.name", "valid: cifar10-lt"),
        (("model", "name"), "vit", "model.name", "valid: mlp"),
        (("sampler", "name"), "bayes", "sampler.name", "valid: cmaes"),
        (("pruner", "name"), "early", "pruner.name", "valid: hyperband"),
        (("objective", "metric"), "loss", "objective.metric", "valid: val_accuracy"),
        (("search_space",), "no-such-preset", "search_space", "valid: class-balanced"),
        (("search_space", "loss"), {"hinge": {}}, "search_space.loss", "unknown loss 'hinge'"),
        (("search_space", "loss"), {"focal": {"beta": 1}}, "search_space.loss",
         "loss 'focal' has no parameter 'beta'; valid: gamma"),
        (("search_space", "loss"), {"focal": {"gamma": {"low": -1, "high": 2}}}, "search_space.loss",
         "parameter 'gamma' must lie in [0.0, 10.0]"),
        (("search_space", "loss"), {"ghm": {"bins": 2.5}}, "search_space.loss", "must be an integer"),
        (("search_space", "lr"), {"low": 0.3, "high": 0.1}, "search_space.lr", "low (0.3) is above high"),
        (("search_space", "lr"), {"low": 0.0, "high": 0.1, "log": True}, "search_space.lr",
         "a log range needs low > 0"),
        (("budget", "n_trials"), 0, "budget.n_trials", "greater than or equal to 1"),
        (("name",), "../etc/passwd", "name", "letters, digits"),
        (("name",), "x'; DROP TABLE studies; --", "name", "letters, digits"),
        (("dataset", "file"), "../secret.npz", "dataset.file", "plain file name"),
    ],
)
def test_rejections_name_the_field_and_the_reason(path, value, field, needle) -> None:
    data = copy.deepcopy(tiny_spec())
    target = data
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value
    errs = errors_of(data)
    assert any(loc.startswith(field) and needle in msg for loc, msg in errs), errs


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(bad: float) -> None:
    data = tiny_spec()
    data["training"]["lr"] = bad
    assert any(loc == "training.lr" for loc, _ in errors_of(data))


def test_unknown_fields_are_refused() -> None:
    assert any("extra" in msg.lower() for _, msg in errors_of({**tiny_spec(), "colour": "red"}))


def test_unicode_names_are_accepted() -> None:
    assert parse_spec(tiny_spec(name="長尾 étude (v2)")).name == "長尾 étude (v2)"


@pytest.mark.parametrize("name", [
    "études-不平衡-🙂", "Ελληνικά", "تجربة", "e\u0301tude", "हिन्दी", "👩\u200d🔬 👍🏽", "_private", "a..b",
    "x" * 120,
])
def test_names_allow_letters_marks_and_emoji_of_any_script_unchanged(name: str) -> None:
    assert parse_spec(tiny_spec(name=name)).name == name


@pytest.mark.parametrize(("name", "needle"), [
    ("a/b", "U+002F"), ("a\\b", "U+005C"), ("..", "must start with"), ("a'b", "U+0027"),
    ("a;b", "U+003B"), ("a\x00b", "U+0000"), ("a\nb", "U+000A"), ("a\u202eb", "U+202E"),
    (" a", "must start with"), ("a ", "end with whitespace"), ("\u0301a", "must start with"),
    ("x" * 121, "at most 120 characters"),
])
def test_names_refuse_separators_quotes_controls_and_edge_whitespace(name: str, needle: str) -> None:
    assert any(loc == "name" and needle in msg for loc, msg in errors_of(tiny_spec(name=name)))


def test_the_name_rule_is_in_the_schema() -> None:
    from search_spaces.spec import NAME_RULE, StudySpec

    assert StudySpec.model_json_schema()["properties"]["name"]["description"] == NAME_RULE


@pytest.mark.parametrize(("path", "field"), [
    (("budget", "n_trials"), "budget.n_trials"), (("training", "lr"), "training.lr"),
    (("dataset", "imbalance_ratio"), "dataset.imbalance_ratio"),
])
def test_booleans_are_not_numbers(path: tuple[str, str], field: str) -> None:
    data = tiny_spec()
    data[path[0]][path[1]] = True
    assert any(loc == field and "must be a number" in msg for loc, msg in errors_of(data))


def test_errors_name_the_kind_of_searched_value() -> None:
    data = tiny_spec()
    data["search_space"]["lr"] = {"low": math.nan, "high": 0.1}
    assert errors_of(data) == [("search_space.lr.range.low", "Input should be a finite number")]
    data["search_space"]["lr"] = math.inf
    assert errors_of(data) == [("search_space.lr.value", "Value error, must be a finite number, got inf")]


def test_grid_sampler_needs_choices() -> None:
    data = tiny_spec(sampler={"name": "grid"})
    assert any("grid sampler needs 'choices'" in msg for _, msg in errors_of(data))
    data["search_space"] = {"loss": {"ce": {}, "focal": {"gamma": {"choices": [0.5, 2.0]}}}}
    assert parse_spec(data).sampler.name == "grid"


def test_baselines_must_fit_the_budget() -> None:
    data = tiny_spec(n_trials=1, baselines=True)
    assert any("baseline" in msg for _, msg in errors_of(data))


def test_models_that_need_images_refuse_vector_data() -> None:
    data = tiny_spec(model={"name": "small-cnn"})
    assert any("needs images" in msg for _, msg in errors_of(data))
    data["dataset"] = {"name": "digits-lt"}
    assert parse_spec(data).model.name == "small-cnn"
