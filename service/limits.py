"""Request limits: body size (413), rate (429 with ``Retry-After``), time (504) and CORS.

The pieces are library code; the app factory wires them. :func:`install_limits` adds the three
middlewares in the intended order and must be called *before* ``RequestContextMiddleware`` is
added (Starlette's ``add_middleware`` puts each new middleware outermost), so that the 413 and 504
bodies carry the request's ``request_id`` and the access log records their status::

    RequestContextMiddleware -> CORS -> TimeoutMiddleware -> BodySizeLimitMiddleware -> app

The rate limiter needs the caller's identity (clinic and token id from the verified token), so it
runs in a dependency after authentication: ``wait = limiter.check({"clinic": c, "token": t})``
and ``raise rate_limited(wait)`` when ``wait`` is not None.

Every error body is :func:`service.errors.error_body`: a fixed message and the ``request_id``,
never anything the caller sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ProblemResponse, error_body

logger = logging.getLogger(__name__)

MIB = 1024 * 1024

#: ``scope["state"]`` key set to True when :class:`TimeoutMiddleware` has answered 504; a ``def``
#: route still running in its thread can read it as ``request.state.timed_out``.
TIMED_OUT_STATE = "timed_out"

#: Headers a browser client may send and read (CORS); the API takes a bearer token, not cookies.
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Request-ID")
CORS_EXPOSE_HEADERS = ("X-Request-ID", "Retry-After")
CORS_ALLOW_METHODS = ("GET", "POST")


class LimitSettings(BaseSettings):
    """Request limits, from the environment with prefix ``ALLIANCE_RISK_LIMIT_``.

    Rates hold across the workers of one ``alliance-risk serve --workers N``: it sets
    ``shared_dir``, and the workers keep their buckets in one SQLite file there
    (:mod:`service.shared_limits`). Several hosts or several ``serve`` processes behind one
    proxy each count alone: enforce a global rate at that proxy then. The default rates are far
    above what a clinic's systems send in normal use and well below what one worker serves
    (about 500-600 single-client requests/s, perf-notes): they stop a runaway client, not
    regular traffic. Load tests that drive one clinic hard must raise them.
    """

    model_config = SettingsConfigDict(env_prefix="ALLIANCE_RISK_LIMIT_", extra="ignore")

    max_body_bytes: int = Field(
        4 * MIB,
        ge=1024,
        description="Largest request body in bytes (413 above it). Measured: a 1,000-client "
        "batch of 12 appointments with six alliance6 ratings per attended session is 1.9 MB "
        "as compact JSON, 2.1-2.2 MB with json.dumps' default separators, 2.9 MB with "
        "full-precision floats and 3.6 MB pretty-printed, so 4 MiB admits a full batch "
        "however it is encoded; parsing and validating 2.9 MB took 0.15 s and 23 MB.",
    )
    rate_per_clinic_per_s: float = Field(
        100.0, ge=0, description="Sustained requests per second per clinic; 0 turns it off."
    )
    burst_per_clinic: int = Field(200, ge=1, description="Requests a clinic may send at once.")
    rate_per_token_per_s: float = Field(
        50.0, ge=0, description="Sustained requests per second per token; 0 turns it off."
    )
    burst_per_token: int = Field(100, ge=1, description="Requests a token may send at once.")
    max_rate_buckets: int = Field(
        10_000, ge=1, description="Buckets kept in memory; idle full buckets are dropped first."
    )
    shared_dir: Path | None = Field(
        None,
        description="Folder whose rate-limit buckets every worker shares (set by serve when "
        "--workers is above 1); unset: the buckets are the process's own.",
    )
    request_timeout_s: float = Field(
        10.0, ge=0, description="Seconds until a request is answered 504; 0 turns it off."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Browser origins allowed to call the API (scheme://host[:port]), as a JSON "
        "list or comma-separated. Empty (the default): no CORS headers at all.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _exact_origins(cls, origins: list[str]) -> list[str]:
        return [_normalise_origin(origin) for origin in origins]


def _normalise_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case; wildcards, paths and credentials are refused."""
    if "*" in origin:
        raise ValueError("cors_origins must list exact origins; '*' is not allowed")
    parts = urlsplit(origin.strip())
    if (
        parts.scheme.lower() not in {"http", "https"}
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
    ):
        raise ValueError("each of cors_origins must be scheme://host[:port] (http or https)")
    # Browsers send the Origin header as scheme://host[:port]: no trailing slash, no default
    # port, IPv6 hosts in brackets (RFC 6454 section 6.1).
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    default_port = {"http": 80, "https": 443}[scheme]
    port = f":{parts.port}" if parts.port not in (None, default_port) else ""
    return f"{scheme}://{host}{port}"


# -- body size --------------------------------------------------------------------------------


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit.

    A Starlette ``HTTPException`` on purpose: FastAPI re-raises those from body parsing (anything
    else becomes a 400), so the app's handler renders it as a 413 ``error_body``.
    """

    def __init__(self, max_body_bytes: int) -> None:
        super().__init__(status_code=413, detail=body_too_large_detail(max_body_bytes))


def body_too_large_detail(max_body_bytes: int) -> str:
    return f"request body is larger than the limit of {max_body_bytes} bytes"


def _request_id(scope: Scope) -> str:
    state = scope.get("state") or {}
    return str(state.get("request_id", "") or "")


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length before the app sees it
    return None


class BodySizeLimitMiddleware:
    """Pure ASGI middleware: 413 for request bodies over ``max_body_bytes``.

    A declared ``Content-Length`` over the limit is answered at once, before the app runs and
    without reading the body. A body without one (chunked) is counted while the app reads it;
    the read that passes the limit raises :class:`BodyTooLargeError`, which the app's exception
    handler turns into the 413 (or this middleware does, if the exception reaches it before a
    response has started). Both 413s carry ``Connection: close`` so the rest of an upload is not
    read into a kept-alive connection.

    FastAPI's own ``FastAPI(max_body_size=...)`` (``fastapi/_body_limit.py``) was not used: it
    answers a declared oversize body with a plain-text ``Content Too Large`` (measured with
    fastapi 0.165), not the JSON ``error_body``, and sits outside the request-id middleware.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        if max_body_bytes < 0:
            raise ValueError("max_body_bytes must be >= 0")
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._reject(scope, receive, send)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                if received > self.max_body_bytes:
                    # The app's handler rendered our 413: make the server drop the rest.
                    headers = [*message.get("headers", []), (b"connection", b"close")]
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLargeError:
            if response_started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = ProblemResponse(
            error_body(body_too_large_detail(self.max_body_bytes), _request_id(scope), status=413),
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


# -- timeout ----------------------------------------------------------------------------------


def timeout_detail(timeout_s: float) -> str:
    return (
        f"the request did not complete within {timeout_s:g} s; quote the request_id to the operator"
    )


class TimeoutMiddleware:
    """Pure ASGI middleware: 504 with an ``error_body`` when no response has started in time.

    The app runs in its own asyncio task; the middleware waits for it with ``asyncio.wait`` for
    at most ``timeout_s`` seconds and, at the deadline, sends the 504 without waiting for the
    task any further. Not waiting is what makes the 504 punctual: Starlette runs ``def`` routes
    with ``anyio.to_thread.run_sync`` without ``abandon_on_cancel``, so an anyio cancel scope
    (``anyio.fail_after``) around the app waits for the thread to end (measured: a 0.1 s
    ``move_on_after`` around a 1 s thread returned after 1.13 s).

    The late task is left to finish, not cancelled, and what it does is discarded: anything it
    sends after the 504 is dropped and ``receive`` answers ``http.disconnect``.
    ``scope["state"]["timed_out"]`` (``request.state.timed_out``) is set before the 504 goes
    out, so the route can tell (e.g. to audit the request as answered 504).

    - A ``def`` route cannot be stopped anyway (Python threads cannot be killed). Its thread
      runs to the end and keeps its slot of the thread pool (anyio's limiter, sized by the
      service's ``route_threads`` setting) until then. Cancelling the task would be worse: asyncio's ``task.cancel()`` (which is
      what ``asyncio.wait_for`` and ``asyncio.timeout`` do at the deadline) ends the task at
      once and hands the slot back while the thread still runs (measured), so under sustained
      overload threads would pile up without bound. Left alone, at most ``route_threads`` run;
      later requests wait for a slot and are answered 504 in turn, which sheds the load.
    - An ``async def`` route runs on as well. One still waiting for the request body gets
      ``http.disconnect`` from the server once the 504 has been sent (uvicorn does this) and
      ends there. A CPU-bound one blocks the event loop, and nothing on it (this timer
      included) runs until it yields: keep such work in ``def`` routes.

    :attr:`abandoned` counts the requests answered 504 whose app is still running; each is
    kept referenced until it ends. The deadline covers the time to the start of the response;
    a response that has started streaming is let finish (the API's responses are single JSON
    bodies).
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.app = app
        self.timeout_s = timeout_s
        # asyncio keeps only weak references to tasks: a task answered 504 is held here until
        # it ends, or it could be garbage-collected mid-flight.
        self._abandoned: set[asyncio.Future[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        timed_out = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if timed_out:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        async def guarded_receive() -> Message:
            if timed_out:
                return {"type": "http.disconnect"}
            return await receive()

        task = asyncio.ensure_future(self.app(scope, guarded_receive, guarded_send))
        try:
            await asyncio.wait({task}, timeout=self.timeout_s)
        except asyncio.CancelledError:
            task.cancel()  # cancelled from outside (server shutdown): the app goes with it
            raise
        if task.done() or started:
            await task
            return

        timed_out = True
        scope.setdefault("state", {})[TIMED_OUT_STATE] = True
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        await self._answer_504(scope, receive, send)

    async def _answer_504(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope.get("route")
        logger.warning(
            "request timed out",
            extra={
                "fields": {
                    "request_id": _request_id(scope),
                    "route": getattr(route, "path", None) or "unmatched",
                    "timeout_s": self.timeout_s,
                }
            },
        )
        # Connection: close, because the body may be only partly read: uvicorn would otherwise
        # keep reading (and discarding) the rest into a kept-alive connection.
        response = ProblemResponse(
            error_body(timeout_detail(self.timeout_s), _request_id(scope), status=504),
            status_code=504,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)

    def _forget(self, task: asyncio.Future[None]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.info(
                "abandoned request ended with an error",
                extra={"fields": {"error": type(exc).__name__}},
            )

    @property
    def abandoned(self) -> int:
        """Requests answered 504 whose app (a ``def`` route's thread, mostly) is still running."""
        return len(self._abandoned)


# -- rate -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketSpec:
    """A token bucket: ``burst`` requests at once, refilled at ``rate_per_s`` per second."""

    rate_per_s: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate_per_s > 0 or not math.isfinite(self.rate_per_s):
            raise ValueError("rate_per_s must be a positive finite number")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")

    @property
    def refill_s(self) -> float:
        """Seconds an empty bucket takes to fill; an idle bucket older than this is full."""
        return self.burst / self.rate_per_s


_TOKEN_EPSILON = 1e-9


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets per key (for example per clinic and per token id), thread-safe.

    Parameters
    ----------
    specs
        Bucket parameters by kind, e.g. ``{"clinic": BucketSpec(100, 200), "token": ...}``.
        A request names one key per kind it is limited by.
    max_buckets
        Memory bound. A bucket left idle until it refilled is indistinguishable from a new one
        and is dropped; if more than ``max_buckets`` are in use, the least recently used go
        first (the only case where a limit is forgotten early, in the caller's favour).
    clock
        Monotonic seconds (tests pass a fake clock).
    """

    def __init__(
        self,
        specs: Mapping[str, BucketSpec],
        *,
        max_buckets: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be >= 1")
        self.specs = dict(specs)
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        # Re-entrant: SharedRateLimiter.check holds it around this class's check.
        self._lock = threading.RLock()

    @classmethod
    def from_settings(
        cls, settings: LimitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiter:
        """Kinds ``"clinic"`` and ``"token"``; a rate of 0 leaves that kind unlimited. With
        ``settings.shared_dir``, a :class:`~service.shared_limits.SharedRateLimiter` there."""
        specs = {}
        if settings.rate_per_clinic_per_s > 0:
            specs["clinic"] = BucketSpec(settings.rate_per_clinic_per_s, settings.burst_per_clinic)
        if settings.rate_per_token_per_s > 0:
            specs["token"] = BucketSpec(settings.rate_per_token_per_s, settings.burst_per_token)
        if settings.shared_dir is not None and specs:
            from service.shared_limits import SharedRateLimiter

            return SharedRateLimiter(
                specs, settings.shared_dir, max_buckets=settings.max_rate_buckets, clock=clock
            )
        return cls(specs, max_buckets=settings.max_rate_buckets, clock=clock)

    def check(self, keys: Mapping[str, str], cost: float = 1.0) -> float | None:
        """Take ``cost`` tokens from the bucket of every ``kind: key``, or none of them.

        Returns None when the request may proceed, else the seconds until every bucket holds
        enough tokens (nothing is taken then, so a request refused by one bucket does not use
        up another). Kinds without a spec are not limited. A ``cost`` above a bucket's burst
        (a large batch, say) needs that bucket full and empties it.
        """
        if not cost > 0 or not math.isfinite(cost):
            raise ValueError("cost must be a positive finite number")
        with self._lock:
            now = self.clock()
            self._evict(now, room=len(keys))
            taken: list[tuple[_Bucket, float]] = []
            wait = 0.0
            for kind, key in keys.items():
                spec = self.specs.get(kind)
                if spec is None:
                    continue
                bucket = self._refilled((kind, key), spec, now)
                take = min(cost, float(spec.burst))
                taken.append((bucket, take))
                # The tolerance absorbs float rounding: waiting exactly the time returned
                # must be enough.
                if bucket.tokens < take - _TOKEN_EPSILON:
                    wait = max(wait, (take - bucket.tokens) / spec.rate_per_s)
            if wait > 0:
                return wait
            for bucket, take in taken:
                bucket.tokens = max(0.0, bucket.tokens - take)
            return None

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, ident: tuple[str, str], spec: BucketSpec, now: float) -> _Bucket:
        bucket = self._buckets.get(ident)
        if bucket is None:
            bucket = self._buckets[ident] = _Bucket(float(spec.burst), now)
        else:
            elapsed = max(0.0, now - bucket.stamp)
            bucket.tokens = min(float(spec.burst), bucket.tokens + elapsed * spec.rate_per_s)
            bucket.stamp = now
            self._buckets.move_to_end(ident)
        return bucket

    def _evict(self, now: float, room: int) -> None:
        # Least recently used first; stop at the first bucket still refilling unless the
        # new request's buckets would not fit.
        while self._buckets:
            ident, bucket = next(iter(self._buckets.items()))
            spec = self.specs.get(ident[0])
            full = spec is None or now - bucket.stamp >= spec.refill_s
            if not full and len(self._buckets) + room <= self.max_buckets:
                break
            del self._buckets[ident]


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` value: whole seconds, rounded up, at least 1 (RFC 9110 delay-seconds)."""
    if not math.isfinite(seconds):
        raise ValueError("seconds must be finite")
    return str(max(1, math.ceil(seconds)))


RATE_LIMITED_DETAIL = "rate limit exceeded; retry after the number of seconds in Retry-After"


def rate_limited(seconds: float) -> HTTPException:
    """The 429 to raise when :meth:`RateLimiter.check` returned ``seconds``.

    The app's ``HTTPException`` handler renders it as an ``error_body`` and keeps the header.
    """
    return HTTPException(
        status_code=429,
        detail=RATE_LIMITED_DETAIL,
        headers={"Retry-After": retry_after_header(seconds)},
    )


# -- wiring -----------------------------------------------------------------------------------


def install_limits(app: FastAPI, settings: LimitSettings) -> None:
    """Add body-size, timeout and (if origins are configured) CORS middleware to ``app``.

    Call before adding ``RequestContextMiddleware`` (see the module docstring for the order).
    CORS is an allowlist of exact origins: an origin not listed gets no
    ``Access-Control-Allow-Origin``; no credentials mode, since the API takes a bearer token.
    """
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.request_timeout_s > 0:
        app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=list(CORS_ALLOW_METHODS),
            allow_headers=list(CORS_ALLOW_HEADERS),
            expose_headers=list(CORS_EXPOSE_HEADERS),
            allow_credentials=False,
        )
