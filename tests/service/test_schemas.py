"""Request schemas through the real app: clinical values are strict numbers, the contract's
required fields are required, and every batch item succeeds or fails on its own."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from features.validation import RATING_NOT_NUMERIC
from service.errors import NOT_AN_OBJECT
from tests.service.conftest import Registry
from tests.service.helpers import request_for


def _client(registry: Registry, n: int = 0) -> dict[str, Any]:
    """A simulated client with at least two rated appointments."""
    counts = registry.cohort.sessions.groupby("client_id").size()
    cid = str(counts[counts >= 4].index[n])
    return request_for(registry.cohort, cid)


def _rated(body: dict[str, Any]) -> int:
    return next(i for i, s in enumerate(body["sessions"]) if s.get("ratings"))


def _loose_values(body: dict[str, Any]) -> list[tuple[dict[str, Any], list[str | int]]]:
    """Copies of ``body`` with one value of the wrong JSON type, and the path it is at."""
    rated = _rated(body)
    element = next(iter(body["sessions"][rated]["ratings"]))
    cases = []
    for value in (True, "8", "8.5"):
        case = json.loads(json.dumps(body))
        case["sessions"][rated]["ratings"][element] = value
        cases.append((case, ["sessions", rated, "ratings", element]))
    for value in ("2", True, 2.0):
        case = json.loads(json.dumps(body))
        case["sessions"][0]["session_number"] = value
        cases.append((case, ["sessions", 0, "session_number"]))
    for value in (True, "23", 23.0):
        case = json.loads(json.dumps(body))
        case["age"] = value
        cases.append((case, ["age"]))
    return cases


def test_ratings_session_numbers_and_ages_are_strict_numbers(api: TestClient,
                                                             registry: Registry) -> None:  # fmt: skip
    body = _client(registry)
    assert api.post("/v1/risk", json=body).status_code == 200
    for case, loc in _loose_values(body):
        r = api.post("/v1/risk", json=case)
        assert r.status_code == 422, (loc, r.text)
        assert loc in [e["loc"] for e in r.json()["errors"]], r.text


def test_strict_numbers_in_batch_items(api: TestClient, registry: Registry) -> None:
    body = _client(registry)
    cases = _loose_values(body)
    r = api.post("/v1/risk/batch", json={"clients": [body, *(c for c, _ in cases)]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["scored"], out["failed"]) == (1, len(cases))
    assert out["items"][0]["status"] == "ok"
    for item, (_, loc) in zip(out["items"][1:], cases, strict=True):
        assert item["status"] == "error" and loc in [e["loc"] for e in item["errors"]], item


def test_ratings_may_be_integers_or_floats(api: TestClient, registry: Registry) -> None:
    body = _client(registry)
    rated = _rated(body)
    ratings = body["sessions"][rated]["ratings"]
    as_ints = json.loads(json.dumps(body))
    as_ints["sessions"][rated]["ratings"] = {k: round(v) for k, v in ratings.items()}
    assert api.post("/v1/risk", json=as_ints).status_code == 200


def test_intake_date_is_required(api: TestClient, registry: Registry) -> None:
    body = _client(registry)
    missing = {k: v for k, v in body.items() if k != "intake_date"}
    for payload in (missing, {**body, "intake_date": None}):
        r = api.post("/v1/risk", json=payload)
        assert r.status_code == 422, r.text
        assert [e["loc"] for e in r.json()["errors"]] == [["intake_date"]]
        batch = api.post("/v1/risk/batch", json={"clients": [body, payload]}).json()
        assert (batch["scored"], batch["failed"]) == (1, 1)
        assert [e["loc"] for e in batch["items"][1]["errors"]] == [["intake_date"]]


def test_an_item_that_is_not_an_object_fails_alone(api: TestClient, registry: Registry) -> None:
    body = _client(registry)
    r = api.post("/v1/risk/batch", json={"clients": ["x", body, 7, None, [body]]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["scored"], out["failed"]) == (1, 4)
    assert [it["status"] for it in out["items"]] == ["error", "ok", "error", "error", "error"]
    for i in (0, 2, 3, 4):
        assert out["items"][i]["errors"] == [{"loc": [], "reason": NOT_AN_OBJECT}]


def test_a_nan_literal_fails_only_its_item(api: TestClient, registry: Registry) -> None:
    """orjson refuses NaN literals; the body is read again by the standard library, which
    takes them as floats that the schema refuses, each in its own item."""
    good, other = _client(registry, 0), _client(registry, 1)
    rated = _rated(other)
    element = next(iter(other["sessions"][rated]["ratings"]))
    other["sessions"][rated]["ratings"][element] = 7.3579
    broken = {**good, "age": "x"}
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = json.dumps({"clients": [good, other, broken]}).replace("7.3579", literal)
        r = api.post("/v1/risk/batch", content=text,
                     headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 200, r.text
        out = r.json()
        assert [it["status"] for it in out["items"]] == ["ok", "error", "error"], r.text
        assert out["items"][1]["errors"] == [
            {"loc": ["sessions", rated, "ratings", element], "reason": RATING_NOT_NUMERIC}
        ]
        single = api.post("/v1/risk", content=json.dumps(other).replace("7.3579", literal),
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert single.status_code == 422
        assert single.json()["errors"] == out["items"][1]["errors"]
