"""Drift against the reference profile: PSI, KS and the status of features, groups and score."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from features.profiles import ALLIANCE6
from features.registry import feature_registry
from models.drift import (
    KS_ALERT,
    MIN_ROWS,
    PSI_ALERT,
    PSI_WATCH,
    Drift,
    drift_report,
    ks_critical,
    psi,
    worst_status,
)
from models.reference import ReferenceProfile, TypicalLevels, distribution_profile

REGISTRY = feature_registry(ALLIANCE6)
N_FEATURES = len(REGISTRY.features)


def _draw(n: int, seed: int, *, shift: dict[str, float] | None = None, missing: float = 0.1):
    """Synthetic rows: continuous, integer (ties) and partly missing columns, and a score."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, N_FEATURES))
    X[:, ::3] = rng.poisson(2.0, size=(n, X[:, ::3].shape[1]))  # discrete: tied quantiles
    X[:, 1::5][rng.random((n, X[:, 1::5].shape[1])) < missing] = np.nan
    for group, by in (shift or {}).items():
        if group != "score":
            X[:, REGISTRY.index_of_group[group]] += by
    p = 1 / (1 + np.exp(-(-1.5 + 0.8 * rng.normal(size=n) + (shift or {}).get("score", 0.0))))
    return X, p


def _profile(X: np.ndarray, p: np.ndarray) -> dict:
    bands = np.where(p > 0.5, "high", np.where(p > 0.2, "moderate", "low"))
    scored = SimpleNamespace(
        n_rows=X.shape[0],
        scorer=SimpleNamespace(registry=REGISTRY),
        features=X,
        probability=p,
        risk_band=bands,
        episode=np.arange(X.shape[0]),
    )
    return distribution_profile(scored)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference() -> ReferenceProfile:
    typical = TypicalLevels(k_max=1, min_clients=1, overall={}, clinics={})
    return ReferenceProfile(distribution=_profile(*_draw(5000, 0)), typical=typical, rows="test")


def test_the_same_distribution_drifts_little(reference) -> None:
    report = drift_report(reference, REGISTRY, *_draw(2000, 1))
    assert report.status == "ok"
    assert max(d.psi for d in report.features.values()) < PSI_WATCH / 2
    assert report.score.psi < PSI_WATCH / 2 and report.score.status == "ok"
    assert all(d.n == 2000 for d in report.features.values())
    assert list(report.groups) == list(REGISTRY.groups)
    assert list(report.features) == list(REGISTRY.names)


def test_a_shifted_group_and_score_alert_and_the_others_do_not(reference) -> None:
    group = ALLIANCE6.element_names[0]
    report = drift_report(reference, REGISTRY, *_draw(2000, 2, shift={group: 1.0, "score": 1.0}))
    assert report.groups[group].status == "alert" and report.groups[group].psi >= PSI_ALERT
    assert report.groups[group].ks >= KS_ALERT
    assert report.score.status == "alert"
    assert all(d.status == "ok" for g, d in report.groups.items() if g != group)
    assert report.status == "alert"


def test_a_group_is_its_worst_feature(reference) -> None:
    report = drift_report(reference, REGISTRY, *_draw(1000, 3, shift={"attendance": 0.3}))
    for g, positions in REGISTRY.index_of_group.items():
        members = [report.features[REGISTRY.features[j].name] for j in positions]
        assert report.groups[g].psi == max(d.psi for d in members)
        assert report.groups[g].ks == max(d.ks for d in members)
        assert report.groups[g].status == worst_status(members)


def test_too_few_rows_are_reported_but_not_judged(reference) -> None:
    group = ALLIANCE6.element_names[0]
    report = drift_report(reference, REGISTRY, *_draw(50, 4, shift={group: 3.0}))
    assert report.groups[group].psi > PSI_ALERT  # computed...
    assert report.status == "too_few"  # ...but not judged
    assert all(d.status == "too_few" for d in (report.score, *report.features.values()))
    empty = drift_report(reference, REGISTRY, np.empty((0, N_FEATURES)), np.empty(0))
    assert empty.score.n == 0 and math.isnan(empty.score.psi) and empty.status == "too_few"
    lowered = drift_report(reference, REGISTRY, *_draw(50, 4), min_rows=10)
    assert lowered.score.status != "too_few"


def test_missing_values_are_a_bin_of_their_own(reference) -> None:
    X, p = _draw(2000, 5, missing=0.5)
    report = drift_report(reference, REGISTRY, X, p)
    partly_missing = REGISTRY.names[1]
    assert report.features[partly_missing].status == "alert"
    # Among the values that are there nothing changed: KS compares finite values only.
    assert report.features[partly_missing].ks < 0.05
    assert report.features[REGISTRY.names[0]].status == "ok"


def test_discrete_features_with_tied_quantiles_do_not_drift_by_themselves(reference) -> None:
    report = drift_report(reference, REGISTRY, *_draw(2000, 6))
    discrete = REGISTRY.names[0::3]
    assert max(report.features[f].psi for f in discrete) < PSI_WATCH / 2


def test_every_form_of_the_reference_gives_the_same_report(reference) -> None:
    X, p = _draw(500, 7)
    as_dict = json.loads(json.dumps(reference.to_dict()))
    base = drift_report(reference, REGISTRY, X, p)
    assert drift_report(as_dict, REGISTRY, X, p) == base
    assert drift_report(as_dict["distribution"], REGISTRY, X, p) == base
    loaded = ReferenceProfile.from_dict(as_dict)
    assert drift_report(loaded, REGISTRY, X, p) == base


def test_a_version_1_profile_still_loads_and_judges_from_its_quantiles(reference) -> None:
    old = json.loads(json.dumps(reference.to_dict()))
    old["format_version"] = 1
    for group in old["distribution"]["features"].values():
        for entry in group.values():
            del entry["edges"], entry["shares"]
    loaded = ReferenceProfile.from_dict(old)
    assert loaded.format_version == 1 and loaded.to_dict() == old
    same = drift_report(loaded, REGISTRY, *_draw(2000, 8))
    continuous = [f for i, f in enumerate(REGISTRY.names) if i % 3 and i % 5 != 1]
    assert max(same.features[f].psi for f in continuous) < PSI_WATCH
    group = ALLIANCE6.element_names[0]
    shifted = drift_report(loaded, REGISTRY, *_draw(2000, 8, shift={group: 1.0}))
    assert shifted.groups[group].status == "alert"


def test_psi_and_ks_critical_values() -> None:
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert psi(np.array([0.75, 0.25]), np.array([0.5, 0.5])) == pytest.approx(
        0.25 * math.log(1.5) + 0.25 * math.log(2), rel=1e-12
    )
    assert math.isfinite(psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])))
    # Kolmogorov: c(0.05) = 1.358.
    assert ks_critical(100, 10**9, level=0.05) == pytest.approx(0.1358, abs=1e-4)
    assert ks_critical(0, 10) == math.inf


def test_worst_status_ignores_too_few_unless_all_are() -> None:
    d = {s: Drift(psi=0.0, ks=0.0, n=MIN_ROWS, status=s) for s in ("ok", "watch", "alert")}
    few = Drift(psi=0.0, ks=0.0, n=1, status="too_few")
    assert worst_status([d["ok"], d["watch"], few]) == "watch"
    assert worst_status([d["alert"], d["watch"]]) == "alert"
    assert worst_status([few]) == "too_few" and worst_status([]) == "too_few"


def test_shapes_and_features_must_match_the_registry(reference) -> None:
    X, p = _draw(10, 9)
    with pytest.raises(ValueError, match="registry order"):
        drift_report(reference, REGISTRY, X[:, 1:], p)
    with pytest.raises(ValueError, match="registry order"):
        drift_report(reference, REGISTRY, X, p[1:])
    other = feature_registry(ALLIANCE6, include_covariates=True)
    with pytest.raises(ValueError, match="no feature"):
        drift_report(reference, other, np.zeros((10, len(other.features))), p)
