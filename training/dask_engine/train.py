"""Training on the Dask engine: the ``xgboost.dask`` search on the landmark rows of every client
partition (:mod:`training.dask_engine.rows`), the cross-fit and censoring weights
(:mod:`training.dask_engine.crossfit`), then :func:`training.pipeline.finish_training` on the
gathered calibration and test clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.build import pack_frames
from features.contract import CLIENT_ID, ONGOING, OUTCOME, SESSION_DATE
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry, feature_registry
from models.booster import FitResult, SearchSpace, choose_trial, shap_cost
from training.baselines import logistic_columns, rule_columns
from training.censoring import CensoringWeights, evaluation_population, exclusion_summary
from training.crossfit import alignment_text
from training.dask_engine.crossfit import (
    OutOfFold,
    calibration_rows,
    cross_fit_dask,
    dask_censoring_weights,
    last_sessions,
)
from training.dask_engine.partitions import (
    CheckedPart,
    check_partitions,
    clean_frame,
    whole_fingerprint,
)
from training.dask_engine.rows import (
    FIT_SPLITS,
    FitFrames,
    fit_frames,
    sample_clients,
    split_names,
)
from training.landmarks import LANDMARK_FEATURE, LandmarkSet, landmark_column, landmark_set
from training.pipeline import TrainConfig, TrainResult, _data_summary, finish_training
from training.splits import Splits

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client


logger = logging.getLogger(__name__)


#: Most clients of the calibration split, and of the test split, whose rows the driver
#: gathers: above it, a deterministic sample of whole clients (:func:`sample_clients`).
#: Measured at 20k clients (2 trials, loaded 2-core machine): the driver peaked at 515 MB
#: with 2,000 gathered clients and 785 MB with 6,408, i.e. ~0.4 GB plus ~61 KB per gathered
#: client (calibration, bands, reference and evaluation). 15k + 15k clients then extrapolate
#: to ~2.2 GB, well under a worker's 4 GB; a calibration on 15k clients (~170k landmark rows)
#: pins the intercept far better than the ~600 clients of a small run.
#: Re-measured at 50k clients (16,054 gathered, 2 trials): driver peak 1,477 MB before the
#: whole held-out matrix was dropped after its split copies, 1,230 MB after (~52 KB per
#: gathered client above the driver's resting ~0.39 GB); the cap is kept.
HELD_OUT_CLIENT_CAP: Final = 15_000
#: Most session rows of the gathered calibration and test clients: the 20k measurement above
#: is ~5 KB of driver peak per gathered session row (12 sessions per client), so 600k rows is
#: ~3.4 GB. Reached only when the gathered clients average over 20 sessions each (at the
#: cap); training then refuses before the fit rather than running out of memory.
GATHER_LIMIT_SESSIONS: Final = 600_000
GATHERED: Final = (
    "client_id, intake_date and outcome of every client; one hash per row (fingerprint); the "
    "baselines' input columns of the train landmark rows; the validated rows of the "
    f"calibration and test clients (at most {HELD_OUT_CLIENT_CAP:,} of each split, a "
    "deterministic sample of whole clients above that) and of the ongoing clients of the "
    "test intakes (their follow-up weights the test metrics); each client's last appointment "
    "date (censoring weights); the out-of-fold margin, label, weight and landmark of the "
    "development clients' landmark rows (cross-fitted calibration)"
)

Progress = Callable[[str], None]


def fit_booster_dask(
    client: Client,
    frames: dict[str, FitFrames],
    feature_names: Sequence[str],
    *,
    search: SearchSpace,
    n_trials: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    weighted: bool = False,
) -> FitResult:
    """:func:`models.booster.fit_booster`'s search through ``xgboost.dask``: trial 0 the
    default, then seeded draws, early stopping on the ``valid`` rows, and the same choice
    (:func:`models.booster.choose_trial`, which both engines call).
    ``frames`` holds the persisted features and labels of the train and valid landmark rows
    (:func:`fit_frames`), passed to ``xgboost.dask`` as they are: a column selection here
    would be persisted by ``xgboost.dask`` as a second copy of the features. ``weighted``:
    the rows' censoring weights weight the fit and the early-stopping loss, as
    ``sample_weight`` and ``valid_sample_weight`` do in the pandas engine. One thread per
    worker."""
    import xgboost.dask as dxgb

    names = list(feature_names)
    train, valid = frames["train"], frames["valid"]
    dtrain = dxgb.DaskQuantileDMatrix(client, train.X, train.y, missing=np.nan,
                                      weight=train.weight if weighted else None,
                                      feature_names=names, max_bin=search.max_bin)  # fmt: skip
    # ref=dtrain: the validation rows are binned on the training cuts (no sketch of their own).
    dvalid = dxgb.DaskQuantileDMatrix(client, valid.X, valid.y, missing=np.nan,
                                      weight=valid.weight if weighted else None,
                                      feature_names=names, ref=dtrain)  # fmt: skip
    fixed: dict[str, Any] = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_bin": search.max_bin,
        "nthread": 1,
        "seed": seed,
        "verbosity": 0,
    }
    rng = np.random.default_rng(seed)
    trials: list[dict[str, Any]] = []
    boosters = []
    for trial in range(n_trials):
        sampled = search.default_trial() if trial == 0 else search.sample(rng)
        rounds = search.rounds_for(int(sampled["max_depth"]))
        started = time.perf_counter()
        out = dxgb.train(client, {**fixed, **sampled}, dtrain, num_boost_round=rounds,
                         evals=[(dvalid, "valid")],
                         early_stopping_rounds=search.early_stopping_rounds,
                         verbose_eval=False)  # fmt: skip
        booster = out["booster"]
        best = int(booster.best_iteration)
        loss = float(out["history"]["valid"]["logloss"][best])
        trials.append({
            "trial": trial, **sampled, "best_iteration": best, "n_trees": best + 1,
            "round_cap": rounds, "valid_logloss": loss,
            "shap_cost": shap_cost(best + 1, int(sampled["max_depth"])),
            "fit_seconds": time.perf_counter() - started, "chosen": False,
        })  # fmt: skip
        boosters.append(booster)
        logger.info("trial %d/%d: validation log-loss %.5f", trial + 1, n_trials, loss)
        if progress is not None:
            progress(trial + 1, n_trials)
    result = choose_trial(trials, boosters, fixed, search, names)
    result.booster.set_param({"nthread": 1})
    return result


def _take_clients(part: CheckedPart, ids: pd.Index) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (
        part.sessions[part.sessions[CLIENT_ID].isin(ids)],
        part.clients[part.clients[CLIENT_ID].isin(ids)],
    )


def _count_sessions(part: CheckedPart, ids: pd.Index) -> int:
    return int(part.sessions[CLIENT_ID].isin(ids).sum())


@dataclass(frozen=True)
class DaskTrained:
    """A :class:`TrainResult` plus what logging needs: the gathered calibration and test
    clients' tables, the whole dataset's fingerprint and what was gathered."""

    result: TrainResult
    sessions: pd.DataFrame
    clients: pd.DataFrame
    fingerprint: str
    gathered: dict[str, int]
    #: The censoring weights of the fit and calibration (``--censoring ipcw``), else None.
    weights: CensoringWeights | None = None


@dataclass(frozen=True)
class DaskFit:
    """The splits, the gathered calibration and test clients, the persisted train landmark
    rows (features and labels, on the workers) and the booster fitted on them:
    :func:`fit_dask`'s result. The validated partitions are no longer held anywhere."""

    profile: InstrumentProfile
    info: list[dict[str, Any]]
    all_clients: pd.DataFrame
    splits: Splits
    held: pd.Index
    registry: FeatureRegistry
    #: The validated rows of the gathered calibration and test clients (driver side).
    sessions: pd.DataFrame
    clients: pd.DataFrame
    #: The train and valid splits' persisted rows (baselines' columns, cross-fit).
    frames: dict[str, FitFrames]
    counts: pd.Series
    fit: FitResult
    timings: dict[str, float]
    #: Per held-out split: (clients gathered, clients in the split).
    held_out: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: The censoring weights the fit used (``--censoring ipcw``), else None.
    weights: CensoringWeights | None = None
    #: The latest appointment of the whole extract.
    extraction_date: pd.Timestamp | None = None

    @property
    def train(self) -> tuple[dd.DataFrame, dd.Series]:
        """The train split's persisted features and labels."""
        return self.frames["train"].X, self.frames["train"].y


def fit_dask(
    client: Client,
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None = None,
    config: TrainConfig,
    npartitions: int | None = None,
    gather_limit: int = GATHER_LIMIT_SESSIONS,
    held_out_cap: int = HELD_OUT_CLIENT_CAP,
    progress: Progress | None = None,
    trial_progress: Callable[[int, int], None] | None = None,
) -> DaskFit:
    """Read, validate, split, build the train and valid landmark rows, gather the held-out
    clients and fit the booster, all on the workers (the first half of :func:`train_dask`;
    the benchmark times it).

    ``held`` is at most ``held_out_cap`` clients of the calibration split and of the test
    split (:func:`sample_clients`); their session rows are counted first, so that a run that
    would gather more than ``gather_limit`` stops before the fit. They are gathered before
    the fit, so that the validated partitions can be released before it: during the fit a
    worker holds only the train and valid features and labels, and xgboost's own matrices.
    """
    from dask import delayed

    say = progress or (lambda _stage: None)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    say("features")
    parts, prof, info = check_partitions(
        client, sessions_path, clients_path, profile=profile, npartitions=npartitions
    )
    all_clients = pd.concat([i["clients"] for i in info], ignore_index=True)
    splits = config.splits_of(all_clients)
    sampled = {
        "calibration": sample_clients(splits.calibration, held_out_cap),
        "test": sample_clients(splits.test, held_out_cap),
    }
    held_out = {k: (len(v), len(getattr(splits, k))) for k, v in sampled.items()}
    for name, (used, total) in held_out.items():
        logger.info("%s split: gathering %d of its %d clients", name, used, total)
    ongoing = evaluated_ongoing(all_clients, splits, sampled["test"], seed=config.seed)
    held = pd.Index(np.concatenate([sampled["calibration"], sampled["test"], ongoing]))
    weights = None
    if config.censoring == "ipcw":
        weights = dask_censoring_weights(info, all_clients, splits, config)
    n_held = sum(client.gather(client.compute([delayed(_count_sessions)(p, held) for p in parts])))
    if n_held > gather_limit:
        raise ValueError(
            f"the {len(held)} calibration and test clients gathered to the driver (at most "
            f"{held_out_cap} of each split) have {n_held} session rows, more than the "
            f"{gather_limit} the Dask engine gathers; episodes this long (over "
            f"{gather_limit // max(len(held), 1)} sessions per client on average) need a "
            "lower cap on the held-out clients"
        )
    registry = feature_registry(prof, include_covariates=config.include_covariates)
    frames = fit_frames(client, parts, split_names(splits, info), registry, k_max=config.k_max,
                        weight=None if weights is None else weights.weight)  # fmt: skip
    taken = client.gather(client.compute([delayed(_take_clients)(p, held) for p in parts]))
    # The validated partitions are released here (nothing else refers to them): the fit
    # needs only the persisted features and labels.
    del parts
    sessions = clean_frame(pd.concat([s for s, _ in taken], ignore_index=True))
    clients_ = clean_frame(pd.concat([c for _, c in taken], ignore_index=True))
    del taken
    counts = pd.Series({name: len(frames[name].y) for name in FIT_SPLITS}, dtype=np.int64)
    timings["features_s"] = time.perf_counter() - t0

    say("fit")
    t = time.perf_counter()
    fit = fit_booster_dask(client, frames, registry.names, search=config.search,
                           n_trials=config.n_trials, seed=config.seed,
                           progress=trial_progress, weighted=weights is not None)  # fmt: skip
    timings["fit_s"] = time.perf_counter() - t
    extraction = pd.to_datetime(last_sessions(info)[SESSION_DATE]).max()
    return DaskFit(profile=prof, info=info, all_clients=all_clients, splits=splits,
                   held=held, registry=registry, sessions=sessions, clients=clients_,
                   frames=frames, counts=counts, fit=fit, timings=timings,
                   held_out=held_out, weights=weights, extraction_date=extraction)  # fmt: skip


def evaluated_ongoing(
    clients: pd.DataFrame, splits: Splits, test_ids: np.ndarray, *, seed: int
) -> np.ndarray:
    """The ongoing clients of the evaluated intakes, gathered with the test clients so that
    the test metrics are weighted by their follow-up as the pandas engine's are
    (:func:`training.censoring.evaluation_population`). When the test split is sampled, so
    are they, at the same rate (a temporal split's period holds them all; a random split's
    share already follows ``test_ids``)."""
    population = evaluation_population(
        clients, test_ids=test_ids, test_from=splits.test_from, seed=seed
    )
    ongoing = population.loc[population[OUTCOME] == ONGOING, CLIENT_ID].to_numpy(dtype=object)
    if splits.test_from is not None and len(test_ids) < len(splits.test) and len(ongoing):
        share = len(test_ids) / len(splits.test)
        ongoing = sample_clients(ongoing, max(1, round(len(ongoing) * share)))
    return ongoing


def train_dask(
    client: Client,
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None = None,
    config: TrainConfig | None = None,
    npartitions: int | None = None,
    gather_limit: int = GATHER_LIMIT_SESSIONS,
    held_out_cap: int = HELD_OUT_CLIENT_CAP,
    progress: Progress | None = None,
    trial_progress: Callable[[int, int], None] | None = None,
) -> DaskTrained:
    """Train on Parquet tables through ``client``: :func:`training.pipeline.train_model`'s
    result, with features and the booster fit on the workers (see the module docstring for
    what the driver gathers).

    Parameters
    ----------
    npartitions
        Client partitions; default
        :func:`~training.dask_engine.partitions.default_partitions` (a partition's landmark
        rows must fit in a worker's memory with room to spare).
    gather_limit
        Most session rows of calibration and test clients gathered to the driver.
    held_out_cap
        Most clients of the calibration split, and of the test split, gathered to the driver:
        above it, a deterministic sample of whole clients (:func:`sample_clients`). The
        calibrator, the risk bands, the test evaluation and the reference profile are built on
        the gathered clients; the data summary (``held_out_clients``), the reference's
        ``rows`` text and :attr:`DaskTrained.gathered` say how many of how many.

    Censoring (``config.censoring``) and cross-fitted calibration (``config.calibration_folds``)
    follow the pandas engine: see :mod:`training.dask_engine.crossfit`.

    Raises
    ------
    ValueError
        On a contract violation, splits that cannot be drawn, or more than ``gather_limit``
        session rows of the gathered calibration and test clients.
    """
    config = config or TrainConfig()
    say = progress or (lambda _stage: None)
    t0 = time.perf_counter()
    fitted = fit_dask(
        client, sessions_path, clients_path, profile=profile, config=config,
        npartitions=npartitions, gather_limit=gather_limit, held_out_cap=held_out_cap,
        progress=say, trial_progress=trial_progress,
    )  # fmt: skip
    prof, info, splits = fitted.profile, fitted.info, fitted.splits
    registry, fit, timings = fitted.registry, fitted.fit, fitted.timings
    counts, all_clients = fitted.counts, fitted.all_clients
    held_out, sessions, clients_ = fitted.held_out, fitted.sessions, fitted.clients
    weights, extraction = fitted.weights, fitted.extraction_date

    # Gathered: the baselines' columns of the train rows (the calibration and test clients
    # were gathered before the fit).
    base_cols = np.union1d(logistic_columns(registry), rule_columns(registry))
    X_train, y_train = fitted.train
    base = X_train[[registry.names[i] for i in base_cols]].compute()
    y_base = y_train.compute().to_numpy(np.float64)
    # The baselines are weighted for censoring as the booster is (finish_training).
    w_base = None if weights is None else fitted.frames["train"].weight.compute().to_numpy()
    # Fortran order: untouched columns stay unallocated zeros, which the baselines never read.
    X_base = np.zeros((len(base), len(registry.names)), dtype=np.float32, order="F")
    X_base[:, base_cols] = base.to_numpy(np.float32)
    train_set = LandmarkSet(X_base, y_base, pd.DataFrame(), w_base)
    landmark = LANDMARK_FEATURE if LANDMARK_FEATURE in registry.names else None
    oof: OutOfFold | None = None
    if config.calibration_folds:
        say("cross-fit")
        t = time.perf_counter()
        oof = cross_fit_dask(
            client, [fitted.frames[s] for s in FIT_SPLITS],
            all_clients[CLIENT_ID].to_numpy(dtype=object), fit,
            weighted=weights is not None, landmark=landmark,
            n_folds=config.calibration_folds, seed=config.seed,
        )  # fmt: skip
        fit = replace(fit, booster=oof.booster)
        timings["cross_fit_s"] = time.perf_counter() - t
    # The persisted rows are released once nothing refers to them.
    del X_train, y_train, fitted, base
    held_set = landmark_set(
        pack_frames(sessions, clients_, prof), clients_, registry, k_max=config.k_max
    )
    if weights is not None:
        held_set = replace(held_set, weight=weights.of(held_set.client_id))
    cal, test = held_set.subset(splits.calibration), held_set.subset(splits.test)
    # Each split's rows are copies: the whole held-out matrix is not needed past this line.
    del held_set
    cal_rows, cal_margin, shift = cal, None, pd.DataFrame()
    if oof is not None:
        cal_rows, cal_margin, shift = calibration_rows(
            oof, cal, len(registry.names), landmark_column(registry.names)
        )
    reference_rows = (
        "features, score and bands: the gathered calibration clients' ended episodes at "
        "their training landmarks; typical levels: attended, rated appointments of the "
        "same clients (Dask engine: only calibration and test clients reach the driver, "
        f"{_held_out_text(held_out)})"
    )
    summary = {
        **_data_summary(sum(i["n_sessions"] for i in info), all_clients, prof),
        "held_out_clients": _held_out_text(held_out),
        "censoring": exclusion_summary(all_clients) if weights is None else weights.summary,
        # Listed in the model card, so that a reader sees where the drift reference comes from.
        "reference_profile": reference_rows,
    }
    fingerprint = whole_fingerprint(info[0]["dtypes"], [i["hashes"] for i in info])
    if oof is not None:
        used, total = oof.clients
        summary["cross_fit_clients"] = (
            f"out-of-fold margins of {used:,} of {total:,} train and validation clients "
            "gathered for the calibrator"
            + (" (a deterministic sample of whole clients)" if used < total else "")
        )
        summary["cross_fit_alignment"] = alignment_text(shift)
    result = finish_training(
        fit, registry, prof, config, splits=splits, train=train_set, calibration=cal_rows,
        calibration_margin=cal_margin, extraction_date=extraction,
        landmark_rows={
            "train": int(counts.get("train", 0)), "valid": int(counts.get("valid", 0)),
            "calibration": int(cal.X.shape[0]), "test": int(test.X.shape[0]),
        },
        sessions=sessions, clients=clients_, summary=summary, timings=timings, started=t0,
        progress=say,
        reference_rows=reference_rows,
    )  # fmt: skip
    return DaskTrained(
        result=result,
        sessions=sessions,
        clients=clients_,
        fingerprint=fingerprint,
        gathered={
            "clients (id, intake date, outcome)": len(all_clients),
            "train landmark rows (baseline columns)": len(y_base),
            "calibration and test session rows": len(sessions),
            "calibration and test client rows": len(clients_),
            **{f"of {total:,} {name} clients": used for name, (used, total) in held_out.items()},
            **({} if oof is None else {"out-of-fold rows": len(oof.margin)}),
        },
        weights=weights,
    )


def _held_out_text(held_out: dict[str, tuple[int, int]]) -> str:
    """E.g. ``calibration: 50,000 of 160,000 clients, test: 50,000 of 200,000 clients (...)``."""
    text = ", ".join(f"{k}: {u:,} of {t:,} clients" for k, (u, t) in held_out.items())
    if any(u < t for u, t in held_out.values()):
        text += " (a deterministic sample of whole clients, by a keyed hash of client_id)"
    return text
