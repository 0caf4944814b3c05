"""``POST /v1/risk`` and ``POST /v1/risk/batch``: requests -> episodes -> the scorer -> responses.

Both routes are plain ``def`` functions: FastAPI runs them in its thread pool, so scoring (CPU
work) never holds up the event loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fastapi import APIRouter, HTTPException, Request

from models.results import RiskScore
from models.scoreset import ScoreSet
from service.auth import Principal
from service.deps import ModelDep, SettingsDep
from service.episodes import RequestEpisodes, edge_problems, to_episodes
from service.errors import (
    InvalidRequest,
    batch_capped,
    error_responses,
    pydantic_problems,
    request_id_of,
)
from service.model_store import LoadedModel
from service.routers.jsonbody import OrjsonRoute
from service.schemas import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    InvalidItem,
    ModelRef,
    RiskRequest,
    RiskResponse,
)
from service.security import (
    NOT_FOUND,
    BatchReader,
    RiskReader,
    note_client,
    note_invalid,
    same_clinic,
)
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["risk"], route_class=OrjsonRoute)

#: The errors any /v1 operation can answer (authentication, rate limit, model, audit, time).
ERRORS = error_responses(401, 403, 429, 500, 503, 504)
#: And those of an operation that takes a JSON body.
BODY_ERRORS = error_responses(400, 413, 415, 422)


def model_ref(model: LoadedModel) -> ModelRef:
    return ModelRef(name=model.name, version=model.version, alias=model.alias)


def _count(request: Request, model: LoadedModel, scores: list[RiskScore]) -> None:
    metrics = request.app.state.metrics
    for band, n in Counter(score.risk_band for score in scores).items():
        metrics.count_predictions(band, model.version, n)
    metrics.observe_probabilities((score.probability for score in scores), model.version)


def _observed(request: Request, model: LoadedModel, scored: ScoreSet) -> None:
    """Hand the scored rows to the observers (the shadow challenger, the drift windows): they
    only queue or copy them. The response is built: an observer that raises is logged (its
    class and the exception's type, no client data) and counted, never turned into a 500."""
    for observer in request.app.state.observers:
        try:
            observer.observe(model, scored)
        except Exception as exc:
            name = type(observer).__name__
            request.app.state.metrics.observer_failures.labels(name).inc()
            logger.error(
                "score observer failed; the response is unaffected",
                extra={"fields": {"observer": name, "error": type(exc).__name__}},
            )


def one_client(
    body: RiskRequest,
    request: Request,
    principal: Principal,
    model: LoadedModel,
    settings: ServiceSettings,
) -> RequestEpisodes:
    """What every one-client route does before its model work: note the client for the audit
    record, answer another clinic's client as a missing one (404), run the edge's checks (422)
    and turn the request into an episode for the served model's profile."""
    note_client(request, body.clinic_id, body.client_id)
    if not same_clinic(principal, body.clinic_id):
        raise HTTPException(404, NOT_FOUND)
    request.state.model_version = model.version
    profile = model.scorer.profile
    refused = edge_problems(body, profile, max_sessions=settings.max_sessions)
    if refused:
        raise InvalidRequest(refused)
    return to_episodes([body], profile)


def score_one(
    body: RiskRequest,
    request: Request,
    principal: Principal,
    model: LoadedModel,
    settings: ServiceSettings,
) -> tuple[RequestEpisodes, RiskScore]:
    """The one-client scoring path every edge takes (/v1/risk, FHIR, CDS Hooks):
    :func:`one_client`, then the one scorer; the client's result at its latest appointment,
    counted in the metrics and handed to the observers. The history's contract problems are a
    422 (:class:`InvalidRequest`, as the preamble's)."""
    edge = one_client(body, request, principal, model, settings)
    scored = model.scorer.score(edge.episodes)
    ((_, outcome),) = scored.by_episode()
    if isinstance(outcome, tuple):
        raise InvalidRequest(edge.request_problems(0, outcome))
    assert outcome is not None, "an episode with appointments has a latest one"
    _count(request, model, [outcome])
    _observed(request, model, scored)
    return edge, outcome


@router.post(
    "/risk",
    operation_id="scoreRisk",
    response_model=RiskResponse,
    responses={**ERRORS, **BODY_ERRORS, **error_responses(404)},
    summary="Dropout risk of one client, explained by alliance element and attendance",
)
def risk(
    body: RiskRequest,
    request: Request,
    principal: RiskReader,
    model: ModelDep,
    settings: SettingsDep,
) -> RiskResponse:
    """Calibrated dropout probability at the client's latest appointment, its risk band and
    an explanation whose group contributions add up, with the base, to the output."""
    _, outcome = score_one(body, request, principal, model, settings)
    return RiskResponse.of(outcome, model_ref(model), request_id_of(request))


@router.post(
    "/risk/batch",
    operation_id="scoreRiskBatch",
    response_model=BatchResponse,
    responses={**ERRORS, **BODY_ERRORS},
    summary="Dropout risk of up to 1,000 clients in one vectorised pass",
)
def risk_batch(
    body: BatchRequest,
    request: Request,
    principal: BatchReader,
    model: ModelDep,
    settings: SettingsDep,
) -> BatchResponse:
    """Each client is checked on its own; a bad one is reported in its item (with field paths
    relative to that item) and the others are still scored."""
    if len(body.clients) > settings.max_batch:
        reason = f"at most {settings.max_batch} clients per batch"
        raise InvalidRequest([{"loc": ["clients"], "reason": reason}])
    request.state.model_version = model.version
    scorer = model.scorer
    request_id = request_id_of(request)
    items: list[BatchItem] = []
    failures: list[tuple[int, list[dict[str, Any]]]] = []
    accepted: list[RiskRequest] = []
    positions: list[int] = []
    for i, item in enumerate(body.clients):
        if isinstance(item, InvalidItem):
            note_invalid(request)
            failures.append((i, pydantic_problems(item.errors, strip_body=False)))
        elif not same_clinic(principal, item.clinic_id):
            # Exactly what a client that does not exist gets: nothing about the other clinic.
            note_client(request, item.clinic_id, item.client_id, status=404)
            failures.append((i, [{"loc": ["clinic_id"], "reason": NOT_FOUND}]))
        elif refused := edge_problems(item, scorer.profile, max_sessions=settings.max_sessions):
            note_client(request, item.clinic_id, item.client_id, status=422)
            failures.append((i, refused))
        else:
            accepted.append(item)
            positions.append(i)
    edge = to_episodes(accepted, scorer.profile)
    scored = scorer.score(edge.episodes)
    ref = model_ref(model)
    results: list[RiskScore] = []
    for j, outcome in scored.by_episode():
        item = accepted[j]
        if isinstance(outcome, RiskScore):
            note_client(request, item.clinic_id, item.client_id, status=200)
            results.append(outcome)
            result = RiskResponse.of(outcome, ref, request_id)
            items.append(BatchItem(index=positions[j], status="ok", result=result))
        else:
            assert outcome is not None, "an episode with appointments has a latest one"
            note_client(request, item.clinic_id, item.client_id, status=422)
            failures.append((positions[j], edge.request_problems(j, outcome)))
    _count(request, model, results)
    items.extend(_failed(*failure) for failure in batch_capped(failures))
    items.sort(key=lambda it: it.index)
    response = BatchResponse(
        model=ref,
        request_id=request_id,
        scored=len(results),
        failed=len(items) - len(results),
        items=items,
    )
    _observed(request, model, scored)
    return response


def _failed(index: int, shown: list[dict[str, Any]], more: int) -> BatchItem:
    return BatchItem.model_validate(
        {"index": index, "status": "error", "errors": shown, "more_errors": more}
    )
