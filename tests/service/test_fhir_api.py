"""``POST /fhir/Patient/$dropout-risk`` through the app on a real tiny model: the same scorer as
/v1/risk, R4B-valid resources out, OperationOutcomes for every error, tenancy, audit and SMART
scopes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.riskassessment import RiskAssessment

from features.profiles import ALLIANCE6
from service.app import create_app
from service.fhir import codes
from service.fhir.examples import bundle_for
from service.schemas import RISK_REQUEST_EXAMPLE, RiskRequest
from service.settings import ServiceSettings
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings
from tests.service.helpers import SENT_CLIENT_IDS, request_for

OPERATION = "/fhir/Patient/$dropout-risk"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_BUNDLE = ROOT / "docs" / "examples" / "fhir-bundle.json"
EXAMPLE_ASSESSMENT = ROOT / "docs" / "examples" / "risk-assessment.json"


@pytest.fixture
def keys(dev_key_dir: Path) -> Path:
    return dev_key_dir


@pytest.fixture
def fhir_api(registry: Registry, keys: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri, poll_interval_s=0
    )
    app = create_app(settings, configure_logs=False,
                     **security_settings(keys, registry.root / "audit"))  # fmt: skip
    with TestClient(app, headers=bearer(keys)) as client:
        yield client


def _client_ids(registry: Registry, n: int) -> list[str]:
    counts = registry.cohort.sessions.groupby("client_id").size()
    return [str(c) for c in counts[counts >= 4].index[:n]]


def _bundle(body: dict[str, Any]) -> dict[str, Any]:
    return bundle_for(RiskRequest.model_validate(body), ALLIANCE6)


def _post(api: TestClient, payload: Any, **kwargs: Any):
    return api.post(OPERATION, content=json.dumps(payload), headers={**FHIR_JSON, **kwargs})


def _audit(registry: Registry) -> list:
    from service.audit_log import records

    path = registry.root / "audit" / "audit.jsonl"
    return list(records(path)) if path.exists() else []


# -- invariants of what is emitted --------------------------------------------------------------


def _no_empty_elements(value: Any, path: str = "") -> None:
    """ele-1: every element has a value or children (no null, "", [] or {})."""
    assert value not in (None, "", [], {}), path
    if isinstance(value, dict):
        for k, v in value.items():
            _no_empty_elements(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_empty_elements(v, f"{path}[{i}]")


def _local_refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        own = [value["reference"]] if str(value.get("reference", "")).startswith("#") else []
        return own + [r for v in value.values() for r in _local_refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _local_refs(v)]
    return []


def check_risk_assessment(ra: dict[str, Any]) -> RiskAssessment:
    """Parses with fhir.resources R4B, and the R4 invariants that apply hold."""
    parsed = RiskAssessment.model_validate(ra)
    _no_empty_elements(ra)
    assert ra["status"] == "final"
    for prediction in ra["prediction"]:
        # ras-2: probabilityDecimal <= 100 (and a probability is never negative)
        assert 0 <= prediction["probabilityDecimal"] <= 100
        assert "probabilityRange" not in prediction  # ras-1 concerns ranges only
    contained_ids = {c["id"] for c in ra.get("contained", [])}
    for contained in ra.get("contained", []):
        assert "contained" not in contained and "text" not in contained  # dom-2
        meta = contained.get("meta", {})
        assert "versionId" not in meta and "lastUpdated" not in meta  # dom-4
        assert "security" not in meta  # dom-5
    refs = _local_refs({k: v for k, v in ra.items() if k != "contained"})
    assert {r[1:] for r in refs} == contained_ids  # dom-3 and ref-1: each side resolves
    assert ra["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')  # dom-6
    return parsed


def check_operation_outcome(body: dict[str, Any]) -> OperationOutcome:
    parsed = OperationOutcome.model_validate(body)
    _no_empty_elements(body)
    # Errors, then at most one closing count of the issues left out.
    severities = [i["severity"] for i in body["issue"]]
    assert severities and all(s in ("error", "fatal") for s in severities[:-1])
    assert severities[-1] in ("error", "fatal") or (
        len(severities) > 1 and body["issue"][-1]["code"] == "informational"
    )
    return parsed


# -- the operation ------------------------------------------------------------------------------


def test_same_probability_as_v1_risk(fhir_api: TestClient, registry: Registry) -> None:
    for cid in _client_ids(registry, 3):
        body = request_for(registry.cohort, cid)
        v1 = fhir_api.post("/v1/risk", json=body).json()
        response = _post(fhir_api, _bundle(body))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        assert response.headers["cache-control"] == "no-store"
        ra = response.json()
        check_risk_assessment(ra)
        prediction = ra["prediction"][0]
        assert prediction["probabilityDecimal"] == pytest.approx(100 * v1["probability"], abs=1e-4)
        assert prediction["qualitativeRisk"]["coding"][0] == {
            "system": codes.RISK_PROBABILITY, "code": v1["risk_band"],
            "display": f"{v1['risk_band'].capitalize()} likelihood"}  # fmt: skip
        assert prediction["outcome"]["coding"][0]["code"] == codes.DROPOUT
        assert ra["subject"] == {"reference": f"Patient/{cid}"}
        drivers = v1["explanation"]["drivers"]
        assert all(d["text"] in prediction["rationale"] for d in drivers)
        assert all(d["focus"] in ra.get("mitigation", "") for d in drivers if d["focus"])
        device = ra["contained"][0]
        assert (
            device["deviceName"][0]["name"] == MODEL_NAME and device["version"][0]["value"] == "1"
        )
        n = len(body["sessions"])
        assert [b["reference"] for b in ra["basis"] if "Appointment" in b["reference"]] == [
            f"Appointment/{cid}-a{i}" for i in range(1, n + 1)]  # fmt: skip
        # Upsert: the same history gives the same identifier, another client another one.
        again = _post(fhir_api, _bundle(body)).json()
        assert again["identifier"] == ra["identifier"] and again["id"] == ra["id"]


def test_parameters_in_parameters_out(fhir_api: TestClient, registry: Registry) -> None:
    body = request_for(registry.cohort, _client_ids(registry, 1)[0])
    wrapped = {"resourceType": "Parameters",
               "parameter": [{"name": "bundle", "resource": _bundle(body)}]}  # fmt: skip
    response = fhir_api.post(OPERATION, json=wrapped)  # application/json is accepted too
    assert response.status_code == 200, response.text
    out = response.json()
    Parameters.model_validate(out)
    (param,) = out["parameter"]
    assert param["name"] == "return" and set(param) == {"name", "resource"}  # inv-1
    check_risk_assessment(param["resource"])
    plain = _post(fhir_api, _bundle(body)).json()
    assert param["resource"]["prediction"] == plain["prediction"]
    # A bad Parameters input: the outcome names the parameter's path.
    bad = {"resourceType": "Parameters", "parameter": [{"name": "bundle", "resource": {
        "resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"id": 1}}]}}]}  # fmt: skip
    refused = fhir_api.post(OPERATION, json=bad)
    assert refused.status_code == 422
    expressions = [e for i in refused.json()["issue"] for e in i.get("expression", [])]
    assert "Parameters.parameter[0].resource.entry[0].resource" in expressions


def test_bad_input_is_an_operation_outcome_without_values(
    fhir_api: TestClient, registry: Registry
) -> None:
    body = request_for(registry.cohort, _client_ids(registry, 1)[0])
    bundle = _bundle(body)
    secret = "SECRET-Jane-Doe"
    SENT_CLIENT_IDS.add(secret)
    appointment = next(e["resource"] for e in bundle["entry"]
                       if e["resource"]["resourceType"] == "Appointment")  # fmt: skip
    appointment["status"] = secret
    observation = next(i for i, e in enumerate(bundle["entry"])
                       if e["resource"]["resourceType"] == "Observation")  # fmt: skip
    bundle["entry"][observation]["resource"]["component"][1]["valueQuantity"]["value"] = 73.579
    response = _post(fhir_api, bundle)
    assert response.status_code == 422
    outcome = response.json()
    check_operation_outcome(outcome)
    assert secret not in response.text and "73.579" not in response.text
    assert any(i["expression"] == ["Bundle.entry[2].resource.status"] for i in outcome["issue"])
    # A contract rule the scorer checks (a rating off the scale) comes back as the FHIRPath of
    # the component, with /v1's wording.
    appointment["status"] = "fulfilled"
    response = _post(fhir_api, bundle)
    assert response.status_code == 422
    v1_body = {**body}
    v1_body["sessions"] = [dict(s) for s in body["sessions"]]
    first_rated = next(i for i, s in enumerate(v1_body["sessions"]) if s["ratings"])
    v1_body["sessions"][first_rated] = {**v1_body["sessions"][first_rated],
        "ratings": {**v1_body["sessions"][first_rated]["ratings"], "acceptance": 73.579}}  # fmt: skip
    v1 = fhir_api.post("/v1/risk", json=v1_body).json()
    issues = response.json()["issue"]
    assert [i["diagnostics"] for i in issues] == [e["reason"] for e in v1["errors"]]
    assert issues[0]["expression"] == [f"Bundle.entry[{observation}].resource.component[1]"]
    assert "73.579" not in response.text


@pytest.mark.parametrize(
    ("payload", "expression"),
    [
        ({"resourceType": "Bundle", "type": "transaction", "entry": []}, "Bundle.type"),
        ({"resourceType": "Bundle", "type": "collection"}, "Bundle.entry"),
        ({"resourceType": "Patient", "id": "x"}, "Bundle"),
        ({"resourceType": "Parameters", "parameter": []}, "Parameters.parameter"),
    ],
)
def test_not_a_collection_bundle(fhir_api: TestClient, payload, expression: str) -> None:
    response = _post(fhir_api, payload)
    assert response.status_code == 422
    assert check_operation_outcome(response.json()).issue[0].expression == [expression]


def test_non_fhir_errors_are_operation_outcomes(fhir_api: TestClient, keys: Path) -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {}}]}
    unauthenticated = fhir_api.post(OPERATION, json=bundle, headers={"Authorization": ""})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["www-authenticate"].startswith("Bearer")
    assert unauthenticated.json()["issue"][0]["code"] == "login"
    wrong_type = fhir_api.post(OPERATION, content=b"<Bundle/>",
                               headers={"Content-Type": "application/fhir+xml"})  # fmt: skip
    assert (
        wrong_type.status_code == 415 and wrong_type.json()["issue"][0]["code"] == "not-supported"
    )
    broken = fhir_api.post(OPERATION, content=b'{"resourceType": "Bundle", "id": "SECRET',
                           headers=FHIR_JSON)  # fmt: skip
    assert broken.status_code in (400, 422) and "SECRET" not in broken.text
    huge = fhir_api.post(OPERATION, content=b" " * 5_000_000, headers=FHIR_JSON)
    assert huge.status_code == 413 and huge.json()["issue"][0]["code"] == "too-long"
    for response in (unauthenticated, wrong_type, broken, huge):
        assert response.headers["content-type"].startswith("application/fhir+json")
        check_operation_outcome(response.json())
    assert (
        fhir_api.post("/v1/risk", json={}, headers={"Authorization": ""})
        .headers["content-type"]
        .startswith("application/problem+json")
    )  # /v1 keeps problem details


def test_another_clinics_patient_looks_missing(
    fhir_api: TestClient, registry: Registry, keys: Path
) -> None:
    a, b = _client_ids(registry, 2)
    ours = _bundle(request_for(registry.cohort, a))
    theirs = _bundle(request_for(registry.cohort, b, clinic="clinic-other"))
    other = _post(fhir_api, theirs)
    assert other.status_code == 404
    check_operation_outcome(other.json())
    # The other clinic's token gets the same answer for this clinic's patient.
    mine = _post(fhir_api, ours, Authorization=bearer(keys, clinic="clinic-other")["Authorization"])
    assert mine.status_code == 404 and mine.json() == other.json()
    assert other.json()["issue"][0] == {"severity": "error", "code": "not-found",
                                        "diagnostics": "client not found"}  # fmt: skip


def test_one_audit_line_per_request_and_patient(fhir_api: TestClient, registry: Registry) -> None:
    from service.audit import client_ref
    from service.audit_log import AuditSettings

    cid = _client_ids(registry, 1)[0]
    before = len(_audit(registry))
    ok = _post(fhir_api, _bundle(request_for(registry.cohort, cid)))
    refused = _post(fhir_api, {"resourceType": "Bundle", "type": "collection",
                               "entry": [{"resource": {"resourceType": "Patient"}}]})  # fmt: skip
    lines = _audit(registry)[before:]
    assert [(r.action, r.status) for r in lines] == [("risk.fhir", 200), ("risk.fhir", 422)]
    key = AuditSettings(path=registry.root / "audit" / "audit.jsonl",
                        key_file=registry.root / "audit" / "audit.key").load_key()  # fmt: skip
    assert (
        lines[0].client_ref == client_ref(TEST_CLINIC, cid, key) and lines[0].clinic == TEST_CLINIC
    )
    assert lines[0].request_id == ok.headers["x-request-id"]
    assert lines[1].client_ref is None and refused.status_code == 422


@pytest.mark.parametrize(
    ("scopes", "status"),
    [
        (("system/RiskAssessment.rs",), 200),
        (("system/RiskAssessment.read",), 200),
        (("system/*.rs",), 200),
        (("system/Patient.rs", "system/Observation.rs", "system/RiskAssessment.rs"), 200),
        (("system/Patient.rs", "system/Observation.rs"), 403),
        (("risk:batch",), 403),
    ],
)
def test_smart_scopes(
    fhir_api: TestClient, registry: Registry, keys: Path, scopes: tuple[str, ...], status: int
) -> None:
    body = request_for(registry.cohort, _client_ids(registry, 1)[0])
    response = _post(
        fhir_api, _bundle(body), Authorization=bearer(keys, scopes=scopes)["Authorization"]
    )
    assert response.status_code == status, response.text
    if status == 403:
        assert check_operation_outcome(response.json()).issue[0].code == "forbidden"


def test_code_system_is_served_and_valid(fhir_api: TestClient) -> None:
    response = fhir_api.get("/fhir/CodeSystem/alliance-risk", headers={"Authorization": ""})
    assert response.status_code == 200
    system = response.json()
    CodeSystem.model_validate(system)
    assert system["url"] == codes.CODE_SYSTEM
    concepts = [c["code"] for c in system["concept"]]
    assert len(concepts) == len(set(concepts))
    assert {"dropout", "late-cancel", "rescheduled", "wai-sr.item-12", "srs.overall",
            "alliance6.empathy"} <= set(concepts)  # fmt: skip


# -- the documented example -----------------------------------------------------------------------

#: Parts of the answer that change from call to call (or model to model).
_VOLATILE = ("id", "meta", "occurrenceDateTime", "identifier", "text")


def _stable(ra: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in ra.items() if k not in _VOLATILE}
    out["prediction"] = [{k: v for k, v in p.items() if k != "probabilityDecimal"}
                         for p in ra["prediction"]]  # fmt: skip
    return out


def test_documented_example(fhir_api: TestClient, keys: Path) -> None:
    """docs/examples/fhir-bundle.json yields docs/examples/risk-assessment.json (the test model,
    modulo ids and timestamps). ``ALLIANCE_RISK_REGENERATE_EXAMPLES=1`` rewrites both."""
    request = RiskRequest.model_validate(RISK_REQUEST_EXAMPLE)
    bundle = bundle_for(request, ALLIANCE6)
    SENT_CLIENT_IDS.add(request.client_id)
    auth = bearer(keys, clinic=request.clinic_id)["Authorization"]
    if os.environ.get("ALLIANCE_RISK_REGENERATE_EXAMPLES") == "1":
        EXAMPLE_BUNDLE.parent.mkdir(parents=True, exist_ok=True)
        EXAMPLE_BUNDLE.write_text(json.dumps(bundle, indent=2) + "\n")
        answer = _post(fhir_api, bundle, Authorization=auth).json()
        EXAMPLE_ASSESSMENT.write_text(json.dumps(answer, indent=2) + "\n")
    assert json.loads(EXAMPLE_BUNDLE.read_text()) == bundle
    Bundle.model_validate(bundle)  # the example input is valid R4 too
    response = _post(fhir_api, json.loads(EXAMPLE_BUNDLE.read_text()), Authorization=auth)
    assert response.status_code == 200, response.text
    expected = json.loads(EXAMPLE_ASSESSMENT.read_text())
    check_risk_assessment(expected)
    got = response.json()
    assert _stable(got) == _stable(expected)
    assert got["prediction"][0]["probabilityDecimal"] == pytest.approx(
        expected["prediction"][0]["probabilityDecimal"], abs=1e-3
    )


# -- review of issue 20: bounded answers, urn:uuid references ----------------------------------


def test_a_bundle_of_junk_gets_a_bounded_outcome(fhir_api: TestClient) -> None:
    from service.fhir.reader import MAX_ISSUES

    junk = {"resourceType": "Bundle", "type": "collection", "entry": [5] * 2_000}
    response = _post(fhir_api, junk)
    assert response.status_code == 422
    issues = check_operation_outcome(response.json()).issue
    assert len(issues) == MAX_ISSUES + 1 and len(response.content) < 10_000
    assert (issues[-1].severity, issues[-1].code) == ("information", "informational")
    assert issues[-1].diagnostics.startswith(f"{2_000 - MAX_ISSUES + 1} more issues")


def test_too_many_entries_are_refused_before_mapping(fhir_api: TestClient) -> None:
    from service.fhir.reader import max_resources

    cap = max_resources(ServiceSettings().max_sessions)
    body = {"resourceType": "Bundle", "type": "collection", "entry": [5] * (cap + 1)}
    response = _post(fhir_api, body)
    assert response.status_code == 413
    (issue,) = check_operation_outcome(response.json()).issue
    assert (issue.code, issue.expression) == ("too-long", ["Bundle.entry"])
    wrapped = {"resourceType": "Parameters", "parameter": [{"name": "bundle", "resource": body}]}
    assert _post(fhir_api, wrapped).status_code == 413


def _with_urn_uuids(bundle: dict[str, Any]) -> dict[str, Any]:
    """``bundle`` as an EHR builds a collection: every entry a ``urn:uuid`` fullUrl (the
    Practitioner and Organization added) and every reference to an entry by that fullUrl."""
    bundle = json.loads(json.dumps(bundle))
    text = json.dumps(bundle)
    for kind in ("Practitioner", "Organization"):
        for ident in sorted(set(re.findall(f'"{kind}/([^"]+)"', text))):
            bundle["entry"].append({"resource": {"resourceType": kind, "id": ident}})
    urls: dict[str, str] = {}
    for n, entry in enumerate(bundle["entry"]):
        res = entry["resource"]
        entry["fullUrl"] = urls[f"{res['resourceType']}/{res['id']}"] = (
            f"urn:uuid:{n:08x}-1111-4222-8333-444444444444"
        )
    out = json.dumps(bundle)
    for relative, urn in urls.items():
        out = out.replace(f'"reference": "{relative}"', f'"reference": "{urn}"')
    assert '"reference": "Practitioner/' not in out
    return json.loads(out)


def test_urn_uuid_references_score_as_relative_ones(fhir_api: TestClient, keys: Path) -> None:
    request = RiskRequest.model_validate(RISK_REQUEST_EXAMPLE)
    SENT_CLIENT_IDS.add(request.client_id)
    auth = bearer(keys, clinic=request.clinic_id)["Authorization"]
    bundle = json.loads(EXAMPLE_BUNDLE.read_text())
    relative = _post(fhir_api, bundle, Authorization=auth)
    urn = _post(fhir_api, _with_urn_uuids(bundle), Authorization=auth)
    assert relative.status_code == urn.status_code == 200, urn.text
    assert (
        urn.json()["prediction"][0]["probabilityDecimal"]
        == relative.json()["prediction"][0]["probabilityDecimal"]
    )


def test_prediction_horizon_is_from_the_landmark_appointment_on(
    fhir_api: TestClient, keys: Path
) -> None:
    request = RiskRequest.model_validate(RISK_REQUEST_EXAMPLE)
    SENT_CLIENT_IDS.add(request.client_id)
    auth = bearer(keys, clinic=request.clinic_id)["Authorization"]
    answer = _post(fhir_api, bundle_for(request, ALLIANCE6), Authorization=auth).json()
    check_risk_assessment(answer)
    latest = max(request.sessions, key=lambda s: s["session_number"])
    # Dropout is the episode's outcome: open-ended from the landmark (latest) appointment.
    assert answer["prediction"][0]["whenPeriod"] == {"start": str(latest["session_date"])}
