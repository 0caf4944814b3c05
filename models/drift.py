"""Drift of new data against a model's reference profile: PSI and KS per feature, per explanation
group and of the score.

The reference (:mod:`models.reference`) keeps, per feature, the bin edges at the deciles of the
training reference rows and the share of rows in each bin plus the missing share; for the score,
the share of rows in each 5-point probability bin. New rows are counted in the same bins and
compared with two statistics:

- **PSI**, the population stability index ``sum((a - e) * ln(a / e))`` over the bins, ``a`` the
  new share and ``e`` the reference share, each smoothed by :data:`PSI_PSEUDOCOUNT` counts
  per bin given its sample size (new and reference clients, or rows), so an empty bin neither
  gives infinity nor, floored, a PSI that chance reaches far more often than the critical value
  below says; bins empty on both sides are left out. Missing values (NaN is "undefined by design", e.g. no rating yet) are
  a bin of their own, so a change in how often a feature is undefined counts as drift.
  Thresholds follow the credit-scoring convention (Siddiqi 2006, *Credit Risk Scorecards*,
  ch. 8): below :data:`PSI_WATCH` no real change, :data:`PSI_WATCH` to :data:`PSI_ALERT` a
  change worth watching, above :data:`PSI_ALERT` a shift that needs action. By chance alone PSI
  is about ``(bins - 1) * (1/n + 1/m)`` for ``n`` new and ``m`` reference rows
  (``PSI / (1/n + 1/m)`` is close to a chi-squared with ``bins - 1`` degrees of freedom), so a
  PSI counts (watch or alert) only when it is also beyond that chance level at
  :data:`PSI_LEVEL` (:func:`psi_critical`), as KS below; hence also :data:`MIN_ROWS`.
- **KS**, the Kolmogorov-Smirnov distance between the reference's and the new rows' cumulative
  distributions of the finite values, evaluated at the bin edges (so it is a lower bound of the
  exact statistic). It alerts when it is at least :data:`KS_ALERT` (an effect size: a shift of
  about half a standard deviation of a normal variable) *and* beyond the two-sample critical
  value at level :data:`KS_LEVEL`, ``c * sqrt(1/n + 1/m)`` with ``c = sqrt(-ln(level/2)/2)``
  (Kolmogorov's asymptotic distribution; ``n`` and ``m`` the new and reference rows, or
  clients: see below). The first condition keeps a large clinic from alerting on trivial
  shifts, the second a small one from alerting on noise.

**Which reference.** With ``clinic=...`` a clinic is compared with its own reference where the
profile has one (format 3, a clinic with at least
:data:`models.reference.CLINIC_MIN_CLIENTS` reference clients; ``DriftReport.baseline`` is
``"clinic"``), else with all clinics together (``"pooled"``). The features of a reference come
from every development client, the score from the calibration split's (out-of-sample scores),
so each has its own reference count; a clinic with too few calibration clients for its own
score shares has its score compared with all clinics'. Clinics differ through their
therapists and clients; compared with the pooled reference, that difference alone looks like
drift.

**Counting clients.** A client contributes one row per landmark, and several features (the
early alliance means) repeat one value per client on all its rows, so rows are not independent:
``n`` rows of ``k`` clients carry about as much information as ``k`` values. Given
``n_clients=``, the KS and PSI critical values use the new and the reference *client* counts,
and ``too_few`` is judged on clients (below ``min_clients``). Without it (a caller that only
knows rows) rows are counted, against ``min_rows``. A clinic's own reference is small (about a
hundred clients), so its chance PSI is large: without the critical value a per-clinic baseline
raised more watches than the pooled one, not fewer.

Status of one feature or of the score: ``too_few`` below ``min_rows`` rows or ``min_clients``
clients (the statistics are still reported), else ``alert`` when PSI >= :data:`PSI_ALERT` and
beyond chance, or KS alerts; ``watch`` when PSI >= :data:`PSI_WATCH` and beyond chance; else
``ok``. A **group's** drift is its worst feature: the largest PSI,
the largest KS and the worst status of the features in the group (a group is as drifted as its
most drifted input; the model reads every feature).

Pure numpy, no I/O: ``alliance-risk monitor`` calls :func:`drift_report` on its rows; the
service's live gauges count a window's rows pass by pass with :class:`DriftCounts`, which
:func:`drift_report` itself is (one rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import NormalDist
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
#: Significance level of the PSI critical value (:func:`psi_critical`).
PSI_LEVEL = 0.001
#: Fewest rows for a status other than ``too_few``: at 200 rows, chance alone gives a decile PSI
#: of about 0.05 and reaches :data:`PSI_ALERT` with a probability below one in a million.
MIN_ROWS = 200
#: Fewest clients for a status other than ``too_few`` when the caller counts clients
#: (``n_clients=``): the same chance argument as :data:`MIN_ROWS`, on independent units.
MIN_CLIENTS = 200
#: Where a slice's reference came from: its clinic's own, or all clinics together.
BASELINES = ("clinic", "pooled")
#: Floor of a bin share in :func:`psi` when the sample sizes are not given (the usual 0.0001
#: of PSI implementations).
SHARE_FLOOR = 1e-4
#: Counts added to every bin on both sides before the PSI (additive smoothing; Jeffreys's half
#: count). With 5% bins and a reference of 100 clients, the floor above made chance alone
#: exceed the critical value 1.1% of the time instead of 0.1%, mostly through one empty bin.
PSI_PSEUDOCOUNT = 0.5
#: Adjacent score bins are merged until each holds at least this share of the reference rows
#: (the 20 fixed bins have near-empty tails, where one row would weigh like a shift).
SCORE_MIN_SHARE = 0.05
#: The same for a feature's finite bins (deciles hold 10% each; a value tied across deciles
#: makes one wide bin, and a rare value a near-empty one: in a clinic's reference of a hundred
#: clients a 2% bin is often empty by chance, and its floored share turns noise into a PSI
#: above the alert level).
FEATURE_MIN_SHARE = 0.05
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
    """Drift of the score, of each explanation group (registry order) and of each feature.

    ``baseline`` says which reference the rows were compared with (one of :data:`BASELINES`);
    ``n_clients`` the clients the statistics counted (None when they counted rows).
    """

    score: Drift
    groups: Mapping[str, Drift]
    features: Mapping[str, Drift]
    baseline: str = "pooled"
    n_clients: int | None = None

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


def psi(
    actual: np.ndarray, expected: np.ndarray, *, n: int | None = None, m: int | None = None
) -> float:
    """Population stability index of two share vectors over the same bins.

    With ``n`` and ``m``, the sample sizes behind ``actual`` and ``expected`` (clients or rows),
    each side's shares are smoothed by :data:`PSI_PSEUDOCOUNT` counts per bin,
    ``(share * n + c) / (n + c * bins)``: an empty bin then weighs as half an observation would,
    and chance alone stays near the level :func:`psi_critical` is set at. Without them the
    shares are floored at :data:`SHARE_FLOOR` (the usual implementation; far too heavy for an
    empty bin of a small sample).
    """
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if n is not None and m is not None and n > 0 and m > 0:
        c, bins = PSI_PSEUDOCOUNT, a.shape[0]
        a = (a * n + c) / (n + c * bins)
        e = (e * m + c) / (m + c * bins)
    else:
        a = np.maximum(a, SHARE_FLOOR)
        e = np.maximum(e, SHARE_FLOOR)
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


@dataclass(frozen=True)
class _Counts:
    """Sample sizes of one comparison: ``n`` new rows; ``n_eff`` and ``m_eff`` the new and
    reference counts the KS critical value uses (clients or rows); ``minimum`` for ``n_eff``."""

    n: int
    n_eff: int
    m_eff: int
    minimum: int


def psi_critical(n: int, m: int, bins: int, level: float = PSI_LEVEL) -> float:
    """PSI that chance alone exceeds with probability ``level`` when samples of ``n`` and ``m``
    come from one distribution over ``bins`` bins.

    ``PSI / (1/n + 1/m)`` is close to a chi-squared with ``bins - 1`` degrees of freedom (PSI is
    to second order the chi-squared distance); its quantile by Wilson and Hilferty (1931),
    within 4% at ``level = 0.001`` for 1 degree of freedom and 2% from 3 on.
    """
    if n <= 0 or m <= 0:
        return math.inf
    df = max(bins - 1, 1)
    z = NormalDist().inv_cdf(1.0 - level)
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3 * (1.0 / n + 1.0 / m)


def _judge(psi_value: float, ks_value: float, bins: int, k: _Counts) -> Drift:
    psi_beyond_chance = psi_value >= psi_critical(k.n_eff, k.m_eff, bins)
    if k.n_eff < k.minimum:
        status = "too_few"
    elif (psi_value >= PSI_ALERT and psi_beyond_chance) or (
        ks_value >= KS_ALERT and ks_value >= ks_critical(k.n_eff, k.m_eff)
    ):
        status = "alert"
    elif psi_value >= PSI_WATCH and psi_beyond_chance:
        status = "watch"
    else:
        status = "ok"
    return Drift(psi=psi_value, ks=ks_value, n=k.n, status=status)


def _compare(counts: np.ndarray, expected: np.ndarray, k: _Counts, *, missing: bool) -> Drift:
    """Drift of bin counts (the last bin the missing one when ``missing``) against shares."""
    if k.n == 0:
        return Drift(psi=math.nan, ks=math.nan, n=0, status="too_few")
    finite = slice(None, -1) if missing else slice(None)
    ks_value = _ks(counts[finite], expected[finite])
    used = (counts > 0) | (expected > 0)  # a bin empty on both sides says nothing
    bins = int(np.count_nonzero(used))
    share = psi(counts[used] / k.n, expected[used], n=k.n_eff, m=k.m_eff)
    return _judge(share, ks_value, bins, k)


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


def _merge_finite(values: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``values`` (finite bins, then missing) with the finite bins merged as the reference's
    ``expected`` finite shares are by :func:`_merge_sparse` (to :data:`FEATURE_MIN_SHARE` of
    the finite rows); the missing bin stays its own."""
    finite = expected[:-1]
    total = float(finite.sum())
    if finite.shape[0] < 2 or total <= 0:
        return values
    group = _merge_sparse(finite / total, FEATURE_MIN_SHARE)
    merged = np.bincount(group, weights=values[:-1], minlength=int(group[-1]) + 1)
    return np.append(merged, values[-1])


def _distribution(reference: ReferenceProfile | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(reference, ReferenceProfile):
        return reference.distribution
    return reference.get("distribution", reference)


def _baseline(dist: Mapping[str, Any], clinic: str | None) -> Mapping[str, Any] | None:
    """The clinic's own part of the reference, or None (no clinic given, none kept for it)."""
    if clinic is None:
        return None
    own = dist.get("clinics", {}).get(clinic)
    return own if isinstance(own, Mapping) else None


def _reference_count(part: Mapping[str, Any], clients: bool) -> int:
    """Reference clients (``clients``; rows when the part does not say) or rows."""
    if clients and "n_clients" in part:
        return int(part["n_clients"])
    return int(part["n_rows"])


class DriftCounts:
    """Bin counts of new rows against one reference, accumulated pass by pass.

    The bins are the reference's (each feature's edges plus a missing bin, the score's 5-point
    bins); :meth:`add` counts a pass's rows into them and :meth:`report` judges the counts so
    far. The rows themselves are not kept, so a window scored a few clients at a time needs one
    pass's memory, not the window's; :func:`drift_report` is this class over one pass, so the
    report is the same however the rows were split (the counts are integers).

    Parameters
    ----------
    reference : ReferenceProfile or mapping
        As :func:`drift_report`'s.
    registry : FeatureRegistry
        The model's registry: column order and groups of the rows.
    clinic : str, optional
        As :func:`drift_report`'s.

    Raises
    ------
    ValueError
        A registry feature the reference lacks.
    """

    def __init__(
        self,
        reference: ReferenceProfile | Mapping[str, Any],
        registry: FeatureRegistry,
        *,
        clinic: str | None = None,
    ) -> None:
        self.registry = registry
        self.clinic = clinic
        dist = _distribution(reference)
        self._dist = dist
        self._own = _baseline(dist, clinic)
        ref_features = {name: e for group in dist["features"].values() for name, e in group.items()}
        self._edges: list[np.ndarray] = []
        self._expected: list[np.ndarray] = []
        for f in registry.features:
            if f.name not in ref_features:
                raise ValueError(f"the reference profile has no feature {f.name!r}")
            edges, expected = _feature_bins(ref_features[f.name])
            if self._own is not None:  # the clinic's shares in the same (all-clinics) bins
                entry = self._own["features"][f.name]
                expected = np.append(
                    np.asarray(entry["shares"], dtype=np.float64), entry["missing_share"]
                )
            self._edges.append(edges)
            self._expected.append(expected)
        self._score_bins = np.asarray(dist["score"].get("bins", SCORE_BINS), dtype=np.float64)
        self._feature_counts = [np.zeros(e.shape[0] + 2) for e in self._edges]
        self._score_counts = np.zeros(self._score_bins.shape[0] - 1, dtype=np.int64)
        self.n_rows = 0

    def add(self, features: np.ndarray, probability: np.ndarray) -> None:
        """Count rows (``features`` of shape ``(n_rows, n_features)`` in registry order, NaN =
        undefined, and their probabilities) into the bins.

        Raises
        ------
        ValueError
            Shapes that do not match the registry.
        """
        X, p = _rows(features, probability, len(self.registry.features))
        for i, edges in enumerate(self._edges):
            self._feature_counts[i] += drift_bins(edges, X[:, i])
        bins = self._score_bins
        counts, _ = np.histogram(np.clip(p, bins[0], bins[-1]), bins=bins)
        self._score_counts += counts
        self.n_rows += int(X.shape[0])

    def report(
        self,
        *,
        min_rows: int = MIN_ROWS,
        n_clients: int | None = None,
        min_clients: int = MIN_CLIENTS,
    ) -> DriftReport:
        """PSI, KS and status of every feature, group and the score of the rows counted so far
        (``min_rows``, ``n_clients``, ``min_clients`` as :func:`drift_report`'s).

        Raises
        ------
        ValueError
            ``n_clients`` below 0 or above the rows counted.
        """
        if n_clients is not None and not 0 <= n_clients <= self.n_rows:
            raise ValueError("n_clients must be between 0 and the number of rows")
        registry, dist, own = self.registry, self._dist, self._own
        part = own if own is not None else dist
        by_clients = n_clients is not None
        k = _Counts(
            n=self.n_rows,
            n_eff=int(n_clients) if n_clients is not None else self.n_rows,
            m_eff=_reference_count(part, by_clients),
            minimum=min_clients if by_clients else min_rows,
        )
        per_feature: dict[str, Drift] = {}
        for f, counted, expected in zip(
            registry.features, self._feature_counts, self._expected, strict=True
        ):
            counts = _merge_finite(counted, expected)
            per_feature[f.name] = _compare(
                counts, _merge_finite(expected, expected), k, missing=True
            )
        groups = {}
        for g in registry.groups:
            members = [per_feature[registry.features[j].name] for j in registry.index_of_group[g]]
            groups[g] = Drift(
                psi=max(d.psi for d in members),
                ks=max(d.ks for d in members),
                n=k.n,
                status="too_few" if k.n_eff < k.minimum else worst_status(members),
            )
        # A clinic without its own score shares (few calibration clients) is scored against all.
        score_of = part if "score" in part else dist
        own_score = score_of["score"]
        # Since format 4 the score has its own sample (the calibration split's), the features a
        # larger one; older profiles count one sample for both.
        k_score = replace(
            k, m_eff=_reference_count(own_score if "n_rows" in own_score else score_of, by_clients)
        )
        ref_shares = np.asarray(own_score["shares"], dtype=np.float64)
        merged = _merge_sparse(ref_shares, SCORE_MIN_SHARE)
        size = int(merged[-1]) + 1
        expected = np.bincount(merged, weights=ref_shares, minlength=size)
        weights = self._score_counts.astype(np.float64)
        actual = np.bincount(merged, weights=weights, minlength=size)
        return DriftReport(
            score=_compare(actual, expected, k_score, missing=False),
            groups=groups,
            features=per_feature,
            baseline="clinic" if own is not None else "pooled",
            n_clients=n_clients,
        )


def _rows(
    features: np.ndarray, probability: np.ndarray, n_features: int
) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(features, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[1] != n_features or X.shape[0] != p.shape[0]:
        raise ValueError("features must be (n_rows, n_features) in registry order, one per score")
    return X, p


def drift_report(
    reference: ReferenceProfile | Mapping[str, Any],
    registry: FeatureRegistry,
    features: np.ndarray,
    probability: np.ndarray,
    *,
    min_rows: int = MIN_ROWS,
    clinic: str | None = None,
    n_clients: int | None = None,
    min_clients: int = MIN_CLIENTS,
) -> DriftReport:
    """PSI, KS and status of every feature, explanation group and the score of new rows.

    The rows in one pass of :class:`DriftCounts` (a caller that has its rows a few at a time
    counts them with it instead, and gets the same report).

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
        Fewest rows for a status other than ``too_few`` (when ``n_clients`` is not given).
    clinic : str, optional
        The clinic the rows come from: compared with its own reference where the profile keeps
        one, else with all clinics (``DriftReport.baseline`` says which).
    n_clients : int, optional
        Distinct clients among the rows. Given, the KS critical value counts clients on both
        sides (new and reference) and ``too_few`` is below ``min_clients`` clients.
    min_clients : int, default :data:`MIN_CLIENTS`
        Fewest clients for a status other than ``too_few`` (when ``n_clients`` is given).

    Returns
    -------
    DriftReport
        ``features`` and ``groups`` in registry order.

    Raises
    ------
    ValueError
        Shapes that do not match the registry, or a registry feature the reference lacks.
    """
    X, p = _rows(features, probability, len(registry.features))
    if n_clients is not None and not 0 <= n_clients <= X.shape[0]:
        raise ValueError("n_clients must be between 0 and the number of rows")
    counts = DriftCounts(reference, registry, clinic=clinic)
    counts.add(X, p)
    return counts.report(min_rows=min_rows, n_clients=n_clients, min_clients=min_clients)
