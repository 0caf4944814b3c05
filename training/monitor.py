"""Monitoring a model on new data: drift against its reference profile, label-free expected
performance, and realized performance where outcomes have arrived, overall and per clinic.

The rows are scored by the model's own scorer at the same landmarks as its reference profile
(``landmarks="training"``: every appointment up to ``k_max``, an ended episode's last included;
:mod:`models.reference`), so that like is compared with like. Drift is
:func:`models.drift.drift_report`: each clinic against its own reference where the model keeps
one (else all clinics'), all clinics together against the pooled reference, counting clients
(not rows) for the KS critical value and for ``too_few``.

**Expected performance** (the idea behind CBPE, Confidence-Based Performance Estimation, of
NannyML): if the model is still calibrated, a row with probability ``p`` drops out with
probability ``p``, so the metrics the outcomes *would* give can be estimated before they
arrive. :func:`expected_auroc` is the expected Mann-Whitney numerator over the expected number of
(dropout, completer) pairs; :func:`expected_brier` is ``mean(p (1 - p))``; the expected dropout
rate is ``mean(p)``. They are as good as the calibration they assume: a change in how features
relate to dropout (concept drift) is invisible to them, which is why the report puts them next to
the realized metrics (computed with :mod:`training.metrics`) wherever outcomes exist.

Rows are (episode, appointment) pairs; one client contributes several, so counts of clients are
reported beside counts of rows. Nothing here keeps a client id: per-row arrays are positions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features import contract as c
from features.episodes import Episodes
from models.drift import MIN_CLIENTS, DriftReport, drift_report, worst_status
from models.scorer import Scorer
from training.metrics import auroc, brier, ece

#: Label of the all-clinics slice.
OVERALL = "all clinics"
_LABEL = {c.DROPOUT: 1.0, c.COMPLETED: 0.0}


def expected_auroc(p: np.ndarray) -> float:
    """AUROC expected from calibrated probabilities alone (CBPE).

    Each pair of distinct rows ``(i, j)`` is a (dropout, completer) pair with probability
    ``p_i (1 - p_j)`` and is then ranked correctly when ``p_i > p_j`` (half when tied). The
    estimate is the expected number of correctly ranked pairs over the expected number of pairs.
    NaN for fewer than two rows or when every probability is 0 or 1.
    """
    p = np.asarray(p, dtype=np.float64)
    p = p[np.isfinite(p)]
    if p.size < 2:
        return math.nan
    _, inverse = np.unique(p, return_inverse=True)
    pos = np.bincount(inverse, weights=p)  # expected dropouts per distinct value
    neg = np.bincount(inverse, weights=1.0 - p)  # expected completers per distinct value
    self_pairs = float(np.sum(p * (1.0 - p)))  # a row is never paired with itself
    below = np.cumsum(neg) - neg
    correct = float(pos @ below) + 0.5 * (float(pos @ neg) - self_pairs)
    pairs = float(pos.sum() * neg.sum()) - self_pairs
    return correct / pairs if pairs > 0 else math.nan


def expected_brier(p: np.ndarray) -> float:
    """Brier score expected from calibrated probabilities: ``mean(p (1 - p))``; NaN if empty."""
    p = np.asarray(p, dtype=np.float64)
    return float(np.mean(p * (1.0 - p))) if p.size else math.nan


@dataclass(frozen=True)
class Expected:
    """Label-free estimates on ``n_rows`` rows: AUROC, Brier and dropout rate (``mean(p)``)."""

    n_rows: int
    auroc: float
    brier: float
    dropout_rate: float

    @classmethod
    def of(cls, p: np.ndarray) -> Expected:
        return cls(
            n_rows=int(p.size),
            auroc=expected_auroc(p),
            brier=expected_brier(p),
            dropout_rate=float(np.mean(p)) if p.size else math.nan,
        )


@dataclass(frozen=True)
class Realized:
    """Metrics on the rows whose outcome is known, and the expected ones on the same rows.

    ``ece`` on 10 equal-width bins (:func:`training.metrics.ece`); ``auroc`` NaN when only one
    outcome occurs.
    """

    n_rows: int
    n_clients: int
    auroc: float
    brier: float
    ece: float
    dropout_rate: float
    expected: Expected


@dataclass(frozen=True)
class SliceMonitor:
    """Monitoring of one clinic (or of all clinics, ``name == OVERALL``)."""

    name: str
    n_rows: int
    n_clients: int
    drift: DriftReport
    pending: Expected
    realized: Realized | None

    @property
    def status(self) -> str:
        return self.drift.status


@dataclass(frozen=True)
class MonitorResult:
    """What ``alliance-risk monitor`` reports.

    ``probability`` and ``clinic`` are per scored row (for the plots); ``reference_shares`` the
    reference's share of rows per bin of :data:`models.reference.SCORE_BINS`;
    ``unmatched_outcomes`` how many later outcomes named a client absent from the new data
    (ignored; counted, never named).
    """

    model_name: str
    model_version: str
    landmarks: str
    min_clients: int
    overall: SliceMonitor
    clinics: tuple[SliceMonitor, ...]
    probability: np.ndarray
    clinic: np.ndarray
    reference_shares: tuple[float, ...]
    reference_rows: str
    unmatched_outcomes: int = 0

    @property
    def status(self) -> str:
        """Worst status over all clinics and the overall slice (``too_few`` if all are)."""
        return worst_status(
            [
                d
                for s in (self.overall, *self.clinics)
                for d in (s.drift.score, *s.drift.groups.values())
            ]
        )

    @property
    def alerts(self) -> list[tuple[str, str]]:
        """(slice, "score" or group) pairs whose status is ``alert``."""
        out = []
        for s in (self.overall, *self.clinics):
            for what, d in (("score", s.drift.score), *s.drift.groups.items()):
                if d.status == "alert":
                    out.append((s.name, what))
        return out


class NoReferenceError(ValueError):
    """The model carries no reference profile (trained before monitoring existed)."""


class NothingToJudgeError(ValueError):
    """No row was scored (e.g. no episode reached the requested landmark)."""


def unmatched_outcomes(episodes: Episodes, outcomes: Mapping[str, str] | None) -> int:
    """How many of ``outcomes``' client ids are not among ``episodes`` (such outcomes are
    ignored by :func:`labels_of`; a count, so that nobody's id is printed)."""
    if not outcomes:
        return 0
    known = {str(i) for i in episodes.client_id}
    return sum(1 for i in outcomes if str(i) not in known)


def labels_of(episodes: Episodes, outcomes: Mapping[str, str] | None = None) -> np.ndarray:
    """Per episode: 1.0 dropout, 0.0 completed, NaN pending (ongoing or unknown).

    The outcome is ``outcomes[client_id]`` where given (outcomes that arrived after the
    extract), else the clients table's own.
    """
    codes = np.array([*c.OUTCOME_CODES, None], dtype=object)
    own = codes[np.where(episodes.outcome >= 0, episodes.outcome, len(c.OUTCOME_CODES))]
    later = outcomes or {}
    merged = [later.get(str(i), o) for i, o in zip(episodes.client_id, own, strict=True)]
    return np.array([_LABEL.get(o, math.nan) for o in merged], dtype=np.float64)


def _slice(
    name: str,
    scorer: Scorer,
    X: np.ndarray,
    p: np.ndarray,
    y: np.ndarray,
    episode: np.ndarray,
    min_clients: int,
    *,
    clinic: str | None,
) -> SliceMonitor:
    assert scorer.reference is not None
    n_clients = int(np.unique(episode).size)
    drift = drift_report(
        scorer.reference, scorer.registry, X, p,
        clinic=clinic, n_clients=n_clients, min_clients=min_clients,
    )  # fmt: skip
    known = np.isfinite(y)
    realized = None
    if known.any():
        yk, pk = y[known], p[known]
        realized = Realized(
            n_rows=int(known.sum()),
            n_clients=int(np.unique(episode[known]).size),
            auroc=auroc(yk, pk),
            brier=brier(yk, pk),
            ece=ece(yk, pk),
            dropout_rate=float(np.mean(yk)),
            expected=Expected.of(pk),
        )
    return SliceMonitor(
        name=name,
        n_rows=int(p.size),
        n_clients=n_clients,
        drift=drift,
        pending=Expected.of(p[~known]),
        realized=realized,
    )


def monitor(
    scorer: Scorer,
    episodes: Episodes,
    labels: np.ndarray,
    *,
    model_name: str = "",
    model_version: str = "",
    landmark: int | None = None,
    min_clients: int = MIN_CLIENTS,
    unmatched_outcomes: int = 0,
) -> MonitorResult:
    """Score ``episodes`` and compare them with the model's reference, overall and per clinic.

    Parameters
    ----------
    scorer : Scorer
        The model; it must carry a reference profile (``scorer.reference``).
    episodes : Episodes
        The new data (validated).
    labels : ndarray of shape (n_episodes,)
        Per episode 1.0 dropout, 0.0 completed, NaN pending (:func:`labels_of`).
    landmark : int, optional
        Score every episode at appointment ``k`` only; default the reference's landmarks.
    min_clients : int, default :data:`models.drift.MIN_CLIENTS`
        Fewest clients for a drift status other than ``too_few``, per slice.
    unmatched_outcomes : int, default 0
        Later outcomes whose client is not in ``episodes`` (:func:`unmatched_outcomes`), for
        the report.

    Raises
    ------
    NoReferenceError
        The model has no reference profile.
    NothingToJudgeError
        No row was scored (no episode has an appointment at ``landmark``).
    """
    if scorer.reference is None:
        raise NoReferenceError(
            "this model carries no reference profile (trained before monitoring existed); "
            "retrain it to monitor it"
        )
    scored = scorer.score(episodes, landmarks="training" if landmark is None else landmark)
    if scored.n_rows == 0:
        where = "its training landmarks" if landmark is None else f"appointment {landmark}"
        raise NothingToJudgeError(
            f"no client has an appointment to score at {where}: nothing to compare"
        )
    X, p, ep = scored.features, np.asarray(scored.probability, dtype=np.float64), scored.episode
    y = np.asarray(labels, dtype=np.float64)[ep]
    clinic = pd.Series(episodes.clinic_id[ep], dtype="object").fillna("(no clinic)").astype(str)
    clinic_arr = clinic.to_numpy(dtype=object)
    overall = _slice(OVERALL, scorer, X, p, y, ep, min_clients, clinic=None)
    clinics = tuple(
        _slice(str(k), scorer, X[rows], p[rows], y[rows], ep[rows], min_clients, clinic=str(k))
        for k, rows in sorted(
            ((k, np.flatnonzero(clinic_arr == k)) for k in pd.unique(clinic_arr)),
            key=lambda kv: str(kv[0]),
        )
    )
    dist = scorer.reference.distribution
    return MonitorResult(
        model_name=model_name,
        model_version=model_version,
        landmarks="training landmarks (as the reference)"
        if landmark is None
        else f"appointment {landmark}",
        min_clients=min_clients,
        overall=overall,
        clinics=clinics,
        probability=p,
        clinic=clinic_arr,
        reference_shares=tuple(float(s) for s in dist["score"]["shares"]),
        reference_rows=scorer.reference.rows,
        unmatched_outcomes=unmatched_outcomes,
    )


def outcomes_from_table(table: pd.DataFrame) -> dict[str, str]:
    """``client_id -> outcome`` from an outcomes table (columns ``client_id`` and ``outcome``,
    outcomes in the contract's vocabulary: completed, dropout, ongoing).

    Raises
    ------
    ValueError
        A missing column, or rows whose outcome is not in the vocabulary or whose client id is
        empty or repeated; the message names the file rows (line 2 is the first data row), never
        the values.
    """
    missing = [col for col in (c.CLIENT_ID, c.OUTCOME) if col not in table.columns]
    if missing:
        raise ValueError(f"outcomes file lacks column(s): {', '.join(missing)}")
    ids = table[c.CLIENT_ID].astype("string").str.strip()
    outcome = table[c.OUTCOME].astype("string").str.strip().str.lower()
    problems = []
    for reason, bad in (
        (f"outcome is not one of {', '.join(c.OUTCOME_CODES)}", ~outcome.isin(c.OUTCOME_CODES)),
        ("client_id is empty", ids.isna() | (ids == "")),
        ("client_id appears more than once", ids.duplicated(keep=False) & ids.notna()),
    ):
        rows = np.flatnonzero(bad.fillna(True).to_numpy(dtype=bool)) + 2
        if rows.size:
            shown = ", ".join(map(str, rows[:10])) + (" ..." if rows.size > 10 else "")
            problems.append(f"{reason} on {rows.size} row(s): line {shown}")
    if problems:
        raise ValueError("outcomes file: " + "; ".join(problems))
    return dict(zip(ids.tolist(), outcome.tolist(), strict=True))
