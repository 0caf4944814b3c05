"""The error model through the real app: RFC 9457 problem details of a bounded size, 415 for
bodies that are not JSON, and an OpenAPI document that names every operation and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from service.errors import MAX_BATCH_REPORTED_ERRORS, MAX_REPORTED_ERRORS, PROBLEM_JSON
from service.routers.jsonbody import OrjsonRoute
from service.schemas import RiskRequest
from tests.service.conftest import TEST_CLINIC, Registry, bearer
from tests.service.helpers import request_for

#: Generous for 20 problems with their paths and reasons; the attacks below made 1 MB and 3.2 MB
#: bodies.
MAX_ERROR_BODY_BYTES = 8192
#: The operation ids clients generate code from: renaming one breaks them.
OPERATION_IDS = {
    ("post", "/v1/risk"): "scoreRisk",
    ("post", "/v1/risk/batch"): "scoreRiskBatch",
    ("post", "/v1/risk/what-if"): "riskWhatIf",
    ("get", "/v1/model"): "getModel",
    ("post", "/v1/admin/reload"): "reloadModel",
    ("get", "/livez"): "getLiveness",
    ("get", "/readyz"): "getReadiness",
    ("post", "/fhir/Patient/$dropout-risk"): "fhirDropoutRisk",
    ("get", "/fhir/CodeSystem/alliance-risk"): "fhirCodeSystem",
    ("get", "/cds-services"): "cdsDiscovery",
    ("post", "/cds-services/{service_id}"): "cdsService",
    ("post", "/cds-services/{service_id}/feedback"): "cdsFeedback",
    ("post", "/v1/clients/{client_id}/sessions"): "storeClientSessions",
    ("post", "/v1/clients/{client_id}/outcome"): "storeClientOutcome",
    ("delete", "/v1/clients/{client_id}/outcome"): "withdrawClientOutcome",
    ("delete", "/v1/clients/{client_id}/sessions/{session_number}"): "deleteClientSession",
    ("get", "/v1/clients/{client_id}/risk"): "getClientRisk",
    ("get", "/v1/clinics/{clinic_id}/caseload"): "getCaseload",
}


@pytest.fixture
def body(registry: Registry) -> dict[str, Any]:
    cid = str(registry.cohort.sessions["client_id"].iloc[0])
    return request_for(registry.cohort, cid)


def _is_problem(r: Any, status: int) -> dict[str, Any]:
    """The documented error shape: RFC 9457 members plus request_id, errors and more_errors."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM_JSON
    out = r.json()
    assert set(out) == {"type", "title", "status", "detail", "request_id", "errors",
                        "more_errors"}  # fmt: skip
    assert out["type"] == "about:blank" and out["status"] == status and out["title"]
    assert out["request_id"] == r.headers["x-request-id"]
    return out


def test_a_huge_key_gives_a_small_body(api: TestClient, body: dict[str, Any]) -> None:
    key = "k" * 1_000_000
    r = api.post("/v1/risk", json={**body, key: 1})
    assert len(r.content) < MAX_ERROR_BODY_BYTES
    assert _is_problem(r, 422)["errors"] == [
        {"loc": ["(unrecognised key)"], "reason": "field is not part of the data contract"}
    ]
    batch = api.post("/v1/risk/batch", json={"clients": [{**body, key: 1}, body]})
    assert batch.status_code == 200 and len(batch.content) < MAX_ERROR_BODY_BYTES + 8192
    assert key[:100] not in batch.text


def test_many_unknown_keys_give_a_small_body_and_a_count(api: TestClient,
                                                          body: dict[str, Any]) -> None:  # fmt: skip
    unknown = {f"key-{i}": 1 for i in range(9000)}
    r = api.post("/v1/risk", json={**body, **unknown})
    assert len(r.content) < MAX_ERROR_BODY_BYTES
    out = _is_problem(r, 422)
    assert len(out["errors"]) == MAX_REPORTED_ERRORS
    assert out["more_errors"] == 9000 - MAX_REPORTED_ERRORS

    rated = next(i for i, s in enumerate(body["sessions"]) if s["ratings"])
    many_ratings = json.loads(json.dumps(body))
    many_ratings["sessions"][rated]["ratings"] = {f"e{i}": 5.0 for i in range(9000)}
    for payload in ({**body, **unknown}, many_ratings):
        batch = api.post("/v1/risk/batch", json={"clients": [payload, body]})
        assert batch.status_code == 200 and len(batch.content) < MAX_ERROR_BODY_BYTES + 8192
        item = batch.json()["items"][0]
        assert item["status"] == "error" and len(item["errors"]) == MAX_REPORTED_ERRORS
        assert item["more_errors"] == 9000 - MAX_REPORTED_ERRORS
    # Rating keys the schema accepts but the served profile does not have: capped the same way.
    r = api.post("/v1/risk", json=many_ratings)
    assert len(r.content) < MAX_ERROR_BODY_BYTES
    assert _is_problem(r, 422)["more_errors"] == 9000 - MAX_REPORTED_ERRORS


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", "multipart/form-data"])  # fmt: skip
def test_a_body_that_is_not_declared_json_is_415(api: TestClient, body: dict[str, Any],
                                                 registry: Registry, content_type) -> None:  # fmt: skip
    from service.audit_log import records

    headers = {} if content_type is None else {"Content-Type": content_type}
    for path, payload in (("/v1/risk", body), ("/v1/risk/batch", {"clients": [body]})):
        r = api.post(path, content=json.dumps(payload).encode(), headers=headers)
        assert _is_problem(r, 415)["detail"] == "the body must be sent as application/json"
        last = list(records(registry.root / "audit" / "audit.jsonl"))[-1]
        assert (last.outcome, last.status) == ("invalid", 415)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON", "application/merge-patch+json"])  # fmt: skip
def test_json_media_types_are_accepted(api: TestClient, body: dict[str, Any],
                                       content_type: str) -> None:  # fmt: skip
    r = api.post("/v1/risk", content=json.dumps(body).encode(),
                 headers={"Content-Type": content_type})  # fmt: skip
    assert r.status_code == 200, r.text


def test_errors_are_problem_details(api: TestClient, body: dict[str, Any]) -> None:
    _is_problem(api.post("/v1/risk", json=body, headers={"Authorization": ""}), 401)
    _is_problem(api.get("/v1/nowhere"), 404)
    out = _is_problem(api.post("/v1/risk", json={**body, "age": -3}), 422)
    assert out["title"] == "Unprocessable Entity" and out["more_errors"] == 0
    assert out["detail"] == "request does not meet the data contract"


def test_openapi_names_every_operation_and_documents_its_errors(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    found = {(m, p): op["operationId"] for p, ops in schema["paths"].items()
             for m, op in ops.items()}  # fmt: skip
    assert found == OPERATION_IDS
    for (method, path), _ in OPERATION_IDS.items():
        if not path.startswith("/v1/"):
            continue
        responses = schema["paths"][path][method]["responses"]
        expected = {"401", "403", "429", "500", "503", "504"}
        if method == "post" and path.startswith("/v1/risk"):
            expected |= {"400", "413", "415", "422"}
        assert expected <= set(responses), (path, sorted(responses))
        for status in expected:
            content = responses[status]["content"]
            assert list(content) == [PROBLEM_JSON], (path, status)
            props = content[PROBLEM_JSON]["schema"]["properties"]
            assert {"type", "title", "status", "detail", "request_id", "errors",
                    "more_errors"} <= set(props)  # fmt: skip
            assert "$ref" not in json.dumps(props["errors"])


#: A failing 1,000-client batch, whatever its items hold: at most MAX_BATCH_REPORTED_ERRORS
#: listed problems (a path and a fixed reason each, under 200 bytes) and about 80 bytes for
#: every other item's slot. The attacks below made 1.59 MB and 116 KB.
MAX_FAILED_BATCH_BYTES = MAX_BATCH_REPORTED_ERRORS * 200 + 1000 * 80


@pytest.mark.parametrize(
    "item", [{f"key-{j}": 1 for j in range(25)}, 0], ids=["25-unknown-keys", "not-an-object"]
)
def test_a_failing_batch_has_a_bounded_body_and_every_item_in_its_slot(
    api: TestClient, item: Any
) -> None:
    clients = [item] * 1000
    r = api.post("/v1/risk/batch", json={"clients": clients})
    assert r.status_code == 200, r.text
    assert len(r.content) < MAX_FAILED_BATCH_BYTES, len(r.content)
    out = r.json()
    assert (out["scored"], out["failed"]) == (0, 1000)
    items = out["items"]
    assert [it["index"] for it in items] == list(range(1000))
    assert all(it["status"] == "error" and it["result"] is None for it in items)
    assert sum(len(it["errors"]) for it in items) == MAX_BATCH_REPORTED_ERRORS
    # Every item still counts its problems: listed ones plus more_errors, the same for each.
    per_item = {len(it["errors"]) + it["more_errors"] for it in items}
    assert len(per_item) == 1 and per_item.pop() >= 1
    assert all(len(it["errors"]) <= MAX_REPORTED_ERRORS for it in items)
    # The budget goes to the first items, in index order.
    listed = [bool(it["errors"]) for it in items]
    assert listed == sorted(listed, reverse=True)
    assert "key-" not in r.text


def test_the_batch_budget_leaves_scored_items_whole(api: TestClient,
                                                    body: dict[str, Any]) -> None:  # fmt: skip
    clients = [0] * (MAX_BATCH_REPORTED_ERRORS + 5) + [body]
    out = api.post("/v1/risk/batch", json={"clients": clients}).json()
    assert (out["scored"], out["failed"]) == (1, MAX_BATCH_REPORTED_ERRORS + 5)
    last = out["items"][-1]
    assert last["status"] == "ok" and last["result"]["probability"] >= 0
    assert out["items"][-2] == {"index": MAX_BATCH_REPORTED_ERRORS + 4, "status": "error",
                                "result": None, "errors": [], "more_errors": 1}  # fmt: skip


def _last_audit(registry: Registry) -> Any:
    from service.audit_log import records

    return list(records(registry.root / "audit" / "audit.jsonl"))[-1]


#: A body that is not JSON, and a JSON body under another media type.
BAD_BODIES = [(b'{"client_id": "c-LEAKED", ', "application/json"), (b"{}", "text/plain")]


@pytest.mark.parametrize("credentials", ["", "Bearer x.y.z", "scope"])
def test_credentials_are_checked_before_the_body(api: TestClient, registry: Registry,
                                                 dev_key_dir: Path, credentials: str) -> None:  # fmt: skip
    """Who asks comes first: without valid credentials a malformed or mistyped body gets the
    401 (or 403), never a 422 or 415 that would tell a stranger how the API reads bodies."""
    if credentials == "scope":
        headers, status = bearer(dev_key_dir, scopes=("model:read",)), 403
    else:
        headers, status = {"Authorization": credentials}, 401
    for path in ("/v1/risk", "/v1/risk/batch"):
        for content, content_type in BAD_BODIES:
            r = api.post(path, content=content, headers={**headers, "Content-Type": content_type})
            _is_problem(r, status)
            assert "LEAKED" not in r.text
            assert (_last_audit(registry).outcome, _last_audit(registry).status) == (
                "denied", status)  # fmt: skip


def test_a_bad_body_is_audited_with_who_sent_it(api: TestClient, registry: Registry) -> None:
    for path in ("/v1/risk", "/v1/risk/batch"):
        malformed = api.post(path, content=BAD_BODIES[0][0],
                             headers={"Content-Type": "application/json"})  # fmt: skip
        assert _is_problem(malformed, 422)["errors"] == [
            {"loc": [], "reason": "body is not valid JSON"}
        ]
        assert "LEAKED" not in malformed.text
        last = _last_audit(registry)
        assert (last.outcome, last.status) == ("invalid", 422)
        assert (last.subject, last.clinic) == ("dev-user", TEST_CLINIC)
        mistyped = api.post(path, content=b"{}", headers={"Content-Type": "text/plain"})
        assert _is_problem(mistyped, 415)["detail"] == "the body must be sent as application/json"
        last = _last_audit(registry)
        assert (last.outcome, last.status) == ("invalid", 415)
        assert (last.subject, last.clinic) == ("dev-user", TEST_CLINIC)


def test_a_json_route_refuses_an_optional_body() -> None:
    """A refused body reaches FastAPI as a stand-in that only a required body model refuses."""
    router = APIRouter(route_class=OrjsonRoute)
    with pytest.raises(TypeError, match="must be required"):

        @router.post("/things")
        def post(thing: RiskRequest | None = None) -> None: ...

    @router.post("/things")
    def post_required(thing: RiskRequest) -> None: ...

    assert router.routes[-1].body_field is not None  # type: ignore[attr-defined]
