"""The REST contract, run over SQLite and over PostgreSQL (the ``storage_url`` fixture)."""

from __future__ import annotations

import json

import optuna
import pytest
import sqlalchemy as sa

from search_spaces import make_storage
from tests.conftest import tiny_spec


def row_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one()
                    for t in ("studies", "trials", "study_user_attributes", "trial_system_attributes")}
    finally:
        engine.dispose()


@pytest.fixture
def client(storage_url, make_client):
    return make_client(storage_url)


def test_submit_answers_201_and_queues_every_trial(client, storage_url) -> None:
    r = client.post("/api/v1/studies", json=tiny_spec(n_trials=5, baselines=True))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["state"] == "queued" and body["n_trials"] == 5
    assert body["trials"] == {"waiting": 5, "running": 0, "complete": 0, "pruned": 0, "fail": 0}
    assert r.headers["location"] == f"/api/v1/studies/{body['id']}"
    assert body["links"]["dashboard"] == f"/dashboard/studies/{body['id']}"

    study = optuna.load_study(study_name="tiny", storage=make_storage(storage_url))
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 5
    baselines = [t for t in waiting if t.user_attrs.get("baseline")]
    assert sorted(t.system_attrs["fixed_params"]["loss"] for t in baselines) == ["ce", "weighted_ce"]


def test_get_list_and_trials(client) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=3)).json()["id"]
    detail = client.get(f"/api/v1/studies/{sid}").json()
    assert detail["name"] == "tiny" and detail["spec"]["budget"]["n_trials"] == 3
    assert detail["spec"]["search_space"]["loss"]["weighted_ce"]["power"]["high"] == 1.0
    assert [s["id"] for s in client.get("/api/v1/studies").json()] == [sid]
    trials = client.get(f"/api/v1/studies/{sid}/trials", params={"limit": 2}).json()
    assert trials["total"] == 3 and len(trials["items"]) == 2
    assert [t["number"] for t in trials["items"]] == [0, 1]
    assert trials["items"][0]["state"] == "waiting"
    page2 = client.get(f"/api/v1/studies/{sid}/trials", params={"offset": 2, "limit": 2}).json()
    assert [t["number"] for t in page2["items"]] == [2]
    assert client.get(f"/api/v1/studies/{sid}/trials", params={"state": "running"}).json()["total"] == 0
    assert client.get(f"/api/v1/studies/{sid}/best").status_code == 404


def test_results_show_up_with_metrics_best_csv_and_report(client, storage_url) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=3)).json()["id"]
    study = optuna.load_study(study_name="tiny", storage=make_storage(storage_url))
    for value in (0.4, 0.9):
        t = study.ask()
        t.suggest_categorical("loss", ["ce", "weighted_ce"])
        t.set_user_attr("val_balanced_accuracy", value)
        t.set_user_attr("test_per_class_accuracy", [value, 1.0])
        study.tell(t, value)
    detail = client.get(f"/api/v1/studies/{sid}").json()
    assert detail["state"] == "running"
    assert detail["best_trial"]["value"] == 0.9
    best = client.get(f"/api/v1/studies/{sid}/best").json()
    assert best["value"] == 0.9 and best["metrics"]["val_balanced_accuracy"] == 0.9
    assert best["per_class_accuracy"]["test"] == [0.9, 1.0]
    done = client.get(f"/api/v1/studies/{sid}/trials", params={"state": "complete"}).json()
    assert sorted(t["value"] for t in done["items"]) == [0.4, 0.9]
    csv_text = client.get(f"/api/v1/studies/{sid}/trials.csv").text
    assert csv_text.splitlines()[0].startswith("number,state,value,loss")
    assert len(csv_text.strip().splitlines()) == 1 + 3
    report = client.get(f"/api/v1/studies/{sid}/report").json()
    assert report["best_per_loss"][0]["best_value"] == 0.9


def test_cancel_ends_queued_trials_with_a_reason(client) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=3)).json()["id"]
    r = client.post(f"/api/v1/studies/{sid}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert r.json()["trials"]["fail"] == 3 and r.json()["trials"]["waiting"] == 0
    items = client.get(f"/api/v1/studies/{sid}/trials").json()["items"]
    assert {t["fail_reason"] for t in items} == {"study cancelled"}
    assert client.delete(f"/api/v1/studies/{sid}").status_code == 204
    assert client.get(f"/api/v1/studies/{sid}").status_code == 404


def test_a_queued_study_cannot_be_deleted(client) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec()).json()["id"]
    r = client.delete(f"/api/v1/studies/{sid}")
    assert r.status_code == 409 and "cancel it" in r.json()["detail"]


def test_unknown_study_is_404(client) -> None:
    for path in ("/api/v1/studies/999", "/api/v1/studies/999/trials", "/api/v1/studies/999/best"):
        r = client.get(path)
        assert r.status_code == 404 and "study 999 not found" in r.json()["detail"]
    assert client.post("/api/v1/studies/999/cancel").status_code == 404


@pytest.mark.parametrize(
    ("mutate", "field", "needle"),
    [
        (lambda s: s["search_space"]["loss"].update(hinge={}), ["body", "search_space", "loss"],
         "valid: balanced_softmax"),
        (lambda s: s["dataset"].update(name="imagenet"), ["body", "dataset", "name"], "valid: cifar10-lt"),
        (lambda s: s["model"].update(name="vit"), ["body", "model", "name"], "valid: mlp"),
        (lambda s: s.update(sampler={"name": "bayes"}), ["body", "sampler", "name"], "valid: cmaes"),
        (lambda s: s.update(pruner={"name": "early"}), ["body", "pruner", "name"], "valid: hyperband"),
        (lambda s: s["training"].update(epochs="many"), ["body", "training", "epochs"], "integer"),
    ],
)
def test_bad_specs_are_422_naming_field_and_reason_and_write_nothing(
        client, storage_url, mutate, field, needle) -> None:
    before = row_counts(storage_url)
    spec = tiny_spec()
    mutate(spec)
    r = client.post("/api/v1/studies", json=spec)
    assert r.status_code == 422
    assert any(e["loc"][:len(field)] == field and needle in e["msg"] for e in r.json()["detail"]), r.json()
    assert row_counts(storage_url) == before


def test_duplicate_name_is_409_and_keeps_the_first(client, storage_url) -> None:
    first = client.post("/api/v1/studies", json=tiny_spec(n_trials=2)).json()["id"]
    before = row_counts(storage_url)
    r = client.post("/api/v1/studies", json=tiny_spec(n_trials=7))
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert row_counts(storage_url) == before
    assert client.get(f"/api/v1/studies/{first}").json()["n_trials"] == 2


@pytest.mark.parametrize("where", ["while queueing the trials", "while writing the spec"])
def test_a_failure_midway_leaves_nothing_half_created(client, storage_url, monkeypatch,
                                                      where) -> None:
    from search_spaces import parse_spec
    from search_spaces.store import ATTR_SPEC
    from service import studies

    before = row_counts(storage_url)
    storage = client.app.state.storage

    def store_gone(*_args):
        raise RuntimeError("the store went away")

    if where == "while queueing the trials":  # after the trial rows, in the same transaction
        monkeypatch.setattr(studies, "_attribute_rows", store_gone)
    else:
        real = storage.set_study_user_attr
        monkeypatch.setattr(storage, "set_study_user_attr", lambda sid, key, value: (
            store_gone() if key == ATTR_SPEC else real(sid, key, value)))
    with pytest.raises(RuntimeError):
        studies.create_study(storage, parse_spec(tiny_spec(n_trials=5, baselines=True)),
                             studies.Principal("local", "local"))
    assert row_counts(storage_url) == before


def test_queued_trials_are_the_ones_optuna_enqueues(client, storage_url) -> None:
    """Submission writes the queued trials itself, in bulk; they must be exactly what
    ``Study.enqueue_trial`` would have written, which is what workers claim."""
    from search_spaces import parse_spec
    from search_spaces.optuna_space import baseline_params

    spec = tiny_spec(n_trials=5, baselines=True)
    client.post("/api/v1/studies", json=spec)
    storage = make_storage(storage_url)
    ours = optuna.load_study(study_name="tiny", storage=storage).trials
    reference = optuna.create_study(study_name="reference", storage=storage)
    baselines = baseline_params(parse_spec(spec))
    for params in baselines:
        reference.enqueue_trial(params, user_attrs={"baseline": True})
    for _ in range(5 - len(baselines)):
        reference.enqueue_trial({})

    def shown(t: optuna.trial.FrozenTrial) -> tuple:
        return (t.number, t.state, t.params, t.distributions, t.user_attrs, t.system_attrs,
                t.datetime_start, t.datetime_complete, t.values, t.intermediate_values)

    assert len(baselines) == 2
    assert [shown(t) for t in ours] == [shown(t) for t in reference.trials]


def test_catalogue_routes(client) -> None:
    losses = {e["name"]: e for e in client.get("/api/v1/losses").json()}
    assert losses["focal"]["params"][0]["name"] == "gamma" and losses["focal"]["params"][0]["default"] == 2.0
    presets = {p["name"] for p in client.get("/api/v1/search-spaces").json()}
    assert {"imbalance-losses", "paper-defaults", "focal"} <= presets
    assert "loss" in client.get("/api/v1/search-spaces/focal").json()["search_space"]
    assert client.get("/api/v1/search-spaces/nope").status_code == 404


def test_health_and_openapi(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain") and b"# HELP" in metrics.content
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert {"/api/v1/studies", "/api/v1/studies/{study_id}/trials", "/api/v1/losses"} <= set(paths)


def test_dashboard_is_mounted_and_read_only(client) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec()).json()["id"]
    assert client.get("/dashboard").status_code == 200
    studies = client.get("/api/studies").json()["study_summaries"]
    assert [s["study_id"] for s in studies] == [sid]
    assert client.get(f"/api/studies/{sid}").status_code == 200
    r = client.delete(f"/api/studies/{sid}")
    assert r.status_code == 405
    assert client.get(f"/api/v1/studies/{sid}").status_code == 200


def test_oversized_body_is_413_and_writes_nothing(client, storage_url) -> None:
    before = row_counts(storage_url)
    spec = tiny_spec()
    spec["padding"] = "x" * 2_000_000
    r = client.post("/api/v1/studies", content=json.dumps(spec),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert row_counts(storage_url) == before


def test_workers_seen_and_store_metrics(client, storage_url) -> None:
    sid = client.post("/api/v1/studies", json=tiny_spec(n_trials=2)).json()["id"]
    assert client.get("/api/v1/workers").json() == []
    study = optuna.load_study(study_name="tiny", storage=make_storage(storage_url))
    trial = study.ask()
    trial.set_user_attr("worker", "host:42")
    (seen,) = client.get("/api/v1/workers").json()
    assert seen["worker"] == "host:42" and seen["study"] == sid and seen["trial"] == trial.number
    text = client.get("/metrics").text
    assert 'tailtune_trials{state="running"} 1.0' in text
    assert 'tailtune_trials{state="waiting"} 1.0' in text
    assert 'tailtune_studies{state="running"} 1.0' in text
