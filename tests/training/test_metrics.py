"""Evaluation metrics: known values, calibration properties, cluster bootstrap, subgroups."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from training.metrics import (
    _resample_index,
    auprc,
    auroc,
    bootstrap_ci,
    brier,
    calibration_slope_intercept,
    ece,
    evaluate,
    flag_top,
    landmark_band,
    reliability_table,
)


def _calibrated(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from the stated probabilities: perfectly calibrated by construction."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (1.0 + np.exp(-rng.normal(-1.0, 1.2, n)))
    return (rng.random(n) < p).astype(int), p


def _expit(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60),
)
def test_auroc_and_auprc_equal_sklearn_including_ties(data: list[tuple[int, int]]) -> None:
    y = np.array([d[0] for d in data])
    p = np.array([d[1] for d in data]) / 6.0  # few distinct values: many ties
    if 0 < y.sum() < y.size:
        assert auroc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    else:
        assert math.isnan(auroc(y, p))
    if y.sum() > 0:
        assert auprc(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    else:
        assert math.isnan(auprc(y, p))


def test_hand_calculated_values() -> None:
    y = np.array([0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.4, 0.65])
    assert brier(y, p) == pytest.approx((0.01 + 0.04 + 0.36 + 0.4225) / 4)
    # Positive/negative pairs ranked right: (0.8>0.1), (0.8>0.65), (0.4>0.1); wrong: 0.4<0.65.
    assert auroc(y, p) == pytest.approx(3 / 4)
    # Bins of width 0.5: {0.1, 0.4} -> |0.5 - 0.25| and {0.8, 0.65} -> |0.5 - 0.725|.
    assert ece(y, p, n_bins=2) == pytest.approx(0.5 * 0.25 + 0.5 * 0.225)


def test_reliability_table_bins() -> None:
    y = np.array([0, 1, 1, 1])
    p = np.array([0.0, 0.05, 0.95, 1.0])
    table = reliability_table(y, p, n_bins=10)
    assert list(table["n"]) == [2, 0, 0, 0, 0, 0, 0, 0, 0, 2]  # p = 1.0 falls in the last bin
    assert table.loc[0, "mean_predicted"] == pytest.approx(0.025)
    assert table.loc[0, "observed_rate"] == pytest.approx(0.5)
    assert math.isnan(table.loc[4, "observed_rate"])
    assert table["bin_high"].iloc[-1] == 1.0


def test_ece_small_when_calibrated_and_large_when_shifted() -> None:
    y, p = _calibrated(50_000)
    assert ece(y, p) < 0.01
    shifted = _expit(_logit(p) + 1.0)
    assert ece(y, shifted) > 0.1


def test_calibration_slope_and_intercept() -> None:
    y, p = _calibrated(30_000, seed=1)
    slope, intercept = calibration_slope_intercept(y, p)
    assert slope == pytest.approx(1.0, abs=0.05)
    assert intercept == pytest.approx(0.0, abs=0.04)
    # Overconfident predictions (log-odds doubled) have slope ~ 1/2.
    slope, _ = calibration_slope_intercept(y, _expit(2.0 * _logit(p)))
    assert slope == pytest.approx(0.5, abs=0.03)
    # Risk underestimated by 0.7 on the log-odds scale: intercept ~ +0.7.
    _, intercept = calibration_slope_intercept(y, _expit(_logit(p) - 0.7))
    assert intercept == pytest.approx(0.7, abs=0.05)


def test_calibration_intercept_of_a_constant_prediction_is_the_log_odds_gap() -> None:
    y = np.array([1] * 30 + [0] * 70)
    p = np.full(100, 0.2)
    slope, intercept = calibration_slope_intercept(y, p)
    assert math.isnan(slope)  # no spread in p: slope undefined
    assert intercept == pytest.approx(_logit(np.array(0.3)) - _logit(np.array(0.2)), abs=1e-9)


def test_calibration_fit_undefined_under_separation() -> None:
    y = np.array([0, 0, 1, 1])
    slope, _ = calibration_slope_intercept(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert math.isnan(slope)


def test_flag_top_hand_calculated() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    sens, ppv, threshold = flag_top(y, p, frac=0.3)
    assert (sens, ppv, threshold) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 0.7)
    # ceil(0.1 * 30) must be 3, not 4, despite 0.1 * 30 = 3.0000000000000004.
    y30 = np.zeros(30, dtype=int)
    p30 = np.linspace(0, 1, 30)
    assert flag_top(y30, p30, frac=0.1)[2] == pytest.approx(p30[-3])
    # Ties at the threshold are all flagged.
    sens, ppv, threshold = flag_top(np.array([1, 0, 0, 1]), np.array([0.5, 0.5, 0.5, 0.1]), 0.25)
    assert threshold == 0.5 and ppv == pytest.approx(1 / 3) and sens == pytest.approx(0.5)
    with pytest.raises(ValueError, match="frac"):
        flag_top(y, p, frac=0.0)


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    y, p = _calibrated(2000, seed=2)
    for metric in (auroc, brier, ece):
        low, high = bootstrap_ci(metric, y, p, n_boot=100, seed=3)
        assert low < metric(y, p) < high
        assert bootstrap_ci(metric, y, p, n_boot=100, seed=3) == (low, high)


def test_bootstrap_fast_path_equals_generic_resampling() -> None:
    y, p = _calibrated(1500, seed=4)
    clients = np.repeat(np.arange(500), 3)
    for metric in (auroc, brier):
        fast = bootstrap_ci(metric, y, p, n_boot=60, seed=5, cluster=clients)
        slow = bootstrap_ci(
            lambda a, b, m=metric: m(a, b), y, p, n_boot=60, seed=5, cluster=clients
        )
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_cluster_rows_move_together() -> None:
    clients = np.array([5, 5, 5, 9, 9, 2, 7, 7, 7, 7])
    codes, _ = pd.factorize(clients)
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = _resample_index(codes, 4, rng)
        counts = np.bincount(idx, minlength=clients.size)
        for client in np.unique(clients):
            assert np.unique(counts[clients == client]).size == 1  # all or none, equally often
        # Exactly 4 whole clusters are drawn (with replacement) per resample.
        first_rows = [int(np.argmax(clients == c)) for c in np.unique(clients)]
        assert counts[first_rows].sum() == 4


def test_cluster_bootstrap_is_wider_for_duplicated_rows() -> None:
    # Every client contributes 6 identical landmark rows: the information is that of 400
    # clients, so a row bootstrap (2,400 "independent" rows) is too narrow by ~sqrt(6).
    y0, p0 = _calibrated(400, seed=6)
    y, p = np.repeat(y0, 6), np.repeat(p0, 6)
    clients = np.repeat(np.arange(400), 6)
    row_low, row_high = bootstrap_ci(brier, y, p, n_boot=200, seed=1)
    cl_low, cl_high = bootstrap_ci(brier, y, p, n_boot=200, seed=1, cluster=clients)
    assert (cl_high - cl_low) > 1.8 * (row_high - row_low)


def test_degenerate_inputs_give_nan_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ones = np.ones(5, dtype=int)
        p = np.linspace(0.1, 0.9, 5)
        assert math.isnan(auroc(ones, p))
        assert math.isnan(calibration_slope_intercept(ones, p)[0])
        empty = np.array([])
        for metric in (auroc, auprc, brier, ece):
            assert math.isnan(metric(empty, empty))
        assert all(math.isnan(v) for v in flag_top(empty, empty))
        assert bootstrap_ci(auroc, ones, p, n_boot=20) == (
            pytest.approx(math.nan, nan_ok=True),
            pytest.approx(math.nan, nan_ok=True),
        )
        report = evaluate(np.array([1]), np.array([0.3]), n_boot=10)
        assert report.overall["n"] == 1 and math.isnan(report.overall["auroc"])


def test_input_errors_name_the_row_and_never_the_value() -> None:
    with pytest.raises(ValueError, match="probability at row 1 is missing or outside") as err:
        brier([0, 1], [0.5, 1.7])
    assert "1.7" not in str(err.value)
    with pytest.raises(ValueError, match="probability at row 0"):
        auroc([0, 1], [np.nan, 0.2])
    with pytest.raises(ValueError, match="label at row 2 is not 0 or 1"):
        ece([0, 1, 2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="same number of rows"):
        brier([0, 1], [0.1])


def test_evaluate_overall_and_per_group() -> None:
    y, p = _calibrated(3000, seed=8)
    rng = np.random.default_rng(8)
    frame = pd.DataFrame(
        {
            "landmark": rng.integers(3, 7, y.size),
            "clinic_id": rng.choice(["north", "south", None], y.size),
        },
        index=np.arange(y.size)[::-1],  # the index is ignored: rows are positional
    )
    # A tiny clinic whose three rows are all completers: metrics undefined, counts present.
    frame.loc[frame.index[:3], "clinic_id"] = "tiny"
    y[:3] = 0
    clients = np.repeat(np.arange(1000), 3)
    report = evaluate(y, p, frame=frame, by=["landmark", "clinic_id"], cluster=clients, n_boot=50)
    overall = report.overall
    assert overall["n"] == 3000 and overall["n_events"] == int(y.sum())
    assert overall["prevalence"] == pytest.approx(y.mean())
    assert overall["auroc_ci_low"] < overall["auroc"] < overall["auroc_ci_high"]
    assert overall["brier_ci_low"] < overall["brier"] < overall["brier_ci_high"]
    assert overall["ece"] < 0.05 and overall["flag_fraction"] == 0.1
    assert overall["auroc"] == pytest.approx(roc_auc_score(y, p))

    landmarks = report.per_group["landmark"]
    assert list(landmarks["value"]) == [3, 4, 5, 6]
    assert landmarks["n"].sum() == 3000
    subset = frame["landmark"].to_numpy() == 4
    row = landmarks.set_index("value").loc[4]
    assert row["auroc"] == pytest.approx(roc_auc_score(y[subset], p[subset]))
    assert row["events"] == y[subset].sum()
    # Each client has 3 rows spread over landmarks: n_clients counts clients, not rows.
    assert row["n_clients"] == len(np.unique(clients[subset]))
    assert (landmarks["n_clients"] <= landmarks["n"]).all()

    clinics = report.per_group["clinic_id"]
    assert clinics["n"].sum() == 3000
    assert clinics["value"].isna().sum() == 1  # missing values are their own row
    tiny = clinics[clinics["value"] == "tiny"].iloc[0]
    assert tiny["n"] == 3 and tiny["events"] == 0
    assert math.isnan(tiny["auroc"]) and math.isnan(tiny["calibration_slope"])
    assert tiny["brier"] == pytest.approx(np.mean(p[:3] ** 2))


def test_landmark_bands_cover_every_landmark_once() -> None:
    k = np.array([1, 2, 3, 4, 6, 7, 10, 11, 40, np.nan])
    assert landmark_band(k).tolist() == [
        "1-3", "1-3", "1-3", "4-6", "4-6", "7-10", "7-10", "11+", "11+", ""
    ]  # fmt: skip


def test_n_clients_is_rows_without_a_cluster() -> None:
    y, p = _calibrated(300, seed=4)
    frame = pd.DataFrame({"g": np.arange(300) % 2})
    table = evaluate(y, p, frame=frame, by=["g"], n_boot=0).per_group["g"]
    assert table["n_clients"].tolist() == table["n"].tolist() == [150, 150]


def test_evaluate_without_bootstrap() -> None:
    y, p = _calibrated(200, seed=9)
    overall = evaluate(y, p, n_boot=0).overall
    assert math.isnan(overall["auroc_ci_low"]) and math.isnan(overall["brier_ci_high"])
    assert overall["auroc"] == pytest.approx(roc_auc_score(y, p))


def test_evaluate_argument_errors() -> None:
    y, p = _calibrated(50)
    with pytest.raises(ValueError, match="by needs a frame"):
        evaluate(y, p, by=["landmark"], n_boot=5)
    with pytest.raises(ValueError, match="one row per prediction"):
        evaluate(y, p, frame=pd.DataFrame({"a": [1]}), n_boot=5)
    with pytest.raises(ValueError, match="column 'landmark' is not in frame"):
        evaluate(y, p, frame=pd.DataFrame({"a": np.ones(50)}), by=["landmark"], n_boot=5)


def test_weighted_metrics_equal_sklearn_and_replicated_rows() -> None:
    """Integer weights are row multiplicities: every weighted metric equals the metric of the
    replicated rows, and AUROC/AUPRC equal sklearn's with sample_weight."""
    y, p = _calibrated(300, seed=3)
    w = np.random.default_rng(4).integers(1, 5, y.size).astype(float)
    rep = np.repeat(np.arange(y.size), w.astype(int))
    assert auroc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert auprc(y, p, w) == pytest.approx(average_precision_score(y, p, sample_weight=w))
    assert brier(y, p, w) == pytest.approx(brier(y[rep], p[rep]))
    assert ece(y, p, w=w) == pytest.approx(ece(y[rep], p[rep]))
    slope_w, citl_w = calibration_slope_intercept(y, p, w)
    slope_r, citl_r = calibration_slope_intercept(y[rep], p[rep])
    assert (slope_w, citl_w) == pytest.approx((slope_r, citl_r), abs=1e-8)
    report = evaluate(y, p, weight=w, n_boot=0)
    assert report.overall["prevalence"] == pytest.approx(y[rep].mean())
    assert report.overall["effective_n"] < y.size
    assert report.overall["weight_max"] == w.max()


def test_weighted_citl_corrects_a_censored_sample() -> None:
    """Dropouts kept with probability 1 and completers with probability 1/3 look miscalibrated
    unweighted; weighting the completers by 3 recovers CITL ~ 0."""
    y, p = _calibrated(60_000, seed=5)
    keep = (y == 1) | (np.random.default_rng(6).random(y.size) < 1 / 3)
    w = np.where(y[keep] == 1, 1.0, 3.0)
    assert calibration_slope_intercept(y[keep], p[keep])[1] > 0.8
    assert abs(calibration_slope_intercept(y[keep], p[keep], w)[1]) < 0.05
    assert ece(y[keep], p[keep], w=w) < 0.02
