"""Where a request is authenticated: a token the service has verified before (or an API key) is
checked on the event loop, a thread hop costing more than the check; a token whose signature
must be checked goes to the authentication threads, since fetching its issuer's keys can
block."""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi.testclient import TestClient

from tests.service.conftest import bearer


def test_only_a_signature_check_goes_to_a_thread(
    api: TestClient, dev_key_dir: Path, monkeypatch
) -> None:
    authenticator = api.app.state.security.authenticator  # type: ignore[attr-defined]
    where: list[str] = []
    real = authenticator.authenticate

    def spy(headers, **kwargs):  # type: ignore[no-untyped-def]
        where.append(threading.current_thread().name)
        return real(headers, **kwargs)

    monkeypatch.setattr(authenticator, "authenticate", spy)
    first, second = bearer(dev_key_dir), bearer(dev_key_dir, scopes=("model:read",))
    for headers in (first, first, first, second, second):
        assert api.get("/v1/model", headers=headers).status_code == 200
    # Each token verified once, off the loop; its later requests were checked on the loop.
    assert where == ["AnyIO worker thread"] * 2
    refused = api.get("/v1/model", headers={"Authorization": "Bearer not-a-jwt"})
    assert refused.status_code == 401  # an unknown token is verified (and refused) on a thread
    assert len(where) == 3
