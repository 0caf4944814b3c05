"""Training and evaluation, as library functions the CLI renders.

``train_model`` fits the booster on the train split (early-stopped on ``valid``), calibrates it
on the calibration split, sets the risk bands there, attaches the reference profile
(:func:`reference_of`), and evaluates the resulting
:class:`~models.scorer.Scorer` and both baselines on the same test rows. ``evaluate_scorer``
is the same evaluation for an already trained scorer on new data (external or temporal
validation). Nothing here touches MLflow; :mod:`training.runlog` logs the results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.arrays import SessionArrays
from features.build import landmark_rows, pack_frames
from features.contract import (
    AGE,
    CLIENT_ID,
    CLINIC_ID,
    COMPLETED,
    DROPOUT,
    GENDER,
    OUTCOME,
    OUTCOME_CODES,
    REFERRAL_SOURCE,
    SESSION_DATE,
    THERAPIST_ID,
)
from features.episodes import Episodes
from features.kernels import compute_feature_matrix
from features.profiles import InstrumentProfile
from features.registry import ENGAGEMENT_GROUP, FeatureRegistry, feature_registry
from models.booster import FitResult, SearchSpace, fit_booster, margin
from models.calibration import MarginCalibrator
from models.explain import global_importance
from models.reference import ReferenceProfile, distribution_profile, typical_levels
from models.scorer import HighBandRule, RiskBands, Scorer
from training.baselines import AlertRule, LogisticBaseline, fit_alert_rule, fit_logistic
from training.censoring import (
    CensoringMethod,
    censoring_weights,
    evaluation_population,
    evaluation_weights,
    exclusion_summary,
)
from training.crossfit import cross_fit
from training.metrics import EvaluationReport, evaluate, landmark_band
from training.splits import Splits, SplitStrategy, split_clients

logger = logging.getLogger(__name__)

#: Subgroup columns of the evaluation, in report order. ``therapist_id`` is evaluated per
#: therapist but reported aggregated (see :func:`therapist_summary`).
SUBGROUPS = ("landmark", CLINIC_ID, "age_band", GENDER, REFERRAL_SOURCE)
#: Context column of each row's landmark band (:data:`training.metrics.LANDMARK_BANDS`).
LANDMARK_BAND = "landmark_band"
AGE_BANDS = (0, 25, 40, 60, 200)
AGE_BAND_LABELS = ("<25", "25-39", "40-59", "60+")
UNKNOWN = "unknown"
#: The feature column holding each row's landmark (the calibrator's landmark intercepts).
LANDMARK_FEATURE = f"{ENGAGEMENT_GROUP}_landmark"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Every choice ``train_model`` makes, with its default (see the README's analyst guide)."""

    k_max: int = 20
    include_covariates: bool = False
    split: SplitStrategy = "temporal"
    test_fraction: float = 0.20
    calibration_fraction: float = 0.20
    valid_fraction: float = 0.15
    n_trials: int = 8
    calibration: Literal["auto", "sigmoid", "isotonic"] = "auto"
    # Folds of the cross-fitted calibration (training.crossfit); 0 calibrates the train-split
    # booster on the calibration split alone (the Dask engine always does).
    calibration_folds: int = 5
    high_band: str = "alert-rate:0.10"
    n_boot: int = 200
    seed: int = 0
    # Ongoing episodes: "ipcw" weights the labelled clients by 1 / P(ended by extraction),
    # "exclude" drops them unweighted (training.censoring; README's analyst guide).
    censoring: CensoringMethod = "ipcw"
    censoring_closure_days: int = 28
    search: SearchSpace = field(default_factory=SearchSpace)

    def splits_of(self, clients: pd.DataFrame) -> Splits:
        """:func:`training.splits.split_clients` of ``clients`` with these fractions and seed."""
        return split_clients(
            clients,
            strategy=self.split,
            test_fraction=self.test_fraction,
            calibration_fraction=self.calibration_fraction,
            valid_fraction=self.valid_fraction,
            seed=self.seed,
        )

    def params(self) -> dict[str, Any]:
        """Flat, loggable parameters."""
        out = {k: v for k, v in self.__dict__.items() if k != "search"}
        out.update({f"search_{k}": v for k, v in self.search.__dict__.items()})
        return out


@dataclass(frozen=True)
class LandmarkSet:
    """Feature rows of labelled (client, landmark) pairs with the context to slice them by.

    ``X`` is ``(n_rows, n_features)`` in registry order; ``y`` is 1.0 dropout / 0.0 completed;
    ``context`` has one row per landmark row with ``client_id``, ``landmark``, ``clinic_id``,
    ``therapist_id``, ``age_band``, ``gender``, ``referral_source``; ``weight`` is ``None``
    (unweighted) or one censoring weight per row (:mod:`training.censoring`).
    """

    X: np.ndarray
    y: np.ndarray
    context: pd.DataFrame
    weight: np.ndarray | None = None

    @property
    def client_id(self) -> np.ndarray:
        return self.context[CLIENT_ID].to_numpy(dtype=object)

    def subset(self, client_ids: np.ndarray) -> LandmarkSet:
        # Hash-based membership: np.isin on object arrays sorts and costs minutes at 20k clients.
        mask = self.context[CLIENT_ID].isin(pd.Index(client_ids)).to_numpy()
        return LandmarkSet(
            self.X[mask],
            self.y[mask],
            self.context.loc[mask].reset_index(drop=True),
            None if self.weight is None else self.weight[mask],
        )

    @property
    def n_clients(self) -> int:
        return int(pd.unique(self.client_id).shape[0])


def _concat(first: LandmarkSet, second: LandmarkSet) -> LandmarkSet:
    """The rows of both sets, ``first``'s then ``second``'s."""
    weight = None
    if first.weight is not None and second.weight is not None:
        weight = np.concatenate([first.weight, second.weight])
    return LandmarkSet(
        np.vstack([first.X, second.X]),
        np.concatenate([first.y, second.y]),
        pd.concat([first.context, second.context], ignore_index=True),
        weight,
    )


def age_band(age: pd.Series) -> pd.Series:
    """Age in years -> ``<25``, ``25-39``, ``40-59``, ``60+`` or ``unknown``."""
    bands = pd.cut(age, bins=list(AGE_BANDS), labels=list(AGE_BAND_LABELS), right=False)
    return bands.astype(object).where(bands.notna(), UNKNOWN)


def landmark_set(
    arrays: SessionArrays,
    clients: pd.DataFrame,
    registry: FeatureRegistry,
    *,
    k_max: int,
    landmarks: Any = "training",
) -> LandmarkSet:
    """Features and labels of every labelled client's landmarks (ongoing clients left out)."""
    rows = landmark_rows(arrays, landmarks, k_max)
    seg = arrays.seg_of_row[rows]
    labelled = np.isin(arrays.outcome[seg], _ENDED)
    rows, seg = rows[labelled], seg[labelled]
    X = compute_feature_matrix(arrays, registry, rows)
    y = (arrays.outcome[seg] == _outcome_code(DROPOUT)).astype(np.float64)
    context = _context(arrays.client_id[seg], arrays.session_number[rows], clients)
    return LandmarkSet(X=X, y=y, context=context)


def _context(ids: np.ndarray, landmark: np.ndarray, clients: pd.DataFrame) -> pd.DataFrame:
    """What evaluation slices landmark rows by: client, landmark, clinic, therapist, age band,
    gender and referral source (``unknown`` when not recorded)."""
    info = clients.set_index(CLIENT_ID)
    info = info.reindex(pd.Index(ids, name=CLIENT_ID))
    return pd.DataFrame(
        {
            CLIENT_ID: ids,
            "landmark": landmark,
            CLINIC_ID: info[CLINIC_ID].to_numpy(dtype=object),
            THERAPIST_ID: info[THERAPIST_ID].to_numpy(dtype=object),
            "age_band": age_band(pd.to_numeric(info[AGE], errors="coerce")).to_numpy(dtype=object),
            GENDER: info[GENDER].astype(object).fillna(UNKNOWN).to_numpy(dtype=object),
            REFERRAL_SOURCE: info[REFERRAL_SOURCE]
            .astype(object)
            .fillna(UNKNOWN)
            .to_numpy(dtype=object),
        }
    )


def _outcome_code(outcome: str) -> int:
    return OUTCOME_CODES.index(outcome)


#: Outcome codes of ended episodes, the only ones with a label.
_ENDED = np.array([_outcome_code(COMPLETED), _outcome_code(DROPOUT)])


@dataclass(frozen=True)
class ModelEvaluation:
    """Evaluation of one scorer (and optionally the baselines) on the same test rows.

    ``model`` is the scorer's report, overall and per :data:`SUBGROUPS`; ``baselines`` maps a
    baseline name to its report on the same rows; ``therapists`` is the per-therapist table and
    ``therapist_summary`` its aggregate; ``importance`` the mean |group contribution|;
    ``probability`` the scorer's test predictions (aligned to ``data``).
    """

    model: EvaluationReport
    baselines: dict[str, EvaluationReport]
    baseline_probability: dict[str, np.ndarray]
    therapists: pd.DataFrame
    therapist_summary: dict[str, float]
    importance: pd.Series
    probability: np.ndarray
    data: LandmarkSet

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
    not the short episodes of recent ones. ``"exclude"``: unweighted.

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
    if not np.isin(episodes.outcome, _ENDED).all():
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
        y=(episodes.outcome[scored.episode] == _outcome_code(DROPOUT)).astype(np.float64),
        # The appointment date of each row: the decision report's alerts per clinician-week.
        context=_context(ids, scored.landmark, clients).assign(
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
    )


@dataclass(frozen=True)
class TrainResult:
    """Everything ``train_model`` produced, for the CLI to render and ``runlog`` to log."""

    scorer: Scorer
    config: TrainConfig
    splits: Splits
    fit: FitResult
    calibrator: MarginCalibrator
    evaluation: ModelEvaluation
    data_summary: dict[str, Any]
    timings: dict[str, float]


def _data_summary(
    n_sessions: int, clients: pd.DataFrame, profile: InstrumentProfile
) -> dict[str, Any]:
    """Cohort counts for the model card; ``clients`` needs ``outcome`` and ``intake_date``."""
    counts = clients[OUTCOME].value_counts()
    ended = int(counts.get(COMPLETED, 0) + counts.get(DROPOUT, 0))
    intake = pd.to_datetime(clients["intake_date"])
    return {
        "clients": int(len(clients)),
        "sessions": int(n_sessions),
        "completed": int(counts.get(COMPLETED, 0)),
        "dropout": int(counts.get(DROPOUT, 0)),
        "ongoing": int(counts.get("ongoing", 0)),
        "dropout_rate": (counts.get(DROPOUT, 0) / ended) if ended else float("nan"),
        "intake_from": str(intake.min().date()) if intake.notna().any() else "",
        "intake_to": str(intake.max().date()) if intake.notna().any() else "",
        "profile": profile.name,
    }


def train_model(
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    profile: InstrumentProfile,
    config: TrainConfig | None = None,
    *,
    progress: Progress | None = None,
    trial_progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Fit, calibrate and evaluate a dropout model on validated, normalised tables.

    Parameters
    ----------
    sessions, clients
        Normalised contract tables (see :func:`training.io.load_cohort`).
    profile
        The instrument profile of the ``alliance_*`` columns.
    config
        Modelling choices; defaults are the documented ones.
    progress
        Called with a short stage name as each stage starts.
    trial_progress
        Called with ``(trials done, trials total)`` during the hyperparameter search.
    """
    config = config or TrainConfig()
    say = progress or (lambda _stage: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("features")
    registry = feature_registry(profile, include_covariates=config.include_covariates)
    arrays = pack_frames(sessions, clients, profile)
    data = landmark_set(arrays, clients, registry, k_max=config.k_max)
    splits = config.splits_of(clients)
    if config.censoring == "ipcw":
        # The fitted clients come from the intakes before the test set's (temporal split), so
        # G is their follow-up: over all intakes it mis-weights them by ~0.01 per landmark.
        weights = censoring_weights(
            sessions,
            clients,
            closure_days=config.censoring_closure_days,
            intake_before=splits.test_from,
        )
        data = replace(data, weight=weights.of(data.client_id))
        censoring = weights.summary
    else:
        censoring = exclusion_summary(clients)
    train, valid = data.subset(splits.train), data.subset(splits.valid)
    cal, test = data.subset(splits.calibration), data.subset(splits.test)
    timings["features_s"] = time.perf_counter() - t0
    logger.info(
        "landmark rows: train %d, valid %d, calibration %d, test %d",
        train.X.shape[0],
        valid.X.shape[0],
        cal.X.shape[0],
        test.X.shape[0],
    )

    say("fit")
    t = time.perf_counter()
    fit = fit_booster(
        train.X,
        train.y,
        valid.X,
        valid.y,
        feature_names=registry.names,
        search=config.search,
        n_trials=config.n_trials,
        seed=config.seed,
        progress=trial_progress,
        sample_weight=train.weight,
        valid_sample_weight=valid.weight,
    )
    timings["fit_s"] = time.perf_counter() - t

    summary = {**_data_summary(len(sessions), clients, profile), "censoring": censoring}
    cal_set, cal_margin = cal, None
    if config.calibration_folds:
        say("cross-fit")
        t = time.perf_counter()
        # The served booster is refitted on train + validation; the calibration split stays
        # held out from it (the reference's score histogram and the bands need unseen rows).
        fitted = data.subset(np.concatenate([splits.train, splits.valid]))
        oof, booster = cross_fit(
            fit.params,
            fitted.X,
            fitted.y,
            fitted.client_id,
            n_trees=fit.best_iteration + 1,
            feature_names=registry.names,
            weight=fitted.weight,
            n_folds=config.calibration_folds,
            seed=config.seed,
        )
        fit = replace(fit, booster=booster)
        # Every development client has a held-out margin: out-of-fold, or the served booster's.
        cal_set = _concat(fitted, cal)
        cal_margin = np.concatenate([oof, margin(booster, cal.X)])
        timings["cross_fit_s"] = time.perf_counter() - t
    return finish_training(
        fit,
        registry,
        profile,
        config,
        splits=splits,
        train=train,
        calibration=cal_set,
        calibration_margin=cal_margin,
        landmark_rows={
            "train": int(train.X.shape[0]),
            "valid": int(valid.X.shape[0]),
            "calibration": int(cal.X.shape[0]),
            "test": int(test.X.shape[0]),
        },
        sessions=sessions,
        clients=clients,
        summary=summary,
        timings=timings,
        started=t0,
        progress=say,
    )


def finish_training(
    fit: FitResult,
    registry: FeatureRegistry,
    profile: InstrumentProfile,
    config: TrainConfig,
    *,
    splits: Splits,
    train: LandmarkSet,
    calibration: LandmarkSet,
    landmark_rows: dict[str, int],
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    summary: dict[str, Any],
    timings: dict[str, float],
    started: float,
    progress: Progress | None = None,
    reference_rows: str | None = None,
    calibration_margin: np.ndarray | None = None,
) -> TrainResult:
    """Everything after the booster fit, shared by the pandas and Dask engines.

    Calibrates ``fit.booster`` on ``calibration``, sets the risk bands there, fits the
    baselines on ``train`` (only their columns are read), builds the :class:`Scorer`, its
    reference profile (:func:`reference_of` on ``sessions``/``clients``) and evaluates it on
    the test split's clients of ``sessions``/``clients``. The tables need only hold the
    calibration and test clients (plus, for the typical levels, whichever development clients
    are given; ``reference_rows`` then says which). ``calibration_margin``, when given, holds
    out-of-fold margins of the ``calibration`` rows (:func:`training.crossfit.cross_fit`) and
    replaces ``fit.booster``'s own.
    """
    say = progress or (lambda _stage: None)
    cal = calibration
    say("calibrate")
    t = time.perf_counter()
    # Landmark intercepts (models.calibration): a pooled map leaves the margin's bias by landmark.
    landmark = LANDMARK_FEATURE if LANDMARK_FEATURE in registry.names else None
    calibrator = MarginCalibrator(
        method=config.calibration, random_state=config.seed, landmark_feature=landmark
    )
    # Out-of-fold margins when cross-fitted (train_model), else the booster's on ``calibration``.
    cal_margin = margin(fit.booster, cal.X) if calibration_margin is None else calibration_margin
    cal_landmark = None if landmark is None else cal.X[:, registry.names.index(landmark)]
    calibrator.fit(
        cal_margin,
        cal.y,
        groups=cal.client_id,
        sample_weight=cal.weight,
        landmark=None if config.calibration == "isotonic" else cal_landmark,
    )
    params = calibrator.to_dict()
    # Bands come from the calibrated risk of the calibration split, never from test rows.
    bands = RiskBands.from_probabilities(
        calibrator.predict_proba(cal_margin, cal_landmark)[:, 1],
        rule=HighBandRule.parse(config.high_band),
    )
    timings["calibrate_s"] = time.perf_counter() - t

    say("baselines")
    baselines: dict[str, LogisticBaseline | AlertRule] = {
        "logistic_early_alliance_attendance": fit_logistic(
            registry, train.X, train.y, seed=config.seed
        ),
        "alert_rule": fit_alert_rule(registry, train.X, train.y),
    }

    summary = {**summary, "splits": splits.sizes(), "landmark_rows": dict(landmark_rows)}
    scorer = Scorer(
        booster=fit.booster,
        calibrator=params,
        registry=registry,
        bands=bands,
        k_max=config.k_max,
        metadata={
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "profile": profile.name,
            "n_trees": fit.best_iteration + 1,
            "max_depth": int(fit.params.get("max_depth", 0)),
            "calibration": params["method"],
            "split": config.split,
            "test_from": None if splits.test_from is None else str(splits.test_from.date()),
            "censoring": config.censoring,
            "censoring_closure_days": config.censoring_closure_days,
        },
    )

    t = time.perf_counter()
    scorer.reference = reference_of(scorer, sessions, clients, splits, rows=reference_rows)
    timings["reference_s"] = time.perf_counter() - t

    say("evaluate")
    t = time.perf_counter()
    # The test clients and the ongoing ones of the same intakes: their follow-up weights them.
    test_clients = evaluation_population(
        clients, test_ids=splits.test, test_from=splits.test_from, seed=config.seed
    )
    evaluation = evaluate_scorer(
        scorer,
        sessions[sessions[CLIENT_ID].isin(test_clients[CLIENT_ID])],
        test_clients,
        baselines=baselines,
        n_boot=config.n_boot,
        seed=config.seed,
        censoring=config.censoring,
        closure_days=config.censoring_closure_days,
        extraction_date=pd.to_datetime(sessions[SESSION_DATE]).max(),
    )
    timings["evaluate_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    return TrainResult(
        scorer=scorer,
        config=config,
        splits=splits,
        fit=fit,
        calibrator=calibrator,
        evaluation=evaluation,
        data_summary=summary,
        timings=timings,
    )


def reference_of(
    scorer: Scorer,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    splits: Splits,
    *,
    rows: str | None = None,
) -> ReferenceProfile:
    """The reference profile of a freshly trained ``scorer`` (see :mod:`models.reference`).

    The features of the distribution part come from the ended episodes of every client outside
    the test split (train, validation, calibration: whichever ``sessions`` holds) at their
    training landmarks, the score histogram and band shares from ``scorer.score`` on the
    calibration split's alone (the rows the bands were set on, not fitted on: in-sample scores
    are overconfident); the clinics' typical levels from the ratings of the same development
    clients (never the test split's).
    """
    dev_ids = pd.Index(np.concatenate([splits.train, splits.valid, splits.calibration]))

    def ended(ids: pd.Index) -> Episodes:
        chosen = clients[
            clients[CLIENT_ID].isin(ids)
            & clients[OUTCOME].isin((COMPLETED, DROPOUT))
            & clients[CLIENT_ID].isin(sessions[CLIENT_ID])
        ]
        return Episodes.from_frames(
            sessions[sessions[CLIENT_ID].isin(chosen[CLIENT_ID])], chosen, scorer.profile
        )

    dev_clients = clients[clients[CLIENT_ID].isin(dev_ids)]
    dev = Episodes.from_frames(
        sessions[sessions[CLIENT_ID].isin(dev_ids)], dev_clients, scorer.profile
    )
    features = scorer.score(ended(dev_ids), landmarks="training", explain=False)
    scores = scorer.score(ended(pd.Index(splits.calibration)), landmarks="training")
    return ReferenceProfile(
        distribution=distribution_profile(features, scores=scores),
        typical=typical_levels(dev, k_max=scorer.k_max),
        rows=rows
        or (
            "features: the train, validation and calibration clients' ended episodes at their "
            "training landmarks; score and bands: the calibration split's alone; typical "
            "levels: attended, rated appointments of the train, validation and calibration "
            "clients"
        ),
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
