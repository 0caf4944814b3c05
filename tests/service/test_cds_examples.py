"""The documented CDS Hooks example: docs/examples/cds-patient-view-request.json is answered with
docs/examples/cds-patient-view-response.json (card uuids aside) by the test registry's model.

Regenerate both after a change to the cards or the test model:
``ALLIANCE_RISK_UPDATE_EXAMPLES=1 .venv/bin/python -m pytest tests/service/test_cds_examples.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from models.store import project_root
from tests.service.conftest import Registry
from tests.service.helpers import SENT_CLIENT_IDS
from tests.service.test_cds_support import (
    PATIENT_VIEW,
    auth_header,
    cds_client,
    cds_token,
    client_resources,
    ehr_key,
    hook_body,
)

EXAMPLES = project_root() / "docs" / "examples"
REQUEST = EXAMPLES / "cds-patient-view-request.json"
RESPONSE = EXAMPLES / "cds-patient-view-response.json"


def _without_uuids(body: dict[str, Any]) -> dict[str, Any]:
    return {"cards": [{k: v for k, v in c.items() if k != "uuid"} for c in body["cards"]]}


def test_the_documented_request_yields_the_documented_response(
    registry: Registry, tmp_path: Path
) -> None:
    key = ehr_key()
    update = os.environ.get("ALLIANCE_RISK_UPDATE_EXAMPLES") == "1"
    for client in cds_client(registry, tmp_path / "cds", key):
        if update:
            profile = client.app.state.store.current.scorer.profile
            body = _high_risk_request(client, registry, profile, key)
            REQUEST.write_text(json.dumps(body, indent=2) + "\n")
        body = json.loads(REQUEST.read_text())
        SENT_CLIENT_IDS.add(body["context"]["patientId"])
        response = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                               headers=auth_header(cds_token(key)))  # fmt: skip
        assert response.status_code == 200, response.text
        if update:
            RESPONSE.write_text(json.dumps(response.json(), indent=2) + "\n")
        expected = json.loads(RESPONSE.read_text())
        assert expected["cards"], "the example shows a card"
        assert _without_uuids(response.json()) == _without_uuids(expected)


def _high_risk_request(client: Any, registry: Registry, profile: Any, key: Any) -> dict[str, Any]:
    """A hook request for the first simulated client whose card is critical."""
    for cid in registry.cohort.clients["client_id"].head(300):
        body = hook_body(client_resources(registry, str(cid), profile))
        body["hookInstance"] = "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
        body["fhirServer"] = "https://ehr.example.org/fhir"
        answer = client.post(f"/cds-services/{PATIENT_VIEW}", json=body,
                             headers=auth_header(cds_token(key)))  # fmt: skip
        if any(c["indicator"] == "critical" for c in answer.json()["cards"]):
            return body
    pytest.fail("no high-risk simulated client in the first 300")
