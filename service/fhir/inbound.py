"""FHIR R4 resources of one client -> the ``RiskRequest`` that ``POST /v1/risk`` validates.

The one mapping from FHIR to the data contract (CDS Hooks prefetch uses it too). It reads:

``Patient``
    ``id`` -> ``client_id``; ``birthDate`` -> ``age`` at intake; ``gender`` (audit only);
    ``managingOrganization`` -> ``clinic_id``.
``Appointment`` / ``Encounter``
    One appointment each (an Encounter whose ``appointment`` is an Appointment of the Bundle is
    the same visit). ``start`` / ``period.start`` -> ``session_date``; the order of the starts ->
    ``session_number``; ``status`` -> ``attendance`` (:data:`APPOINTMENT_STATUS`,
    :data:`ENCOUNTER_STATUS`, :func:`cancelled_as`); the Practitioner participant of the latest
    visit -> ``therapist_id``.
``EpisodeOfCare``
    ``period.start`` -> ``intake_date`` (else the first visit's date);
    ``managingOrganization`` -> ``clinic_id`` when the Patient names none.
``Observation`` / ``QuestionnaireResponse`` coded with the local CodeSystem
    Alliance ratings of the visit named by ``encounter``, else of the visit on the day of
    ``effectiveDateTime`` / ``authored``: one ``component`` (or ``item``) per element, or the
    WAI-SR's twelve items scored into its Goal, Task and Bond subscales.

Everything else is ignored. Problems are :class:`FhirIssue` objects whose ``expression`` is a
FHIRPath into the submitted resources and whose ``reason`` is a fixed wording: never a submitted
value, never a key the caller chose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from features.profiles import PROFILES, InstrumentProfile
from service.errors import pydantic_problems
from service.fhir import codes
from service.fhir.settings import FhirSettings
from service.schemas import RiskRequest

#: R4 Appointment.status -> attendance; ``cancelled`` is decided by :func:`cancelled_as`. The
#: statuses not listed (proposed, pending, booked, waitlist, entered-in-error) have no outcome
#: yet: the appointment is left out.
APPOINTMENT_STATUS = {
    "fulfilled": "attended",
    "arrived": "attended",
    "checked-in": "attended",
    "noshow": "no_show",
    "cancelled": "cancelled",
}
APPOINTMENT_NO_OUTCOME = frozenset(
    {"proposed", "pending", "booked", "waitlist", "entered-in-error"}
)
#: R4 Encounter.status -> attendance (planned, entered-in-error and unknown are left out).
ENCOUNTER_STATUS = {
    "finished": "attended",
    "arrived": "attended",
    "triaged": "attended",
    "in-progress": "attended",
    "onleave": "attended",
    "cancelled": "cancelled",
}
ENCOUNTER_NO_OUTCOME = frozenset({"planned", "entered-in-error", "unknown"})
#: HL7 cancellation reasons that say the clinic, not the client, cancelled (or that the client
#: died): never a late cancel, whatever the time.
_NOT_THE_CLIENTS = ("prov", "maint", "oth-")
_NOT_THE_CLIENTS_EXACT = frozenset({"pat-dec"})
_RATING_STATUS = frozenset({"registered", "preliminary", "final", "amended", "corrected"})
_QR_STATUS = frozenset({"completed", "amended"})
_PRACTITIONER = ("Practitioner", "PractitionerRole")

NOT_A_RESOURCE = "must be a FHIR resource (a JSON object with a resourceType)"
ONE_PATIENT = "the resources must hold exactly one Patient"
NEEDS_ID = "the resource needs an id (RiskAssessment.basis refers to it)"
NOT_A_STRING = "must be a string"
UNKNOWN_STATUS = "not a status of this resource in FHIR R4"
NEEDS_START = "an appointment with an outcome needs its start date and time"
BAD_DATE = "must be a FHIR date or dateTime with year, month and day"
OTHER_PATIENT = "refers to a Patient other than the one of these resources"
NO_VISIT = "no Appointment or Encounter with an outcome (fulfilled, noshow, cancelled, ...)"
NO_CLINIC = "no managing Organization: Patient.managingOrganization or EpisodeOfCare's"
NO_THERAPIST = "no Practitioner participant in any Appointment or Encounter"
OTHER_INSTRUMENT = "ratings of an instrument the served model does not use (see GET /v1/model)"
UNKNOWN_ITEM = "not an element or item code of this instrument in the local CodeSystem"
NEEDS_NUMBER = "needs a number value, or a dataAbsentReason when not rated"
TWICE = "the same element or item is rated twice"
ITEMS_AND_SUBSCALE = "both a subscale and its items are given"
ITEM_OFF_SCALE = "item rating outside the instrument's scale"
NO_RATED_VISIT = "matches no single Appointment or Encounter (by encounter or by date)"
RATED_TWICE = "a second rating of the same appointment"
NOT_JSON_OBJECT = "must be a JSON object"


@dataclass(frozen=True)
class FhirIssue:
    """One problem of the submitted resources: where (FHIRPath), which OperationOutcome issue
    type (``invalid``, ``structure``, ``required``, ``value``, ``not-found``, ...) and why, in a
    fixed wording that never quotes what was sent."""

    expression: str
    code: str
    reason: str


class FhirInputError(Exception):
    """The resources cannot be turned into a request: answered 422 with every issue."""

    def __init__(self, issues: Sequence[FhirIssue]) -> None:
        super().__init__("the FHIR resources do not meet the data contract")
        self.issues = list(issues)


Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FhirEpisode:
    """One client's resources as the request ``/v1/risk`` validates, with where each part of
    the request came from."""

    request: RiskRequest
    patient_ref: str
    """``Patient/<id>``."""
    basis: tuple[str, ...]
    """References of the Appointments, Encounters, Observations and QuestionnaireResponses used."""
    paths: Mapping[Loc, str] = field(default_factory=dict, compare=False, repr=False)
    """Request location (as in /v1 error ``loc``) -> FHIRPath of its source."""
    root: str = field(default="Bundle", compare=False, repr=False)

    def expression(self, loc: Sequence[str | int]) -> str:
        """The FHIRPath of a /v1 request location: its source, or that of its nearest parent."""
        key = tuple(loc)
        while key:
            if key in self.paths:
                return self.paths[key]
            key = key[:-1]
        return self.root

    def issues(
        self, problems: Sequence[Mapping[str, Any]], code: str = "invalid"
    ) -> list[FhirIssue]:
        """/v1 problems (``loc`` and ``reason``) as issues on the submitted resources."""
        return [
            FhirIssue(self.expression(p.get("loc", ())), code, str(p["reason"])) for p in problems
        ]


@dataclass
class _Visit:
    index: int
    kind: str  # Appointment | Encounter
    id: str
    start: datetime
    attendance: str
    practitioner: str | None
    refs: list[str]
    status_path: str
    start_path: str


def _at(root: str, i: int) -> str:
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


def _partial_date(value: Any) -> date | None:
    """A FHIR date (``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``), completed to its first day."""
    if not isinstance(value, str):
        return None
    for text in (value, f"{value}-01", f"{value}-01-01"):
        try:
            return date.fromisoformat(text[:10])
        except ValueError:
            continue
    return None


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, Mapping) or not isinstance(concept.get("coding"), list):
        return []
    return [(c.get("system"), c.get("code")) for c in concept["coding"] if isinstance(c, Mapping)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def cancelled_as(
    resource: Mapping[str, Any], start: datetime | None, settings: FhirSettings
) -> str:
    """Attendance of a cancelled Appointment (or Encounter).

    1. ``rescheduled``: a ``cancelationReason`` coding ``rescheduled`` of the local CodeSystem;
    2. ``late_cancel``: a reason listed in ``settings.late_cancel_reasons`` (default the local
       ``late-cancel``);
    3. ``cancelled``: an HL7 reason saying the clinic cancelled (``prov*``, ``maint``,
       ``oth-*``) or ``pat-dec``;
    4. ``late_cancel``: cancelled (the R5 cross-version extension ``cancellationDate``) less than
       ``settings.late_cancel_hours`` before the start, or after it;
    5. ``cancelled`` otherwise.
    """
    reasons = _codings(resource.get("cancelationReason"))
    if (codes.CODE_SYSTEM, codes.RESCHEDULED) in reasons:
        return "rescheduled"
    if any(settings.is_late_cancel_reason(s, c) for s, c in reasons):
        return "late_cancel"
    for system, code in reasons:
        if (
            system == codes.CANCELLATION_REASON
            and isinstance(code, str)
            and (code.startswith(_NOT_THE_CLIENTS) or code in _NOT_THE_CLIENTS_EXACT)
        ):
            return "cancelled"
    if start is not None and settings.late_cancel_hours > 0:
        for ext in resource.get("extension") or ():
            if isinstance(ext, Mapping) and ext.get("url") == codes.CANCELLATION_DATE_EXT:
                when = parse_instant(ext.get("valueDateTime"))
                if when is not None and start - when < timedelta(hours=settings.late_cancel_hours):
                    return "late_cancel"
    return "cancelled"


class _Reader:
    """The state of one mapping: the issues found and what each request field came from."""

    def __init__(self, root: str, settings: FhirSettings, profile: InstrumentProfile) -> None:
        self.root = root
        self.entries = f"{root}.entry" if root in ("Bundle",) else root
        self.settings = settings
        self.profile = profile
        self.issues: list[FhirIssue] = []
        self.paths: dict[Loc, str] = {}

    def at(self, i: int) -> str:
        return _at(self.entries, i)

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


def episode_from_resources(
    resources: Sequence[Mapping[str, Any]],
    *,
    settings: FhirSettings,
    profile: InstrumentProfile,
    root: str = "Bundle",
) -> FhirEpisode:
    """One client's FHIR R4 resources -> a :class:`FhirEpisode` for the served ``profile``.

    ``resources`` are the resources of a Bundle's entries (or a CDS Hooks prefetch), in order;
    ``root`` names them in issue expressions: ``Bundle`` gives ``Bundle.entry[i].resource``,
    anything else ``<root>[i].resource``. Raises :class:`FhirInputError` with every issue found.
    """
    r = _Reader(root, settings, profile)
    by_type: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, res in enumerate(resources):
        if not isinstance(res, Mapping) or not isinstance(res.get("resourceType"), str):
            r.issue(r.at(i), "structure", NOT_A_RESOURCE)
            continue
        by_type.setdefault(res["resourceType"], []).append((i, res))
    patients = by_type.get("Patient", [])
    if len(patients) != 1:
        r.issue(r.entries, "required", ONE_PATIENT)
        raise FhirInputError(r.issues)
    p_index, patient = patients[0]
    p_at = r.at(p_index)
    patient_id = r.string(patient, "id", p_at, required=True)
    r.paths[("client_id",)] = f"{p_at}.id"
    r.paths[("gender",)] = f"{p_at}.gender"

    visits = _visits(r, by_type, patient_id)
    episodes = [(i, res) for i, res in by_type.get("EpisodeOfCare", [])
                if res.get("status") != "entered-in-error"]  # fmt: skip
    ratings = _ratings(r, by_type, patient_id, visits)

    clinic, clinic_path = _clinic(r, patient, p_at, episodes, visits, by_type)
    therapist = next((v.practitioner for v in reversed(visits) if v.practitioner), None)
    if therapist is None:
        r.issue(r.entries, "required", NO_THERAPIST)
    intake, intake_path = _intake(r, episodes, visits)
    if not visits:
        r.issue(r.entries, "required", NO_VISIT)
    if r.issues:
        raise FhirInputError(r.issues)
    assert patient_id is not None and clinic is not None and therapist is not None
    r.paths[("clinic_id",)] = clinic_path
    r.paths[("therapist_id",)] = r.entries
    r.paths[("intake_date",)] = intake_path
    r.paths[("age",)] = f"{p_at}.birthDate"
    r.paths[("sessions",)] = r.entries

    sessions = []
    basis: list[str] = []
    for n, visit in enumerate(visits):
        loc = ("sessions", n)
        r.paths[loc] = f"{r.at(visit.index)}"
        r.paths[(*loc, "session_date")] = visit.start_path
        r.paths[(*loc, "attendance")] = visit.status_path
        session: dict[str, Any] = {
            "session_number": n + 1,
            "session_date": visit.start.date(),
            "attendance": visit.attendance,
        }
        basis.extend(visit.refs)
        rated = ratings.get(n)
        if rated is not None:
            values, refs, paths = rated
            session["ratings"] = values
            basis.extend(refs)
            for element, path in paths.items():
                r.paths[(*loc, "ratings", element)] = path
        sessions.append(session)
    body: dict[str, Any] = {
        "client_id": patient_id,
        "clinic_id": clinic,
        "therapist_id": therapist,
        "intake_date": intake,
        "sessions": sessions,
    }
    birth = _partial_date(patient.get("birthDate"))
    if birth is not None and intake is not None:
        body["age"] = (
            intake.year - birth.year - ((intake.month, intake.day) < (birth.month, birth.day))
        )
    gender = patient.get("gender")
    if isinstance(gender, str):
        body["gender"] = gender
    episode_root = r.entries
    try:
        request = RiskRequest.model_validate(body)
    except ValidationError as exc:
        problems = pydantic_problems(
            exc.errors(include_input=False, include_url=False), strip_body=False
        )
        partial = FhirEpisode(None, "", (), r.paths, episode_root)  # type: ignore[arg-type]
        raise FhirInputError(partial.issues(problems)) from None
    return FhirEpisode(
        request, f"Patient/{patient_id}", tuple(dict.fromkeys(basis)), r.paths, episode_root
    )


def _visits(
    r: _Reader, by_type: Mapping[str, list[tuple[int, Mapping[str, Any]]]], patient_id: str | None
) -> list[_Visit]:
    """The Appointments and Encounters with an outcome, one visit each, in start order."""
    visits: list[_Visit] = []
    appointment_visit: dict[str, _Visit] = {}
    for i, res in by_type.get("Appointment", []):
        at = r.at(i)
        for k, part in enumerate(res.get("participant") or ()):
            if isinstance(part, Mapping):
                r.same_patient(part.get("actor"), patient_id, f"{at}.participant[{k}].actor")
        visit = _visit(r, i, res, "Appointment", APPOINTMENT_STATUS, APPOINTMENT_NO_OUTCOME)
        if visit is not None:
            visit.practitioner = _practitioner(res.get("participant"), "actor")
            visits.append(visit)
            appointment_visit[visit.id] = visit
    for i, res in by_type.get("Encounter", []):
        at = r.at(i)
        r.same_patient(res.get("subject"), patient_id, f"{at}.subject")
        visit = _visit(r, i, res, "Encounter", ENCOUNTER_STATUS, ENCOUNTER_NO_OUTCOME)
        if visit is None:
            continue
        visit.practitioner = _practitioner(res.get("participant"), "individual")
        booked = [ref_id(a, ("Appointment",)) for a in res.get("appointment") or ()]
        same = next((appointment_visit[a] for a in booked if a in appointment_visit), None)
        if same is not None:
            # The same visit: the Appointment's outcome stands, the Encounter is cited with it.
            same.refs.append(visit.refs[0])
            same.practitioner = same.practitioner or visit.practitioner
            continue
        visits.append(visit)
    visits.sort(key=lambda v: (v.start, v.kind, v.id))
    return visits


def _visit(
    r: _Reader,
    i: int,
    res: Mapping[str, Any],
    kind: str,
    statuses: Mapping[str, str],
    no_outcome: frozenset[str],
) -> _Visit | None:
    at = r.at(i)
    status = res.get("status")
    if not isinstance(status, str):
        r.issue(
            f"{at}.status",
            "required" if status is None else "structure",
            "required" if status is None else NOT_A_STRING,
        )
        return None
    if status in no_outcome:
        return None
    if status not in statuses:
        r.issue(f"{at}.status", "code-invalid", UNKNOWN_STATUS)
        return None
    start_path = f"{at}.start" if kind == "Appointment" else f"{at}.period.start"
    raw = res.get("start") if kind == "Appointment" else (res.get("period") or {}).get("start")
    start = parse_instant(raw)
    if start is None:
        r.issue(
            start_path,
            "required" if raw is None else "value",
            NEEDS_START if raw is None else BAD_DATE,
        )
    ident = r.string(res, "id", at, required=True)
    if start is None or ident is None:
        return None
    attendance = statuses[status]
    if attendance == "cancelled":
        attendance = cancelled_as(res, start, r.settings)
    return _Visit(
        i, kind, ident, start, attendance, None, [f"{kind}/{ident}"], f"{at}.status", start_path
    )


def _practitioner(participants: Any, key: str) -> str | None:
    for part in participants or ():
        if isinstance(part, Mapping):
            found = ref_id(part.get(key), _PRACTITIONER)
            if found is not None:
                return found
    return None


def _clinic(
    r: _Reader,
    patient: Mapping[str, Any],
    p_at: str,
    episodes: list[tuple[int, Mapping[str, Any]]],
    visits: list[_Visit],
    by_type: Mapping[str, list[tuple[int, Mapping[str, Any]]]],
) -> tuple[str | None, str]:
    found = ref_id(patient.get("managingOrganization"), ("Organization",))
    if found is not None:
        return found, f"{p_at}.managingOrganization"
    for i, res in reversed(episodes):
        found = ref_id(res.get("managingOrganization"), ("Organization",))
        if found is not None:
            return found, f"{r.at(i)}.managingOrganization"
    encounters = dict(by_type.get("Encounter", []))
    for visit in reversed(visits):
        if visit.kind == "Encounter":
            found = ref_id(encounters[visit.index].get("serviceProvider"), ("Organization",))
            if found is not None:
                return found, f"{r.at(visit.index)}.serviceProvider"
    r.issue(f"{p_at}.managingOrganization", "required", NO_CLINIC)
    return None, p_at


def _intake(
    r: _Reader, episodes: list[tuple[int, Mapping[str, Any]]], visits: list[_Visit]
) -> tuple[date | None, str]:
    """The start of the latest EpisodeOfCare, else the first visit's date."""
    best: tuple[date, str] | None = None
    for i, res in episodes:
        raw = (
            (res.get("period") or {}).get("start")
            if isinstance(res.get("period"), Mapping)
            else None
        )
        start = parse_instant(raw)
        if raw is not None and start is None:
            r.issue(f"{r.at(i)}.period.start", "value", BAD_DATE)
        elif start is not None and (best is None or start.date() > best[0]):
            best = (start.date(), f"{r.at(i)}.period.start")
    if best is not None:
        return best
    if visits:
        return visits[0].start.date(), visits[0].start_path
    return None, r.entries


Rated = tuple[dict[str, float | None], list[str], dict[str, str]]


def _ratings(
    r: _Reader,
    by_type: Mapping[str, list[tuple[int, Mapping[str, Any]]]],
    patient_id: str | None,
    visits: list[_Visit],
) -> dict[int, Rated]:
    """Visit position -> (element ratings, the resources' references, element -> FHIRPath)."""
    out: dict[int, Rated] = {}
    instruments = {codes.instrument_code(p): p for p in PROFILES.values()}
    for kind in ("Observation", "QuestionnaireResponse"):
        for i, res in by_type.get(kind, []):
            at = r.at(i)
            if kind == "Observation":
                ours = [c for s, c in _codings(res.get("code")) if s == codes.CODE_SYSTEM]
                instrument = next((c for c in ours if c in instruments), None)
                if instrument is None or res.get("status") not in _RATING_STATUS:
                    continue
                where = f"{at}.code"
                when = res.get("effectiveDateTime")
            else:
                url = res.get("questionnaire")
                if not isinstance(url, str) or not url.startswith(codes.QUESTIONNAIRE_BASE):
                    continue
                instrument = url.removeprefix(codes.QUESTIONNAIRE_BASE).split("|")[0]
                if res.get("status") not in _QR_STATUS:
                    continue
                where = f"{at}.questionnaire"
                when = res.get("authored")
            r.same_patient(res.get("subject"), patient_id, f"{at}.subject")
            if instruments.get(instrument) != r.profile:
                r.issue(where, "value", OTHER_INSTRUMENT)
                continue
            values = (
                _components(r, res, at)
                if kind == "Observation"
                else _items(r, res.get("item"), f"{at}.item")
            )
            scored = _score(r, values, at)
            ident = r.string(res, "id", at, required=True)
            position = _visit_of(r, res, when, visits, at)
            if scored is None or ident is None or position is None:
                continue
            if position in out:
                r.issue(at, "business-rule", RATED_TWICE)
                continue
            ratings = {e: v for e, (v, _) in scored.items()}
            paths = {e: p for e, (_, p) in scored.items()}
            out[position] = (ratings, [f"{kind}/{ident}"], paths)
    return out


Values = dict[str, tuple[float | None, str]]


def _value(
    r: _Reader, holder: Mapping[str, Any], where: str, *, absent_ok: bool
) -> tuple[bool, float | None]:
    """(found, number) of ``valueQuantity.value``, ``valueInteger`` or ``valueDecimal``."""
    for key in ("valueInteger", "valueDecimal"):
        if key in holder:
            number = _number(holder[key])
            if number is None:
                r.issue(f"{where}.{key}", "value", NEEDS_NUMBER)
                return False, None
            return True, number
    if "valueQuantity" in holder:
        quantity = holder["valueQuantity"]
        number = _number(quantity.get("value")) if isinstance(quantity, Mapping) else None
        if number is None:
            r.issue(f"{where}.valueQuantity.value", "value", NEEDS_NUMBER)
            return False, None
        return True, number
    if absent_ok:
        return True, None
    r.issue(where, "required", NEEDS_NUMBER)
    return False, None


def _components(r: _Reader, res: Mapping[str, Any], at: str) -> Values:
    values: Values = {}
    components = res.get("component")
    if not isinstance(components, list):
        r.issue(f"{at}.component", "required", NEEDS_NUMBER)
        return values
    for j, comp in enumerate(components):
        where = f"{at}.component[{j}]"
        if not isinstance(comp, Mapping):
            r.issue(where, "structure", NOT_JSON_OBJECT)
            continue
        code = next((c for s, c in _codings(comp.get("code")) if s == codes.CODE_SYSTEM), None)
        if not isinstance(code, str):
            r.issue(f"{where}.code", "code-invalid", UNKNOWN_ITEM)
            continue
        found, number = _value(r, comp, where, absent_ok="dataAbsentReason" in comp)
        if found:
            _put(r, values, code, number, where)
    return values


def _items(r: _Reader, items: Any, where: str) -> Values:
    """QuestionnaireResponse items (groups walked), by ``linkId``."""
    values: Values = {}
    if not isinstance(items, list):
        r.issue(where, "required", NEEDS_NUMBER)
        return values
    for k, item in enumerate(items):
        here = f"{where}[{k}]"
        if not isinstance(item, Mapping):
            r.issue(here, "structure", NOT_JSON_OBJECT)
            continue
        if isinstance(item.get("item"), list):
            for code, (number, path) in _items(r, item["item"], f"{here}.item").items():
                _put(r, values, code, number, path)
            continue
        link = item.get("linkId")
        if not isinstance(link, str):
            r.issue(f"{here}.linkId", "required", NOT_A_STRING)
            continue
        answers = item.get("answer") or []
        if (
            not isinstance(answers, list)
            or len(answers) > 1
            or (answers and not isinstance(answers[0], Mapping))
        ):
            r.issue(f"{here}.answer", "structure", NEEDS_NUMBER)
            continue
        found, number = (
            (True, None)
            if not answers
            else _value(r, answers[0], f"{here}.answer[0]", absent_ok=False)
        )
        if found:
            _put(r, values, link, number, here)
    return values


def _put(r: _Reader, values: Values, code: str, number: float | None, where: str) -> None:
    if code in values:
        r.issue(where, "business-rule", TWICE)
    else:
        values[code] = (number, where)


def _score(r: _Reader, values: Values, at: str) -> dict[str, tuple[float | None, str]] | None:
    """Element -> (rating, FHIRPath): elements as given, subscales as the mean of their items."""
    profile = r.profile
    elements = {codes.element_code(profile, e): e for e in profile.element_names}
    subscales = codes.subscale_items(profile)
    items = {codes.item_code(profile, n): (e, n) for e, ns in subscales.items() for n in ns}
    out: dict[str, tuple[float | None, str]] = {}
    item_values: dict[str, list[tuple[float | None, str]]] = {}
    ok = True
    for code, (number, where) in values.items():
        if code in elements:
            out[elements[code]] = (number, where)
        elif code in items:
            if number is not None and not profile.scale_min <= number <= profile.scale_max:
                r.issue(where, "value", ITEM_OFF_SCALE)
                ok = False
            item_values.setdefault(items[code][0], []).append((number, where))
        else:
            r.issue(where, "code-invalid", UNKNOWN_ITEM)
            ok = False
    for element, answered in item_values.items():
        if element in out:
            r.issue(out[element][1], "business-rule", ITEMS_AND_SUBSCALE)
            ok = False
            continue
        numbers = [v for v, _ in answered if v is not None]
        mean = sum(numbers) / len(numbers) if len(numbers) >= codes.WAI_SR_MIN_ITEMS else None
        out[element] = (mean, at)
    return out if ok else None


def _visit_of(
    r: _Reader, res: Mapping[str, Any], when: Any, visits: list[_Visit], at: str
) -> int | None:
    """Position of the visit a rating belongs to: its ``encounter``, else its day."""
    encounter = ref_id(res.get("encounter"), ("Encounter",))
    if encounter is not None:
        for n, visit in enumerate(visits):
            if f"Encounter/{encounter}" in visit.refs:
                return n
        r.issue(f"{at}.encounter", "not-found", NO_RATED_VISIT)
        return None
    moment = parse_instant(when)
    if moment is None:
        r.issue(at, "required", NO_RATED_VISIT)
        return None
    day = moment.date()
    same_day = [n for n, v in enumerate(visits) if v.start.date() == day]
    if len(same_day) > 1:
        same_day = [n for n in same_day if visits[n].attendance == "attended"]
    if len(same_day) != 1:
        r.issue(at, "not-found", NO_RATED_VISIT)
        return None
    return same_day[0]
