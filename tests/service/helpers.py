"""Request bodies built from simulated clients, and the checks every risk response must pass."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from pydantic import TypeAdapter

from service.schemas import RiskResponse

#: Built once: pydantic reads the dataclasses' source for their docstrings, and CPython 3.11's
#: compile() is not safe to run from several threads at once (the load tests call this from
#: threads).
_RESPONSE = TypeAdapter(RiskResponse)

#: Every client id a service test has put in a request: the session-wide log scan looks for
#: them (tests/service/conftest.py).
SENT_CLIENT_IDS: set[str] = set()


def request_for(cohort, client_id: str, clinic: str = "clinic-test") -> dict[str, Any]:
    """The ``RiskRequest`` body of one simulated client (all its appointments), filed under
    ``clinic`` (the clinic is not a model input; tokens are minted for it)."""
    s = cohort.sessions[cohort.sessions["client_id"] == client_id].sort_values("session_number")
    c = cohort.clients[cohort.clients["client_id"] == client_id].iloc[0]
    elements = cohort.profile.element_names
    sessions = []
    for row in s.itertuples(index=False):
        ratings = {
            e: float(getattr(row, f"alliance_{e}"))
            for e in elements
            if not pd.isna(getattr(row, f"alliance_{e}"))
        }
        sessions.append(
            {
                "session_number": int(row.session_number),
                "session_date": str(pd.Timestamp(row.session_date).date()),
                "attendance": str(row.attendance),
                "ratings": ratings,
            }
        )
    SENT_CLIENT_IDS.add(str(c["client_id"]))
    return {
        "client_id": str(c["client_id"]),
        "clinic_id": clinic,
        "therapist_id": str(c["therapist_id"]),
        "intake_date": str(pd.Timestamp(c["intake_date"]).date()),
        "age": int(c["age"]),
        "sessions": sessions,
    }


def check_risk_body(body: dict[str, Any]) -> RiskResponse:
    """Schema-valid, and the explanation adds up exactly to the output in its space."""
    parsed = _RESPONSE.validate_python(body)
    e = parsed.explanation
    total = e.base_value + sum(c.contribution for c in e.contributions)
    assert math.isclose(total, e.output_value, abs_tol=1e-6)
    if e.space == "calibrated log-odds":
        assert math.isclose(1 / (1 + math.exp(-e.output_value)), parsed.probability, abs_tol=1e-9)
    assert 0.0 <= parsed.probability <= 1.0
    assert len(e.drivers) == min(3, len(e.contributions))
    magnitudes = [abs(d.contribution) for d in e.drivers]
    assert magnitudes == sorted(magnitudes, reverse=True)
    by_group = {c.group: c.contribution for c in e.contributions}
    for d in e.drivers:
        assert np.isclose(d.contribution, by_group[d.group])
        assert d.text and "nan" not in d.text.lower()
    assert len(e.features) == 10
    return parsed
