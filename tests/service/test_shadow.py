"""The shadow challenger: scored off the response path, compared, logged, never returned."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from models.pyfunc import load_scorer
from models.scorer import Scorer
from service.shadow import FIELDS, ComparisonLog, ShadowScorer, challenger_uri
from tests.service.conftest import MODEL_NAME, TEST_CLINIC, Registry, bearer, security_settings
from tests.service.helpers import request_for
from tests.service.test_metrics import _total


def _settings(registry: Registry, tmp_path: Path, **extra: Any):
    from service.settings import ServiceSettings

    return ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion",
        tracking_uri=registry.uri,
        poll_interval_s=0,
        shadow_log_path=tmp_path / "data" / "shadow.jsonl",
        shadow_batch_wait_s=0,
        **extra,
    )


@contextmanager
def _app(
    registry: Registry, tmp_path: Path, key_dir: Path, loader=None, **extra: Any
) -> Iterator[TestClient]:
    from service.app import create_app

    app = create_app(_settings(registry, tmp_path, **extra), configure_logs=False, loader=loader,
                     **security_settings(key_dir, tmp_path / "audit"))  # fmt: skip
    with TestClient(app, headers=bearer(key_dir)) as client:
        yield client


def _set_challenger(registry: Registry, version: str | None) -> None:
    client = MlflowClient(registry.uri, registry.uri)
    if version is None:
        client.delete_registered_model_alias(MODEL_NAME, "challenger")
    else:
        client.set_registered_model_alias(MODEL_NAME, "challenger", version)


def _bodies(registry: Registry, n: int) -> list[dict[str, Any]]:
    ids = [str(c) for c in registry.cohort.clients["client_id"].iloc[:n]]
    return [request_for(registry.cohort, c) for c in ids]


def _shadow(api: TestClient):
    (shadow,) = [o for o in api.app.state.observers if isinstance(o, ShadowScorer)]  # type: ignore[attr-defined]
    return shadow


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class _Controlled:
    """A loader whose version-2 scorer can be made to block or raise once the test says so."""

    def __init__(self) -> None:
        self.mode: str | None = None
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[dict[str, Any]] = []  # the keywords of each challenger score call

    def __call__(self, uri: str) -> Scorer:
        scorer = load_scorer(uri)
        if uri.endswith("/2"):
            real = scorer.score

            def score(episodes, **kwargs):  # type: ignore[no-untyped-def]
                self.calls.append(kwargs)
                if self.mode == "raise":
                    raise RuntimeError("challenger broke")
                if self.mode == "block":
                    self.entered.set()
                    self.release.wait(10)
                return real(episodes, **kwargs)

            scorer.score = score  # type: ignore[method-assign]
        return scorer


def test_challenger_uri_only_for_a_watched_champion() -> None:
    assert challenger_uri("models:/m@champion", "challenger") == "models:/m@challenger"
    assert challenger_uri("models:/m/3", "challenger") is None
    assert challenger_uri("models:/m@staging", "challenger") is None
    assert challenger_uri("runs:/abc/model", "challenger") is None


def test_responses_are_identical_with_and_without_a_challenger(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """Byte for byte, once the request id and the time stamp are set aside."""
    bodies = _bodies(registry, 3)

    def answers() -> list[bytes]:
        out = []
        for body, path in ((bodies[0], "/v1/risk"), ({"clients": bodies}, "/v1/risk/batch")):
            r = api.post(path, json=body)
            assert r.status_code == 200
            body = r.content.replace(r.headers["x-request-id"].encode(), b"ID")
            out.append(re.sub(rb'"scored_at":"[^"]+"', b'"scored_at":"T"', body))
        return out

    with _app(registry, tmp_path / "a", dev_key_dir) as api:
        assert _shadow(api).store.current is None
        without = answers()
    _set_challenger(registry, "2")
    with _app(registry, tmp_path / "b", dev_key_dir) as api:
        assert _shadow(api).store.current.version == "2"
        with_challenger = answers()
        assert _shadow(api).wait_idle()
        text = api.get("/metrics").text
    assert with_challenger == without
    assert _total(text, "alliance_risk_shadow_abs_difference_count") == 4
    assert _total(text, "alliance_risk_challenger_info", version="2", alias="challenger") == 1


def test_comparisons_are_logged_without_client_identifiers(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    _set_challenger(registry, "2")
    bodies = _bodies(registry, 5)
    with _app(registry, tmp_path, dev_key_dir) as api:
        single = api.post("/v1/risk", json=bodies[0]).json()
        batch = api.post("/v1/risk/batch", json={"clients": bodies[1:]}).json()
        assert _shadow(api).wait_idle()
        text = api.get("/metrics").text
    served = [single["probability"]] + [it["result"]["probability"] for it in batch["items"]]
    path = tmp_path / "data" / "shadow.jsonl"
    lines = _lines(path)
    assert len(lines) == 5
    assert all(tuple(line) == FIELDS for line in lines)
    assert [line["p_champion"] for line in lines] == pytest.approx(served, abs=1e-6)
    assert {(line["champion_version"], line["challenger_version"]) for line in lines} == {
        ("1", "2")
    }
    raw = path.read_text()
    for body in bodies:
        for value in (body["client_id"], body["therapist_id"], body["intake_date"]):
            assert value not in raw
        assert not any(s["session_date"] in raw for s in body["sessions"])
    assert TEST_CLINIC not in raw
    disagree = sum(line["band_champion"] != line["band_challenger"] for line in lines)
    assert _total(text, "alliance_risk_shadow_band_disagreements_total") == disagree
    assert (path.stat().st_mode & 0o777) == 0o600


def test_the_challenger_scores_without_explanation(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """The shadow needs probabilities and bands only: no TreeSHAP, no drivers."""
    _set_challenger(registry, "2")
    loader = _Controlled()
    bodies = _bodies(registry, 3)
    with _app(registry, tmp_path, dev_key_dir, loader=loader) as api:
        loader.calls.clear()  # the load-time self-check explains, as it must
        assert api.post("/v1/risk/batch", json={"clients": bodies}).status_code == 200
        assert _shadow(api).wait_idle()
    assert loader.calls and all(kw.get("explain") is False for kw in loader.calls)
    assert len(_lines(tmp_path / "data" / "shadow.jsonl")) == 3


def test_a_full_queue_drops_and_counts_without_waiting(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    _set_challenger(registry, "2")
    loader = _Controlled()
    body = _bodies(registry, 1)[0]
    with _app(registry, tmp_path, dev_key_dir, loader=loader, shadow_queue_size=1) as api:
        loader.mode = "block"
        assert api.post("/v1/risk", json=body).status_code == 200
        assert loader.entered.wait(10)  # the challenger holds the first request
        for _ in range(3):  # one waits in the queue, two are dropped; none of them waits
            assert api.post("/v1/risk", json=body).status_code == 200
        batch = {"clients": _bodies(registry, 2)}  # its two clients are dropped together
        assert api.post("/v1/risk/batch", json=batch).status_code == 200
        text = api.get("/metrics").text
        loader.release.set()
        assert _shadow(api).wait_idle()
    assert _total(text, "alliance_risk_shadow_dropped_total") == 4
    assert len(_lines(tmp_path / "data" / "shadow.jsonl")) == 2


def test_a_failing_challenger_never_fails_a_request(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    _set_challenger(registry, "2")
    loader = _Controlled()
    bodies = _bodies(registry, 3)
    with _app(registry, tmp_path, dev_key_dir, loader=loader) as api:
        loader.mode = "raise"
        assert api.post("/v1/risk", json=bodies[0]).status_code == 200
        assert api.post("/v1/risk/batch", json={"clients": bodies[1:]}).status_code == 200
        assert _shadow(api).wait_idle()
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_shadow_failures_total", reason="error") == 3
    assert not (tmp_path / "data" / "shadow.jsonl").exists()


def test_a_broken_challenger_is_refused_and_the_champion_serves(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    _set_challenger(registry, "2")
    tried: list[str] = []

    def loader(uri: str) -> Scorer:
        if uri.endswith("/2"):
            tried.append(uri)
            raise ValueError("corrupt artifact")
        return load_scorer(uri)

    with _app(registry, tmp_path, dev_key_dir, loader=loader) as api:
        assert api.post("/v1/risk", json=_bodies(registry, 1)[0]).status_code == 200
        assert api.get("/readyz").status_code == 200
        # A refused challenger is not loaded again at every poll, only when its alias moves.
        assert _shadow(api).store.refresh() == "refused"
        assert len(tried) == 1
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_challenger_reloads_total", result="refused") == 2
    assert _total(text, "alliance_risk_challenger_loaded") == 0
    assert _total(text, "alliance_risk_model_loaded") == 1


def test_the_challenger_follows_its_alias(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    with _app(registry, tmp_path, dev_key_dir) as api:
        store = _shadow(api).store
        assert store.current is None
        _set_challenger(registry, "2")
        assert store.refresh() == "loaded" and store.current.version == "2"
        _set_challenger(registry, None)
        assert store.refresh() == "no_alias" and store.current is None
        # The champion is untouched throughout.
        assert api.app.state.store.current.version == "1"  # type: ignore[attr-defined]
        assert api.post("/v1/risk", json=_bodies(registry, 1)[0]).status_code == 200
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_challenger_loaded") == 0
    assert _total(text, "alliance_risk_challenger_info") == 0


def test_shadow_can_be_switched_off(registry: Registry, tmp_path: Path, dev_key_dir: Path) -> None:
    _set_challenger(registry, "2")
    with _app(registry, tmp_path, dev_key_dir, shadow_enabled=False) as api:
        observers = api.app.state.observers  # type: ignore[attr-defined]
        assert not any(isinstance(o, ShadowScorer) for o in observers)
        assert api.post("/v1/risk", json=_bodies(registry, 1)[0]).status_code == 200
    assert not (tmp_path / "data" / "shadow.jsonl").exists()


def test_the_comparison_file_is_capped_by_rotation(tmp_path: Path) -> None:
    log = ComparisonLog(tmp_path / "shadow.jsonl", max_bytes=4096)
    line = json.dumps({"p": 0.5, "pad": "x" * 90})
    for _ in range(200):
        log.write([line])
    log.close()
    assert (tmp_path / "shadow.jsonl").stat().st_size <= 4096 + len(line) + 1
    assert (tmp_path / "shadow.jsonl.1").stat().st_size > 4096
    kept = (tmp_path / "shadow.jsonl.1").read_text() + (tmp_path / "shadow.jsonl").read_text()
    assert all(json.loads(x)["p"] == 0.5 for x in kept.splitlines())


def test_promote_shows_and_records_the_shadow_evidence(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """The file the service wrote is what promote summarises, beside the gates."""
    from typer.testing import CliRunner

    from cli.main import app as cli

    _set_challenger(registry, "2")
    with _app(registry, tmp_path, dev_key_dir) as api:
        assert api.post("/v1/risk/batch", json={"clients": _bodies(registry, 6)}).status_code == 200
        assert _shadow(api).wait_idle()
    log = tmp_path / "data" / "shadow.jsonl"
    result = CliRunner().invoke(
        cli,
        ["promote", "--name", MODEL_NAME, "--version", "2", "--shadow-log", str(log)],
        env={"MLFLOW_TRACKING_URI": registry.uri, "COLUMNS": "200"},
    )
    assert "Shadow comparison: v2 as challenger vs champion v1" in result.output
    assert "informs, does not gate" in result.output
    assert "comparisons" in result.output and "clients compared" not in result.output
    assert "first comparison" in result.output and "last comparison" in result.output
    tags = MlflowClient(registry.uri, registry.uri).get_model_version(MODEL_NAME, "2").tags
    recorded = json.loads(tags["promotion.shadow"])
    assert recorded["comparisons"] == 6 and recorded["champion_version"] == "1"
    assert recorded["model"] == MODEL_NAME and recorded["first_at"] <= recorded["last_at"]
    assert recorded["files"] == ["shadow.jsonl"]
    # Promoted or refused, the gates alone decided (exit 0 or the refusal code).
    assert result.exit_code in (0, 1), result.output


@pytest.mark.integration
def test_two_workers_share_one_comparison_file(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """Each worker loads the challenger and appends whole lines to the same file."""
    import httpx

    from tests.service.serving import serving

    _set_challenger(registry, "2")
    log = tmp_path / "shadow.jsonl"
    env = {"ALLIANCE_RISK_SHADOW_LOG_PATH": str(log), "ALLIANCE_RISK_SHADOW_BATCH_WAIT_S": "0"}
    body = _bodies(registry, 1)[0]
    with serving(registry, tmp_path / "serve", dev_key_dir, workers=2, env=env) as url:
        for _ in range(20):  # a new connection each: both workers take some
            r = httpx.post(f"{url}/v1/risk", json=body, headers=bearer(dev_key_dir), timeout=10)
            assert r.status_code == 200
        text = httpx.get(f"{url}/metrics", timeout=10).text
        assert _total(text, "alliance_risk_challenger_reloads_total", result="loaded") == 2
    lines = _lines(log)  # the workers stopped: every queued comparison was written
    assert len(lines) == 20
    assert {line["challenger_version"] for line in lines} == {"2"}


class _Broken:
    def observe(self, model, scored) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError(f"observer broke on {scored.episodes.client_id[0]}")


def test_a_failing_observer_never_fails_a_built_response(
    registry: Registry, tmp_path: Path, dev_key_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bodies = _bodies(registry, 2)
    with _app(registry, tmp_path, dev_key_dir, shadow_enabled=False) as api:
        api.app.state.observers.insert(0, _Broken())  # type: ignore[attr-defined]
        with caplog.at_level("ERROR"):
            assert api.post("/v1/risk", json=bodies[0]).status_code == 200
            batch = api.post("/v1/risk/batch", json={"clients": bodies})
        assert batch.status_code == 200 and batch.json()["scored"] == 2
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_observer_failures_total", observer="_Broken") == 2
    logged = " ".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records)
    assert "_Broken" in logged and "RuntimeError" in logged
    assert not any(body["client_id"] in logged for body in bodies)
