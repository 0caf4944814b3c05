"""schemathesis against the service's own OpenAPI schema, with a bounded number of examples:
no 5xx, every response conforms to its documented schema, and every ``/v1`` operation refuses
unauthenticated calls with 401. The CDS Hooks operations are reached too (the app is configured
for them, and each call carries a fresh CDS JWT for its endpoint)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi import checks as oa_checks

from service.app import create_app
from service.audit import is_audit_text
from service.auth.dev import DEV_ISSUER, _load_dev_private_key, ensure_dev_keys
from service.cds.services import SERVICES
from service.settings import ServiceSettings
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings

#: Examples per operation: enough to reach every field's edge cases, bounded for CI time.
MAX_EXAMPLES = 30
#: The CDS Hooks services' public URL (the audience of their tokens names it).
CDS_PUBLIC_URL = "http://testserver"


@pytest.fixture
def fuzz_schema(registry: Registry, dev_key_dir: Path) -> Iterator[object]:
    settings_ = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0,
        cds_public_url=CDS_PUBLIC_URL, store_url=f"sqlite:///{registry.root / 'store.db'}",
    )  # fmt: skip
    app = create_app(settings_, configure_logs=False,
                     **security_settings(dev_key_dir, registry.root / "audit"))  # fmt: skip
    with TestClient(app):  # runs the lifespan: the model is loaded before the first case
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def _cds_token(key_dir: Path, path: str) -> dict[str, str]:
    """A dev-signed CDS Hooks JWT for the endpoint ``path`` (aud), with a fresh jti: each call
    spends one (single use)."""
    private, jwks = ensure_dev_keys(key_dir)
    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "aud": f"{CDS_PUBLIC_URL}{path}", "iat": now, "exp": now + 60,
              "jti": uuid.uuid4().hex, "clinic": TEST_CLINIC}  # fmt: skip
    token = jwt.encode(claims, _load_dev_private_key(private), algorithm="ES256",
                       headers={"kid": jwks["keys"][0]["kid"], "typ": "JWT"})  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


def _on_a_cds_service(case) -> None:
    """Most generated service ids name a real service (an unknown one is a 404 before the
    body is read) and most hook bodies its hook; one in four keeps what was generated."""
    given_id = str(case.path_parameters.get("service_id", ""))
    if len(given_id) % 4:
        case.path_parameters["service_id"] = sorted(SERVICES)[len(given_id) % 2]
    service = SERVICES.get(case.path_parameters["service_id"])
    body = case.body
    # Likewise the hook: a generated one is never the service's (a 400 before the prefetch).
    keep = not len(str(body.get("hookInstance", ""))) % 4 if isinstance(body, dict) else True
    if service is not None and not keep and isinstance(body.get("hook"), str):
        body["hook"] = service.hook


def _token_for(body: object, key_dir: Path) -> dict[str, str] | None:
    """A token for the clinic the generated body names, so cases get past tenancy (a 404)
    and exercise validation and scoring."""
    if isinstance(body, dict) and isinstance(body.get("clients"), list) and body["clients"]:
        body = body["clients"][0]
    clinic = body.get("clinic_id") if isinstance(body, dict) else None
    # No token names a clinic the audit record could not hold (the service refuses those).
    if not is_audit_text(clinic) or not clinic.strip():
        return None
    return bearer(key_dir, clinic=clinic)


def test_operations_conform_and_need_a_token(fuzz_schema, dev_key_dir: Path) -> None:
    auth = bearer(dev_key_dir)
    seen = []
    statuses: dict[str, list[int]] = {}
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)  # fmt: skip
        @given(case=operation.as_strategy())
        def check(case) -> None:
            cds = case.path.startswith("/cds-services/")
            if cds:
                _on_a_cds_service(case)
                headers = _cds_token(dev_key_dir, case.formatted_path)
            else:
                headers = _token_for(case.body, dev_key_dir) or auth
            response = case.call_and_validate(
                headers=headers,
                # Schema-valid bodies can still break contract rules the schema cannot express
                # (which rating keys the served model's profile has, dates going backwards, a
                # session before intake): those are correct 422s, not a failure to accept
                # valid data.
                excluded_checks=[oa_checks.positive_data_acceptance],
            )
            statuses.setdefault(f"{case.method} {case.path}", []).append(response.status_code)
            if case.path.startswith(("/v1/", "/fhir/Patient/")) or (
                cds and case.path_parameters["service_id"] in SERVICES
            ):
                response = case.call(headers={"Authorization": ""})
                assert response.status_code == 401, (case.method, case.path)

        check()
    assert {"POST /v1/risk", "POST /v1/risk/batch", "GET /v1/model", "POST /v1/admin/reload",
            "GET /livez", "GET /readyz", "POST /fhir/Patient/$dropout-risk"} <= set(seen)  # fmt: skip
    # The endpoints with inputs were exercised many times and saw more than one outcome.
    assert len(statuses["POST /v1/risk"]) >= 20 and len(statuses["POST /v1/risk/batch"]) >= 20
    assert len(set(statuses["POST /v1/risk"])) > 1, statuses["POST /v1/risk"]
    # The CDS operations were reached past authentication, with more than one outcome (every
    # call was a 503 before: the app had no cds_public_url). Generated feedback is valid, so
    # it is stored (200), or its service unknown (404).
    hook, feedback = (
        statuses[f"POST /cds-services/{{service_id}}{end}"] for end in ("", "/feedback")
    )
    assert len(hook) >= 20 and len(set(hook) - {401, 404, 503}) > 1, hook
    assert len(feedback) >= 20 and 200 in feedback and len(set(feedback)) > 1, feedback
