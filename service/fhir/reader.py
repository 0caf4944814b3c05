"""What the FHIR mapping shares: the issue type, the reader that collects issues (at most
:data:`MAX_ISSUES`) and request paths, the limits, the visit record and value readers for
references, dates, codings and numbers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from features.contract import SESSION_NUMBER_MAX
from features.profiles import InstrumentProfile
from service.errors import MAX_REPORTED_ERRORS
from service.fhir.settings import FhirSettings

#: Issues listed in one OperationOutcome: /v1's budget. The rest are counted in one closing
#: ``informational`` issue (/v1's ``more_errors``), so that a body of junk never gets an answer
#: that grows with its mistakes.
MAX_ISSUES = MAX_REPORTED_ERRORS
#: Resources a visit may bring: its Appointment, Encounter, alliance Observation and
#: QuestionnaireResponse.
RESOURCES_PER_VISIT = 4
#: Room for the Patient, EpisodeOfCare, Organization, Practitioners and ignored resources.
OTHER_RESOURCES = 100
#: The most resources mapped whatever the settings (:func:`max_resources` of the data
#: contract's ceiling on appointments).
MAX_RESOURCES = SESSION_NUMBER_MAX * RESOURCES_PER_VISIT + OTHER_RESOURCES


def max_resources(max_sessions: int) -> int:
    """Bundle entries (or prefetched resources) mapped at most: /v1's appointment cap
    (``ALLIANCE_RISK_MAX_SESSIONS``, default 500) times :data:`RESOURCES_PER_VISIT`, plus
    :data:`OTHER_RESOURCES`. More is refused (413) before any is read."""
    return max_sessions * RESOURCES_PER_VISIT + OTHER_RESOURCES


def too_many_resources(max_sessions: int) -> str:
    return (
        f"more than {max_resources(max_sessions)} resources ({max_sessions} appointments of "
        f"{RESOURCES_PER_VISIT} resources each, and {OTHER_RESOURCES} others); send fewer"
    )


NEEDS_ID = "the resource needs an id (RiskAssessment.basis refers to it)"
NOT_A_STRING = "must be a string"
BAD_DATE = "must be a FHIR date or dateTime with year, month and day"
OTHER_PATIENT = "refers to a Patient other than the one of these resources"
NOT_JSON_OBJECT = "must be a JSON object"
NOT_A_LIST = "must be a JSON array"


@dataclass(frozen=True)
class FhirIssue:
    """One problem of the submitted resources: where (FHIRPath), which OperationOutcome issue
    type (``invalid``, ``structure``, ``required``, ``value``, ``not-found``, ...) and why, in a
    fixed wording that never quotes what was sent."""

    expression: str
    code: str
    reason: str
    severity: str = "error"


def more_issues(count: int) -> FhirIssue:
    """The closing issue of a capped list: how many issues were found and not listed."""
    return FhirIssue(
        "", "informational", f"{count} more issues not listed (at most {MAX_ISSUES} are)",
        severity="information",
    )  # fmt: skip


class FhirInputError(Exception):
    """The resources cannot be turned into a request: answered ``status`` (422) with the first
    :data:`MAX_ISSUES` issues and, when there were more, :func:`more_issues` closing the list."""

    def __init__(self, issues: Sequence[FhirIssue], more: int = 0, *, status: int = 422) -> None:
        super().__init__("the FHIR resources do not meet the data contract")
        listed = [i for i in issues if i.code != "informational"]
        more += max(0, len(listed) - MAX_ISSUES)
        self.issues = listed[:MAX_ISSUES] + ([more_issues(more)] if more else [])
        self.status = status


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


#: Bundle ``entry.fullUrl`` -> ``(resourceType, id)`` of its resource (``urn:uuid:`` ones too).
FullUrls = Mapping[str, tuple[str, str]]


def ref_id(ref: Any, kinds: Sequence[str], full_urls: FullUrls | None = None) -> str | None:
    """The logical id in a Reference to one of ``kinds`` (relative or absolute URL, a
    ``fullUrl`` of the Bundle such as ``urn:uuid:...``, or a logical ``identifier``), or None."""
    if not isinstance(ref, Mapping):
        return None
    text = ref.get("reference")
    if isinstance(text, str) and full_urls and text in full_urls:
        target_kind, target_id = full_urls[text]
        return target_id if target_kind in kinds else None
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
    return [
        (_text(c.get("system")), _text(c.get("code")))
        for c in concept["coding"]
        if isinstance(c, Mapping)
    ]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def status_of(resource: Mapping[str, Any]) -> str | None:
    """``status`` if a string (a list or object would not even be hashable), else None."""
    return _text(resource.get("status"))


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class Reader:
    """The state of one mapping: the issues found and what each request field came from."""

    def __init__(
        self,
        root: str,
        settings: FhirSettings,
        profile: InstrumentProfile,
        full_urls: FullUrls | None = None,
    ) -> None:
        self.root = root
        self.entries = f"{root}.entry" if root in ("Bundle",) else root
        self.settings = settings
        self.profile = profile
        self.full_urls: FullUrls = full_urls or {}
        self.issues: list[FhirIssue] = []
        self.more = 0
        """Issues found past :data:`MAX_ISSUES`: counted, not kept."""
        self.paths: dict[Loc, str] = {}

    def ref(self, ref: Any, kinds: Sequence[str]) -> str | None:
        """:func:`ref_id` through the Bundle's ``fullUrl`` map."""
        return ref_id(ref, kinds, self.full_urls)

    def error(self) -> FhirInputError:
        return FhirInputError(self.issues, self.more)

    def as_list(self, value: Any, expression: str) -> list[Any]:
        """``value`` if a JSON array, ``[]`` if absent; else a ``structure`` issue and ``[]``."""
        if value is None or isinstance(value, list):
            return value or []
        self.issue(expression, "structure", NOT_A_LIST)
        return []

    def as_mapping(self, value: Any, expression: str) -> Mapping[str, Any]:
        """``value`` if a JSON object, ``{}`` if absent; else a ``structure`` issue and ``{}``."""
        if value is None or isinstance(value, Mapping):
            return value or {}
        self.issue(expression, "structure", NOT_JSON_OBJECT)
        return {}

    def at(self, i: int) -> str:
        return entry_path(self.entries, i)

    def issue(self, expression: str, code: str, reason: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(FhirIssue(expression, code, reason))
        else:
            self.more += 1

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
        other = self.ref(ref, ("Patient",))
        if other is not None and patient_id is not None and other != patient_id:
            self.issue(where, "invalid", OTHER_PATIENT)
