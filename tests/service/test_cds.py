"""CDS Hooks 2.0: discovery, service calls with prefetch, cards, errors, feedback and CORS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.cds.cards import INDICATOR, OVERRIDE_SYSTEM
from service.cds.services import PREFETCH
from service.episodes import to_episodes
from service.schemas import RiskRequest
from tests.service.conftest import TEST_CLINIC, Registry
from tests.service.helpers import request_for
from tests.service.test_cds_support import (
    APPOINTMENT_BOOK,
    PATIENT_VIEW,
    auth_header,
    cds_client,
    cds_token,
    client_resources,
    ehr_key,
    hook_body,
)


@pytest.fixture(scope="module")
def key():
    """The EHR's ES384 signing key (its public half is the issuer's JWKS)."""
    return ehr_key()


@pytest.fixture
def cds(registry: Registry, tmp_path: Path, key) -> Iterator[TestClient]:
    yield from cds_client(registry, tmp_path / "cds", key, cds_low_risk_card="none")


def _band(client: TestClient, registry: Registry, client_id: str) -> tuple[str, float]:
    scorer = client.app.state.store.current.scorer
    body = RiskRequest.model_validate(request_for(registry.cohort, client_id))
    ((_, score),) = scorer.score(to_episodes([body], scorer.profile).episodes).by_episode()
    return score.risk_band, score.probability


def _client_in(client: TestClient, registry: Registry, bands: set[str]) -> str:
    for cid in registry.cohort.clients["client_id"].head(300):
        if _band(client, registry, str(cid))[0] in bands:
            return str(cid)
    raise AssertionError(f"no simulated client in {bands}")


def _call(client: TestClient, key, body: dict[str, Any], service: str = PATIENT_VIEW, **kw: Any):
    return client.post(f"/cds-services/{service}", json=body,
                       headers=auth_header(cds_token(key, service, **kw)))  # fmt: skip


def test_discovery_lists_both_hooks_with_prefetch_templates(cds: TestClient) -> None:
    response = cds.get("/cds-services")
    assert response.status_code == 200
    services = {s["hook"]: s for s in response.json()["services"]}
    assert set(services) == {"patient-view", "appointment-book"}
    for s in services.values():
        assert s["id"] in (PATIENT_VIEW, APPOINTMENT_BOOK)
        assert s["title"] and s["description"]
        assert s["prefetch"] == PREFETCH
        assert all("{{context.patientId}}" in t for t in s["prefetch"].values())


def test_patient_view_with_prefetch_gives_the_card(cds: TestClient, registry, key) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = _client_in(cds, registry, {"moderate", "high"})
    band, probability = _band(cds, registry, cid)
    response = _call(cds, key, hook_body(client_resources(registry, cid, profile)))
    assert response.status_code == 200, response.text
    (card,) = response.json()["cards"]
    assert card["indicator"] == INDICATOR[band]
    assert len(card["summary"]) <= 140
    assert f"{probability:.0%}" in card["summary"]
    assert "What drives it" in card["detail"]
    assert "not a cause" in card["detail"] or "lower risk" not in card["detail"]
    assert card["source"]["url"] == "http://testserver/model-card"
    assert card["overrideReasons"] and all(
        r["system"] == OVERRIDE_SYSTEM and r["code"] and r["display"]
        for r in card["overrideReasons"]
    )
    assert cid not in response.text  # the card never names the client
    # The source link works and is the model card.
    card_page = cds.get("/model-card")
    assert card_page.status_code == 200
    assert card_page.headers["content-type"].startswith("text/markdown")


def test_low_risk_gives_no_card_or_an_info_card(registry, tmp_path, key) -> None:
    for setting, expected in (("none", 0), ("info", 1)):
        for client in cds_client(registry, tmp_path / setting, key, cds_low_risk_card=setting):
            profile = client.app.state.store.current.scorer.profile
            cid = _client_in(client, registry, {"low"})
            response = _call(client, key, hook_body(client_resources(registry, cid, profile)))
            assert response.status_code == 200, response.text
            cards = response.json()["cards"]
            assert len(cards) == expected
            assert all(c["indicator"] == "info" for c in cards)


def test_appointment_book_hook_answers_too(cds: TestClient, registry, key) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = _client_in(cds, registry, {"moderate", "high"})
    body = hook_body(client_resources(registry, cid, profile), hook="appointment-book")
    response = _call(cds, key, body, APPOINTMENT_BOOK)
    assert response.status_code == 200, response.text
    assert len(response.json()["cards"]) == 1
    # The wrong hook for a service is refused.
    wrong = _call(cds, key, hook_body(client_resources(registry, cid, profile)), APPOINTMENT_BOOK)
    assert wrong.status_code == 400
    assert wrong.json()["resourceType"] == "OperationOutcome"


def test_missing_prefetch_without_a_fhir_server_is_412(cds: TestClient, registry, key) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = str(registry.cohort.clients["client_id"].iloc[0])
    body = hook_body(client_resources(registry, cid, profile))
    del body["prefetch"]["appointments"]
    del body["prefetch"]["encounters"]  # no visits of either kind: nothing to score
    response = _call(cds, key, body)
    assert response.status_code == 412
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["resourceType"] == "OperationOutcome"
    # A prefetch key holding an OperationOutcome (the EHR could not fetch it) counts as missing.
    body = hook_body(client_resources(registry, cid, profile))
    body["prefetch"]["patient"] = {"resourceType": "OperationOutcome", "issue": []}
    assert _call(cds, key, body).status_code == 412


def test_a_fhir_server_the_issuer_did_not_register_is_never_contacted(
    cds: TestClient, registry, key
) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = str(registry.cohort.clients["client_id"].iloc[0])
    body = hook_body(client_resources(registry, cid, profile),
                     fhirServer="http://127.0.0.1:9/fhir",
                     fhirAuthorization={"access_token": "t", "token_type": "Bearer",
                                        "expires_in": 60, "scope": "", "subject": "s"})  # fmt: skip
    body["prefetch"] = None
    assert _call(cds, key, body).status_code == 412


def _resources_of_organization(registry, profile, cid: str, org: str) -> list[dict[str, Any]]:
    from service.fhir.examples import bundle_for

    body = RiskRequest.model_validate(request_for(registry.cohort, cid, clinic=org))
    return [e["resource"] for e in bundle_for(body, profile)["entry"]]


def test_the_clinic_of_a_hook_call_is_the_issuers(registry, tmp_path, key) -> None:
    """An EHR's Organization ids (Organization/8731) are not our clinic ids: the clinic is the
    one the issuer is registered for (it was compared with the organization: 404 before)."""
    for client in cds_client(registry, tmp_path / "c", key, cds_low_risk_card="info"):
        profile = client.app.state.store.current.scorer.profile
        cid = str(registry.cohort.clients["client_id"].iloc[1])
        resources = _resources_of_organization(registry, profile, cid, "8731")
        response = _call(client, key, hook_body(resources))
        assert response.status_code == 200, response.text
        assert len(response.json()["cards"]) == 1


def _without_organization(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for res in resources:
        res = {k: v for k, v in res.items() if k not in ("managingOrganization", "serviceProvider")}
        if res["resourceType"] == "Appointment":  # participants that are Organizations
            res["participant"] = [
                p for p in res.get("participant", [])
                if not str(p.get("actor", {}).get("reference", "")).startswith("Organization/")
            ]  # fmt: skip
        out.append(res)
    return out


def test_a_patient_without_a_managing_organization_is_scored_for_the_issuers_clinic(
    registry, tmp_path, key
) -> None:
    """The clinic of a hook call is the issuer's, so a Patient naming no organization is scored
    (it was a 422 'no managing Organization'); with an organization map it must name one."""
    for client in cds_client(registry, tmp_path / "c", key, cds_low_risk_card="info"):
        profile = client.app.state.store.current.scorer.profile
        cid = str(registry.cohort.clients["client_id"].iloc[1])
        resources = _without_organization(_resources_of_organization(registry, profile, cid, "8"))
        response = _call(client, key, hook_body(resources))
        assert response.status_code == 200, response.text
        assert len(response.json()["cards"]) == 1
    for client in cds_client(registry, tmp_path / "m", key, cds_low_risk_card="info",
                             organizations={"8": TEST_CLINIC}):  # fmt: skip
        profile = client.app.state.store.current.scorer.profile
        cid = str(registry.cohort.clients["client_id"].iloc[1])
        resources = _without_organization(_resources_of_organization(registry, profile, cid, "8"))
        response = _call(client, key, hook_body(resources))
        assert response.status_code == 422, response.text
        assert "managingOrganization" in response.text


def test_with_an_organization_map_another_clinics_patient_looks_missing(
    registry, tmp_path, key
) -> None:
    for client in cds_client(registry, tmp_path / "c", key, cds_low_risk_card="info",
                             organizations={"8731": TEST_CLINIC, "9": "clinic-other"}):  # fmt: skip
        profile = client.app.state.store.current.scorer.profile
        cid = str(registry.cohort.clients["client_id"].iloc[1])
        ours = _resources_of_organization(registry, profile, cid, "8731")
        assert _call(client, key, hook_body(ours)).status_code == 200
        for org in ("9", "4242"):  # another clinic's, and one the map does not know
            theirs = _resources_of_organization(registry, profile, cid, org)
            response = _call(client, key, hook_body(theirs))
            assert response.status_code == 404
            assert response.json()["detail"] == "client not found"


def test_optional_prefetch_keys_may_be_left_out(cds: TestClient, registry, key) -> None:
    """CDS Hooks 2.0: a client MUST NOT send prefetch keys it chooses not to satisfy. The
    patient and one kind of visit suffice (this was a 412 before)."""
    profile = cds.app.state.store.current.scorer.profile
    cid = _client_in(cds, registry, {"moderate", "high"})
    body = hook_body(client_resources(registry, cid, profile))
    for optional in ("encounters", "episodesOfCare", "allianceQuestionnaires"):
        del body["prefetch"][optional]
    body["prefetch"]["allianceObservations"] = {"resourceType": "OperationOutcome", "issue": []}
    response = _call(cds, key, body)
    assert response.status_code == 200, response.text
    assert len(response.json()["cards"]) == 1


def test_a_call_failing_before_tenancy_is_audited_with_the_patient(
    cds: TestClient, registry, key, tmp_path
) -> None:
    """412, 400 and 422 answers name the patient's keyed ref (client_ref was null before)."""
    profile = cds.app.state.store.current.scorer.profile
    cid = str(registry.cohort.clients["client_id"].iloc[0])
    body = hook_body(client_resources(registry, cid, profile))
    del body["prefetch"]["patient"]
    assert _call(cds, key, body).status_code == 412
    assert _call(cds, key, hook_body(client_resources(registry, cid, profile),
                                     hook="order-select")).status_code == 400  # fmt: skip
    lines = [json.loads(x) for x in (tmp_path / "cds" / "audit.jsonl").read_text().splitlines()]
    hooks = [x for x in lines if x["action"] == "cds.hook"]
    assert [(x["status"], bool(x["client_ref"])) for x in hooks] == [(412, True), (400, True)]
    assert len({x["client_ref"] for x in hooks}) == 1


def test_contract_problems_are_an_operation_outcome_without_values(
    cds: TestClient, registry, key
) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = str(registry.cohort.clients["client_id"].iloc[2])
    resources = client_resources(registry, cid, profile)
    for r in resources:
        if r["resourceType"] == "Appointment":
            r["status"] = "bogus-status-7"
    response = _call(cds, key, hook_body(resources))
    assert response.status_code == 422
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "bogus-status-7" not in response.text and cid not in response.text


def test_one_audit_line_per_call_with_the_patient(cds: TestClient, registry, key, tmp_path) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = _client_in(cds, registry, {"moderate", "high"})
    _call(cds, key, hook_body(client_resources(registry, cid, profile)))
    lines = [json.loads(x) for x in (tmp_path / "cds" / "audit.jsonl").read_text().splitlines()]
    hooks = [x for x in lines if x["action"] == "cds.hook"]
    assert len(hooks) == 1
    (line,) = hooks
    assert line["clinic"] == TEST_CLINIC and line["status"] == 200 and line["client_ref"]
    assert cid not in json.dumps(lines)


def test_feedback_is_stored_and_audited_without_the_comment(cds: TestClient, tmp_path, key):
    body = {"feedback": [
        {"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "overridden",
         "overrideReason": {"reason": {"system": OVERRIDE_SYSTEM, "code": "recent-check-in"},
                            "userComment": "spoke with Jane Roe on Tuesday"},
         "outcomeTimestamp": "2026-12-01T10:05:31Z"},
        {"card": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "outcome": "accepted",
         "acceptedSuggestions": [{"id": "e56e1945"}], "outcomeTimestamp": "2026-12-01T10:06:00Z"},
    ]}  # fmt: skip
    url = f"/cds-services/{PATIENT_VIEW}/feedback"
    token = cds_token(key, feedback=True)
    response = cds.post(url, json=body, headers=auth_header(token))
    assert response.status_code == 200, response.text
    from sqlalchemy import select

    from service.store.tables import cds_feedback

    with cds.app.state.client_store.read() as conn:
        rows = [r._asdict() for r in conn.execute(select(cds_feedback).order_by("id"))]
    assert [r["outcome"] for r in rows] == ["overridden", "accepted"]
    assert rows[0]["override_code"] == "recent-check-in" and rows[0]["commented"] is True
    assert rows[0]["override_system"] == OVERRIDE_SYSTEM and rows[0]["service_id"] == PATIENT_VIEW
    assert rows[1]["accepted_suggestions"] == 1 and rows[0]["clinic_id"] == TEST_CLINIC
    assert rows[1]["card"] == "4e0a3a1e-3283-4575-ab82-028d55fe2719"
    assert rows[0]["request_id"] == response.headers["X-Request-ID"]
    assert "Jane Roe" not in repr(rows)
    audit = [json.loads(x) for x in (tmp_path / "cds" / "audit.jsonl").read_text().splitlines()]
    assert [a["action"] for a in audit] == ["cds.feedback"]
    assert audit[0]["status"] == 200 and audit[0]["clinic"] == TEST_CLINIC
    # The service call's token is not a feedback token (aud names the endpoint invoked).
    again = cds.post(url, json=body, headers=auth_header(cds_token(key)))
    assert again.status_code == 401


def test_cors_preflight_on_cds_paths_only(registry, tmp_path, key) -> None:
    origin = "https://sandbox.example.org"
    for client in cds_client(registry, tmp_path / "cors", key, cds_cors_origins=[origin]):
        headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        ok = client.options(f"/cds-services/{PATIENT_VIEW}", headers=headers)
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == origin
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in ok.headers
        discovery = client.get("/cds-services", headers={"Origin": origin})
        assert discovery.headers["access-control-allow-origin"] == origin
        stranger = client.options(f"/cds-services/{PATIENT_VIEW}",
                                  headers={**headers, "Origin": "https://evil.example"})  # fmt: skip
        assert "access-control-allow-origin" not in stranger.headers
        # The scoring API keeps its own allowlist (none here).
        v1 = client.options("/v1/risk", headers=headers)
        assert "access-control-allow-origin" not in v1.headers


def test_a_prefetch_of_another_patient_than_the_context_is_refused(cds, registry, key) -> None:
    profile = cds.app.state.store.current.scorer.profile
    cid = str(registry.cohort.clients["client_id"].iloc[4])
    body = hook_body(client_resources(registry, cid, profile))
    body["context"]["patientId"] = "someone-else"
    response = _call(cds, key, body)
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["context.patientId"]


def test_a_body_failing_its_schema_is_an_operation_outcome_naming_the_field(
    cds: TestClient, key
) -> None:
    """It was problem details with loc ["(unrecognised key)"] for our own required fields."""
    response = _call(cds, key, {"hook": "patient-view", "secret-key-7": 1})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    named = {x for issue in outcome["issue"] for x in issue.get("expression", [])}
    assert named == {"hookInstance", "context"}
    assert {issue["code"] for issue in outcome["issue"]} == {"required"}
    for dots in ("..", "."):  # Patient/.. would be a path step, not a patient
        body = {"hook": "patient-view", "hookInstance": "1", "context": {"patientId": dots}}
        response = _call(cds, key, body)
        assert response.status_code == 422
        assert response.json()["issue"][0]["expression"] == ["context.patientId"]


def test_feedback_times_need_a_zone(cds: TestClient, key) -> None:
    item = {"card": "c-1", "outcome": "accepted", "outcomeTimestamp": "2026-01-05T10:00:00"}
    url = f"/cds-services/{PATIENT_VIEW}/feedback"
    headers = auth_header(cds_token(key, feedback=True))
    response = cds.post(url, json={"feedback": [item]}, headers=headers)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["feedback[0].outcomeTimestamp"]
    item["outcomeTimestamp"] += "+01:00"
    headers = auth_header(cds_token(key, feedback=True))
    assert cds.post(url, json={"feedback": [item]}, headers=headers).status_code == 200


def test_feedback_answers_503_when_the_store_is_down(registry, tmp_path, key) -> None:
    """Nothing is lost silently: an unreachable store is a 503 with Retry-After."""
    from tests.conftest import free_port

    down = f"postgresql+psycopg2://nobody@127.0.0.1:{free_port()}/none"
    item = {"card": "c-1", "outcome": "accepted", "outcomeTimestamp": "2026-12-01T10:06:00Z"}
    url = f"/cds-services/{PATIENT_VIEW}/feedback"
    for client in cds_client(registry, tmp_path / "down", key, store_url=down,
                             store_connect_timeout_s=1):  # fmt: skip
        headers = auth_header(cds_token(key, feedback=True))
        response = client.post(url, json={"feedback": [item]}, headers=headers)
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["detail"] == "feedback could not be stored; try again later"


def test_card_summaries_are_under_140_characters() -> None:
    """CDS Hooks 2.0: summary is a "<140-character" string (140 was allowed before)."""
    from service.cds.cards import SUMMARY_MAX
    from service.cds.schemas import Card

    assert SUMMARY_MAX < 140
    with pytest.raises(ValueError, match="139"):
        Card(uuid="u", summary="x" * 140, indicator="info", detail="", source={"label": "l"},
             overrideReasons=[])  # fmt: skip


def test_a_412_is_audited_as_unavailable_not_error() -> None:
    from service.security import outcome_of

    assert outcome_of(412) == "unavailable"
    assert outcome_of(500) == "error"


def test_next_links_are_followed_only_under_the_base_after_normalising() -> None:
    from service.cds.prefetch import FhirFetcher, PrefetchUnavailable

    fetcher = FhirFetcher("http://127.0.0.1:9/fhir", "t", 1.0, 1.0)

    def page(url: str) -> dict[str, Any]:
        return {"resourceType": "Bundle", "link": [{"relation": "next", "url": url}]}

    ok = fetcher._next(page("http://127.0.0.1:9/fhir/./Appointment?page=2"))
    assert ok == "http://127.0.0.1:9/fhir/Appointment?page=2"
    for elsewhere in ("http://127.0.0.1:9/fhir/../admin", "http://127.0.0.1:9/fhir/%2e%2e/x",
                      "http://127.0.0.1:9/fhirx/y", "http://u@127.0.0.1:9/fhir/y"):  # fmt: skip
        with pytest.raises(PrefetchUnavailable):
            fetcher._next(page(elsewhere))


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_feedback_at_the_ends_of_time_is_422_not_500(cds: TestClient, key, moment: str) -> None:
    # Aware times whose UTC equivalent is outside years 1..9999 raised OverflowError in
    # astimezone (a 500) after validation.
    body = {"feedback": [{"card": "9368d37b-283f-44a0-93ea-547cebab93ed", "outcome": "accepted",
                          "outcomeTimestamp": moment}]}  # fmt: skip
    url = f"/cds-services/{PATIENT_VIEW}/feedback"
    response = cds.post(url, json=body, headers=auth_header(cds_token(key, feedback=True)))
    assert response.status_code == 422, response.text
    assert moment not in response.text
