"""``/docs`` (Swagger UI), ``/redoc`` and ``/openapi.json``, working without internet access.

FastAPI's own pages load Swagger UI, ReDoc, a favicon and Google Fonts from public CDNs, which
clinic networks often cannot reach. These pages are FastAPI's (``get_swagger_ui_html``,
``get_redoc_html``, the "Custom Docs UI Static Assets" recipe) with the assets served by the app
itself from the ``fastapi-offline`` package, which ships the Swagger UI and ReDoc bundles.

They are ordinary API routes, so the request metrics label them by their path instead of
``unmatched`` (Starlette's plain routes, which FastAPI uses for its docs, set no route in the
request scope).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OPENAPI_URL = "/openapi.json"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_URL = "/docs/assets"

#: The files the pages reference, by name; nothing else is served from the package.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}

router = APIRouter(include_in_schema=False)


def _assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get(OPENAPI_URL)
async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    root, app = _root(request), request.app
    # No validator: Swagger UI would send the schema to validator.swagger.io for a badge.
    parameters: dict[str, Any] = {"validatorUrl": None, **(app.swagger_ui_parameters or {})}
    return get_swagger_ui_html(
        openapi_url=f"{root}{OPENAPI_URL}",
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
        init_oauth=app.swagger_ui_init_oauth,
        swagger_ui_parameters=parameters,
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
async def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{OPENAPI_URL}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        with_google_fonts=False,
    )


@router.get(ASSETS_URL + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "no such asset")
    # The bundles change only with the installed package: a day of caching is safe.
    return FileResponse(
        _assets_dir() / name, media_type=media_type, headers={"Cache-Control": "max-age=86400"}
    )
