"""Promoting a new champion in a real MLflow registry rescores the stored open episodes in the
background (in a process of its own, or in a thread with ``rescore_mode=thread``): the
caseload's model versions move from 1 to 2 while POST /v1/risk keeps answering, and /metrics
counts the rescored episodes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from service.app import create_app
from service.settings import ServiceSettings
from service.store.db import Store
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings
from tests.service.helpers import request_for
from tests.service.test_caseload_support import seed_cohort

N = 300
URL = f"/v1/clinics/{TEST_CLINIC}/caseload"


def _versions(api: TestClient) -> list[str | None]:
    r = api.get(URL, params={"limit": 1000})
    assert r.status_code == 200, r.text
    return [item["model_version"] for item in r.json()["items"]]


def _wait_for(api: TestClient, version: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while set(_versions(api)) != {version}:
        assert time.monotonic() < deadline, f"caseload not at version {version}"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_promotion_rescores_the_caseload_while_serving(
    registry: Registry, dev_key_dir: Path, tmp_path: Path, mode: str
) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.ensure_ready()
    ids = seed_cohort(store, registry.cohort, TEST_CLINIC, n=N)
    store.close()
    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri,
        poll_interval_s=0.3, store_url=url, rescore_batch_size=10, rescore_check_interval_s=0.5,
        rescore_mode=mode,
    )  # fmt: skip
    app = create_app(settings, configure_logs=False,
                     **security_settings(dev_key_dir, registry.root / "audit"))  # fmt: skip
    scopes = ("clients:read", "risk:read")
    with TestClient(app, headers=bearer(dev_key_dir, scopes=scopes)) as api:
        # At start-up the stored episodes are brought to the served champion (version 1).
        _wait_for(api, "1")
        assert len(_versions(api)) == N
        body = request_for(registry.cohort, ids[0], clinic=TEST_CLINIC)
        MlflowClient(registry.uri, registry.uri).set_registered_model_alias(
            MODEL_NAME, "champion", "2"
        )
        served, mixed, deadline = [], False, time.monotonic() + 60
        while True:
            r = api.post("/v1/risk", json=body)
            served.append((r.status_code, r.json()["model"]["version"]))
            versions = set(_versions(api))
            mixed |= versions == {"1", "2"}
            if versions == {"2"}:
                break
            assert time.monotonic() < deadline, "the caseload never moved to version 2"
        assert all(status == 200 for status, _ in served)
        # POST /v1/risk answered while the stored episodes were being rescored.
        assert mixed, "never saw the caseload half rescored"
        assert ("2" in {v for _, v in served}) or api.post("/v1/risk", json=body).json()["model"][
            "version"
        ] == "2"
        metrics = api.get("/metrics").text
        line = next(x for x in metrics.splitlines()
                    if x.startswith('alliance_risk_rescored_episodes_total{model_version="2"}'))  # fmt: skip
        assert float(line.split()[-1]) == N
