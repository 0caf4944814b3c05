"""Inverse-probability-of-censoring weights (IPCW) for the labelled episodes of an extract.

An extract sees an episode's outcome only if the episode has ended by the extraction date, so
the labelled clients are a biased sample: among recent intakes, short episodes (mostly dropouts)
have ended and long ones (mostly completers) are still ``ongoing``. Leaving the ongoing clients
out therefore over-states dropout. IPCW re-weights each labelled client by the inverse of its
chance of having been seen to the end.

The clock is the episode's own: days since intake. A client's *censoring time* ``C`` is
extraction date minus intake date (its follow-up), its *end time* ``T`` the days from intake to
its last booked appointment (plus the days a dropout's record takes to close). A client is
labelled when ``T <= C``. ``C`` is a function of the intake date, so under the assumption that
``T`` and the outcome do not depend on the intake date (:data:`ASSUMPTION`) the chance of being
labelled is ``G(T-) = P(C >= T)`` and the weight ``1 / G(T-)``.
``G`` is the Kaplan-Meier survival of the censoring times; in an administrative extract every
client's ``C`` is known (intake date and extraction date are), so it is the Kaplan-Meier curve
with every censoring time observed, i.e. the empirical survival of ``C`` over all clients.

No survival library is a dependency (lifelines and scikit-survival are not installed); the
Kaplan-Meier estimator is a few lines of numpy, checked against a hand-computed case in
``tests/training/test_censoring.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.contract import (
    CLIENT_ID,
    COMPLETED,
    DROPOUT,
    INTAKE_DATE,
    ONGOING,
    OUTCOME,
    SESSION_DATE,
)

#: How training treats ongoing (censored) episodes: ``ipcw`` weights the labelled ones by the
#: inverse chance of having ended by extraction; ``exclude`` leaves them out unweighted.
CensoringMethod = Literal["ipcw", "exclude"]
CENSORING_METHODS: tuple[str, ...] = ("ipcw", "exclude")

#: Stated on the model card with every IPCW model.
ASSUMPTION = (
    "censoring depends on the intake date alone (the follow-up is extraction date - intake "
    "date), and episodes run the same way whatever the intake date (no trend in dropout or "
    "episode length over the intake window), so how long a client was followed says nothing "
    "about how the episode goes"
)


def kaplan_meier(durations: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan-Meier survival curve.

    Parameters
    ----------
    durations : ndarray of shape (n,)
        Time of each subject's event or censoring (any unit, >= 0).
    observed : ndarray of shape (n,) of bool
        True where the event was observed at ``durations``, False where censored there.

    Returns
    -------
    times, survival : ndarray of shape (n_event_times,)
        The distinct observed event times (ascending) and ``S(t)`` just after each of them.
        Censorings at an event time count as still at risk at that time (the usual convention).
    """
    t = np.asarray(durations, dtype=np.float64)
    d = np.asarray(observed, dtype=bool)
    if t.shape != d.shape or t.ndim != 1:
        raise ValueError("durations and observed must be 1-d arrays of the same length")
    times, inverse = np.unique(t, return_inverse=True)
    events = np.bincount(inverse, weights=d, minlength=times.size)
    leaving = np.bincount(inverse, minlength=times.size)
    at_risk = t.size - np.concatenate(([0], np.cumsum(leaving)[:-1]))
    hit = events > 0
    survival = np.cumprod(1.0 - events[hit] / at_risk[hit])
    return times[hit], survival


def survival_before(times: np.ndarray, survival: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``S(at-)``, the step curve from :func:`kaplan_meier` just before each of ``at``."""
    steps = np.searchsorted(times, np.asarray(at, dtype=np.float64), side="left")
    return np.concatenate(([1.0], survival))[steps]


@dataclass(frozen=True)
class CensoringWeights:
    """Per-client IPCW weights of an extract and what the model card says about them.

    ``weight`` is indexed by ``client_id`` and holds every labelled (completed or dropout)
    client's weight, ``>= 1``; ``summary`` holds the counts and the weight range.
    """

    weight: pd.Series
    summary: dict[str, Any]

    def of(self, client_ids: np.ndarray) -> np.ndarray:
        """Weights of ``client_ids`` (e.g. one per landmark row); 1.0 for an unknown client."""
        return self.weight.reindex(pd.Index(client_ids)).fillna(1.0).to_numpy(dtype=np.float64)


def censoring_weights(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    *,
    extraction_date: pd.Timestamp | None = None,
    closure_days: int = 0,
    max_weight: float = 20.0,
    intake_before: pd.Timestamp | str | None = None,
) -> CensoringWeights:
    """IPCW weights ``1 / G(T-)`` of the labelled clients of validated contract tables.

    Parameters
    ----------
    sessions : DataFrame
        Needs ``client_id`` and ``session_date``.
    clients : DataFrame
        Needs ``client_id``, ``intake_date`` and ``outcome`` (completed | dropout | ongoing).
    extraction_date : Timestamp, optional
        When the extract was taken; default the latest ``session_date`` (an extract holds no
        later appointment).
    closure_days : int, default 0
        Days after a dropout's last appointment before the record is closed and the dropout
        shows in the extract (a completion shows at the last appointment).
    max_weight : float, default 20
        Weights are capped here, so that a handful of long episodes of the most recent intakes
        cannot dominate the fit; the summary says how many were capped.
    intake_before : Timestamp, optional
        The labelled clients the weights serve were drawn from the intakes before this date
        (a temporal split's development clients): ``G`` is then the follow-up of those intakes
        alone, labelled or ongoing. Default: every client.

    Returns
    -------
    CensoringWeights
        The weights and the summary: ``method``, ``clients``, ``censored`` (ongoing),
        ``censored_share``, ``labelled``, ``weight_min``/``_median``/``_max``, ``capped``,
        ``max_weight``, ``closure_days``, ``extraction_date``, ``assumption``.
    """
    if max_weight < 1:
        raise ValueError("max_weight must be >= 1")
    extraction = (
        pd.Timestamp(extraction_date)
        if extraction_date is not None
        else pd.to_datetime(sessions[SESSION_DATE]).max()
    )
    intake = pd.to_datetime(clients[INTAKE_DATE])
    if intake_before is not None:
        intake = intake[intake < pd.Timestamp(intake_before)]
    intake = intake.to_numpy(dtype="datetime64[D]")
    follow_up = (np.datetime64(extraction.date(), "D") - intake).astype(np.float64)
    # Every client's censoring time is known in an administrative extract: KM with all observed.
    times, g = kaplan_meier(follow_up, np.ones(follow_up.size, dtype=bool))

    labelled = clients[clients[OUTCOME].isin((COMPLETED, DROPOUT))]
    last = pd.to_datetime(sessions[SESSION_DATE]).groupby(sessions[CLIENT_ID].to_numpy()).max()
    end = last.reindex(pd.Index(labelled[CLIENT_ID])).to_numpy(dtype="datetime64[D]")
    start = pd.to_datetime(labelled[INTAKE_DATE]).to_numpy(dtype="datetime64[D]")
    duration = (end - start).astype(np.float64)
    duration += closure_days * (labelled[OUTCOME] == DROPOUT).to_numpy()
    seen = survival_before(times, g, np.nan_to_num(duration, nan=0.0))
    raw = 1.0 / np.maximum(seen, 1.0 / max_weight)
    weight = pd.Series(raw, index=pd.Index(labelled[CLIENT_ID], name=CLIENT_ID), name="weight")
    n_censored = int((clients[OUTCOME] == ONGOING).sum())
    return CensoringWeights(
        weight=weight,
        summary={
            "method": "ipcw",
            "clients": int(len(clients)),
            "censored": n_censored,
            "censored_share": n_censored / len(clients) if len(clients) else float("nan"),
            "labelled": int(len(labelled)),
            "weight_min": float(raw.min()) if raw.size else float("nan"),
            "weight_median": float(np.median(raw)) if raw.size else float("nan"),
            "weight_max": float(raw.max()) if raw.size else float("nan"),
            "capped": int((seen < 1.0 / max_weight).sum()),
            "max_weight": float(max_weight),
            "closure_days": int(closure_days),
            "extraction_date": str(extraction.date()),
            "intake_before": ""
            if intake_before is None
            else str(pd.Timestamp(intake_before).date()),
            "assumption": ASSUMPTION,
        },
    )


def exclusion_summary(clients: pd.DataFrame) -> dict[str, Any]:
    """The model card's censoring numbers when ongoing clients are simply left out."""
    n_censored = int((clients[OUTCOME] == ONGOING).sum())
    return {
        "method": "exclude",
        "clients": int(len(clients)),
        "censored": n_censored,
        "censored_share": n_censored / len(clients) if len(clients) else float("nan"),
        "labelled": int(clients[OUTCOME].isin((COMPLETED, DROPOUT)).sum()),
        "assumption": "ongoing clients are like the labelled ones (no weighting)",
    }


def describe(summary: Mapping[str, Any]) -> str:
    """One paragraph for the model card from :attr:`CensoringWeights.summary` or
    :func:`exclusion_summary`."""
    head = (
        f"{summary['censored']:,} of {summary['clients']:,} clients "
        f"({summary['censored_share']:.1%}) were still in therapy at the extraction date and "
        "have no outcome yet."
    )
    if summary.get("method") != "ipcw":
        return (
            f"{head} They are left out of training and evaluation, unweighted (the test "
            "metrics too), which assumes "
            "they are like the ended episodes. When censoring depends on the intake date (the "
            "ended episodes of recent intakes are the short ones) that skews the label mix; "
            "`--censoring ipcw` corrects it."
        )
    closure = summary.get("closure_days", 0)
    ran = f"its last appointment + {closure} days for a dropout" if closure else "its end"
    return (
        f"{head} They are not labelled; the {summary['labelled']:,} ended episodes are weighted "
        "by inverse probability of censoring (IPCW): each by 1 / the share of all clients "
        "followed (extraction date - intake date, extraction "
        f"{summary['extraction_date']}) at least as long as it ran (to {ran}), so the labels "
        "stand for every client rather than the short episodes of recent intakes. Weights "
        f"{summary['weight_min']:.2f} to {summary['weight_max']:.2f} (median "
        f"{summary['weight_median']:.2f}; {summary['capped']:,} capped at "
        f"{summary['max_weight']:g}); used in the booster fit and the calibration. The test "
        "metrics, decision curve and workload are weighted the same way, by the follow-up of "
        "the test period's own intakes (ongoing included); their effective sample size and "
        f"weight range are in the metrics table. Assumption: {summary['assumption']}."
    )


def evaluation_population(
    clients: pd.DataFrame,
    *,
    test_ids: np.ndarray,
    test_from: pd.Timestamp | None,
    seed: int = 0,
) -> pd.DataFrame:
    """The intakes whose follow-up weights a test split: its labelled clients plus the ongoing
    clients of the same intakes.

    Temporal split (``test_from`` set): every client with an intake on or after ``test_from``,
    ongoing included, i.e. the evaluated period. Random split: the test clients plus the same
    share of the ongoing clients, drawn by a seeded hash of ``client_id`` (independent of row
    order), so that their follow-up is that of all intakes, as the test clients' is.
    """
    is_test = clients[CLIENT_ID].isin(test_ids).to_numpy()
    ongoing = (clients[OUTCOME] == ONGOING).to_numpy()
    if test_from is not None:
        period = (pd.to_datetime(clients[INTAKE_DATE]) >= pd.Timestamp(test_from)).to_numpy()
        return clients[is_test | (ongoing & period)]
    labelled = int(clients[OUTCOME].isin((COMPLETED, DROPOUT)).sum())
    share = is_test.sum() / labelled if labelled else 0.0
    key = pd.util.hash_array(clients[CLIENT_ID].astype(str).to_numpy(), hash_key=f"{seed:016d}")
    drawn = (key % np.uint64(1_000_000)).astype(np.float64) / 1_000_000 < share
    return clients[is_test | (ongoing & drawn)]


def evaluation_weights(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    *,
    closure_days: int = 0,
    extraction_date: pd.Timestamp | None = None,
    max_weight: float = 20.0,
) -> CensoringWeights:
    """IPCW weights of the evaluated clients from their own follow-up.

    ``clients`` is every intake of the evaluated period, ongoing included (an external cohort
    as given, or :func:`evaluation_population` of a test split); ``G`` is the Kaplan-Meier
    curve of their follow-up and the weight rule is :func:`censoring_weights`'s. The test split
    of a temporal split is the most recent intakes, the most censored: there, unweighted, the
    ended episodes are the short ones and a calibrated model looks as if it under-predicts.
    """
    return censoring_weights(
        sessions,
        clients,
        extraction_date=extraction_date,
        closure_days=closure_days,
        max_weight=max_weight,
    )
