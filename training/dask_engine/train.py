"""Training on the Dask engine: landmark rows per client partition, the ``xgboost.dask`` fit,
then :func:`training.pipeline.finish_training` on the gathered calibration and test clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.build import pack_frames
from features.contract import CLIENT_ID
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry, feature_registry
from models.booster import FitResult, SearchSpace, shap_cost
from training.baselines import logistic_columns, rule_columns
from training.dask_engine.partitions import (
    CheckedPart,
    check_partitions,
    clean_frame,
    whole_fingerprint,
)
from training.pipeline import (
    LandmarkSet,
    TrainConfig,
    TrainResult,
    _data_summary,
    finish_training,
    landmark_set,
)
from training.splits import Splits

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client


logger = logging.getLogger(__name__)


#: Most session rows of calibration and test clients the driver gathers (about 1 GB with
#: their landmark features); above it training refuses rather than running out of memory.
GATHER_LIMIT_SESSIONS: Final = 3_000_000
#: Workers (1 thread each) of the LocalCluster started when no scheduler is given.
LABEL: Final = "_label"
SPLIT: Final = "_split"
PART: Final = "_part"
GATHERED: Final = (
    "client_id, intake_date and outcome of every client; one hash per row (fingerprint); the "
    "baselines' input columns of the train landmark rows; the validated rows of the "
    "calibration and test clients"
)

Progress = Callable[[str], None]


def _split_names(splits: Splits, info: list[dict[str, Any]]) -> list[pd.Series]:
    """Per partition: split name by client id (``""``: in no split)."""
    ids = pd.concat([i["clients"][CLIENT_ID] for i in info], ignore_index=True)
    names = pd.Series(splits.of(ids.to_numpy(dtype=object)), index=ids.to_numpy(dtype=object))
    bounds = np.cumsum([0, *(len(i["clients"]) for i in info)])
    return [names.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def partition_landmarks(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str] = ("train", "valid"),
    dtype: Any = np.float32,
) -> pd.DataFrame:
    """Landmark rows of one client partition whose client is in a split of ``keep``.

    Columns: the registry's features (``dtype``; xgboost bins float32), ``_label`` (1.0
    dropout), ``_split``, ``client_id`` and ``landmark``. Built by
    :func:`training.pipeline.landmark_set`, the pandas engine's function.
    """
    columns = [*registry.names, LABEL, SPLIT, CLIENT_ID, "landmark"]
    chosen = split_of[split_of.isin(keep)]
    clients = part.clients[part.clients[CLIENT_ID].isin(chosen.index)]
    sessions = part.sessions[part.sessions[CLIENT_ID].isin(chosen.index)]
    if sessions.empty:
        return _empty_landmarks(registry, dtype)
    data = landmark_set(
        pack_frames(sessions, clients, registry.profile), clients, registry, k_max=k_max
    )
    frame = pd.DataFrame(data.X.astype(dtype, copy=False), columns=list(registry.names))
    frame[LABEL] = data.y
    frame[SPLIT] = chosen.reindex(data.client_id).to_numpy(dtype=object)
    frame[CLIENT_ID] = data.client_id
    frame["landmark"] = data.context["landmark"].to_numpy(np.int64)
    return _typed(frame[columns])


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({SPLIT: "str", CLIENT_ID: "str", LABEL: np.float64})


def _empty_landmarks(registry: FeatureRegistry, dtype: Any) -> pd.DataFrame:
    frame = pd.DataFrame({n: np.empty(0, dtype=dtype) for n in registry.names})
    frame[LABEL] = np.empty(0)
    frame[SPLIT] = np.empty(0, dtype=object)
    frame[CLIENT_ID] = np.empty(0, dtype=object)
    frame["landmark"] = np.empty(0, dtype=np.int64)
    return _typed(frame)


def landmark_frame(
    parts: list[Any],
    split_names: list[pd.Series],
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str] = ("train", "valid"),
    dtype: Any = np.float32,
) -> dd.DataFrame:
    """A dask frame of :func:`partition_landmarks` over every client partition (lazy)."""
    import dask.dataframe as dd
    from dask import delayed

    meta = _empty_landmarks(registry, dtype)
    pieces = [
        delayed(partition_landmarks)(p, names, registry, k_max=k_max, keep=keep, dtype=dtype)
        for p, names in zip(parts, split_names, strict=True)
    ]
    return dd.from_delayed(pieces, meta=meta, verify_meta=False)


def fit_booster_dask(
    client: Client,
    frame: dd.DataFrame,
    feature_names: Sequence[str],
    *,
    search: SearchSpace,
    n_trials: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> FitResult:
    """:func:`models.booster.fit_booster`'s search through ``xgboost.dask``: trial 0 the
    default, then seeded draws, early stopping on the ``valid`` rows, and the same choice
    (the lowest TreeSHAP cost within ``tie_tolerance`` of the best validation log-loss).
    ``frame`` holds the train and valid landmark rows (:func:`landmark_frame`); one thread
    per worker."""
    import xgboost.dask as dxgb

    names = list(feature_names)
    train = frame[frame[SPLIT] == "train"]
    valid = frame[frame[SPLIT] == "valid"]
    dtrain = dxgb.DaskQuantileDMatrix(client, train[names], train[LABEL], missing=np.nan,
                                      feature_names=names, max_bin=search.max_bin)  # fmt: skip
    dvalid = dxgb.DaskQuantileDMatrix(client, valid[names], valid[LABEL], missing=np.nan,
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
    best_loss = min(t["valid_logloss"] for t in trials)
    near = [t for t in trials if t["valid_logloss"] <= best_loss + search.tie_tolerance]
    chosen = min(near, key=lambda t: (t["shap_cost"], t["valid_logloss"]))["trial"]
    trials[chosen]["chosen"] = True
    best_iteration = int(trials[chosen]["best_iteration"])
    booster = boosters[chosen][: best_iteration + 1]
    booster.set_param({"nthread": 1})
    return FitResult(
        booster=booster,
        params={**fixed, **{k: trials[chosen][k] for k in search.default_trial()}},
        best_iteration=best_iteration,
        trials=tuple(trials),
        chosen_trial=int(chosen),
        valid_logloss=float(trials[chosen]["valid_logloss"]),
        feature_names=tuple(names),
    )


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


@dataclass(frozen=True)
class DaskFit:
    """Validated client partitions (on the workers), the splits, the persisted train and
    valid landmark rows and the booster fitted on them: :func:`fit_dask`'s result."""

    parts: list[Any]
    profile: InstrumentProfile
    info: list[dict[str, Any]]
    all_clients: pd.DataFrame
    splits: Splits
    held: pd.Index
    registry: FeatureRegistry
    frame: dd.DataFrame
    counts: pd.Series
    fit: FitResult
    timings: dict[str, float]


def fit_dask(
    client: Client,
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None = None,
    config: TrainConfig,
    npartitions: int | None = None,
    gather_limit: int = GATHER_LIMIT_SESSIONS,
    progress: Progress | None = None,
    trial_progress: Callable[[int, int], None] | None = None,
) -> DaskFit:
    """Read, validate, split, build the train and valid landmark rows and fit the booster,
    all on the workers (the first half of :func:`train_dask`; the benchmark times it).

    The calibration and test clients' session rows are counted first, so that a run that
    would gather more than ``gather_limit`` stops before the fit.
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
    held = pd.Index(np.concatenate([splits.calibration, splits.test]))
    n_held = sum(client.gather(client.compute([delayed(_count_sessions)(p, held) for p in parts])))
    if n_held > gather_limit:
        raise ValueError(
            f"the calibration and test clients have {n_held} session rows, more than the "
            f"{gather_limit} the Dask engine gathers to the driver; lower --test-fraction or "
            "the calibration share, or train on a sample of clients"
        )
    registry = feature_registry(prof, include_covariates=config.include_covariates)
    names = _split_names(splits, info)
    frame = landmark_frame(parts, names, registry, k_max=config.k_max).persist()
    counts = frame[SPLIT].value_counts().compute()
    timings["features_s"] = time.perf_counter() - t0

    say("fit")
    t = time.perf_counter()
    fit = fit_booster_dask(client, frame, registry.names, search=config.search,
                           n_trials=config.n_trials, seed=config.seed,
                           progress=trial_progress)  # fmt: skip
    timings["fit_s"] = time.perf_counter() - t
    return DaskFit(parts=parts, profile=prof, info=info, all_clients=all_clients,
                   splits=splits, held=held, registry=registry, frame=frame, counts=counts,
                   fit=fit, timings=timings)  # fmt: skip


def train_dask(
    client: Client,
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None = None,
    config: TrainConfig | None = None,
    npartitions: int | None = None,
    gather_limit: int = GATHER_LIMIT_SESSIONS,
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

    Raises
    ------
    ValueError
        On a contract violation, splits that cannot be drawn, or more than ``gather_limit``
        calibration and test session rows.
    """
    from dask import delayed

    config = config or TrainConfig()
    say = progress or (lambda _stage: None)
    t0 = time.perf_counter()
    fitted = fit_dask(
        client, sessions_path, clients_path, profile=profile, config=config,
        npartitions=npartitions, gather_limit=gather_limit, progress=say,
        trial_progress=trial_progress,
    )  # fmt: skip
    parts, prof, info, splits = fitted.parts, fitted.profile, fitted.info, fitted.splits
    registry, frame, fit, timings = fitted.registry, fitted.frame, fitted.fit, fitted.timings
    counts, all_clients, held = fitted.counts, fitted.all_clients, fitted.held

    # Gathered: the baselines' columns of the train rows; the calibration and test clients.
    base_cols = np.union1d(logistic_columns(registry), rule_columns(registry))
    train_rows = frame[frame[SPLIT] == "train"]
    base = train_rows[[registry.names[i] for i in base_cols] + [LABEL]].compute()
    # Fortran order: untouched columns stay unallocated zeros, which the baselines never read.
    X_base = np.zeros((len(base), len(registry.names)), dtype=np.float32, order="F")
    X_base[:, base_cols] = base[[registry.names[i] for i in base_cols]].to_numpy(np.float32)
    train_set = LandmarkSet(X_base, base[LABEL].to_numpy(np.float64), pd.DataFrame())
    # The persisted rows are released once nothing refers to them.
    del frame, train_rows, fitted
    taken = client.gather(client.compute([delayed(_take_clients)(p, held) for p in parts]))
    sessions = clean_frame(pd.concat([s for s, _ in taken], ignore_index=True))
    clients_ = clean_frame(pd.concat([c for _, c in taken], ignore_index=True))
    held_set = landmark_set(
        pack_frames(sessions, clients_, prof), clients_, registry, k_max=config.k_max
    )
    cal, test = held_set.subset(splits.calibration), held_set.subset(splits.test)
    summary = _data_summary(sum(i["n_sessions"] for i in info), all_clients, prof)
    fingerprint = whole_fingerprint(info[0]["dtypes"], [i["hashes"] for i in info])
    result = finish_training(
        fit, registry, prof, config, splits=splits, train=train_set, calibration=cal,
        landmark_rows={
            "train": int(counts.get("train", 0)), "valid": int(counts.get("valid", 0)),
            "calibration": int(cal.X.shape[0]), "test": int(test.X.shape[0]),
        },
        sessions=sessions, clients=clients_, summary=summary, timings=timings, started=t0,
        progress=say,
        reference_rows=(
            "distribution: the calibration split's ended episodes at their training "
            "landmarks; typical levels: attended, rated appointments of the calibration "
            "clients (Dask engine: only calibration and test clients reach the driver)"
        ),
    )  # fmt: skip
    return DaskTrained(
        result=result,
        sessions=sessions,
        clients=clients_,
        fingerprint=fingerprint,
        gathered={
            "clients (id, intake date, outcome)": len(all_clients),
            "train landmark rows (baseline columns)": len(base),
            "calibration and test session rows": len(sessions),
            "calibration and test client rows": len(clients_),
        },
    )
