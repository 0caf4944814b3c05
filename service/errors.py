"""Error bodies: a fixed message, the ``request_id`` and, for 422, field paths with reasons.

Never the submitted values, never a stack trace (MLflow's scoring server echoes both; that
would leak clinical data).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.profiles import PROFILES
from features.validation import (
    DATE_NOT_ISO,
    EMPTY_ID,
    RATING_NOT_NUMERIC,
    SESSION_NUMBER_INVALID,
    UNKNOWN_ATTENDANCE,
)
from service.schemas import BatchRequest, RiskRequest, SessionIn

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error; quote the request_id to the operator"
NOT_JSON = "body is not valid JSON"
INVALID = "request does not meet the data contract"


class InvalidRequest(Exception):
    """A request the data contract refuses: answered 422 with ``errors`` (``loc`` and
    ``reason`` each, never a submitted value)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(INVALID)
        self.errors = errors


#: Pydantic error types -> the data validator's wording, by the field they occur on.
_FIELD_REASONS = {
    "attendance": UNKNOWN_ATTENDANCE,
    "session_number": SESSION_NUMBER_INVALID,
    "session_date": DATE_NOT_ISO,
    "intake_date": DATE_NOT_ISO,
}


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_body(detail: str, request_id: str, errors: list[dict[str, Any]] | None = None) -> dict:
    return {"detail": detail, "request_id": request_id, "errors": errors or []}


#: What an error path may name: the request schema's fields and the instruments' element names.
#: A key the caller chose (an unknown field, a rating key) could be anything, a client's name
#: included, so it is replaced by :data:`UNRECOGNISED_KEY`.
_QUOTABLE = frozenset(
    {
        *RiskRequest.model_fields,
        *SessionIn.__annotations__,
        *BatchRequest.model_fields,
        *(name for profile in PROFILES.values() for name in profile.element_names),
        "[key]",
    }
)
UNRECOGNISED_KEY = "(unrecognised key)"


def safe_loc(loc: list[Any]) -> list[str | int]:
    """``loc`` with every part that is not an index or a schema name replaced."""
    return [p if isinstance(p, int) or p in _QUOTABLE else UNRECOGNISED_KEY for p in loc]


def pydantic_problems(errors: Any, *, strip_body: bool = True) -> list[dict[str, Any]]:
    """Pydantic errors -> ``[{"loc", "reason"}]``: the location (:func:`safe_loc`) and a
    value-free reason."""
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        if strip_body and loc and loc[0] == "body":
            loc = loc[1:]
        field = next((p for p in reversed(loc) if isinstance(p, str)), "")
        kind = err.get("type", "")
        if kind == "json_invalid":
            out.append({"loc": [], "reason": NOT_JSON})
            continue
        if field in _FIELD_REASONS and kind not in {"missing", "extra_forbidden"}:
            reason = _FIELD_REASONS[field]
        elif len(loc) >= 2 and loc[-2] == "ratings" and kind != "dict_type":
            reason = RATING_NOT_NUMERIC
        elif field.endswith("_id") and kind == "string_too_short":
            reason = EMPTY_ID
        elif kind == "missing":
            reason = "required field is missing"
        elif kind == "extra_forbidden":
            reason = "field is not part of the data contract"
        else:
            # Pydantic's own message names the expected type or bound, not the input value.
            reason = str(err.get("msg", "invalid value"))
        out.append({"loc": safe_loc(loc), "reason": reason})
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            error_body(INVALID, request_id_of(request), pydantic_problems(exc.errors())),
            status_code=422,
        )

    @app.exception_handler(InvalidRequest)
    async def _refused(request: Request, exc: InvalidRequest) -> JSONResponse:
        return JSONResponse(error_body(INVALID, request_id_of(request), exc.errors), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            error_body(detail, request_id_of(request)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unhandled error",
            extra={"fields": {"request_id": request_id_of(request), "error": type(exc).__name__}},
        )
        return JSONResponse(
            error_body(
                "internal error; quote the request_id to the operator", request_id_of(request)
            ),  # fmt: skip
            status_code=500,
        )
