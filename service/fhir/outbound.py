"""Scores and problems as FHIR R4 resources: ``RiskAssessment``, ``Parameters`` and
``OperationOutcome``.

Plain dicts built from the scorer's result objects (no second serialisation of a score): the
tests parse every one with ``fhir.resources.R4B`` and check the R4 invariants that apply.
"""

from __future__ import annotations

import html
import uuid
from collections.abc import Sequence
from typing import Any

from models.results import RiskScore
from service.fhir import codes
from service.fhir.inbound import FhirEpisode, FhirIssue
from service.fhir.reader import MAX_ISSUES, FhirInputError
from service.fhir.settings import FhirSettings
from service.model_store import LoadedModel

#: The contained Device that stands for the model (RiskAssessment.performer).
DEVICE_ID = "model"
#: Media type of every FHIR body (requests may also say application/json).
FHIR_JSON = "application/fhir+json"
#: Name of the operation's only output parameter (FHIR R4 operations: a single resource named
#: ``return`` is sent as itself unless the request asked in a Parameters resource).
RETURN = "return"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, codes.IDENTIFIER_SYSTEM)

_BAND_DISPLAY = {
    "low": "Low likelihood",
    "moderate": "Moderate likelihood",
    "high": "High likelihood",
}


def assessment_id(episode: FhirEpisode, score: RiskScore) -> str:
    """Stable per patient and landmark appointment: scoring the same history again gives the
    same ``id`` and ``identifier``, so the EHR updates its RiskAssessment instead of adding one."""
    return str(uuid.uuid5(_NAMESPACE, f"{episode.patient_ref}|{score.landmark}"))


def _device(model: LoadedModel) -> dict[str, Any]:
    return {
        "resourceType": "Device",
        "id": DEVICE_ID,
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "version": [{"value": model.version}],
        "type": {"text": "Calibrated machine-learning risk model (software)"},
    }


def _narrative(score: RiskScore, model: LoadedModel) -> dict[str, Any]:
    text = (
        f"Dropout risk {score.risk_band} ({score.probability:.0%}) at appointment "
        f"{score.landmark}, model {model.name} version {model.version}."
    )
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p></div>',
    }


def risk_assessment(
    score: RiskScore,
    episode: FhirEpisode,
    *,
    model: LoadedModel,
    request_id: str,
    settings: FhirSettings,
) -> dict[str, Any]:
    """The score as an R4 ``RiskAssessment``.

    ``probabilityDecimal`` is a percentage (0-100), as R4 defines it ("Decimal values are
    expressed as percentages as well (max = 100)"): /v1's ``probability`` times 100.
    ``whenPeriod`` starts at the landmark appointment and has no end (:func:`_horizon`).
    ``rationale`` joins the drivers' texts, ``mitigation`` their focus suggestions.
    ``meta.source`` carries the request id.
    """
    del settings  # nothing of the output is configurable yet; kept for a stable signature
    ident = assessment_id(episode, score)
    prediction: dict[str, Any] = {
        "outcome": {
            "coding": [
                {
                    "system": codes.CODE_SYSTEM,
                    "code": codes.DROPOUT,
                    "display": "Dropout from psychotherapy",
                }
            ],
            "text": "Dropout from psychotherapy",
        },
        "probabilityDecimal": round(score.probability * 100.0, 4),
        "qualitativeRisk": {
            "coding": [
                {
                    "system": codes.RISK_PROBABILITY,
                    "code": score.risk_band,
                    "display": _BAND_DISPLAY[score.risk_band],
                }
            ]
        },
    }
    horizon = _horizon(score, episode)
    if horizon is not None:
        prediction["whenPeriod"] = {"start": horizon}
    drivers = score.explanation.drivers
    rationale = " ".join(f"{d.label}: {d.text}." for d in drivers)
    if rationale:
        prediction["rationale"] = rationale
    out: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": ident,
        "meta": {"source": f"urn:alliance-risk:request:{request_id or 'none'}"},
        "text": _narrative(score, model),
        "contained": [_device(model)],
        "identifier": [{"system": codes.IDENTIFIER_SYSTEM, "value": ident}],
        "status": "final",
        "method": {
            "coding": [
                {
                    "system": codes.CODE_SYSTEM,
                    "code": codes.MODEL_METHOD,
                    "display": "alliance-risk calibrated dropout model",
                }
            ],
            "text": f"{model.name} version {model.version}",
        },
        "code": {
            "coding": [
                {
                    "system": codes.CODE_SYSTEM,
                    "code": codes.DROPOUT_RISK,
                    "display": "Psychotherapy dropout risk assessment",
                }
            ]
        },
        "subject": {"reference": episode.patient_ref},
        "occurrenceDateTime": score.scored_at.isoformat(),
        "performer": {"reference": f"#{DEVICE_ID}", "display": f"{model.name} {model.version}"},
        "prediction": [prediction],
    }
    if episode.basis:
        out["basis"] = [{"reference": ref} for ref in episode.basis]
    focus = list(dict.fromkeys(d.focus for d in drivers if d.focus))
    if focus:
        out["mitigation"] = " ".join(focus)
    return out


def _horizon(score: RiskScore, episode: FhirEpisode) -> str | None:
    """The start of the prediction's period: the date of the landmark appointment.

    The model's label is the episode's outcome: ``dropout`` is an end of treatment the client
    chose, before the planned end (docs/data-contract.md), of an episode still open at the
    landmark. So the risk is of dropout from the landmark appointment on, until the episode
    ends; no fixed duration. R4 says this as ``whenPeriod`` with a ``start`` and no ``end``.
    """
    for session in episode.request.sessions:
        if session["session_number"] == score.landmark:
            return str(session["session_date"])
    return None


def as_parameters(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` as the operation's ``return`` parameter."""
    return {"resourceType": "Parameters", "parameter": [{"name": RETURN, "resource": resource}]}


#: OperationOutcome issue type of an HTTP error status.
ISSUE_TYPE = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    408: "timeout",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    500: "exception",
    503: "transient",
    504: "timeout",
}


def operation_outcome(issues: Sequence[FhirIssue], *, status: int) -> dict[str, Any]:
    """An ``OperationOutcome`` with one ``error`` issue each (``fatal`` for 5xx), the reason as
    ``diagnostics`` and the FHIRPath as ``expression``; never a submitted value. With no
    issues, one of the status's issue type. At most :data:`~service.fhir.reader.MAX_ISSUES`
    are listed, then one ``information`` issue counting the rest."""
    severity = "fatal" if status >= 500 else "error"
    errors = sum(issue.code != "informational" for issue in issues)
    listed = FhirInputError(issues).issues if errors > MAX_ISSUES else list(issues)
    listed = listed or [FhirIssue("", ISSUE_TYPE.get(status, "processing"), "request failed")]
    out = []
    for issue in listed:
        entry: dict[str, Any] = {
            "severity": severity if issue.severity == "error" else issue.severity,
            "code": issue.code,
            "diagnostics": issue.reason,
        }
        if issue.expression:
            entry["expression"] = [issue.expression]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}
