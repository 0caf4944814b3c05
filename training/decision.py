"""Decision support on the test split: net benefit, alert workload, calibration with intervals.

What an analyst needs to choose (and defend) a threshold for the high band:

- :func:`decision_curve`: net benefit against threshold probability (Vickers & Elkin 2006) for
  the model, the alert rule clinics use today, treating everyone and treating no one;
- :func:`alert_workload`: at each threshold, alerts per clinician per week and the share of
  dropouts who were alerted at some session before they left;
- :func:`calibration_ci` and :func:`subgroup_calibration`: calibration curves on quantile bins
  with Wilson 95% intervals on the effective sample size (a client's rows share one outcome),
  overall and per subgroup.

Units. The decision curve and the calibration curves count **landmark rows**: each scored
session is one decision (act now or not), which is how the score is used. The workload's
"dropouts caught" counts **clients** (episodes): a dropout is caught if any of their sessions
alerted. Net benefit is computed with a few lines of numpy rather than ``dcurves`` (not a
dependency of this project): the formula is one line, and our rows need the landmark unit
and the alert rule as a fixed 0/1 strategy, which a package would add nothing to.

Nothing here writes files or talks to MLflow; :mod:`training.report_plots` draws and writes.

The module is one job at about 650 lines and stays whole: the tables of the issue's "decision
support" list, which share one set of row checks, weight rules and units (landmark rows
against clients), and are read together by :func:`decision_support`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from features.contract import CLIENT_ID, CLINIC_ID, GENDER, REFERRAL_SOURCE, THERAPIST_ID
from training.metrics import expected_ece, kish_effective_n

if TYPE_CHECKING:
    from training.evaluation import ModelEvaluation

#: Threshold probabilities of the decision curve and the workload table.
THRESHOLDS = np.round(np.arange(0.01, 0.61, 0.01), 2)
#: Thresholds the model card tabulates (the high band's own threshold is added).
CARD_THRESHOLDS = (0.10, 0.15, 0.20, 0.25, 0.30, 0.40, 0.50)
#: Context column with each landmark row's appointment date, days since 1970-01-01.
SESSION_DAY = "session_day"
#: Subgroups drawn as calibration panels (``landmark`` has its own plot).
CALIBRATION_SUBGROUPS = (CLINIC_ID, "age_band", GENDER, REFERRAL_SOURCE)
MODEL, TREAT_ALL, TREAT_NONE, ALERT_RULE = "model", "treat all", "treat none", "alert rule"
ALERT_RULE_BASELINE = "alert_rule"
#: What an evaluation without a stated population is on (plot titles).
HELD_OUT = "held-out clients"


def weighting_caption(effective_n: float | None, n_rows: int) -> str:
    """``"weighted for censoring: effective n 812 of 1,204 rows"`` (Kish), or ``""``."""
    if effective_n is None or not np.isfinite(effective_n):
        return ""
    return f"weighted for censoring: effective n {effective_n:,.0f} of {n_rows:,} rows"


def _checked(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes (0/1) and scores in [0, 1] of equal length; messages name no value."""
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if yy.shape != pp.shape:
        raise ValueError("outcomes and probabilities differ in length")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("outcomes must be 0 or 1")
    if not ((pp >= 0.0) & (pp <= 1.0)).all():
        raise ValueError("probabilities must be within [0, 1]")
    return yy, pp


def _row_weights(w: Any, n: int) -> np.ndarray:
    """Row weights (ones when ``w`` is None): the evaluation's censoring weights."""
    if w is None:
        return np.ones(n)
    ww = np.asarray(w, dtype=np.float64).reshape(-1)
    if ww.shape != (n,) or not (np.isfinite(ww) & (ww >= 0)).all():
        raise ValueError("weights must be finite, >= 0 and one per row")
    return ww


def _odds(thresholds: Any) -> np.ndarray:
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if not ((t > 0.0) & (t < 1.0)).all():
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    return t / (1.0 - t)


def net_benefit(y: Any, p: Any, thresholds: Any = THRESHOLDS, w: Any = None) -> np.ndarray:
    """Net benefit of acting on every row with ``p >= pt``, at each threshold ``pt``.

    NB(pt) = TP/n - FP/n * pt / (1 - pt) (Vickers & Elkin 2006): true alerts per row, less
    false alerts weighted by the harm ratio the threshold implies (at pt = 0.25, one missed
    dropout weighs as much as three unneeded check-ins). In dropouts per row; the best
    possible value is the dropout rate.

    Parameters
    ----------
    y : array-like of shape (n,)
        1 = dropout, 0 = completed.
    p : array-like of shape (n,)
        Probability (or a 0/1 flag: a fixed strategy) per row.
    thresholds : array-like of float in (0, 1)
    w : array-like of shape (n,), optional
        Row weights (inverse probability of censoring): TP, FP and n are weighted sums.

    Returns
    -------
    numpy.ndarray of shape (n_thresholds,)
    """
    yy, pp = _checked(y, p)
    ww = _row_weights(w, yy.size)
    odds = _odds(thresholds)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    n = float(ww.sum())
    if yy.size == 0 or n == 0:
        return np.full(t.size, np.nan)
    # Sorted once: rows at or above each threshold are a suffix of the sorted scores.
    order = np.argsort(pp, kind="stable")
    ps, ys, ws = pp[order], yy[order], ww[order]
    events_above = np.r_[np.cumsum((ws * ys)[::-1])[::-1], 0.0]
    weight_above = np.r_[np.cumsum(ws[::-1])[::-1], 0.0]
    first = np.searchsorted(ps, t, side="left")
    tp = events_above[first]
    fp = weight_above[first] - tp
    return tp / n - fp / n * odds


def treat_all(y: Any, thresholds: Any = THRESHOLDS, w: Any = None) -> np.ndarray:
    """Net benefit of alerting on every row: prevalence - (1 - prevalence) * pt / (1 - pt)
    (prevalence weighted by ``w`` when given)."""
    yy = np.asarray(y, dtype=np.float64).reshape(-1)
    ww = _row_weights(w, yy.size)
    prevalence = float(ww @ yy / ww.sum()) if yy.size and ww.sum() > 0 else np.nan
    return prevalence - (1.0 - prevalence) * _odds(thresholds)


def net_benefit_interval(
    y: Any,
    p: Any,
    thresholds: Any = THRESHOLDS,
    *,
    cluster: Any,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    w: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of :func:`net_benefit`, resampling whole clients.

    A client's landmark rows share one outcome, so clients (``cluster``, one id per row) are
    drawn with replacement, as for the AUROC interval (:func:`training.metrics.bootstrap_ci`).
    Each resample is the rows with integer weights, so the scores are sorted once; row
    weights ``w`` (censoring) multiply them.

    Returns
    -------
    (low, high) : tuple of numpy.ndarray of shape (n_thresholds,)
    """
    yy, pp = _checked(y, p)
    ww = _row_weights(w, yy.size)
    odds = _odds(thresholds)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    codes, uniques = pd.factorize(np.asarray(cluster, dtype=object).reshape(-1))
    if codes.shape != yy.shape:
        raise ValueError("cluster must have one id per row")
    if yy.size == 0:
        return np.full(t.size, np.nan), np.full(t.size, np.nan)
    order = np.argsort(pp, kind="stable")
    first = np.searchsorted(pp[order], t, side="left")
    ys, cs, rw = yy[order], codes[order], ww[order]
    rng = np.random.default_rng(seed)
    stats = np.empty((n_boot, t.size))
    for b in range(n_boot):
        w = np.bincount(rng.integers(0, len(uniques), len(uniques)), minlength=len(uniques))[cs]
        w = w.astype(np.float64) * rw
        tp_above = np.r_[np.cumsum((w * ys)[::-1])[::-1], 0.0][first]
        all_above = np.r_[np.cumsum(w[::-1])[::-1], 0.0][first]
        stats[b] = (tp_above - (all_above - tp_above) * odds) / w.sum()
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha], axis=0)
    return low, high


#: Suffixes of the interval columns :func:`decision_curve` adds for each score.
CI_LOW, CI_HIGH = " 95% CI low", " 95% CI high"


def decision_curve(
    y: Any,
    scores: Mapping[str, Any],
    flags: Mapping[str, Any] | None = None,
    thresholds: Any = THRESHOLDS,
    *,
    cluster: Any | None = None,
    n_boot: int = 200,
    seed: int = 0,
    weight: Any | None = None,
) -> pd.DataFrame:
    """Net benefit of each strategy at each threshold, one column per strategy.

    Parameters
    ----------
    y : array-like of shape (n,)
        Outcome per landmark row.
    scores : Mapping[str, array-like of shape (n,)]
        Probabilities acted on at ``p >= threshold`` (e.g. ``{"model": p}``).
    flags : Mapping[str, array-like of 0/1], optional
        Fixed strategies, acted on where the flag is 1 whatever the threshold (the alert
        rule); their net benefit still falls with the threshold, as false alerts cost more.
    cluster : array-like of shape (n,), optional
        Client id per row: each score then gets a 95% client-bootstrap interval
        (:func:`net_benefit_interval`, ``n_boot`` resamples, ``seed``).
    weight : array-like of shape (n,), optional
        Row weights (the evaluation's inverse-probability-of-censoring weights): every net
        benefit is a weighted one, standing for every intake rather than the ended episodes.

    Returns
    -------
    pandas.DataFrame
        ``threshold`` then one column per strategy: the ``scores`` and ``flags`` names,
        ``treat all`` and ``treat none`` (0); with ``cluster``, ``<score> 95% CI low`` and
        ``<score> 95% CI high`` last.
    """
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {"threshold": t}
    for name, p in scores.items():
        out[name] = net_benefit(y, p, t, weight)
    for name, flag in (flags or {}).items():
        f = np.asarray(flag, dtype=np.float64).reshape(-1)
        if not np.isin(f, (0.0, 1.0)).all():
            raise ValueError(f"{name}: flags must be 0 or 1")
        yy = np.asarray(y, dtype=np.float64).reshape(-1)
        if f.shape != yy.shape:
            raise ValueError(f"{name}: flags and outcomes differ in length")
        fw = _row_weights(weight, yy.size)
        tp = float(fw @ ((f == 1) & (yy == 1))) / fw.sum()
        fp = float(fw @ ((f == 1) & (yy == 0))) / fw.sum()
        out[name] = tp - fp * _odds(t)
    out[TREAT_ALL] = treat_all(y, t, weight)
    out[TREAT_NONE] = np.zeros(t.size)
    if cluster is not None and n_boot > 0:
        for name, p in scores.items():
            low, high = net_benefit_interval(
                y, p, t, cluster=cluster, n_boot=n_boot, seed=seed, w=weight
            )
            out[name + CI_LOW], out[name + CI_HIGH] = low, high
    return pd.DataFrame(out)


def _weeks(day: np.ndarray) -> np.ndarray:
    """Monday-based week number of a day count since 1970-01-01 (a Thursday)."""
    return np.floor_divide(day.astype(np.int64) + 3, 7)


def alert_workload(
    frame: pd.DataFrame,
    scores: Mapping[str, Any],
    flags: Mapping[str, Any] | None = None,
    thresholds: Any = THRESHOLDS,
    weight: Any | None = None,
) -> pd.DataFrame:
    """Alerts per clinician per week and dropouts caught, at each threshold.

    Every landmark row is one scored session; it alerts when its score is at or above the
    threshold. Clinician-weeks are the (therapist, Monday-based week) pairs with at least one
    scored session; rows without a therapist count for the totals but not per clinician.

    Parameters
    ----------
    frame : pandas.DataFrame
        One row per landmark row: ``client_id``, ``therapist_id`` (may be missing),
        ``session_day`` (appointment date, days since 1970-01-01) and ``y`` (1 = the client
        dropped out).
    scores : Mapping[str, array-like of shape (n,)]
        Probabilities per row, alerting at ``p >= threshold``.
    flags : Mapping[str, array-like of 0/1], optional
        Fixed strategies (the alert rule): one table row each, with an empty threshold.
    weight : array-like of shape (n,), optional
        Row weights (censoring; one value per client): alerts are weighted counts, so the
        ended episodes' sessions stand for the ongoing ones' too, and the shares of clients
        caught or alerted are weighted by client.

    Returns
    -------
    pandas.DataFrame
        One row per (strategy, threshold): ``strategy``, ``threshold``, ``alerts`` (rows),
        ``alerts_per_100_sessions``, ``alerts_per_clinician_week`` (mean over clinician-weeks),
        ``alerts_per_clinician_week_p90`` (90th percentile over clinician-weeks),
        ``dropouts_caught`` (share of dropout clients alerted at any session),
        ``completers_alerted`` (share of completing clients alerted at any session).
    """
    missing = {CLIENT_ID, THERAPIST_ID, SESSION_DAY, "y"} - set(frame.columns)
    if missing:
        raise ValueError(f"workload frame lacks column(s): {', '.join(sorted(missing))}")
    y = frame["y"].to_numpy(dtype=np.float64)
    n = y.size
    rw = _row_weights(weight, n)
    client, _ = pd.factorize(frame[CLIENT_ID], use_na_sentinel=False)
    n_clients = int(client.max()) + 1 if n else 0
    dropout_client = np.zeros(n_clients, dtype=bool)
    dropout_client[client[y == 1]] = True
    client_weight = np.zeros(n_clients)
    client_weight[client] = rw
    therapist = frame[THERAPIST_ID]
    known = therapist.notna().to_numpy()
    week = _weeks(frame[SESSION_DAY].to_numpy())
    cw = np.full(n, -1, dtype=np.int64)
    cw[known], cw_values = pd.factorize(
        pd.MultiIndex.from_arrays([therapist[known].astype(str).to_numpy(), week[known]])
    )
    n_cw = len(cw_values)
    t = np.asarray(thresholds, dtype=np.float64).reshape(-1)

    def row(strategy: str, threshold: float, alert: np.ndarray) -> dict[str, Any]:
        alerted = np.zeros(n_clients, dtype=bool)
        alerted[client[alert]] = True
        hit = known & alert
        per_cw = np.bincount(cw[hit], weights=rw[hit], minlength=n_cw) if n_cw else np.zeros(0)
        n_drop = float(client_weight[dropout_client].sum())
        n_comp = float(client_weight[~dropout_client].sum())
        caught = float(client_weight[alerted & dropout_client].sum())
        false = float(client_weight[alerted & ~dropout_client].sum())
        return {
            "strategy": strategy,
            "threshold": threshold,
            "alerts": int(alert.sum()),
            "alerts_per_100_sessions": 100.0 * rw[alert].sum() / rw.sum() if n else np.nan,
            "alerts_per_clinician_week": per_cw.mean() if n_cw else np.nan,
            "alerts_per_clinician_week_p90": float(np.quantile(per_cw, 0.9)) if n_cw else np.nan,
            "dropouts_caught": caught / n_drop if n_drop else np.nan,
            "completers_alerted": false / n_comp if n_comp else np.nan,
        }

    rows = []
    for name, p in scores.items():
        pp = np.asarray(p, dtype=np.float64).reshape(-1)
        rows += [row(name, float(th), pp >= th) for th in t]
    for name, flag in (flags or {}).items():
        rows.append(row(name, np.nan, np.asarray(flag).reshape(-1) == 1))
    return pd.DataFrame(rows)


def _effective_n(y: np.ndarray, cluster: np.ndarray | None, w: np.ndarray) -> float:
    """Effective sample size of a weighted proportion over clustered rows.

    The binomial variance r(1 - r) over the cluster-robust (sandwich) variance of the weighted
    mean, sum_c (sum_{i in c} w_i (y_i - r))^2 / (sum w)^2, capped at the Kish effective n of
    the weights (Kish 1965). Unweighted and unclustered it is the row count; unweighted and
    clustered, the rows over the design effect of the clustering.
    """
    kish = float(w.sum() ** 2 / (w @ w)) if (w @ w) > 0 else 0.0
    total = float(w.sum())
    if total == 0:
        return 0.0
    rate = float(w @ y) / total
    codes = (
        np.arange(y.size) if cluster is None else pd.factorize(cluster, use_na_sentinel=False)[0]
    )
    robust = float(np.sum(np.bincount(codes, weights=w * (y - rate)) ** 2)) / total**2
    binomial = rate * (1.0 - rate)
    return min(kish, binomial / robust) if robust > 0 and binomial > 0 else kish


def calibration_ci(
    y: Any,
    p: Any,
    n_bins: int = 10,
    level: float = 0.95,
    *,
    cluster: Any | None = None,
    w: Any | None = None,
) -> pd.DataFrame:
    """Calibration curve on quantile bins of ``p`` with Wilson intervals of the observed rate.

    Quantile bins hold about the same number of rows each, so no point rests on a handful of
    high-risk rows (equal-width bins, as the ECE uses, do). A client's landmark rows share one
    outcome, so rows are not independent: with ``cluster`` (the client id per row) the Wilson
    interval (``scipy.stats.binomtest``) is taken on the bin's effective sample size, its rows
    divided by the Kish design effect of the clustering (Kish 1965); without it, on the rows.
    With row weights ``w`` (the evaluation's censoring weights) the mean prediction and the
    observed rate are weighted, as every test metric is, and the effective sample size also
    counts what the weights cost (:func:`_effective_n`).

    Returns
    -------
    pandas.DataFrame
        One row per non-empty bin: ``bin``, ``n`` (rows), ``events`` (dropout rows),
        ``mean_predicted``, ``observed_rate`` (weighted when ``w`` is given),
        ``effective_n``, ``ci_low``, ``ci_high`` (probability units).
    """
    yy, pp = _checked(y, p)
    ww = _row_weights(w, yy.size)
    columns = ["bin", "n", "events", "mean_predicted", "observed_rate", "effective_n",
               "ci_low", "ci_high"]  # fmt: skip
    if yy.size == 0:
        return pd.DataFrame(columns=columns)
    clusters = None if cluster is None else np.asarray(cluster, dtype=object).reshape(-1)
    if clusters is not None and clusters.shape != yy.shape:
        raise ValueError("cluster must have one id per row")
    codes = pd.qcut(pp, q=min(n_bins, yy.size), labels=False, duplicates="drop")
    codes = np.asarray(codes, dtype=np.int64)
    rows = []
    for b in np.unique(codes):
        mask = codes == b
        bw = ww[mask]
        if bw.sum() == 0:
            continue
        rate = float(bw @ yy[mask] / bw.sum())
        n_eff = max(
            1, round(_effective_n(yy[mask], None if clusters is None else clusters[mask], bw))
        )
        k_eff = min(n_eff, round(n_eff * rate))
        ci = binomtest(k_eff, n_eff).proportion_ci(confidence_level=level, method="wilson")
        rows.append([int(b) + 1, int(mask.sum()), int(yy[mask].sum()),
                     float(bw @ pp[mask] / bw.sum()), rate, n_eff, ci.low, ci.high])  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def subgroup_calibration(
    y: Any,
    p: Any,
    frame: pd.DataFrame,
    by: Sequence[str] = CALIBRATION_SUBGROUPS,
    *,
    n_bins: int = 5,
    min_n: int = 200,
    w: Any | None = None,
) -> pd.DataFrame:
    """:func:`calibration_ci` per value of each ``by`` column with at least ``min_n`` rows,
    clustered by ``frame``'s ``client_id`` when it has one, weighted by ``w`` when given.

    Returns
    -------
    pandas.DataFrame
        ``subgroup``, ``group`` (the value), ``group_n`` (rows), ``group_effective_n`` (Kish
        effective n of the group's weights; ``group_n`` unweighted), then the
        :func:`calibration_ci` columns. Smaller groups are left out: the model card calls
        subgroups under 200 test rows too small to judge, and their intervals span most of
        [0, 1].
    """
    yy, pp = _checked(y, p)
    ww = _row_weights(w, yy.size)
    clients = (
        frame[CLIENT_ID].to_numpy(dtype=object)
        if CLIENT_ID in frame.columns
        else np.arange(yy.size).astype(object)
    )
    parts = []
    for column in by:
        if column not in frame.columns:
            continue
        values = frame[column].astype(object).fillna("unknown").to_numpy()
        for value in pd.unique(values):
            mask = values == value
            if mask.sum() < min_n:
                continue
            table = calibration_ci(yy[mask], pp[mask], n_bins, cluster=clients[mask], w=ww[mask])
            parts.append(
                table.assign(
                    subgroup=column,
                    group=str(value),
                    group_n=int(mask.sum()),
                    group_effective_n=kish_effective_n(ww[mask]),
                )
            )
    if not parts:
        return pd.DataFrame(
            columns=[
                "subgroup",
                "group",
                "group_n",
                "group_effective_n",
                "bin",
                "n",
                "events",
                "mean_predicted",
                "observed_rate",
                "ci_low",
                "ci_high",
            ]  # fmt: skip
        )
    out = pd.concat(parts, ignore_index=True)
    lead = ["subgroup", "group", "group_n", "group_effective_n"]
    return out[lead + [c for c in out.columns if c not in lead]]


def expected_ece_by_landmark(
    landmark: Any, p: Any, w: Any = None, *, n_draws: int = 200, seed: int = 0
) -> pd.DataFrame:
    """ECE a perfectly calibrated model would show on each landmark's rows.

    A landmark holds one row per client, so outcomes drawn as Bernoulli(p) per row are the
    null of perfect calibration (:func:`training.metrics.expected_ece`). On 150-400 rows the
    median is ~0.035: a landmark's ECE is read against this, not against a fixed target.

    Returns
    -------
    pandas.DataFrame
        ``landmark``, ``ece_expected`` (median of ``n_draws`` simulations) and
        ``ece_expected_p95`` (95th percentile).
    """
    k = np.asarray(landmark, dtype=np.float64).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    ww = _row_weights(w, pp.size)
    rows = []
    for value in np.unique(k[np.isfinite(k)]):
        mask = k == value
        median, p95 = expected_ece(pp[mask], ww[mask], n_draws=n_draws, seed=seed)
        rows.append({"landmark": int(value), "ece_expected": median, "ece_expected_p95": p95})
    return pd.DataFrame(rows, columns=["landmark", "ece_expected", "ece_expected_p95"])


def rule_flags(probability: np.ndarray) -> np.ndarray:
    """0/1 alerts of the alert-rule baseline from its scored probabilities.

    The baseline gives each arm its observed training dropout rate
    (:class:`training.baselines.AlertRule`); the alerting arm is the one with the higher rate.
    """
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    if p.size == 0 or np.unique(p).size < 2:
        # One arm only: every row alerted, or none; the rate alone cannot say which.
        return np.zeros(p.size, dtype=np.int8)
    return (p == p.max()).astype(np.int8)


@dataclass(frozen=True)
class DecisionSupport:
    """The decision-support tables of one evaluation (all on the test split's landmark rows).

    ``decision_curve``: :func:`decision_curve` of the model and alert rule; ``workload``:
    :func:`alert_workload` (empty without appointment dates); ``calibration``:
    :func:`calibration_ci` of the model; ``subgroup_calibration``: :func:`subgroup_calibration`;
    ``expected_ece``: :func:`expected_ece_by_landmark` (what a perfectly calibrated model's
    ECE would be on each landmark's rows); ``population``: what was evaluated, for the plots'
    titles (:attr:`training.evaluation.ModelEvaluation.population`); ``effective_n``: Kish
    effective n of the censoring weights every table is weighted by (None: unweighted), and
    ``n_rows`` the landmark rows behind it, for the plots' captions.
    """

    decision_curve: pd.DataFrame
    workload: pd.DataFrame
    calibration: pd.DataFrame
    subgroup_calibration: pd.DataFrame
    expected_ece: pd.DataFrame = field(default_factory=pd.DataFrame)
    population: str = HELD_OUT
    effective_n: float | None = None
    n_rows: int = 0

    def weighting(self) -> str:
        """Caption text: how the rows are weighted (empty when they are not)."""
        return weighting_caption(self.effective_n, self.n_rows)

    def card_table(self, high_from: float | None = None) -> pd.DataFrame:
        """:func:`card_table` of this support's decision curve and workload."""
        return card_table(self.decision_curve, self.workload, high_from)


def card_table(
    curve: pd.DataFrame, workload: pd.DataFrame, high_from: float | None = None
) -> pd.DataFrame:
    """Net benefit and workload side by side at :data:`CARD_THRESHOLDS` and the high band's.

    Values are read at the nearest threshold of the curve's grid (0.01 apart), which the
    ``threshold`` column shows; the row nearest ``high_from`` is marked ``high band``.

    Returns
    -------
    pandas.DataFrame
        ``threshold``, ``net benefit, model``, ``net benefit, alert rule``, ``net benefit,
        treat all``, and when the workload is known ``alerts per 100 sessions``, ``alerts per
        clinician-week``, ``dropouts caught``, ``completers alerted``; then ``note``.
    """
    grid = curve["threshold"].to_numpy(dtype=float)
    if grid.size == 0:
        return pd.DataFrame()

    def nearest(t: float) -> int:
        return int(np.argmin(np.abs(grid - t)))

    picks = {nearest(t) for t in CARD_THRESHOLDS}
    band = None if high_from is None else nearest(high_from)
    if band is not None:
        picks.add(band)
    model = workload[workload["strategy"] == MODEL] if not workload.empty else workload
    rows = []
    for i in sorted(picks):
        c = curve.iloc[i]
        row: dict[str, Any] = {
            "threshold": grid[i],
            "net benefit, model": c.get(MODEL, np.nan),
            "net benefit, alert rule": c.get(ALERT_RULE, np.nan),
            "net benefit, treat all": c.get(TREAT_ALL, np.nan),
        }
        if not model.empty:
            w = model.iloc[int(np.argmin(np.abs(model["threshold"].to_numpy() - grid[i])))]
            row.update(
                {
                    "alerts per 100 sessions": w["alerts_per_100_sessions"],
                    "alerts per clinician-week": w["alerts_per_clinician_week"],
                    "dropouts caught": w["dropouts_caught"],
                    "completers alerted": w["completers_alerted"],
                }
            )
        row["note"] = f"high band (from {high_from:.3f})" if i == band else ""
        rows.append(row)
    return pd.DataFrame(rows)


def decision_support(evaluation: ModelEvaluation) -> DecisionSupport:
    """Every decision-support table of ``evaluation`` (its test landmark rows).

    The workload needs each row's appointment date (``session_day`` in the evaluation's
    context, set by :func:`training.evaluation.evaluate_scorer`); without it the workload table
    is empty. The alert rule is the evaluation's own 0/1 flags (``alert_flags``: a training
    run and ``alliance-risk evaluate`` alike), else read off a fitted ``alert_rule`` baseline.
    """
    data = evaluation.data
    y, p = data.y, evaluation.probability
    flags = {}
    if evaluation.alert_flags is not None:
        flags[ALERT_RULE] = np.asarray(evaluation.alert_flags)
    elif ALERT_RULE_BASELINE in evaluation.baseline_probability:
        flags[ALERT_RULE] = rule_flags(evaluation.baseline_probability[ALERT_RULE_BASELINE])
    # Censoring weights of the evaluation (None with --censoring exclude): the curve, the
    # workload and the calibration curves stand for every intake, as the metrics do.
    w = data.weight
    curve = decision_curve(y, {MODEL: p}, flags, cluster=data.client_id, weight=w)
    context = data.context
    if SESSION_DAY in context.columns:
        workload = alert_workload(context.assign(y=y), {MODEL: p}, flags, weight=w)
    else:
        workload = pd.DataFrame()
    return DecisionSupport(
        decision_curve=curve,
        workload=workload,
        calibration=calibration_ci(y, p, cluster=data.client_id, w=w),
        subgroup_calibration=subgroup_calibration(y, p, context, w=w),
        expected_ece=expected_ece_by_landmark(context["landmark"], p, w)
        if "landmark" in context.columns
        else pd.DataFrame(),
        population=evaluation.population,
        effective_n=None if w is None else kish_effective_n(w),
        n_rows=int(y.size),
    )
