"""The local CodeSystem of alliance-risk and the instruments' item tables.

No LOINC or SNOMED codes exist for the alliance instruments, their elements or psychotherapy
dropout, so they are published here, at a canonical URL that never changes (docs/fhir.md;
``GET /fhir/CodeSystem/alliance-risk`` serves the resource). Codes are
``<instrument>``, ``<instrument>.<element>`` and ``<instrument>.item-<n>``.
"""

from __future__ import annotations

from typing import Any, Final

from features.profiles import PROFILES, InstrumentProfile

#: Canonical base of every definition of ours (an identifier: stable, never a place to fetch).
CANONICAL_BASE: Final = "http://alliance-risk.org/fhir"
CODE_SYSTEM: Final = f"{CANONICAL_BASE}/CodeSystem/alliance-risk"
#: RiskAssessment.identifier.system: one identifier per patient and landmark appointment.
IDENTIFIER_SYSTEM: Final = f"{CANONICAL_BASE}/NamingSystem/risk-assessment"
#: QuestionnaireResponse.questionnaire of each instrument: ``<base>/Questionnaire/<instrument>``.
QUESTIONNAIRE_BASE: Final = f"{CANONICAL_BASE}/Questionnaire/"
#: HL7 qualitative risk (low, moderate, high are the service's bands).
RISK_PROBABILITY: Final = "http://terminology.hl7.org/CodeSystem/risk-probability"
#: HL7 appointment cancellation reasons (R4 Appointment.cancelationReason).
CANCELLATION_REASON: Final = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
#: R5 Appointment.cancellationDate carried in R4 (FHIR cross-version extension).
CANCELLATION_DATE_EXT: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Appointment.cancellationDate"
)
#: The numeric value of a coded (Likert) answer, on its Coding: R4's core ``ordinalValue``, its
#: R5 name ``itemWeight`` (HL7 extensions pack: "used to be called ordinalValue") and the
#: pre-R4 ``questionnaire-ordinalValue``. Each carries a ``valueDecimal``.
ORDINAL_VALUE_EXTS: Final = (
    "http://hl7.org/fhir/StructureDefinition/ordinalValue",
    "http://hl7.org/fhir/StructureDefinition/itemWeight",
    "http://hl7.org/fhir/StructureDefinition/questionnaire-ordinalValue",
)

DROPOUT: Final = "dropout"
DROPOUT_RISK: Final = "dropout-risk"
MODEL_METHOD: Final = "alliance-risk-model"
LATE_CANCEL: Final = "late-cancel"
RESCHEDULED: Final = "rescheduled"

#: Hatcher & Gillaspy 2006 (WAI-SR, 12 items 1-5): subscale -> item numbers; a subscale is the
#: mean of its items (Munder et al. 2010 score it the same way).
WAI_SR_ITEMS: Final = {"goal": (4, 6, 8, 11), "task": (1, 2, 10, 12), "bond": (3, 5, 7, 9)}
#: Answered items a WAI-SR subscale needs (one missing item is prorated by the mean).
WAI_SR_MIN_ITEMS: Final = 3


def instrument_code(profile: InstrumentProfile) -> str:
    """``alliance6``, ``srs`` or ``wai-sr``."""
    return profile.name.replace("_", "-")


def element_code(profile: InstrumentProfile, element: str) -> str:
    return f"{instrument_code(profile)}.{element}"


def item_code(profile: InstrumentProfile, n: int) -> str:
    return f"{instrument_code(profile)}.item-{n}"


def subscale_items(profile: InstrumentProfile) -> dict[str, tuple[int, ...]]:
    """Element -> the numbered items scored into it (empty: the instrument's items are its
    elements, as the SRS's four and the six alliance elements are)."""
    return dict(WAI_SR_ITEMS) if profile.name == "wai_sr" else {}


def _concept(code: str, display: str, definition: str | None = None) -> dict[str, Any]:
    out = {"code": code, "display": display}
    if definition:
        out["definition"] = definition
    return out


def concepts() -> list[dict[str, Any]]:
    """Every concept of the CodeSystem, in a fixed order."""
    out = [
        _concept(DROPOUT, "Dropout from psychotherapy",
                 "The client ends treatment without a planned ending (unilateral termination)."),
        _concept(DROPOUT_RISK, "Psychotherapy dropout risk assessment"),
        _concept(MODEL_METHOD, "alliance-risk calibrated dropout model",
                 "Gradient-boosted model over alliance and attendance, calibrated, explained "
                 "by alliance element."),
        _concept(LATE_CANCEL, "Late cancellation by the client",
                 "Appointment.cancelationReason: the client cancelled within the clinic's "
                 "late-cancel window; counted as a missed appointment."),
        _concept(RESCHEDULED, "Rescheduled",
                 "Appointment.cancelationReason: the appointment was moved to another time; "
                 "neither attended nor missed."),
    ]  # fmt: skip
    for profile in PROFILES.values():
        out.append(_concept(instrument_code(profile), profile.description or profile.name))
        for element in profile.elements:
            out.append(_concept(element_code(profile, element.name), element.label))
        for subscale, items in subscale_items(profile).items():
            for n in items:
                out.append(_concept(item_code(profile, n), f"Item {n} ({subscale} subscale)"))
    return out


def code_system() -> dict[str, Any]:
    """The CodeSystem resource (R4), complete."""
    return {
        "resourceType": "CodeSystem",
        "id": "alliance-risk",
        "url": CODE_SYSTEM,
        "version": "1",
        "name": "AllianceRisk",
        "title": "alliance-risk instruments and outcomes",
        "status": "active",
        "experimental": False,
        "publisher": "alliance-risk",
        "description": "Alliance instruments (their elements and items) and the psychotherapy "
        "dropout outcome, for which no LOINC or SNOMED CT codes exist.",
        "caseSensitive": True,
        "content": "complete",
        "concept": concepts(),
    }
