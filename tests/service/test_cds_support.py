"""Shared by the CDS Hooks tests: an EHR issuer (ES384 key, JWKS file, bound to the test
clinic), its tokens, the app configured for CDS Hooks, and hook requests built from simulated
clients through the FHIR edge's own example writer. No tests here."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.schemas import RiskRequest
from tests.service.auth.helpers import jwks_doc
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry
from tests.service.helpers import request_for

EHR = "https://ehr.example.org/"
PUBLIC_URL = "http://testserver"
PATIENT_VIEW = "alliance-risk-patient-view"
APPOINTMENT_BOOK = "alliance-risk-appointment-book"
KID = "ehr-1"


def ehr_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def cds_token(key: Any, service: str = PATIENT_VIEW, *, kid: str = KID, alg: str = "ES384",
              feedback: bool = False, typ: str | None = "JWT", **claims: Any) -> str:  # fmt: skip
    """A CDS Hooks client JWT (iss, aud, exp, iat, jti; no sub, no clinic claim); a claim
    given as None is left out."""
    now = int(time.time())
    aud = f"{PUBLIC_URL}/cds-services/{service}" + ("/feedback" if feedback else "")
    body = {"iss": EHR, "aud": aud, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    header = {"kid": kid, "typ": typ}  # None: PyJWT leaves typ out
    return jwt.encode(body, key, algorithm=alg, headers=header)


def auth_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cds_client(registry: Registry, root: Path, key: Any, **settings: Any) -> Iterator[TestClient]:
    """:func:`cds_app` in a TestClient (lifespan run)."""
    with TestClient(cds_app(registry, root, key, **settings)) as client:
        yield client


def cds_app(registry: Registry, root: Path, key: Any, *, fhir_servers: Sequence[str] = (),
            organizations: dict[str, str] | None = None, **settings: Any) -> FastAPI:  # fmt: skip
    """The app on the registry's champion, jwt mode with the EHR issuer as the only issuer."""
    from service.app import create_app
    from service.audit_log import AuditSettings
    from service.auth import AuthSettings, IssuerConfig
    from service.limits import LimitSettings
    from service.settings import ServiceSettings

    root.mkdir(parents=True, exist_ok=True)
    jwks = root / "ehr-jwks.json"
    jwks.write_text(json.dumps(jwks_doc({KID: key})))
    issuer = IssuerConfig(issuer=EHR, audience="alliance-risk", jwks_file=jwks,
                          clinic=TEST_CLINIC, fhir_servers=list(fhir_servers),
                          organizations=organizations or {})  # fmt: skip
    return create_app(
        ServiceSettings(
            model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri,
            poll_interval_s=0,
            **{"cds_public_url": PUBLIC_URL,
               "store_url": f"sqlite:///{root / 'store.db'}", **settings},
        ),
        configure_logs=False,
        auth=AuthSettings(mode="jwt", issuers=[issuer]),
        limits=LimitSettings(rate_per_clinic_per_s=0, rate_per_token_per_s=0),
        audit=AuditSettings(path=root / "audit.jsonl", key_file=root / "audit.key"),
    )  # fmt: skip


def searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "total": len(resources),
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}  # fmt: skip


def prefetch_of(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """The prefetch an EHR sends for our templates, from one client's resources."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    (patient,) = by_type["Patient"]
    return {
        "patient": patient,
        "appointments": searchset(by_type.get("Appointment", [])),
        "encounters": searchset(by_type.get("Encounter", [])),
        "episodesOfCare": searchset(by_type.get("EpisodeOfCare", [])),
        "allianceObservations": searchset(by_type.get("Observation", [])),
        "allianceQuestionnaires": None,
    }


def client_resources(registry: Registry, client_id: str, profile: Any) -> list[dict[str, Any]]:
    """One simulated client's FHIR resources (the FHIR edge's own writer)."""
    from service.fhir.examples import bundle_for

    body = RiskRequest.model_validate(request_for(registry.cohort, client_id))
    return [e["resource"] for e in bundle_for(body, profile)["entry"]]


def hook_body(resources: list[dict[str, Any]], hook: str = "patient-view", **extra: Any
              ) -> dict[str, Any]:  # fmt: skip
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    body = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/t-1", "patientId": patient["id"]},
        "prefetch": prefetch_of(resources),
    }
    body.update(extra)
    return body
