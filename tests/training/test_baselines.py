"""Baselines: the logistic model and the clinic alert rule use the registry's own columns."""

from __future__ import annotations

import numpy as np
import pytest

from features.build import build_features
from features.profiles import get_profile
from features.registry import feature_registry
from training.baselines import fit_alert_rule, fit_logistic, logistic_columns, rule_columns
from training.metrics import auroc
from training.simulate import simulate_cohort


@pytest.fixture(scope="module")
def data():
    cohort = simulate_cohort(1500, seed=5)
    profile = get_profile("alliance6")
    frame = build_features(cohort.sessions, cohort.clients, profile=profile, landmarks="training")
    outcome = cohort.clients.set_index("client_id")["outcome"].reindex(
        frame.index.get_level_values(0)
    )
    keep = (outcome != "ongoing").to_numpy()
    return (
        feature_registry(profile),
        frame.to_numpy()[keep],
        (outcome == "dropout").to_numpy(float)[keep],
    )


def test_logistic_uses_early_alliance_and_attendance_only(data) -> None:
    registry, _, _ = data
    names = [registry.names[i] for i in logistic_columns(registry)]
    assert "alliance_overall_early_mean" in names and "goals_early_mean" in names
    assert "attendance_no_show_count" in names
    assert not any(n.endswith("_slope") or n.startswith("engagement_") for n in names)


def test_alert_rule_inputs_are_cutoff_drop_and_no_show(data) -> None:
    registry, _, _ = data
    names = [registry.names[i] for i in rule_columns(registry)]
    assert names == [
        "alliance_overall_below_cutoff",
        "alliance_overall_drop_alert",
        "attendance_no_show_count",
    ]


def test_baselines_beat_chance_and_rule_rates_are_observed(data) -> None:
    registry, X, y = data
    logistic = fit_logistic(registry, X, y)
    rule = fit_alert_rule(registry, X, y)
    assert auroc(y, logistic.predict_proba(X)) > 0.6
    flagged = rule.flag(X) == 1
    assert rule.rate_flagged == pytest.approx(y[flagged].mean())
    assert rule.rate_unflagged == pytest.approx(y[~flagged].mean())
    # Flagged clients drop out more often: the rule carries real signal on simulated data.
    assert rule.rate_flagged > rule.rate_unflagged
    p = rule.predict_proba(X)
    assert set(np.unique(p)) <= {rule.rate_flagged, rule.rate_unflagged}
