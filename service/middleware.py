"""Request ids, latency metrics and one access-log line per request, as a pure ASGI middleware
(cheaper than ``BaseHTTPMiddleware`` on the millisecond scoring path).

Every request gets an id of ours (128 random bits), sent back as ``X-Request-ID`` and written to
the access log and the audit trail. A caller's own ``X-Request-ID`` never becomes that id (two
callers could send the same one and make two audit records look like one request): when it has
a safe shape it is echoed to the caller as ``X-Correlation-ID``, and logs and the audit trail
hold only its keyed pseudonym ``correlation_ref`` (:func:`service.audit.correlation_ref` under
the audit key). The value is the caller's choice and could be anything, a client id included: an
auditor holding the key finds the lines of a caller's id, the files alone name nothing.
Responses under ``/v1`` carry client data or errors about it: ``Cache-Control: no-store`` keeps
them out of browser and proxy caches, unless the route itself set ``private, no-cache`` (the
caseload, polled with ``If-None-Match``: a shared cache still keeps nothing).
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import orjson

from service.audit import ClientRefs
from service.errors import INTERNAL_ERROR, PROBLEM_JSON, error_body
from service.metrics import ServiceMetrics

logger = logging.getLogger("service.access")

REQUEST_ID_HEADER = b"x-request-id"
CORRELATION_ID_HEADER = b"x-correlation-id"
#: A caller's id is kept only in this shape (ASCII letters, digits, ``-``, ``_``, ``.``, ``:``;
#: 1 to 64 characters, enough for a UUID or a W3C trace id); anything else is dropped.
_CORRELATION = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
_NO_STORE = (b"cache-control", b"no-store")
#: The one other cache directive a /v1 route may set: a private cache only, revalidated each
#: time (RFC 9111), for responses with a strong ETag.
REVALIDATE = b"private, no-cache"


def _request_id() -> str:
    # 128 random bits as 32 hex digits, like uuid4().hex without building a UUID.
    return os.urandom(16).hex()


def _correlation_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The caller's ``X-Request-ID`` if it has the safe shape, else None."""
    for key, value in headers:
        if key == REQUEST_ID_HEADER:
            return value.decode("ascii") if _CORRELATION.fullmatch(value) else None
    return None


class RequestContextMiddleware:
    """Sets ``scope["state"]["request_id"]`` (ours) and ``["correlation_ref"]`` (``refs`` of
    the caller's id, or None), echoes our id and the caller's as ``X-Request-ID`` and
    ``X-Correlation-ID``, records latency.

    ``refs`` is the audit key's :class:`~service.audit.ClientRefs`; without it the caller's id
    is echoed but neither logged nor audited.
    """

    def __init__(self, app: Any, metrics: ServiceMetrics, refs: ClientRefs | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.refs = refs

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id()
        correlation_id = _correlation_id(scope.get("headers", []))
        state = scope.setdefault("state", {})
        correlation_ref = (
            None
            if correlation_id is None or self.refs is None
            else self.refs.correlation_ref(correlation_id)
        )
        state["request_id"], state["correlation_ref"] = request_id, correlation_ref
        echoed = [(REQUEST_ID_HEADER, request_id.encode("ascii"))]
        if correlation_id is not None:
            echoed.append((CORRELATION_ID_HEADER, correlation_id.encode("ascii")))
        path = scope["path"]
        if path.startswith("/v1/") or path == "/v1":
            echoed.append(_NO_STORE)
        status = 500
        started = False
        self.metrics.request_started()  # observe_request (in finally) counts it out
        start = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                headers = message.setdefault("headers", [])
                extra = echoed
                if _NO_STORE in echoed:  # the one cache directive, whatever the route set...
                    if (b"cache-control", REVALIDATE) in headers:
                        # ...but a route with a strong ETag polled by If-None-Match (the
                        # caseload) may be kept by the caller's own cache and revalidated.
                        extra = [h for h in echoed if h != _NO_STORE]
                    else:
                        headers[:] = [h for h in headers if h[0].lower() != b"cache-control"]
                headers.extend(extra)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            # Answered here rather than by Starlette's outermost error middleware, so a 500
            # also carries X-Request-ID; the body names no detail (it could quote request data).
            logger.error("unhandled error",
                         extra={"fields": {"request_id": request_id, "error": type(exc).__name__}})  # fmt: skip
            if started:
                raise
            body = orjson.dumps(error_body(INTERNAL_ERROR, request_id, status=500))
            await send_with_id({"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", PROBLEM_JSON.encode()),
                                            (b"content-length", str(len(body)).encode())]})  # fmt: skip
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe_request(template, scope["method"], status, elapsed)
            logger.info(
                "request",
                extra={
                    "fields": {
                        "request_id": request_id,
                        "correlation_ref": correlation_ref,
                        "method": scope["method"],
                        "route": template,
                        "status": status,
                        "duration_ms": round(elapsed * 1e3, 3),
                    }
                },
            )
