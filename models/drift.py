"""Drift of new data against a model's reference profile: PSI and KS per feature, per explanation
group and of the score.

The reference (:mod:`models.reference`) keeps, per feature, the bin edges at the deciles of the
training reference rows and the share of rows in each bin plus the missing share; for the score,
the share of rows in each 5-point probability bin. New rows are counted in the same bins and
compared with two statistics:

- **PSI**, the population stability index ``sum((a - e) * ln(a / e))`` over the bins, ``a`` the
  new share and ``e`` the reference share (both floored at :data:`SHARE_FLOOR` so an empty bin
  does not give infinity). Missing values (NaN is "undefined by design", e.g. no rating yet) are
  a bin of their own, so a change in how often a feature is undefined counts as drift.
  Thresholds follow the credit-scoring convention (Siddiqi 2006, *Credit Risk Scorecards*,
  ch. 8): below :data:`PSI_WATCH` no real change, :data:`PSI_WATCH` to :data:`PSI_ALERT` a
  change worth watching, above :data:`PSI_ALERT` a shift that needs action. By chance alone PSI
  is about ``(bins - 1) / n`` (``n * PSI`` is close to a chi-squared with ``bins - 1`` degrees of
  freedom), hence :data:`MIN_ROWS`.
- **KS**, the Kolmogorov-Smirnov distance between the reference's and the new rows' cumulative
  distributions of the finite values, evaluated at the bin edges (so it is a lower bound of the
  exact statistic). It alerts when it is at least :data:`KS_ALERT` (an effect size: a shift of
  about half a standard deviation of a normal variable) *and* beyond the two-sample critical
  value at level :data:`KS_LEVEL`, ``c * sqrt(1/n + 1/m)`` with ``c = sqrt(-ln(level/2)/2)``
  (Kolmogorov's asymptotic distribution; ``m`` the reference rows). The first condition keeps a
  large clinic from alerting on trivial shifts, the second a small one from alerting on noise.

Status of one feature or of the score: ``too_few`` below ``min_rows`` rows (the statistics are
still reported), else ``alert`` when PSI >= :data:`PSI_ALERT` or KS alerts, ``watch`` when
PSI >= :data:`PSI_WATCH`, else ``ok``. A **group's** drift is its worst feature: the largest PSI,
the largest KS and the worst status of the features in the group (a group is as drifted as its
most drifted input; the model reads every feature).

Pure numpy, no I/O: the service's live gauges and ``alliance-risk monitor`` both call
:func:`drift_report`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from features.registry import FeatureRegistry
from models.reference import QUANTILES, SCORE_BINS, ReferenceProfile, drift_bins

#: Siddiqi (2006): PSI below 0.10 is no significant change, 0.10-0.25 some change.
PSI_WATCH = 0.10
#: Siddiqi (2006): PSI above 0.25 is a significant shift.
PSI_ALERT = 0.25
#: KS distance that alerts (when also significant at :data:`KS_LEVEL`).
KS_ALERT = 0.20
#: Significance level of the KS critical value.
KS_LEVEL = 0.001
#: Fewest rows for a status other than ``too_few``: at 200 rows, chance alone gives a decile PSI
#: of about 0.05 and reaches :data:`PSI_ALERT` with a probability below one in a million.
MIN_ROWS = 200
#: Floor of a bin share in the PSI (the usual 0.0001 of PSI implementations).
SHARE_FLOOR = 1e-4
#: Adjacent score bins are merged until each holds at least this share of the reference rows
#: (the 20 fixed bins have near-empty tails, where one row would weigh like a shift).
SCORE_MIN_SHARE = 0.05
#: Status values, best first.
STATUSES = ("ok", "watch", "alert", "too_few")

_SEVERITY = {"ok": 0, "watch": 1, "alert": 2, "too_few": -1}


@dataclass(frozen=True)
class Drift:
    """Drift of one feature, group or the score.

    ``psi`` and ``ks`` as in the module docstring (NaN when ``n`` is 0; ``ks`` is 0.0 when either
    side has no finite value); ``n`` the new rows; ``status`` one of :data:`STATUSES`.
    """

    psi: float
    ks: float
    n: int
    status: str


@dataclass(frozen=True)
class DriftReport:
    """Drift of the score, of each explanation group (registry order) and of each feature."""

    score: Drift
    groups: Mapping[str, Drift]
    features: Mapping[str, Drift]

    @property
    def status(self) -> str:
        """The worst status of the score and the groups (``too_few`` when the rows are)."""
        return worst_status([self.score, *self.groups.values()])


def worst_status(drifts: Any) -> str:
    """Worst status of some :class:`Drift` (``alert`` > ``watch`` > ``ok``); ``too_few`` when
    all are, or when there are none."""
    statuses = [d.status for d in drifts]
    judged = [s for s in statuses if s != "too_few"]
    return max(judged, key=_SEVERITY.__getitem__) if judged else "too_few"


def psi(actual: np.ndarray, expected: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins."""
    a = np.maximum(np.asarray(actual, dtype=np.float64), SHARE_FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_critical(n: int, m: int, level: float = KS_LEVEL) -> float:
    """Two-sample KS critical value at ``level`` for samples of ``n`` and ``m`` (asymptotic)."""
    if n <= 0 or m <= 0:
        return math.inf
    return math.sqrt(-math.log(level / 2) / 2) * math.sqrt(1 / n + 1 / m)


def _ks(actual_finite: np.ndarray, expected_finite: np.ndarray) -> float:
    """Largest CDF gap at the edges between two count/share vectors of the finite bins."""
    ta, te = actual_finite.sum(), expected_finite.sum()
    if actual_finite.shape[0] < 2 or ta <= 0 or te <= 0:
        return 0.0
    fa = np.cumsum(actual_finite)[:-1] / ta
    fe = np.cumsum(expected_finite)[:-1] / te
    return float(np.max(np.abs(fa - fe)))


def _judge(psi_value: float, ks_value: float, n: int, n_ref: int, min_rows: int) -> Drift:
    if n < min_rows:
        status = "too_few"
    elif psi_value >= PSI_ALERT or (ks_value >= KS_ALERT and ks_value >= ks_critical(n, n_ref)):
        status = "alert"
    elif psi_value >= PSI_WATCH:
        status = "watch"
    else:
        status = "ok"
    return Drift(psi=psi_value, ks=ks_value, n=n, status=status)


def _compare(
    counts: np.ndarray, expected: np.ndarray, n: int, n_ref: int, min_rows: int, *, missing: bool
) -> Drift:
    """Drift of bin counts (the last bin the missing one when ``missing``) against shares."""
    if n == 0:
        return Drift(psi=math.nan, ks=math.nan, n=0, status="too_few")
    finite = slice(None, -1) if missing else slice(None)
    ks_value = _ks(counts[finite], expected[finite])
    return _judge(psi(counts / n, expected), ks_value, n, n_ref, min_rows)


def _feature_bins(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Edges and expected shares (finite bins, then missing) of one feature's reference.

    Version-2 profiles store them. Version-1 profiles kept only :data:`QUANTILES`: their nominal
    shares stand in (tied quantiles merge their bins), an approximation for discrete features.
    """
    missing = float(entry["missing_share"])
    if "edges" in entry:
        edges = np.asarray(entry["edges"], dtype=np.float64)
        return edges, np.append(np.asarray(entry["shares"], dtype=np.float64), missing)
    quantiles = entry.get("quantiles")
    if quantiles is None:
        return np.empty(0), np.array([1.0 - missing, missing])
    q = np.asarray(quantiles, dtype=np.float64)
    levels = np.asarray(QUANTILES, dtype=np.float64)
    nominal = np.diff(np.r_[0.0, levels, 1.0]) * (1.0 - missing)
    edges = np.unique(q)
    target = np.r_[np.searchsorted(edges, q, side="left"), edges.shape[0]]
    shares = np.zeros(edges.shape[0] + 1)
    np.add.at(shares, target, nominal)
    return edges, np.append(shares, missing)


def _merge_sparse(shares: np.ndarray, min_share: float) -> np.ndarray:
    """Group index of each bin after merging runs of adjacent bins up to ``min_share`` each."""
    group = np.zeros(shares.shape[0], dtype=np.int64)
    g, acc = 0, 0.0
    for i, s in enumerate(shares.tolist()):
        group[i] = g
        acc += s
        if acc >= min_share:
            g, acc = g + 1, 0.0
    if acc < min_share and g > 0:  # a sparse tail joins the last full group
        group[group == g] = g - 1
    return group


def _distribution(reference: ReferenceProfile | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(reference, ReferenceProfile):
        return reference.distribution
    return reference.get("distribution", reference)


def drift_report(
    reference: ReferenceProfile | Mapping[str, Any],
    registry: FeatureRegistry,
    features: np.ndarray,
    probability: np.ndarray,
    *,
    min_rows: int = MIN_ROWS,
) -> DriftReport:
    """PSI, KS and status of every feature, explanation group and the score of new rows.

    Parameters
    ----------
    reference : ReferenceProfile or mapping
        The model's profile (``scorer.reference``), its ``to_dict()``, or the ``distribution``
        part alone.
    registry : FeatureRegistry
        The model's registry: column order and groups of ``features``.
    features : ndarray of shape (n_rows, n_features)
        Model inputs of the new rows, registry column order, NaN = undefined (as
        ``ScoreSet.features``).
    probability : ndarray of shape (n_rows,)
        Their calibrated probabilities.
    min_rows : int, default :data:`MIN_ROWS`
        Fewest rows for a status other than ``too_few``.

    Returns
    -------
    DriftReport
        ``features`` and ``groups`` in registry order.

    Raises
    ------
    ValueError
        Shapes that do not match the registry, or a registry feature the reference lacks.
    """
    X = np.asarray(features, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[1] != len(registry.features) or X.shape[0] != p.shape[0]:
        raise ValueError("features must be (n_rows, n_features) in registry order, one per score")
    dist = _distribution(reference)
    n_ref = int(dist["n_rows"])
    n = int(X.shape[0])
    ref_features = {name: e for group in dist["features"].values() for name, e in group.items()}
    per_feature: dict[str, Drift] = {}
    for i, f in enumerate(registry.features):
        if f.name not in ref_features:
            raise ValueError(f"the reference profile has no feature {f.name!r}")
        edges, expected = _feature_bins(ref_features[f.name])
        counts = drift_bins(edges, X[:, i])
        per_feature[f.name] = _compare(counts, expected, n, n_ref, min_rows, missing=True)
    groups = {}
    for g in registry.groups:
        members = [per_feature[registry.features[j].name] for j in registry.index_of_group[g]]
        groups[g] = Drift(
            psi=max(d.psi for d in members),
            ks=max(d.ks for d in members),
            n=n,
            status="too_few" if n < min_rows else worst_status(members),
        )
    score = dist["score"]
    bins = np.asarray(score.get("bins", SCORE_BINS), dtype=np.float64)
    ref_shares = np.asarray(score["shares"], dtype=np.float64)
    merged = _merge_sparse(ref_shares, SCORE_MIN_SHARE)
    size = int(merged[-1]) + 1
    expected = np.bincount(merged, weights=ref_shares, minlength=size)
    counts, _ = np.histogram(np.clip(p, bins[0], bins[-1]), bins=bins)
    actual = np.bincount(merged, weights=counts.astype(np.float64), minlength=size)
    return DriftReport(
        score=_compare(actual, expected, n, n_ref, min_rows, missing=False),
        groups=groups,
        features=per_feature,
    )
