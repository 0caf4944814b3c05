"""``POST /v1/risk`` and ``POST /v1/risk/batch``."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from service import scoring
from service.deps import ModelDep, SettingsDep
from service.errors import error_body, pydantic_problems, request_id_of
from service.schemas import BatchRequest, BatchResponse, ErrorResponse, RiskRequest, RiskResponse

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["risk"])

ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "The request does not meet the data contract."},
    503: {"model": ErrorResponse, "description": "No model is loaded yet."},
}
INVALID = "request does not meet the data contract"


def _json(payload: dict[str, Any]) -> Response:
    # Serialised directly: the payload is built from the scorer's arrays already in the
    # response schema's shape (tests validate it against RiskResponse).
    return Response(json.dumps(payload, allow_nan=False), media_type="application/json")


@router.post(
    "/risk",
    response_model=RiskResponse,
    responses=ERRORS,
    summary="Dropout risk of one client, explained by alliance element and attendance",
)
def risk(body: RiskRequest, request: Request, model: ModelDep, settings: SettingsDep) -> Response:
    """Calibrated dropout probability at the client's latest appointment, its risk band and
    an explanation whose group contributions add up, with the base, to the output."""
    request_id = request_id_of(request)
    problems = scoring.request_problems(
        body, model.scorer.profile, max_sessions=settings.max_sessions
    )
    if problems:
        return JSONResponse(error_body(INVALID, request_id, problems), status_code=422)
    arrays = scoring.single_arrays(body, model.scorer.profile)
    batch, drivers = scoring.score(model, arrays)
    request.app.state.metrics.predictions.labels(
        band=str(batch.risk_band[0]), model_version=model.version
    ).inc()
    return _json(
        scoring.risk_payload(
            model,
            batch,
            drivers,
            0,
            client_id=body.client_id,
            request_id=request_id,
            scored_at=datetime.now(UTC),
        )  # fmt: skip
    )


@router.post(
    "/risk/batch",
    response_model=BatchResponse,
    responses=ERRORS,
    summary="Dropout risk of up to 1,000 clients in one vectorised pass",
)
def risk_batch(
    body: BatchRequest, request: Request, model: ModelDep, settings: SettingsDep
) -> Response:
    """Each client is checked on its own; a bad one is reported in its item (with field paths
    relative to that item) and the others are still scored."""
    request_id = request_id_of(request)
    if len(body.clients) > settings.max_batch:
        problem = {"loc": ["clients"], "reason": f"at most {settings.max_batch} clients per batch"}
        return JSONResponse(error_body(INVALID, request_id, [problem]), status_code=422)
    profile = model.scorer.profile
    items: list[dict[str, Any]] = []
    valid: list[tuple[int, RiskRequest]] = []
    for i, raw in enumerate(body.clients):
        try:
            req = RiskRequest.model_validate(raw)
        except ValidationError as exc:
            items.append({"index": i, "status": "error",
                          "errors": pydantic_problems(exc.errors(), strip_body=False)})  # fmt: skip
            continue
        problems = scoring.request_problems(req, profile, max_sessions=settings.max_sessions)
        if problems:
            items.append({"index": i, "status": "error", "errors": problems})
        else:
            valid.append((i, req))
    if valid:
        reqs = [r for _, r in valid]
        batch, drivers = scoring.score(model, scoring.batch_arrays(reqs, profile))
        # Rows come back in segment-key order ("0", "1", "10", ...): map them to positions.
        row_of = {int(str(key)): row for row, key in enumerate(batch.client_id)}
        now = datetime.now(UTC)
        counter = request.app.state.metrics.predictions
        for k, (i, req) in enumerate(valid):
            row = row_of[k]
            counter.labels(band=str(batch.risk_band[row]), model_version=model.version).inc()
            payload = scoring.risk_payload(
                model, batch, drivers, row,
                client_id=req.client_id, request_id=request_id, scored_at=now,
            )  # fmt: skip
            items.append({"index": i, "status": "ok", "result": payload})
    items.sort(key=lambda item: item["index"])
    return _json(
        {
            "model": scoring.model_ref(model),
            "request_id": request_id,
            "scored": len(valid),
            "failed": len(body.clients) - len(valid),
            "items": items,
        }
    )
