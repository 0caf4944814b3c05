"""In process, where ``POST /v1/risk`` and ``POST /v1/risk/batch`` spend their time.

The routes' own steps (``service/routers/risk.py``), in their order, through the same public
functions and FastAPI's own fields of those routes, each timed apart:

1. ``parse``: what FastAPI does with the body: ``json.loads``, then the route's body field
   validates it into a ``RiskRequest`` (or a ``BatchRequest``);
2. ``edge_problems``: the edge's own checks (once per client of a batch);
3. ``to_episodes``;
4. ``Scorer.score``: the contract's rules, packing, landmark features, calibrated probability
   and exact TreeSHAP; ``Scorer.explain_matrix`` on the same feature rows is timed beside it
   (the model's share of ``score``);
5. ``drivers``: ``ScoreSet.drivers``, the top groups in clinician language;
6. ``results``: ``ScoreSet.by_episode``, the frozen ``RiskScore`` objects;
7. ``response``: ``RiskResponse.of`` (for a batch also the route's ``BatchItem`` and
   ``BatchResponse``);
8. ``serialise``: what FastAPI does with the return value: the route's response field
   validates it, then dumps it to JSON bytes.

Not in it: HTTP, the middleware (request id, limits, logs, metrics), authentication and the
audit record. ``bench_service`` shows those as the gap between the c=1 latency and this path,
and as ``GET /livez``.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute

from benchmarks._harness import per_call
from models.results import RiskScore
from models.scorer import Scorer
from service.episodes import edge_problems, to_episodes
from service.routers.risk import router
from service.schemas import BatchItem, BatchResponse, ModelRef, RiskResponse
from service.settings import ServiceSettings

Step = Callable[[dict[str, Any]], object]
MAX_SESSIONS = int(ServiceSettings.model_fields["max_sessions"].default)
REF = ModelRef(name="bench", version="1", alias="champion")
REQUEST_ID = "bench"


def _route(path: str) -> APIRoute:
    for route in router.routes:
        if isinstance(route, APIRoute) and route.path == path and "POST" in (route.methods or ()):
            return route
    raise LookupError(f"no POST {path} route")


def _parse(route: APIRoute, body: bytes) -> Any:
    assert route.body_field is not None
    value, errors = route.body_field.validate(json.loads(body), {}, loc=("body",))
    if errors:
        raise ValueError(f"the benchmark's body is invalid: {errors[:1]}")
    return value


def _serialise(route: APIRoute, response: object) -> bytes:
    assert route.response_field is not None
    value, errors = route.response_field.validate(response, {}, loc=("response",))
    if errors:
        raise ValueError(f"the response does not match the route's model: {errors[:1]}")
    return route.response_field.serialize_json(value)


def _rounds(steps: dict[str, Step], rounds: int, warmup: int, *, collect: bool) -> dict[str, Any]:
    """Run the steps in order ``warmup + rounds`` times on fresh state; min and median per step,
    and min, median and max of each round's total, in ms."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    totals = []
    for i in range(warmup + rounds):
        state: dict[str, Any] = {}
        if collect:
            gc.collect()  # as the harness does: no collection of the last round's garbage inside
        total = 0.0
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn(state)
            elapsed = time.perf_counter() - t0
            total += elapsed
            if i >= warmup:
                times[name].append(elapsed)
        if i >= warmup:
            totals.append(total)
    medians = {k: statistics.median(v) for k, v in times.items()}
    whole = sum(medians.values())
    return {
        "rounds": rounds,
        "steps_ms": {
            k: {
                "min": round(min(v) * 1e3, 4),
                "median": round(medians[k] * 1e3, 4),
                "share_of_median": round(medians[k] / whole, 3),
            }
            for k, v in times.items()
        },
        "total_ms": {
            "min": round(min(totals) * 1e3, 4),
            "median": round(statistics.median(totals) * 1e3, 4),
            "max": round(max(totals) * 1e3, 4),
        },
    }


def single(scorer: Scorer, body: bytes, calls: int) -> dict[str, Any]:
    """What ``POST /v1/risk`` does with ``body`` (one client), step by step, ``calls`` times."""
    route = _route("/v1/risk")
    profile = scorer.profile

    def score(s: dict[str, Any]) -> None:
        s["scored"] = scorer.score(s["edge"].episodes)

    def results(s: dict[str, Any]) -> None:
        ((_, outcome),) = s["scored"].by_episode()
        assert isinstance(outcome, RiskScore)
        s["outcome"] = outcome

    def parse(s: dict[str, Any]) -> None:
        s["req"] = _parse(route, body)

    def check(s: dict[str, Any]) -> None:
        assert not edge_problems(s["req"], profile, max_sessions=MAX_SESSIONS)

    def episodes(s: dict[str, Any]) -> None:
        s["edge"] = to_episodes([s["req"]], profile)

    def response(s: dict[str, Any]) -> None:
        s["response"] = RiskResponse.of(s["outcome"], REF, REQUEST_ID)

    steps: dict[str, Step] = {
        "parse": parse,
        "edge_problems": check,
        "to_episodes": episodes,
        "Scorer.score": score,
        "drivers": lambda s: s["scored"].drivers,
        "results": results,
        "response": response,
        "serialise": lambda s: _serialise(route, s["response"]),
    }
    out = _rounds(steps, calls, warmup=50, collect=False)
    X = scorer.score(to_episodes([_parse(route, body)], profile).episodes).features
    model = per_call("Scorer.explain_matrix", lambda: scorer.explain_matrix(X), calls)
    out["of_Scorer.score_explain_matrix_ms"] = {
        "min": round(model.min_s * 1e3, 4),
        "median": round(model.median_s * 1e3, 4),
    }
    return out


def batch(scorer: Scorer, body: bytes, repeats: int) -> dict[str, Any]:
    """What ``POST /v1/risk/batch`` does with ``body`` (every client valid), step by step."""
    route = _route("/v1/risk/batch")
    profile = scorer.profile

    def parse(s: dict[str, Any]) -> None:
        s["reqs"] = _parse(route, body).clients

    def check(s: dict[str, Any]) -> None:
        assert not any(edge_problems(r, profile, max_sessions=MAX_SESSIONS) for r in s["reqs"])

    def episodes(s: dict[str, Any]) -> None:
        s["edge"] = to_episodes(s["reqs"], profile)

    def score(s: dict[str, Any]) -> None:
        s["scored"] = scorer.score(s["edge"].episodes)

    def results(s: dict[str, Any]) -> None:
        s["outcomes"] = list(s["scored"].by_episode())
        assert all(isinstance(o, RiskScore) for _, o in s["outcomes"])

    def response(s: dict[str, Any]) -> None:
        items = [
            BatchItem(index=j, status="ok", result=RiskResponse.of(o, REF, REQUEST_ID))
            for j, o in s["outcomes"]
        ]
        s["response"] = BatchResponse(
            model=REF, request_id=REQUEST_ID, scored=len(items), failed=0, items=items
        )

    steps: dict[str, Step] = {
        "parse": parse,
        "edge_problems": check,
        "to_episodes": episodes,
        "Scorer.score": score,
        "drivers": lambda s: s["scored"].drivers,
        "results": results,
        "response": response,
        "serialise": lambda s: _serialise(route, s["response"]),
    }
    out = _rounds(steps, repeats, warmup=1, collect=True)
    n = len(_parse(route, body).clients)
    X = scorer.score(to_episodes(_parse(route, body).clients, profile).episodes).features
    model = per_call("Scorer.explain_matrix", lambda: scorer.explain_matrix(X), repeats, warmup=1)
    out["of_Scorer.score_explain_matrix_ms"] = {
        "min": round(model.min_s * 1e3, 4),
        "median": round(model.median_s * 1e3, 4),
    }
    out["clients"] = n
    out["clients_per_s"] = {
        "min": round(n / (out["total_ms"]["max"] / 1e3)),
        "median": round(n / (out["total_ms"]["median"] / 1e3)),
    }
    return out
