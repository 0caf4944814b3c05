"""SMART App Launch v2 system scopes read by grammar (service/auth/principal.py)."""

from __future__ import annotations

import pytest

from service.auth.principal import check_scope_names, normalise_scopes, smart_scope


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("system/RiskAssessment.rs", (True, "risk:read")),
        ("system/RiskAssessment.r", (True, "risk:read")),
        ("system/RiskAssessment.read", (True, "risk:read")),
        ("system/RiskAssessment.cruds", (True, "risk:read")),
        ("system/RiskAssessment.*", (True, "risk:read")),
        ("system/*.rs", (True, "risk:read")),
        ("system/RiskAssessment.c", (True, None)),  # create only: no reading
        ("system/RiskAssessment.write", (True, None)),
        ("system/Patient.rs", (True, None)),
        ("system/Observation.rs", (True, None)),
        ("system/Observation.read", (True, None)),
        ("system/RiskAssessment.sr", (False, None)),  # v2 letters keep the cruds order
        ("system/RiskAssessment.", (False, None)),
        ("system/Observation.rs?category=survey", (False, None)),  # granular: not enforceable
        ("patient/RiskAssessment.rs", (False, None)),
        ("user/RiskAssessment.read", (False, None)),
        ("system/Condition.rs", (False, None)),
    ],
)
def test_smart_scope_grammar(scope: str, expected: tuple[bool, str | None]) -> None:
    assert smart_scope(scope) == expected


def test_an_ehr_token_s_usual_scopes_are_valid_and_grant_risk_read() -> None:
    usual = ["system/Patient.rs", "system/Observation.rs", "system/RiskAssessment.rs"]
    assert check_scope_names(usual) == frozenset({"risk:read"})
    assert normalise_scopes(usual[:2]) == frozenset()
    with pytest.raises(ValueError, match="unknown scope"):
        check_scope_names(["system/Condition.rs"])
