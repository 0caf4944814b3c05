"""A ``RiskRequest`` written as the FHIR R4 Bundle an EHR would send: the inverse of
:mod:`service.fhir.inbound`, for the documented example (docs/examples/fhir-bundle.json), the
tests' round trips and the benchmark."""

from __future__ import annotations

from typing import Any

from features.profiles import InstrumentProfile
from service.fhir import codes
from service.schemas import RiskRequest

_STATUS = {
    "attended": ("fulfilled", None),
    "no_show": ("noshow", None),
    "late_cancel": ("cancelled", codes.LATE_CANCEL),
    "cancelled": ("cancelled", None),
    "rescheduled": ("cancelled", codes.RESCHEDULED),
}


def bundle_for(request: RiskRequest, profile: InstrumentProfile) -> dict[str, Any]:
    """A ``collection`` Bundle: the Patient (``managingOrganization`` the clinic), an
    EpisodeOfCare (the intake), one Appointment per session (the therapist a participant) and
    one Observation per rated session (one component per element)."""
    pid = request.client_id
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": pid,
        "managingOrganization": {"reference": f"Organization/{request.clinic_id}"},
    }
    if request.age is not None:
        # Born on the intake day, ``age`` years before: the mapping reads back the same age.
        intake = request.intake_date
        patient["birthDate"] = intake.replace(year=intake.year - request.age).isoformat()
    resources: list[dict[str, Any]] = [
        patient,
        {
            "resourceType": "EpisodeOfCare",
            "id": f"{pid}-episode",
            "status": "active",
            "patient": {"reference": f"Patient/{pid}"},
            "managingOrganization": {"reference": f"Organization/{request.clinic_id}"},
            "period": {"start": request.intake_date.isoformat()},
        },
    ]
    for s in sorted(request.sessions, key=lambda s: s["session_number"]):
        n = s["session_number"]
        status, reason = _STATUS[s["attendance"]]
        start = f"{s['session_date'].isoformat()}T10:00:00Z"
        appointment: dict[str, Any] = {
            "resourceType": "Appointment",
            "id": f"{pid}-a{n}",
            "status": status,
            "start": start,
            "end": f"{s['session_date'].isoformat()}T10:50:00Z",
            "participant": [
                {"actor": {"reference": f"Patient/{pid}"}, "status": "accepted"},
                {
                    "actor": {"reference": f"Practitioner/{request.therapist_id}"},
                    "status": "accepted",
                },
            ],
        }
        if reason is not None:
            appointment["cancelationReason"] = {
                "coding": [{"system": codes.CODE_SYSTEM, "code": reason}]
            }
        resources.append(appointment)
        ratings = s.get("ratings") or {}
        if ratings:
            resources.append(_observation(pid, n, start, ratings, profile))
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


def _observation(
    pid: str, n: int, start: str, ratings: dict[str, float | None], profile: InstrumentProfile
) -> dict[str, Any]:
    components = []
    for element in profile.element_names:
        code = {"coding": [{"system": codes.CODE_SYSTEM,
                            "code": codes.element_code(profile, element)}]}  # fmt: skip
        value = ratings.get(element)
        if value is None:
            components.append({"code": code, "dataAbsentReason": {"text": "not rated"}})
        else:
            components.append({"code": code, "valueQuantity": {"value": value}})
    return {
        "resourceType": "Observation",
        "id": f"{pid}-r{n}",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "survey",
                    }
                ]
            }
        ],  # fmt: skip
        "code": {"coding": [{"system": codes.CODE_SYSTEM, "code": codes.instrument_code(profile)}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": start,
        "component": components,
    }
