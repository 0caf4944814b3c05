"""``POST /fhir/Patient/$dropout-risk``: FHIR R4 resources -> the one-client preamble of
``/v1/risk`` -> the scorer -> a ``RiskAssessment``.

A thin adapter: :mod:`service.fhir.inbound` turns the resources into the ``RiskRequest`` that
``/v1/risk`` validates, :func:`service.routers.risk.one_client` does what every one-client route
does (audit note, tenancy 404, edge checks), the scorer scores, :mod:`service.fhir.outbound`
renders. A ``def`` route: scoring runs in the thread pool, as /v1's does.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from service.deps import ModelDep, SettingsDep
from service.errors import InvalidRequest, request_id_of
from service.fhir import codes
from service.fhir.inbound import FhirInputError, FhirIssue, episode_from_resources, full_urls
from service.fhir.outbound import FHIR_JSON, as_parameters, operation_outcome, risk_assessment
from service.fhir.reader import FullUrls, max_resources, too_many_resources
from service.fhir.settings import FhirSettings
from service.routers.jsonbody import OrjsonRoute
from service.routers.risk import score_one
from service.security import RiskReader

router = APIRouter(prefix="/fhir", tags=["fhir"], route_class=OrjsonRoute)

#: The input parameter of the operation when it is called with a Parameters resource.
BUNDLE_PARAMETER = "bundle"
NOT_AN_INPUT = (
    "the body must be a Bundle of type collection, or a Parameters resource whose parameter "
    f"'{BUNDLE_PARAMETER}' holds one"
)
NOT_A_COLLECTION = "the Bundle must be of type collection"
NO_ENTRIES = "the Bundle needs entries, each with a resource"


class FhirResponse(JSONResponse):
    media_type = FHIR_JSON


def fhir_settings(request: Request) -> FhirSettings:
    """The app's FHIR settings (``app.state.fhir_settings``), read from the environment once."""
    settings: FhirSettings | None = getattr(request.app.state, "fhir_settings", None)
    if settings is None:
        settings = request.app.state.fhir_settings = FhirSettings()
    return settings


def unwrap(body: Any, max_sessions: int) -> tuple[list[Any], str, bool, FullUrls]:
    """``(resources, FHIRPath of their list, asked as Parameters, fullUrl map)`` of the
    operation's body; 413 for more entries than :func:`~service.fhir.reader.max_resources` of
    /v1's appointment cap ``max_sessions``."""
    wrapped = isinstance(body, dict) and body.get("resourceType") == "Parameters"
    bundle, where = body, "Bundle"
    if wrapped:
        params = body.get("parameter")
        found = [(k, p) for k, p in enumerate(params if isinstance(params, list) else ())
                 if isinstance(p, dict) and p.get("name") == BUNDLE_PARAMETER]  # fmt: skip
        if len(found) != 1:
            raise FhirInputError([FhirIssue("Parameters.parameter", "required", NOT_AN_INPUT)])
        k, param = found[0]
        bundle, where = param.get("resource"), f"Parameters.parameter[{k}].resource"
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirInputError([FhirIssue(where, "structure", NOT_AN_INPUT)])
    if bundle.get("type") != "collection":
        raise FhirInputError([FhirIssue(f"{where}.type", "value", NOT_A_COLLECTION)])
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise FhirInputError([FhirIssue(f"{where}.entry", "required", NO_ENTRIES)])
    if len(entries) > max_resources(max_sessions):
        issue = FhirIssue(f"{where}.entry", "too-long", too_many_resources(max_sessions))
        raise FhirInputError([issue], status=413)
    resources = [e.get("resource") if isinstance(e, dict) else None for e in entries]
    return resources, f"{where}.entry", wrapped, full_urls(entries)


def _refused(issues: list[FhirIssue], status: int = 422) -> FhirResponse:
    return FhirResponse(operation_outcome(issues, status=status), status_code=status)


@router.post(
    "/Patient/$dropout-risk",
    operation_id="fhirDropoutRisk",
    response_class=FhirResponse,
    responses={
        200: {"description": "A RiskAssessment (or Parameters with it as 'return')."},
        422: {"description": "OperationOutcome: the resources do not meet the data contract."},
        413: {
            "description": "OperationOutcome: the body is too large, or has more entries than "
            "4 per appointment of the appointment cap (ALLIANCE_RISK_MAX_SESSIONS) plus 100."
        },
        **{s: {"description": "OperationOutcome."} for s in (400, 401, 403, 404, 415, 429)},
    },
    summary="FHIR R4 operation: dropout risk of one client as a RiskAssessment",
)
def dropout_risk(
    body: Annotated[
        dict[str, Any],
        Body(
            media_type=FHIR_JSON,
            description="A Bundle (type collection) of one client's Patient, Appointments or "
            "Encounters and alliance Observations or QuestionnaireResponses; or a Parameters "
            f"resource with the Bundle in parameter '{BUNDLE_PARAMETER}' (then the answer is a "
            "Parameters resource too). See docs/fhir.md.",
        ),
    ],
    request: Request,
    principal: RiskReader,
    model: ModelDep,
    settings: SettingsDep,
) -> FhirResponse:
    """Maps the resources as docs/fhir.md says, scores them as ``POST /v1/risk`` does and
    answers a ``RiskAssessment`` (``application/fhir+json``)."""
    fhir = fhir_settings(request)
    try:
        resources, where, wrapped, urls = unwrap(body, settings.max_sessions)
        episode = episode_from_resources(
            resources,
            settings=fhir,
            profile=model.scorer.profile,
            root=where,
            full_urls=urls,
            max_sessions=settings.max_sessions,
        )
    except FhirInputError as exc:
        return _refused(exc.issues, exc.status)
    try:
        _, outcome = score_one(episode.request, request, principal, model, settings)
    except InvalidRequest as exc:
        return _refused(FhirInputError(episode.issues(exc.errors)).issues)
    assessment = risk_assessment(
        outcome, episode, model=model, request_id=request_id_of(request), settings=fhir
    )
    return FhirResponse(as_parameters(assessment) if wrapped else assessment)


@router.get(
    "/CodeSystem/alliance-risk",
    operation_id="fhirCodeSystem",
    response_class=FhirResponse,
    summary="The local CodeSystem: alliance instruments, their elements and items, dropout",
)
def code_system() -> FhirResponse:
    """The CodeSystem at ``http://alliance-risk.org/fhir/CodeSystem/alliance-risk``: no client
    data, no credentials needed."""
    return FhirResponse(codes.code_system())
