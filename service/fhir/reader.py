"""What the FHIR mapping shares: the issue type, the reader that collects issues and request
paths, the visit record and value readers for references, dates, codings and numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from features.profiles import InstrumentProfile
from service.fhir.settings import FhirSettings

NEEDS_ID = "the resource needs an id (RiskAssessment.basis refers to it)"
NOT_A_STRING = "must be a string"
BAD_DATE = "must be a FHIR date or dateTime with year, month and day"
OTHER_PATIENT = "refers to a Patient other than the one of these resources"
NOT_JSON_OBJECT = "must be a JSON object"


@dataclass(frozen=True)
class FhirIssue:
    """One problem of the submitted resources: where (FHIRPath), which OperationOutcome issue
    type (``invalid``, ``structure``, ``required``, ``value``, ``not-found``, ...) and why, in a
    fixed wording that never quotes what was sent."""

    expression: str
    code: str
    reason: str


Loc = tuple[str | int, ...]


@dataclass
class Visit:
    index: int
    kind: str  # Appointment | Encounter
    id: str
    start: datetime
    attendance: str
    practitioner: str | None
    refs: list[str]
    status_path: str
    start_path: str


def entry_path(root: str, i: int) -> str:
    return f"{root}[{i}].resource"


def ref_id(ref: Any, kinds: Sequence[str]) -> str | None:
    """The logical id in a Reference to one of ``kinds`` (relative or absolute URL, or a
    logical ``identifier``), or None."""
    if not isinstance(ref, Mapping):
        return None
    text = ref.get("reference")
    if isinstance(text, str) and text and not text.startswith("#"):
        parts = text.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] in kinds and parts[-1]:
            return parts[-1]
        return None
    ident = ref.get("identifier")
    kind = ref.get("type")
    if isinstance(ident, Mapping) and (kind is None or kind in kinds):
        value = ident.get("value")
        if isinstance(value, str) and value:
            return value
    return None


def parse_instant(value: Any) -> datetime | None:
    """A FHIR date or dateTime with a day, as an aware datetime (no zone: UTC); else None."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        parsed = datetime.fromisoformat(value) if len(value) > 10 else None
        if parsed is None:
            parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def partial_date(value: Any) -> date | None:
    """A FHIR date (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``), completed to its first day."""
    if not isinstance(value, str):
        return None
    for text in (value, f"{value}-01", f"{value}-01-01"):
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            continue
    return None


def codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, Mapping) or not isinstance(concept.get("coding"), list):
        return []
    return [(c.get("system"), c.get("code")) for c in concept["coding"] if isinstance(c, Mapping)]


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class Reader:
    """The state of one mapping: the issues found and what each request field came from."""

    def __init__(self, root: str, settings: FhirSettings, profile: InstrumentProfile) -> None:
        self.root = root
        self.entries = f"{root}.entry" if root in ("Bundle",) else root
        self.settings = settings
        self.profile = profile
        self.issues: list[FhirIssue] = []
        self.paths: dict[Loc, str] = {}

    def at(self, i: int) -> str:
        return entry_path(self.entries, i)

    def issue(self, expression: str, code: str, reason: str) -> None:
        self.issues.append(FhirIssue(expression, code, reason))

    def string(
        self, resource: Mapping[str, Any], name: str, where: str, *, required: bool
    ) -> str | None:
        value = resource.get(name)
        if value is None:
            if required:
                self.issue(f"{where}.{name}", "required", NEEDS_ID if name == "id" else "required")
            return None
        if not isinstance(value, str) or not value:
            self.issue(f"{where}.{name}", "structure", NOT_A_STRING)
            return None
        return value

    def same_patient(self, ref: Any, patient_id: str | None, where: str) -> None:
        other = ref_id(ref, ("Patient",))
        if other is not None and patient_id is not None and other != patient_id:
            self.issue(where, "invalid", OTHER_PATIENT)
