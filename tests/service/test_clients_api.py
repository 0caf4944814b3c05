"""The client store's routes through ``TestClient(create_app(...))`` on SQLite: ingestion,
corrections, idempotency, outcome, stored risk and history, tenancy and audit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings
from tests.service.helpers import request_for

CHAMPION = f"models:/{MODEL_NAME}@champion"
WRITER = ("clients:write", "clients:read", "risk:read")


def store_app(registry: Registry, keys: Path, store_url: str, **overrides: Any) -> TestClient:
    settings = ServiceSettings(
        model_uri=CHAMPION,
        tracking_uri=registry.uri,
        poll_interval_s=0,
        store_url=store_url,
        **overrides,
    )
    security = security_settings(keys, registry.root / "audit")
    app = create_app(settings, configure_logs=False, **security)
    return TestClient(app, headers=bearer(keys, scopes=WRITER))


@pytest.fixture
def api(registry: Registry, dev_key_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with store_app(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}") as client:
        yield client


def a_client(registry: Registry, i: int = 0) -> dict[str, Any]:
    """A simulated client's POST /v1/risk body with at least 4 appointments."""
    cohort = registry.cohort
    counts = cohort.sessions.groupby("client_id").size()
    client_id = sorted(counts[counts >= 4].index)[i]
    return request_for(cohort, str(client_id), clinic=TEST_CLINIC)


def client_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in ("therapist_id", "intake_date", "age")}


def post_sessions(api: TestClient, body: dict[str, Any], sessions: list, *, first: bool,
                  **kwargs: Any) -> Any:  # fmt: skip
    payload: dict[str, Any] = {"sessions": sessions}
    if first:
        payload["client"] = client_fields(body)
    return api.post(f"/v1/clients/{body['client_id']}/sessions", json=payload, **kwargs)


def same_score(stored: dict[str, Any], scored: dict[str, Any]) -> None:
    """A stored score equals what POST /v1/risk answers for the same episode."""
    assert stored["probability"] == pytest.approx(scored["probability"], abs=1e-12)
    assert stored["risk_band"] == scored["risk_band"]
    assert stored["landmark"] == scored["landmark"]
    assert stored["model"]["version"] == scored["model"]["version"]
    assert stored["explanation"]["contributions"] == scored["explanation"]["contributions"]
    assert stored["explanation"]["drivers"] == scored["explanation"]["drivers"]


def test_first_post_needs_the_client_fields(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    response = post_sessions(api, body, body["sessions"][:2], first=False)
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {
            "loc": ["client"],
            "reason": "required on the first post of a client that is not stored yet",
        }  # fmt: skip
    ]
    assert api.get(f"/v1/clients/{body['client_id']}/risk").status_code == 404


def test_stored_episode_scores_as_post_risk(api: TestClient, registry: Registry) -> None:
    """Appending, then correcting an appointment: each stored score is the one POST /v1/risk
    gives for the whole stored episode (one scoring path), and the history keeps them all."""
    body = a_client(registry)
    sessions = body["sessions"]
    first = post_sessions(api, body, sessions[:2], first=True)
    assert first.status_code == 200, first.text
    assert first.json()["sessions_stored"] == 2
    same_score(first.json(), api.post("/v1/risk", json={**body, "sessions": sessions[:2]}).json())

    # Out of order, a later post without client fields.
    second = post_sessions(api, body, list(reversed(sessions[2:])), first=False)
    assert second.status_code == 200, second.text
    assert second.json()["sessions_stored"] == len(sessions)
    same_score(second.json(), api.post("/v1/risk", json=body).json())

    # A correction: the last appointment was a no-show after all.
    corrected = {**sessions[-1], "attendance": "no_show", "ratings": {}}
    third = post_sessions(api, body, [corrected], first=False)
    assert third.status_code == 200, third.text
    assert third.json()["sessions_stored"] == len(sessions)
    expected = api.post("/v1/risk", json={**body, "sessions": [*sessions[:-1], corrected]})
    same_score(third.json(), expected.json())

    got = api.get(f"/v1/clients/{body['client_id']}/risk")
    assert got.status_code == 200
    assert got.json()["history"] is None
    same_score(got.json(), expected.json())
    history = api.get(f"/v1/clients/{body['client_id']}/risk", params={"history": "true"}).json()
    probabilities = [h["probability"] for h in history["history"]]  # newest first
    assert probabilities == pytest.approx(
        [third.json()["probability"], second.json()["probability"], first.json()["probability"]]
    )
    assert {h["model"]["version"] for h in history["history"]} == {"1"}
    assert {h["reason"] for h in history["history"]} == {"ingest"}
    # Times come back as RFC 3339 date-times with their zone (SQLite keeps none of its own).
    for when in [history["scored_at"], *(h["scored_at"] for h in history["history"])]:
        assert datetime.fromisoformat(when).utcoffset() == timedelta(0), when


def test_invalid_sessions_are_refused_like_post_risk(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    bad = [dict(s) for s in body["sessions"][:3]]
    bad[1] = {**bad[1], "ratings": {**bad[1].get("ratings", {}), "warmth": 5.0}}
    bad[2] = {**bad[2], "attendance": "maybe"}
    stored = post_sessions(api, body, bad, first=True)
    scored = api.post("/v1/risk", json={**body, "sessions": bad})
    assert stored.status_code == scored.status_code == 422
    assert stored.json()["errors"] == scored.json()["errors"]
    assert "warmth" not in stored.text and "maybe" not in stored.text
    # Nothing was stored.
    assert api.get(f"/v1/clients/{body['client_id']}/risk").status_code == 404

    twice = post_sessions(api, body, [body["sessions"][0], body["sessions"][0]], first=True)
    assert twice.status_code == 422
    assert twice.json()["errors"][0]["loc"] == ["sessions", 1, "session_number"]


def test_a_history_the_contract_refuses_is_not_stored(api: TestClient,
                                                      registry: Registry) -> None:  # fmt: skip
    """A correction that breaks the stored episode (a date going backwards) is a 422 naming
    the posted appointment, and the stored episode and score stay as they were."""
    body = a_client(registry)
    sessions = body["sessions"]
    assert post_sessions(api, body, sessions, first=True).status_code == 200
    before = api.get(f"/v1/clients/{body['client_id']}/risk", params={"history": True}).json()
    backwards = {**sessions[-1], "session_date": "2001-01-01"}
    refused = post_sessions(api, body, [backwards], first=False)
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["loc"][:2] == ["sessions", 0]
    after = api.get(f"/v1/clients/{body['client_id']}/risk", params={"history": True}).json()
    assert after["history"] == before["history"]


def test_idempotency_key(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    headers = {"Idempotency-Key": "visit-2026-11-02-upload"}
    first = post_sessions(api, body, body["sessions"][:3], first=True, headers=headers)
    assert first.status_code == 200
    again = post_sessions(api, body, body["sessions"][:3], first=True, headers=headers)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    history = api.get(f"/v1/clients/{body['client_id']}/risk", params={"history": True})
    assert len(history.json()["history"]) == 1  # not scored or stored twice

    other = post_sessions(api, body, body["sessions"][:2], first=True, headers=headers)
    assert other.status_code == 422
    assert other.json()["detail"] == "this Idempotency-Key was used with a different request"
    assert "visit-2026" not in other.text
    # Without the key, a repeat is stored again (same sessions, another score in the history).
    assert post_sessions(api, body, body["sessions"][:3], first=True).status_code == 200
    history = api.get(f"/v1/clients/{body['client_id']}/risk", params={"history": True})
    assert len(history.json()["history"]) == 2


def test_outcome_closes_the_episode(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    url = f"/v1/clients/{body['client_id']}"
    outcome = {"outcome": "dropout", "outcome_date": "2026-11-02"}
    assert api.post(f"{url}/outcome", json=outcome).status_code == 404
    assert post_sessions(api, body, body["sessions"], first=True).status_code == 200
    assert api.get(f"{url}/risk").json()["outcome"] is None
    done = api.post(f"{url}/outcome", json=outcome)
    assert done.status_code == 200, done.text
    assert done.json()["outcome"] == "dropout"
    assert api.get(f"{url}/risk").json()["outcome"] == "dropout"
    corrected = api.post(f"{url}/outcome", json={**outcome, "outcome": "completed"})
    assert corrected.status_code == 200
    assert api.get(f"{url}/risk").json()["outcome"] == "completed"
    bad = api.post(f"{url}/outcome", json={"outcome": "moved", "outcome_date": "02/11/2026"})
    assert bad.status_code == 422
    assert {tuple(e["loc"]) for e in bad.json()["errors"]} == {("outcome",), ("outcome_date",)}


def test_other_clinic_sees_missing_and_everything_is_audited(
    api: TestClient, registry: Registry, dev_key_dir: Path
) -> None:
    body = a_client(registry)
    client_id = body["client_id"]
    assert post_sessions(api, body, body["sessions"], first=True).status_code == 200
    other = bearer(dev_key_dir, clinic="clinic-other", scopes=WRITER)
    theirs = api.get(f"/v1/clients/{client_id}/risk", headers=other)
    missing = api.get("/v1/clients/nobody-here/risk", headers=other)
    assert theirs.status_code == missing.status_code == 404
    strip = {"request_id"}
    assert {k: v for k, v in theirs.json().items() if k not in strip} == {
        k: v for k, v in missing.json().items() if k not in strip
    }
    outcome = {"outcome": "dropout", "outcome_date": "2026-11-02"}
    assert api.post(f"/v1/clients/{client_id}/outcome", json=outcome,
                    headers=other).status_code == 404  # fmt: skip
    # Another clinic's post of the same client id is a client of its own.
    assert post_sessions(api, body, body["sessions"][:1], first=True,
                         headers=other).status_code == 200  # fmt: skip
    assert api.get(f"/v1/clients/{client_id}/risk").json()["sessions_stored"] == len(
        body["sessions"]
    )
    reader = bearer(dev_key_dir, scopes=("clients:read",))
    assert api.get(f"/v1/clients/{client_id}/risk", headers=reader).status_code == 200
    refused = post_sessions(api, body, body["sessions"][:1], first=False, headers=reader)
    assert refused.status_code == 403

    text = (registry.root / "audit" / "audit.jsonl").read_text()
    assert client_id not in text
    records = [json.loads(line) for line in text.splitlines()]
    actions = {r["action"] for r in records}
    assert {"clients.sessions_write", "clients.outcome_write", "clients.risk_read"} <= actions
    mine = [r for r in records if r["action"].startswith("clients.")]
    # Refused before the route (403) without a client; every other record names its client.
    assert all(r.get("client_ref") for r in mine if r["outcome"] != "denied")
    assert [r["status"] for r in mine if r["outcome"] == "denied"] == [403]
    reads = [r for r in records if r["action"] == "clients.risk_read"]
    assert {r["outcome"] for r in reads} == {"ok", "not_found"}


def test_store_down_is_503_and_post_risk_keeps_serving(
    registry: Registry, dev_key_dir: Path
) -> None:
    """A PostgreSQL store on a closed loopback port: the app starts, POST /v1/risk scores, and
    the store's routes answer 503 with Retry-After within the connect timeout."""
    import time

    from tests.conftest import free_port

    url = f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/store"
    with store_app(registry, dev_key_dir, url, store_connect_timeout_s=1) as api:
        body = a_client(registry)
        assert api.post("/v1/risk", json=body).status_code == 200
        started = time.monotonic()
        down = post_sessions(api, body, body["sessions"], first=True)
        assert down.status_code == 503
        assert down.headers["Retry-After"] == "5"
        assert down.json()["detail"] == "the client store is unavailable; try again later"
        assert api.get(f"/v1/clients/{body['client_id']}/risk").status_code == 503
        assert time.monotonic() - started < 10
        assert api.post("/v1/risk", json=body).status_code == 200


CASELOAD = f"/v1/clinics/{TEST_CLINIC}/caseload"


def _day(text: str, days: int = 0) -> str:
    return (date.fromisoformat(text) + timedelta(days=days)).isoformat()


def _audit_actions(registry: Registry) -> list[dict[str, Any]]:
    text = (registry.root / "audit" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_sessions_after_the_outcome_are_409_until_it_is_withdrawn(
    api: TestClient, registry: Registry, dev_key_dir: Path
) -> None:
    body = a_client(registry)
    s = body["sessions"]
    url = f"/v1/clients/{body['client_id']}"
    assert post_sessions(api, body, s[:3], first=True).status_code == 200
    closed_on = s[2]["session_date"]
    assert (
        api.post(
            f"{url}/outcome", json={"outcome": "dropout", "outcome_date": closed_on}
        ).status_code
        == 200
    )
    later = {**s[3], "session_date": _day(closed_on, 1)}
    refused = post_sessions(api, body, [later], first=False)
    assert refused.status_code == 409, refused.text
    assert "reopen" in refused.json()["detail"]
    assert api.get(f"{url}/risk").json()["sessions_stored"] == 3
    # A correction dated on or before the outcome is still taken.
    assert post_sessions(api, body, [s[1]], first=False).status_code == 200

    etag = api.get(CASELOAD).headers["etag"]
    reopened = api.delete(f"{url}/outcome")
    assert reopened.status_code == 204, reopened.text
    assert api.get(f"{url}/risk").json()["outcome"] is None
    assert api.get(CASELOAD, headers={"If-None-Match": etag}).status_code == 200
    assert body["client_id"] in [r["client_id"] for r in api.get(CASELOAD).json()["items"]]
    assert post_sessions(api, body, [later], first=False).status_code == 200
    again = api.delete(f"{url}/outcome")
    assert again.status_code == 404
    assert api.delete("/v1/clients/nobody-here/outcome").status_code == 404
    reader = bearer(dev_key_dir, scopes=("clients:read",))
    assert api.delete(f"{url}/outcome", headers=reader).status_code == 403
    withdrawn = [r for r in _audit_actions(registry) if r["action"] == "clients.outcome_withdraw"]
    assert [r["status"] for r in withdrawn] == [204, 404, 404, 403]
    assert all(r["client_ref"] for r in withdrawn[:3])


def test_an_outcome_is_withdrawn_even_when_the_model_refuses_the_stored_episode(
    api: TestClient, registry: Registry, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # A model promoted since the outcome was recorded refuses the stored history (say, its
    # edge checks are stricter): the outcome is withdrawn all the same, the episode left open
    # and unscored, as deleting its only appointment leaves it.
    from service.errors import InvalidRequest
    from service.routers import clients

    body = a_client(registry)
    url = f"/v1/clients/{body['client_id']}"
    assert post_sessions(api, body, body["sessions"][:3], first=True).status_code == 200
    closed = {"outcome": "dropout", "outcome_date": body["sessions"][2]["session_date"]}
    assert api.post(f"{url}/outcome", json=closed).status_code == 200

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise InvalidRequest([{"loc": ["sessions", 1, "session_date"], "reason": "refused"}])

    monkeypatch.setattr(clients, "score_one", refuse)
    with caplog.at_level("WARNING", logger="service.routers.clients"):
        reopened = api.delete(f"{url}/outcome")
    assert reopened.status_code == 204, reopened.text
    risk = api.get(f"{url}/risk").json()
    assert risk["outcome"] is None and risk["sessions_stored"] == 3
    assert risk["probability"] is None and risk["risk_band"] is None
    listed = {r["client_id"]: r for r in api.get(CASELOAD).json()["items"]}
    assert listed[body["client_id"]]["probability"] is None
    warned = [r.getMessage() for r in caplog.records if r.name == "service.routers.clients"]
    assert len(warned) == 1 and "unscored" in warned[0] and "refused" in warned[0]
    assert body["client_id"] not in warned[0]


def test_an_appointment_is_deleted_even_when_the_model_refuses_what_is_left(
    api: TestClient, registry: Registry, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # Deleting an appointment entered by mistake must not depend on the served model accepting
    # the rest: the appointment is deleted and the episode left unscored, not a 422 naming the
    # fields of a body the DELETE never had.
    from service.errors import InvalidRequest
    from service.routers import clients

    body = a_client(registry)
    url = f"/v1/clients/{body['client_id']}"
    assert post_sessions(api, body, body["sessions"][:3], first=True).status_code == 200

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise InvalidRequest([{"loc": ["sessions", 1, "session_date"], "reason": "refused"}])

    monkeypatch.setattr(clients, "score_one", refuse)
    with caplog.at_level("WARNING", logger="service.routers.clients"):
        deleted = api.delete(f"{url}/sessions/3")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["probability"] is None and deleted.json()["sessions_stored"] == 2
    listed = {r["client_id"]: r for r in api.get(CASELOAD).json()["items"]}
    assert listed[body["client_id"]]["probability"] is None
    warned = [r.getMessage() for r in caplog.records if r.name == "service.routers.clients"]
    assert len(warned) == 1 and "unscored" in warned[0] and "refused" in warned[0]
    assert body["client_id"] not in warned[0]


def test_outcome_dates_are_checked(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    s = body["sessions"]
    url = f"/v1/clients/{body['client_id']}/outcome"
    assert post_sessions(api, body, s[:3], first=True).status_code == 200
    future = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    for day, reason in ((_day(body["intake_date"], -1), "intake"),
                        (s[1]["session_date"], "last stored appointment"),
                        (future, "future")):  # fmt: skip
        r = api.post(url, json={"outcome": "completed", "outcome_date": day})
        assert r.status_code == 422, (day, r.text)
        assert r.json()["errors"][0]["loc"] == ["outcome_date"]
        assert reason in r.json()["errors"][0]["reason"] and day not in r.text
    assert api.get(f"/v1/clients/{body['client_id']}/risk").json()["outcome"] is None


def test_sessions_more_than_a_day_ahead_are_422(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    ahead = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    r = post_sessions(api, body, [{**body["sessions"][0], "session_date": ahead}], first=True)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [
        {"loc": ["sessions", 0, "session_date"], "reason": "more than a day in the future"}
    ]
    assert ahead not in r.text


def test_deleting_a_session_rescores_and_is_audited(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    s = body["sessions"][:4]
    url = f"/v1/clients/{body['client_id']}"
    assert post_sessions(api, body, s, first=True).status_code == 200
    etag = api.get(CASELOAD).headers["etag"]
    deleted = api.delete(f"{url}/sessions/4")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["sessions_stored"] == 3
    scored = api.post("/v1/risk", json={**body, "sessions": s[:3]})
    same_score(deleted.json(), scored.json())
    assert len(api.get(f"{url}/risk?history=true").json()["history"]) == 2
    assert api.get(CASELOAD, headers={"If-None-Match": etag}).status_code == 200
    repeat = api.delete(f"{url}/sessions/4")
    assert repeat.status_code == 404 and repeat.json()["detail"] == "session not found"
    assert api.delete("/v1/clients/nobody-here/sessions/1").json()["detail"] == "client not found"
    assert api.delete(f"{url}/sessions/0").status_code == 422
    records = [r for r in _audit_actions(registry) if r["action"] == "clients.session_delete"]
    assert [r["status"] for r in records] == [200, 404, 404, 422]
    assert body["client_id"] not in (registry.root / "audit" / "audit.jsonl").read_text()


def test_a_full_stored_episode_says_so(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    body = a_client(registry)
    with store_app(registry, dev_key_dir, f"sqlite:///{tmp_path / 's.db'}", max_sessions=3) as api:
        assert post_sessions(api, body, body["sessions"][:3], first=True).status_code == 200
        full = post_sessions(api, body, [body["sessions"][3]], first=False)
        assert full.status_code == 422
        assert full.json()["errors"] == [
            {"loc": ["sessions"], "reason": "the stored episode is full: at most 3 appointments "
             "are kept per client, and this post would store more"}
        ]  # fmt: skip
        # A correction of a stored appointment still fits.
        assert post_sessions(api, body, [body["sessions"][2]], first=False).status_code == 200


def test_idempotency_keys_expire_and_are_purged(api: TestClient, registry: Registry) -> None:
    from sqlalchemy import func, insert, select, update

    from service.store.tables import idempotency_keys

    body = a_client(registry)
    store = api.app.state.client_store  # type: ignore[attr-defined]
    headers = {"Idempotency-Key": "upload-1"}
    assert post_sessions(api, body, body["sessions"][:2], first=True,
                         headers=headers).status_code == 200  # fmt: skip
    day_ago = datetime.now(UTC) - timedelta(hours=24, minutes=1)
    with store.write() as conn:
        conn.execute(update(idempotency_keys).values(created_at=day_ago))
        conn.execute(insert(idempotency_keys), [
            {"clinic_id": "clinic-other", "key_hash": f"{i:064x}", "request_hash": "0" * 64,
             "status_code": 200, "response": {}, "created_at": day_ago - timedelta(seconds=i)}
            for i in range(150)
        ])  # fmt: skip
    # 24 h on, the key is a new request: another body is stored, not a 422.
    fresh = post_sessions(api, body, body["sessions"][:3], first=False, headers=headers)
    assert fresh.status_code == 200, fresh.text
    assert "Idempotent-Replayed" not in fresh.headers and fresh.json()["sessions_stored"] == 3

    def stored_keys() -> int:
        with store.read() as conn:
            return int(conn.execute(select(func.count()).select_from(idempotency_keys)).scalar())

    # Each keyed write purges at most 100 expired keys, oldest first: 151 expired, 100 purged,
    # the reused one replaced by the fresh answer.
    assert stored_keys() == 51
    replay = post_sessions(api, body, body["sessions"][:3], first=False, headers=headers)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert stored_keys() == 1  # the last 50 expired ones purged; the live key kept
