"""Live drift gauges per clinic on /metrics: rolling windows judged against the reference."""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from models.drift import PSI_ALERT
from service.episodes import to_episodes
from service.schemas import RiskRequest
from tests.service.conftest import MODEL_NAME, Registry, bearer, security_settings
from tests.service.helpers import request_for
from tests.service.serving import serving
from tests.service.test_metrics import _samples, _total

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _app(registry: Registry, tmp_path: Path, key_dir: Path, **extra: Any) -> Iterator[TestClient]:
    from service.app import create_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion",
        tracking_uri=registry.uri,
        poll_interval_s=0,
        drift_interval_s=3600,  # the test recomputes when it wants to
        **extra,
    )
    app = create_app(settings, configure_logs=False,
                     **security_settings(key_dir, tmp_path / "audit"))  # fmt: skip
    with TestClient(app) as client:
        yield client


def _drift(api: TestClient):
    (windows,) = [o for o in api.app.state.observers if hasattr(o, "recompute")]  # type: ignore[attr-defined]
    return windows


def _traffic(
    registry: Registry,
    clinic: str,
    n: int,
    *,
    shift: float = 0.0,
    seed: int = 0,
    full: bool = False,
    first: int = 0,
):
    """``n`` clients (from the ``first``-th) as live traffic: each history cut at a random
    appointment (open episodes, as a clinic sends them) unless ``full``, every rating moved by
    ``shift`` points within the scale."""
    rng = np.random.default_rng(seed)
    profile = registry.cohort.profile
    bodies = []
    for cid in registry.cohort.clients["client_id"].iloc[first : first + n]:
        body = copy.deepcopy(request_for(registry.cohort, str(cid), clinic=clinic))
        if not full:
            body["sessions"] = body["sessions"][: int(rng.integers(1, len(body["sessions"]) + 1))]
        for s in body["sessions"]:
            s["ratings"] = {
                e: float(np.clip(v + shift, profile.scale_min, profile.scale_max))
                for e, v in s["ratings"].items()
            }
        bodies.append(body)
    return bodies


def _send(api: TestClient, key_dir: Path, clinic: str, bodies: list[dict[str, Any]]) -> None:
    for start in range(0, len(bodies), 100):
        r = api.post("/v1/risk/batch", json={"clients": bodies[start : start + 100]},
                     headers=bearer(key_dir, clinic=clinic))  # fmt: skip
        assert r.status_code == 200 and r.json()["failed"] == 0


def test_a_shifted_clinic_alerts_and_a_steady_one_does_not(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    with _app(registry, tmp_path, dev_key_dir, drift_window_clients=300) as api:
        _send(api, dev_key_dir, "steady", _traffic(registry, "steady", 300, seed=1))
        _send(api, dev_key_dir, "shifted", _traffic(registry, "shifted", 300, shift=-1.0, seed=2))
        _drift(api).recompute()
        text = api.get("/metrics").text
    psi = {
        (dict(labels)["clinic"], dict(labels)["group"]): value
        for (name, labels), value in _samples(text).items()
        if name == "alliance_risk_drift_psi"
    }
    steady = {g: v for (c, g), v in psi.items() if c == "steady"}
    shifted = {g: v for (c, g), v in psi.items() if c == "shifted"}
    assert "score" in steady and set(steady) == set(shifted)
    assert max(steady.values()) < PSI_ALERT, steady
    assert max(shifted.values()) > PSI_ALERT, shifted
    assert _total(text, "alliance_risk_drift_status", clinic="shifted") > 0
    assert _total(text, "alliance_risk_drift_window_rows", clinic="steady") == 300


def test_the_window_and_the_clinics_are_bounded(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    settings = {"drift_window_clients": 50, "drift_max_clinics": 2, "drift_min_clients": 40}
    with _app(registry, tmp_path, dev_key_dir, **settings) as api:
        for clinic in ("a", "b", "c"):
            _send(api, dev_key_dir, clinic, _traffic(registry, clinic, 120))
        _drift(api).recompute()
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_drift_window_rows", clinic="a") == 50
    assert _total(text, "alliance_risk_drift_window_rows", clinic="b") == 50
    assert not any(dict(labels).get("clinic") == "c" for (_, labels) in _samples(text))
    assert _total(text, "alliance_risk_drift_untracked_rows_total") == 120


def test_a_client_scored_again_counts_once(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    with _app(registry, tmp_path, dev_key_dir) as api:
        bodies = _traffic(registry, "again", 30)
        for _ in range(3):  # a dashboard refreshing the same caseload
            _send(api, dev_key_dir, "again", bodies)
        _drift(api).recompute()
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_drift_window_rows", clinic="again") == 30


def test_rows_older_than_the_time_span_leave_the_window(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    settings = {"drift_window_max_age_s": 0.5, "drift_min_clients": 10}
    with _app(registry, tmp_path, dev_key_dir, **settings) as api:
        _send(api, dev_key_dir, "old", _traffic(registry, "old", 20, shift=-2.0))
        _drift(api).recompute()
        before = api.get("/metrics").text
        time.sleep(0.6)
        _drift(api).recompute()
        after = api.get("/metrics").text
    assert _total(before, "alliance_risk_drift_window_rows", clinic="old") == 20
    assert _total(before, "alliance_risk_drift_psi", clinic="old", group="score") > 0
    assert _total(after, "alliance_risk_drift_window_rows", clinic="old") == 0
    assert _total(after, "alliance_risk_drift_psi", clinic="old") == 0


def test_a_small_window_is_not_judged(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    with _app(registry, tmp_path, dev_key_dir) as api:
        _send(api, dev_key_dir, "small", _traffic(registry, "small", 30, shift=-2.0))
        _drift(api).recompute()
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_drift_window_rows", clinic="small") == 30
    assert _total(text, "alliance_risk_drift_psi", clinic="small") == 0
    assert _total(text, "alliance_risk_drift_status", clinic="small") == 0


def _gauges(text: str, clinic: str) -> dict[tuple[str, str], float]:
    return {
        (name, dict(labels).get("group", "")): value
        for (name, labels), value in _samples(text).items()
        if name.startswith("alliance_risk_drift_") and dict(labels).get("clinic") == clinic
    }


def test_a_model_change_zeroes_the_gauges_of_a_clinic_gone_quiet(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """The new model has no window for the quiet clinic yet: its old alert must not linger."""
    with _app(registry, tmp_path, dev_key_dir, drift_min_clients=20) as api:
        _send(api, dev_key_dir, "quiet", _traffic(registry, "quiet", 40, shift=-2.0))
        windows = _drift(api)
        windows.recompute()
        before = _gauges(api.get("/metrics").text, "quiet")
        served = api.app.state.store.current  # type: ignore[attr-defined]
        new = dataclasses.replace(served, version="99")
        episodes = to_episodes(
            [RiskRequest.model_validate(b) for b in _traffic(registry, "busy", 30, first=100)],
            new.scorer.profile,
        ).episodes
        windows.observe(new, new.scorer.score(episodes))
        windows.recompute()
        after = _gauges(api.get("/metrics").text, "quiet")
    assert any(v > 0 for (name, _), v in before.items() if name == "alliance_risk_drift_status")
    assert {k for k, v in after.items() if v != 0} == set(), after
    assert set(before) <= set(after)  # zeroed, not left at their old values
    assert before[("alliance_risk_drift_judged", "")] == 1


def test_refreshing_a_few_clients_keeps_the_others_in_the_window(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """A dashboard refreshing ten clients must not push the clinic's other clients out (which
    put it under drift_min_clients: gauges at 0, a real alert erased)."""
    settings = {"drift_window_clients": 100, "drift_min_clients": 20}
    with _app(registry, tmp_path, dev_key_dir, **settings) as api:
        bodies = _traffic(registry, "k", 40, shift=-2.0)
        _send(api, dev_key_dir, "k", bodies)
        for _ in range(10):
            _send(api, dev_key_dir, "k", bodies[:10])
        _drift(api).recompute()
        text = api.get("/metrics").text
    assert _total(text, "alliance_risk_drift_window_rows", clinic="k") == 40
    assert _total(text, "alliance_risk_drift_judged", clinic="k") == 1
    assert _total(text, "alliance_risk_drift_status", clinic="k") > 0


def test_the_least_recently_scored_client_leaves_first(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    settings = {"drift_window_clients": 30, "drift_min_clients": 10}
    with _app(registry, tmp_path, dev_key_dir, **settings) as api:
        shifted = _traffic(registry, "lru", 20, shift=-2.0)
        steady = _traffic(registry, "lru", 20, first=20, seed=3)
        _send(api, dev_key_dir, "lru", shifted + steady)  # 40 clients: the first 10 leave
        _send(api, dev_key_dir, "lru", shifted[10:])  # scored again: now the most recent
        _send(api, dev_key_dir, "lru", _traffic(registry, "lru", 10, first=40, seed=4))
        windows = _drift(api)
        with windows._lock:
            (window,) = windows._windows.values()
            kept = list(window.clients)
    # The 10 refreshed shifted clients stayed; the 10 oldest steady ones left.
    keys = [hash(b["client_id"]) for b in shifted + steady]
    assert kept[-20:-10] == keys[10:20]
    assert not set(keys[:10] + keys[20:30]) & set(kept)
    assert len(kept) == 30 and window.n_rows <= 30 * 20


def test_full_histories_of_a_steady_clinic_do_not_alert(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """Requests of complete histories (beyond k_max, ended episodes) are judged at the
    reference's landmarks, as monitor does: no alert without drift, an alert with it."""
    with _app(registry, tmp_path, dev_key_dir, drift_window_clients=300) as api:
        _send(api, dev_key_dir, "full", _traffic(registry, "full", 300, full=True))
        _send(api, dev_key_dir, "moved", _traffic(registry, "moved", 300, shift=-1.0, full=True))
        _drift(api).recompute()
        text = api.get("/metrics").text
    full, moved = _gauges(text, "full"), _gauges(text, "moved")
    status = {g: v for (name, g), v in full.items() if name == "alliance_risk_drift_status"}
    assert status and max(status.values()) < 2, full
    assert max(v for (name, _), v in moved.items() if name == "alliance_risk_drift_status") == 2
    assert full[("alliance_risk_drift_judged", "")] == 1


def test_a_window_is_scored_in_passes_of_bounded_size_with_the_same_gauges(
    registry: Registry, tmp_path: Path, dev_key_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recomputation scores a window a few clients at a time and counts each pass's rows
    into the reference's bins, never holding the window's rows (its transient memory is a
    pass's, not the window's: +23 MB at 500 clients in one pass put a worker over 400 MB; a
    buffer for the window's rows, 7 MB more), and judges the counts as one pass over the whole
    window would: the same gauges, exactly."""
    from models import drift as drift_rule
    from models.drift import drift_report
    from models.scorer import Scorer
    from service import drift_window

    n = 2 * drift_window.PASS_CLIENTS + 10  # two full passes and a partial one
    settings = {"drift_window_clients": n, "drift_min_clients": 100}
    with _app(registry, tmp_path, dev_key_dir, **settings) as api:
        _send(api, dev_key_dir, "p", _traffic(registry, "p", n, shift=-1.0, seed=5))
        windows = _drift(api)
        passes: list[int] = []
        pass_rows: list[int] = []
        binned: list[int] = []  # rows of each column the drift rule binned at once
        score, bins = Scorer.score, drift_rule.drift_bins

        def counted(self: Scorer, episodes: Any, **kwargs: Any) -> Any:
            scored = score(self, episodes, **kwargs)
            if kwargs.get("landmarks") == "training":
                passes.append(episodes.n_episodes)
                pass_rows.append(scored.n_rows)
            return scored

        def binning(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
            binned.append(values.shape[0])
            return bins(edges, values)

        monkeypatch.setattr(Scorer, "score", counted)
        monkeypatch.setattr(drift_rule, "drift_bins", binning)
        windows.recompute()
        monkeypatch.setattr(Scorer, "score", score)
        monkeypatch.setattr(drift_rule, "drift_bins", bins)
        text = api.get("/metrics").text
        model = windows._model
        with windows._lock:
            histories = windows._windows["p"].histories(-np.inf)
    assert passes == [drift_window.PASS_CLIENTS, drift_window.PASS_CLIENTS, 10]
    # The window's rows never meet: each column is binned a pass's rows at a time.
    assert binned and max(binned) <= max(pass_rows) < sum(pass_rows)
    assert sum(binned) == sum(pass_rows) * len(model.scorer.registry.features)
    scorer = model.scorer
    whole = scorer.score(drift_window._episodes(histories, scorer.profile, "p"),
                         landmarks="training", explain=False)  # fmt: skip
    expected = drift_report(scorer.reference, scorer.registry, whole.features,
                            whole.probability, clinic="p", n_clients=n,
                            min_clients=100)  # fmt: skip
    gauges = _gauges(text, "p")
    for group, drift in (("score", expected.score), *expected.groups.items()):
        assert gauges[("alliance_risk_drift_psi", group)] == drift.psi
        assert gauges[("alliance_risk_drift_ks", group)] == drift.ks
    assert gauges[("alliance_risk_drift_judged", "")] == 1


def test_the_alert_rules_file_is_valid_and_names_exported_metrics(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    rules = yaml.safe_load((ROOT / "docs" / "prometheus-alerts.yml").read_text())
    with _app(registry, tmp_path, dev_key_dir, drift_min_clients=10) as api:
        _send(api, dev_key_dir, "x", _traffic(registry, "x", 20))
        _drift(api).recompute()
        text = api.get("/metrics").text
    # Every series /metrics declares (HELP and TYPE), observed yet or not, with its suffixes.
    suffixes = {"counter": ("_total",), "histogram": ("_count", "_sum", "_bucket"), "gauge": ("",)}
    names = {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in suffixes.get(family.type, ("",))
    }
    exprs = []
    for group in rules["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert rule["alert"] and rule["expr"] and rule["annotations"]["summary"]
            exprs.append(rule["expr"])
    used = {word for expr in exprs for word in re.findall(r"alliance_risk_[a-z_]+", expr)}
    assert used and used <= names, used - names


def test_drift_rules_read_the_status_not_raw_psi() -> None:
    """Raw PSI ignores the 'beyond chance' rule of models/drift.py (a small clinic's PSI is large
    by chance); the status carries it. And a window that stays too small is reported."""
    rules = yaml.safe_load((ROOT / "docs" / "prometheus-alerts.yml").read_text())
    (drift,) = [g for g in rules["groups"] if g["name"] == "alliance-risk-drift"]
    exprs = {rule["alert"]: rule["expr"] for rule in drift["rules"]}
    assert not any("alliance_risk_drift_psi" in e or "alliance_risk_drift_ks" in e
                   for e in exprs.values()), exprs  # fmt: skip
    assert re.search(
        r"alliance_risk_drift_status\{group=\"score\"\} >= 2", exprs["AllianceRiskScoreDrift"]
    )
    assert re.search(r"alliance_risk_drift_status\b.*== 1", exprs["AllianceRiskDriftWatch"])
    assert any("alliance_risk_drift_judged" in e for e in exprs.values())


@pytest.mark.integration
def test_gauges_add_up_across_workers(
    registry: Registry, tmp_path: Path, dev_key_dir: Path
) -> None:
    """Two workers, each its own window: rows add up, PSI is there (the largest of them)."""
    env = {"ALLIANCE_RISK_DRIFT_INTERVAL_S": "0.2", "ALLIANCE_RISK_DRIFT_MIN_CLIENTS": "5"}
    bodies = _traffic(registry, "clinic-mp", 24)
    with serving(registry, tmp_path / "serve", dev_key_dir, workers=2, env=env) as url:
        for body in bodies:  # a new connection each: both workers take some
            r = httpx.post(f"{url}/v1/risk", json=body,
                           headers=bearer(dev_key_dir, clinic="clinic-mp"), timeout=10)  # fmt: skip
            assert r.status_code == 200
        time.sleep(1.0)  # a few recomputations
        for _ in range(4):  # whichever worker answers the scrape
            text = httpx.get(f"{url}/metrics", timeout=10).text
            assert _total(text, "alliance_risk_drift_window_rows", clinic="clinic-mp") == 24
            assert ("alliance_risk_drift_psi", (("clinic", "clinic-mp"), ("group", "score"))) in (
                _samples(text)
            )
