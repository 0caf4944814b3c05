"""The FHIR mapping against hostile and wrongly typed input (service/fhir/inbound.py): issues
capped at /v1's budget, a cap on the resources mapped, a ``structure`` issue (never a 500) for
every element of the wrong JSON type, and no submitted value in any issue."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.profiles import ALLIANCE6
from service.errors import MAX_REPORTED_ERRORS
from service.fhir import codes
from service.fhir.inbound import FhirInputError, episode_from_resources
from service.fhir.outbound import operation_outcome
from service.fhir.reader import MAX_ISSUES, MAX_RESOURCES, FhirIssue, max_resources
from service.fhir.settings import FhirSettings

SECRET = "SECRETX-Jane-Doe"


def _resources() -> list[dict[str, Any]]:
    """A Patient, an EpisodeOfCare, a cancelled and an attended Appointment, an Encounter of a
    third visit, and a rating of each form."""
    cs = codes.CODE_SYSTEM
    goals = codes.element_code(ALLIANCE6, "goals")
    return [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-02",
         "managingOrganization": {"reference": "Organization/clinic-a"}},
        {"resourceType": "EpisodeOfCare", "id": "eoc", "status": "active",
         "period": {"start": "2026-08-20"}},
        {"resourceType": "Appointment", "id": "a1", "status": "fulfilled",
         "start": "2026-09-01T10:00:00Z",
         "participant": [{"actor": {"reference": "Patient/p1"}},
                         {"actor": {"reference": "Practitioner/t-7"}}]},
        {"resourceType": "Appointment", "id": "a2", "status": "cancelled",
         "start": "2026-09-08T10:00:00Z",
         "extension": [{"url": codes.CANCELLATION_DATE_EXT,
                        "valueDateTime": "2026-09-08T08:00:00Z"}],
         "participant": [{"actor": {"reference": "Practitioner/t-7"}}]},
        {"resourceType": "Encounter", "id": "e3", "status": "finished",
         "subject": {"reference": "Patient/p1"},
         "period": {"start": "2026-09-15T10:00:00Z"},
         "appointment": [{"reference": "Appointment/a9"}],
         "participant": [{"individual": {"reference": "Practitioner/t-7"}}]},
        {"resourceType": "Observation", "id": "o1", "status": "final",
         "code": {"coding": [{"system": cs, "code": codes.instrument_code(ALLIANCE6)}]},
         "effectiveDateTime": "2026-09-01T10:50:00Z",
         "component": [{"code": {"coding": [{"system": cs, "code": goals}]},
                        "valueQuantity": {"value": 7}}]},
        {"resourceType": "QuestionnaireResponse", "id": "q3", "status": "completed",
         "questionnaire": f"{codes.QUESTIONNAIRE_BASE}{codes.instrument_code(ALLIANCE6)}",
         "encounter": {"reference": "Encounter/e3"},
         "item": [{"linkId": goals, "answer": [{"valueInteger": 6}]}]},
    ]  # fmt: skip


def _map(resources: list[Any], root: str = "Bundle"):
    return episode_from_resources(resources, settings=FhirSettings(), profile=ALLIANCE6, root=root)


def test_the_base_resources_map() -> None:
    sessions = _map(_resources()).request.sessions
    assert [s["attendance"] for s in sessions] == ["attended", "late_cancel", "attended"]


# -- item 1: issues capped, resources capped -----------------------------------------------------


@pytest.mark.parametrize("root", ["Bundle", "prefetch"])
def test_issues_are_capped_with_one_closing_count(root: str) -> None:
    resources: list[Any] = [*_resources(), *([5] * 1000)]
    with pytest.raises(FhirInputError) as caught:
        _map(resources, root)
    issues = caught.value.issues
    assert MAX_ISSUES == MAX_REPORTED_ERRORS
    assert len(issues) == MAX_ISSUES + 1
    assert all(i.severity == "error" for i in issues[:-1])
    closing = issues[-1]
    assert (closing.severity, closing.code) == ("information", "informational")
    assert closing.reason.startswith(f"{1000 - MAX_ISSUES} more issues not listed")


def test_operation_outcome_caps_any_list_of_issues() -> None:
    issues = [FhirIssue(f"Bundle.entry[{i}].resource", "structure", "x") for i in range(500)]
    outcome = operation_outcome(issues, status=422)["issue"]
    assert len(outcome) == MAX_ISSUES + 1
    assert outcome[-1]["severity"] == "information"
    assert outcome[-1]["diagnostics"].startswith(f"{500 - MAX_ISSUES} more issues")
    capped = FhirInputError(issues).issues
    assert operation_outcome(capped, status=422)["issue"] == outcome


@pytest.mark.parametrize("root", ["Bundle", "prefetch"])
def test_too_many_resources_are_refused_before_mapping(root: str) -> None:
    # Without a cap given (the CDS prefetch path), the data contract's ceiling applies.
    resources: list[Any] = [*_resources(), *([5] * MAX_RESOURCES)]
    started = time.perf_counter()
    with pytest.raises(FhirInputError) as caught:
        _map(resources, root)
    assert time.perf_counter() - started < 0.5  # nothing was read
    assert caught.value.status == 413
    ((issue,),) = [caught.value.issues]
    assert (issue.code, issue.expression) == ("too-long", "Bundle.entry" if root == "Bundle"
                                              else "prefetch")  # fmt: skip
    assert str(MAX_RESOURCES) in issue.reason


def test_the_resource_cap_follows_the_appointment_cap() -> None:
    assert max_resources(500) == 2_100
    base = _resources()
    fits = [*base, *([{"resourceType": "Basic"}] * (max_resources(3) - len(base)))]
    kwargs: dict[str, Any] = {"settings": FhirSettings(), "profile": ALLIANCE6, "max_sessions": 3}
    assert episode_from_resources(fits, **kwargs).request.sessions
    with pytest.raises(FhirInputError) as caught:
        episode_from_resources([*fits, {"resourceType": "Basic"}], **kwargs)
    assert caught.value.status == 413


# -- item 2: wrongly typed elements are structure issues, never a 500 ----------------------------

#: (entry index, path of keys, FHIRPath suffix of the issue) of each element read as a list or
#: an object.
TYPED: list[tuple[int, tuple[str | int, ...], str]] = [
    (1, ("period",), "period"),
    (2, ("participant",), "participant"),
    (3, ("extension",), "extension"),
    (3, ("participant",), "participant"),
    (4, ("period",), "period"),
    (4, ("participant",), "participant"),
    (4, ("appointment",), "appointment"),
]


def _set(resources: list[Any], index: int, path: tuple[str | int, ...], value: Any) -> None:
    target = resources[index]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


@pytest.mark.parametrize("value", [5, "SECRETX-Jane-Doe", True, 1.5])
@pytest.mark.parametrize(("index", "path", "suffix"), TYPED)
def test_wrongly_typed_elements_are_structure_issues(index, path, suffix, value) -> None:
    if suffix == "period" and value == SECRET:
        value = [SECRET]  # a period as a list
    resources = _resources()
    _set(resources, index, path, value)
    with pytest.raises(FhirInputError) as caught:
        _map(resources)
    found = [(i.expression, i.code) for i in caught.value.issues]
    assert (f"Bundle.entry[{index}].resource.{suffix}", "structure") in found
    assert SECRET not in json.dumps([i.reason for i in caught.value.issues])


#: Every path the mapping reads below a resource, for the property test.
PATHS: list[tuple[int, tuple[str | int, ...]]] = [
    (0, ("id",)), (0, ("birthDate",)), (0, ("gender",)), (0, ("managingOrganization",)),
    (0, ("managingOrganization", "reference")), (1, ("status",)), (1, ("period",)),
    (1, ("period", "start")), (1, ("managingOrganization",)), (2, ("status",)), (2, ("start",)),
    (2, ("participant",)), (2, ("participant", 0)), (2, ("participant", 1, "actor")),
    (2, ("participant", 1, "actor", "reference")), (3, ("extension",)), (3, ("extension", 0)),
    (3, ("extension", 0, "valueDateTime")), (3, ("cancelationReason",)), (4, ("period",)),
    (4, ("appointment",)), (4, ("appointment", 0)), (4, ("participant", 0, "individual")),
    (4, ("subject",)), (4, ("serviceProvider",)), (5, ("status",)), (5, ("code",)),
    (5, ("code", "coding")), (5, ("code", "coding", 0)), (5, ("component",)),
    (5, ("component", 0)), (5, ("component", 0, "valueQuantity")),
    (5, ("component", 0, "code", "coding")), (5, ("effectiveDateTime",)), (5, ("encounter",)),
    (6, ("status",)), (6, ("questionnaire",)), (6, ("item",)), (6, ("item", 0)),
    (6, ("item", 0, "answer")), (6, ("item", 0, "answer", 0)), (6, ("item", 0, "linkId")),
    (6, ("encounter",)), (6, ("encounter", "reference")), (6, ("subject",)), (6, ("id",)),
    (6, ("item", 0, "answer", 0, "valueCoding")), (6, ("item", 0, "item")),
]  # fmt: skip

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.just(SECRET),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["reference", "start", "url", "coding", "x"]), children,
                      max_size=3),
    max_leaves=8,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.lists(st.sampled_from(PATHS), min_size=1, max_size=3), data=st.data())
def test_any_json_at_any_path_is_mapped_or_refused(where, data) -> None:
    resources = copy.deepcopy(_resources())
    for index, path in where:
        try:
            _set(resources, index, path, data.draw(_JSON))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier draw replaced a parent of this path
    try:
        _map(resources)
    except FhirInputError as exc:
        assert exc.issues
        assert len(exc.issues) <= MAX_ISSUES + 1
        assert SECRET not in json.dumps([(i.expression, i.reason) for i in exc.issues])


def test_a_problems_more_errors_is_the_outcomes_closing_count() -> None:
    from service.fhir.errors import outcome_of_problem

    problem = {"detail": "request does not meet the data contract",
               "errors": [{"loc": ["sessions", i], "reason": "r"} for i in range(MAX_ISSUES)],
               "more_errors": 7}  # fmt: skip
    issues = outcome_of_problem(problem, 422)["issue"]
    assert len(issues) == MAX_ISSUES + 1
    assert (issues[-1]["severity"], issues[-1]["code"]) == ("information", "informational")
    assert issues[-1]["diagnostics"].startswith("8 more issues")  # the detail took a slot
    assert outcome_of_problem({**problem, "errors": "junk"}, 422)["issue"][0]["code"] == "invalid"
