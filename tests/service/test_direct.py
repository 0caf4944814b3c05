"""Direct dispatch (``service.direct``): the same answers as FastAPI, without its router."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.app import create_app
from service.audit import records
from service.direct import DirectRoutes, plan
from service.settings import ServiceSettings
from tests.service.conftest import MODEL_NAME, Registry, bearer, security_settings
from tests.service.helpers import request_for

# -- on a small app of its own ----------------------------------------------------------------


async def _who(request: Request) -> str:
    name = request.headers.get("x-name")
    if name is None:
        raise HTTPException(401, "no name")
    if name == "boom":
        raise RuntimeError("unexpected")
    return name


def _small_app(direct: bool) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"handled": exc.detail}, status_code=exc.status_code,
                            headers={"x-handler": "app"})  # fmt: skip

    @app.post("/hello")
    async def hello(request: Request, who: Annotated[str, Depends(_who)]) -> Response:
        served_by_fastapi = "fastapi_inner_astack" in request.scope
        if who == "teapot":
            raise HTTPException(418, "short and stout")
        body = await request.body()
        route = request.scope["route"].path
        return JSONResponse({"who": who, "body": body.decode(), "route": route,
                             "fastapi": served_by_fastapi})  # fmt: skip

    @app.post("/other")
    async def other(request: Request) -> Response:
        return JSONResponse({"fastapi": "fastapi_inner_astack" in request.scope})

    if direct:
        (route,) = [r for r in app.routes if isinstance(r, APIRoute) and r.path == "/hello"]
        app.add_middleware(DirectRoutes, calls=[plan(route)])
    return app


def _answers(client: TestClient) -> list[tuple[int, Any, str | None]]:
    out = []
    for headers in ({"x-name": "ada"}, {}, {"x-name": "teapot"}):
        r = client.post("/hello", content=b"payload", headers=headers)
        out.append((r.status_code, r.json(), r.headers.get("x-handler")))
    r = client.get("/hello")  # a method the route does not serve: FastAPI's 405
    out.append((r.status_code, r.json(), None))
    return out


def test_the_direct_path_answers_as_fastapi_does_without_its_router() -> None:
    with TestClient(_small_app(False)) as framework, TestClient(_small_app(True)) as direct:
        expected = _answers(framework)
        got = _answers(direct)
        # Only the marker of who served the request differs.
        assert expected[0][1].pop("fastapi") is True
        assert got[0][1].pop("fastapi") is False
        assert got == expected
        assert expected[0] == (200, {"who": "ada", "body": "payload", "route": "/hello"}, None)
        assert expected[1] == (401, {"handled": "no name"}, "app")  # from the dependency
        assert expected[2] == (418, {"handled": "short and stout"}, "app")  # from the endpoint
        assert expected[3][0] == 405
        # Routes not registered with it still go through FastAPI.
        assert direct.post("/other").json() == {"fastapi": True}


def test_unexpected_errors_propagate_as_they_do_through_fastapi() -> None:
    for direct in (False, True):
        with TestClient(_small_app(direct)) as client, pytest.raises(RuntimeError):
            client.post("/hello", headers={"x-name": "boom"})


def test_dependency_overrides_send_every_request_through_fastapi() -> None:
    app = _small_app(True)

    async def fixed(request: Request) -> str:
        return "override"

    app.dependency_overrides[_who] = fixed
    with TestClient(app) as client:
        body = client.post("/hello").json()
    assert (body["who"], body["fastapi"]) == ("override", True)


def _route(app: FastAPI, path: str) -> APIRoute:
    (route,) = [r for r in app.routes if isinstance(r, APIRoute) and r.path == path]
    return route


# Module level: the annotations are strings, which FastAPI resolves in the module's globals.
def sync_dep(request: Request) -> str:
    return "x"


async def gen_dep(request: Request):  # a dependency with yield
    yield "x"


async def nested(who: Annotated[str, Depends(_who)]) -> str:
    return who


def test_routes_that_need_fastapi_are_refused_when_planned() -> None:
    app = FastAPI()

    @app.post("/sync")
    def sync_endpoint(request: Request) -> Response:
        return Response()

    @app.post("/query")
    async def with_query(request: Request, q: int) -> Response:
        return Response()

    @app.post("/sync-dep")
    async def with_sync_dep(request: Request, d: Annotated[str, Depends(sync_dep)]) -> Response:
        return Response()

    @app.post("/gen-dep")
    async def with_gen_dep(request: Request, d: Annotated[str, Depends(gen_dep)]) -> Response:
        return Response()

    @app.post("/nested")
    async def with_nested(request: Request, d: Annotated[str, Depends(nested)]) -> Response:
        return Response()

    @app.post("/fine")
    async def fine(request: Request, d: Annotated[str, Depends(_who)]) -> Response:
        return Response()

    reasons = {
        "/sync": "endpoint must be 'async def'",
        "/query": "must take only the request and dependencies",
        "/sync-dep": "dependency 'd' must be 'async def'",
        "/gen-dep": "dependency 'd' must be 'async def'",
        "/nested": "dependency 'd' must take only the request",
    }
    for path, reason in reasons.items():
        with pytest.raises(ValueError, match=reason):
            plan(_route(app, path))
    call = plan(_route(app, "/fine"))
    assert call.request_param == "request" and [n for n, _ in call.dependencies] == ["d"]


# -- on the service ---------------------------------------------------------------------------


@pytest.fixture
def two_apps(registry: Registry, dev_key_dir: Path) -> Iterator[tuple[TestClient, TestClient]]:
    """The service twice on one registry: direct dispatch on and off, separate audit files."""
    clients = []
    for direct in (True, False):
        settings = ServiceSettings(
            model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri,
            poll_interval_s=0, direct_dispatch=direct,
        )  # fmt: skip
        security = security_settings(dev_key_dir, registry.root / f"audit-{direct}")
        app = create_app(settings, configure_logs=False, **security)
        clients.append(TestClient(app, headers=bearer(dev_key_dir)))
    with clients[0] as on, clients[1] as off:
        yield on, off


def _uses_direct(client: TestClient) -> bool:
    return any(m.cls is DirectRoutes for m in client.app.user_middleware)  # type: ignore[attr-defined]


def test_the_service_answers_the_same_either_way(
    two_apps: tuple[TestClient, TestClient], registry: Registry, dev_key_dir: Path
) -> None:
    on, off = two_apps
    assert _uses_direct(on) and not _uses_direct(off)
    ids = sorted(registry.cohort.clients["client_id"].astype(str))[:3]
    good = request_for(registry.cohort, ids[1])
    bad = json.loads(json.dumps(good))
    bad["sessions"][0]["attendance"] = "zzz"
    out_of_range = json.loads(json.dumps(good))
    attended = next(s for s in out_of_range["sessions"] if s.get("ratings"))
    attended["ratings"][next(iter(attended["ratings"]))] = 99
    cases = [
        ({}, json.dumps(request_for(registry.cohort, ids[0])).encode()),
        ({}, json.dumps(good).encode()),
        ({}, json.dumps(bad).encode()),  # schema: 422 from pydantic
        ({}, json.dumps(out_of_range).encode()),  # contract: 422 from the checks
        ({}, b"{not json"),
        ({"Authorization": ""}, json.dumps(good).encode()),  # 401
        (bearer(dev_key_dir, scopes=("model:read",)), json.dumps(good).encode()),  # 403
        (bearer(dev_key_dir, clinic="clinic-other"), json.dumps(good).encode()),  # 404
    ]
    statuses = []
    for i, (headers, body) in enumerate(cases):
        headers = {**headers, "X-Request-ID": f"parity-{i:04d}-abcd",
                   "Content-Type": "application/json"}  # fmt: skip
        a, b = (c.post("/v1/risk", content=body, headers=headers) for c in (on, off))
        assert a.status_code == b.status_code, (i, a.text, b.text)
        ja, jb = a.json(), b.json()
        ja.pop("scored_at", None), jb.pop("scored_at", None)
        assert ja == jb, i
        skip = {"date", "content-length"}  # scored_at's digits may differ in number
        assert {k: v for k, v in a.headers.items() if k not in skip} == {
            k: v for k, v in b.headers.items() if k not in skip
        }, i
        statuses.append(a.status_code)
    assert statuses == [200, 200, 422, 422, 422, 401, 403, 404]

    # The same audit trail, route labels and predictions counted.
    def trail(direct: bool) -> list[tuple[Any, ...]]:
        path = registry.root / f"audit-{direct}" / "audit.jsonl"
        # Each app has its own audit key, so the pseudonyms differ; whether there is one must not.
        return [(r.action, r.outcome, r.status, r.request_id, r.client_ref is None)
                for r in records(path)]  # fmt: skip

    assert trail(True) == trail(False) and len(trail(True)) == len(cases)
    for client in (on, off):
        metrics = client.get("/metrics").text
        assert 'route="/v1/risk",status="200"' in metrics
        assert 'route="unmatched"' not in metrics


def test_direct_dispatch_is_off_with_opentelemetry(registry: Registry, dev_key_dir: Path) -> None:
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri,
        poll_interval_s=0, opentelemetry=True,
    )  # fmt: skip
    security = security_settings(dev_key_dir, registry.root / "audit-otel")
    app = create_app(settings, configure_logs=False, **security)
    assert not _uses_direct(TestClient(app))
