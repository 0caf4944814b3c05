"""CDS Hooks 2.0: ``GET /cds-services``, ``POST /cds-services/{id}`` and its ``/feedback``.

A service call is a thin adapter: the hook's prefetch (or what is fetched from the EHR's FHIR
server when it is missing, :mod:`service.cds.prefetch`) -> the FHIR edge's one mapping
(:func:`service.fhir.inbound.episode_from_resources`) -> the one-client preamble of
``POST /v1/risk`` (tenancy, audit, edge checks) -> ``Scorer.score`` -> a card
(:mod:`service.cds.cards`). The routes are ``async`` because a missing prefetch is fetched over
the network without holding a thread; scoring runs in the thread pool like every route's.

Errors: a hook whose data is neither prefetched nor obtainable is ``412`` (the spec's status),
and the resources failing the data contract are ``422``, both with an ``OperationOutcome``
(``application/fhir+json``) as the spec suggests, and so is a body that fails its schema
(each issue's ``expression`` names the field, ``context.patientId``, never the value);
authentication and limits answer as on ``/v1`` (problem details). Another clinic's patient is the same ``404`` as a
missing one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from models.whatif import WhatIf, what_if
from service.auth import IssuerConfig, Principal
from service.cds.auth import feedback_client, hook_client
from service.cds.cards import card_for, top_falls
from service.cds.feedback import store_feedback
from service.cds.prefetch import (
    FhirFetcher,
    PrefetchUnavailable,
    allowed_server,
    required_keys,
    split_prefetch,
)
from service.cds.schemas import (
    AcceptedSuggestion,
    CdsResponse,
    Coding,
    Discovery,
    FeedbackItem,
    FeedbackRequest,
    FhirAuthorization,
    HookContext,
    HookRequest,
    OverrideReason,
)
from service.cds.services import SERVICES, discovery
from service.deps import ModelDep, SettingsDep, current_model
from service.errors import (
    UNRECOGNISED_KEY,
    InvalidRequest,
    error_responses,
    pydantic_problems,
    request_id_of,
)
from service.fhir.inbound import FhirInputError, FhirIssue, episode_from_resources
from service.fhir.outbound import FHIR_JSON, operation_outcome
from service.fhir.settings import FhirSettings
from service.model_store import LoadedModel
from service.routers.jsonbody import OrjsonRoute
from service.routers.risk import score_one
from service.schemas import RiskRequest
from service.security import NOT_FOUND, forget_clients, note_client
from service.settings import ServiceSettings
from service.store.db import StoreUnavailable
from service.store.deps import ClientStoreDep

logger = logging.getLogger(__name__)


def _quotable() -> frozenset[str]:
    """The CDS request schemas' own field names: what a body-validation issue may name."""
    models: list[type[BaseModel]] = [
        HookRequest, HookContext, FhirAuthorization, FeedbackRequest, FeedbackItem,
        OverrideReason, Coding, AcceptedSuggestion,
    ]  # fmt: skip
    return frozenset(name for model in models for name in model.model_fields)


CDS_FIELDS = _quotable()


def _expression(loc: Sequence[Any]) -> str:
    """A body location as a FHIRPath-like expression (``context.patientId``,
    ``feedback[0].outcomeTimestamp``); a key the caller chose is never quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            name = part if part in CDS_FIELDS else UNRECOGNISED_KEY
            out += f".{name}" if out else name
    return out


def invalid_body(errors: Sequence[Any]) -> JSONResponse:
    """A CDS body that fails its schema: 422 with an OperationOutcome naming each field, as
    the resources failing the data contract are answered (never a submitted value)."""
    issues = []
    for err, problem in zip(errors, pydantic_problems(errors), strict=True):
        loc = list(err.get("loc", ()))
        loc = loc[1:] if loc and loc[0] == "body" else loc
        code = "required" if err.get("type") == "missing" else "invalid"
        issues.append(FhirIssue(_expression(loc), code, problem["reason"]))
    return JSONResponse(operation_outcome(issues, status=422), status_code=422,
                        media_type=FHIR_JSON)  # fmt: skip


class CdsRoute(OrjsonRoute):
    """:class:`OrjsonRoute` whose body-validation 422 is an OperationOutcome (as every other
    CDS data problem), once authentication has passed."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return invalid_body(exc.errors())

        return route_handler


router = APIRouter(tags=["cds-hooks"], route_class=CdsRoute)

HookClient = Annotated[Principal, Depends(hook_client)]
FeedbackClient = Annotated[Principal, Depends(feedback_client)]
ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 404, 429, 503),
    422: {"description": "The body fails its schema, or the FHIR data fails the data contract "
          "(an OperationOutcome naming each field, never a value)."},
    400: {"description": "A hook this service does not answer, or another patient's data "
          "(an OperationOutcome)."},
    412: {"description": "The FHIR data was not prefetched and could not be fetched from "
          "fhirServer (CDS Hooks 2.0; an OperationOutcome)."},
}  # fmt: skip
WRONG_HOOK = "this service answers another hook"
OTHER_PATIENT = "the prefetched Patient is not the patient of the hook's context"
FEEDBACK_UNAVAILABLE = "feedback could not be stored; try again later"
NO_MODEL_CARD = "the served model has no model card"


def _outcome(status: int, code: str, reason: str, expression: str = "") -> JSONResponse:
    body = operation_outcome([FhirIssue(expression, code, reason)], status=status)
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def _fhir_settings(request: Request) -> FhirSettings:
    """The FHIR edge's settings (read from the environment once per app)."""
    state = request.app.state
    settings = getattr(state, "fhir_settings", None)
    if settings is None:
        settings = state.fhir_settings = FhirSettings()
    return settings


def _issuer(request: Request, principal: Principal) -> IssuerConfig | None:
    """The calling issuer's registration (None for dev tokens)."""
    auth = request.app.state.security.authenticator.settings
    for issuer in auth.issuers:
        if issuer.issuer == principal.issuer:
            return issuer
    return None


def _allowed_servers(request: Request, principal: Principal) -> list[str]:
    """The FHIR servers the calling issuer registered (none for dev tokens)."""
    issuer = _issuer(request, principal)
    return [] if issuer is None else list(issuer.fhir_servers)


def _with_issuer_clinic(body: RiskRequest, issuer: IssuerConfig | None) -> RiskRequest | None:
    """The request as scored for the issuer's clinic (issue 20: the clinic comes from the
    issuer's configuration; an EHR's Organization ids are not our clinic ids). With the
    issuer's ``organizations`` map, the patient's organization must map to that clinic, else
    None (another clinic's patient). Dev tokens keep the clinic the resources name."""
    if issuer is None or issuer.clinic is None:
        return body
    if issuer.organizations and issuer.organizations.get(body.clinic_id) != issuer.clinic:
        return None
    return body.model_copy(update={"clinic_id": issuer.clinic})


@router.get(
    "/cds-services",
    operation_id="cdsDiscovery",
    response_model=Discovery,
    summary="CDS Hooks discovery: the services, their hooks and prefetch templates",
)
async def cds_discovery() -> Discovery:
    """Public: it names the services and the FHIR data they ask for, nothing about a patient."""
    return discovery()


@router.get("/model-card", include_in_schema=False)
async def model_card(request: Request) -> PlainTextResponse:
    """The served model's card (Markdown): the page a CDS card's source links to. Aggregate
    figures only (counts, metrics, subgroups of at least the card's minimum size)."""
    model = current_model(request)
    if model.scorer.model_card is None:
        raise HTTPException(404, NO_MODEL_CARD)
    return PlainTextResponse(model.scorer.model_card, media_type="text/markdown")


@router.post(
    "/cds-services/{service_id}",
    operation_id="cdsService",
    response_model=CdsResponse,
    responses=ERRORS,
    summary="A CDS Hooks call: the patient's dropout risk as a card",
)
async def cds_service(
    service_id: str,
    body: HookRequest,
    request: Request,
    principal: HookClient,
    model: ModelDep,
    settings: SettingsDep,
) -> Any:
    """Cards for the hook's patient: none for a low risk (unless configured), else one card
    with the risk, its drivers, the alliance focus and what the model associates with a lower
    risk."""
    service = SERVICES[service_id]
    patient_id = body.context.patientId
    # Audited with the patient's keyed ref from here on, whatever answer follows (400, 412,
    # 422 and 404 included): the call may already have read the patient's data.
    note_client(request, principal.clinic, patient_id)
    if body.hook != service.hook:
        return _outcome(400, "invalid", WRONG_HOOK, "hook")
    resources, missing = split_prefetch(body.prefetch)
    if missing:
        try:
            resources += await _fetch(request, principal, body, missing, settings)
        except PrefetchUnavailable as exc:
            logger.info("cds prefetch unavailable", extra={"fields": {"reason": exc.reason}})
            return _outcome(412, "processing", "the FHIR data this service needs was not "
                            "prefetched and could not be fetched from fhirServer")  # fmt: skip
    issuer = _issuer(request, principal)
    # The issuer's clinic stands in for a Patient without a managing Organization, unless an
    # organization map asks for the patient's organization to be checked.
    clinic = issuer.clinic if issuer is not None and not issuer.organizations else None
    try:
        episode = episode_from_resources(
            resources, settings=_fhir_settings(request), profile=model.scorer.profile,
            root="prefetch", max_sessions=settings.max_sessions, clinic=clinic,
        )  # fmt: skip
    except FhirInputError as exc:
        body_ = operation_outcome(exc.issues, status=422)
        return JSONResponse(body_, status_code=422, media_type=FHIR_JSON)
    if episode.patient_ref != f"Patient/{patient_id}":
        return _outcome(400, "invalid", OTHER_PATIENT, "context.patientId")
    scored = _with_issuer_clinic(episode.request, issuer)
    if scored is None:  # another clinic's patient: the same answer as a missing one
        raise HTTPException(404, NOT_FOUND)
    forget_clients(request)  # one_client notes the client again, by its scored id
    try:
        cards = await run_in_threadpool(_cards, scored, request, principal, model, settings)
    except InvalidRequest as exc:
        body_ = operation_outcome(episode.issues(exc.errors), status=422)
        return JSONResponse(body_, status_code=422, media_type=FHIR_JSON)
    return CdsResponse(cards=cards)


async def _fetch(
    request: Request,
    principal: Principal,
    body: HookRequest,
    missing: list[str],
    settings: ServiceSettings,
) -> list[dict[str, Any]]:
    """The ``missing`` keys' resources from the issuer's FHIR server: the required ones or 412
    (PrefetchUnavailable), the optional ones when the server can be used, else none."""
    needed = required_keys(body.prefetch, missing)
    optional = [key for key in missing if key not in needed]
    base = allowed_server(body.fhirServer, _allowed_servers(request, principal))
    unusable = None
    if base is None:
        unusable = "no_allowed_fhir_server" if body.fhirServer else "no_fhir_server"
    elif body.fhirAuthorization is None:
        unusable = "no_fhir_authorization"
    if unusable is not None:
        if needed:
            raise PrefetchUnavailable(unusable)
        return []  # the spec: a client MAY leave out keys it chooses not to satisfy
    assert base is not None and body.fhirAuthorization is not None
    fetcher = FhirFetcher(
        base,
        body.fhirAuthorization.access_token,
        connect_timeout_s=settings.cds_fetch_connect_timeout_s,
        read_timeout_s=settings.cds_fetch_read_timeout_s,
    )
    return await fetcher.fetch(needed, body.context.patientId, optional=optional)


def _cards(
    body: Any,
    request: Request,
    principal: Principal,
    model: LoadedModel,
    settings: ServiceSettings,
) -> list[Any]:
    """The /v1/risk path for one client (preamble, scorer), then the card."""
    edge, outcome = score_one(body, request, principal, model, settings)
    scenarios = []
    wants_card = outcome.risk_band != "low" or settings.cds_low_risk_card == "info"
    if settings.cds_whatif_scenarios and wants_card:
        (found,) = what_if(model.scorer, edge.episodes, scored_at=outcome.scored_at)
        if isinstance(found, WhatIf):
            scenarios = top_falls(found.scenarios, settings.cds_whatif_scenarios)
    card = card_for(
        outcome,
        scenarios,
        model_label=f"{model.name} version {model.version}",
        source_url=f"{settings.cds_public_url}/model-card",
        low_risk_card=settings.cds_low_risk_card == "info",
    )
    return [] if card is None else [card]


@router.post(
    "/cds-services/{service_id}/feedback",
    operation_id="cdsFeedback",
    responses=ERRORS,
    summary="What the clinician did with a card (accepted, or overridden with a reason)",
)
async def cds_feedback(
    service_id: str,
    body: FeedbackRequest,
    request: Request,
    principal: FeedbackClient,
    store: ClientStoreDep,
) -> dict[str, Any]:
    """Stored in the client store (one row per item, without the free-text comment) and
    audited; 503 with Retry-After when the store is unreachable (nothing stored)."""
    try:
        await run_in_threadpool(
            store_feedback, store, service_id, principal.clinic, request_id_of(request),
            body.feedback,
        )  # fmt: skip
    except StoreUnavailable as exc:
        logger.error("cds feedback not stored", extra={"fields": {"error": exc.reason}})
        headers = {"Retry-After": str(exc.retry_after_s)}
        raise HTTPException(503, FEEDBACK_UNAVAILABLE, headers=headers) from None
    return {}
