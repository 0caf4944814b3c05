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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from features.contract import SESSION_NUMBER_MAX
from features.profiles import InstrumentProfile
from service.errors import pydantic_problems
from service.fhir import codes
from service.fhir.ratings import visit_ratings
from service.fhir.reader import (
    BAD_DATE,
    NOT_A_STRING,
    FhirInputError,
    FhirIssue,
    FullUrls,
    Loc,
    Reader,
    Visit,
    codings,
    max_resources,
    parse_instant,
    partial_date,
    too_many_resources,
)
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
_PRACTITIONER = ("Practitioner", "PractitionerRole")

NOT_A_RESOURCE = "must be a FHIR resource (a JSON object with a resourceType)"
BAD_BIRTH_DATE = "must be a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)"
ONE_PATIENT = "the resources must hold exactly one Patient"
UNKNOWN_STATUS = "not a status of this resource in FHIR R4"
NEEDS_START = "an appointment with an outcome needs its start date and time"
NO_VISIT = "no Appointment or Encounter with an outcome (fulfilled, noshow, cancelled, ...)"
NO_CLINIC = "no managing Organization: Patient.managingOrganization or EpisodeOfCare's"
NO_THERAPIST = "no Practitioner participant in any Appointment or Encounter"


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
    reasons = codings(resource.get("cancelationReason"))
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
        extensions = resource.get("extension")
        for ext in extensions if isinstance(extensions, list) else ():
            if isinstance(ext, Mapping) and ext.get("url") == codes.CANCELLATION_DATE_EXT:
                when = parse_instant(ext.get("valueDateTime"))
                if when is not None and start - when < timedelta(hours=settings.late_cancel_hours):
                    return "late_cancel"
    return "cancelled"


def episode_from_resources(
    resources: Sequence[Mapping[str, Any]],
    *,
    settings: FhirSettings,
    profile: InstrumentProfile,
    root: str = "Bundle",
    full_urls: FullUrls | None = None,
    max_sessions: int = SESSION_NUMBER_MAX,
    clinic: str | None = None,
) -> FhirEpisode:
    """One client's FHIR R4 resources -> a :class:`FhirEpisode` for the served ``profile``.

    ``resources`` are the resources of a Bundle's entries (or a CDS Hooks prefetch), in order;
    ``root`` names them in issue expressions: ``Bundle`` gives ``Bundle.entry[i].resource``,
    anything else ``<root>[i].resource``. ``full_urls`` (:func:`full_urls`) resolves references
    such as ``urn:uuid:...`` to the entries of a Bundle. Raises :class:`FhirInputError` with the
    issues found (the first :data:`~service.fhir.reader.MAX_ISSUES`, and how many more), or with
    status 413 for more than :func:`~service.fhir.reader.max_resources` of ``max_sessions``
    (/v1's appointment cap) resources, before any is read. ``clinic`` stands in for the
    managing Organization when the resources name none (a CDS Hooks call, whose clinic comes
    from the calling EHR's registration); without it such resources are refused.
    """
    r = Reader(root, settings, profile, full_urls)
    if len(resources) > max_resources(max_sessions):
        issue = FhirIssue(r.entries, "too-long", too_many_resources(max_sessions))
        raise FhirInputError([issue], status=413)
    by_type: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, res in enumerate(resources):
        if not isinstance(res, Mapping) or not isinstance(res.get("resourceType"), str):
            r.issue(r.at(i), "structure", NOT_A_RESOURCE)
            continue
        by_type.setdefault(res["resourceType"], []).append((i, res))
    patients = by_type.get("Patient", [])
    if len(patients) != 1:
        r.issue(r.entries, "required", ONE_PATIENT)
        raise r.error()
    p_index, patient = patients[0]
    p_at = r.at(p_index)
    patient_id = r.string(patient, "id", p_at, required=True)
    r.paths[("client_id",)] = f"{p_at}.id"
    r.paths[("gender",)] = f"{p_at}.gender"

    visits = _visits(r, by_type, patient_id)
    episodes = [(i, res) for i, res in by_type.get("EpisodeOfCare", [])
                if res.get("status") != "entered-in-error"]  # fmt: skip
    ratings = visit_ratings(r, by_type, patient_id, visits)

    clinic, clinic_path = _clinic(r, patient, p_at, episodes, visits, by_type, clinic)
    therapist = next((v.practitioner for v in reversed(visits) if v.practitioner), None)
    if therapist is None:
        r.issue(r.entries, "required", NO_THERAPIST)
    intake, intake_path = _intake(r, episodes, visits)
    if not visits:
        r.issue(r.entries, "required", NO_VISIT)
    birth = partial_date(patient.get("birthDate"))
    if birth is None and patient.get("birthDate") is not None:
        r.issue(f"{p_at}.birthDate", "value", BAD_BIRTH_DATE)
    if r.issues:
        raise r.error()
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


def full_urls(entries: Sequence[Any]) -> dict[str, tuple[str, str]]:
    """A Bundle's ``entry.fullUrl`` -> ``(resourceType, id)`` of the entry's resource, for the
    entries that have both (an EHR-built collection Bundle refers by ``urn:uuid:`` fullUrls)."""
    out: dict[str, tuple[str, str]] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        url, res = entry.get("fullUrl"), entry.get("resource")
        if isinstance(url, str) and url and isinstance(res, Mapping):
            kind, ident = res.get("resourceType"), res.get("id")
            if isinstance(kind, str) and isinstance(ident, str) and ident:
                out[url] = (kind, ident)
    return out


def _visits(
    r: Reader, by_type: Mapping[str, list[tuple[int, Mapping[str, Any]]]], patient_id: str | None
) -> list[Visit]:
    """The Appointments and Encounters with an outcome, one visit each, in start order."""
    visits: list[Visit] = []
    appointment_visit: dict[str, Visit] = {}
    for i, res in by_type.get("Appointment", []):
        at = r.at(i)
        participants = r.as_list(res.get("participant"), f"{at}.participant")
        for k, part in enumerate(participants):
            if isinstance(part, Mapping):
                r.same_patient(part.get("actor"), patient_id, f"{at}.participant[{k}].actor")
        visit = _visit(r, i, res, "Appointment", APPOINTMENT_STATUS, APPOINTMENT_NO_OUTCOME)
        if visit is not None:
            visit.practitioner = _practitioner(r, participants, "actor")
            visits.append(visit)
            appointment_visit[visit.id] = visit
    for i, res in by_type.get("Encounter", []):
        at = r.at(i)
        r.same_patient(res.get("subject"), patient_id, f"{at}.subject")
        visit = _visit(r, i, res, "Encounter", ENCOUNTER_STATUS, ENCOUNTER_NO_OUTCOME)
        if visit is None:
            continue
        participants = r.as_list(res.get("participant"), f"{at}.participant")
        visit.practitioner = _practitioner(r, participants, "individual")
        booked = [
            r.ref(a, ("Appointment",))
            for a in r.as_list(res.get("appointment"), f"{at}.appointment")
        ]
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
    r: Reader,
    i: int,
    res: Mapping[str, Any],
    kind: str,
    statuses: Mapping[str, str],
    no_outcome: frozenset[str],
) -> Visit | None:
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
    raw = (
        res.get("start")
        if kind == "Appointment"
        else r.as_mapping(res.get("period"), f"{at}.period").get("start")
    )
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
        r.as_list(res.get("extension"), f"{at}.extension")
        attendance = cancelled_as(res, start, r.settings)
    return Visit(
        i, kind, ident, start, attendance, None, [f"{kind}/{ident}"], f"{at}.status", start_path
    )


def _practitioner(r: Reader, participants: list[Any], key: str) -> str | None:
    for part in participants:
        if isinstance(part, Mapping):
            found = r.ref(part.get(key), _PRACTITIONER)
            if found is not None:
                return found
    return None


def _clinic(
    r: Reader,
    patient: Mapping[str, Any],
    p_at: str,
    episodes: list[tuple[int, Mapping[str, Any]]],
    visits: list[Visit],
    by_type: Mapping[str, list[tuple[int, Mapping[str, Any]]]],
    fallback: str | None = None,
) -> tuple[str | None, str]:
    found = r.ref(patient.get("managingOrganization"), ("Organization",))
    if found is not None:
        return found, f"{p_at}.managingOrganization"
    for i, res in reversed(episodes):
        found = r.ref(res.get("managingOrganization"), ("Organization",))
        if found is not None:
            return found, f"{r.at(i)}.managingOrganization"
    encounters = dict(by_type.get("Encounter", []))
    for visit in reversed(visits):
        if visit.kind == "Encounter":
            found = r.ref(encounters[visit.index].get("serviceProvider"), ("Organization",))
            if found is not None:
                return found, f"{r.at(visit.index)}.serviceProvider"
    if fallback is not None:
        return fallback, p_at
    r.issue(f"{p_at}.managingOrganization", "required", NO_CLINIC)
    return None, p_at


def _intake(
    r: Reader, episodes: list[tuple[int, Mapping[str, Any]]], visits: list[Visit]
) -> tuple[date | None, str]:
    """The start of the latest EpisodeOfCare, else the first visit's date."""
    best: tuple[date, str] | None = None
    for i, res in episodes:
        raw = r.as_mapping(res.get("period"), f"{r.at(i)}.period").get("start")
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
