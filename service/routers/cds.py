"""CDS Hooks 2.0: ``GET /cds-services``, ``POST /cds-services/{id}`` and its ``/feedback``.

A service call is a thin adapter: the hook's prefetch (or what is fetched from the EHR's FHIR
server when it is missing, :mod:`service.cds.prefetch`) -> the FHIR edge's one mapping
(:func:`service.fhir.inbound.episode_from_resources`) -> the one-client preamble of
``POST /v1/risk`` (tenancy, audit, edge checks) -> ``Scorer.score`` -> a card
(:mod:`service.cds.cards`). The routes are ``async`` because a missing prefetch is fetched over
the network without holding a thread; scoring runs in the thread pool like every route's.

Errors: a hook whose data is neither prefetched nor obtainable is ``412`` (the spec's status),
and the resources failing the data contract are ``422``, both with an ``OperationOutcome``
(``application/fhir+json``) as the spec suggests; authentication, limits and body validation
answer as on ``/v1`` (problem details). Another clinic's patient is the same ``404`` as a
missing one.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from models.whatif import WhatIf, what_if
from service.auth import Principal
from service.cds.auth import feedback_client, hook_client
from service.cds.cards import card_for, top_falls
from service.cds.feedback import FeedbackLog, FeedbackWriteError
from service.cds.prefetch import FhirFetcher, PrefetchUnavailable, allowed_server, split_prefetch
from service.cds.schemas import CdsResponse, Discovery, FeedbackRequest, HookRequest
from service.cds.services import SERVICES, discovery
from service.deps import ModelDep, SettingsDep, current_model
from service.errors import InvalidRequest, error_responses, request_id_of
from service.fhir.inbound import FhirInputError, FhirIssue, episode_from_resources
from service.fhir.outbound import FHIR_JSON, operation_outcome
from service.fhir.settings import FhirSettings
from service.model_store import LoadedModel
from service.routers.jsonbody import OrjsonRoute
from service.routers.risk import _count, _observed, one_client
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["cds-hooks"], route_class=OrjsonRoute)

HookClient = Annotated[Principal, Depends(hook_client)]
FeedbackClient = Annotated[Principal, Depends(feedback_client)]
ERRORS: dict[int | str, dict[str, Any]] = {
    **error_responses(401, 404, 422, 429, 503),
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


def _allowed_servers(request: Request, principal: Principal) -> list[str]:
    """The FHIR servers the calling issuer registered (none for dev tokens)."""
    auth = request.app.state.security.authenticator.settings
    for issuer in auth.issuers:
        if issuer.issuer == principal.issuer:
            return list(issuer.fhir_servers)
    return []


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
    if body.hook != service.hook:
        return _outcome(400, "invalid", WRONG_HOOK, "hook")
    patient_id = body.context.patientId
    resources, missing = split_prefetch(body.prefetch)
    if missing:
        try:
            resources += await _fetch(request, principal, body, missing, settings)
        except PrefetchUnavailable as exc:
            logger.info("cds prefetch unavailable", extra={"fields": {"reason": exc.reason}})
            return _outcome(412, "processing", "the FHIR data this service needs was not "
                            "prefetched and could not be fetched from fhirServer")  # fmt: skip
    try:
        episode = episode_from_resources(
            resources, settings=_fhir_settings(request), profile=model.scorer.profile,
            root="prefetch",
        )  # fmt: skip
    except FhirInputError as exc:
        body_ = operation_outcome(exc.issues, status=422)
        return JSONResponse(body_, status_code=422, media_type=FHIR_JSON)
    if episode.patient_ref != f"Patient/{patient_id}":
        return _outcome(400, "invalid", OTHER_PATIENT, "context.patientId")
    try:
        cards = await run_in_threadpool(
            _cards, episode.request, request, principal, model, settings
        )
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
    base = allowed_server(body.fhirServer, _allowed_servers(request, principal))
    if base is None:
        raise PrefetchUnavailable("no_allowed_fhir_server" if body.fhirServer else "no_fhir_server")
    if body.fhirAuthorization is None:
        raise PrefetchUnavailable("no_fhir_authorization")
    fetcher = FhirFetcher(
        base,
        body.fhirAuthorization.access_token,
        connect_timeout_s=settings.cds_fetch_connect_timeout_s,
        read_timeout_s=settings.cds_fetch_read_timeout_s,
    )
    return await fetcher.fetch(missing, body.context.patientId)


def _cards(
    body: Any,
    request: Request,
    principal: Principal,
    model: LoadedModel,
    settings: ServiceSettings,
) -> list[Any]:
    """The /v1/risk path for one client (preamble, scorer), then the card."""
    edge = one_client(body, request, principal, model, settings)
    scored = model.scorer.score(edge.episodes)
    ((_, outcome),) = scored.by_episode()
    if isinstance(outcome, tuple):
        raise InvalidRequest(edge.request_problems(0, outcome))
    assert outcome is not None, "an episode with appointments has a latest one"
    _count(request, model, [outcome])
    _observed(request, model, scored)
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
    settings: SettingsDep,
) -> dict[str, Any]:
    """Stored (one JSON line per item, without the free-text comment) and audited."""
    log = _feedback_log(request, settings)
    try:
        await run_in_threadpool(
            log.write, service_id, principal.clinic, request_id_of(request), body.feedback
        )
    except FeedbackWriteError as exc:
        logger.error("cds feedback not stored", extra={"fields": {"error": str(exc)}})
        raise HTTPException(503, FEEDBACK_UNAVAILABLE, headers={"Retry-After": "30"}) from None
    return {}


def _feedback_log(request: Request, settings: ServiceSettings) -> FeedbackLog:
    state = request.app.state
    log = getattr(state, "cds_feedback", None)
    if log is None:
        log = state.cds_feedback = FeedbackLog(settings.cds_feedback_path)
    return log
