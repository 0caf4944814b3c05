"""Dashboard sign-outs kept in the client store: a restart still refuses a signed-out cookie,
expired rows are purged, and a store that cannot be read refuses the cookie with a page that
says why (fail closed)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.store import repository
from service.store.db import Store, StoreUnavailable
from service.store.tables import dashboard_signed_out
from tests.service.conftest import MODEL_NAME, Registry, security_settings
from tests.service.test_dashboard_app import HTTPS, ORIGIN, _cookie, _sign_in, _token


def _app(registry: Registry, keys: Path, tmp_path: Path) -> TestClient:
    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
    )  # fmt: skip
    security = security_settings(keys, tmp_path / "audit")
    return TestClient(create_app(settings, configure_logs=False, **security), base_url=HTTPS)


def _csrf(client: TestClient) -> str:
    return client.get("/dashboard/").text.split('name="csrf" value="')[1].split('"')[0]


def test_a_signed_out_cookie_stays_refused_after_a_restart(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    from service.dashboard import session as sessions

    with _app(registry, dev_key_dir, tmp_path) as before:
        cookie = _cookie(_sign_in(before, _token(dev_key_dir)))
        kept = _cookie(_sign_in(before, _token(dev_key_dir)))  # another session, not signed out
        before.cookies.set(sessions.COOKIE, cookie, path=sessions.COOKIE_PATH)
        out = before.post("/dashboard/sign-out", data={"csrf": _csrf(before)}, headers=ORIGIN,
                          follow_redirects=False)  # fmt: skip
        assert out.status_code == 303
    with _app(registry, dev_key_dir, tmp_path) as after:  # the service restarted
        after.cookies.set(sessions.COOKIE, cookie, path=sessions.COOKIE_PATH)
        assert after.get("/dashboard/", follow_redirects=False).status_code == 303
        after.cookies.set(sessions.COOKIE, kept, path=sessions.COOKIE_PATH)
        assert after.get("/dashboard/").status_code == 200
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with store.read() as conn:
            (digest,) = conn.execute(select(dashboard_signed_out.c.digest)).one()
    finally:
        store.close()
    assert cookie not in digest and len(digest) == 64


def test_expired_sign_outs_are_purged_and_the_list_is_bounded(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        now = repository.now()
        with store.write() as conn:
            assert repository.sign_out(conn, "a" * 64, now - timedelta(seconds=1), 10)
            assert repository.sign_out(conn, "b" * 64, now + timedelta(minutes=5), 10)
            assert repository.sign_out(conn, "b" * 64, now + timedelta(minutes=5), 10)  # again
        with store.read() as conn:
            assert not repository.is_signed_out(conn, "a" * 64)  # expired
            assert repository.is_signed_out(conn, "b" * 64)
        with store.write() as conn:
            assert repository.sign_out(conn, "c" * 64, now + timedelta(minutes=5), 10)
            count = select(func.count()).select_from(dashboard_signed_out)
            assert conn.execute(count).scalar_one() == 2  # "a" purged
            assert not repository.sign_out(conn, "d" * 64, now + timedelta(minutes=5), 2)
    finally:
        store.close()


def test_an_unreadable_store_refuses_the_cookie_with_a_page_that_says_why(
    registry: Registry, dev_key_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @contextlib.contextmanager
    def down() -> Iterator[None]:
        raise StoreUnavailable()
        yield

    with _app(registry, dev_key_dir, tmp_path) as client:
        _sign_in(client, _token(dev_key_dir))
        csrf = _csrf(client)
        store = client.app.state.client_store  # type: ignore[attr-defined]
        monkeypatch.setattr(store, "read", down)
        monkeypatch.setattr(store, "write", down)
        for answer in (
            client.get("/dashboard/", follow_redirects=False),
            client.post("/dashboard/sign-out", data={"csrf": csrf}, headers=ORIGIN,
                        follow_redirects=False),
        ):  # fmt: skip
            assert answer.status_code == 503
            assert "Retry-After" in answer.headers
            assert "client store cannot be reached" in answer.text
            assert "Caseload</h1>" not in answer.text and "Sign out" not in answer.text
        monkeypatch.undo()
        assert client.get("/dashboard/").status_code == 200  # back, and still signed in
    audit = [
        json.loads(line) for line in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    refused = [r for r in audit if r["action"] == "dashboard.caseload" and r["status"] == 503]
    assert refused and {r["outcome"] for r in refused} == {"denied"}


def test_a_sign_out_past_the_bound_is_refused_and_the_cookie_kept(
    registry: Registry, dev_key_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Past max_entries a sign-out cannot be kept: deleting the cookie anyway would tell the
    # clinician they are signed out while a copy of the cookie stays valid. It is refused.
    from service.dashboard import session as sessions

    with _app(registry, dev_key_dir, tmp_path) as client:
        first = _cookie(_sign_in(client, _token(dev_key_dir)))
        second = _cookie(_sign_in(client, _token(dev_key_dir)))
        store = client.app.state.client_store  # type: ignore[attr-defined]
        client.app.state.dashboard_signed_out = sessions.StoreSignedOut(store, max_entries=1)  # type: ignore[attr-defined]
        client.cookies.set(sessions.COOKIE, first, path=sessions.COOKIE_PATH)
        out = client.post("/dashboard/sign-out", data={"csrf": _csrf(client)}, headers=ORIGIN,
                          follow_redirects=False)  # fmt: skip
        assert out.status_code == 303
        client.cookies.set(sessions.COOKIE, second, path=sessions.COOKIE_PATH)
        with caplog.at_level("WARNING", logger="service.dashboard.session"):
            full = client.post("/dashboard/sign-out", data={"csrf": _csrf(client)},
                               headers=ORIGIN, follow_redirects=False)  # fmt: skip
        assert full.status_code == 503 and "Retry-After" in full.headers
        assert "could not be recorded and you are still signed in" in full.text
        assert sessions.COOKIE not in full.headers.get("set-cookie", "")  # cookie not dropped
        assert client.get("/dashboard/", follow_redirects=False).status_code == 200
        warned = [r.getMessage() for r in caplog.records if r.name == "service.dashboard.session"]
        assert len(warned) == 1 and "sign-out refused" in warned[0]
        assert second not in warned[0] and "sid" not in warned[0]


def test_the_in_process_list_refuses_past_its_bound_too() -> None:
    from service.auth import Principal
    from service.dashboard import session as sessions

    principal = Principal(subject="s", clinic="c", scopes=frozenset({"clients:read"}),
                          token_id="t", method="api_key", issuer=None)  # fmt: skip
    kept = sessions.SignedOut(max_entries=1)
    a, b = sessions.new_session(principal), sessions.new_session(principal)
    kept.add(a)
    kept.add(a)  # again: no new entry
    with pytest.raises(sessions.SignOutsFull):
        kept.add(b)
    assert a in kept and b not in kept
