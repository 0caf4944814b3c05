"""Evaluation metrics for calibrated dropout probabilities, read the way a clinician would.

Discrimination (AUROC, AUPRC), accuracy of the probabilities (Brier), calibration (ECE,
reliability table, calibration slope and intercept), the operating point of flagging the top
10%, cluster-bootstrap intervals, and per-subgroup tables with counts (TRIPOD+AI, Collins et
al. 2024).

Every metric takes optional row weights ``w`` (the evaluation's inverse-probability-of-censoring
weights, :mod:`training.censoring`): a weighted metric is the metric of a cohort in which each
row counts ``w`` times, so the labelled clients of a date-censored extract stand for every
client. ``w=None`` is the unweighted metric. This module is the one implementation of each
metric, weighted or not.

Every metric returns NaN rather than raising or warning when it is undefined on the rows
given (no rows, one class, no spread in the predictions): a small subgroup must not break a
report. Inputs that are wrong rather than degenerate (labels other than 0/1, probabilities
outside [0, 1] or missing, mismatched lengths) raise ``ValueError`` naming the row, never the
value.

Why one file of ~680 lines: it is one job, the metrics, and the weighted and unweighted forms,
the cluster bootstrap and :func:`evaluate` share the same row checks and weight handling; a
split would put the weight rules in two places. Split it when a second job arrives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm
from sklearn.metrics import average_precision_score

#: ``metric(y, p)``, or ``metric(y, p, w)`` when weighted (every metric of this module).
Metric = Callable[..., float]

#: Logits of predictions are clipped to this probability range, so p = 0 or 1 stays finite.
_P_CLIP = 1e-12

#: Landmark bands that evaluation and the promotion gate judge calibration in (issue 19): the
#: first sessions, where dropout is most frequent, apart from later ones. (first, last); None =
#: open-ended.
LANDMARK_BANDS: tuple[tuple[int, int | None], ...] = ((1, 3), (4, 6), (7, 10), (11, None))


def band_label(first: int, last: int | None) -> str:
    """``"1-3"`` or ``"11+"``."""
    return f"{first}+" if last is None else f"{first}-{last}"


def landmark_band(landmark: Any) -> np.ndarray:
    """Label of each landmark's band in :data:`LANDMARK_BANDS` (object array; ``""`` if none)."""
    k = np.asarray(landmark, dtype=np.float64).reshape(-1)
    out = np.full(k.shape, "", dtype=object)
    for first, last in LANDMARK_BANDS:
        inside = (k >= first) & (k <= (np.inf if last is None else last))
        out[inside] = band_label(first, last)
    return out


def _weights(w: Any, n: int) -> np.ndarray:
    """Row weights as floats (ones when ``w`` is None); finite and >= 0, one per row."""
    if w is None:
        return np.ones(n)
    ww = np.asarray(w, dtype=np.float64).reshape(-1)
    if ww.shape != (n,):
        raise ValueError("w must have one weight per row")
    bad = ~(np.isfinite(ww) & (ww >= 0.0))
    if bad.any():
        raise ValueError(f"weight at row {int(np.argmax(bad))} is missing or negative")
    return ww


def kish_effective_n(w: Any) -> float:
    """Kish effective sample size (sum w)^2 / sum w^2: how many unweighted rows the weighted
    rows are worth; equal to the row count when the weights are equal, NaN without rows."""
    ww = np.asarray(w, dtype=np.float64).reshape(-1)
    sq = float(ww @ ww)
    return float(ww.sum() ** 2 / sq) if sq > 0 else math.nan


def _arrays(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities; messages name rows, never values."""
    yy = np.asarray(y).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if yy.shape != pp.shape:
        raise ValueError("y and p must have the same number of rows")
    bad = ~np.isin(yy, (0, 1))
    if bad.any():
        raise ValueError(f"label at row {int(np.argmax(bad))} is not 0 or 1")
    bad = ~((pp >= 0.0) & (pp <= 1.0))  # also catches NaN
    if bad.any():
        raise ValueError(f"probability at row {int(np.argmax(bad))} is missing or outside [0, 1]")
    return yy.astype(np.float64), pp


def _two_classes(y: np.ndarray) -> bool:
    """True when both classes are present."""
    return y.size > 0 and 0.0 < y.sum() < y.size


def _weighted_auroc(y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """AUROC as a function of row weights, sorting once.

    A bootstrap resample is the original rows with integer multiplicities, so its AUROC is
    the weighted Mann-Whitney statistic: for each block of tied probabilities b,
    sum_b W1_b * (W0 below b + W0_b / 2) / (W1 * W0). O(n) per call after one O(n log n) sort.
    """
    order = np.argsort(p, kind="stable")
    ps = p[order]
    block = np.cumsum(np.r_[True, ps[1:] != ps[:-1]]) - 1
    n_blocks = int(block[-1]) + 1 if block.size else 0
    pos = y[order]

    def fn(w: np.ndarray) -> float:
        ws = w[order]
        w1 = np.bincount(block, weights=ws * pos, minlength=n_blocks)
        w0 = np.bincount(block, weights=ws * (1.0 - pos), minlength=n_blocks)
        total1, total0 = w1.sum(), w0.sum()
        if total1 == 0 or total0 == 0:
            return math.nan
        below0 = np.cumsum(w0) - w0
        return float((w1 @ below0 + 0.5 * (w1 @ w0)) / (total1 * total0))

    return fn


def _weighted_brier(y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """Brier score as a function of row weights."""
    sq = (p - y) ** 2

    def fn(w: np.ndarray) -> float:
        total = w.sum()
        return float(w @ sq / total) if total > 0 else math.nan

    return fn


def auroc(y: Any, p: Any, w: Any = None) -> float:
    """Area under the ROC curve: Mann-Whitney U / (n1 n0), ties counted 1/2; NaN if one class.

    Equal to ``sklearn.metrics.roc_auc_score(y, p, sample_weight=w)`` (tested); computed by one
    sort and block sums because the bootstrap calls it hundreds of times.
    """
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    if not _two_classes(yy):
        return math.nan
    return _weighted_auroc(yy, pp)(ww)


def auprc(y: Any, p: Any, w: Any = None) -> float:
    """Average precision (step-wise area under the precision-recall curve); NaN without events.

    ``sklearn.metrics.average_precision_score``: no trapezoidal interpolation, which would be
    optimistic. A useless model scores the prevalence.
    """
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    if yy.size == 0 or (ww * yy).sum() == 0:
        return math.nan
    return float(average_precision_score(yy, pp, sample_weight=None if w is None else ww))


def brier(y: Any, p: Any, w: Any = None) -> float:
    """Brier score: (weighted) mean squared difference between probability and outcome; NaN if
    no rows."""
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    if yy.size == 0:
        return math.nan
    return _weighted_brier(yy, pp)(ww)


def reliability_table(y: Any, p: Any, n_bins: int = 10, w: Any = None) -> pd.DataFrame:
    """Calibration curve on ``n_bins`` equal-width probability bins.

    Bins are [0, 1/n_bins), ..., [1 - 1/n_bins, 1] (the last one closed). Empty bins are kept
    with n = 0 and NaN means, so tables from different models line up.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``bin_low``, ``bin_high``, ``n`` (rows), ``weight`` (sum of the
        row weights; ``n`` when unweighted), ``mean_predicted`` (weighted mean probability),
        ``observed_rate`` (weighted fraction of dropouts).
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum((pp * n_bins).astype(np.intp), n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    total = np.bincount(idx, weights=ww, minlength=n_bins)
    sum_p = np.bincount(idx, weights=ww * pp, minlength=n_bins)
    sum_y = np.bincount(idx, weights=ww * yy, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(total > 0, sum_p / total, np.nan)
        rate = np.where(total > 0, sum_y / total, np.nan)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "n": n.astype(np.int64),
            "weight": total,
            "mean_predicted": mean_p,
            "observed_rate": rate,
        }
    )


def ece(y: Any, p: Any, n_bins: int = 10, w: Any = None) -> float:
    """Expected calibration error on equal-width bins, weighted by count (or row weight).

    ECE = sum over bins b of (n_b / n) * |observed rate_b - mean probability_b|, with the bins
    (with ``w``: n_b is the bin's weight and the rates are weighted), with the bins
    of :func:`reliability_table` (Naeini et al. 2015). In probability units; 0 is perfect.
    NaN if there are no rows. Equal-width bins are the convention of the promotion gate
    (ECE <= 0.05); with few high-risk rows the top bins are noisy, so read it with the counts.
    """
    table = reliability_table(y, p, n_bins, w)
    n = table["weight"].to_numpy()
    total = n.sum()
    if total == 0:
        return math.nan
    gap = np.abs(table["observed_rate"].to_numpy() - table["mean_predicted"].to_numpy())
    return float(np.sum(n[n > 0] * gap[n > 0]) / total)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _P_CLIP, 1.0 - _P_CLIP)
    return np.log(q) - np.log1p(-q)


def _newton_logistic(
    y: np.ndarray,
    x: np.ndarray | None,
    offset: np.ndarray,
    max_iter: int = 100,
    weight: np.ndarray | None = None,
) -> np.ndarray | None:
    """Unpenalised (weighted) logistic MLE of y on [1, x] (or [1] if x is None) with an offset.

    Returns the coefficients, or None when Newton does not converge (e.g. separation).
    """
    design = np.ones((y.size, 1)) if x is None else np.column_stack([np.ones(y.size), x])
    rw = np.ones(y.size) if weight is None else weight
    beta = np.zeros(design.shape[1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(max_iter):
            eta = offset + design @ beta
            mu = 1.0 / (1.0 + np.exp(-eta))
            w = rw * mu * (1.0 - mu)
            grad = design.T @ (rw * (y - mu))
            hess = design.T @ (design * w[:, None])
            try:
                step = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                return None
            if not np.all(np.isfinite(step)):
                return None
            beta = beta + step
            if np.max(np.abs(step)) < 1e-10:
                return beta if np.all(np.abs(beta) < 1e6) else None
    return None


def calibration_slope_intercept(y: Any, p: Any, w: Any = None) -> tuple[float, float]:
    """Calibration slope and calibration intercept (Van Calster et al. 2019).

    - **slope**: b in logit P(y=1) = a + b * logit(p), fitted by unpenalised logistic
      regression. 1 is ideal; below 1 the predictions are too extreme (overfitting).
    - **intercept**: a in logit P(y=1) = a + logit(p), i.e. with the slope fixed at 1 (an
      offset): calibration-in-the-large. 0 is ideal; positive means risk is underestimated
      on average.

    With ``w``, both are weighted logistic fits (each row's log-likelihood counts ``w`` times).
    Probabilities are clipped to [1e-12, 1 - 1e-12] before the logit. Either value is NaN
    when it is undefined: one class, fewer than 2 rows, no spread in ``p`` (slope), or a fit
    that does not converge (perfect separation).

    Returns
    -------
    (slope, intercept) : tuple of float
    """
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    if yy.size < 2 or not _two_classes(yy):
        return math.nan, math.nan
    lp = _logit(pp)
    zero = np.zeros_like(lp)
    slope = math.nan
    if np.ptp(lp) > 0:
        coef = _newton_logistic(yy, lp, zero, weight=ww)
        if coef is not None:
            slope = float(coef[1])
    coef = _newton_logistic(yy, None, lp, weight=ww)
    intercept = math.nan if coef is None else float(coef[0])
    return slope, intercept


def citl_interval(
    y: Any, p: Any, w: Any = None, cluster: Any = None, level: float = 0.95
) -> tuple[float, float, float]:
    """Calibration-in-the-large with a client-clustered (sandwich) Wald interval.

    CITL ``a`` is the weighted intercept-only logistic fit with offset logit(p) (as in
    :func:`calibration_slope_intercept`). Its variance is the cluster-robust sandwich
    ``sum_c (sum_{i in c} w_i (y_i - mu_i))^2 / (sum_i w_i mu_i (1 - mu_i))^2`` (Liang & Zeger
    1986): a client's landmark rows share one outcome, so rows are not independent; with
    weights it also carries their variance. Without ``cluster`` every row is its own cluster.

    Returns
    -------
    (citl, low, high) : tuple of float
        NaN where CITL is undefined (one class, no rows) or the sandwich is degenerate.
    """
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    _, a = calibration_slope_intercept(yy, pp, ww)
    if not math.isfinite(a):
        return math.nan, math.nan, math.nan
    codes = (
        np.arange(yy.size)
        if cluster is None
        else pd.factorize(np.asarray(cluster).reshape(-1), use_na_sentinel=False)[0]
    )
    if codes.shape != yy.shape:
        raise ValueError("cluster must have one id per row")
    mu = 1.0 / (1.0 + np.exp(-(_logit(pp) + a)))
    info = float(ww @ (mu * (1.0 - mu)))
    score = np.bincount(codes, weights=ww * (yy - mu))
    if info <= 0 or score.size < 2:
        return a, math.nan, math.nan
    # Small-sample factor G/(G-1) of the cluster-robust variance (Stata's CR1).
    var = float(score @ score) / info**2 * score.size / (score.size - 1)
    z = float(norm.ppf(0.5 + level / 2.0))
    half = z * math.sqrt(var)
    return a, a - half, a + half


def expected_ece(
    p: Any, w: Any = None, n_bins: int = 10, n_draws: int = 200, seed: int = 0
) -> tuple[float, float]:
    """ECE of a perfectly calibrated model with these predictions: outcomes drawn as
    Bernoulli(p), one per row, ``n_draws`` times.

    ECE is never 0 on finite rows: a few hundred rows of a perfectly calibrated model give an
    ECE of ~0.03, so a fixed target line would call chance a miscalibration. Rows are drawn
    independently, which is exact when each client has one row (a single landmark).

    Returns
    -------
    (median, p95) : tuple of float
        Median and 95th percentile of the simulated ECE; NaN without rows.
    """
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if pp.size == 0:
        return math.nan, math.nan
    ww = _weights(w, pp.size)
    rng = np.random.default_rng(seed)
    draws = [
        ece((rng.random(pp.size) < pp).astype(np.float64), pp, n_bins, ww) for _ in range(n_draws)
    ]
    median, p95 = np.quantile(draws, [0.5, 0.95])
    return float(median), float(p95)


def flag_top(y: Any, p: Any, frac: float = 0.10, w: Any = None) -> tuple[float, float, float]:
    """Sensitivity and PPV when the highest-risk ``frac`` of rows are flagged.

    k = ceil(frac * n) rows are targeted; the threshold is the k-th highest probability and
    every row with p >= threshold is flagged, so ties at the threshold are all flagged (as a
    deployed cut-off would). With ``w`` the top share is of the weight and the rates are
    weighted.

    Returns
    -------
    (sensitivity, ppv, threshold) : tuple of float
        Sensitivity = flagged dropouts / all dropouts (NaN without dropouts); PPV = flagged
        dropouts / flagged rows; threshold in probability units. All NaN if there are no rows.
    """
    if not 0.0 < frac <= 1.0:
        raise ValueError("frac must be in (0, 1]")
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    n = yy.size
    if n == 0:
        return math.nan, math.nan, math.nan
    if w is None:
        # The small epsilon keeps 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
        k = max(1, math.ceil(frac * n - 1e-9))
        threshold = float(np.partition(pp, n - k)[n - k])
    else:
        order = np.argsort(-pp, kind="stable")
        reach = np.cumsum(ww[order])
        at = min(int(np.searchsorted(reach, frac * reach[-1] * (1 - 1e-12))), n - 1)
        threshold = float(pp[order][at])
    flagged = pp >= threshold
    tp = float(ww[flagged] @ yy[flagged])
    events = float(ww @ yy)
    sensitivity = tp / events if events > 0 else math.nan
    flagged_weight = float(ww[flagged].sum())
    return sensitivity, tp / flagged_weight if flagged_weight > 0 else math.nan, threshold


def _resample_index(codes: np.ndarray, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one cluster bootstrap resample: whole clusters drawn with replacement."""
    draws = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
    return np.repeat(np.arange(codes.size), draws[codes])


def bootstrap_ci(
    metric: Metric,
    y: Any,
    p: Any,
    n_boot: int = 200,
    seed: int = 0,
    cluster: Any | None = None,
    level: float = 0.95,
    w: Any = None,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric(y, p)``.

    Parameters
    ----------
    metric : callable(y, p) -> float
        E.g. :func:`auroc` or :func:`brier`.
    y, p : array-like of shape (n_rows,)
        Outcomes (0/1) and probabilities.
    n_boot : int, default 200
        Resamples.
    seed : int, default 0
        Seed of the resampling.
    cluster : array-like of shape (n_rows,), optional
        Cluster id per row (the client id): whole clusters are resampled, so all landmark
        rows of one client move together; their correlation would otherwise make the
        interval too narrow (Field & Welsh 2007). Without it, rows are resampled.
    level : float, default 0.95
        Coverage of the interval.
    w : array-like of shape (n_rows,), optional
        Row weights (``metric`` must then take them as its third argument); a resample keeps
        each drawn row's weight.

    Returns
    -------
    (low, high) : tuple of float
        Percentiles (1 - level)/2 and (1 + level)/2 of the resampled metric. Resamples on
        which the metric is undefined (e.g. one class) are dropped; if fewer than half of them
        remain, (NaN, NaN).
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    yy, pp = _arrays(y, p)
    ww = _weights(w, yy.size)
    if yy.size == 0:
        return math.nan, math.nan
    if cluster is None:
        codes = np.arange(yy.size)
        n_clusters = yy.size
    else:
        cl = np.asarray(cluster).reshape(-1)
        if cl.shape != yy.shape:
            raise ValueError("cluster must have one id per row")
        codes, uniques = pd.factorize(cl, use_na_sentinel=False)
        n_clusters = len(uniques)
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    weighted = _WEIGHTED.get(metric)
    if weighted is not None:
        # Same resamples, as row multiplicities: no re-sorting per resample.
        fn = weighted(yy, pp)
        for b in range(n_boot):
            draws = np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
            stats[b] = fn(draws[codes] * ww)
    else:
        for b in range(n_boot):
            idx = _resample_index(codes, n_clusters, rng)
            stats[b] = metric(yy[idx], pp[idx]) if w is None else metric(yy[idx], pp[idx], ww[idx])
    finite = stats[np.isfinite(stats)]
    if finite.size < max(1, n_boot // 2):
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


#: Metrics with a weighted fast path for the bootstrap (identical values, tested).
_WEIGHTED: dict[Metric, Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], float]]] = {
    auroc: _weighted_auroc,
    brier: _weighted_brier,
}


def _point_metrics(
    y: np.ndarray, p: np.ndarray, n_bins: int, w: np.ndarray | None = None
) -> dict[str, float]:
    """Every point metric for one set of rows (already validated); counts are rows, rates and
    metrics weighted by ``w`` when given."""
    n = int(y.size)
    events = int(y.sum())
    ww = _weights(w, n)
    total = float(ww.sum())
    slope, intercept = calibration_slope_intercept(y, p, w)
    return {
        "n": n,
        "n_events": events,
        "prevalence": float(ww @ y) / total if total > 0 else math.nan,
        "mean_probability": float(ww @ p) / total if total > 0 else math.nan,
        "auroc": auroc(y, p, w),
        "auprc": auprc(y, p, w),
        "brier": brier(y, p, w),
        "ece": ece(y, p, n_bins, w),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "effective_n": kish_effective_n(ww) if n else math.nan,
    }


@dataclass(frozen=True)
class EvaluationReport:
    """Metrics of one set of predictions, overall and per subgroup.

    Attributes
    ----------
    overall : dict of str to float
        ``n``, ``n_events``, ``prevalence``, ``mean_probability``, ``auroc`` with
        ``auroc_ci_low``/``auroc_ci_high``, ``auprc``, ``brier`` with
        ``brier_ci_low``/``brier_ci_high``, ``ece``, ``calibration_slope``,
        ``calibration_intercept``, and the flagging operating point ``flag_fraction``,
        ``flag_sensitivity``, ``flag_ppv``, ``flag_threshold``. Probability units; CIs are
        95% percentile bootstrap intervals, resampled by cluster when one was given. With
        weights, rates and metrics are weighted (``n`` and ``n_events`` stay row counts);
        ``effective_n`` (Kish; ``n`` unweighted), ``weight_min`` and ``weight_max`` say how
        much the weights stretch; ``citl_ci_low``/``citl_ci_high`` bound CITL (95%, sandwich,
        clustered by ``cluster``).
    per_group : dict of str to pandas.DataFrame
        One table per ``by`` column, one row per value (missing values form their own row):
        ``value``, ``n``, ``n_clients`` (distinct clusters, or rows without ``cluster``),
        ``events``, ``prevalence``, ``mean_probability``, ``auroc``,
        ``auprc``, ``brier``, ``ece``, ``calibration_slope``, ``calibration_intercept``,
        ``citl_ci_low``/``citl_ci_high`` (95% client-clustered sandwich interval of CITL:
        :func:`citl_interval`), ``effective_n``.
        Counts are always filled; metrics are NaN where undefined.
    """

    overall: dict[str, float]
    per_group: dict[str, pd.DataFrame] = field(default_factory=dict)


def evaluate(
    y: Any,
    p: Any,
    *,
    frame: pd.DataFrame | None = None,
    by: Sequence[str] = (),
    cluster: Any | None = None,
    n_boot: int = 200,
    seed: int = 0,
    n_bins: int = 10,
    flag_fraction: float = 0.10,
    weight: Any | None = None,
) -> EvaluationReport:
    """Evaluate calibrated probabilities overall and per subgroup.

    Parameters
    ----------
    y : array-like of shape (n_rows,)
        Outcome: 1 = dropout, 0 = completed.
    p : array-like of shape (n_rows,)
        Calibrated probability of dropout, in [0, 1].
    frame : pandas.DataFrame, optional
        Row i describes y[i] (positional, the index is ignored); must hold the ``by`` columns,
        e.g. ``landmark``, ``clinic_id``, ``age_band``, ``gender``, ``referral_source``.
    by : sequence of str
        Columns of ``frame`` to break the metrics down by.
    cluster : array-like of shape (n_rows,), optional
        Client id per row, for the cluster bootstrap of the overall AUROC and Brier CIs.
    n_boot, seed : int
        Bootstrap resamples and seed; ``n_boot=0`` skips the intervals (NaN).
    n_bins : int, default 10
        ECE bins.
    flag_fraction : float, default 0.10
        Share of highest-risk rows flagged for the sensitivity/PPV operating point.
    weight : array-like of shape (n_rows,), optional
        Row weights (inverse-probability-of-censoring weights of the evaluated clients):
        every metric, interval and subgroup table is weighted. None: unweighted.

    Returns
    -------
    EvaluationReport
    """
    yy, pp = _arrays(y, p)
    ww = None if weight is None else _weights(weight, yy.size)
    overall: dict[str, float] = _point_metrics(yy, pp, n_bins, ww)
    overall["weight_min"] = float(ww.min()) if ww is not None and ww.size else 1.0
    overall["weight_max"] = float(ww.max()) if ww is not None and ww.size else 1.0
    for name, fn in (("auroc", auroc), ("brier", brier)):
        # n_boot=0 skips the intervals (NaN), e.g. for per-therapist tables or gate checks.
        low, high = (
            bootstrap_ci(fn, yy, pp, n_boot=n_boot, seed=seed, cluster=cluster, w=ww)
            if n_boot > 0
            else (math.nan, math.nan)
        )
        overall[f"{name}_ci_low"] = low
        overall[f"{name}_ci_high"] = high
    sens, ppv, threshold = flag_top(yy, pp, flag_fraction, ww)
    overall.update(
        flag_fraction=flag_fraction,
        flag_sensitivity=sens,
        flag_ppv=ppv,
        flag_threshold=threshold,
    )

    cluster_codes = None
    if cluster is not None:
        cluster_codes = pd.factorize(np.asarray(cluster).reshape(-1), use_na_sentinel=False)[0]
        if cluster_codes.shape != yy.shape:
            raise ValueError("cluster must have one id per row")

    overall["citl_ci_low"], overall["citl_ci_high"] = citl_interval(yy, pp, ww, cluster_codes)[1:]

    def clients_of(mask: np.ndarray) -> int:
        """Distinct clusters (clients) among the rows; rows when no cluster was given."""
        if cluster_codes is None:
            return int(mask.sum())
        return int(np.unique(cluster_codes[mask]).size)

    per_group: dict[str, pd.DataFrame] = {}
    if by and frame is None:
        raise ValueError("by needs a frame holding those columns")
    if frame is not None and len(frame) != yy.size:
        raise ValueError("frame must have one row per prediction")
    for column in by:
        if frame is None or column not in frame.columns:
            raise ValueError(f"column {column!r} is not in frame")
        codes, values = pd.factorize(frame[column], sort=True, use_na_sentinel=False)
        rows = []
        for code, value in enumerate(values):
            mask = codes == code
            mw = None if ww is None else ww[mask]
            metrics = _point_metrics(yy[mask], pp[mask], n_bins, mw)
            _, metrics["citl_ci_low"], metrics["citl_ci_high"] = citl_interval(
                yy[mask], pp[mask], mw, None if cluster_codes is None else cluster_codes[mask]
            )
            rows.append(
                {
                    "value": value,
                    "n": metrics.pop("n"),
                    "n_clients": clients_of(mask),
                    "events": metrics.pop("n_events"),
                    **metrics,
                }
            )
        columns = [
            "value",
            "n",
            "n_clients",
            "events",
            "prevalence",
            "mean_probability",
            "auroc",
            "auprc",
            "brier",
            "ece",
            "calibration_slope",
            "calibration_intercept",
            "citl_ci_low",
            "citl_ci_high",
            "effective_n",
        ]
        per_group[column] = pd.DataFrame(rows, columns=columns)
    return EvaluationReport(overall=overall, per_group=per_group)
