"""FHIR R4 resources -> RiskRequest (service/fhir/inbound.py): the mapping table, case by case.

No app and no model: the mapping is a pure function of the resources, the settings and the
served profile.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from features.profiles import ALLIANCE6, SRS, WAI_SR
from service.fhir import codes
from service.fhir.examples import bundle_for
from service.fhir.inbound import FhirInputError, episode_from_resources
from service.fhir.settings import FhirSettings
from service.schemas import RISK_REQUEST_EXAMPLE, RiskRequest

CS = codes.CODE_SYSTEM
HL7_REASON = codes.CANCELLATION_REASON


def _patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1",
            "managingOrganization": {"reference": "Organization/clinic-a"}, **extra}  # fmt: skip


def _appointment(n: int, status: str, day: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": f"a{n}",
        "status": status,
        "start": f"{day or f'2026-09-{n:02d}'}T10:00:00Z",
        "participant": [
            {"actor": {"reference": "Patient/p1"}},
            {"actor": {"reference": "Practitioner/t-7"}},
        ],  # fmt: skip
        **extra,
    }


def _map(resources: list[dict[str, Any]], profile=ALLIANCE6, **settings: Any):
    return episode_from_resources(resources, settings=FhirSettings(**settings), profile=profile)


def _attendance(resources, **settings) -> list[str]:
    return [s["attendance"] for s in _map(resources, **settings).request.sessions]


def _issues(resources, profile=ALLIANCE6, **settings) -> list[tuple[str, str]]:
    with pytest.raises(FhirInputError) as caught:
        _map(resources, profile, **settings)
    return [(i.expression, i.reason) for i in caught.value.issues]


@pytest.mark.parametrize(
    ("status", "expected"),
    [("fulfilled", "attended"), ("arrived", "attended"), ("checked-in", "attended"),
     ("noshow", "no_show"), ("cancelled", "cancelled")],
)  # fmt: skip
def test_appointment_status_to_attendance(status: str, expected: str) -> None:
    assert _attendance([_patient(), _appointment(1, "fulfilled"), _appointment(2, status)]) == [
        "attended",
        expected,
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [("finished", "attended"), ("in-progress", "attended"), ("cancelled", "cancelled")],
)
def test_encounter_status_to_attendance(status: str, expected: str) -> None:
    encounter = {"resourceType": "Encounter", "id": "e2", "status": status,
                 "subject": {"reference": "Patient/p1"},
                 "period": {"start": "2026-09-09T10:00:00+02:00"},
                 "participant": [{"individual": {"reference": "Practitioner/t-9"}}]}  # fmt: skip
    episode = _map([_patient(), _appointment(1, "fulfilled"), encounter])
    assert [s["attendance"] for s in episode.request.sessions] == ["attended", expected]
    assert episode.request.therapist_id == "t-9"  # the latest visit's practitioner
    assert episode.basis == ("Appointment/a1", "Encounter/e2")


@pytest.mark.parametrize(
    "status", ["proposed", "pending", "booked", "waitlist", "entered-in-error"]
)
def test_appointments_without_an_outcome_are_left_out(status: str) -> None:
    episode = _map([_patient(), _appointment(1, "fulfilled"), _appointment(2, status)])
    assert len(episode.request.sessions) == 1
    assert episode.basis == ("Appointment/a1",)


def _cancelled_at(hours_before: float) -> dict[str, Any]:
    from datetime import datetime, timedelta

    when = datetime(2026, 9, 2, 10) - timedelta(hours=hours_before)
    return {"url": codes.CANCELLATION_DATE_EXT, "valueDateTime": when.isoformat() + "Z"}


@pytest.mark.parametrize(
    ("hours_before", "window", "expected"),
    [(2, 24, "late_cancel"), (23.9, 24, "late_cancel"), (24.1, 24, "cancelled"),
     (30, 48, "late_cancel"), (2, 0, "cancelled"), (-1, 24, "late_cancel")],
)  # fmt: skip
def test_late_cancel_window(hours_before: float, window: float, expected: str) -> None:
    cancelled = _appointment(2, "cancelled", extension=[_cancelled_at(hours_before)])
    resources = [_patient(), _appointment(1, "fulfilled"), cancelled]
    assert _attendance(resources, late_cancel_hours=window)[1] == expected


@pytest.mark.parametrize(
    ("coding", "extension", "expected"),
    [
        ({"system": CS, "code": "late-cancel"}, None, "late_cancel"),
        ({"system": CS, "code": "rescheduled"}, _cancelled_at(1), "rescheduled"),
        ({"system": HL7_REASON, "code": "prov"}, _cancelled_at(1), "cancelled"),
        ({"system": HL7_REASON, "code": "oth-weath"}, _cancelled_at(1), "cancelled"),
        ({"system": HL7_REASON, "code": "pat-dec"}, _cancelled_at(1), "cancelled"),
        ({"system": HL7_REASON, "code": "pat"}, _cancelled_at(1), "late_cancel"),
        ({"system": HL7_REASON, "code": "pat"}, _cancelled_at(72), "cancelled"),
        ({"system": HL7_REASON, "code": "pat-fb"}, None, "cancelled"),
    ],
)
def test_cancellation_reasons(coding, extension, expected: str) -> None:
    extra: dict[str, Any] = {"cancelationReason": {"coding": [coding]}}
    if extension:
        extra["extension"] = [extension]
    resources = [_patient(), _appointment(1, "fulfilled"), _appointment(2, "cancelled", **extra)]
    assert _attendance(resources)[1] == expected


def test_configured_late_cancel_reason() -> None:
    reason = {"cancelationReason": {"coding": [{"system": "urn:ehr", "code": "LC"}]}}
    resources = [_patient(), _appointment(1, "fulfilled"), _appointment(2, "cancelled", **reason)]
    assert _attendance(resources)[1] == "cancelled"
    assert _attendance(resources, late_cancel_reasons=("urn:ehr|LC",))[1] == "late_cancel"


def test_an_encounter_of_a_bundled_appointment_is_the_same_visit() -> None:
    encounter = {"resourceType": "Encounter", "id": "e1", "status": "finished",
                 "appointment": [{"reference": "Appointment/a1"}],
                 "period": {"start": "2026-09-01T10:05:00Z"}}  # fmt: skip
    episode = _map([_patient(), _appointment(1, "fulfilled"), encounter])
    assert len(episode.request.sessions) == 1
    assert episode.basis == ("Appointment/a1", "Encounter/e1")


def test_sessions_numbered_by_start_whatever_the_order() -> None:
    resources = [_patient(), _appointment(3, "noshow"), _appointment(1, "fulfilled"),
                 _appointment(2, "fulfilled")]  # fmt: skip
    sessions = _map(resources).request.sessions
    assert [(s["session_number"], s["attendance"]) for s in sessions] == [
        (1, "attended"), (2, "attended"), (3, "no_show")]  # fmt: skip


def test_clinic_therapist_intake_and_age() -> None:
    episode_of_care = {"resourceType": "EpisodeOfCare", "id": "eoc", "status": "active",
                       "period": {"start": "2026-08-20"}}  # fmt: skip
    request = _map([_patient(birthDate="2000-08-21", gender="female"), episode_of_care,
                    _appointment(1, "fulfilled")]).request  # fmt: skip
    assert (request.client_id, request.clinic_id, request.therapist_id) == ("p1", "clinic-a", "t-7")
    assert str(request.intake_date) == "2026-08-20"
    assert request.age == 25  # a day short of 26 at intake
    assert request.gender == "female"


def test_intake_defaults_to_the_first_visit_and_clinic_to_the_episode_of_care() -> None:
    patient = {"resourceType": "Patient", "id": "p1"}
    eoc = {"resourceType": "EpisodeOfCare", "id": "eoc", "status": "active",
           "managingOrganization": {"reference": "https://ehr.example/fhir/Organization/c-9"}}  # fmt: skip
    request = _map([patient, eoc, _appointment(2, "noshow"), _appointment(1, "fulfilled")]).request
    assert request.clinic_id == "c-9"
    assert str(request.intake_date) == "2026-09-01"


def _observation(n: int, profile, values: dict[str, float | None], **extra) -> dict[str, Any]:
    components = []
    for code, value in values.items():
        c: dict[str, Any] = {"code": {"coding": [{"system": CS, "code": code}]}}
        if value is None:
            c["dataAbsentReason"] = {"text": "not rated"}
        else:
            c["valueQuantity"] = {"value": value}
        components.append(c)
    return {"resourceType": "Observation", "id": f"o{n}", "status": "final",
            "code": {"coding": [{"system": CS, "code": codes.instrument_code(profile)}]},
            "effectiveDateTime": f"2026-09-{n:02d}T10:50:00Z", "component": components,
            **extra}  # fmt: skip


def _questionnaire(n: int, profile, answers: dict[str, Any], **extra) -> dict[str, Any]:
    items = [{"linkId": k, "answer": [v]} if v is not None else {"linkId": k}
             for k, v in answers.items()]  # fmt: skip
    return {"resourceType": "QuestionnaireResponse", "id": f"q{n}", "status": "completed",
            "questionnaire": f"{codes.QUESTIONNAIRE_BASE}{codes.instrument_code(profile)}",
            "authored": f"2026-09-{n:02d}T11:00:00+01:00",
            "item": [{"linkId": "group", "item": items}], **extra}  # fmt: skip


def test_observation_one_component_per_element() -> None:
    values = {codes.element_code(ALLIANCE6, e): 7.0 + i * 0.5
              for i, e in enumerate(ALLIANCE6.element_names)}  # fmt: skip
    values[codes.element_code(ALLIANCE6, "trust")] = None
    episode = _map([_patient(), _appointment(1, "fulfilled"), _observation(1, ALLIANCE6, values)])
    ratings = episode.request.sessions[0]["ratings"]
    assert ratings["empathy"] == 7.0 and ratings["communication"] == 9.5
    assert ratings["trust"] is None
    assert episode.basis == ("Appointment/a1", "Observation/o1")


def test_srs_questionnaire_items_are_its_elements() -> None:
    answers = {codes.element_code(SRS, e): {"valueDecimal": v}
               for e, v in zip(SRS.element_names, (9.1, 8.0, 7.5, 9.9), strict=True)}  # fmt: skip
    episode = _map([_patient(), _appointment(1, "fulfilled"), _questionnaire(1, SRS, answers)], SRS)
    assert episode.request.sessions[0]["ratings"] == {
        "relationship": 9.1, "goals": 8.0, "approach": 7.5, "overall": 9.9}  # fmt: skip


def test_wai_sr_items_are_scored_into_subscales() -> None:
    # Item n answered n % 5 + 1: Goal (4, 6, 8, 11) -> 5, 2, 4, 2; Task (1, 2, 10, 12) -> 2, 3, 1,
    # 3; Bond (3, 5, 7, 9) -> 4, 1, 3, 5, with item 9 unanswered (3 of 4 are enough).
    answers: dict[str, Any] = {codes.item_code(WAI_SR, n): {"valueInteger": n % 5 + 1}
                               for n in range(1, 13)}  # fmt: skip
    answers[codes.item_code(WAI_SR, 9)] = None
    resources = [_patient(), _appointment(1, "fulfilled"), _questionnaire(1, WAI_SR, answers)]
    ratings = _map(resources, WAI_SR).request.sessions[0]["ratings"]
    assert ratings == {"goal": pytest.approx(13 / 4), "task": pytest.approx(9 / 4),
                       "bond": pytest.approx(8 / 3)}  # fmt: skip


def test_wai_sr_subscale_with_two_items_missing_is_not_rated() -> None:
    answers = {codes.item_code(WAI_SR, n): {"valueInteger": 3} for n in (4, 6, 1, 2, 10, 12)}
    resources = [_patient(), _appointment(1, "fulfilled"), _questionnaire(1, WAI_SR, answers)]
    ratings = _map(resources, WAI_SR).request.sessions[0]["ratings"]
    assert ratings["goal"] is None and ratings["task"] == 3.0 and "bond" not in ratings


def test_wai_sr_subscales_as_observation_components() -> None:
    values = {codes.element_code(WAI_SR, e): 4.0 for e in WAI_SR.element_names}
    episode = _map(
        [_patient(), _appointment(1, "fulfilled"), _observation(1, WAI_SR, values)], WAI_SR
    )
    assert episode.request.sessions[0]["ratings"] == {"goal": 4.0, "task": 4.0, "bond": 4.0}


def test_rating_found_by_encounter_reference() -> None:
    encounter = {"resourceType": "Encounter", "id": "e5", "status": "finished",
                 "period": {"start": "2026-09-05T10:00:00Z"}}  # fmt: skip
    obs = _observation(9, ALLIANCE6, {codes.element_code(ALLIANCE6, "goals"): 6.0},
                       encounter={"reference": "Encounter/e5"})  # fmt: skip
    episode = _map([_patient(), _appointment(1, "fulfilled"), encounter, obs])
    assert episode.request.sessions[1]["ratings"] == {"goals": 6.0}


def test_other_observations_are_ignored() -> None:
    phq9 = {"resourceType": "Observation", "id": "phq", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
            "valueInteger": 12}  # fmt: skip
    episode = _map([_patient(), _appointment(1, "fulfilled"), phq9])
    assert episode.basis == ("Appointment/a1",)


# -- problems: FHIRPath, fixed reasons, never the values sent -----------------------------------

SECRET = "Jane-Doe-1980"


def test_issues_name_the_fhirpath_and_never_the_value() -> None:
    resources = [
        _patient(),
        _appointment(1, SECRET),  # unknown status
        _appointment(2, "fulfilled", start=SECRET),  # not a date
        _observation(2, SRS, {"srs.goals": 5.0}),  # instrument the model does not use
    ]
    issues = _issues(resources)
    assert ("Bundle.entry[1].resource.status", "not a status of this resource in FHIR R4") in issues
    assert ("Bundle.entry[2].resource.start", "must be a FHIR date or dateTime with year, month "
            "and day") in issues  # fmt: skip
    assert any(e == "Bundle.entry[3].resource.code" for e, _ in issues)
    assert SECRET not in json.dumps(issues)


def test_contract_problems_come_back_as_fhirpaths() -> None:
    values = {codes.element_code(ALLIANCE6, "goals"): 11.5}  # off the 0-10 scale
    resources = [_patient(), _appointment(1, "fulfilled"), _observation(1, ALLIANCE6, values)]
    episode = _map(resources)
    assert episode.expression(["sessions", 0, "ratings", "goals"]) == (
        "Bundle.entry[2].resource.component[0]"
    )
    assert episode.expression(["sessions", 0, "session_date"]) == "Bundle.entry[1].resource.start"
    assert episode.expression(["intake_date"]) == "Bundle.entry[1].resource.start"
    assert episode.expression(["client_id"]) == "Bundle.entry[0].resource.id"


@pytest.mark.parametrize(
    ("mutate", "expression"),
    [
        (lambda r: r.pop(0), "Bundle.entry"),  # no Patient
        (lambda r: r[0].pop("managingOrganization"), "Bundle.entry[0].resource.managingOrganization"),
        (lambda r: r[1].update(participant=[]), "Bundle.entry"),  # no practitioner
        (lambda r: r[1].update(status="booked"), "Bundle.entry"),  # no visit with an outcome
        (lambda r: r[1].update(participant=[{"actor": {"reference": "Patient/other"}},
                                             {"actor": {"reference": "Practitioner/t"}}]),
         "Bundle.entry[1].resource.participant[0].actor"),
        (lambda r: r.append("junk"), "Bundle.entry[2].resource"),
        (lambda r: (r[0].update(id="x" * 200), r[1]["participant"].pop(0)),
         "Bundle.entry[0].resource.id"),
    ],
)  # fmt: skip
def test_refusals(mutate, expression: str) -> None:
    resources = [_patient(), _appointment(1, "fulfilled")]
    mutate(resources)
    assert expression in [e for e, _ in _issues(resources)]


def test_rating_without_a_visit_and_rated_twice() -> None:
    values = {codes.element_code(ALLIANCE6, "goals"): 6.0}
    lost = _observation(7, ALLIANCE6, values)  # 2026-09-07: no appointment that day
    twice = [
        _observation(1, ALLIANCE6, values),
        {**_observation(1, ALLIANCE6, values), "id": "o1b"},
    ]
    issues = _issues([_patient(), _appointment(1, "fulfilled"), lost, *twice])
    assert ("Bundle.entry[2].resource", "matches no single Appointment or Encounter (by encounter "
            "or by date)") in issues  # fmt: skip
    assert ("Bundle.entry[4].resource", "a second rating of the same appointment") in issues


def test_wai_sr_item_off_scale_is_refused() -> None:
    answers = {codes.item_code(WAI_SR, n): {"valueInteger": 3} for n in range(1, 13)}
    answers[codes.item_code(WAI_SR, 5)] = {"valueInteger": 9}
    resources = [_patient(), _appointment(1, "fulfilled"), _questionnaire(1, WAI_SR, answers)]
    issues = _issues(resources, WAI_SR)
    assert ("Bundle.entry[2].resource.item[0].item[4]", "item rating outside the instrument's "
            "scale") in issues  # fmt: skip


def test_example_request_round_trips_through_a_bundle() -> None:
    request = RiskRequest.model_validate(RISK_REQUEST_EXAMPLE)
    bundle = bundle_for(request, ALLIANCE6)
    resources = [e["resource"] for e in copy.deepcopy(bundle)["entry"]]
    mapped = _map(resources).request
    # Unrated appointments come back without ratings ({} and absent score the same).
    expected = request.model_dump()
    for s in expected["sessions"]:
        if not s.get("ratings"):
            s.pop("ratings", None)
    assert mapped.model_dump() == expected


# -- urn:uuid references, birthDate, coded answers ----------------------------------------------


def test_urn_uuid_references_resolve_through_the_bundle_full_urls() -> None:
    from service.fhir.inbound import full_urls

    uuids = {k: f"urn:uuid:{n:08d}-0000-4000-8000-000000000000"
             for n, k in enumerate(("p", "t", "a", "e", "o"))}  # fmt: skip
    appointment = _appointment(1, "fulfilled", participant=[
        {"actor": {"reference": uuids["p"]}}, {"actor": {"reference": uuids["t"]}}])  # fmt: skip
    encounter = {"resourceType": "Encounter", "id": "e2", "status": "finished",
                 "subject": {"reference": uuids["p"]},
                 "period": {"start": "2026-09-02T10:00:00Z"}}  # fmt: skip
    obs = _observation(9, ALLIANCE6, {codes.element_code(ALLIANCE6, "goals"): 6.0},
                       encounter={"reference": uuids["e"]}, subject={"reference": uuids["p"]})  # fmt: skip
    practitioner = {"resourceType": "Practitioner", "id": "t-9"}
    entries = [
        {"fullUrl": uuids["p"], "resource": _patient()},
        {"fullUrl": uuids["t"], "resource": practitioner},
        {"fullUrl": uuids["a"], "resource": appointment},
        {"fullUrl": uuids["e"], "resource": encounter},
        {"fullUrl": uuids["o"], "resource": obs},
    ]
    episode = episode_from_resources(
        [e["resource"] for e in entries], settings=FhirSettings(), profile=ALLIANCE6,
        full_urls=full_urls(entries),
    )  # fmt: skip
    assert episode.request.therapist_id == "t-9"
    assert episode.request.sessions[1]["ratings"] == {"goals": 6.0}
    assert "Observation/o9" in episode.basis
    # A urn:uuid of another Patient of the Bundle is still another patient.
    other = {"fullUrl": "urn:uuid:other", "resource": {"resourceType": "Patient", "id": "p2"}}
    encounter["subject"] = {"reference": "urn:uuid:other"}
    urls = full_urls([*entries, other])
    with pytest.raises(FhirInputError) as caught:
        episode_from_resources([e["resource"] for e in entries], settings=FhirSettings(),
                               profile=ALLIANCE6, full_urls=urls)  # fmt: skip
    assert "Bundle.entry[3].resource.subject" in [i.expression for i in caught.value.issues]


@pytest.mark.parametrize("birth", [SECRET, "1990-13-40", "05/06/1990", 1990, ["1990"]])
def test_an_invalid_birth_date_is_a_value_issue(birth: Any) -> None:
    resources = [_patient(birthDate=birth), _appointment(1, "fulfilled")]
    with pytest.raises(FhirInputError) as caught:
        _map(resources)
    found = [(i.expression, i.code) for i in caught.value.issues]
    assert found == [("Bundle.entry[0].resource.birthDate", "value")]
    assert SECRET not in json.dumps([i.reason for i in caught.value.issues])


def _coded(value: float | None, url: str = "http://hl7.org/fhir/StructureDefinition/ordinalValue"):
    coding: dict[str, Any] = {"system": "urn:ehr:likert", "code": "often"}
    if value is not None:
        coding["extension"] = [{"url": url, "valueDecimal": value}]
    return {"valueCoding": coding}


@pytest.mark.parametrize(
    "url",
    [
        "http://hl7.org/fhir/StructureDefinition/ordinalValue",
        "http://hl7.org/fhir/StructureDefinition/itemWeight",
    ],
)
def test_coded_likert_answers_with_an_ordinal_value(url: str) -> None:
    answers = {codes.item_code(WAI_SR, n): _coded(n % 5 + 1, url) for n in range(1, 13)}
    resources = [_patient(), _appointment(1, "fulfilled"), _questionnaire(1, WAI_SR, answers)]
    ratings = _map(resources, WAI_SR).request.sessions[0]["ratings"]
    assert ratings["goal"] == pytest.approx(13 / 4)


def test_a_coded_answer_without_an_ordinal_value_is_a_clear_issue() -> None:
    answers = {codes.item_code(WAI_SR, n): _coded(3) for n in range(1, 13)}
    answers[codes.item_code(WAI_SR, 2)] = _coded(None)
    resources = [_patient(), _appointment(1, "fulfilled"), _questionnaire(1, WAI_SR, answers)]
    issues = _issues(resources, WAI_SR)
    assert issues == [("Bundle.entry[2].resource.item[0].item[1].answer[0].valueCoding",
                       "a coded answer needs its number: an ordinalValue (or itemWeight) "
                       "extension with a valueDecimal on the Coding")]  # fmt: skip
