"""The model lifecycle with real servers on 127.0.0.1: ``alliance-risk serve`` serving while
the champion moves, and an MLflow tracking server that goes away."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.conftest import running_mlflow_server
from tests.service.conftest import MODEL_NAME, Registry, bearer, security_settings
from tests.service.helpers import check_risk_body, request_for
from tests.service.serving import CHAMPION, serving


@pytest.fixture
def served(registry: Registry, tmp_path: Path, dev_key_dir: Path) -> Iterator[str]:
    """``alliance-risk serve`` in its own process on a loopback port, polling the alias."""
    with serving(registry, tmp_path / "serve", dev_key_dir, poll_interval_s=0.5) as url:
        yield url


def test_alias_moves_under_concurrent_load_without_a_failed_request(
    served: str, registry: Registry, dev_key_dir: Path
) -> None:
    bodies = [request_for(registry.cohort, cid) for cid in
              registry.cohort.clients["client_id"].iloc[:8]]  # fmt: skip
    stop = threading.Event()
    seen: list[list[str]] = [[] for _ in range(4)]
    failures: list[str] = []

    def hammer(k: int) -> None:
        with httpx.Client(base_url=served, timeout=10, headers=bearer(dev_key_dir)) as client:
            i = 0
            while not stop.is_set():
                r = client.post("/v1/risk", json=bodies[(k + i) % len(bodies)])
                i += 1
                if r.status_code != 200:
                    failures.append(f"{r.status_code}")
                    continue
                check_risk_body(r.json())
                seen[k].append(r.json()["model"]["version"])

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    # Promotion elsewhere: the service notices through its alias poll (every 0.5 s).
    MlflowClient(registry.uri, registry.uri).set_registered_model_alias(MODEL_NAME, "champion", "2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(s and s[-1] == "2" for s in seen):
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    for versions in seen:
        assert versions[0] == "1" and versions[-1] == "2", versions[:3] + versions[-3:]
        switch = versions.index("2")
        assert set(versions[switch:]) == {"2"}  # never back to the old model
    assert httpx.get(f"{served}/readyz").json()["model"]["version"] == "2"


def test_registry_outage_keeps_the_loaded_model_serving(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    db = registry.uri.removeprefix("sqlite:///")
    with running_mlflow_server(f"sqlite:///{db}", tmp_path / "server") as (url, stop_server):
        settings = ServiceSettings(model_uri=CHAMPION, tracking_uri=url, poll_interval_s=0,
                                   registry_timeout_s=2)  # fmt: skip
        security = security_settings(dev_key_dir, tmp_path / "audit")
        app = create_app(settings, configure_logs=False, **security)
        with TestClient(app, headers=bearer(dev_key_dir)) as api:
            body = request_for(registry.cohort, registry.cohort.clients["client_id"].iloc[0])
            assert api.post("/v1/risk", json=body).status_code == 200
            assert api.get("/readyz").json()["registry"] == "ok"
            stop_server()
            out = api.post("/v1/admin/reload").json()
            assert out["result"] == "registry_unreachable" and out["model"]["version"] == "1"
            r = api.post("/v1/risk", json=body)
            assert r.status_code == 200 and r.json()["model"]["version"] == "1"
            ready = api.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["registry"] == "unreachable"
            assert "alliance_risk_registry_up 0.0" in api.get("/metrics").text
