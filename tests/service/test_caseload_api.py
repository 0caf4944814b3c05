"""``GET /v1/clinics/{clinic_id}/caseload`` through ``TestClient(create_app(...))``: rows and
pages, strong ETag and 304, caching headers, tenancy (another clinic is a 404), scopes, errors
that quote nothing, the audit trail, and 503 when the store is down."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from service.app import create_app
from service.audit import ClientRefs
from service.errors import BAD_CURSOR
from service.settings import ServiceSettings
from service.store.caseload import (
    BY_RISK,
    CURSOR_MAX_LENGTH,
    SORT_KEYS,
    CaseloadFilters,
    CursorError,
    clinic_version,
    decode_cursor,
    etag_of,
    week_cutoff,
)
from service.store.cursors import CursorSeal
from service.store.deps import cursor_seal
from service.store.tables import clinic_state, episodes
from tests.conftest import free_port
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings
from tests.service.test_caseload_support import days_ago, seed_episodes

URL = f"/v1/clinics/{TEST_CLINIC}/caseload"
READER = ("clients:read",)


def _app(registry: Registry, keys: Path, store_url: str, **overrides: Any) -> TestClient:
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri,
        poll_interval_s=0, store_url=store_url, rescore_enabled=False, **overrides,
    )  # fmt: skip
    app = create_app(settings, configure_logs=False,
                     **security_settings(keys, registry.root / "audit"))  # fmt: skip
    return TestClient(app, headers=bearer(keys, scopes=READER))


@pytest.fixture
def api(registry: Registry, dev_key_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with _app(registry, dev_key_dir, f"sqlite:///{tmp_path / 'store.db'}") as client:
        seed_episodes(client.app.state.client_store, [
            {"id": i, "clinic_id": TEST_CLINIC, "client_id": f"cl-api-{i}",
             "therapist_id": "t-a" if i % 2 else "t-b", "latest_probability": p,
             "latest_band": "high" if p >= 0.5 else "low", "latest_model_version": "1",
             "latest_scored_at": days_ago(1), "latest_top_driver": "2 no-shows in a row"}
            for i, p in enumerate([0.7, 0.2, 0.9, 0.4, 0.55], start=1)
        ] + [{"id": 9, "clinic_id": "clinic-other", "client_id": "cl-api-other",
              "latest_probability": 0.99, "latest_band": "high"}])  # fmt: skip
        yield client


def _audit(registry: Registry) -> list[dict[str, Any]]:
    text = (registry.root / "audit" / "audit.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def test_rows_pages_and_caching_headers(api: TestClient) -> None:
    r = api.get(URL, params={"limit": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [i["client_id"] for i in body["items"]] == ["cl-api-3", "cl-api-1"]
    item = body["items"][0]
    assert item == {
        "client_id": "cl-api-3", "therapist_id": "t-a", "band": "high", "probability": 0.9,
        "change_since_last_week": None, "top_driver": "2 no-shows in a row",
        "model_version": "1", "scored_at": item["scored_at"],
    }  # fmt: skip
    assert item["scored_at"].endswith(("Z", "+00:00"))
    assert r.headers["cache-control"] == "private, no-cache"
    assert r.headers["vary"] == "Authorization"
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    seen = [i["client_id"] for i in body["items"]]
    while body["next_cursor"]:
        r = api.get(URL, params={"limit": 2, "cursor": body["next_cursor"]})
        assert r.status_code == 200 and r.headers["etag"] != etag
        body = r.json()
        seen += [i["client_id"] for i in body["items"]]
    assert seen == ["cl-api-3", "cl-api-1", "cl-api-5", "cl-api-4", "cl-api-2"]
    filtered = api.get(URL, params={"therapist_id": "t-b", "band": "low"}).json()["items"]
    assert [i["client_id"] for i in filtered] == ["cl-api-4", "cl-api-2"]


def test_if_none_match_is_a_304_until_the_caseload_changes(api: TestClient) -> None:
    first = api.get(URL)
    etag = first.headers["etag"]
    for tag in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        r = api.get(URL, headers={"If-None-Match": tag})
        assert r.status_code == 304, tag
        assert r.content == b""
        assert r.headers["etag"] == etag
        assert r.headers["cache-control"] == "private, no-cache"
        assert r.headers["vary"] == "Authorization"
    assert api.get(URL, headers={"If-None-Match": '"other"'}).status_code == 200
    # Another page size is another representation.
    assert api.get(URL, params={"limit": 3}, headers={"If-None-Match": etag}).status_code == 200
    with api.app.state.client_store.write() as conn:
        conn.execute(update(episodes).where(episodes.c.id == 2).values(latest_probability=0.95))
        c = clinic_state.c
        conn.execute(update(clinic_state).where(c.clinic_id == TEST_CLINIC)
                     .values(version=c.version + 1))  # fmt: skip
    changed = api.get(URL, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert changed.json()["items"][0]["client_id"] == "cl-api-2"


def test_another_clinic_looks_missing(api: TestClient, dev_key_dir: Path) -> None:
    r = api.get("/v1/clinics/clinic-other/caseload")
    assert r.status_code == 404 and r.json()["detail"] == "clinic not found"
    nowhere = api.get("/v1/clinics/no-such-clinic/caseload")
    assert nowhere.status_code == 404 and nowhere.json()["detail"] == r.json()["detail"]
    assert "cl-api-other" not in r.text
    other = bearer(dev_key_dir, clinic="clinic-other", scopes=READER)
    mine = api.get("/v1/clinics/clinic-other/caseload", headers=other).json()["items"]
    assert [i["client_id"] for i in mine] == ["cl-api-other"]


def test_the_scope_is_clients_read(api: TestClient, dev_key_dir: Path) -> None:
    r = api.get(URL, headers=bearer(dev_key_dir, scopes=("risk:read",)))
    assert r.status_code == 403 and "clients:read" in r.json()["detail"]
    assert api.get(URL, headers={"Authorization": ""}).status_code == 401


def test_bad_queries_are_422_without_echoing_them(api: TestClient) -> None:
    for params in ({"limit": 1001}, {"limit": 0},
                   {"band": "severe-x9"}, {"changed_since": "2026-12-01T10:00:00"}):  # fmt: skip
        r = api.get(URL, params=params)
        assert r.status_code == 422, (params, r.text)
        for value in params.values():
            if isinstance(value, str):
                assert value not in r.text


def test_every_request_is_audited_with_refs_not_ids(api: TestClient, registry: Registry) -> None:
    etag = api.get(URL).headers["etag"]
    assert api.get(URL, headers={"If-None-Match": etag}).status_code == 304
    assert api.get("/v1/clinics/clinic-other/caseload").status_code == 404
    lines = [a for a in _audit(registry) if a["action"] == "clients.caseload_read"]
    listed = [a for a in lines if a["status"] == 200]
    assert len(listed) == 5 and all(a["client_ref"] for a in listed)
    assert len({a["client_ref"] for a in listed}) == 5
    assert [a["status"] for a in lines[5:]] == [304, 404]
    assert "cl-api-" not in json.dumps(lines)


def test_store_down_is_503_with_retry_after(registry: Registry, dev_key_dir: Path) -> None:
    down = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none"
    with _app(registry, dev_key_dir, down, store_connect_timeout_s=1) as api:
        r = api.get(URL)
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0


def _cursor(key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def _raw(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def _refused(response: Any, cursor: str, parameter: str = "cursor") -> None:
    """A fixed-text 400 problem naming the parameter, and nothing of the cursor."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["detail"] == BAD_CURSOR
    assert body["errors"] == [
        {"loc": ["query", parameter], "reason": "not a cursor this service issued"}
    ]
    assert cursor not in response.text or not cursor
    assert "cl-api-" not in response.text


def test_the_cursor_reads_as_nothing(api: TestClient) -> None:
    pages = []
    body = api.get(URL, params={"limit": 1}).json()
    while body["next_cursor"]:
        pages.append(body["next_cursor"])
        body = api.get(URL, params={"limit": 1, "cursor": body["next_cursor"]}).json()
    assert len(pages) == 4
    for cursor, (probability, episode_id) in zip(
        pages, [(0.9, 3), (0.7, 1), (0.55, 5), (0.4, 4)], strict=True
    ):
        raw = _raw(cursor)
        with pytest.raises(ValueError):
            json.loads(raw)
        for readable in (str(probability), f"{probability},{episode_id}", f",{episode_id}]"):
            assert readable.encode() not in raw
    # The same position seals to the same cursor: the page's body is as stable as its ETag.
    again = api.get(URL, params={"limit": 1}).json()["next_cursor"]
    assert again == pages[0]


def test_a_changed_truncated_or_foreign_cursor_is_a_400(api: TestClient, dev_key_dir: Path) -> None:
    cursor = api.get(URL, params={"limit": 1}).json()["next_cursor"]
    assert api.get(URL, params={"cursor": cursor}).status_code == 200
    for i in (0, len(cursor) // 2, len(cursor) - 1):
        for c in "AB-_+":
            changed = cursor[:i] + c + cursor[i + 1 :]
            if changed != cursor:
                _refused(api.get(URL, params={"cursor": changed}), changed)
    for bad in (cursor[:-1], cursor[:-4], cursor + "A", "", "garbage", _cursor(["s", 0.7, 1])):
        _refused(api.get(URL, params={"cursor": bad}), bad)
    # Clinic A's cursor in clinic B's caseload: refused, not read at A's position.
    other = bearer(dev_key_dir, clinic="clinic-other", scopes=READER)
    answer = api.get("/v1/clinics/clinic-other/caseload", params={"cursor": cursor},
                     headers=other)  # fmt: skip
    _refused(answer, cursor)
    # Sealed by the service for another clinic, or under another key (a rotated audit key).
    seal = cursor_seal(api.app.state.security.refs)  # type: ignore[attr-defined]
    theirs = seal.seal(["o", 0, 1, 0.7, 1], "clinic-other", "caseload")
    _refused(api.get(URL, params={"cursor": theirs}), theirs)
    rotated = CursorSeal(bytes(32)).seal(["o", 0, 1, 0.7, 1], TEST_CLINIC, "caseload")
    _refused(api.get(URL, params={"cursor": rotated}), rotated)


def test_a_bad_cursor_is_a_400_whatever_if_none_match_says(api: TestClient) -> None:
    # The cursor is opened before the tag is compared: a forged one never gets a 304.
    cursor = api.get(URL, params={"limit": 1}).json()["next_cursor"]
    forged = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]

    def get(if_none_match: str) -> Any:
        return api.get(URL, params={"limit": 1, "cursor": forged},
                       headers={"If-None-Match": if_none_match})  # fmt: skip

    _refused(get("*"), forged)
    # The tag such a page would have, were the cursor taken at its word.
    seal = cursor_seal(api.app.state.security.refs)  # type: ignore[attr-defined]
    with api.app.state.client_store.read() as conn:
        version = clinic_version(conn, TEST_CLINIC)
    tag = etag_of(TEST_CLINIC, version, week_cutoff().date(), CaseloadFilters(), forged, 1,
                  seal.fingerprint)  # fmt: skip
    _refused(get(tag), forged)


def test_a_cursor_longer_than_any_issued_is_the_same_400(api: TestClient) -> None:
    # Not FastAPI's 422 of a Query max_length: every bad cursor is one answer.
    for bad in ("A" * (CURSOR_MAX_LENGTH + 1), "A" * 4000):
        _refused(api.get(URL, params={"cursor": bad}), bad)
        _refused(api.get(URL, params={"cursor": bad}, headers={"If-None-Match": "*"}), bad)


def test_a_tag_of_the_previous_format_is_a_200(api: TestClient) -> None:
    # Before the cursors were sealed the tag hashed no key under "caseload/1": a poller holding
    # such a tag (and the clear cursor of its body) must get the new body, not a 304.
    with api.app.state.client_store.read() as conn:
        version = clinic_version(conn, TEST_CLINIC)
    raw = "\x1e".join(("caseload/1", TEST_CLINIC, str(version), week_cutoff().date().isoformat(),
                       CaseloadFilters().key(), "", "1"))  # fmt: skip
    old = '"' + hashlib.sha256(raw.encode()).hexdigest()[:32] + '"'
    answer = api.get(URL, params={"limit": 1}, headers={"If-None-Match": old})
    assert answer.status_code == 200 and answer.headers["etag"] != old
    assert answer.json()["next_cursor"]


def test_a_tag_issued_under_another_cursor_key_is_a_200(api: TestClient) -> None:
    # After the audit key rotates, the first page's body holds a new cursor: its old tag must
    # not answer 304, or the poller keeps the old cursor, which is now a 400.
    first = api.get(URL, params={"limit": 1})
    etag, cursor = first.headers["etag"], first.json()["next_cursor"]
    assert api.get(URL, params={"limit": 1}, headers={"If-None-Match": etag}).status_code == 304
    security = api.app.state.security  # type: ignore[attr-defined]
    api.app.state.security = dataclasses.replace(  # type: ignore[attr-defined]
        security, refs=ClientRefs(bytes(range(100, 132)))
    )
    try:
        again = api.get(URL, params={"limit": 1}, headers={"If-None-Match": etag})
        assert again.status_code == 200 and again.headers["etag"] != etag
        assert again.json()["next_cursor"] not in (None, cursor)
        _refused(api.get(URL, params={"limit": 1, "cursor": cursor}), cursor)
    finally:
        api.app.state.security = security  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "key", [["o", 0, 1, 0.5, 2**63], ["o", 0, 1, 0.5, 10**19], ["o", 0, 1, True, 1],
            ["o", 0, 1, None, True], ["o", 0, 1, 0.5, False], ["o", 0, 1, 0.5, 0],
            ["o", 0, 1, 0.5, -1], ["o", 0, 0, 0.5, 1], ["o", 2, 1, "t-a", 1], ["h", 1],
            ["s", 0.5, 1], ["u", 1]],
)  # fmt: skip
def test_sealed_keys_a_query_cannot_bind_are_400_not_500(api: TestClient, key: list[Any]) -> None:
    seal = cursor_seal(api.app.state.security.refs)  # type: ignore[attr-defined]
    cursor = seal.seal(key, TEST_CLINIC, "caseload")
    _refused(api.get(URL, params={"cursor": cursor}), cursor)


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_changed_since_at_the_ends_of_time_is_422_not_500(api: TestClient, since: str) -> None:
    response = api.get(URL, params={"changed_since": since})
    assert response.status_code == 422, response.text
    assert since not in response.text


#: What JSON (orjson) can carry.
_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)


@settings(max_examples=300, deadline=None)
@given(
    key=st.tuples(
        st.one_of(st.just("o"), st.text(max_size=2)),
        st.one_of(_INTS, st.booleans()),
        st.one_of(_INTS, st.booleans()),
        st.one_of(st.none(), st.floats(allow_nan=False), _INTS, st.booleans(), st.text()),
        st.one_of(_INTS, st.booleans()),
    )
)
def test_decode_cursor_accepts_only_sort_keys_a_query_can_bind(key: tuple[Any, ...]) -> None:
    seal = CursorSeal(bytes(range(32)))
    try:
        anchor = decode_cursor(seal.seal(list(key), "c", "caseload"), BY_RISK, seal, "c")
    except CursorError:
        return
    assert type(anchor.episode_id) is int and 1 <= anchor.episode_id <= 2**63 - 1
    assert key[1] == SORT_KEYS.index("probability") and key[2] == 1
    assert anchor.value is None or (type(anchor.value) is float and not isinstance(key[3], bool))
