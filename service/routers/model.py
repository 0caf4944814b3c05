"""``GET /v1/model`` and ``POST /v1/admin/reload``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from models.drivers import group_label
from service.deps import ModelDep, StoreDep
from service.routers.risk import ERRORS
from service.schemas import ModelInfo, ReloadResponse
from service.security import ModelAdmin, ModelReader

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", operation_id="getModel", response_model=ModelInfo, responses=ERRORS)
async def model_info(_: ModelReader, model: ModelDep) -> dict[str, Any]:
    """The served model: version, training date, headline test metrics, risk-band thresholds,
    the explanation groups with their features, and the model card."""
    scorer = model.scorer
    reg = scorer.registry
    meta = dict(scorer.metadata)
    groups = {g: [reg.names[i] for i in idx] for g, idx in reg.index_of_group.items()}
    return {
        "model": {"name": model.name, "version": model.version, "alias": model.alias},
        "trained_at": meta.get("trained_at"),
        "profile": scorer.profile.name,
        "elements": list(scorer.profile.element_names),
        "scale": (scorer.profile.scale_min, scorer.profile.scale_max),
        "metrics": {k: float(v) for k, v in dict(meta.get("metrics", {})).items()},
        "risk_bands": scorer.bands.to_dict(),
        "feature_groups": {
            f"{g} ({group_label(scorer.profile, g)})": v for g, v in groups.items()
        },  # fmt: skip
        "explanation_space": str(scorer.calibrator.get("explanation_space", "")),
        "simulated": bool(meta.get("simulated", False)),
        "loaded_at": model.loaded_at,
        "model_card": scorer.model_card,
    }


@router.post("/admin/reload", operation_id="reloadModel", tags=["admin"],
             response_model=ReloadResponse, responses=ERRORS)  # fmt: skip
async def reload(_: ModelAdmin, store: StoreDep) -> dict[str, Any]:
    """Check the watched alias now and swap in a new version if it moved and passes its checks.
    The current model keeps serving whatever the outcome."""
    result = await store.refresh_in_thread()
    current = store.current
    return {
        "result": result,
        "model": None if current is None else
        {"name": current.name, "version": current.version, "alias": current.alias},
        "detail": store.status.detail,
    }  # fmt: skip
