"""Request bodies parsed by orjson, through FastAPI's documented custom ``Request`` and
``APIRoute`` classes ("Custom Request and APIRoute class").

A 1,000-client batch is about 2 MB of JSON, and the standard library's parser was its single
largest step. orjson parses the same bytes into the same Python values several times faster;
FastAPI then validates them against the route's body model as before. Malformed JSON raises
``orjson.JSONDecodeError``, a subclass of ``json.JSONDecodeError``, which FastAPI answers with
its usual 422.

orjson is stricter than the standard library in two ways that matter here. It refuses lone
surrogates (``"\\ud800"``), which pydantic cannot encode: they stay malformed JSON. It also
refuses the ``NaN`` and ``Infinity`` literals that many JSON writers emit for a missing or broken
number; refusing the whole body for one of them would fail every client of a batch for one bad
rating. So a body orjson refuses is read again by the standard library, which takes those
literals as floats, and kept only if orjson can write it back (no lone surrogates, no integers
beyond 64 bits). The schema then refuses the non-finite number in its own field and item. Only
malformed bodies pay for the second parse.

A body sent under any other media type (or none) gets a 415: FastAPI would hand it to the schema
as raw bytes and answer a confusing 422.

Who asks comes before what they sent: FastAPI reads and parses the body before it solves the
route's dependencies, authentication among them, so a stranger's malformed body would get a 422
(or 415) instead of the 401, and an authenticated caller's would be audited without its subject.
So neither is raised while the body is read: a body that is not JSON, or not sent as JSON,
reaches FastAPI as a stand-in that no body model accepts, FastAPI solves the dependencies (a 401,
403 or 429 is raised there) and only then reports the body as invalid, and the route turns that
report into the 422 "not valid JSON" or the 415 it stands for. This relies on FastAPI validating
the body after the dependencies (fastapi/routing.py ``get_request_handler`` and
``solve_dependencies``), and on every body of these routes being required.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

NOT_JSON_MEDIA_TYPE = "the body must be sent as application/json"


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/<anything>+json``, with any parameters
    (``charset=utf-8``), as FastAPI itself decides whether to parse a body as JSON."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


def loads(body: bytes) -> Any:
    """``body`` parsed as JSON, with ``NaN``, ``Infinity`` and ``-Infinity`` as floats.

    Raises ``orjson.JSONDecodeError`` (a ``json.JSONDecodeError``) for anything else orjson
    refuses.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as refused:
        try:
            value = json.loads(body.decode("utf-8"))
            orjson.dumps(value)  # lone surrogates and >64-bit integers stay refused
        except (ValueError, RecursionError, TypeError, orjson.JSONEncodeError):
            raise refused from None
        return value


class _Refused:
    """The body FastAPI validates when the real one is not JSON: no body model accepts it."""

    __slots__ = ()


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by :func:`loads`; with ``refuse_body`` (a body not
    sent as JSON) it is never parsed. A body that is refused or not valid JSON is handed to
    FastAPI as a :class:`_Refused`, and the reason kept in :attr:`malformed` for later."""

    def __init__(self, scope: Any, receive: Any, *, refuse_body: bool = False) -> None:
        super().__init__(scope, receive)
        self.refuse_body = refuse_body
        self.malformed: json.JSONDecodeError | None = None

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            if self.refuse_body:
                self._json = _Refused()
            else:
                try:
                    self._json = loads(await self.body())
                except json.JSONDecodeError as err:
                    self.malformed, self._json = err, _Refused()
        return self._json


def _not_json(err: json.JSONDecodeError) -> RequestValidationError:
    """FastAPI's own report of a body that is not JSON, without the body."""
    return RequestValidationError(
        [
            {
                "type": "json_invalid",
                "loc": ("body", err.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": err.msg},
            }
        ]
    )


class OrjsonRoute(APIRoute):
    """A route that hands its endpoint an :class:`OrjsonRequest`, and answers 415 when the route
    takes a body and the request does not say it is JSON, once the dependencies (authentication
    first) have passed."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None
        if self.body_field is not None and not self.body_field.field_info.is_required():
            # An optional body would let the endpoint run on the stand-in of a refused one.
            raise TypeError(f"{self.path}: an OrjsonRoute body must be required")

        async def route_handler(request: Request) -> Response:
            refused = takes_body and not is_json(request.headers.get("content-type"))
            ours = OrjsonRequest(request.scope, request.receive, refuse_body=refused)
            try:
                return await handler(ours)
            except RequestValidationError:
                # Raised only after every dependency passed: now the body's fault is the answer.
                if refused:
                    raise HTTPException(415, NOT_JSON_MEDIA_TYPE) from None
                if ours.malformed is not None:
                    raise _not_json(ours.malformed) from None
                raise

        return route_handler
