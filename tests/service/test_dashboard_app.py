"""The dashboard's routes through the app (no browser): sign-in with the service's
authenticator, the session cookie, CSRF, headers, tenancy, audit and what the pages print."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings
from tests.service.helpers import SENT_CLIENT_IDS, request_for

HTTPS = "https://testserver"  # the cookie is Secure: the test client only sends it over https
ORIGIN = {"Origin": HTTPS}


@pytest.fixture
def dash(registry: Registry, dev_key_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The app with a SQLite client store holding three clients of TEST_CLINIC and one of
    another clinic; the client sends no credential of its own."""
    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
    )  # fmt: skip
    app = create_app(settings, configure_logs=False,
                     **security_settings(dev_key_dir, tmp_path / "audit"))  # fmt: skip
    with TestClient(app, base_url=HTTPS) as client:
        ids = list(registry.cohort.clients["client_id"].iloc[:4])
        for i, cid in enumerate(ids):
            clinic = TEST_CLINIC if i < 3 else "clinic-other"
            body = request_for(registry.cohort, cid, clinic=clinic)
            SENT_CLIENT_IDS.add(cid)
            client_fields = {"therapist_id": f"t-{i % 2}", "intake_date": body["intake_date"]}
            answer = client.post(
                f"/v1/clients/{cid}/sessions",
                json={"client": client_fields, "sessions": body["sessions"]},
                headers=bearer(dev_key_dir, clinic, ("clients:write",)),
            )
            assert answer.status_code in (200, 201), answer.text
        client.ids = ids  # type: ignore[attr-defined]
        client.audit = tmp_path / "audit" / "audit.jsonl"  # type: ignore[attr-defined]
        yield client


def _token(key_dir: Path, scopes=("clients:read",), clinic: str = TEST_CLINIC) -> str:
    return bearer(key_dir, clinic, scopes)["Authorization"].split()[1]


def _sign_in(client: TestClient, token: str, headers=ORIGIN):
    return client.post("/dashboard/sign-in", data={"credential": token}, headers=headers,
                       follow_redirects=False)  # fmt: skip


def test_pages_need_a_session(dash: TestClient) -> None:
    answer = dash.get("/dashboard/", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/sign-in"
    page = dash.get("/dashboard/sign-in")
    assert page.status_code == 200 and "access token" in page.text
    assert "script-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    # A bearer token sent as a header is not a session: the pages take the cookie only.
    assert dash.get("/dashboard/", headers=bearer(Path("/nonexistent")), follow_redirects=False
                    ).status_code == 303  # fmt: skip


def test_sign_in_sets_a_signed_cookie_without_the_token(
    dash: TestClient, dev_key_dir: Path
) -> None:
    token = _token(dev_key_dir)
    answer = _sign_in(dash, token)
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/"
    cookie = answer.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/dashboard", "Max-Age=1800"):
        assert flag.lower() in cookie.lower()
    assert token not in cookie and token.split(".")[1] not in cookie
    page = dash.get("/dashboard/")
    assert page.status_code == 200
    assert page.text.count("<tr>") == 1 + 3  # heading row and this clinic's three clients
    assert dash.ids[3] not in page.text  # type: ignore[attr-defined]
    assert "no-store" in page.headers["cache-control"]


def test_failed_sign_in_says_little_and_is_audited(dash: TestClient, dev_key_dir: Path) -> None:
    answer = _sign_in(dash, _token(dev_key_dir)[:-6] + "AAAAAA")
    assert answer.status_code == 401
    assert "Sign-in failed: the key or token was not accepted" in answer.text
    assert "signature" not in answer.text and "set-cookie" not in answer.headers
    no_scope = _sign_in(dash, _token(dev_key_dir, scopes=("risk:read",)))
    assert no_scope.status_code == 403 and "clients:read" in no_scope.text
    records = [json.loads(line) for line in dash.audit.read_text().splitlines()]  # type: ignore[attr-defined]
    signs = [r for r in records if r["action"] == "dashboard.sign_in"]
    assert [r["outcome"] for r in signs] == ["denied", "denied"]
    assert signs[1]["clinic"] == TEST_CLINIC


def test_sign_in_from_another_site_is_refused(dash: TestClient, dev_key_dir: Path) -> None:
    answer = _sign_in(dash, _token(dev_key_dir), headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers
    assert _sign_in(dash, _token(dev_key_dir), headers={}).status_code == 403


def test_sign_out_needs_the_csrf_token_and_this_origin(dash: TestClient, dev_key_dir: Path) -> None:
    _sign_in(dash, _token(dev_key_dir))
    page = dash.get("/dashboard/").text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    for data, headers in (({}, ORIGIN), ({"csrf": "wrong"}, ORIGIN),
                          ({"csrf": csrf}, {"Origin": "https://evil.example"})):  # fmt: skip
        refused = dash.post("/dashboard/sign-out", data=data, headers=headers,
                            follow_redirects=False)  # fmt: skip
        assert refused.status_code == 403
    assert dash.get("/dashboard/").status_code == 200  # still signed in
    out = dash.post("/dashboard/sign-out", data={"csrf": csrf}, headers=ORIGIN,
                    follow_redirects=False)  # fmt: skip
    assert out.status_code == 303 and 'alliance_risk_dashboard=""' in out.headers["set-cookie"]
    assert dash.get("/dashboard/", follow_redirects=False).status_code == 303


def test_client_page_and_tenancy(dash: TestClient, dev_key_dir: Path) -> None:
    _sign_in(dash, _token(dev_key_dir))
    mine, theirs = dash.ids[0], dash.ids[3]  # type: ignore[attr-defined]
    page = dash.get(f"/dashboard/clients/{mine}")
    assert page.status_code == 200
    assert f"Client {mine}" in page.text and 'class="trajectory"' in page.text
    assert "Model version" in page.text and '<ol class="drivers">' in page.text
    # Each driver's direction as the API gives it (the page once said "lowers" for all).
    for cid in dash.ids[:3]:  # type: ignore[attr-defined]
        risk = dash.get(f"/v1/clients/{cid}/risk", headers=bearer(dev_key_dir, TEST_CLINIC,
                                                                  ("clients:read",))).json()  # fmt: skip
        words = [d["direction"].split()[0] for d in risk["explanation"]["drivers"]]
        shown = re.findall(
            r"\((raises|lowers) the risk\)", dash.get(f"/dashboard/clients/{cid}").text
        )
        assert shown == words
    other = dash.get(f"/dashboard/clients/{theirs}")
    missing = dash.get("/dashboard/clients/no-such-client")
    assert other.status_code == missing.status_code == 404
    assert other.text.replace(theirs, "X") == missing.text.replace("no-such-client", "X")
    audit = dash.audit.read_text()  # type: ignore[attr-defined]
    assert mine not in audit and theirs not in audit
    reads = [json.loads(line) for line in audit.splitlines() if "dashboard.client" in line]
    assert [r["outcome"] for r in reads] == ["ok"] * 4 + ["not_found"] * 2
    assert all(r.get("client_ref") for r in reads)


def test_caseload_filters_and_bad_cursor(dash: TestClient, dev_key_dir: Path) -> None:
    _sign_in(dash, _token(dev_key_dir))
    only = dash.get("/dashboard/", params={"therapist": "t-1"}).text
    assert only.count("<tr>") == 1 + 1
    assert dash.get("/dashboard/", params={"cursor": "garbage"}).status_code == 400
    # Longer than any cursor the store issues: the same 400 page, not a 422.
    long = dash.get("/dashboard/", params={"cursor": "A" * 2000})
    assert long.status_code == 400 and "That page link has expired" in long.text
    sorted_page = dash.get("/dashboard/", params={"sort": "client", "order": "asc"}).text
    assert 'aria-sort="ascending"' in sorted_page


def test_caseload_pages_follow_the_cursor(
    dash: TestClient, dev_key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.dashboard import source

    monkeypatch.setattr(source, "PAGE_ROWS", 2)
    _sign_in(dash, _token(dev_key_dir))
    first = dash.get("/dashboard/").text
    assert first.count("<tr>") == 1 + 2
    link = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
    assert link is not None
    second = dash.get(link.group(1).replace("&amp;", "&")).text
    assert second.count("<tr>") == 1 + 1 and 'rel="next"' not in second
    shown = re.findall(r'<a href="/dashboard/clients/([^"]+)">', first + second)
    assert sorted(shown) == sorted(dash.ids[:3])  # type: ignore[attr-defined]


def test_a_changed_or_foreign_cursor_is_a_plain_400(
    dash: TestClient, dev_key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.dashboard import source
    from service.store.caseload import CaseloadOrder, encode_cursor
    from service.store.deps import cursor_seal

    monkeypatch.setattr(source, "PAGE_ROWS", 1)
    _sign_in(dash, _token(dev_key_dir))
    first = dash.get("/dashboard/?sort=therapist&order=asc").text
    link = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
    assert link is not None
    cursor = re.search(r"cursor=([^&\"]+)", link.group(1))
    assert cursor is not None
    good = cursor.group(1)
    assert dash.get(link.group(1).replace("&amp;", "&")).status_code == 200
    seal = cursor_seal(dash.app.state.security.refs)  # type: ignore[attr-defined]
    foreign = encode_cursor(seal, "clinic-other", CaseloadOrder("therapist", False), "t-0", 1)
    tampered = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
    for bad in (tampered, foreign, good + "AA", "garbage"):
        answer = dash.get("/dashboard/", params={"sort": "therapist", "order": "asc",
                                                 "cursor": bad})  # fmt: skip
        assert answer.status_code == 400
        assert "That page link has expired. Start again from the first page." in answer.text


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_sort_orders_the_whole_caseload_not_one_page(
    dash: TestClient, dev_key_dir: Path, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    # One row a page: sorting the rows of each page would list them in the risk order.
    from service.dashboard import source

    monkeypatch.setattr(source, "PAGE_ROWS", 1)
    _sign_in(dash, _token(dev_key_dir))
    url: str | None = f"/dashboard/?sort=client&order={order}"
    shown: list[str] = []
    while url is not None:
        page = dash.get(url).text
        assert "orders the rows of this page" not in page
        shown += re.findall(r'<a href="/dashboard/clients/([^"]+)">', page)
        link = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', page)
        url = None if link is None else link.group(1).replace("&amp;", "&")
        assert len(shown) <= 3
    assert shown == sorted(dash.ids[:3], reverse=order == "desc")  # type: ignore[attr-defined]


def test_sign_in_attempts_are_rate_limited(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
    )  # fmt: skip
    limits = {"rate_per_token_per_s": 0.01, "burst_per_token": 2}
    app = create_app(settings, configure_logs=False,
                     **security_settings(dev_key_dir, tmp_path / "audit", **limits))  # fmt: skip
    with TestClient(app, base_url=HTTPS) as client:
        wrong = _token(dev_key_dir)[:-6] + "AAAAAA"
        assert [_sign_in(client, wrong).status_code for _ in range(2)] == [401, 401]
        refused = _sign_in(client, _token(dev_key_dir))  # even a good token must wait now
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        assert "set-cookie" not in refused.headers


def test_a_session_ends_with_its_token(dash: TestClient, dev_key_dir: Path) -> None:
    from service.auth import mint_dev_token

    token = mint_dev_token(TEST_CLINIC, ("clients:read",), ttl_s=60, key_dir=dev_key_dir)
    cookie = _sign_in(dash, token).headers["set-cookie"]
    max_age = int(re.search(r"Max-Age=(\d+)", cookie, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    assert 50 <= max_age <= 60


# -- review of issue 21: audit, revocation, main reason ---------------------------------------


def _audit(client: TestClient, action: str) -> list[dict]:
    lines = client.audit.read_text().splitlines()  # type: ignore[attr-defined]
    return [r for r in map(json.loads, lines) if r["action"] == action]


def test_caseload_audits_every_listed_client(dash: TestClient, dev_key_dir: Path) -> None:
    _sign_in(dash, _token(dev_key_dir))
    assert dash.get("/dashboard/").status_code == 200
    refs = dash.app.state.security.refs  # type: ignore[attr-defined]
    records = _audit(dash, "dashboard.caseload")
    expected = sorted(refs.client_ref(TEST_CLINIC, c) for c in dash.ids[:3])  # type: ignore[attr-defined]
    assert sorted(r["client_ref"] for r in records) == expected
    assert {(r["outcome"], r["status"]) for r in records} == {("ok", 200)}


def test_requests_without_a_valid_session_are_audited_denied(dash: TestClient) -> None:
    from service.dashboard import session as sessions

    forged = {sessions.COOKIE: "eyJzdWIiOiJ4In0.forged.signature"}
    for cookies in ({}, forged):
        dash.cookies.clear()
        dash.cookies.update(cookies)
        assert dash.get("/dashboard/", follow_redirects=False).status_code == 303
        assert dash.get(f"/dashboard/clients/{dash.ids[0]}", follow_redirects=False  # type: ignore[attr-defined]
                        ).status_code == 303  # fmt: skip
    refused = _audit(dash, "dashboard.caseload") + _audit(dash, "dashboard.client")
    assert len(refused) == 4
    assert {(r["outcome"], r["status"], r["client_ref"]) for r in refused} == {
        ("denied", 303, None)
    }


def _cookie(answer) -> str:
    return answer.headers["set-cookie"].split(";")[0].split("=", 1)[1]


def test_a_signed_out_cookie_is_refused(dash: TestClient, dev_key_dir: Path) -> None:
    from service.dashboard import session as sessions

    cookie = _cookie(_sign_in(dash, _token(dev_key_dir)))
    csrf = dash.get("/dashboard/").text.split('name="csrf" value="')[1].split('"')[0]
    out = dash.post("/dashboard/sign-out", data={"csrf": csrf}, headers=ORIGIN,
                    follow_redirects=False)  # fmt: skip
    assert out.status_code == 303
    dash.cookies.set(sessions.COOKIE, cookie, path=sessions.COOKIE_PATH)  # a copy kept
    assert dash.get("/dashboard/", follow_redirects=False).status_code == 303
    # Another session of the same clinician is not affected.
    _sign_in(dash, _token(dev_key_dir))
    assert dash.get("/dashboard/").status_code == 200


def test_an_api_key_session_ends_when_its_key_is_gone(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    from service.app import create_app
    from service.auth import AuthSettings, hash_api_key
    from service.dashboard import session as sessions
    from service.settings import ServiceSettings

    key = "k" * 40
    keys = tmp_path / "keys.json"
    entry = {"id": "front-desk", "hash": hash_api_key(key), "clinic": TEST_CLINIC,
             "scopes": ["clients:read"]}  # fmt: skip
    other = {**entry, "id": "other", "hash": hash_api_key("o" * 40)}
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
    )  # fmt: skip

    def app(*entries: dict):
        keys.write_text(json.dumps({"keys": list(entries)}))
        security = security_settings(dev_key_dir, tmp_path / "audit")
        security["auth"] = AuthSettings(mode="api_key", api_keys_file=keys)
        return create_app(settings, configure_logs=False, **security)

    with TestClient(app(entry, other), base_url=HTTPS) as client:
        cookie = _cookie(_sign_in(client, key))
        assert client.get("/dashboard/").status_code == 200
    # A restart with the key removed from the keys file (same audit key, so the cookie's
    # signature still holds): the session is over.
    with TestClient(app(other), base_url=HTTPS) as client:
        client.cookies.set(sessions.COOKIE, cookie, path=sessions.COOKIE_PATH)
        assert client.get("/dashboard/", follow_redirects=False).status_code == 303
    with TestClient(app(entry, other), base_url=HTTPS) as client:  # the key back: valid again
        client.cookies.set(sessions.COOKIE, cookie, path=sessions.COOKIE_PATH)
        assert client.get("/dashboard/").status_code == 200


def test_main_reason_is_a_factor_that_raises_the_risk(dash: TestClient, dev_key_dir: Path) -> None:
    from service.store.repository import NO_RAISING_DRIVER

    _sign_in(dash, _token(dev_key_dir))
    page = dash.get("/dashboard/").text
    shown = re.findall(r'<td class="driver">([^<]*)</td>', page)
    assert len(shown) == 3
    for cid in dash.ids[:3]:  # type: ignore[attr-defined]
        risk = dash.get(f"/v1/clients/{cid}/risk", headers=bearer(dev_key_dir, TEST_CLINIC,
                                                                  ("clients:read",))).json()  # fmt: skip
        raising = [d for d in risk["explanation"]["drivers"] if d["direction"] == "raises risk"]
        if raising:
            top = max(raising, key=lambda d: d["contribution"])
            expected = top["text"]
        else:
            expected = NO_RAISING_DRIVER
        assert expected in shown
    # The heading says it raises the risk; the sentence reads as the driver's own, with at most
    # the parenthesis it has itself.
    assert not [s for s in shown if "(raises the risk)" in s or ") (" in s]


def test_a_sign_out_holds_in_every_worker_sharing_the_store(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    """Two apps on one client store stand for two workers of serve --workers 2 (their shared
    folder no longer carries the list: the store does)."""
    from service.app import create_app
    from service.dashboard import session as sessions
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
    )  # fmt: skip

    def worker():
        security = security_settings(dev_key_dir, tmp_path / "audit")
        return TestClient(create_app(settings, configure_logs=False, **security), base_url=HTTPS)

    with worker() as one, worker() as two:
        cookie = _cookie(_sign_in(one, _token(dev_key_dir)))
        two.cookies.set(sessions.COOKIE, cookie, path=sessions.COOKIE_PATH)
        assert two.get("/dashboard/").status_code == 200  # the same session in both
        csrf = one.get("/dashboard/").text.split('name="csrf" value="')[1].split('"')[0]
        assert one.post("/dashboard/sign-out", data={"csrf": csrf}, headers=ORIGIN,
                        follow_redirects=False).status_code == 303  # fmt: skip
        assert two.get("/dashboard/", follow_redirects=False).status_code == 303
