"""Error bodies: RFC 9457 problem details with a fixed message, the ``request_id`` and, for
422, field paths with reasons.

Every error the service answers is ``application/problem+json`` (:data:`PROBLEM_JSON`) with the
members ``type`` (``about:blank``: the status says it all), ``title`` (the status phrase),
``status`` and ``detail``, and the extensions ``request_id``, ``errors`` (at most
:data:`MAX_REPORTED_ERRORS`) and ``more_errors`` (how many were left out). ``instance`` is
omitted: the only occurrence-specific URI would be built from the request path, which the caller
chose; ``request_id`` identifies the occurrence instead.

Never the submitted values or the keys the caller chose, never a stack trace (MLflow's scoring
server echoes both; that would leak clinical data), and never a body that grows with the number
of mistakes in the request.
"""

from __future__ import annotations

import logging
from http.client import responses as STATUS_PHRASES
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
from service.schemas import BatchRequest, ErrorResponse, RiskRequest, SessionIn
from service.store.db import StoreUnavailable
from service.store_schemas import OutcomeRequest, SessionsRequest

logger = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error; quote the request_id to the operator"
NOT_JSON = "body is not valid JSON"
INVALID = "request does not meet the data contract"
NOT_AN_OBJECT = "must be a JSON object"
BAD_CURSOR = (
    "the page cursor is not one this service issued for this clinic; start again from the "
    "first page"
)
BAD_CURSOR_DESCRIPTION = (
    "The page cursor is not one this service issued for this clinic (changed, another "
    "clinic's, or sealed before the audit key rotated); start again from the first page."
)

#: The media type of every error body (RFC 9457).
PROBLEM_JSON = "application/problem+json"
#: Problems listed in one error body or batch item; the rest are counted in ``more_errors``.
MAX_REPORTED_ERRORS = 20
#: Problems listed in a whole batch response, over all its items, in index order. An item past
#: the budget keeps its slot, its ``status`` and its count in ``more_errors``, with no
#: ``errors``: a 1,000-item batch of junk gets a body of a bounded size (about 100 KB at most),
#: not one that grows with the problems in each item.
MAX_BATCH_REPORTED_ERRORS = 200


class ProblemResponse(JSONResponse):
    """A JSON response sent as ``application/problem+json``."""

    media_type = PROBLEM_JSON


class InvalidRequest(Exception):
    """A request the data contract refuses: answered 422 with ``errors`` (``loc`` and
    ``reason`` each, never a submitted value), or ``status`` with ``detail`` (a page cursor
    this service did not issue is a 400: :data:`BAD_CURSOR`)."""

    def __init__(
        self, errors: list[dict[str, Any]], *, status: int = 422, detail: str = INVALID
    ) -> None:
        super().__init__(detail)
        self.errors, self.status, self.detail = errors, status, detail


#: Pydantic error types -> the data validator's wording, by the field they occur on.
_FIELD_REASONS = {
    "attendance": UNKNOWN_ATTENDANCE,
    "session_number": SESSION_NUMBER_INVALID,
    "session_date": DATE_NOT_ISO,
    "intake_date": DATE_NOT_ISO,
    "outcome_date": DATE_NOT_ISO,
}


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def capped(errors: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The first :data:`MAX_REPORTED_ERRORS` problems and the number left out."""
    return errors[:MAX_REPORTED_ERRORS], max(0, len(errors) - MAX_REPORTED_ERRORS)


def batch_capped(
    failures: list[tuple[int, list[dict[str, Any]]]],
) -> list[tuple[int, list[dict[str, Any]], int]]:
    """Each failed batch item's ``(index, problems listed, number left out)``, in index order:
    at most :data:`MAX_REPORTED_ERRORS` listed per item and :data:`MAX_BATCH_REPORTED_ERRORS`
    over the batch."""
    budget = MAX_BATCH_REPORTED_ERRORS
    out = []
    for index, errors in sorted(failures, key=lambda failure: failure[0]):
        shown = errors[: min(MAX_REPORTED_ERRORS, budget)]
        budget -= len(shown)
        out.append((index, shown, len(errors) - len(shown)))
    return out


def error_body(
    detail: str, request_id: str, errors: list[dict[str, Any]] | None = None, *, status: int
) -> dict[str, Any]:
    """The problem details of an error answered with HTTP ``status``."""
    shown, more = capped(errors or [])
    return {
        "type": "about:blank",
        "title": STATUS_PHRASES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "request_id": request_id,
        "errors": shown,
        "more_errors": more,
    }


def problem(
    status: int,
    detail: str,
    request_id: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    """An error response: :func:`error_body` as :data:`PROBLEM_JSON`."""
    return ProblemResponse(
        error_body(detail, request_id, errors, status=status), status_code=status, headers=headers
    )


#: What an error path may name: the request schema's fields and the instruments' element names.
#: A key the caller chose (an unknown field, a rating key) could be anything, a client's name
#: included, so it is replaced by :data:`UNRECOGNISED_KEY`.
_QUOTABLE = frozenset(
    {
        *RiskRequest.model_fields,
        *SessionIn.__annotations__,
        *BatchRequest.model_fields,
        *SessionsRequest.model_fields,
        *OutcomeRequest.model_fields,
        *(name for profile in PROFILES.values() for name in profile.element_names),
        "[key]",
    }
)
UNRECOGNISED_KEY = "(unrecognised key)"


def safe_loc(loc: list[Any]) -> list[str | int]:
    """``loc`` with every part that is not an index or a schema name replaced."""
    return [p if isinstance(p, int) or p in _QUOTABLE else UNRECOGNISED_KEY for p in loc]


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})


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
        if kind in _NOT_AN_OBJECT:
            reason = NOT_AN_OBJECT
        elif field in _FIELD_REASONS and kind not in {"missing", "extra_forbidden"}:
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


_ERROR_DESCRIPTIONS = {
    400: "The body could not be read.",
    401: "No valid credentials.",
    403: "The credentials lack the scope.",
    404: "No such client for this clinic.",
    409: "A request with the same Idempotency-Key is still being processed; see Retry-After.",
    413: "The body is larger than the limit.",
    415: "The body is not sent as application/json.",
    422: "The request does not meet the data contract.",
    429: "Rate limit; see Retry-After.",
    500: "Internal error; quote the request_id to the operator.",
    503: "No model is loaded yet, the audit trail or the client store is unavailable; see "
    "Retry-After.",
    504: "The request did not complete in time.",
}


def _inlined(schema: Any, defs: dict[str, Any]) -> Any:
    """``schema`` with its local ``$defs`` references replaced by the definitions."""
    if isinstance(schema, list):
        return [_inlined(s, defs) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
    return {k: _inlined(v, defs) for k, v in schema.items()}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for these error statuses, documented as :data:`PROBLEM_JSON`.

    FastAPI puts a response ``model`` under the route's own media type (``application/json``;
    fastapi#3122), so the schema is given as content of :data:`PROBLEM_JSON` instead, generated
    by pydantic and inlined (its ``$defs`` have no place in an OpenAPI document).
    """
    generated = ErrorResponse.model_json_schema()
    schema = _inlined(generated, generated.pop("$defs", {}))
    return {
        status: {
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {PROBLEM_JSON: {"schema": schema}},
        }
        for status in statuses
    }


def bad_cursor(parameter: str) -> InvalidRequest:
    """The 400 of a page cursor this service did not issue for the caller's clinic (changed,
    another clinic's, sealed under an audit key since rotated, or not a cursor): fixed text,
    naming the query ``parameter`` and nothing of the cursor."""
    return InvalidRequest(
        [{"loc": ["query", parameter], "reason": "not a cursor this service issued"}],
        status=400,
        detail=BAD_CURSOR,
    )


def cursor_error_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for :func:`bad_cursor`'s 400."""
    return {400: {**error_responses(400)[400], "description": BAD_CURSOR_DESCRIPTION}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> ProblemResponse:
        return problem(422, INVALID, request_id_of(request), pydantic_problems(exc.errors()))

    @app.exception_handler(InvalidRequest)
    async def _refused(request: Request, exc: InvalidRequest) -> ProblemResponse:
        return problem(exc.status, exc.detail, request_id_of(request), exc.errors)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> ProblemResponse:
        headers = {"Retry-After": str(exc.retry_after_s)}
        return problem(503, str(exc), request_id_of(request), headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = getattr(exc, "headers", None)
        return problem(exc.status_code, detail, request_id_of(request), headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        logger.error(
            "unhandled error",
            extra={"fields": {"request_id": request_id_of(request), "error": type(exc).__name__}},
        )
        return problem(500, INTERNAL_ERROR, request_id_of(request))
