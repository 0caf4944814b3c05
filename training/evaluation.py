"""Evaluation of a trained :class:`~models.scorer.Scorer` (and the baselines) on labelled
clients: overall, per subgroup and per landmark band, weighted for censoring where the model
was trained so. ``evaluate_scorer`` serves the training run's test split and
``alliance-risk evaluate`` (external or temporal validation) alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.contract import (
    CLIENT_ID,
    COMPLETED,
    DROPOUT,
    OUTCOME,
    THERAPIST_ID,
)
from features.episodes import Episodes
from models.explain import global_importance
from models.scorer import Scorer
from training.baselines import AlertRule, LogisticBaseline, alert_flags, rule_columns
from training.censoring import (
    CensoringMethod,
    evaluation_weights,
)
from training.landmarks import (
    ENDED_CODES,
    LANDMARK_BAND,
    SUBGROUPS,
    LandmarkSet,
    landmark_context,
    outcome_code,
)
from training.metrics import EvaluationReport, evaluate, landmark_band

logger = logging.getLogger(__name__)

#: What a training run evaluates on (plot titles); ``alliance-risk evaluate`` names its data.
TEST_POPULATION = "the test split (held-out clients)"


@dataclass(frozen=True)
class ModelEvaluation:
    """Evaluation of one scorer (and optionally the baselines) on the same test rows.

    ``model`` is the scorer's report, overall and per :data:`SUBGROUPS`; ``baselines`` maps a
    baseline name to its report on the same rows; ``therapists`` is the per-therapist table and
    ``therapist_summary`` its aggregate; ``importance`` the mean |group contribution|;
    ``probability`` the scorer's test predictions (aligned to ``data``); ``alert_flags`` the
    alert rule's 0/1 flag per row (None when the feature set lacks its inputs), for the
    decision curve and workload of any evaluation, with or without fitted baselines;
    ``population`` what was evaluated, as the plots' titles name it.
    """

    model: EvaluationReport
    baselines: dict[str, EvaluationReport]
    baseline_probability: dict[str, np.ndarray]
    therapists: pd.DataFrame
    therapist_summary: dict[str, float]
    importance: pd.Series
    probability: np.ndarray
    data: LandmarkSet
    alert_flags: np.ndarray | None = None
    population: str = TEST_POPULATION

    def comparison(self) -> pd.DataFrame:
        """Model and baselines side by side: one row per model, headline metrics as columns."""
        keys = (
            "auroc",
            "auprc",
            "brier",
            "ece",
            "calibration_slope",
            "flag_sensitivity",
            "flag_ppv",
        )
        rows = {"model": self.model.overall, **{k: v.overall for k, v in self.baselines.items()}}
        return pd.DataFrame(
            [{"model": name, **{k: rep.get(k, np.nan) for k in keys}} for name, rep in rows.items()]
        )

    def subgroup_table(self) -> pd.DataFrame:
        """Long table ``subgroup, value, n, events, ..., ece`` over every subgroup column."""
        frames = [
            t.assign(subgroup=name)
            for name, t in self.model.per_group.items()
            if name not in ("landmark", LANDMARK_BAND)
        ]
        if not frames:
            return pd.DataFrame(columns=["subgroup", "value", "n", "ece"])
        table = pd.concat(frames, ignore_index=True)
        return table[["subgroup", *[c for c in table.columns if c != "subgroup"]]]

    def landmark_table(self) -> pd.DataFrame:
        """One row per landmark (1, 2, ...), then one per band of :data:`LANDMARK_BANDS`
        (``"1-3"``, ..., ``"11+"``), under the column ``landmark``; then ``n`` (rows),
        ``n_clients``, ``events``, ``prevalence`` (dropout rate per row), ``mean_probability``,
        ``auroc``, ``auprc``, ``brier``, ``ece``, ``calibration_slope`` and
        ``calibration_intercept`` (CITL, slope fixed at 1). Column names are stable: the card,
        the landmark plot and the promotion gate read them."""
        tables = [self.model.per_group.get(name) for name in ("landmark", LANDMARK_BAND)]
        tables = [t for t in tables if t is not None]
        if not tables:
            return pd.DataFrame()
        # Bands sort by their first landmark, not as text ("11+" after "7-10").
        bands = tables[-1] if len(tables) == 2 else None
        if bands is not None:
            first = bands["value"].map(lambda v: int(str(v).split("-")[0].rstrip("+") or 0))
            tables[-1] = bands.loc[first.sort_values(kind="stable").index]
        return pd.concat(tables, ignore_index=True).rename(columns={"value": "landmark"})

    def band_table(self) -> pd.DataFrame:
        """The band rows of :meth:`landmark_table` alone (what the promotion gate judges)."""
        table = self.landmark_table()
        if table.empty:
            return table
        is_band = table["landmark"].map(lambda v: isinstance(v, str))
        return table.loc[is_band].reset_index(drop=True)


def band_metrics(bands: pd.DataFrame) -> dict[str, float]:
    """ECE, CITL and slope per landmark band as flat metrics (``landmarks_1_3_ece``, ...), which
    the run logs with the other test metrics (``test_landmarks_1_3_citl`` in MLflow)."""
    out: dict[str, float] = {}
    for row in bands.itertuples(index=False):
        key = "landmarks_" + str(row.value).replace("-", "_").replace("+", "_up")
        out[f"{key}_ece"] = float(row.ece)
        out[f"{key}_citl"] = float(row.calibration_intercept)
        out[f"{key}_slope"] = float(row.calibration_slope)
        out[f"{key}_n_clients"] = float(row.n_clients)
    return out


def therapist_summary(table: pd.DataFrame, *, min_n: int = 200) -> dict[str, float]:
    """Aggregate of per-therapist results: how many, and the spread of their calibration.

    Individual therapists are too small to judge one by one; the summary reports how many
    therapists have at least ``min_n`` test rows and the median and worst ECE among them.
    """
    judged = table[table["n"] >= min_n]
    return {
        "therapists": float(len(table)),
        "therapists_judged": float(len(judged)),
        "median_ece_judged": float(judged["ece"].median()) if len(judged) else float("nan"),
        "max_ece_judged": float(judged["ece"].max()) if len(judged) else float("nan"),
    }


def evaluate_scorer(
    scorer: Scorer,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    *,
    baselines: dict[str, LogisticBaseline | AlertRule] | None = None,
    n_boot: int = 200,
    seed: int = 0,
    censoring: CensoringMethod = "ipcw",
    closure_days: int = 28,
    extraction_date: pd.Timestamp | None = None,
    population: str = TEST_POPULATION,
) -> ModelEvaluation:
    """Evaluate ``scorer`` (and ``baselines``) on the labelled landmarks of normalised tables.

    Every ended episode (completed or dropout) is scored by :meth:`Scorer.score` at each of its
    landmarks up to ``k_max``, its last appointment included (``landmarks="training"``): the
    same inference and rows as the API and ``alliance-risk score --landmark k``, which cannot
    know that an appointment is a client's last.
    Ongoing episodes have no label and are not scored; with
    ``censoring="ipcw"`` every metric is weighted by the ended clients' inverse probability of
    censoring, from the follow-up of all of ``clients`` (ongoing included:
    :func:`training.censoring.evaluation_weights`), so the metrics stand for every intake and
    not the short episodes of recent ones. ``"exclude"``: unweighted. ``population`` names
    the evaluated clients in the plots' titles.

    Raises
    ------
    ValueError
        No labelled landmark to evaluate on.
    """
    # Ended episodes with at least one appointment: the others have no landmark to score.
    ended = clients[
        clients[OUTCOME].isin((COMPLETED, DROPOUT)) & clients[CLIENT_ID].isin(sessions[CLIENT_ID])
    ]
    episodes = Episodes.from_frames(
        sessions[sessions[CLIENT_ID].isin(ended[CLIENT_ID])], ended, scorer.profile
    )
    scored = scorer.score(episodes, landmarks="training")
    if scored.problems:
        # Validated tables never get here; evaluating the rest would hide whom it left out.
        raise ValueError(
            f"{len(scored.problems)} episode(s) break the data contract; run alliance-risk "
            "validate on these tables first"
        )
    if not np.isin(episodes.outcome, ENDED_CODES).all():
        raise ValueError("every evaluated client needs one clients row with an outcome")
    if scored.n_rows == 0:
        raise ValueError("no labelled landmark rows to evaluate on")
    ids = episodes.client_id[scored.episode]
    weight = None
    if censoring == "ipcw":
        weight = evaluation_weights(
            sessions, clients, closure_days=closure_days, extraction_date=extraction_date
        ).of(ids)
    data = LandmarkSet(
        X=scored.features,
        y=(episodes.outcome[scored.episode] == outcome_code(DROPOUT)).astype(np.float64),
        # The appointment date of each row: the decision report's alerts per clinician-week.
        context=landmark_context(ids, scored.landmark, clients).assign(
            session_day=scored.arrays.day[scored.rows]
        ),
        weight=weight,
    )
    p = scored.probability
    cluster = data.client_id
    report = evaluate(
        data.y,
        p,
        frame=data.context.assign(**{LANDMARK_BAND: landmark_band(data.context["landmark"])}),
        by=(*SUBGROUPS, LANDMARK_BAND),
        cluster=cluster,
        n_boot=n_boot,
        seed=seed,
        weight=weight,
    )
    report.overall.update(band_metrics(report.per_group[LANDMARK_BAND]))
    per_therapist = evaluate(
        data.y, p, frame=data.context, by=(THERAPIST_ID,), n_boot=0, seed=seed, weight=weight
    ).per_group[THERAPIST_ID]
    try:
        alert = alert_flags(rule_columns(scorer.registry), data.X)
    except KeyError:
        alert = None
    base_reports: dict[str, EvaluationReport] = {}
    base_probs: dict[str, np.ndarray] = {}
    for name, base in (baselines or {}).items():
        bp = base.predict_proba(data.X)
        base_probs[name] = bp
        base_reports[name] = evaluate(
            data.y, bp, cluster=cluster, n_boot=n_boot, seed=seed, weight=weight
        )
    return ModelEvaluation(
        model=report,
        baselines=base_reports,
        baseline_probability=base_probs,
        therapists=per_therapist,
        therapist_summary=therapist_summary(per_therapist),
        importance=global_importance(scored.explanation),
        probability=p,
        data=data,
        alert_flags=alert,
        population=population,
    )


def headline_metrics(evaluation: ModelEvaluation) -> dict[str, float]:
    """The metrics a dashboard or ``GET /v1/model`` shows, JSON-safe (NaN -> omitted)."""
    keys = (
        "auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "brier", "ece",
        "calibration_slope", "calibration_intercept", "flag_sensitivity", "flag_ppv", "n",
        "prevalence",
    )  # fmt: skip
    out = {}
    for k in keys:
        v = evaluation.model.overall.get(k)
        if v is not None and np.isfinite(v):
            out[k] = float(v)
    return out
