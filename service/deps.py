"""Typed dependencies of the routes.

These only read attributes of ``app.state`` (no I/O, no locks, nothing that can wait), so they
are ``async def`` and FastAPI calls them on the event loop; a plain ``def`` would be sent to the
thread pool for no benefit. A dependency that can block must be a plain ``def`` instead, as
authentication is (``service.security.scoped``: it may fetch signing keys over HTTP).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.model_store import LoadedModel, ModelStore
from service.settings import ServiceSettings

NO_MODEL = (
    "no model is loaded: the registry has no champion yet, or it could not be loaded; see /readyz"
)


async def get_settings_dep(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_store(request: Request) -> ModelStore:
    return request.app.state.store


def current_model(request: Request) -> LoadedModel:
    """The model this request scores with, taken once (a reload never changes it mid-request);
    503 when none is loaded."""
    model = request.app.state.store.current
    if model is None:
        raise HTTPException(503, NO_MODEL, headers={"Retry-After": "30"})
    return model


async def get_model(request: Request) -> LoadedModel:
    return current_model(request)


SettingsDep = Annotated[ServiceSettings, Depends(get_settings_dep)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]
