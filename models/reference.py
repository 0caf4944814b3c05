"""The reference profile a model version carries: what its inputs and scores looked like when it
was trained, and each clinic's typical alliance ratings per appointment number.

Monitoring compares new data with it (drift of feature groups and of the score), and the
what-if's element recovery reads the clinic's typical level from it (:mod:`models.whatif`). It is
saved inside the scorer directory (``reference.json``), so a loaded
:class:`~models.scorer.Scorer` has it as ``scorer.reference``; training also logs it as a run
artifact for analysts.

Two parts, from two sets of rows (both chosen in :func:`training.pipeline.reference_of`):

- :func:`distribution_profile`: per-feature quantiles (by explanation group), the score
  histogram and the risk-band shares, from :class:`~models.scoreset.ScoreSet` objects. Since
  format 4 training passes two: for the features, the labelled landmarks
  (``landmarks="training"``) of every client outside the test split (a feature's distribution
  needs no out-of-sample rows, and the calibration split alone left a clinic about a hundred
  clients, so that no feature shift smaller than a PSI of about 0.3 could count); for the score
  and the bands, the calibration split's: rows the booster was not fitted on (so the scores are
  not the in-sample, overconfident ones), and the very rows the risk bands were set on (so the
  band shares are the ones the thresholds mean). Monitoring can call the same function on a
  ScoreSet of new data and compare like with like. Since format 3 it
  also keeps, for each clinic with at least :data:`CLINIC_MIN_CLIENTS` clients among those rows,
  the clinic's own shares in the same feature bins and score bins (``clinics``), so a clinic is
  compared with itself rather than with the mix of all clinics (clinics differ through their
  therapists, which is not drift).
- :func:`typical_levels`: per appointment number 1..``k_max`` and per clinic, the median rating
  of each alliance element, from :class:`~features.episodes.Episodes`. Training passes every
  client outside the test split (train, validation and calibration: the test split stays
  untouched by anything the model carries). No feature or score is needed, so nothing is scored.

Nothing here identifies a client: every number is an aggregate, and a clinic's median is kept
only where at least ``min_clients`` clients rated the element at that appointment (the median of
a handful of clients is close to one client's rating); elsewhere the all-clinics median stands
in, and where fewer than ``min_clients`` clients rated it at all, no level is kept. A clinic's
drift shares are kept only over at least :data:`CLINIC_MIN_CLIENTS` clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features import contract
from features.episodes import Episodes

if TYPE_CHECKING:
    from models.scoreset import ScoreSet

#: 2 adds each feature's drift bins (``edges`` and ``shares``); 3 adds each clinic's own shares
#: in those bins (``distribution["clinics"]``); 4 takes the features from more rows than the
#: score and says so (``score["n_rows"]``, ``score["n_clients"]``, also per clinic). Older
#: profiles still load: :mod:`models.drift` then compares every clinic with all clinics (and
#: version 1 with its five quantiles), and version 3 counts one sample for both parts.
REFERENCE_FORMAT_VERSION = 4
READABLE_FORMAT_VERSIONS = (1, 2, 3, 4)
#: Feature and score quantiles kept in the profile (for reading).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Quantile levels whose values are each feature's drift bin edges (deciles: ten bins, the
#: usual PSI binning; :mod:`models.drift`).
DRIFT_LEVELS = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Fixed edges of the score histogram: 20 bins of 5 percentage points (the last includes 1.0).
SCORE_BINS = tuple(round(0.05 * i, 2) for i in range(21))
#: Fewest clients rating an element at an appointment number for a clinic's median to be kept
#: (below it the all-clinics median is used; below it overall, no level at all).
MIN_CLIENTS = 20
#: Fewest reference clients for a clinic's own drift reference (below it the clinic is compared
#: with all clinics). Early alliance features are one value per client repeated at each
#: landmark, so a clinic's reference is as precise as its client count: with 100 clients chance
#: alone moves a decile share by about 3 points.
CLINIC_MIN_CLIENTS = 100
#: Fewest clients of a clinic among the score rows (the calibration split) for its own score
#: shares; below it the clinic's score is compared with all clinics' (a histogram of a few
#: clients' scores is too close to the clients).
CLINIC_SCORE_MIN_CLIENTS = 50
#: Decimals kept of a clinic's shares (a 10-clinic profile stays small; 1e-5 is far below the
#: sampling error of 100 clients and below :data:`models.drift.SHARE_FLOOR`).
CLINIC_SHARE_DECIMALS = 5

_ATTENDED = contract.ATTENDANCE_CODES.index(contract.ATTENDED)
#: The scorer's band labels (``models.scorer.BAND_LABELS``, which imports this module).
BAND_ORDER = ("low", "moderate", "high")


def _quantiles(values: np.ndarray) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    return [float(q) for q in np.quantile(finite, QUANTILES)]


def drift_bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in the bins ``(-inf, e_0], (e_0, e_1], ..., (e_last, inf)`` and, last,
    the non-finite (missing) values: shape ``(len(edges) + 2,)``.

    Bins are closed on the right so that a value tied with an edge (a quantile of discrete data
    is one of the data values) always falls in the same bin, in the reference and in new data.
    """
    finite = np.isfinite(values)
    idx = np.searchsorted(edges, values[finite], side="left")
    counts = np.bincount(idx, minlength=edges.shape[0] + 1).astype(np.float64)
    return np.append(counts, float(values.shape[0] - int(finite.sum())))


def _drift_profile(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"edges": [], "shares": [0.0]}
    edges = np.unique(np.quantile(finite, DRIFT_LEVELS))
    counts = drift_bins(edges, values)
    return {"edges": edges.tolist(), "shares": (counts[:-1] / values.shape[0]).tolist()}


def _clinic_rows(scored: ScoreSet) -> tuple[np.ndarray, np.ndarray]:
    """Each scored row's clinic as text, and whether it has one (None and NaN: none)."""
    clinic = np.asarray(scored.episodes.clinic_id, dtype=object)[scored.episode]
    known = np.array([c is not None and c == c for c in clinic], dtype=bool)
    return clinic.astype(str), known


def _rounded(counts: np.ndarray, n: int) -> list[float]:
    return np.round(counts / n, CLINIC_SHARE_DECIMALS).tolist()


def _score_part(scores: ScoreSet, rows: np.ndarray) -> dict[str, Any]:
    """Score shares (rounded) and counts of some rows of ``scores``."""
    n = int(rows.sum())
    counts, _ = np.histogram(
        np.asarray(scores.probability, dtype=np.float64)[rows], bins=np.asarray(SCORE_BINS)
    )
    return {
        "shares": _rounded(counts, n),
        "n_rows": n,
        "n_clients": int(np.unique(scores.episode[rows]).shape[0]),
    }


def _clinic_profiles(
    scored: ScoreSet, scores: ScoreSet, edges: list[np.ndarray], min_clients: int
) -> dict[str, dict[str, Any]]:
    """Each clinic's shares in the pooled feature bins (``edges``, from ``scored``) and score
    bins (from ``scores``), for clinics with at least ``min_clients`` distinct episodes among
    ``scored``; the score part only where ``scores`` has :data:`CLINIC_SCORE_MIN_CLIENTS`."""
    clinic, known = _clinic_rows(scored)
    score_clinic, score_known = _clinic_rows(scores)
    names = [f.name for f in scored.scorer.registry.features]
    out: dict[str, dict[str, Any]] = {}
    for c in sorted(set(clinic[known].tolist())):
        rows = known & (clinic == c)
        n_clients = int(np.unique(scored.episode[rows]).shape[0])
        if n_clients < min_clients:
            continue
        n = int(rows.sum())
        features = {}
        for i, name in enumerate(names):
            counts = drift_bins(edges[i], scored.features[rows, i])
            features[name] = {
                "shares": _rounded(counts[:-1], n),
                "missing_share": _rounded(counts[-1:], n)[0],
            }
        out[c] = {"n_rows": n, "n_clients": n_clients, "features": features}
        score_rows = score_known & (score_clinic == c)
        if np.unique(scores.episode[score_rows]).shape[0] >= CLINIC_SCORE_MIN_CLIENTS:
            out[c]["score"] = _score_part(scores, score_rows)
    return out


def distribution_profile(
    scored: ScoreSet,
    *,
    scores: ScoreSet | None = None,
    clinic_min_clients: int = CLINIC_MIN_CLIENTS,
) -> dict[str, Any]:
    """Feature quantiles by group, score distribution and band shares of scored rows, overall
    and for each clinic with enough clients.

    Parameters
    ----------
    scored : ScoreSet
        The output of :meth:`~models.scorer.Scorer.score`; every scored row counts once. Its
        features make the feature part (it may be scored without explanation).
    scores : ScoreSet, optional
        Other scored rows for the score histogram and the band shares (training: the
        calibration split, whose scores are out of sample, while the features come from every
        development client); default ``scored``.
    clinic_min_clients : int, default :data:`CLINIC_MIN_CLIENTS`
        Fewest distinct clients (episodes) of a clinic among the rows for its own part.

    Returns
    -------
    dict
        JSON-able: ``n_rows``, ``n_clients``; ``features``: group -> feature ->
        ``{"quantiles": [...] or None, "missing_share": float}`` (quantiles at
        :data:`QUANTILES` of the finite values, as :func:`numpy.quantile` computes them; NaN is
        "undefined by design" and counted in ``missing_share``), plus the drift bins: ``edges``
        (the distinct values of the :data:`DRIFT_LEVELS` quantiles) and ``shares`` (fraction of
        all rows in each bin of :func:`drift_bins`, missing excluded: shares and
        ``missing_share`` sum to 1); ``score``: ``bins``
        (:data:`SCORE_BINS`), ``shares`` (fraction of rows per bin) and ``quantiles`` of the
        calibrated probability; ``bands``: ``low``/``moderate``/``high`` -> fraction of rows;
        ``clinics``: clinic id -> ``n_rows``, ``n_clients``, ``features``: feature ->
        ``{"shares", "missing_share"}`` in the all-clinics ``edges`` above, and ``score``:
        ``{"shares", "n_rows", "n_clients"}`` in :data:`SCORE_BINS` (fractions of the clinic's
        rows, rounded to :data:`CLINIC_SHARE_DECIMALS` decimals; the score part from
        ``scores``, left out below :data:`CLINIC_SCORE_MIN_CLIENTS` clients there); only
        clinics with at least ``clinic_min_clients`` clients in ``scored``, and none when the
        rows carry no clinic. ``n_rows`` and ``n_clients`` count ``scored``; ``score`` also
        holds ``n_rows`` and ``n_clients`` of ``scores``.

    Raises
    ------
    ValueError
        No scored row.
    """
    n = scored.n_rows
    if n == 0:
        raise ValueError("a reference profile needs at least one scored row")
    registry = scored.scorer.registry
    features: dict[str, dict[str, Any]] = {}
    edges: list[np.ndarray] = []
    for i, f in enumerate(registry.features):
        column = scored.features[:, i]
        entry = {
            "quantiles": _quantiles(column),
            "missing_share": float(np.mean(~np.isfinite(column))),
            **_drift_profile(column),
        }
        features.setdefault(f.group, {})[f.name] = entry
        edges.append(np.asarray(entry["edges"], dtype=np.float64))
    scores = scored if scores is None else scores
    if scores.n_rows == 0:
        raise ValueError("a reference profile needs at least one scored row")
    p = np.asarray(scores.probability, dtype=np.float64)
    counts, _ = np.histogram(p, bins=np.asarray(SCORE_BINS))
    bands = np.asarray(scores.risk_band, dtype=object)
    return {
        "n_rows": n,
        "n_clients": int(np.unique(scored.episode).shape[0]),
        "quantile_levels": list(QUANTILES),
        "features": features,
        "score": {
            "bins": list(SCORE_BINS),
            "shares": (counts / scores.n_rows).tolist(),
            "quantiles": _quantiles(p),
            "n_rows": scores.n_rows,
            "n_clients": int(np.unique(scores.episode).shape[0]),
        },
        "bands": {b: float(np.mean(bands == b)) for b in BAND_ORDER},
        "clinics": _clinic_profiles(scored, scores, edges, clinic_min_clients),
    }


@dataclass(frozen=True)
class TypicalLevels:
    """Median rating per element at each appointment number 1..``k_max``, per clinic and overall.

    ``overall[element][k - 1]`` is the all-clinics median at appointment ``k`` (None when fewer
    than ``min_clients`` clients rated it there); ``clinics[clinic][element][k - 1]`` the clinic's
    own median, None where it had fewer than ``min_clients`` such clients. Ratings are on the
    model's instrument scale.
    """

    k_max: int
    min_clients: int
    overall: Mapping[str, tuple[float | None, ...]]
    clinics: Mapping[str, Mapping[str, tuple[float | None, ...]]]

    def level(self, clinic_id: str | None, element: str, session_number: int) -> float | None:
        """The clinic's typical rating of ``element`` at appointment ``session_number``.

        The clinic's own median where it has one, else the all-clinics median (a clinic the
        model never saw, an unknown clinic, or one with fewer than ``min_clients`` clients
        there); None when neither exists. Appointments after ``k_max`` use ``k_max``'s level
        (the model's landmarks stop there too).
        """
        if element not in self.overall or session_number < 1:
            return None
        k = min(int(session_number), self.k_max) - 1
        own = self.clinics.get(clinic_id, {}).get(element) if clinic_id is not None else None
        if own is not None and own[k] is not None:
            return own[k]
        return self.overall[element][k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "k_max": self.k_max,
            "min_clients": self.min_clients,
            "overall": {e: list(v) for e, v in self.overall.items()},
            "clinics": {c: {e: list(v) for e, v in d.items()} for c, d in self.clinics.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TypicalLevels:
        k_max = int(data["k_max"])

        def levels(values: Any) -> tuple[float | None, ...]:
            out = tuple(None if v is None else float(v) for v in values)
            if len(out) != k_max:
                raise ValueError("typical levels need one value per appointment number")
            return out

        return cls(
            k_max=k_max,
            min_clients=int(data["min_clients"]),
            overall={str(e): levels(v) for e, v in data["overall"].items()},
            clinics={
                str(c): {str(e): levels(v) for e, v in d.items()}
                for c, d in data["clinics"].items()
            },
        )


def typical_levels(
    episodes: Episodes, *, k_max: int, min_clients: int = MIN_CLIENTS
) -> TypicalLevels:
    """Each clinic's median rating of each element at appointment numbers 1..``k_max``.

    Parameters
    ----------
    episodes : Episodes
        Validated episodes; their attended, rated appointments numbered at most ``k_max`` count
        (no-shows, cancellations and missing ratings do not). An episode without a clinic counts
        toward the all-clinics median only.
    k_max : int
        Largest appointment number kept (the model's landmark cap).
    min_clients : int, default :data:`MIN_CLIENTS`
        Fewest distinct clients (episodes) rating an element at an appointment number for a
        median to be kept.

    Returns
    -------
    TypicalLevels
        Clinics with no kept median at all are left out.
    """
    if k_max < 1 or min_clients < 1:
        raise ValueError("k_max and min_clients must be at least 1")
    ep = episodes.episode
    sn = episodes.session_number
    keep = (ep >= 0) & (episodes.attendance == _ATTENDED) & np.isfinite(sn) & (sn <= k_max)
    keep &= sn >= 1
    clinic = np.full(ep.shape, None, dtype=object)
    clinic[keep] = episodes.clinic_id[ep[keep]]
    names = episodes.profile.element_names
    overall: dict[str, tuple[float | None, ...]] = {}
    clinics: dict[str, dict[str, tuple[float | None, ...]]] = {}
    for g, element in enumerate(names):
        rated = keep & np.isfinite(episodes.ratings[g])
        frame = pd.DataFrame(
            {
                "clinic": clinic[rated],
                "k": sn[rated].astype(np.int64),
                "episode": ep[rated],
                "value": episodes.ratings[g, rated],
            }
        )
        overall[element] = _levels(frame.groupby("k"), k_max, min_clients)
        by_clinic = frame[frame["clinic"].notna()].groupby("clinic")
        for c, rows in by_clinic:
            own = _levels(rows.groupby("k"), k_max, min_clients)
            if any(v is not None for v in own):
                clinics.setdefault(str(c), {})[element] = own
    return TypicalLevels(k_max=k_max, min_clients=min_clients, overall=overall, clinics=clinics)


def _levels(groups: Any, k_max: int, min_clients: int) -> tuple[float | None, ...]:
    """Median per appointment number 1..k_max where at least ``min_clients`` episodes rated."""
    stats = groups.agg(median=("value", "median"), clients=("episode", "nunique"))
    stats = stats[stats["clients"] >= min_clients]
    median = stats["median"].reindex(range(1, k_max + 1))
    return tuple(None if np.isnan(v) else float(v) for v in median.to_numpy(dtype=np.float64))


@dataclass(frozen=True)
class ReferenceProfile:
    """A model version's reference: :func:`distribution_profile` output, the typical levels,
    and a sentence saying which rows each came from. ``format_version`` is the one it was
    written in (a profile read from an older model keeps its own)."""

    distribution: Mapping[str, Any]
    typical: TypicalLevels
    rows: str
    format_version: int = REFERENCE_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "rows": self.rows,
            "distribution": dict(self.distribution),
            "typical_levels": self.typical.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Read :meth:`to_dict` output; raises KeyError, TypeError or ValueError when invalid."""
        version = data.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS:
            raise ValueError("unsupported reference profile format")
        return cls(
            format_version=int(version),
            distribution=dict(data["distribution"]),
            typical=TypicalLevels.from_dict(data["typical_levels"]),
            rows=str(data["rows"]),
        )
