"""Claims of unusual shape (long, control characters, lone surrogates, any unicode) through the
real app: never a 5xx, always exactly one audit line, and no action runs for a refused caller."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.audit_log import records
from service.auth import DEV_AUDIENCE, DEV_ISSUER, DEV_JWKS_FILE, DEV_PRIVATE_KEY_FILE
from service.auth.dev import ensure_dev_keys
from service.settings import ServiceSettings
from tests.service.conftest import ALL_SCOPES, MODEL_NAME, TEST_CLINIC, Registry, security_settings
from tests.service.helpers import request_for

CHAMPION = f"models:/{MODEL_NAME}@champion"
RELOADS = "alliance_risk_model_reloads_total"


def dev_token(key_dir: Path, **claims: Any) -> str:
    """A dev-mode token signed with the dev key, carrying whatever ``claims`` say (the minting
    helper refuses odd subjects; an attacker's issuer would not)."""
    ensure_dev_keys(key_dir)
    key = serialization.load_pem_private_key(
        (key_dir / DEV_PRIVATE_KEY_FILE).read_bytes(), password=None
    )
    kid = json.loads((key_dir / DEV_JWKS_FILE).read_text())["keys"][0]["kid"]
    now = int(time.time())
    payload = {
        "iss": DEV_ISSUER,
        "aud": DEV_AUDIENCE,
        "sub": "dev-user",
        "clinic": TEST_CLINIC,
        "scope": " ".join(ALL_SCOPES),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid})  # type: ignore[arg-type]


def _audit(registry: Registry) -> list:
    path = registry.root / "audit" / "audit.jsonl"
    return list(records(path)) if path.exists() else []


def _reloads(api: TestClient) -> float:
    total = 0.0
    for line in api.get("/metrics").text.splitlines():
        if line.startswith(RELOADS + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def api(registry: Registry, dev_key_dir: Path) -> Iterator[TestClient]:
    settings_ = ServiceSettings(model_uri=CHAMPION, tracking_uri=registry.uri, poll_interval_s=0)
    security = security_settings(dev_key_dir, registry.root / "audit")
    with TestClient(create_app(settings_, configure_logs=False, **security)) as client:
        yield client


BAD_CLAIMS = [
    {"sub": "a" * 300},
    {"clinic": "c" * 257},
    {"sub": "therapist\n7"},
    {"clinic": "clinic-\x00test"},
    {"sub": "x\x7fy"},
    {"sub": "lone \ud800 surrogate"},
    {"clinic": "clinic\u2028test"},
]


@pytest.mark.parametrize("claims", BAD_CLAIMS)
def test_claims_outside_the_audit_shape_get_401_invalid_token(
    api: TestClient, registry: Registry, dev_key_dir: Path, claims: dict[str, str]
) -> None:
    body = request_for(registry.cohort, str(registry.cohort.clients["client_id"].iloc[0]))
    before = len(_audit(registry))
    token = dev_token(dev_key_dir, **claims)
    r = api.post("/v1/risk", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith('Bearer realm="alliance-risk"')
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "probability" not in r.text
    for value in claims.values():
        assert value[:20] not in r.text and value[:20] not in r.headers["www-authenticate"]
    (rec,) = _audit(registry)[before:]
    assert (rec.action, rec.outcome, rec.status) == ("risk.read", "denied", 401)
    assert rec.subject is None and rec.clinic is None and rec.client_ref is None


def test_a_refused_subject_reloads_nothing(
    api: TestClient, registry: Registry, dev_key_dir: Path
) -> None:
    good = {"Authorization": f"Bearer {dev_token(dev_key_dir)}"}
    assert api.post("/v1/admin/reload", headers=good).status_code == 200
    moved = _reloads(api)
    assert moved >= 1  # the counter is there and counts
    before = len(_audit(registry))
    for claims in ({"sub": "a" * 300}, {"sub": "admin\r\nx"}, {"clinic": "c" * 300}):
        token = dev_token(dev_key_dir, **claims)
        r = api.post("/v1/admin/reload", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401
    assert _reloads(api) == moved
    new = _audit(registry)[before:]
    assert [(r.action, r.status) for r in new] == [("model.reload", 401)] * 3


PATHS = [("POST", "/v1/risk"), ("GET", "/v1/model"), ("POST", "/v1/admin/reload")]
CLAIM_TEXT = st.one_of(
    st.text(st.characters(codec=None, exclude_categories=()), max_size=40),
    st.text(max_size=600),
    st.text(st.sampled_from("ab\x00\x1f\x7f\x85\u2028\ud800\udfff é"), max_size=300),
)
#: Any JSON value a token could carry in the claim's place.
CLAIM_VALUE = st.one_of(
    CLAIM_TEXT,
    CLAIM_TEXT,
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False),
    st.lists(st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sub=CLAIM_VALUE, clinic=CLAIM_VALUE, where=st.sampled_from(PATHS))
def test_no_claim_content_gives_a_5xx_and_every_request_is_audited_once(
    api: TestClient, registry: Registry, dev_key_dir: Path, sub: Any, clinic: Any, where
) -> None:
    method, path = where
    body = request_for(registry.cohort, str(registry.cohort.clients["client_id"].iloc[0]))
    token = dev_token(dev_key_dir, sub=sub, clinic=clinic)
    before = len(_audit(registry))
    r = api.request(
        method, path, json=body if path == "/v1/risk" else None,
        headers={"Authorization": f"Bearer {token}"},
    )  # fmt: skip
    assert r.status_code < 500, r.text
    new = _audit(registry)[before:]
    assert len(new) == 1
    assert new[0].status == r.status_code
    if r.status_code == 401:
        assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_no_reload_runs_unless_its_audit_record_is_written(
    api: TestClient, registry: Registry, dev_key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from service.audit import AuditWriteError

    admin = {"Authorization": f"Bearer {dev_token(dev_key_dir)}"}
    MlflowClient(registry.uri, registry.uri).set_registered_model_alias(MODEL_NAME, "champion", "2")
    reloads = _reloads(api)
    log = api.app.state.security.audit
    real = log.write_batch

    def broken(template, clients) -> None:
        raise AuditWriteError("disk full")

    monkeypatch.setattr(log, "write_batch", broken)
    r = api.post("/v1/admin/reload", headers=admin)
    assert r.status_code == 503 and "result" not in r.text
    assert _reloads(api) == reloads and api.app.state.store.current.version == "1"
    monkeypatch.setattr(log, "write_batch", real)
    before = len(_audit(registry))
    r = api.post("/v1/admin/reload", headers=admin)
    assert r.status_code == 200 and r.json()["result"] == "loaded"
    (rec,) = _audit(registry)[before:]  # written before the reload, once
    assert (rec.action, rec.status, rec.request_id) == (
        "model.reload", 200, r.headers["x-request-id"],
    )  # fmt: skip


def test_a_reload_that_fails_after_its_record_adds_the_failure(
    api: TestClient, registry: Registry, dev_key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def explode() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(api.app.state.store, "refresh_in_thread", explode)
    before = len(_audit(registry))
    r = api.post("/v1/admin/reload", headers={"Authorization": f"Bearer {dev_token(dev_key_dir)}"})
    assert r.status_code == 500
    new = _audit(registry)[before:]
    assert [(x.action, x.status) for x in new] == [("model.reload", 200), ("model.reload", 500)]
    assert {x.request_id for x in new} == {r.headers["x-request-id"]}
