"""``/metrics``: default collectors, route labels, in-flight requests, served probabilities, and
one sum across uvicorn workers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.service.conftest import Registry, bearer
from tests.service.helpers import request_for
from tests.service.serving import serving


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _total(text: str, name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in _samples(text).items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def test_process_and_gc_collectors_are_exported(api: TestClient) -> None:
    text = api.get("/metrics").text
    assert _total(text, "process_resident_memory_bytes") > 0
    assert _total(text, "process_cpu_seconds_total") > 0
    assert any(name == "python_gc_collections_total" for name, _ in _samples(text))


def test_docs_routes_are_labelled_by_their_path(api: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert api.get(path).status_code == 200
    text = api.get("/metrics").text
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        count = _total(text, "alliance_risk_request_duration_seconds_count", route=path)
        assert count == 1, path
    assert _total(text, "alliance_risk_request_duration_seconds_count", route="unmatched") == 0


def test_in_flight_requests_and_served_probabilities(api: TestClient, registry: Registry) -> None:
    ids = [str(c) for c in registry.cohort.clients["client_id"].iloc[:4]]
    single = api.post("/v1/risk", json=request_for(registry.cohort, ids[0]))
    batch = api.post("/v1/risk/batch", json={"clients": [request_for(registry.cohort, c)
                                                         for c in ids[1:]]})  # fmt: skip
    assert single.status_code == 200 and batch.status_code == 200
    served = [single.json()["probability"]]
    served += [item["result"]["probability"] for item in batch.json()["items"]]
    assert len(served) == 4
    text = api.get("/metrics").text
    # The only request in flight is the one reading /metrics: every other was counted out.
    assert _total(text, "alliance_risk_requests_in_flight") == 1
    assert _total(text, "alliance_risk_probability_count", model_version="1") == 4
    assert _total(text, "alliance_risk_probability_sum", model_version="1") == pytest.approx(
        sum(served)
    )
    upper = _total(text, "alliance_risk_probability_bucket", model_version="1", le="0.5")
    assert upper == sum(p <= 0.5 for p in served)


def test_metrics_add_up_across_workers(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    body = request_for(registry.cohort, str(registry.cohort.clients["client_id"].iloc[0]))
    n = 30
    with serving(registry, tmp_path / "serve", dev_key_dir, workers=2) as url:
        for _ in range(n):  # a new connection each: both workers take some
            r = httpx.post(f"{url}/v1/risk", json=body, headers=bearer(dev_key_dir), timeout=10)
            assert r.status_code == 200
        for _ in range(4):  # whichever worker answers the scrape
            text = httpx.get(f"{url}/metrics", timeout=10).text
            # Each worker loaded the champion once at start-up.
            assert _total(text, "alliance_risk_model_reloads_total", result="loaded") == 2
            assert _total(text, "alliance_risk_predictions_total") == n
            assert _total(text, "alliance_risk_probability_count") == n
            assert _total(text, "alliance_risk_model_loaded") == 1
            info = _total(text, "alliance_risk_model_info", version="1", alias="champion")
            assert info == 1


def test_a_worker_leaving_takes_its_live_gauges_along(tmp_path: Path) -> None:
    """Multiprocess mode (a fresh interpreter: prometheus_client picks its mode at import)."""
    import subprocess
    import sys

    script = (
        "from service.metrics import ServiceMetrics\n"
        "m = ServiceMetrics()\n"
        "m.request_started()\n"
        "m.model_loaded.set(1)\n"
        "m.count_predictions('low', '1')\n"
        "m.close()\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    left = sorted(p.name for p in tmp_path.iterdir())
    # The counter stays (a dead worker's counts still count); its live gauges are gone.
    assert any(name.startswith("counter") for name in left), left
    assert not any(name.startswith("gauge_live") for name in left), left
