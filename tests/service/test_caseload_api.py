"""``GET /v1/clinics/{clinic_id}/caseload`` through ``TestClient(create_app(...))``: rows and
pages, strong ETag and 304, caching headers, tenancy (another clinic is a 404), scopes, errors
that quote nothing, the audit trail, and 503 when the store is down."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from service.app import create_app
from service.settings import ServiceSettings
from service.store.caseload import CaseloadFilters, CursorError, decode_cursor, utc_instant
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
    for params in ({"cursor": "bm90LWEtY3Vyc29y"}, {"limit": 1001}, {"limit": 0},
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


@pytest.mark.parametrize(
    "key", [["u", 2**63], ["s", 0.5, 2**63], ["s", 0.5, 10**19], ["s", True, 1], ["u", True],
            ["s", 0.5, False], ["u", 0], ["s", 0.5, -1]],
)  # fmt: skip
def test_forged_cursors_are_422_not_500(api: TestClient, key: list[Any]) -> None:
    cursor = _cursor(key)
    response = api.get(URL, params={"cursor": cursor})
    assert response.status_code == 422, response.text
    assert cursor not in response.text


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_changed_since_at_the_ends_of_time_is_422_not_500(api: TestClient, since: str) -> None:
    response = api.get(URL, params={"changed_since": since})
    assert response.status_code == 422, response.text
    assert since not in response.text


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(
        st.tuples(st.just("u"), st.one_of(st.integers(), st.booleans())),
        st.tuples(
            st.just("s"),
            st.one_of(st.floats(allow_nan=False), st.integers(), st.booleans()),
            st.one_of(st.integers(), st.booleans()),
        ),
    )
)
def test_decode_cursor_accepts_only_sort_keys_a_query_can_bind(key: tuple[Any, ...]) -> None:
    try:
        decoded = decode_cursor(_cursor(list(key)))
    except CursorError:
        return
    assert decoded is not None
    assert type(decoded.episode_id) is int and 1 <= decoded.episode_id <= 2**63 - 1
    if decoded.probability is not None:
        assert 0.0 <= decoded.probability <= 1.0 and not isinstance(key[1], bool)


OFFSETS = st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                       max_value=timedelta(hours=23, minutes=59))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(moment=st.datetimes(timezones=st.builds(timezone, OFFSETS)))
def test_an_instant_is_utc_or_refused_without_overflow(moment: datetime) -> None:
    try:
        utc = utc_instant(moment)
    except ValueError as exc:
        assert moment.isoformat() not in str(exc)
        return
    assert utc.utcoffset() == timedelta(0) and utc == moment
    assert CaseloadFilters(changed_since=utc).key()
