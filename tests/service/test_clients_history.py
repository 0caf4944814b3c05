"""The client store's history pages, reopening (rescored) and deleting an episode's only
appointment (the episode is then unscored), through ``TestClient(create_app(...))`` on SQLite."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from service.errors import BAD_CURSOR
from service.routers.clients import HISTORY_CURSOR_MAX_LENGTH
from service.store.deps import cursor_seal
from service.store.tables import episodes, risk_scores
from tests.service.conftest import TEST_CLINIC, Registry, bearer
from tests.service.test_clients_api import (
    CASELOAD,
    a_client,
    post_sessions,
    same_score,
    store_app,
)


@pytest.fixture
def api(registry: Registry, dev_key_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with store_app(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}") as client:
        yield client


def _cursor(key: list) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(key)).decode().rstrip("=")


def test_history_is_paged_newest_first(
    api: TestClient, registry: Registry, dev_key_dir: Path
) -> None:
    body = a_client(registry)
    url = f"/v1/clients/{body['client_id']}/risk"
    posted = []
    for s in body["sessions"][:5]:
        answer = post_sessions(api, body, [s], first=not posted)
        assert answer.status_code == 200, answer.text
        posted.append(answer.json()["probability"])
    newest_first = posted[::-1]

    whole = api.get(url, params={"history": True}).json()  # default: 100 a page
    assert [h["probability"] for h in whole["history"]] == newest_first
    assert whole["history_next_cursor"] is None
    assert api.get(url).json()["history_next_cursor"] is None

    seen, cursor, pages = [], None, 0
    while True:
        params = {"history": True, "history_limit": 2}
        if cursor is not None:
            params["history_cursor"] = cursor
        page = api.get(url, params=params)
        assert page.status_code == 200, page.text
        assert len(page.json()["history"]) <= 2
        seen += [h["probability"] for h in page.json()["history"]]
        pages += 1
        cursor = page.json()["history_next_cursor"]
        if cursor is None:
            break
        assert len(cursor) <= 96 and body["client_id"] not in cursor
    assert seen == newest_first and pages == 3

    # Bounds, and cursors that are not this client's.
    for limit in (0, 1001):
        assert api.get(url, params={"history": True, "history_limit": limit}).status_code == 422
    first = api.get(url, params={"history": True, "history_limit": 1}).json()
    other = a_client(registry, 1)
    assert post_sessions(api, other, other["sessions"][:2], first=True).status_code == 200
    theirs = api.get(f"/v1/clients/{other['client_id']}/risk",
                     params={"history": True, "history_cursor": first["history_next_cursor"]})  # fmt: skip
    _refused(theirs, first["history_next_cursor"])
    seal = cursor_seal(api.app.state.security.refs)  # type: ignore[attr-defined]
    forged = [_cursor(["h", 0]), _cursor(["h", True]), _cursor(["h", 2**63]),
              _cursor(["h", 1]), *(seal.seal(k, TEST_CLINIC, "history") for k in (["h", 0], ["h", True]))]  # fmt: skip
    for bad in ("garbage", *forged):
        _refused(api.get(url, params={"history": True, "history_cursor": bad}), bad)
    # Another clinic's credential: the client looks missing, whatever the cursor.
    stranger = bearer(dev_key_dir, "clinic-elsewhere", ("clients:read",))
    assert api.get(url, params={"history": True}, headers=stranger).status_code == 404


def _refused(response: Any, cursor: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["detail"] == BAD_CURSOR
    assert response.json()["errors"] == [
        {"loc": ["query", "history_cursor"], "reason": "not a cursor this service issued"}
    ]
    assert cursor not in response.text


def test_the_history_cursor_is_sealed_for_its_clinic(
    api: TestClient, registry: Registry, dev_key_dir: Path
) -> None:
    body = a_client(registry)
    url = f"/v1/clients/{body['client_id']}/risk"
    for s in body["sessions"][:3]:
        assert post_sessions(api, body, [s], first=s is body["sessions"][0]).status_code == 200
    page = api.get(url, params={"history": True, "history_limit": 1}).json()
    cursor = page["history_next_cursor"]
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    store = api.app.state.client_store  # type: ignore[attr-defined]
    with store.read() as conn:
        ids = [str(i).encode() for i in conn.execute(select(risk_scores.c.id)).scalars()]
    assert not [i for i in ids if b'"h",' + i in raw or b"," + i + b"]" in raw]
    assert b'"h"' not in raw
    ok = api.get(url, params={"history": True, "history_limit": 1, "history_cursor": cursor})
    assert ok.status_code == 200
    changed = cursor[:-1] + ("A" if cursor[-1] != "A" else "B")
    _refused(api.get(url, params={"history": True, "history_cursor": changed}), changed)
    # The same client id in another clinic, with this clinic's cursor.
    other = bearer(dev_key_dir, "clinic-elsewhere", ("clients:read", "clients:write"))
    assert (
        post_sessions(api, body, body["sessions"][:3], first=True, headers=other).status_code == 200
    )
    theirs = api.get(url, params={"history": True, "history_cursor": cursor}, headers=other)
    _refused(theirs, cursor)
    # Longer than any history cursor issued (the largest score id, sealed): the same 400, not
    # FastAPI's 422 of a Query max_length.
    assert len(cursor) <= HISTORY_CURSOR_MAX_LENGTH == 55
    for long in ("A" * (HISTORY_CURSOR_MAX_LENGTH + 1), "A" * 4000):
        _refused(api.get(url, params={"history": True, "history_cursor": long}), long)
    # A history cursor is no caseload cursor, and the other way round.
    answer = api.get(CASELOAD, params={"cursor": cursor})
    assert answer.status_code == 400 and answer.json()["detail"] == BAD_CURSOR
    second = a_client(registry, 1)
    assert post_sessions(api, second, second["sessions"][:2], first=True).status_code == 200
    caseload = api.get(CASELOAD, params={"limit": 1}).json()["next_cursor"]
    _refused(api.get(url, params={"history": True, "history_cursor": caseload}), caseload)


def test_reopening_rescores_with_the_served_model(api: TestClient, registry: Registry) -> None:
    body = a_client(registry)
    s = body["sessions"][:3]
    url = f"/v1/clients/{body['client_id']}"
    assert post_sessions(api, body, s, first=True).status_code == 200
    closed_on = s[-1]["session_date"]
    closed = api.post(f"{url}/outcome", json={"outcome": "completed", "outcome_date": closed_on})
    assert closed.status_code == 200
    # While it was closed, the stored score went stale (a model before the served one).
    store = api.app.state.client_store  # type: ignore[attr-defined]
    with store.write() as conn:
        conn.execute(update(episodes).values(latest_probability=0.0123))
    etag = api.get(CASELOAD).headers["etag"]

    assert api.delete(f"{url}/outcome").status_code == 204
    got = api.get(url + "/risk", params={"history": True}).json()
    same_score(got, api.post("/v1/risk", json={**body, "sessions": s}).json())
    assert len(got["history"]) == 2 and got["history"][0]["reason"] == "ingest"
    row = next(r for r in api.get(CASELOAD).json()["items"] if r["client_id"] == body["client_id"])
    assert row["probability"] == got["probability"] != 0.0123
    assert api.get(CASELOAD, headers={"If-None-Match": etag}).status_code == 200


def test_deleting_the_only_appointment_leaves_the_episode_unscored(
    api: TestClient, registry: Registry
) -> None:
    body = a_client(registry)
    url = f"/v1/clients/{body['client_id']}"
    assert post_sessions(api, body, body["sessions"][:1], first=True).status_code == 200
    etag = api.get(CASELOAD).headers["etag"]

    deleted = api.delete(f"{url}/sessions/1")
    assert deleted.status_code == 200, deleted.text
    answer = deleted.json()
    assert answer["sessions_stored"] == 0
    for field in ("model", "landmark", "probability", "risk_band", "scored_at", "explanation"):
        assert answer[field] is None, field
    got = api.get(f"{url}/risk", params={"history": True})
    assert got.status_code == 200 and got.json()["probability"] is None
    assert len(got.json()["history"]) == 1  # the earlier score stays in the history
    assert api.get(CASELOAD, headers={"If-None-Match": etag}).status_code == 200
    row = next(r for r in api.get(CASELOAD).json()["items"] if r["client_id"] == body["client_id"])
    assert row["probability"] is None and row["band"] is None and row["top_driver"] is None
    assert api.delete(f"{url}/sessions/1").status_code == 404

    # Storing an appointment again scores it.
    again = post_sessions(api, body, body["sessions"][:2], first=False)
    assert again.status_code == 200, again.text
    same_score(
        again.json(), api.post("/v1/risk", json={**body, "sessions": body["sessions"][:2]}).json()
    )
