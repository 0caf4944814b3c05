"""Request limits: 413 for large bodies, 429 with Retry-After, 504 on time, allowlist-only CORS.

Each HTTP test builds a tiny FastAPI app with the service's error handlers and request-id
middleware, wired as ``service.app`` will be, and drives it through ``TestClient``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from service.errors import install_error_handlers
from service.limits import (
    RATE_LIMITED_DETAIL,
    BodySizeLimitMiddleware,
    BucketSpec,
    LimitSettings,
    RateLimiter,
    TimeoutMiddleware,
    body_too_large_detail,
    install_limits,
    rate_limited,
    retry_after_header,
)
from service.metrics import ServiceMetrics
from service.middleware import RequestContextMiddleware

SECRET = "c-SECRET-123"  # a client id: must never come back in an error body


class Item(BaseModel):
    client_id: str
    note: str = ""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(limits: LimitSettings, calls: list[str] | None = None, **routes: Any) -> FastAPI:
    """The service's wiring: handlers, limits, then the request-id middleware outermost."""
    app = FastAPI()
    install_error_handlers(app)
    seen = calls if calls is not None else []

    @app.post("/items")
    def create(item: Item) -> dict:
        seen.append("items")
        return {"ok": True}

    @app.get("/ping")
    def ping() -> dict:
        seen.append("ping")
        return {"ok": True}

    for path, endpoint in routes.items():
        app.add_api_route(f"/{path}", endpoint, methods=["GET", "POST"])
    install_limits(app, limits)
    app.add_middleware(RequestContextMiddleware, metrics=ServiceMetrics())
    return app


def _clean_error(response, status: int, detail: str) -> None:
    """Status, the error_body shape, the request id echoed, nothing the caller sent."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json() == {
        "type": "about:blank",
        "title": response.reason_phrase,
        "status": status,
        "detail": detail,
        "request_id": response.headers["x-request-id"],
        "errors": [],
        "more_errors": 0,
    }
    assert SECRET not in response.text and "Traceback" not in response.text


def _body(size: int) -> bytes:
    prefix = b'{"client_id": "' + SECRET.encode() + b'", "note": "'
    return prefix + b"x" * (size - len(prefix) - 2) + b'"}'


# -- body size --------------------------------------------------------------------------------


@pytest.fixture
def small_body_client() -> Iterator[tuple[TestClient, list[str]]]:
    calls: list[str] = []
    with TestClient(_app(LimitSettings(max_body_bytes=1024), calls)) as client:
        yield client, calls


def test_body_at_the_limit_passes(small_body_client):
    client, calls = small_body_client
    body = _body(1024)
    assert len(body) == 1024
    response = client.post("/items", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and calls == ["items"]


def test_declared_oversize_body_gets_413_before_the_app_runs(small_body_client):
    client, calls = small_body_client
    response = client.post(
        "/items", content=_body(1025), headers={"content-type": "application/json"}
    )
    _clean_error(response, 413, body_too_large_detail(1024))
    assert response.headers["connection"] == "close"
    assert calls == []
    # Routes that never read a body are covered too, and so are unknown paths.
    _clean_error(
        client.request("GET", "/ping", content=_body(2000)), 413, body_too_large_detail(1024)
    )
    _clean_error(client.post("/nowhere", content=_body(2000)), 413, body_too_large_detail(1024))
    assert calls == []


def test_chunked_oversize_body_gets_413_while_streaming(small_body_client):
    # No Content-Length: the limit is found by counting. (TestClient joins the chunks into one
    # ASGI message; the raw ASGI test below checks that reading stops at the chunk over it.)
    client, calls = small_body_client
    body = _body(3000)
    chunks = (body[start : start + 300] for start in range(0, len(body), 300))
    response = client.post("/items", content=chunks, headers={"content-type": "application/json"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    _clean_error(response, 413, body_too_large_detail(1024))
    assert response.headers["connection"] == "close"
    assert calls == []


def test_chunked_body_under_the_limit_passes(small_body_client):
    client, calls = small_body_client
    body = _body(900)
    response = client.post(
        "/items",
        content=(body[i : i + 100] for i in range(0, len(body), 100)),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 200 and calls == ["items"]


def test_middleware_answers_413_itself_when_the_app_lets_the_error_escape():
    # A raw ASGI app that reads the body without FastAPI's exception handling.
    async def raw_app(scope, receive, send) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read"})

    messages = [{"type": "http.request", "body": b"x" * 60, "more_body": True}] * 5
    received: list[dict] = []
    sent: list[dict] = []

    async def receive() -> dict:
        received.append(messages[len(received)])
        return received[-1]

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/",
        "headers": [],
        "state": {"request_id": "r-1"},
    }
    asyncio.run(BodySizeLimitMiddleware(raw_app, max_body_bytes=100)(scope, receive, send))
    assert len(received) == 2
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert b'"request_id":"r-1"' in sent[1]["body"]


def test_default_body_limit_admits_a_full_batch():
    # Measured: 1,000 clients x 12 sessions is 1.9-2.9 MB as JSON depending on float precision
    # and separators (the field description has the numbers).
    assert LimitSettings().max_body_bytes == 4 * 1024 * 1024


# -- rate -------------------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_refills_at_the_rate():
    clock = FakeClock()
    limiter = RateLimiter({"clinic": BucketSpec(rate_per_s=2.0, burst=3)}, clock=clock)
    keys = {"clinic": "a"}
    assert [limiter.check(keys) for _ in range(3)] == [None, None, None]
    assert limiter.check(keys) == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.check(keys) == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.check(keys) is None
    assert limiter.check({"clinic": "b"}) is None  # other clinics are not affected
    clock.now += 100
    assert [limiter.check(keys) for _ in range(4)][-1] == pytest.approx(0.5)  # capped at burst


def test_a_request_refused_by_one_bucket_takes_nothing_from_the_others():
    clock = FakeClock()
    limiter = RateLimiter({"clinic": BucketSpec(1.0, 2), "token": BucketSpec(10.0, 5)}, clock=clock)
    assert limiter.check({"clinic": "a", "token": "t1"}) is None
    assert limiter.check({"clinic": "a", "token": "t2"}) is None
    # Clinic a is empty: t1 is refused for a second, and keeps its tokens.
    assert limiter.check({"clinic": "a", "token": "t1"}) == pytest.approx(1.0)
    for clinic in ("b", "b", "c", "c"):
        assert limiter.check({"clinic": clinic, "token": "t1"}) is None
    assert limiter.check({"clinic": "d", "token": "t1"}) == pytest.approx(0.1)
    assert limiter.check({"tenant": "x"}) is None  # kinds without a spec are unlimited


def test_cost_above_the_burst_needs_a_full_bucket():
    clock = FakeClock()
    limiter = RateLimiter({"clinic": BucketSpec(10.0, 20)}, clock=clock)
    assert limiter.check({"clinic": "a"}, cost=1000) is None
    assert limiter.check({"clinic": "a"}, cost=1000) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="cost"):
        limiter.check({"clinic": "a"}, cost=0)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate, burst, gaps):
    clock = FakeClock()
    limiter = RateLimiter({"token": BucketSpec(rate, burst)}, clock=clock)
    start, allowed = clock.now, 0
    for gap in gaps:
        clock.now += gap
        wait = limiter.check({"token": "t"})
        if wait is None:
            allowed += 1
        else:
            assert wait > 0
    assert allowed <= burst + rate * (clock.now - start) + 1e-9
    # Waiting as told is always enough.
    wait = limiter.check({"token": "t"})
    if wait is not None:
        clock.now += wait
        assert limiter.check({"token": "t"}) is None


def test_memory_is_bounded_and_idle_buckets_are_dropped():
    clock = FakeClock()
    limiter = RateLimiter({"token": BucketSpec(1.0, 5)}, max_buckets=100, clock=clock)
    for i in range(1000):
        limiter.check({"token": f"t{i}"})
        assert len(limiter) <= 100
    limiter.check({"token": "busy"})
    clock.now += 5.0  # every bucket has refilled: all are forgettable
    limiter.check({"token": "new"})
    assert len(limiter) == 1
    # A dropped bucket was full, so forgetting it changes nothing for its key.
    assert [limiter.check({"token": "busy"}) for _ in range(5)] == [None] * 5


def test_limiter_is_thread_safe():
    limiter = RateLimiter({"clinic": BucketSpec(1e-6, 500)})  # no refill during the test
    results: list[float | None] = []
    barrier = threading.Barrier(8)

    def hammer() -> None:
        barrier.wait()
        mine = [limiter.check({"clinic": "a"}) for _ in range(200)]
        results.extend(mine)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r is None for r in results) == 500


# -- rate across workers -----------------------------------------------------------------------


def _shared(folder, specs, clock, **kwargs):
    from service.shared_limits import SharedRateLimiter

    return SharedRateLimiter(specs, folder, clock=clock, **kwargs)


@settings(max_examples=25, deadline=None)
@given(
    rate=st.floats(0.5, 50),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 2)), min_size=1, max_size=80),
)
def test_limiters_sharing_a_folder_hold_one_budget(tmp_path_factory, rate, burst, steps):
    """Three limiters on one folder (three workers) grant what one would, request by request."""
    clock = FakeClock()
    folder = tmp_path_factory.mktemp("shared")
    spec = {"token": BucketSpec(rate, burst)}
    workers = [_shared(folder, spec, clock) for _ in range(3)]
    alone = RateLimiter(spec, clock=clock)
    try:
        for gap, worker in steps:
            clock.now += gap
            got = workers[worker].check({"token": "t"})
            expected = alone.check({"token": "t"})
            assert (got is None) == (expected is None)
            if got is not None:
                assert got == pytest.approx(expected)
    finally:
        for worker in workers:
            worker.close()


def test_shared_limiter_forgets_refilled_buckets_and_stays_bounded(tmp_path):
    from service.shared_limits import SWEEP_EVERY

    clock = FakeClock()
    limiter = _shared(tmp_path, {"token": BucketSpec(1.0, 5)}, clock, max_buckets=100)
    for i in range(SWEEP_EVERY):
        limiter.check({"token": f"t{i}"})
    assert len(limiter) == 100  # swept down to the bound, the most recent kept
    assert limiter.check({"token": f"t{SWEEP_EVERY - 1}"}) is None
    clock.now += 5.0  # every bucket has refilled
    for _ in range(SWEEP_EVERY):
        limiter.check({"token": "busy"})
    assert len(limiter) == 1
    limiter.close()


def test_limiter_from_settings_is_shared_when_a_folder_is_set(tmp_path):
    from service.shared_limits import SharedRateLimiter

    limiter = RateLimiter.from_settings(LimitSettings(rate_per_token_per_s=2, shared_dir=tmp_path))
    assert isinstance(limiter, SharedRateLimiter)
    assert limiter.path.parent == tmp_path
    limiter.close()


def test_rate_limit_holds_across_two_real_workers(registry, tmp_path, dev_key_dir):
    """``serve --workers 2``: a clinic's burst of 10 is 10 overall, not 10 per worker."""
    import httpx

    from tests.service.conftest import bearer
    from tests.service.helpers import request_for
    from tests.service.serving import serving

    env = {
        "ALLIANCE_RISK_LIMIT_RATE_PER_CLINIC_PER_S": "0.001",
        "ALLIANCE_RISK_LIMIT_BURST_PER_CLINIC": "10",
    }
    body = request_for(registry.cohort, str(registry.cohort.clients["client_id"].iloc[0]))
    with serving(registry, tmp_path / "serve", dev_key_dir, workers=2, env=env) as url:
        statuses = [
            # A new connection each time, so both workers take requests.
            httpx.post(
                f"{url}/v1/risk", json=body, headers=bearer(dev_key_dir), timeout=10
            ).status_code
            for _ in range(40)
        ]
    assert statuses.count(200) == 10, statuses
    assert statuses.count(429) == 30


def test_limiter_from_settings_and_zero_rate_turns_a_kind_off():
    limiter = RateLimiter.from_settings(
        LimitSettings(rate_per_clinic_per_s=0, rate_per_token_per_s=2, burst_per_token=7)
    )
    assert set(limiter.specs) == {"token"}
    assert limiter.specs["token"] == BucketSpec(2.0, 7)
    with pytest.raises(ValueError, match="rate_per_s"):
        BucketSpec(0, 1)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.01, "1"), (1.0, "1"), (1.2, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds, header):
    assert retry_after_header(seconds) == header


def test_429_with_retry_after_from_the_limiter():
    clock = FakeClock()
    limiter = RateLimiter(
        {"clinic": BucketSpec(0.4, 2), "token": BucketSpec(100.0, 100)}, clock=clock
    )

    def limit(request: Request) -> None:
        # In the service the keys come from the verified token; here from a header.
        wait = limiter.check({"clinic": request.headers["x-clinic"], "token": "tok-1"})
        if wait is not None:
            raise rate_limited(wait)

    def score(_: None = Depends(limit)) -> dict:
        return {"ok": True}

    with TestClient(_app(LimitSettings(), score=score)) as client:
        assert client.get("/score", headers={"x-clinic": "a"}).status_code == 200
        assert client.get("/score", headers={"x-clinic": "a"}).status_code == 200
        response = client.get("/score", headers={"x-clinic": "a"})
        _clean_error(response, 429, RATE_LIMITED_DETAIL)
        assert response.headers["retry-after"] == "3"  # 1 token at 0.4/s = 2.5 s, rounded up
        assert client.get("/score", headers={"x-clinic": "b"}).status_code == 200
        clock.now += 2.5
        assert client.get("/score", headers={"x-clinic": "a"}).status_code == 200


# -- timeout ----------------------------------------------------------------------------------


def test_slow_def_route_gets_504_on_time_while_its_thread_finishes_later():
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    states: list[bool] = []

    def slow(request: Request) -> dict:
        started.set()
        release.wait(10)
        states.append(getattr(request.state, "timed_out", False))
        finished.set()
        return {"late": SECRET}

    app = _app(LimitSettings(request_timeout_s=0.3), slow=slow)
    with TestClient(app) as client:
        t0 = time.perf_counter()
        response = client.get("/slow")
        elapsed = time.perf_counter() - t0
        _clean_error(
            response,
            504,
            "the request did not complete within 0.3 s; quote the request_id to the operator",
        )
        assert 0.3 <= elapsed < 2.0
        # The worker thread is still running: Python cannot stop it.
        assert started.is_set() and not finished.is_set()
        timeout_mw = _middleware(app, TimeoutMiddleware)
        assert timeout_mw.abandoned == 1
        release.set()
        assert finished.wait(5)
        assert states == [True]  # the thread could tell its answer was discarded
        _wait_until(lambda: timeout_mw.abandoned == 0)
        # The server carries on normally.
        assert client.get("/ping").json() == {"ok": True}


def test_slow_async_route_gets_504_and_its_late_response_is_dropped():
    finished = threading.Event()

    async def sleepy() -> dict:
        await asyncio.sleep(1.0)
        finished.set()
        return {"late": SECRET}

    app = _app(LimitSettings(request_timeout_s=0.2), sleepy=sleepy)
    with TestClient(app) as client:
        t0 = time.perf_counter()
        response = client.get("/sleepy")
        assert time.perf_counter() - t0 < 0.9
        assert response.status_code == 504 and SECRET not in response.text
        assert finished.wait(5)
        _wait_until(lambda: _middleware(app, TimeoutMiddleware).abandoned == 0)
        assert client.get("/ping").status_code == 200


async def _drive(app: Any, receive: Any) -> tuple[list[dict], dict]:
    """One POST /x through ``app``; the messages it sent and the scope's state."""
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "state": {}}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent, scope["state"]


def test_route_waiting_for_its_body_gets_504_then_the_server_s_disconnect():
    ended: list[dict] = []

    async def reads_body(scope, receive, send):
        ended.append(await receive())

    async def main() -> None:
        complete = asyncio.Event()

        # As uvicorn does: a pending receive is answered http.disconnect once the response
        # is complete.
        async def server_receive() -> dict:
            await complete.wait()
            return {"type": "http.disconnect"}

        timeout = TimeoutMiddleware(reads_body, timeout_s=0.05)
        sent, state = await _drive(timeout, server_receive)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        assert sent[0]["status"] == 504 and state["timed_out"] is True
        assert timeout.abandoned == 1 and ended == []  # still waiting, still referenced
        complete.set()
        for _ in range(100):
            if timeout.abandoned == 0:
                break
            await asyncio.sleep(0.01)
        assert timeout.abandoned == 0 and ended == [{"type": "http.disconnect"}]

    asyncio.run(main())


def test_a_response_that_has_started_is_let_finish():
    async def slow_body(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.15)  # past the deadline, but the response has started
        await send({"type": "http.response.body", "body": b"done"})

    async def no_body() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    timeout = TimeoutMiddleware(slow_body, timeout_s=0.05)
    sent, state = asyncio.run(_drive(timeout, no_body))
    assert [m.get("status", m.get("body")) for m in sent] == [200, b"done"]
    assert "timed_out" not in state


def test_a_request_cancelled_from_outside_is_not_answered_and_its_app_is_cancelled():
    cancelled = asyncio.Event()

    async def waits(scope, receive, send):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> None:
        timeout = TimeoutMiddleware(waits, timeout_s=5)
        sent: list[dict] = []

        async def send(message: dict) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/x", "headers": [], "state": {}}
        task = asyncio.ensure_future(timeout(scope, None, send))
        await asyncio.sleep(0.05)
        task.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(cancelled.wait(), 1)
        assert sent == [] and timeout.abandoned == 0

    asyncio.run(main())


def _wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_fast_routes_and_errors_are_untouched_by_the_timeout():
    def boom() -> dict:
        raise RuntimeError(SECRET)

    app = _app(LimitSettings(request_timeout_s=5), boom=boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/ping").json() == {"ok": True}
        response = client.get("/boom")
        assert response.status_code == 500
        assert response.json()["detail"] == "internal error; quote the request_id to the operator"
        assert SECRET not in response.text


def test_timeout_zero_turns_the_middleware_off():
    app = _app(LimitSettings(request_timeout_s=0))
    assert _middleware(app, TimeoutMiddleware) is None
    with pytest.raises(ValueError, match="timeout_s"):
        TimeoutMiddleware(app, timeout_s=0)


def _middleware(app: FastAPI, cls: type) -> Any:
    """The instance of ``cls`` in the app's middleware stack (None when absent)."""
    node = app.middleware_stack or app.build_middleware_stack()
    while node is not None and not isinstance(node, cls):
        node = getattr(node, "app", None)
    return node


# -- CORS -------------------------------------------------------------------------------------


ALLOWED = "https://ehr.clinic-a.example"


def test_cors_allows_only_listed_origins():
    app = _app(LimitSettings(cors_origins=[ALLOWED, "http://localhost:3000"]))
    with TestClient(app) as client:
        ok = client.get("/ping", headers={"origin": ALLOWED})
        assert ok.headers["access-control-allow-origin"] == ALLOWED
        assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
        assert "access-control-allow-credentials" not in ok.headers
        other = client.get("/ping", headers={"origin": "https://evil.example"})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers

        preflight = {
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type",
        }
        good = client.options("/items", headers={"origin": ALLOWED, **preflight})
        assert good.status_code == 200
        assert good.headers["access-control-allow-origin"] == ALLOWED
        bad = client.options("/items", headers={"origin": "https://evil.example", **preflight})
        assert bad.status_code == 400
        assert "access-control-allow-origin" not in bad.headers


def test_error_responses_carry_cors_headers_for_allowed_origins():
    app = _app(LimitSettings(cors_origins=[ALLOWED], max_body_bytes=1024))
    with TestClient(app) as client:
        response = client.post("/items", content=_body(5000), headers={"origin": ALLOWED})
        assert response.status_code == 413
        assert response.headers["access-control-allow-origin"] == ALLOWED


def test_no_origins_means_no_cors_at_all():
    with TestClient(_app(LimitSettings())) as client:
        response = client.get("/ping", headers={"origin": ALLOWED})
        assert "access-control-allow-origin" not in response.headers
        preflight = client.options(
            "/items", headers={"origin": ALLOWED, "access-control-request-method": "POST"}
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_from_the_environment(monkeypatch):
    monkeypatch.setenv(
        "ALLIANCE_RISK_LIMIT_CORS_ORIGINS", "https://A.example, http://b.example:8080/"
    )
    assert LimitSettings().cors_origins == ["https://a.example", "http://b.example:8080"]
    monkeypatch.setenv("ALLIANCE_RISK_LIMIT_CORS_ORIGINS", '["https://c.example"]')
    assert LimitSettings().cors_origins == ["https://c.example"]
    monkeypatch.setenv(
        "ALLIANCE_RISK_LIMIT_CORS_ORIGINS", "https://d.example:443,http://[::1]:8080"
    )
    assert LimitSettings().cors_origins == ["https://d.example", "http://[::1]:8080"]
    monkeypatch.delenv("ALLIANCE_RISK_LIMIT_CORS_ORIGINS")
    assert LimitSettings().cors_origins == []


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("*", "'\\*' is not allowed"),
        ("https://*.example", "'\\*' is not allowed"),
        ("ehr.example", "scheme://host"),
        ("https://ehr.example/app", "scheme://host"),
        ("ftp://ehr.example", "scheme://host"),
        ("https://user:pw@ehr.example", "scheme://host"),
    ],
)
def test_cors_origins_must_be_exact(origin, message):
    with pytest.raises(ValidationError, match=message):
        LimitSettings(cors_origins=[origin])


def test_limit_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALLIANCE_RISK_LIMIT_MAX_BODY_BYTES", "65536")
    monkeypatch.setenv("ALLIANCE_RISK_LIMIT_RATE_PER_CLINIC_PER_S", "5")
    monkeypatch.setenv("ALLIANCE_RISK_LIMIT_REQUEST_TIMEOUT_S", "2.5")
    limits = LimitSettings()
    assert (limits.max_body_bytes, limits.rate_per_clinic_per_s, limits.request_timeout_s) == (
        65536, 5.0, 2.5,
    )  # fmt: skip
    monkeypatch.setenv("ALLIANCE_RISK_LIMIT_MAX_BODY_BYTES", "10")
    with pytest.raises(ValidationError, match="max_body_bytes"):
        LimitSettings()
