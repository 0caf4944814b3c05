"""Request ids are ours, the caller's is kept apart as a keyed pseudonym (correlation_ref); every
/v1 request is audited (unrouted ones too); /v1 responses are never cached; the security schemes
are in OpenAPI."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.audit import AuditRecord, client_ref, correlation_ref, unscoped_ref
from service.audit_log import AuditSettings, records
from service.logs import JsonFormatter
from service.security import AUDITED, AUDITED_PREFIXES, UNROUTED
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry
from tests.service.helpers import request_for

CHAMPION = f"models:/{MODEL_NAME}@champion"


def _audit(registry: Registry) -> list[AuditRecord]:
    path = registry.root / "audit" / "audit.jsonl"
    return list(records(path)) if path.exists() else []


def _body(registry: Registry) -> dict:
    return request_for(registry.cohort, str(registry.cohort.clients["client_id"].iloc[0]))


def _audit_key(registry: Registry) -> bytes:
    """The key an auditor holds (the test app's key file)."""
    return AuditSettings(key_file=registry.root / "audit" / "audit.key").load_key()


@contextlib.contextmanager
def _access_lines() -> Iterator[list[str]]:
    """The access log's lines (as the JSON formatter writes them) while the block runs."""
    lines: list[str] = []
    formatter = JsonFormatter()
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(formatter.format(record))  # type: ignore[method-assign]
    access = logging.getLogger("service.access")
    level = access.level  # other tests' logging set-ups may have raised the effective level
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        access.removeHandler(handler)
        access.setLevel(level)


def test_a_caller_s_request_id_is_a_correlation_ref_never_our_request_id(
    api: TestClient, registry: Registry
) -> None:
    body = _body(registry)
    before = len(_audit(registry))
    sent = "caller-trace-0001"
    answers = [api.post("/v1/risk", json=body, headers={"X-Request-ID": sent}) for _ in range(2)]
    new = _audit(registry)[before:]
    assert len(new) == 2
    ours = [r.headers["x-request-id"] for r in answers]
    assert ours[0] != ours[1] and sent not in ours
    assert [r.request_id for r in new] == ours
    # What an auditor holding the key computes, by hand and with the documented function.
    label = b"\xffalliance-risk correlation_ref v2\x00"
    expected = hmac.new(_audit_key(registry), label + sent.encode(), hashlib.sha256).hexdigest()
    assert expected == correlation_ref(sent, _audit_key(registry))
    assert [r.correlation_ref for r in new] == [expected, expected]
    assert [r.headers["x-correlation-id"] for r in answers] == [sent, sent]  # to the caller only
    assert all(r.json()["request_id"] == r.headers["x-request-id"] for r in answers)


def test_a_client_id_sent_as_x_request_id_is_in_no_audit_or_access_log_line(
    api: TestClient, registry: Registry
) -> None:
    # A caller chooses X-Request-ID freely; a tester put a client id there (issue 18 re-test).
    clients = registry.cohort.clients["client_id"].astype(str)
    planted = str(clients.iloc[1])
    path = registry.root / "audit" / "audit.jsonl"
    before = path.read_bytes() if path.exists() else b""
    body = _body(registry)
    sent = {"X-Request-ID": planted}
    with _access_lines() as logged:
        answers = [
            api.post("/v1/risk", json=body, headers=sent),
            api.post("/v1/risk/batch", json={"clients": [body, body]}, headers=sent),
            api.get("/v1/model", headers=sent),
            api.get("/v1/nothing-here", headers=sent),
            api.post("/v1/risk", json=body, headers={**sent, "Authorization": ""}),
            api.get("/livez", headers=sent),
        ]
    assert [r.status_code for r in answers] == [200, 200, 200, 404, 401, 200]
    written = path.read_bytes()[len(before) :]
    assert written.count(b"\n") == 6  # one per request, two for the batch of two, none for /livez
    assert planted.encode() not in written
    assert len(logged) == 6 and all(planted not in line for line in logged)
    key = _audit_key(registry)
    ref = correlation_ref(planted, key)
    assert all(json.loads(line)["correlation_ref"] == ref for line in written.splitlines())
    # Nor does the caller's ref equal the planted client's ref, scoped or of older records.
    assert ref not in {client_ref(TEST_CLINIC, planted, key), unscoped_ref(planted, key)}
    assert all(ref in line for line in logged)


@pytest.mark.parametrize("sent", ["x" * 65, "a b", "id\u00e9", "semi;colon", ""])
def test_a_caller_id_of_another_shape_is_dropped(
    api: TestClient, registry: Registry, sent: str
) -> None:
    before = len(_audit(registry))
    r = api.get("/v1/model", headers={"X-Request-ID": sent.encode("utf-8")})
    assert r.status_code == 200
    assert "x-correlation-id" not in r.headers
    (rec,) = _audit(registry)[before:]
    assert rec.correlation_ref is None and rec.request_id == r.headers["x-request-id"]
    assert "correlation_ref" not in json.loads(rec.to_json())  # a line as before the field


def test_audit_lines_without_a_correlation_ref_still_read(tmp_path: Path) -> None:
    old = (
        '{"time":"2026-09-01T12:00:00.000Z","subject":"s","clinic":"c","client_ref":null,'
        '"action":"model.read","outcome":"ok","status":200,"request_id":"r1","model_version":"3"}'
    )
    path = tmp_path / "audit.jsonl"
    path.write_text(old + "\n")
    (rec,) = records(path)
    assert rec.correlation_ref is None and rec.to_json() == old


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v1/risk/", 307),  # the trailing-slash redirect
        ("GET", "/v1/nothing-here", 404),
        ("POST", "/v1/admin/reload/extra", 404),
        ("GET", "/v1", 404),
    ],
)
def test_unrouted_v1_requests_leave_one_audit_line(
    api: TestClient, registry: Registry, method: str, path: str, status: int
) -> None:
    before = len(_audit(registry))
    r = api.request(method, path, json=_body(registry), follow_redirects=False)
    assert r.status_code == status
    (rec,) = _audit(registry)[before:]
    assert (rec.action, rec.status, rec.request_id) == (UNROUTED, status, r.headers["x-request-id"])
    assert rec.client_ref is None
    assert r.headers["cache-control"] == "no-store"


def test_every_v1_route_has_its_own_audit_action(api: TestClient) -> None:
    # A new audited route (/v1, /fhir, /cds-services, /dashboard) missing from AUDITED would be
    # recorded as unrouted. The dashboard's pages are left out of OpenAPI: added from its router.
    from service.dashboard.routes import router as dashboard

    documented = [*api.get("/openapi.json").json()["paths"], *(r.path for r in dashboard.routes)]
    paths = {p for p in documented
             if any(p == x or p.startswith(x + "/") for x in AUDITED_PREFIXES)}  # fmt: skip
    assert paths == set(AUDITED)


def test_v1_responses_are_not_stored_by_caches(api: TestClient, registry: Registry) -> None:
    body = _body(registry)
    bad = {**body, "sessions": "not a list"}
    answers = [
        api.post("/v1/risk", json=body),
        api.post("/v1/risk/batch", json={"clients": [body]}),
        api.post("/v1/risk", json=bad),
        api.post("/v1/risk", json=body, headers={"Authorization": ""}),
        api.post("/v1/risk/batch", json={"clients": "x"}),
        api.get("/v1/model"),
    ]
    assert [r.status_code for r in answers] == [200, 200, 422, 401, 422, 200]
    assert all(r.headers["cache-control"] == "no-store" for r in answers)
    assert "no-store" not in api.get("/livez").headers.get("cache-control", "")


def test_openapi_declares_bearer_and_api_key_on_every_v1_operation(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": schemes["bearer"]["description"],
    }  # fmt: skip
    assert (schemes["apiKey"]["type"], schemes["apiKey"]["in"]) == ("apiKey", "header")
    assert schemes["apiKey"]["name"] == "X-API-Key"
    operations = {
        (path, method): op for path, ops in schema["paths"].items() for method, op in ops.items()
    }
    # /v1 and the FHIR operation take the service's credentials.
    secured = ("/v1/", "/fhir/Patient/")
    v1 = {k: op for k, op in operations.items() if k[0].startswith(secured)}
    assert len(v1) == 12  # risk x3, model x2, FHIR, the client store x5, caseload
    for op in v1.values():
        assert op["security"] == [{"bearer": []}, {"apiKey": []}]
        # The declarations add no parameters of their own (the headers are not documented twice).
        names = {p["name"].lower() for p in op.get("parameters", [])}
        assert not names & {"authorization", "x-api-key"}
    others = {k: op for k, op in operations.items() if not k[0].startswith(secured)}
    assert others and all("security" not in op for op in others.values())


def test_the_declared_schemes_do_not_check_credentials(api: TestClient) -> None:
    # HTTPBearer and APIKeyHeader would accept any bearer string; the authenticator refuses it.
    r = api.get("/v1/model", headers={"Authorization": "Bearer not.a.jwt", "X-API-Key": "x" * 40})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_the_access_log_line_carries_our_id_and_the_caller_s_ref_apart(
    api: TestClient, registry: Registry
) -> None:
    with _access_lines() as logged:
        r = api.get("/v1/model", headers={"X-Request-ID": "caller-trace-0002"})
    (line,) = (json.loads(x) for x in logged)
    ref = correlation_ref("caller-trace-0002", _audit_key(registry))
    assert (line["request_id"], line["correlation_ref"]) == (r.headers["x-request-id"], ref)
    assert "correlation_id" not in line


@pytest.mark.parametrize(
    ("received", "status", "outcome"),
    [
        (10, 408, "invalid"),  # cut off: nothing to act on, and no one to answer
        (None, 200, "ok"),  # the whole body, then the client left: the action ran
    ],
)
def test_a_body_cut_off_before_it_is_complete_is_audited_as_a_408(
    api: TestClient, registry: Registry, received: int | None, status: int, outcome: str
) -> None:
    # What uvicorn hands the app when the connection closes mid-body (our body deadline in
    # service.connections, or the client hanging up): the first chunk, then http.disconnect.
    body = json.dumps(_body(registry)).encode()
    token = api.headers["authorization"].encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/risk", "raw_path": b"/v1/risk", "root_path": "",
        "query_string": b"", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"authorization", token)],
    }  # fmt: skip
    chunks = [
        {"type": "http.request", "body": body[:received], "more_body": received is not None},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    before = len(_audit(registry))
    api.portal.call(api.app, scope, receive, send)  # type: ignore[union-attr, arg-type]
    (rec,) = _audit(registry)[before:]
    assert (rec.action, rec.status, rec.outcome) == ("risk.read", status, outcome)
    assert (rec.client_ref is None) == (status == 408)
    assert sent[0]["status"] == status  # the access log and metrics see the same status
