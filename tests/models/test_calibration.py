"""Margin calibration: agreement with scikit-learn, method choice, fast path, serialisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import make_classification
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression

from models.booster import SearchSpace, fit_booster, margin
from models.calibration import (
    EPS,
    LANDMARK_PENALTIES,
    SPACE_CALIBRATED,
    SPACE_UNCALIBRATED,
    MarginCalibrator,
    calibrate_logit,
    calibrate_probability,
)


def _logistic(
    n: int, slope: float, intercept: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Margins whose true calibrated log-odds are slope * margin + intercept."""
    rng = np.random.default_rng(seed)
    m = rng.normal(0.0, 1.5, n)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(slope * m + intercept)))).astype(int)
    return m, y


def _plateaus(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A step-shaped risk no sigmoid can follow: 2%, 50%, 98%."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-3, 3, n)
    p = np.select([m < -1, m < 1], [0.02, 0.5], 0.98)
    return m, (rng.random(n) < p).astype(int)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_matches_sklearn_calibrated_classifier_on_a_prefit_model(method: str) -> None:
    X, y = make_classification(n_samples=1500, n_features=6, random_state=3)
    clf = LogisticRegression().fit(X[:500], y[:500])
    reference = CalibratedClassifierCV(FrozenEstimator(clf), method=method)
    reference.fit(X[500:1000], y[500:1000])
    ours = MarginCalibrator(method=method).fit(clf.decision_function(X[500:1000]), y[500:1000])
    got = ours.predict_proba(clf.decision_function(X[1000:]))
    expected = reference.predict_proba(X[1000:])
    if method == "isotonic":
        expected = np.clip(expected, EPS, 1 - EPS)
    np.testing.assert_allclose(got[:, 1], expected[:, 1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0)


def test_sigmoid_recovers_slope_and_intercept_with_sign_convention() -> None:
    m, y = _logistic(8000, slope=0.5, intercept=-1.0)
    cal = MarginCalibrator(method="sigmoid").fit(m, y)
    # Standard errors at n = 8000 are about 0.02 (slope) and 0.03 (intercept).
    assert cal.slope_ == pytest.approx(0.5, abs=0.07)
    assert cal.intercept_ == pytest.approx(-1.0, abs=0.1)
    # scikit-learn's p = 1 / (1 + exp(a f + b)): a and b are the negatives.
    assert cal.a_ == -cal.slope_ and cal.b_ == -cal.intercept_
    np.testing.assert_allclose(cal.predict_logit(m), cal.slope_ * m + cal.intercept_)
    p = cal.predict_proba(m)[:, 1]
    np.testing.assert_allclose(p, 1.0 / (1.0 + np.exp(-cal.predict_logit(m))), atol=1e-12)
    assert cal.explanation_space_ == SPACE_CALIBRATED


def test_auto_prefers_sigmoid_on_logistic_data() -> None:
    m, y = _logistic(3000, slope=0.7, intercept=0.3)
    cal = MarginCalibrator(random_state=0).fit(m, y)
    assert cal.method_ == "sigmoid"
    assert cal.cv_scores_["n_folds"] == 5
    assert set(cal.cv_scores_["sigmoid"]) == {"brier", "log_loss"}


def test_auto_picks_isotonic_when_it_clearly_wins() -> None:
    m, y = _plateaus(3000)
    cal = MarginCalibrator(random_state=0).fit(m, y)
    assert cal.method_ == "isotonic"
    scores = cal.cv_scores_
    assert scores["sigmoid"]["brier"] - scores["isotonic"]["brier"] > 0.0005
    assert cal.explanation_space_ == SPACE_UNCALIBRATED


def test_grouped_folds_and_too_few_events() -> None:
    m, y = _logistic(1000, slope=1.0, intercept=0.0)
    clients = np.repeat(np.arange(250), 4)
    cal = MarginCalibrator(random_state=0).fit(m, y, groups=clients)
    assert cal.cv_scores_["n_folds"] == 5
    y_rare = np.zeros(1000, dtype=int)
    y_rare[:3] = 1
    rare = MarginCalibrator(cv=5).fit(m, y_rare)
    assert rare.cv_scores_ == {} and rare.method_ == "sigmoid"


def test_calibration_improves_brier_of_a_miscalibrated_booster() -> None:
    X, y = make_classification(n_samples=2400, n_features=8, weights=[0.8], random_state=5)
    space = SearchSpace(max_rounds=60, early_stopping_rounds=10)
    # Up-weighting dropouts 4x makes the raw probabilities systematically too high.
    fit = fit_booster(
        X[:1000],
        y[:1000],
        X[1000:1400],
        y[1000:1400],
        feature_names=[f"f{i}" for i in range(8)],
        search=space,
        n_trials=1,
        sample_weight=np.where(y[:1000] == 1, 4.0, 1.0),
    )
    raw_cal, raw_test = margin(fit.booster, X[1400:1900]), margin(fit.booster, X[1900:])
    cal = MarginCalibrator(random_state=0).fit(raw_cal, y[1400:1900])
    brier_raw = np.mean((1 / (1 + np.exp(-raw_test)) - y[1900:]) ** 2)
    brier_cal = np.mean((cal.predict_proba(raw_test)[:, 1] - y[1900:]) ** 2)
    assert brier_cal < brier_raw


@pytest.mark.parametrize("data", [_logistic(2000, 0.6, -0.5), _plateaus(2000)])
def test_to_dict_from_dict_round_trip_is_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    m, y = data
    cal = MarginCalibrator(random_state=1).fit(m, y)
    text = json.dumps(cal.to_dict(), allow_nan=False)
    again = MarginCalibrator.from_dict(json.loads(text))
    probe = np.linspace(-6, 6, 101)
    np.testing.assert_array_equal(again.predict_proba(probe), cal.predict_proba(probe))
    np.testing.assert_array_equal(again.predict_logit(probe), cal.predict_logit(probe))
    assert again.method_ == cal.method_
    assert again.explanation_space_ == cal.explanation_space_
    assert again.cv_scores_ == cal.cv_scores_
    assert again.get_params() == cal.get_params()
    params = json.loads(text)
    np.testing.assert_array_equal(calibrate_logit(probe, params), cal.predict_logit(probe))
    np.testing.assert_array_equal(
        calibrate_probability(probe, params), cal.predict_proba(probe)[:, 1]
    )


def test_from_dict_rejects_foreign_or_broken_params() -> None:
    m, y = _plateaus(1000)
    good = MarginCalibrator(method="isotonic").fit(m, y).to_dict()
    with pytest.raises(ValueError, match="expected format"):
        MarginCalibrator.from_dict({**good, "format_version": 99})
    with pytest.raises(ValueError, match="non-decreasing"):
        MarginCalibrator.from_dict({**good, "y_thresholds": good["y_thresholds"][::-1]})
    with pytest.raises(ValueError, match="equal length"):
        MarginCalibrator.from_dict({**good, "x_thresholds": good["x_thresholds"][:-1]})
    with pytest.raises(ValueError, match="unknown method"):
        MarginCalibrator.from_dict({**good, "method": "beta"})
    with pytest.raises(ValueError, match="unknown method"):
        calibrate_logit(np.zeros(2), {"method": "beta"})


def test_input_errors_name_rows_not_values() -> None:
    m, y = _logistic(200, 1.0, 0.0)
    with pytest.raises(ValueError, match="both classes"):
        MarginCalibrator().fit(m, np.ones_like(y))
    bad = m.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="margin at row 2 is not finite"):
        MarginCalibrator().fit(bad, y)
    labels = y.copy()
    labels[5] = 3
    with pytest.raises(ValueError, match="label at row 5 is not 0 or 1"):
        MarginCalibrator().fit(m, labels)
    with pytest.raises(ValueError, match="same number of rows"):
        MarginCalibrator().fit(m[:-1], y)
    with pytest.raises(ValueError, match="method must be"):
        MarginCalibrator(method="beta").fit(m, y)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not fitted"):
        MarginCalibrator().predict_proba(m)


def test_follows_sklearn_estimator_conventions() -> None:
    m, y = _logistic(500, 1.0, 0.0)
    cal = MarginCalibrator(method="sigmoid", cv=3, random_state=7)
    assert cal.fit(m, y) is cal
    copy = clone(cal)
    assert copy.get_params() == {
        "method": "sigmoid",
        "cv": 3,
        "random_state": 7,
        "landmark_feature": None,
        "landmark_penalty": "cv",
    }
    assert not hasattr(copy, "method_")


_FITTED = [
    MarginCalibrator(method="sigmoid").fit(*_logistic(500, 1.0, 0.0)).to_dict(),
    MarginCalibrator(method="isotonic").fit(*_plateaus(500)).to_dict(),
]


@settings(max_examples=60, deadline=None)
@given(
    margins=st.lists(
        st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=30
    )
)
def test_probabilities_stay_in_unit_interval_for_any_margin(margins: list[float]) -> None:
    probe = np.asarray(margins)
    for params in _FITTED:
        p = calibrate_probability(probe, params)
        logit = calibrate_logit(probe, params)
        assert np.all((p >= 0) & (p <= 1))
        assert np.all(np.isfinite(logit))
        if params["method"] == "isotonic":
            assert np.all((p >= EPS) & (p <= 1 - EPS))


def _landmark_biased(n_clients: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Clients with 1-15 landmark rows whose margin is off by a landmark-dependent amount.

    The true log-odds are ``margin + bias(k)`` with bias +0.4 at landmark 1 falling to -0.4 at
    15 (the shape issue 19 measured, doubled), and clients who stay longer contribute more
    rows, so a pooled map fitted on rows matches the row mix and no single landmark.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 16, n_clients)
    k = np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(float)
    m = rng.normal(-1.5, 1.0, k.size)
    truth = m + 0.4 - 0.8 * (k - 1) / 14
    y = (rng.random(k.size) < 1.0 / (1.0 + np.exp(-truth))).astype(int)
    return m, y, k


def _citl_by_landmark(y: np.ndarray, p: np.ndarray, k: np.ndarray) -> dict[int, float]:
    """Calibration-in-the-large per landmark (the single implementation in training.metrics)."""
    from training.metrics import calibration_slope_intercept

    return {int(v): calibration_slope_intercept(y[k == v], p[k == v])[1] for v in np.unique(k)}


def test_landmark_intercepts_remove_a_bias_the_pooled_map_leaves() -> None:
    m, y, k = _landmark_biased(20_000)
    # Neither the pooled map's cross-validated scores nor the penalty choice is tested here
    # (seconds each): the pooled map skips the former; the penalty is the one "cv" chooses.
    pooled = MarginCalibrator(method="sigmoid", cv=1).fit(m, y)
    by_landmark = MarginCalibrator(
        method="sigmoid", landmark_feature="engagement_landmark", landmark_penalty=1000.0
    ).fit(m, y, landmark=k)
    before = _citl_by_landmark(y, pooled.predict_proba(m)[:, 1], k)
    after = _citl_by_landmark(y, by_landmark.predict_proba(m, k)[:, 1], k)
    assert max(abs(before[1]), abs(before[15])) > 0.2  # the pooled map's bias at the ends
    assert max(abs(v) for v in after.values()) < 0.1
    assert by_landmark.slope_ == pytest.approx(1.0, abs=0.05)


def test_landmark_calibrator_round_trips_and_needs_the_landmark() -> None:
    m, y, k = _landmark_biased(2_000, seed=1)
    cal = MarginCalibrator(landmark_feature="engagement_landmark").fit(m, y, landmark=k)
    params = json.loads(json.dumps(cal.to_dict()))
    assert params["format_version"] == 2
    assert params["landmark_feature"] == "engagement_landmark"
    again = MarginCalibrator.from_dict(params)
    np.testing.assert_array_equal(again.predict_logit(m, k), cal.predict_logit(m, k))
    p = calibrate_probability(m, params, k)
    np.testing.assert_allclose(calibrate_logit(m, params, k), np.log(p) - np.log1p(-p), atol=1e-9)
    with pytest.raises(ValueError, match="landmark intercepts"):
        calibrate_probability(m, params)
    with pytest.raises(ValueError, match="sigmoid"):
        MarginCalibrator(method="isotonic").fit(m, y, landmark=k)


def test_version_1_params_still_load_and_score_identically() -> None:
    m, y = _logistic(3_000, 1.2, -0.5)
    cal = MarginCalibrator(method="sigmoid").fit(m, y)
    old = {**cal.to_dict(), "format_version": 1}
    old["estimator_params"].pop("landmark_feature")
    again = MarginCalibrator.from_dict(old)
    expected = 1.0 / (1.0 + np.exp(-(old["slope"] * m + old["intercept"])))
    np.testing.assert_allclose(again.predict_proba(m)[:, 1], expected, rtol=0, atol=1e-15)
    np.testing.assert_array_equal(
        calibrate_probability(m, old, np.arange(m.size)), again.predict_proba(m)[:, 1]
    )


def test_scorer_explanation_adds_up_with_landmark_intercepts(tmp_path) -> None:
    """A scorer whose calibrator has landmark intercepts: base + contributions = log-odds
    exactly, predict_proba and explain=False agree, and it saves and loads; a version-1
    calibrator (no landmark terms) scores as before."""
    from features.build import build_features
    from features.episodes import Episodes
    from features.profiles import get_profile
    from features.registry import feature_registry
    from models.scorer import RiskBands, Scorer
    from training.simulate import simulate_cohort

    cohort = simulate_cohort(300, seed=5)
    profile = get_profile("alliance6")
    registry = feature_registry(profile)
    frame = build_features(cohort.sessions, cohort.clients, profile=profile, landmarks="training")
    outcome = cohort.clients.set_index("client_id")["outcome"].reindex(
        frame.index.get_level_values(0)
    )
    keep = (outcome != "ongoing").to_numpy()
    X, y = frame.to_numpy()[keep], (outcome == "dropout").to_numpy(float)[keep]
    half = X.shape[0] // 2
    fit = fit_booster(
        X[:half], y[:half], X[half:], y[half:], feature_names=registry.names, n_trials=1
    )
    k = X[half:, registry.names.index("engagement_landmark")]
    m = margin(fit.booster, X[half:])
    cal = MarginCalibrator(landmark_feature="engagement_landmark").fit(m, y[half:], landmark=k)
    assert len(set(cal.landmark_intercepts_)) > 1
    scorer = Scorer(fit.booster, cal.to_dict(), registry, RiskBands(0.2, 0.5))
    ended = cohort.clients[cohort.clients["outcome"] != "ongoing"]
    episodes = Episodes.from_frames(
        cohort.sessions[cohort.sessions["client_id"].isin(ended["client_id"])], ended, profile
    )
    scored = scorer.score(episodes, landmarks="training")
    e = scored.explanation
    np.testing.assert_allclose(e.base_logit + e.group_contributions.sum(1), e.logit, atol=1e-9)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-e.logit)), e.probability, atol=1e-12)
    expected = cal.predict_proba(margin(fit.booster, scored.features), scored.landmark)[:, 1]
    np.testing.assert_allclose(e.probability, expected, atol=1e-5)
    np.testing.assert_allclose(scorer.predict_proba(scored.features), e.probability, atol=1e-9)
    quick = scorer.score(episodes, landmarks="training", explain=False)
    np.testing.assert_allclose(quick.probability, e.probability, atol=1e-5)
    scorer.save(tmp_path / "m")
    loaded = Scorer.load(tmp_path / "m")
    np.testing.assert_array_equal(
        loaded.score(episodes, landmarks="training").probability, e.probability
    )
    scorer.self_check()

    v1 = MarginCalibrator(method="sigmoid").fit(m, y[half:]).to_dict()
    v1 = {**v1, "format_version": 1}
    old = Scorer(fit.booster, v1, registry, RiskBands(0.2, 0.5))
    e1 = old.score(episodes, landmarks="training").explanation
    np.testing.assert_allclose(
        e1.logit, v1["slope"] * margin(fit.booster, scored.features) + v1["intercept"], atol=1e-5
    )


def _sparse_late(offset, n_clients: int = 3_000, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Clients whose stay is geometric (three in ten leave after each appointment), so landmarks
    12-20 hold a few dozen rows; true log-odds ``margin + offset(k)``. Returns m, y, k, client."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(0.3, n_clients), 20)
    k = np.concatenate([np.arange(1, n + 1) for n in lengths]).astype(float)
    client = np.repeat(np.arange(n_clients), lengths)
    m = rng.normal(-1.5, 1.0, k.size)
    y = (rng.random(k.size) < 1.0 / (1.0 + np.exp(-(m + offset(k))))).astype(int)
    return m, y, k, client


def _late_and_early_error(cal: MarginCalibrator, offset) -> tuple[float, float]:
    """Root-mean-square error of the fitted offset at knots >= 10 (sparse) and below."""
    knots = np.asarray(cal.landmark_knots_)
    err = np.asarray(cal.landmark_intercepts_) - offset(knots)
    late = knots >= 10
    return float(np.sqrt(np.mean(err[late] ** 2))), float(np.sqrt(np.mean(err[~late] ** 2)))


def _default_and_free(m, y, k, client) -> tuple[MarginCalibrator, MarginCalibrator]:
    """The default fit (penalty chosen by client folds) and the knots-free fit (penalty 0)."""
    chosen = MarginCalibrator(landmark_feature="engagement_landmark", random_state=0)
    free = MarginCalibrator(landmark_feature="engagement_landmark", landmark_penalty=0.0)
    return (
        chosen.fit(m, y, landmark=k, groups=client),
        free.fit(m, y, landmark=k, groups=client),
    )


def test_landmark_penalty_recovers_a_smooth_offset_curve() -> None:
    """A smooth offset (+0.4 at landmark 1 bending down to -0.4 at 20) is recovered; at the
    sparse late knots the penalised fit errs far less than knots fitted freely."""

    def offset(k):
        return 0.4 - 0.8 * np.sqrt((k - 1) / 19)

    m, y, k, client = _sparse_late(offset)
    assert (k >= 12).sum() < 0.03 * k.size
    chosen, free = _default_and_free(m, y, k, client)
    assert chosen.cv_scores_["landmark_penalty"] > 0
    late, early = _late_and_early_error(chosen, offset)
    assert early < 0.1
    assert late < 0.25
    assert late < 0.7 * _late_and_early_error(free, offset)[0]


def test_landmark_penalty_does_not_wander_on_noise() -> None:
    """No landmark effect at all: the chosen penalty keeps the sparse late knots near zero,
    where freely fitted knots follow their few rows' noise."""

    def offset(k):
        return np.zeros_like(k)

    m, y, k, client = _sparse_late(offset)
    chosen, free = _default_and_free(m, y, k, client)
    late = _late_and_early_error(chosen, offset)[0]
    assert late < 0.15
    assert late < 0.5 * _late_and_early_error(free, offset)[0]
    assert chosen.slope_ == pytest.approx(1.0, abs=0.05)


def test_landmark_penalty_choice_is_deterministic_and_recorded() -> None:
    m, y, k, client = _sparse_late(lambda v: 0.2 - 0.02 * v, n_clients=1_500, seed=1)
    fits = [
        MarginCalibrator(landmark_feature="engagement_landmark", random_state=5).fit(
            m, y, landmark=k, groups=client
        )
        for _ in range(2)
    ]
    assert fits[0].cv_scores_ == fits[1].cv_scores_
    assert fits[0].landmark_intercepts_ == fits[1].landmark_intercepts_
    params = json.loads(json.dumps(fits[0].to_dict()))
    assert params["format_version"] == 2
    assert params["cv_scores"]["landmark_penalty"] in LANDMARK_PENALTIES
    again = MarginCalibrator.from_dict(params)
    np.testing.assert_array_equal(again.predict_logit(m, k), fits[0].predict_logit(m, k))
    fixed = MarginCalibrator(
        landmark_feature="engagement_landmark",
        landmark_penalty=params["cv_scores"]["landmark_penalty"],
    ).fit(m, y, landmark=k)
    np.testing.assert_allclose(fixed.landmark_intercepts_, fits[0].landmark_intercepts_)
