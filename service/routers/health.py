"""``/livez``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.deps import StoreDep
from service.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/livez", operation_id="getLiveness")
async def livez() -> dict[str, str]:
    """The process is up (it says nothing about the model)."""
    return {"status": "alive"}


@router.get("/readyz", operation_id="getReadiness", response_model=Readiness,
            responses={503: {"model": Readiness}})  # fmt: skip
async def readyz(store: StoreDep) -> Any:
    """Ready when a model is loaded and passed its warm-up; 503 otherwise. Also reports whether
    the registry answered at the last check (the loaded model serves through an outage)."""
    current = store.current
    status = store.status
    body = {
        "ready": current is not None,
        "model": None if current is None else
        {"name": current.name, "version": current.version, "alias": current.alias},
        "registry": status.registry,
        "last_reload": status.last_result,
        "detail": status.detail,
    }  # fmt: skip
    return JSONResponse(body, status_code=200 if current is not None else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition: this worker's metrics, or all workers' added up."""
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)
