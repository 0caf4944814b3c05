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

A body sent under any other media type (or none) gets a 415 before it is read: FastAPI would hand
it to the schema as raw bytes and answer a confusing 422.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response
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


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by :func:`loads`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    """A route that hands its endpoint an :class:`OrjsonRequest`, and answers 415 when the route
    takes a body and the request does not say it is JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def route_handler(request: Request) -> Response:
            if takes_body and not is_json(request.headers.get("content-type")):
                raise HTTPException(415, NOT_JSON_MEDIA_TYPE)
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler
