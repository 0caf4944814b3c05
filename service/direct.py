"""Direct dispatch of the single-client scoring route, past FastAPI's router and dependency
solver.

On ``POST /v1/risk`` FastAPI 0.165 spent ~60 us per request before the endpoint ran: it matches
each ``include_router`` group several times (``_IncludedRouter._match``), then solves the
dependencies and wraps the call in two exit stacks. In process, the whole ASGI call went from
0.405 to 0.34 ms median without them (about 15%); ``benchmarks/bench_service.py`` measures the
service end to end.

:class:`DirectRoutes` is the innermost middleware, so body-size limits, the timeout, CORS,
the audit trail and request ids apply unchanged. For a request whose method and path name a
route registered with it, it calls that route's own endpoint with the same dependencies,
answers exceptions with the app's own handlers, and sets ``scope["route"]`` as the router
would (the audit and metrics label by it). Everything else goes to FastAPI. Tests compare the
two paths answer for answer (``tests/service/test_direct.py``).

A route qualifies only when FastAPI would have nothing to do but call it: an ``async``
endpoint that takes the request and ``async`` dependencies that take only the request (no
sub-dependencies, no ``yield``, no parameters from the path, query, headers or body). This is
checked when the app is built (:func:`plan`), so a route changed later fails loudly instead of
being called wrongly. With dependency overrides in place (tests) every request goes through
FastAPI, which honours them.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request, Exception], Awaitable[Response]]


@dataclass(frozen=True)
class DirectCall:
    """How to call one route without FastAPI: its endpoint's keyword for the request, and each
    dependency's keyword and callable."""

    route: APIRoute
    request_param: str
    dependencies: tuple[tuple[str, Callable[[Request], Awaitable[Any]]], ...]


def _takes_only_the_request(d: Dependant) -> bool:
    return (
        d.request_param_name is not None
        and not d.path_params
        and not d.query_params
        and not d.header_params
        and not d.cookie_params
        and not d.body_params
        and d.websocket_param_name is None
        and d.http_connection_param_name is None
        and d.response_param_name is None
        and d.background_tasks_param_name is None
        and d.security_scopes_param_name is None
        and not d.own_oauth_scopes
    )


def plan(route: APIRoute) -> DirectCall:
    """The direct call of ``route``; ``ValueError`` saying why if FastAPI has more to do."""
    d = route.dependant
    where = f"{sorted(route.methods or ())} {route.path}"
    if not inspect.iscoroutinefunction(route.endpoint):
        raise ValueError(f"{where}: the endpoint must be 'async def'")
    if not _takes_only_the_request(d):
        raise ValueError(f"{where}: the endpoint must take only the request and dependencies")
    deps = []
    for sub in d.dependencies:
        if sub.name is None or sub.call is None:
            raise ValueError(f"{where}: every dependency must be a named parameter")
        if sub.dependencies or not _takes_only_the_request(sub):
            raise ValueError(f"{where}: dependency {sub.name!r} must take only the request")
        if not inspect.iscoroutinefunction(sub.call):
            # Generators (dependencies with yield) and sync callables need FastAPI's machinery.
            raise ValueError(f"{where}: dependency {sub.name!r} must be 'async def'")
        deps.append((sub.name, sub.call))
    assert d.request_param_name is not None  # checked by _takes_only_the_request
    return DirectCall(route, d.request_param_name, tuple(deps))


def by_request_line(calls: Iterable[DirectCall]) -> dict[tuple[str, str], DirectCall]:
    """``calls`` by the ``(method, path)`` of the requests they serve."""
    return {(m, call.route.path): call for call in calls for m in call.route.methods or ()}


def _exception_handlers(app: Any) -> dict[Any, Handler]:
    # Starlette gives handlers for 500 and Exception to its outermost error middleware, not to
    # the one around the routes; unexpected errors propagate here as they would there.
    return {k: v for k, v in app.exception_handlers.items() if k not in (500, Exception)}


def _handler_for(handlers: dict[Any, Handler], exc: Exception) -> Handler | None:
    """Starlette's lookup: by status code for an HTTPException, then by class, nearest first."""
    if isinstance(exc, StarletteHTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class DirectRoutes:
    """ASGI middleware: serves the routes in ``calls`` itself (see the module docstring)."""

    def __init__(self, app: ASGIApp, calls: Iterable[DirectCall]) -> None:
        self.app = app
        self.calls = by_request_line(calls)
        self._handlers: dict[Any, Handler] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = (
            self.calls.get((scope["method"], scope["path"]))
            if scope["type"] == "http" and not scope.get("root_path")
            else None
        )
        if call is None or scope["app"].dependency_overrides:
            await self.app(scope, receive, send)
            return
        scope["route"] = call.route
        scope["endpoint"] = call.route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            kwargs: dict[str, Any] = {call.request_param: request}
            for name, dependency in call.dependencies:
                kwargs[name] = await dependency(request)
            response = await call.route.endpoint(**kwargs)
        except Exception as exc:
            if self._handlers is None:
                self._handlers = _exception_handlers(scope["app"])
            handler = _handler_for(self._handlers, exc)
            if handler is None:
                raise
            response = (
                await handler(request, exc)
                if inspect.iscoroutinefunction(handler)
                else await run_in_threadpool(handler, request, exc)
            )
        if not isinstance(response, Response):
            raise TypeError(f"{call.route.path}: a direct route must return a Response")
        await response(scope, receive, send)
