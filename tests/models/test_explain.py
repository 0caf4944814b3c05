"""Exact TreeSHAP explanations: additivity, calibrated rescaling, grouping, helpers."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_classification

from models.booster import SearchSpace, fit_booster, margin
from models.calibration import (
    SPACE_CALIBRATED,
    SPACE_UNCALIBRATED,
    MarginCalibrator,
    calibrate_probability,
)
from models.explain import (
    Explanation,
    Grouping,
    explain,
    global_importance,
    top_features,
    top_groups,
    tree_contributions,
)

NAMES = [f"f{i}" for i in range(9)]
GROUPS = {
    "goals": np.array([0, 3]),
    "attendance": np.array([1, 2, 8]),
    "bond": np.array([4]),
    "engagement": np.array([5, 6, 7]),
}


@pytest.fixture(scope="module")
def model() -> tuple[xgb.Booster, np.ndarray, np.ndarray, np.ndarray]:
    X, y = make_classification(
        n_samples=1600, n_features=9, n_informative=5, weights=[0.75], random_state=11
    )
    rng = np.random.default_rng(11)
    X[rng.random(X.shape) < 0.15] = np.nan
    fit = fit_booster(
        X[:800],
        y[:800],
        X[800:1100],
        y[800:1100],
        feature_names=NAMES,
        search=SearchSpace(max_rounds=60, early_stopping_rounds=10),
        n_trials=1,
    )
    return fit.booster, X[1100:1400], y[1100:1400], X[1400:]


@pytest.fixture(scope="module")
def sigmoid_params(model: tuple) -> dict:
    booster, X_cal, y_cal, _ = model
    return MarginCalibrator(method="sigmoid").fit(margin(booster, X_cal), y_cal).to_dict()


@pytest.fixture(scope="module")
def isotonic_params(model: tuple) -> dict:
    booster, X_cal, y_cal, _ = model
    return MarginCalibrator(method="isotonic").fit(margin(booster, X_cal), y_cal).to_dict()


def test_tree_contributions_add_up_to_the_margin(model: tuple) -> None:
    booster, _, _, X = model
    phi, bias = tree_contributions(booster, X)
    assert phi.shape == X.shape and bias.shape == (X.shape[0],)
    np.testing.assert_allclose(phi.sum(axis=1) + bias, margin(booster, X), rtol=0, atol=1e-5)
    # NaN is "missing", not a value: rows with missing features are explained too.
    assert np.isnan(X).any() and np.all(np.isfinite(phi))
    with pytest.raises(ValueError, match="9 columns"):
        tree_contributions(booster, X[:, :-1])


def test_sigmoid_explanation_is_exact_in_calibrated_log_odds(
    model: tuple, sigmoid_params: dict
) -> None:
    booster, _, _, X = model
    e = explain(booster, sigmoid_params, X, feature_names=NAMES, groups=GROUPS)
    assert e.space == SPACE_CALIBRATED
    np.testing.assert_allclose(
        e.base_logit + e.group_contributions.sum(axis=1), e.logit, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(
        e.base_logit + e.feature_contributions.sum(axis=1), e.logit, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-e.logit)), e.probability, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        1.0 / (1.0 + np.exp(-e.base_logit)), e.base_probability, rtol=0, atol=1e-12
    )
    # The explained probability is the scorer's probability (float32 margin rounding only).
    expected = calibrate_probability(margin(booster, X), sigmoid_params)
    np.testing.assert_allclose(e.probability, expected, rtol=0, atol=1e-5)
    phi, bias = tree_contributions(booster, X)
    slope, intercept = sigmoid_params["slope"], sigmoid_params["intercept"]
    np.testing.assert_allclose(e.feature_contributions, slope * phi, rtol=1e-12)
    np.testing.assert_allclose(e.base_logit, slope * bias + intercept, rtol=1e-12)
    # The base is the same population starting point for every row.
    assert np.ptp(e.base_logit) < 1e-9


def test_group_contributions_are_signed_sums_of_their_features(
    model: tuple, sigmoid_params: dict
) -> None:
    booster, _, _, X = model
    e = explain(booster, sigmoid_params, X, feature_names=NAMES, groups=GROUPS)
    assert e.group_names == tuple(GROUPS)
    for j, cols in enumerate(GROUPS.values()):
        signed = e.feature_contributions[:, cols].sum(axis=1)
        np.testing.assert_allclose(e.group_contributions[:, j], signed, rtol=0, atol=1e-12)
    # Absolute sums would differ wherever a group's features pull in opposite directions.
    goals_abs = np.abs(e.feature_contributions[:, GROUPS["goals"]]).sum(axis=1)
    assert np.any(np.abs(goals_abs - np.abs(e.group_contributions[:, 0])) > 1e-6)


def test_isotonic_explanation_adds_up_in_the_labelled_margin(
    model: tuple, isotonic_params: dict
) -> None:
    booster, _, _, X = model
    e = explain(booster, isotonic_params, X, feature_names=NAMES, groups=GROUPS)
    assert e.space == SPACE_UNCALIBRATED
    np.testing.assert_allclose(
        e.base_logit + e.group_contributions.sum(axis=1), e.logit, rtol=0, atol=1e-6
    )
    np.testing.assert_allclose(e.logit, margin(booster, X), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(e.probability, calibrate_probability(e.logit, isotonic_params))
    assert np.all((e.probability > 0) & (e.probability < 1))


def test_accepts_fitted_calibrator_and_prebuilt_grouping(
    model: tuple, sigmoid_params: dict
) -> None:
    booster, _, _, X = model
    calibrator = MarginCalibrator.from_dict(sigmoid_params)
    grouping = Grouping.build(GROUPS, NAMES)
    a = explain(booster, sigmoid_params, X, feature_names=NAMES, groups=GROUPS)
    b = explain(booster, calibrator, X, feature_names=NAMES, groups=grouping)
    np.testing.assert_array_equal(a.group_contributions, b.group_contributions)
    np.testing.assert_array_equal(a.probability, b.probability)
    other = Grouping.build(GROUPS, NAMES[::-1])
    with pytest.raises(ValueError, match="different feature list"):
        explain(booster, calibrator, X, feature_names=NAMES, groups=other)


def test_explanation_arrays_are_read_only(model: tuple, sigmoid_params: dict) -> None:
    booster, _, _, X = model
    e = explain(booster, sigmoid_params, X[:3], feature_names=NAMES, groups=GROUPS)
    with pytest.raises(ValueError, match="read-only"):
        e.probability[0] = 0.5


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ({"a": np.arange(8)}, "'f8' belongs to no group"),
        ({"a": np.arange(9), "b": np.array([2])}, "'f2' belongs to more than one group"),
        ({"a": np.array([0, 0, *range(1, 9)])}, "'f0' belongs to more than one group"),
        ({"a": np.arange(9), "b": np.array([9])}, "group 'b' has a column position outside"),
        ({}, "must not be empty"),
    ],
)
def test_groups_must_partition_the_features(
    model: tuple, sigmoid_params: dict, groups: dict, message: str
) -> None:
    booster, _, _, X = model
    with pytest.raises(ValueError, match=message):
        explain(booster, sigmoid_params, X[:2], feature_names=NAMES, groups=groups)


def test_feature_order_must_match_the_booster(model: tuple, sigmoid_params: dict) -> None:
    booster, _, _, X = model
    with pytest.raises(ValueError, match="booster's column order"):
        explain(booster, sigmoid_params, X[:2], feature_names=NAMES[::-1], groups=GROUPS)
    with pytest.raises(ValueError, match="9 columns"):
        explain(booster, sigmoid_params, X[:2, :8], feature_names=NAMES, groups=GROUPS)


def _toy() -> Explanation:
    contributions = np.array([[0.3, -0.5, 0.1], [0.0, 0.2, -0.2]])
    groups = np.array([[0.3, -0.4], [0.2, -0.2]])
    logit = np.array([-1.0, -1.0]) + contributions.sum(axis=1)
    return Explanation(
        space=SPACE_CALIBRATED,
        base_logit=np.array([-1.0, -1.0]),
        base_probability=1 / (1 + np.exp([1.0, 1.0])),
        feature_contributions=contributions,
        group_contributions=groups,
        feature_names=("a", "b", "c"),
        group_names=("g1", "g2"),
        logit=logit,
        probability=1 / (1 + np.exp(-logit)),
    )


def test_top_helpers_rank_by_magnitude_and_keep_sign() -> None:
    e = _toy()
    assert top_features(e, 0, k=2) == [("b", -0.5), ("a", 0.3)]
    assert top_features(e, 0) == [("b", -0.5), ("a", 0.3), ("c", 0.1)]
    assert top_groups(e, 0, k=1) == [("g2", -0.4)]
    # Ties keep column order.
    assert top_groups(e, 1) == [("g1", 0.2), ("g2", -0.2)]
    assert top_features(e, 1, k=0) == []
    with pytest.raises(ValueError, match="k must be"):
        top_groups(e, 0, k=-1)


def test_global_importance_is_mean_absolute_group_total() -> None:
    imp = global_importance(_toy())
    assert list(imp.index) == ["g2", "g1"]
    assert imp["g1"] == pytest.approx(0.25) and imp["g2"] == pytest.approx(0.3)
    assert imp.name == "mean_abs_contribution"


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.integers(0, 199), min_size=1, max_size=12))
def test_a_row_is_explained_the_same_alone_or_in_any_batch(
    model: tuple, sigmoid_params: dict, rows: list[int]
) -> None:
    booster, _, _, X = model
    batch = explain(booster, sigmoid_params, X[rows], feature_names=NAMES, groups=GROUPS)
    alone = explain(booster, sigmoid_params, X[rows[0]], feature_names=NAMES, groups=GROUPS)
    np.testing.assert_allclose(batch.group_contributions[0], alone.group_contributions[0])
    np.testing.assert_allclose(batch.probability[0], alone.probability[0])
    assert np.all((batch.probability >= 0) & (batch.probability <= 1))
