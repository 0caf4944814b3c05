"""``POST /v1/risk`` and ``POST /v1/risk/batch``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service import scoring
from service.auth import Principal
from service.deps import ModelDep, SettingsDep, current_model
from service.errors import NOT_JSON, error_body, pydantic_problems, request_id_of
from service.model_store import LoadedModel
from service.schemas import (
    BatchRequest,
    BatchResponse,
    Episode,
    ErrorResponse,
    RiskRequest,
    RiskResponse,
    parse_request,
    parse_valid_batch,
)
from service.security import (
    NOT_FOUND,
    BatchReader,
    RiskReader,
    note_client,
    note_clients,
    note_invalid,
    same_clinic,
)
from service.settings import ServiceSettings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["risk"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No valid credentials."},
    403: {"model": ErrorResponse, "description": "The credentials lack the scope."},
    404: {"model": ErrorResponse, "description": "No such client for this clinic."},
    422: {"model": ErrorResponse, "description": "The request does not meet the data contract."},
    429: {"model": ErrorResponse, "description": "Rate limit; see Retry-After."},
    503: {"model": ErrorResponse, "description": "No model is loaded yet."},
}
INVALID = "request does not meet the data contract"


def _batch_body_schema() -> dict[str, Any]:
    """BatchRequest's JSON schema with its items documented as RiskRequest objects."""
    schema = BatchRequest.model_json_schema()
    schema["properties"]["clients"]["items"] = {"$ref": "#/components/schemas/RiskRequest"}
    return schema


#: Request bodies as documented; FastAPI does not parse them, the routes do (see below). The
#: RiskRequest schema is added to the components by ``service.app`` (no route declares it).
_RISK_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RiskRequest"}}},
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _batch_body_schema()}},
    }
}


async def _raw_body(request: Request) -> bytes:
    return await request.body()


def _validate_one(raw: Any) -> RiskRequest | ValidationError:
    try:
        return RiskRequest.model_validate(raw)
    except ValidationError as exc:
        return exc


def _json(payload: dict[str, Any]) -> Response:
    # Serialised directly with orjson (a 1,000-client batch answer is ~3.5 MB: json.dumps took
    # ~75 ms of it): the payload is already in the response schema's shape, which the tests
    # check against RiskResponse. Values are finite by construction (NaN -> null upstream).
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post(
    "/risk",
    response_model=RiskResponse,
    responses=ERRORS,
    summary="Dropout risk of one client, explained by alliance element and attendance",
    openapi_extra=_RISK_BODY,
)
async def risk(request: Request, principal: RiskReader) -> Response:
    """Calibrated dropout probability at the client's latest appointment, its risk band and
    an explanation whose group contributions add up, with the base, to the output."""
    # Runs on the event loop, not in the thread pool: the work is ~1 ms of numpy, and the
    # thread hand-off measured ~1-2 ms per request on this machine (bench_service). The body
    # is parsed here by pydantic-core straight from bytes (FastAPI would json.loads it first,
    # then validate the dicts), and the model and settings are read without dependency
    # injection: on this ~1 ms path each saves tens of microseconds.
    request_id = request_id_of(request)
    model = current_model(request)
    settings = request.app.state.settings
    try:
        body = parse_request(await request.body())
    except ValidationError as exc:
        problems = pydantic_problems(exc.errors(), strip_body=False)
        return JSONResponse(error_body(INVALID, request_id, problems), status_code=422)
    note_client(request, body.client_id)
    if not same_clinic(principal, body.clinic_id):
        raise HTTPException(404, NOT_FOUND)
    request.state.model_version = model.version
    problems = scoring.request_problems(
        body, model.scorer.profile, max_sessions=settings.max_sessions
    )
    if problems:
        return JSONResponse(error_body(INVALID, request_id, problems), status_code=422)
    arrays = scoring.single_arrays(body, model.scorer.profile)
    batch, drivers = scoring.score(model, arrays)
    request.app.state.metrics.count_predictions(str(batch.risk_band[0]), model.version)
    (payload,) = scoring.risk_payloads(
        model, batch, drivers,
        client_ids=[body.client_id], request_id=request_id, scored_at=datetime.now(UTC),
    )  # fmt: skip
    return _json(payload)


@router.post(
    "/risk/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Dropout risk of up to 1,000 clients in one vectorised pass",
    openapi_extra=_BATCH_BODY,
)
def risk_batch(
    request: Request,
    principal: BatchReader,
    model: ModelDep,
    settings: SettingsDep,
    raw: Annotated[bytes, Depends(_raw_body)],
) -> Response:
    """Each client is checked on its own; a bad one is reported in its item (with field paths
    relative to that item) and the others are still scored."""
    return _score_batch(request, principal, model, settings, raw)


def _score_batch(
    request: Request, principal: Principal, model: LoadedModel, settings: ServiceSettings,
    raw: bytes,
) -> Response:  # fmt: skip
    request_id = request_id_of(request)
    parsed: list[Episode | ValidationError]
    try:
        # Happy path: every item valid, decoded in one pass (msgspec, else pydantic-core).
        fast = parse_valid_batch(raw)
        n_items = len(fast)
        parsed = list(fast)
    except ValidationError:
        try:
            envelope = BatchRequest.model_validate(orjson.loads(raw))
        except orjson.JSONDecodeError:
            problem = {"loc": [], "reason": NOT_JSON}
            return JSONResponse(error_body(INVALID, request_id, [problem]), status_code=422)
        except ValidationError as exc:
            return JSONResponse(
                error_body(INVALID, request_id, pydantic_problems(exc.errors(), strip_body=False)),
                status_code=422,
            )
        n_items = len(envelope.clients)
        parsed = (
            [] if n_items > settings.max_batch else [_validate_one(x) for x in envelope.clients]
        )
    if n_items > settings.max_batch:
        problem = {"loc": ["clients"], "reason": f"at most {settings.max_batch} clients per batch"}
        return JSONResponse(error_body(INVALID, request_id, [problem]), status_code=422)
    request.state.model_version = model.version
    items: list[dict[str, Any]] = []
    reqs: list[Episode] = []
    positions: list[int] = []
    for i, req in enumerate(parsed):
        if isinstance(req, ValidationError):
            items.append({"index": i, "status": "error",
                          "errors": pydantic_problems(req.errors(), strip_body=False)})  # fmt: skip
            note_invalid(request)
        elif not same_clinic(principal, req.clinic_id):
            # Exactly what a client that does not exist would get: nothing about the other clinic.
            items.append({"index": i, "status": "error",
                          "errors": [{"loc": ["clinic_id"], "reason": NOT_FOUND}]})  # fmt: skip
            note_client(request, req.client_id, status=404)
        else:
            reqs.append(req)
            positions.append(i)
    packed = scoring.check_and_pack(reqs, model.scorer.profile, max_sessions=settings.max_sessions)
    for k, problems in packed.problems.items():
        items.append({"index": positions[k], "status": "error", "errors": problems})
        note_client(request, reqs[k].client_id, status=422)
    if packed.arrays is not None:
        batch, drivers = scoring.score(model, packed.arrays)
        # Scored rows come in segment order; batch.client_id holds each row's client, which
        # is its position in packed.valid.
        row_client = [packed.valid[int(j)] for j in batch.client_id]
        payloads = scoring.risk_payloads(
            model, batch, drivers,
            client_ids=[reqs[k].client_id for k in row_client],
            request_id=request_id, scored_at=datetime.now(UTC),
        )  # fmt: skip
        metrics = request.app.state.metrics
        for band, count in zip(*np.unique(batch.risk_band.astype(str), return_counts=True),
                               strict=True):  # fmt: skip
            metrics.count_predictions(str(band), model.version, int(count))
        items.extend(
            {"index": positions[k], "status": "ok", "result": payload}
            for k, payload in zip(row_client, payloads, strict=True)
        )
        note_clients(request, [reqs[k].client_id for k in row_client], status=200)
    items.sort(key=lambda item: item["index"])
    return _json(
        {
            "model": scoring.model_ref(model),
            "request_id": request_id,
            "scored": len(packed.valid),
            "failed": n_items - len(packed.valid),
            "items": items,
        }
    )
