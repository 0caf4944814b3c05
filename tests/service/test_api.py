"""The API through ``TestClient(create_app(...))`` on a real tiny model in a real registry."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import mlflow
import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from features.contract import ATTENDANCE_CODES, CLIENT_ID
from features.episodes import Episodes
from features.profiles import ALLIANCE6
from features.validation import (
    DATE_BACKWARDS,
    UNKNOWN_ATTENDANCE,
    normalise_clients,
    normalise_sessions,
    rating_out_of_range,
)
from models.pyfunc import load_scorer
from models.scorer import Scorer
from service.app import create_app
from service.schemas import Attendance
from service.settings import ServiceSettings
from tests.service.conftest import (
    MODEL_NAME,
    TEST_CLINIC,
    Registry,
    bearer,
    security_settings,
)
from tests.service.helpers import check_risk_body, request_for

CHAMPION = f"models:/{MODEL_NAME}@champion"


def _app(registry: Registry, **overrides) -> TestClient:
    """The app on the registry, dev-mode auth, a client holding every scope for TEST_CLINIC."""
    settings = ServiceSettings(
        model_uri=CHAMPION, tracking_uri=registry.uri, poll_interval_s=0, **overrides
    )
    security = security_settings(KEYS[0], registry.root / "audit")
    app = create_app(settings, configure_logs=False, **security)
    return TestClient(app, headers=bearer(KEYS[0]))


#: The session's dev key directory, set by the autouse fixture below (helpers need it).
KEYS: list[Path] = []


@pytest.fixture(autouse=True)
def _keys(dev_key_dir: Path) -> Iterator[None]:
    KEYS[:] = [dev_key_dir]
    yield


@pytest.fixture
def api(registry: Registry) -> Iterator[TestClient]:
    with _app(registry) as client:
        yield client


def _some_clients(registry: Registry, n: int) -> list[str]:
    counts = registry.cohort.sessions.groupby(CLIENT_ID).size()
    # Short and long histories, including single-appointment ones.
    ids = counts.sort_values(kind="stable").index.to_numpy()
    return [str(x) for x in ids[np.linspace(0, len(ids) - 1, n).astype(int)]]


def test_schema_attendance_codes_are_the_contract_codes() -> None:
    assert set(get_args(Attendance)) == set(ATTENDANCE_CODES)


def test_one_client_scored_and_explained_exactly(api: TestClient, registry: Registry) -> None:
    for cid in _some_clients(registry, 6):
        body = request_for(registry.cohort, cid)
        r = api.post("/v1/risk", json=body, headers={"X-Request-ID": "trace-0001-abcd"})
        assert r.status_code == 200, r.text
        parsed = check_risk_body(r.json())
        assert parsed.client_id == cid
        assert parsed.landmark == len(body["sessions"])
        assert (parsed.model.name, parsed.model.version, parsed.model.alias) == (
            MODEL_NAME, "1", "champion",
        )  # fmt: skip
        assert parsed.request_id == r.headers["x-request-id"] != "trace-0001-abcd"  # ours
        assert r.headers["x-correlation-id"] == "trace-0001-abcd"
        for d in parsed.explanation.drivers:
            is_element = d.group in ALLIANCE6.element_names
            assert (d.focus is not None) == is_element or d.group == "alliance_overall"


def test_serving_equals_batch_and_the_training_path(api: TestClient, registry: Registry) -> None:
    ids = _some_clients(registry, 25)
    bodies = [request_for(registry.cohort, cid) for cid in ids]
    single = [api.post("/v1/risk", json=b).json()["probability"] for b in bodies]
    batch = api.post("/v1/risk/batch", json={"clients": bodies}).json()
    assert batch["scored"] == len(ids) and batch["failed"] == 0
    assert [item["index"] for item in batch["items"]] == list(range(len(ids)))
    for item in batch["items"]:
        check_risk_body(item["result"])
    np.testing.assert_allclose([i["result"]["probability"] for i in batch["items"]], single,
                               rtol=0, atol=1e-12)  # fmt: skip
    # The same clients through the analysts' batch path (pandas frames, training code).
    mlflow.set_tracking_uri(registry.uri)
    mlflow.set_registry_uri(registry.uri)
    scorer = load_scorer(f"models:/{MODEL_NAME}/1")
    c = registry.cohort
    sessions = normalise_sessions(c.sessions[c.sessions[CLIENT_ID].isin(ids)], c.profile)
    clients = normalise_clients(c.clients[c.clients[CLIENT_ID].isin(ids)])
    scored = scorer.score(Episodes.from_frames(sessions, clients, c.profile))
    by_id = {r.client_id: r.probability for r in scored.results}
    np.testing.assert_allclose(single, [by_id[i] for i in ids], rtol=0, atol=1e-12)


def test_batch_reports_bad_items_in_their_slot(api: TestClient, registry: Registry) -> None:
    ids = _some_clients(registry, 3)
    good = [request_for(registry.cohort, cid) for cid in ids]
    out_of_range = json.loads(json.dumps(good[1]))
    first_rated = next(i for i, s in enumerate(out_of_range["sessions"]) if s["ratings"])
    out_of_range["sessions"][first_rated]["ratings"]["trust"] = 11.5
    missing_field = {k: v for k, v in good[2].items() if k != "clinic_id"}
    r = api.post("/v1/risk/batch", json={"clients": [good[0], out_of_range, missing_field]})
    assert r.status_code == 200
    body = r.json()
    assert (body["scored"], body["failed"]) == (1, 2)
    ok, bad_range, bad_missing = body["items"]
    assert ok["status"] == "ok" and ok["result"]["client_id"] == ids[0]
    assert bad_range["errors"] == [
        {"loc": ["sessions", first_rated, "ratings", "trust"],
         "reason": rating_out_of_range(ALLIANCE6)}
    ]  # fmt: skip
    assert bad_missing["errors"] == [{"loc": ["clinic_id"], "reason": "required field is missing"}]
    assert ids[1] not in r.text and ids[2] not in r.text  # failed items name no client


def test_bad_input_is_422_with_paths_and_never_echoes_values(api: TestClient,
                                                            registry: Registry) -> None:  # fmt: skip
    body = request_for(registry.cohort, _some_clients(registry, 2)[1])
    body["client_id"] = "SECRET-CLIENT-4711"
    body["sessions"][0]["attendance"] = "zzq-not-a-code"
    body["sessions"][0]["ratings"] = {}
    r = api.post("/v1/risk", json=body)
    assert r.status_code == 422
    err = r.json()
    assert err["errors"] == [{"loc": ["sessions", 0, "attendance"], "reason": UNKNOWN_ATTENDANCE}]
    assert "SECRET-CLIENT-4711" not in r.text and "zzq" not in r.text
    assert err["request_id"] == r.headers["x-request-id"]

    # Contract checks that need several fields: dates going backwards, out-of-scale rating.
    body = request_for(registry.cohort, _some_clients(registry, 6)[5])
    body["client_id"] = "SECRET-CLIENT-4711"
    body["sessions"][1]["session_date"] = "1999-01-01"
    body["intake_date"] = "1998-12-01"
    rated = next(i for i, s in enumerate(body["sessions"]) if s["ratings"])
    body["sessions"][rated]["ratings"]["goals"] = 97.25
    r = api.post("/v1/risk", json=body)
    assert r.status_code == 422
    reasons = {(tuple(p["loc"]), p["reason"]) for p in r.json()["errors"]}
    assert (("sessions", 1, "session_date"), DATE_BACKWARDS) in reasons
    assert (("sessions", rated, "ratings", "goals"), rating_out_of_range(ALLIANCE6)) in reasons
    for secret in ("SECRET-CLIENT-4711", "97.25", "1999"):
        assert secret not in r.text
    # More appointments than the configured cap: refused before any work is done.
    long = request_for(registry.cohort, _some_clients(registry, 2)[1])
    long["sessions"] = [
        {"session_number": i + 1, "session_date": f"2026-01-{1 + i % 28:02d}", "attendance":
         "cancelled"} for i in range(501)
    ]  # fmt: skip
    r = api.post("/v1/risk", json=long)
    assert r.status_code == 422 and r.json()["errors"] == [
        {"loc": ["sessions"], "reason": "at most 500 appointments per client in one request"}
    ]
    # Malformed JSON: a clean 422, no parser excerpt of the body.
    r = api.post("/v1/risk", content=b'{"client_id": "SECRET-CLIENT-4711", ',
                 headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 422 and "SECRET" not in r.text


def test_model_info_health_and_metrics(api: TestClient, registry: Registry) -> None:
    info = api.get("/v1/model").json()
    assert info["model"] == {"name": MODEL_NAME, "version": "1", "alias": "champion"}
    assert info["profile"] == "alliance6" and info["simulated"] is True
    assert {"moderate_from", "high_from"} <= set(info["risk_bands"])
    assert "auroc" in info["metrics"] and info["model_card"]
    assert any(g.startswith("attendance") for g in info["feature_groups"])
    assert api.get("/livez").json() == {"status": "alive"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "1"
    cid = _some_clients(registry, 1)[0]
    api.post("/v1/risk", json=request_for(registry.cohort, cid))
    text = api.get("/metrics").text
    assert 'alliance_risk_model_info{alias="champion",name="alliance-risk-svc",version="1"}' in text
    assert 'alliance_risk_request_duration_seconds_count{method="POST",route="/v1/risk"' in text
    assert "alliance_risk_predictions_total{band=" in text
    assert cid not in text


def test_without_a_champion_not_ready_and_503(registry: Registry) -> None:
    MlflowClient(registry.uri, registry.uri).delete_registered_model_alias(MODEL_NAME, "champion")
    with _app(registry) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["last_reload"] == "no_champion"
        body = request_for(registry.cohort, _some_clients(registry, 1)[0])
        r = api.post("/v1/risk", json=body)
        assert r.status_code == 503 and "no model is loaded" in r.json()["detail"]
        assert api.get("/livez").status_code == 200


def test_reload_swaps_to_the_new_champion(api: TestClient, registry: Registry) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 4)[3])
    before = api.post("/v1/risk", json=body).json()
    MlflowClient(registry.uri, registry.uri).set_registered_model_alias(MODEL_NAME, "champion", "2")
    assert api.post("/v1/admin/reload").json()["result"] == "loaded"
    after = api.post("/v1/risk", json=body).json()
    assert (before["model"]["version"], after["model"]["version"]) == ("1", "2")
    assert api.post("/v1/admin/reload").json()["result"] == "unchanged"
    assert 'alliance_risk_model_reloads_total{result="loaded"} 2.0' in api.get("/metrics").text


def _register_broken(registry: Registry, tmp_path: Path, breakage: str) -> str:
    """Register a copy of version 2 with its scorer broken; returns the new version."""
    mlflow.set_tracking_uri(registry.uri)
    mlflow.set_registry_uri(registry.uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/2",
                                                     dst_path=str(tmp_path / "v")))  # fmt: skip
    scorer_dir = next(local.rglob("scorer.json")).parent
    if breakage == "corrupt":
        (scorer_dir / "booster.ubj").write_bytes(b"\x00 not a booster \x00" * 16)
    else:  # saved by another xgboost minor version: refused as incompatible
        doc = json.loads((scorer_dir / "scorer.json").read_text())
        doc["libraries"]["xgboost"] = "1.7.6"
        (scorer_dir / "scorer.json").write_text(json.dumps(doc))
    client = MlflowClient(registry.uri, registry.uri)
    mv = client.create_model_version(MODEL_NAME, source=str(local))
    client.set_registered_model_alias(MODEL_NAME, "champion", str(mv.version))
    return str(mv.version)


@pytest.mark.parametrize("breakage", ["corrupt", "incompatible"])
def test_broken_version_refused_and_previous_keeps_serving(
    api: TestClient, registry: Registry, tmp_path: Path, breakage: str
) -> None:
    version = _register_broken(registry, tmp_path, breakage)
    out = api.post("/v1/admin/reload").json()
    assert out["result"] == "refused" and out["model"]["version"] == "1"
    assert f"version {version} refused" in out["detail"]
    r = api.post("/v1/risk", json=request_for(registry.cohort, _some_clients(registry, 1)[0]))
    assert r.status_code == 200 and r.json()["model"]["version"] == "1"
    ready = api.get("/readyz").json()
    assert ready["ready"] and ready["last_reload"] == "refused"


@pytest.fixture
def restore_loggers() -> Iterator[None]:
    """The app's JSON handler is process-global; put the loggers back afterwards."""
    names = ("service", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).propagate,
                 logging.getLogger(n).level, logging.getLogger(n).disabled) for n in names}  # fmt: skip
    yield
    for n, (handlers, propagate, level, disabled) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:], logger.propagate, logger.disabled = handlers, propagate, disabled
        logger.setLevel(level)


@pytest.mark.usefixtures("restore_loggers")
def test_logs_are_json_and_hold_no_client_data(registry: Registry, capsys) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 3)[2])
    body["client_id"] = "PATIENT-ZZ-9981"
    body["intake_date"] = "2025-03-16"
    for i, s in enumerate(body["sessions"]):
        s["session_date"] = f"2025-{4 + i // 4:02d}-{1 + 7 * (i % 4):02d}"
        if s["ratings"]:
            s["ratings"]["trust"] = 7.3579
    bad = json.loads(json.dumps(body))
    bad["sessions"][0]["attendance"] = "no-such-code"
    settings = ServiceSettings(model_uri=CHAMPION, tracking_uri=registry.uri, poll_interval_s=0)
    security = security_settings(KEYS[0], registry.root / "audit")
    with TestClient(create_app(settings, **security), headers=bearer(KEYS[0])) as api:
        assert api.post("/v1/risk", json=body).status_code == 200
        assert api.post("/v1/risk/batch", json={"clients": [body, bad]}).status_code == 200
        assert api.post("/v1/risk", json=bad).status_code == 422
    logged = capsys.readouterr().err
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    assert any(line.get("route") == "/v1/risk" and line.get("status") == 422 for line in lines)
    assert any(line.get("msg") == "model loaded" for line in lines)
    for secret in ("PATIENT-ZZ-9981", "7.3579", "2025-03-16", "2025-04-01", "no-such-code"):
        assert secret not in logged


def test_batch_envelope_errors_are_422(registry: Registry) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 1)[0])
    with _app(registry, max_batch=2) as api:
        too_many = api.post("/v1/risk/batch", json={"clients": [body, body, body]})
        assert too_many.status_code == 422
        assert too_many.json()["errors"] == [
            {"loc": ["clients"], "reason": "at most 2 clients per batch"}
        ]
        empty = api.post("/v1/risk/batch", json={"clients": []})
        assert empty.status_code == 422 and empty.json()["errors"][0]["loc"] == ["clients"]
        broken = api.post("/v1/risk/batch", content=b'{"clients": [{"client_id": "SECRET-77"',
                          headers={"Content-Type": "application/json"})  # fmt: skip
        assert broken.status_code == 422 and "SECRET" not in broken.text
        two = api.post("/v1/risk/batch", json={"clients": [body, body]})
        assert two.json()["scored"] == 2  # the same client twice is two episodes
        items = two.json()["items"]
        assert items[0]["result"]["probability"] == items[1]["result"]["probability"]


def _audit(registry: Registry) -> list:
    from service.audit_log import records

    path = registry.root / "audit" / "audit.jsonl"
    return list(records(path)) if path.exists() else []


def test_every_v1_operation_needs_a_token(registry: Registry) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 1)[0])
    with _app(registry) as api:
        schema = api.get("/openapi.json").json()
        operations = [(m, p) for p, ops in schema["paths"].items() for m in ops if
                      p.startswith("/v1/")]  # fmt: skip
        assert {("post", "/v1/risk"), ("post", "/v1/risk/batch"), ("get", "/v1/model"),
                ("post", "/v1/risk/what-if"), ("post", "/v1/admin/reload"),
                ("post", "/v1/clients/{client_id}/sessions"), ("get", "/v1/clients/{client_id}/risk"),
                ("post", "/v1/clients/{client_id}/outcome")} <= set(operations)  # fmt: skip
        for method, path in operations:
            r = api.request(method.upper(), path, json=body if "risk" in path else None,
                            headers={"Authorization": ""})  # fmt: skip
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        for bad in ("Bearer not-a-token", "Basic dXNlcjpwYXNz"):
            assert (
                api.post("/v1/risk", json=body, headers={"Authorization": bad}).status_code == 401
            )
        assert api.get("/livez").status_code == 200  # health needs no token


def test_scopes_and_clinic_tenancy(registry: Registry) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 2)[1])
    with _app(registry) as api:
        reader = bearer(KEYS[0], scopes=("risk:read",))
        assert api.post("/v1/risk", json=body, headers=reader).status_code == 200
        assert api.post("/v1/risk/batch", json={"clients": [body]},
                        headers=reader).status_code == 403  # fmt: skip
        assert api.post("/v1/admin/reload", headers=reader).status_code == 403
        smart = bearer(KEYS[0], scopes=("system/RiskAssessment.read",))
        assert api.post("/v1/risk", json=body, headers=smart).status_code == 200

        # Another clinic's client: the same 404 as a client that does not exist, no detail.
        other = bearer(KEYS[0], clinic="clinic-other")
        r = api.post("/v1/risk", json=body, headers=other)
        assert r.status_code == 404 and r.json()["detail"] == "client not found"
        assert body["client_id"] not in r.text
        mixed = [body, request_for(registry.cohort, _some_clients(registry, 3)[2],
                                   clinic="clinic-other")]  # fmt: skip
        out = api.post("/v1/risk/batch", json={"clients": mixed}).json()
        assert [i["status"] for i in out["items"]] == ["ok", "error"]
        assert out["items"][1]["errors"] == [{"loc": ["clinic_id"], "reason": "client not found"}]


def test_each_scoring_request_leaves_exactly_one_audit_record(registry: Registry) -> None:
    cid = _some_clients(registry, 2)[1]
    body = request_for(registry.cohort, cid)
    bad = json.loads(json.dumps(body))
    bad["sessions"][0]["attendance"] = "zzz"
    cases = [  # (headers, body, expected status, expected outcome)
        ({}, body, 200, "ok"),
        ({"Authorization": ""}, body, 401, "denied"),
        (bearer(KEYS[0], scopes=("model:read",)), body, 403, "denied"),
        (bearer(KEYS[0], clinic="clinic-other"), body, 404, "not_found"),
        ({}, bad, 422, "invalid"),
    ]
    refs = {}
    with _app(registry) as api:
        for headers, payload, status, outcome in cases:
            before = len(_audit(registry))
            r = api.post("/v1/risk", json=payload, headers=headers)
            assert r.status_code == status
            new = _audit(registry)[before:]
            assert len(new) == 1, (status, new)
            rec = new[0]
            assert (rec.action, rec.outcome, rec.status) == ("risk.read", outcome, status)
            assert rec.request_id == r.headers["x-request-id"]
            if status in (200, 404):
                assert rec.client_ref and rec.client_ref != cid
                refs[status] = rec.client_ref
        before = len(_audit(registry))
        third = request_for(registry.cohort, _some_clients(registry, 3)[0])
        api.post("/v1/risk/batch", json={"clients": [third, bad, body]})
        batch = _audit(registry)[before:]
        # The refused item first (no client could be read), then the scored ones in item order.
        assert [(r.action, r.outcome, r.status) for r in batch] == [
            ("risk.batch", "invalid", 422), ("risk.batch", "ok", 200), ("risk.batch", "ok", 200)
        ]  # fmt: skip
        assert batch[0].client_ref is None
        # The same pseudonym as when that client was scored alone.
        assert batch[2].client_ref == refs[200] != batch[1].client_ref
        assert batch[0].model_version == "1" and batch[0].clinic == TEST_CLINIC
        assert len({r.time for r in batch}) == 1 and len({r.request_id for r in batch}) == 1
    raw = (registry.root / "audit" / "audit.jsonl").read_text()
    assert cid not in raw and "7.3579" not in raw and body["sessions"][0]["session_date"] not in raw


def test_limits_on_the_real_app(registry: Registry) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 2)[1])
    settings = ServiceSettings(model_uri=CHAMPION, tracking_uri=registry.uri, poll_interval_s=0)
    security = security_settings(KEYS[0], registry.root / "audit", rate_per_clinic_per_s=0.01,
                                 burst_per_clinic=2, max_body_bytes=64 * 1024)  # fmt: skip
    with TestClient(create_app(settings, configure_logs=False, **security),
                    headers=bearer(KEYS[0])) as api:  # fmt: skip
        assert [api.post("/v1/risk", json=body).status_code for _ in range(2)] == [200, 200]
        limited = api.post("/v1/risk", json=body)
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert limited.json()["request_id"] == limited.headers["x-request-id"]
        # Another clinic has its own bucket.
        other = request_for(registry.cohort, _some_clients(registry, 2)[1], clinic="clinic-b")
        assert api.post("/v1/risk", json=other,
                        headers=bearer(KEYS[0], clinic="clinic-b")).status_code == 200  # fmt: skip
        huge = api.post("/v1/risk/batch", json={"clients": [body] * 80},
                        headers=bearer(KEYS[0], clinic="clinic-c"))  # fmt: skip
        assert huge.status_code == 413 and body["client_id"] not in huge.text
    records = _audit(registry)
    assert [r.outcome for r in records if r.status in (413, 429)] == ["denied", "invalid"]


def test_no_audit_no_data(registry: Registry, monkeypatch) -> None:
    from service.audit import AuditWriteError

    body = request_for(registry.cohort, _some_clients(registry, 2)[1])
    with _app(registry) as api:
        assert api.post("/v1/risk", json=body).status_code == 200

        def broken(template, clients) -> None:
            raise AuditWriteError("disk full")

        monkeypatch.setattr(api.app.state.security.audit, "write_batch", broken)
        r = api.post("/v1/risk", json=body)
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert "probability" not in r.text and body["client_id"] not in r.text
        assert r.json()["request_id"] == r.headers["x-request-id"]
        batch = api.post("/v1/risk/batch", json={"clients": [body, body]})
        assert batch.status_code == 503 and "probability" not in batch.text


def test_unexpected_errors_are_clean_500s_with_a_request_id(
    registry: Registry, monkeypatch
) -> None:
    def explode(*args, **kwargs):
        raise RuntimeError("SECRET-DETAIL from deep inside")

    body = request_for(registry.cohort, _some_clients(registry, 2)[1])
    with _app(registry) as api:
        monkeypatch.setattr(Scorer, "score", explode)
        r = api.post("/v1/risk", json=body)
        assert r.status_code == 500
        assert r.json()["request_id"] == r.headers["x-request-id"]
        assert "SECRET" not in r.text and "Traceback" not in r.text
        assert body["client_id"] not in r.text
    assert [rec.status for rec in _audit(registry)][-1] == 500


def test_fastapi_native_opentelemetry_follows_the_setting(registry: Registry) -> None:
    # FastAPI keeps the configuration in a private attribute; checked here because the default
    # (off) is a measured saving on every request and must not silently flip back.
    for wanted in (False, True):
        api = _app(registry, opentelemetry=wanted)
        config = api.app._telemetry  # type: ignore[attr-defined]
        assert (config["tracing"], config["metrics"], config["logs"]) == (wanted,) * 3


def test_a_replaced_model_is_freed(registry: Registry) -> None:
    import gc
    import weakref

    with _app(registry) as api:
        first = weakref.ref(api.app.state.store.current.scorer)
        MlflowClient(registry.uri, registry.uri).set_registered_model_alias(
            MODEL_NAME, "champion", "2"
        )
        assert api.post("/v1/admin/reload").json()["result"] == "loaded"
        gc.collect()
        assert first() is None  # no cache or cycle keeps one model alive per promotion


def test_a_body_that_is_not_json_is_a_422_saying_so_without_echoing_it(registry: Registry) -> None:
    with _app(registry) as api:
        for path in ("/v1/risk", "/v1/risk/batch"):
            r = api.post(
                path,
                content=b'{"client_id": "c-LEAKED", ',
                headers={"Content-Type": "application/json"},
            )
            assert r.status_code == 422, (path, r.text)
            assert r.json()["errors"] == [{"loc": [], "reason": "body is not valid JSON"}]
            assert "LEAKED" not in r.text and r.json()["request_id"] == r.headers["x-request-id"]


def test_a_slow_reload_holds_up_no_request(registry: Registry) -> None:
    """Loading a model takes seconds; it has a thread of its own, so scoring goes on meanwhile
    even with one route thread per worker (the default)."""
    import threading
    import time

    from models.pyfunc import load_scorer

    release, loading = threading.Event(), threading.Event()

    def slow_loader(uri: str):
        scorer = load_scorer(uri)
        if uri.endswith("/2"):
            loading.set()
            assert release.wait(20)
        return scorer

    settings = ServiceSettings(model_uri=CHAMPION, tracking_uri=registry.uri, poll_interval_s=0)
    assert settings.route_threads == 1
    security = security_settings(KEYS[0], registry.root / "audit")
    app = create_app(settings, configure_logs=False, loader=slow_loader, **security)
    body = request_for(registry.cohort, _some_clients(registry, 2)[1])
    with TestClient(app, headers=bearer(KEYS[0])) as api:
        MlflowClient(registry.uri, registry.uri).set_registered_model_alias(
            MODEL_NAME, "champion", "2"
        )
        reload = threading.Thread(target=lambda: api.post("/v1/admin/reload"))
        reload.start()
        try:
            assert loading.wait(30)
            started = time.monotonic()
            r = api.post("/v1/risk", json=body)  # would wait for the reload if it shared a thread
            assert time.monotonic() - started < 10
            assert r.status_code == 200 and r.json()["model"]["version"] == "1"
        finally:
            release.set()
            reload.join(30)
        assert api.post("/v1/risk", json=body).json()["model"]["version"] == "2"


def test_bodies_are_parsed_as_strict_json(registry: Registry) -> None:
    """orjson parses the bodies (service/routers/jsonbody.py): a lone surrogate, which Python's
    json module would take (and pydantic then fail to encode), is malformed JSON. (NaN literals
    are refused by the schema in their own item: tests/service/test_schemas.py.)"""
    body = request_for(registry.cohort, _some_clients(registry, 3)[2])
    text = json.dumps(body)
    bad = text.replace(f'"therapist_id": "{body["therapist_id"]}"', '"therapist_id": "t\\ud800"')
    assert bad != text
    with _app(registry) as api:
        for path, payload in (("/v1/risk", bad), ("/v1/risk/batch", f'{{"clients": [{bad}]}}')):
            r = api.post(path, content=payload, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["errors"] == [{"loc": [], "reason": "body is not valid JSON"}]


def test_batch_items_keep_their_slots_whatever_fails_where(api: TestClient,
                                                           registry: Registry) -> None:  # fmt: skip
    """Refusals by the schema, by tenancy and by the contract, in any order, each in its own
    slot; the accepted items are scored in theirs."""
    ids = _some_clients(registry, 6)
    good = [request_for(registry.cohort, cid) for cid in ids[2:]]
    backwards = json.loads(json.dumps(good[1]))
    backwards["sessions"][1]["session_date"] = "1999-01-01"
    backwards["intake_date"] = "1998-12-01"
    other = request_for(registry.cohort, ids[1], clinic="clinic-other")
    items = [{"client_id": "x"}, good[0], backwards, other, good[2]]
    body = api.post("/v1/risk/batch", json={"clients": items}).json()
    assert (body["scored"], body["failed"]) == (2, 3)
    by_index = {item["index"]: item for item in body["items"]}
    assert [by_index[i]["status"] for i in range(5)] == ["error", "ok", "error", "error", "ok"]
    assert by_index[1]["result"]["client_id"] == good[0]["client_id"]
    assert by_index[4]["result"]["client_id"] == good[2]["client_id"]
    assert {"loc": ["sessions", 1, "session_date"], "reason": DATE_BACKWARDS} in by_index[2][
        "errors"
    ]
    assert by_index[3]["errors"] == [{"loc": ["clinic_id"], "reason": "client not found"}]
    nothing = api.post("/v1/risk/batch", json={"clients": [{"client_id": "x"}, other]}).json()
    assert (nothing["scored"], nothing["failed"]) == (0, 2)


def test_keys_the_caller_chose_are_never_echoed(api: TestClient, registry: Registry) -> None:
    body = request_for(registry.cohort, _some_clients(registry, 3)[2])
    rated = next(i for i, s in enumerate(body["sessions"]) if s["ratings"])
    secret = "Jane Doe 1980-02-03"
    cases = []
    unknown_rating = json.loads(json.dumps(body))
    unknown_rating["sessions"][rated]["ratings"][secret] = 5.0
    cases.append((unknown_rating, ["sessions", rated, "ratings", "(unrecognised key)"]))
    bad_value = json.loads(json.dumps(body))
    bad_value["sessions"][rated]["ratings"][secret] = "not a number"
    cases.append((bad_value, ["sessions", rated, "ratings", "(unrecognised key)"]))
    extra_field = {**body, secret: "x"}
    cases.append((extra_field, ["(unrecognised key)"]))
    for payload, loc in cases:
        r = api.post("/v1/risk", json=payload)
        assert r.status_code == 422 and secret not in r.text
        assert loc in [e["loc"] for e in r.json()["errors"]], r.json()
    # A known element of another instrument is named: it says what to fix and names nobody.
    srs_element = json.loads(json.dumps(body))
    srs_element["sessions"][rated]["ratings"]["relationship"] = 7.0
    r = api.post("/v1/risk", json=srs_element)
    assert r.json()["errors"][0]["loc"] == ["sessions", rated, "ratings", "relationship"]
