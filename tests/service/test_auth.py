"""Token auth: per-team visibility, owner-only writes, and the dashboard behind the same rules."""

from __future__ import annotations

import base64

import pytest

from service.auth import issue_token
from tests.conftest import tiny_spec


@pytest.fixture
def teams(storage_url, make_client):
    client = make_client(storage_url, auth="token")
    engine = client.app.state.storage.engine
    tokens = {who: issue_token(engine, user, team) for who, user, team in
              (("ann", "ann", "vision"), ("bob", "bob", "vision"), ("eve", "eve", "speech"))}
    return client, tokens


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()}


def test_requests_without_a_valid_token_are_401(teams) -> None:
    client, _ = teams
    assert client.get("/api/v1/studies").status_code == 401
    assert client.get("/api/v1/studies", headers=bearer("tt_wrong")).status_code == 401
    assert client.post("/api/v1/studies", json=tiny_spec()).status_code == 401
    assert client.get("/healthz").status_code == 200  # probes stay open


def test_teams_see_their_own_and_only_owners_write(teams) -> None:
    client, tok = teams
    r = client.post("/api/v1/studies", json=tiny_spec(), headers=bearer(tok["ann"]))
    assert r.status_code == 201 and r.json()["owner"] == "ann" and r.json()["team"] == "vision"
    sid = r.json()["id"]
    assert client.get(f"/api/v1/studies/{sid}", headers=bearer(tok["bob"])).status_code == 200
    assert [s["id"] for s in client.get("/api/v1/studies", headers=bearer(tok["bob"])).json()] == [sid]
    assert client.get("/api/v1/studies", headers=bearer(tok["eve"])).json() == []
    for path in (f"/api/v1/studies/{sid}", f"/api/v1/studies/{sid}/trials"):
        assert client.get(path, headers=bearer(tok["eve"])).status_code == 404
    assert client.post(f"/api/v1/studies/{sid}/cancel", headers=bearer(tok["eve"])).status_code == 404
    r = client.post(f"/api/v1/studies/{sid}/cancel", headers=bearer(tok["bob"]))
    assert r.status_code == 403 and "only the owner (ann)" in r.json()["detail"]
    assert client.get(f"/api/v1/studies/{sid}", headers=bearer(tok["ann"])).json()["state"] == "queued"
    assert client.post(f"/api/v1/studies/{sid}/cancel", headers=bearer(tok["ann"])).status_code == 200


def test_the_dashboard_asks_for_basic_auth_and_shows_only_the_team(teams) -> None:
    client, tok = teams
    sid = client.post("/api/v1/studies", json=tiny_spec(), headers=bearer(tok["ann"])).json()["id"]
    other = client.post("/api/v1/studies", json=tiny_spec(name="theirs"),
                        headers=bearer(tok["eve"])).json()["id"]
    r = client.get("/dashboard")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert client.get("/dashboard", headers=basic(tok["bob"])).status_code == 200
    listed = client.get("/api/studies", headers=basic(tok["bob"])).json()["study_summaries"]
    assert [s["study_id"] for s in listed] == [sid]
    assert client.get(f"/api/studies/{sid}", headers=basic(tok["bob"])).status_code == 200
    assert client.get(f"/api/studies/{other}", headers=basic(tok["bob"])).status_code == 404
    assert client.get(f"/csv/{other}", headers=basic(tok["bob"])).status_code == 404
    assert client.get(f"/api/studies/{other}", headers=basic(tok["eve"])).status_code == 200
    assert client.delete(f"/api/studies/{sid}", headers=basic(tok["ann"])).status_code == 405
    assert client.get("/api/not-a-route", headers=basic(tok["ann"])).status_code == 404


def test_tokens_are_stored_hashed(teams) -> None:
    import sqlalchemy as sa

    client, tok = teams
    with client.app.state.storage.engine.connect() as conn:
        stored = [r[0] for r in conn.execute(sa.text("SELECT token_hash FROM tailtune_api_tokens"))]
    assert len(stored) == 3 and not set(stored) & set(tok.values())
    assert all(len(h) == 64 for h in stored)
