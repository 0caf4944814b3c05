"""Training, as library functions the CLI renders.

``train_model`` fits the booster on the train split (early-stopped on ``valid``), calibrates it
on cross-fitted margins of the development clients, sets the risk bands, attaches the reference
profile (:func:`reference_of`), and evaluates the resulting :class:`~models.scorer.Scorer` and
both baselines on the same test rows (:func:`training.evaluation.evaluate_scorer`, which is also
the evaluation of an already trained scorer on new data). Landmark rows come from
:mod:`training.landmarks`. Nothing here touches MLflow; :mod:`training.runlog` logs the results.
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

from features.build import pack_frames
from features.contract import (
    CLIENT_ID,
    COMPLETED,
    DROPOUT,
    OUTCOME,
    SESSION_DATE,
)
from features.episodes import Episodes
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry, feature_registry
from models.booster import FitResult, SearchSpace, fit_booster, margin
from models.calibration import MarginCalibrator
from models.reference import ReferenceProfile, distribution_profile, typical_levels
from models.scorer import HighBandRule, RiskBands, Scorer
from training.baselines import AlertRule, LogisticBaseline, fit_alert_rule, fit_logistic
from training.censoring import (
    CensoringMethod,
    censoring_weights,
    evaluation_population,
    exclusion_summary,
)
from training.crossfit import alignment_text, cross_fit
from training.evaluation import ModelEvaluation, evaluate_scorer
from training.landmarks import (
    LANDMARK_FEATURE,
    LandmarkSet,
    concat_sets,
    landmark_column,
    landmark_set,
)
from training.splits import Splits, SplitStrategy, split_clients

logger = logging.getLogger(__name__)


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
    # booster on the calibration split alone (both engines: training.dask_engine.crossfit).
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
        crossed = cross_fit(
            fit.params,
            fitted.X,
            fitted.y,
            fitted.client_id,
            n_trees=fit.best_iteration + 1,
            feature_names=registry.names,
            weight=fitted.weight,
            n_folds=config.calibration_folds,
            seed=config.seed,
            # The fold models are moved to the served booster's level on clients none saw.
            reference=cal.X,
            reference_weight=cal.weight,
            landmark_column=landmark_column(registry.names),
        )
        fit = replace(fit, booster=crossed.booster)
        summary["cross_fit_alignment"] = alignment_text(crossed.shift)
        # Every development client has a held-out margin: out-of-fold, or the served booster's.
        cal_set = concat_sets(fitted, cal)
        cal_margin = np.concatenate([crossed.margin, margin(crossed.booster, cal.X)])
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
    extraction_date: pd.Timestamp | None = None,
) -> TrainResult:
    """Everything after the booster fit, shared by the pandas and Dask engines.

    Calibrates ``fit.booster`` on ``calibration``, sets the risk bands there, fits the
    baselines on ``train`` (only their columns are read), builds the :class:`Scorer`, its
    reference profile (:func:`reference_of` on ``sessions``/``clients``) and evaluates it on
    the test split's clients of ``sessions``/``clients``. The tables need only hold the
    calibration and test clients (plus, for the typical levels, whichever development clients
    are given; ``reference_rows`` then says which). ``calibration_margin``, when given, holds
    out-of-fold margins of the ``calibration`` rows (:func:`training.crossfit.cross_fit`) and
    replaces ``fit.booster``'s own. ``extraction_date`` (default: the latest appointment in
    ``sessions``) is the whole extract's, when ``sessions`` holds only some clients.
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
    column = landmark_column(registry.names)
    cal_landmark = None if column is None else cal.X[:, column]
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
        weight=cal.weight,
    )
    timings["calibrate_s"] = time.perf_counter() - t

    say("baselines")
    baselines: dict[str, LogisticBaseline | AlertRule] = {
        # Weighted for censoring as the booster is (None with --censoring exclude).
        "logistic_early_alliance_attendance": fit_logistic(
            registry, train.X, train.y, seed=config.seed, sample_weight=train.weight
        ),
        "alert_rule": fit_alert_rule(registry, train.X, train.y, sample_weight=train.weight),
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
        extraction_date=pd.to_datetime(sessions[SESSION_DATE]).max()
        if extraction_date is None
        else extraction_date,
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
