"""POST /v1/risk/what-if: the scorer's scenarios, with /v1's tenancy, audit and no-PHI rules."""

from __future__ import annotations

import json
import statistics
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from features.contract import CLIENT_ID
from features.validation import UNKNOWN_ATTENDANCE
from models.whatif import ASSOCIATION, LOWER_OF_BEST_AND_CLINIC, NOT_MONOTONE, what_if
from service.episodes import to_episodes
from service.schemas import RiskRequest
from tests.service.conftest import TEST_CLINIC, Registry, bearer
from tests.service.helpers import SENT_CLIENT_IDS, request_for

ROUTE = "/v1/risk/what-if"
SECRET = "SECRET-CLIENT-9313"


def _clients(registry: Registry, n: int) -> list[str]:
    counts = registry.cohort.sessions.groupby(CLIENT_ID).size()
    ids = counts.sort_values(kind="stable").index.to_numpy()
    return [str(x) for x in ids[np.linspace(0, len(ids) - 1, n).astype(int)]]


def _audit(registry: Registry) -> list:
    from service.audit_log import records

    path = registry.root / "audit" / "audit.jsonl"
    return list(records(path)) if path.exists() else []


def test_what_if_is_the_served_scorer_on_each_scenario(api: TestClient, registry: Registry) -> None:
    scorer = api.app.state.store.current.scorer
    for cid in _clients(registry, 6):
        body = request_for(registry.cohort, cid)
        r = api.post(ROUTE, json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        risk = api.post("/v1/risk", json=body).json()
        assert out["probability"] == risk["probability"]
        assert out["landmark"] == risk["landmark"] and out["risk_band"] == risk["risk_band"]
        assert out["model"] == risk["model"] and out["request_id"] == r.headers["x-request-id"]
        (expected,) = what_if(scorer, to_episodes([RiskRequest(**body)], scorer.profile).episodes)
        assert [(s["kind"], s["element"], s["probability"]) for s in out["scenarios"]] == [
            (s.kind, s.element, s.probability) for s in expected.scenarios
        ]
        changes = [s["change_pp"] for s in out["scenarios"]]
        assert changes == sorted(changes)
        # The served model carries typical levels: recovery targets are the lower of the two.
        assert scorer.reference is not None and out["notes"] == list(expected.notes)
        assert out["notes"][0] == LOWER_OF_BEST_AND_CLINIC.format(
            n=scorer.reference.typical.min_clients
        )
        for s in out["scenarios"]:
            assert 0.0 <= s["probability"] <= 1.0
            shown = round(s["change_pp"], 1)
            assert s["raises_risk"] == (shown > 0 and s["kind"] != "next_attended")
            assert (NOT_MONOTONE in s["text"]) == s["raises_risk"]
            assert s["text"].endswith(ASSOCIATION)
            assert cid not in s["text"]


def test_next_attended_is_risk_on_the_body_with_the_appointment_appended(
    api: TestClient, registry: Registry
) -> None:
    checked = 0
    for cid in _clients(registry, 6):
        body = request_for(registry.cohort, cid)
        out = api.post(ROUTE, json=body).json()
        (scenario,) = [s for s in out["scenarios"] if s["kind"] == "next_attended"]
        sessions = body["sessions"]
        days = [date.fromisoformat(x["session_date"]) for x in sessions]
        gaps = [(b - a).days for a, b in zip(days, days[1:], strict=False)]
        interval = max(1, int(statistics.median(gaps))) if gaps else 7
        carried: dict[str, float] = {}
        for x in sessions:
            if x["attendance"] == "attended":
                carried.update(x["ratings"])
        appended = {
            "session_number": sessions[-1]["session_number"] + 1,
            "session_date": str(days[-1] + timedelta(days=interval)),
            "attendance": "attended",
            "ratings": carried,
        }
        later = api.post("/v1/risk", json={**body, "sessions": [*sessions, appended]})
        assert later.status_code == 200, later.text
        assert scenario["probability"] == later.json()["probability"]
        assert scenario["landmark"] == later.json()["landmark"] == appended["session_number"]
        checked += 1
    assert checked == 6


def test_tokens_scopes_and_tenancy_as_for_risk(api: TestClient, registry: Registry,
                                               dev_key_dir: Path) -> None:  # fmt: skip
    body = request_for(registry.cohort, _clients(registry, 3)[1])
    assert api.post(ROUTE, json=body, headers={"Authorization": ""}).status_code == 401
    reader = bearer(dev_key_dir, scopes=("risk:read",))
    assert api.post(ROUTE, json=body, headers=reader).status_code == 200
    assert api.post(ROUTE, json=body, headers=bearer(dev_key_dir, scopes=("model:read",))
                    ).status_code == 403  # fmt: skip
    # Another clinic's client: the same 404 as a missing one, nothing about it in the body.
    r = api.post(ROUTE, json=body, headers=bearer(dev_key_dir, clinic="clinic-other"))
    assert r.status_code == 404 and r.json()["detail"] == "client not found"
    assert body["client_id"] not in r.text


def test_errors_carry_paths_and_never_client_data(api: TestClient, registry: Registry) -> None:
    SENT_CLIENT_IDS.add(SECRET)
    body = request_for(registry.cohort, _clients(registry, 3)[2])
    body["client_id"] = SECRET
    body["sessions"][0]["attendance"] = "zzq-not-a-code"
    body["sessions"][0]["ratings"] = {}
    r = api.post(ROUTE, json=body)
    assert r.status_code == 422
    assert r.json()["errors"] == [{"loc": ["sessions", 0, "attendance"], "reason":
                                   UNKNOWN_ATTENDANCE}]  # fmt: skip
    assert SECRET not in r.text and "zzq" not in r.text
    body = request_for(registry.cohort, _clients(registry, 3)[2])
    body["client_id"] = SECRET
    rated = next(i for i, s in enumerate(body["sessions"]) if s["ratings"])
    body["sessions"][rated]["ratings"]["goals"] = 97.25
    r = api.post(ROUTE, json=body)
    assert r.status_code == 422 and [e["loc"] for e in r.json()["errors"]] == [
        ["sessions", rated, "ratings", "goals"]
    ]
    assert SECRET not in r.text and "97.25" not in r.text


def test_each_request_leaves_exactly_one_audit_record(api: TestClient, registry: Registry,
                                                      dev_key_dir: Path) -> None:  # fmt: skip
    cid = _clients(registry, 2)[1]
    body = request_for(registry.cohort, cid)
    bad = json.loads(json.dumps(body))
    bad["sessions"][0]["attendance"] = "zzz"
    cases = [
        ({}, body, 200, "ok"),
        ({"Authorization": ""}, body, 401, "denied"),
        (bearer(dev_key_dir, scopes=("model:read",)), body, 403, "denied"),
        (bearer(dev_key_dir, clinic="clinic-other"), body, 404, "not_found"),
        ({}, bad, 422, "invalid"),
    ]
    for headers, payload, status, outcome in cases:
        before = len(_audit(registry))
        r = api.post(ROUTE, json=payload, headers=headers)
        assert r.status_code == status
        (rec,) = _audit(registry)[before:]
        assert (rec.action, rec.outcome, rec.status) == ("risk.what_if", outcome, status)
        assert rec.request_id == r.headers["x-request-id"]
        if status in (200, 404):
            assert rec.client_ref and rec.client_ref != cid
        if status == 200:
            assert rec.clinic == TEST_CLINIC and rec.model_version == "1"
    raw = (registry.root / "audit" / "audit.jsonl").read_text()
    assert cid not in raw and body["sessions"][0]["session_date"] not in raw
