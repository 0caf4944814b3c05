"""Evaluation metrics for calibrated dropout probabilities, read the way a clinician would.

Discrimination (AUROC, AUPRC), accuracy of the probabilities (Brier), calibration (ECE,
reliability table, calibration slope and intercept), the operating point of flagging the top
10%, cluster-bootstrap intervals, and per-subgroup tables with counts (TRIPOD+AI, Collins et
al. 2024).

Every metric returns NaN rather than raising or warning when it is undefined on the rows
given (no rows, one class, no spread in the predictions): a small subgroup must not break a
report. Inputs that are wrong rather than degenerate (labels other than 0/1, probabilities
outside [0, 1] or missing, mismatched lengths) raise ``ValueError`` naming the row, never the
value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

Metric = Callable[[np.ndarray, np.ndarray], float]

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


def auroc(y: Any, p: Any) -> float:
    """Area under the ROC curve: Mann-Whitney U / (n1 n0), ties counted 1/2; NaN if one class.

    Equal to ``sklearn.metrics.roc_auc_score`` (tested); computed by one sort and block sums
    because the bootstrap calls it hundreds of times.
    """
    yy, pp = _arrays(y, p)
    if not _two_classes(yy):
        return math.nan
    return _weighted_auroc(yy, pp)(np.ones_like(yy))


def auprc(y: Any, p: Any) -> float:
    """Average precision (step-wise area under the precision-recall curve); NaN without events.

    ``sklearn.metrics.average_precision_score``: no trapezoidal interpolation, which would be
    optimistic. A useless model scores the prevalence.
    """
    yy, pp = _arrays(y, p)
    if yy.size == 0 or yy.sum() == 0:
        return math.nan
    return float(average_precision_score(yy, pp))


def brier(y: Any, p: Any) -> float:
    """Brier score: mean squared difference between probability and outcome; NaN if no rows."""
    yy, pp = _arrays(y, p)
    if yy.size == 0:
        return math.nan
    return float(np.mean((pp - yy) ** 2))


def reliability_table(y: Any, p: Any, n_bins: int = 10) -> pd.DataFrame:
    """Calibration curve on ``n_bins`` equal-width probability bins.

    Bins are [0, 1/n_bins), ..., [1 - 1/n_bins, 1] (the last one closed). Empty bins are kept
    with n = 0 and NaN means, so tables from different models line up.

    Returns
    -------
    pandas.DataFrame
        One row per bin: ``bin_low``, ``bin_high``, ``n``, ``mean_predicted`` (mean
        probability), ``observed_rate`` (fraction of dropouts).
    """
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    yy, pp = _arrays(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.minimum((pp * n_bins).astype(np.intp), n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=pp, minlength=n_bins)
    sum_y = np.bincount(idx, weights=yy, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(n > 0, sum_p / n, np.nan)
        rate = np.where(n > 0, sum_y / n, np.nan)
    return pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "n": n.astype(np.int64),
            "mean_predicted": mean_p,
            "observed_rate": rate,
        }
    )


def ece(y: Any, p: Any, n_bins: int = 10) -> float:
    """Expected calibration error on equal-width bins, weighted by count.

    ECE = sum over bins b of (n_b / n) * |observed rate_b - mean probability_b|, with the bins
    of :func:`reliability_table` (Naeini et al. 2015). In probability units; 0 is perfect.
    NaN if there are no rows. Equal-width bins are the convention of the promotion gate
    (ECE <= 0.05); with few high-risk rows the top bins are noisy, so read it with the counts.
    """
    table = reliability_table(y, p, n_bins)
    n = table["n"].to_numpy()
    total = n.sum()
    if total == 0:
        return math.nan
    gap = np.abs(table["observed_rate"].to_numpy() - table["mean_predicted"].to_numpy())
    return float(np.sum(n[n > 0] * gap[n > 0]) / total)


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _P_CLIP, 1.0 - _P_CLIP)
    return np.log(q) - np.log1p(-q)


def _newton_logistic(
    y: np.ndarray, x: np.ndarray | None, offset: np.ndarray, max_iter: int = 100
) -> np.ndarray | None:
    """Unpenalised logistic MLE of y on [1, x] (or [1] if x is None) with an offset.

    Returns the coefficients, or None when Newton does not converge (e.g. separation).
    """
    design = np.ones((y.size, 1)) if x is None else np.column_stack([np.ones(y.size), x])
    beta = np.zeros(design.shape[1])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(max_iter):
            eta = offset + design @ beta
            mu = 1.0 / (1.0 + np.exp(-eta))
            w = mu * (1.0 - mu)
            grad = design.T @ (y - mu)
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


def calibration_slope_intercept(y: Any, p: Any) -> tuple[float, float]:
    """Calibration slope and calibration intercept (Van Calster et al. 2019).

    - **slope**: b in logit P(y=1) = a + b * logit(p), fitted by unpenalised logistic
      regression. 1 is ideal; below 1 the predictions are too extreme (overfitting).
    - **intercept**: a in logit P(y=1) = a + logit(p), i.e. with the slope fixed at 1 (an
      offset): calibration-in-the-large. 0 is ideal; positive means risk is underestimated
      on average.

    Probabilities are clipped to [1e-12, 1 - 1e-12] before the logit. Either value is NaN
    when it is undefined: one class, fewer than 2 rows, no spread in ``p`` (slope), or a fit
    that does not converge (perfect separation).

    Returns
    -------
    (slope, intercept) : tuple of float
    """
    yy, pp = _arrays(y, p)
    if yy.size < 2 or not _two_classes(yy):
        return math.nan, math.nan
    lp = _logit(pp)
    zero = np.zeros_like(lp)
    slope = math.nan
    if np.ptp(lp) > 0:
        coef = _newton_logistic(yy, lp, zero)
        if coef is not None:
            slope = float(coef[1])
    coef = _newton_logistic(yy, None, lp)
    intercept = math.nan if coef is None else float(coef[0])
    return slope, intercept


def flag_top(y: Any, p: Any, frac: float = 0.10) -> tuple[float, float, float]:
    """Sensitivity and PPV when the highest-risk ``frac`` of rows are flagged.

    k = ceil(frac * n) rows are targeted; the threshold is the k-th highest probability and
    every row with p >= threshold is flagged, so ties at the threshold are all flagged (as a
    deployed cut-off would).

    Returns
    -------
    (sensitivity, ppv, threshold) : tuple of float
        Sensitivity = flagged dropouts / all dropouts (NaN without dropouts); PPV = flagged
        dropouts / flagged rows; threshold in probability units. All NaN if there are no rows.
    """
    if not 0.0 < frac <= 1.0:
        raise ValueError("frac must be in (0, 1]")
    yy, pp = _arrays(y, p)
    n = yy.size
    if n == 0:
        return math.nan, math.nan, math.nan
    # The small epsilon keeps 0.1 * 30 = 3.0000000000000004 from rounding up to 4.
    k = max(1, math.ceil(frac * n - 1e-9))
    threshold = float(np.partition(pp, n - k)[n - k])
    flagged = pp >= threshold
    tp = float(yy[flagged].sum())
    events = float(yy.sum())
    sensitivity = tp / events if events > 0 else math.nan
    return sensitivity, tp / float(flagged.sum()), threshold


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
            stats[b] = fn(draws[codes].astype(np.float64))
    else:
        for b in range(n_boot):
            idx = _resample_index(codes, n_clusters, rng)
            stats[b] = metric(yy[idx], pp[idx])
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


def _point_metrics(y: np.ndarray, p: np.ndarray, n_bins: int) -> dict[str, float]:
    """Every point metric for one set of rows (already validated)."""
    n = int(y.size)
    events = int(y.sum())
    slope, intercept = calibration_slope_intercept(y, p)
    return {
        "n": n,
        "n_events": events,
        "prevalence": events / n if n else math.nan,
        "mean_probability": float(p.mean()) if n else math.nan,
        "auroc": auroc(y, p),
        "auprc": auprc(y, p),
        "brier": brier(y, p),
        "ece": ece(y, p, n_bins),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
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
        95% percentile bootstrap intervals, resampled by cluster when one was given.
    per_group : dict of str to pandas.DataFrame
        One table per ``by`` column, one row per value (missing values form their own row):
        ``value``, ``n``, ``n_clients`` (distinct clusters, or rows without ``cluster``),
        ``events``, ``prevalence``, ``mean_probability``, ``auroc``,
        ``auprc``, ``brier``, ``ece``, ``calibration_slope``, ``calibration_intercept``.
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

    Returns
    -------
    EvaluationReport
    """
    yy, pp = _arrays(y, p)
    overall: dict[str, float] = _point_metrics(yy, pp, n_bins)
    for name, fn in (("auroc", auroc), ("brier", brier)):
        # n_boot=0 skips the intervals (NaN), e.g. for per-therapist tables or gate checks.
        low, high = (
            bootstrap_ci(fn, yy, pp, n_boot=n_boot, seed=seed, cluster=cluster)
            if n_boot > 0
            else (math.nan, math.nan)
        )
        overall[f"{name}_ci_low"] = low
        overall[f"{name}_ci_high"] = high
    sens, ppv, threshold = flag_top(yy, pp, flag_fraction)
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
            metrics = _point_metrics(yy[mask], pp[mask], n_bins)
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
        ]
        per_group[column] = pd.DataFrame(rows, columns=columns)
    return EvaluationReport(overall=overall, per_group=per_group)
