"""Training on the Dask engine: landmark rows per client partition, the ``xgboost.dask`` fit,
then :func:`training.pipeline.finish_training` on the gathered calibration and test clients."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.build import pack_frames
from features.contract import CLIENT_ID
from features.profiles import InstrumentProfile
from features.registry import FeatureRegistry, feature_registry
from models.booster import FitResult, SearchSpace, choose_trial, shap_cost
from training.baselines import logistic_columns, rule_columns
from training.censoring import exclusion_summary
from training.dask_engine.partitions import (
    CheckedPart,
    check_partitions,
    clean_frame,
    whole_fingerprint,
)
from training.landmarks import LandmarkSet, landmark_set
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
#: Key of the sampling hash (16 bytes), so that the sample is not the partition hash's.
_SAMPLE_KEY: Final = "alliance-sample1"
LABEL: Final = "_label"
SPLIT: Final = "_split"
PART: Final = "_part"
#: The splits the booster is fitted on (early stopping on ``valid``).
FIT_SPLITS: Final = ("train", "valid")
GATHERED: Final = (
    "client_id, intake_date and outcome of every client; one hash per row (fingerprint); the "
    "baselines' input columns of the train landmark rows; the validated rows of the "
    f"calibration and test clients (at most {HELD_OUT_CLIENT_CAP:,} of each split, a "
    "deterministic sample of whole clients above that)"
)

Progress = Callable[[str], None]


def sample_clients(ids: np.ndarray | pd.Index, cap: int) -> np.ndarray:
    """At most ``cap`` of ``ids``: every one when there are no more, else the ``cap`` whose
    keyed hash of ``client_id`` (as text) is smallest, in their order in ``ids``.

    Whole clients, and the same clients whatever the row, file or partition order, the run,
    the process or the engine: the hash (:func:`pandas.util.hash_array` with a fixed key)
    depends on the id alone.
    """
    ids = np.asarray(ids, dtype=object)
    if cap < 1:
        raise ValueError("the held-out client cap must be >= 1")
    if len(ids) <= cap:
        return ids
    text = ids.astype(str).astype(object)
    keys = pd.util.hash_array(text, hash_key=_SAMPLE_KEY)
    order = np.lexsort((text, keys))  # ties (a 64-bit collision) broken by the id itself
    return ids[np.sort(order[:cap])]


def _split_names(splits: Splits, info: list[dict[str, Any]]) -> list[pd.Series]:
    """Per partition: split name by client id (``""``: in no split)."""
    ids = pd.concat([i["clients"][CLIENT_ID] for i in info], ignore_index=True)
    names = pd.Series(splits.of(ids.to_numpy(dtype=object)), index=ids.to_numpy(dtype=object))
    bounds = np.cumsum([0, *(len(i["clients"]) for i in info)])
    return [names.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _split_landmarks(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str],
) -> tuple[LandmarkSet, np.ndarray] | None:
    """:func:`training.landmarks.landmark_set` of one partition's clients in a split of
    ``keep``, and each row's split name; None when none of them has a session."""
    chosen = split_of[split_of.isin(keep)]
    clients = part.clients[part.clients[CLIENT_ID].isin(chosen.index)]
    sessions = part.sessions[part.sessions[CLIENT_ID].isin(chosen.index)]
    if sessions.empty:
        return None
    data = landmark_set(
        pack_frames(sessions, clients, registry.profile), clients, registry, k_max=k_max
    )
    return data, chosen.reindex(data.client_id).to_numpy(dtype=object)


def partition_landmarks(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    keep: Sequence[str] = FIT_SPLITS,
    dtype: Any = np.float32,
) -> pd.DataFrame:
    """Landmark rows of one client partition whose client is in a split of ``keep``.

    Columns: the registry's features (``dtype``; xgboost bins float32), ``_label`` (1.0
    dropout), ``_split``, ``client_id`` and ``landmark``. Built by
    :func:`training.landmarks.landmark_set`, the pandas engine's function.
    """
    columns = [*registry.names, LABEL, SPLIT, CLIENT_ID, "landmark"]
    built = _split_landmarks(part, split_of, registry, k_max=k_max, keep=keep)
    if built is None:
        return _empty_landmarks(registry, dtype)
    data, split = built
    frame = pd.DataFrame(data.X.astype(dtype, copy=False), columns=list(registry.names))
    frame[LABEL] = data.y
    frame[SPLIT] = split
    frame[CLIENT_ID] = data.client_id
    frame["landmark"] = data.context["landmark"].to_numpy(np.int64)
    return _typed(frame[columns])


def partition_matrices(
    part: CheckedPart,
    split_of: pd.Series,
    registry: FeatureRegistry,
    *,
    k_max: int,
    dtype: Any = np.float32,
) -> dict[str, tuple[pd.DataFrame, pd.Series]]:
    """What the fit reads of one client partition: per split of :data:`FIT_SPLITS`, the
    features (``dtype``) and the label of its landmark rows, and nothing else.

    The same rows as :func:`partition_landmarks` (the same ``landmark_set`` call), without
    the id, split and landmark columns, so that a worker holds one copy of the features (the
    one ``xgboost.dask`` reads) rather than a whole frame plus the fit's column selections.
    The float64 matrix is dropped as soon as its ``dtype`` copy exists.
    """
    names = list(registry.names)
    built = _split_landmarks(part, split_of, registry, k_max=k_max, keep=FIT_SPLITS)
    if built is None:
        return {s: _empty_matrix(registry, dtype) for s in FIT_SPLITS}
    data, split = built
    del built
    X, y = data.X.astype(dtype, copy=False), data.y
    del data
    out = {}
    for name in FIT_SPLITS:
        mask = split == name
        out[name] = (pd.DataFrame(X[mask], columns=names), pd.Series(y[mask], name=LABEL))
    return out


def _empty_matrix(registry: FeatureRegistry, dtype: Any) -> tuple[pd.DataFrame, pd.Series]:
    X = pd.DataFrame({n: np.empty(0, dtype=dtype) for n in registry.names})
    return X, pd.Series(np.empty(0), name=LABEL)


def fit_frames(
    client: Client,
    parts: list[Any],
    split_names: list[pd.Series],
    registry: FeatureRegistry,
    *,
    k_max: int,
    dtype: Any = np.float32,
) -> dict[str, tuple[dd.DataFrame, dd.Series]]:
    """Per split of :data:`FIT_SPLITS`, the persisted features and labels of every client
    partition (:func:`partition_matrices`): one ``persist`` for all four collections, so each
    partition's landmark rows are built once and the per-partition result is released as
    soon as its four pieces exist."""
    import dask.dataframe as dd
    from dask import delayed

    X_meta, y_meta = _empty_matrix(registry, dtype)
    pieces = [
        delayed(partition_matrices)(p, names, registry, k_max=k_max, dtype=dtype)
        for p, names in zip(parts, split_names, strict=True)
    ]
    lazy = [
        dd.from_delayed([p[name][i] for p in pieces], meta=meta, verify_meta=False)
        for name in FIT_SPLITS
        for i, meta in enumerate((X_meta, y_meta))
    ]
    done = client.persist(lazy)
    return {name: (done[2 * i], done[2 * i + 1]) for i, name in enumerate(FIT_SPLITS)}


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
    frames: dict[str, tuple[dd.DataFrame, dd.Series]],
    feature_names: Sequence[str],
    *,
    search: SearchSpace,
    n_trials: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> FitResult:
    """:func:`models.booster.fit_booster`'s search through ``xgboost.dask``: trial 0 the
    default, then seeded draws, early stopping on the ``valid`` rows, and the same choice
    (:func:`models.booster.choose_trial`, which both engines call).
    ``frames`` holds the persisted features and labels of the train and valid landmark rows
    (:func:`fit_frames`), passed to ``xgboost.dask`` as they are: a column selection here
    would be persisted by ``xgboost.dask`` as a second copy of the features. One thread per
    worker."""
    import xgboost.dask as dxgb

    names = list(feature_names)
    (X_train, y_train), (X_valid, y_valid) = frames["train"], frames["valid"]
    dtrain = dxgb.DaskQuantileDMatrix(client, X_train, y_train, missing=np.nan,
                                      feature_names=names, max_bin=search.max_bin)  # fmt: skip
    # ref=dtrain: the validation rows are binned on the training cuts (no sketch of their own).
    dvalid = dxgb.DaskQuantileDMatrix(client, X_valid, y_valid, missing=np.nan,
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
    #: The train split's persisted features and labels (for the baselines' columns).
    train: tuple[dd.DataFrame, dd.Series]
    counts: pd.Series
    fit: FitResult
    timings: dict[str, float]
    #: Per held-out split: (clients gathered, clients in the split).
    held_out: dict[str, tuple[int, int]] = field(default_factory=dict)


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
    held = pd.Index(np.concatenate([sampled["calibration"], sampled["test"]]))
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
    frames = fit_frames(client, parts, _split_names(splits, info), registry, k_max=config.k_max)
    taken = client.gather(client.compute([delayed(_take_clients)(p, held) for p in parts]))
    # The validated partitions are released here (nothing else refers to them): the fit
    # needs only the persisted features and labels.
    del parts
    sessions = clean_frame(pd.concat([s for s, _ in taken], ignore_index=True))
    clients_ = clean_frame(pd.concat([c for _, c in taken], ignore_index=True))
    del taken
    counts = pd.Series({name: len(frames[name][1]) for name in FIT_SPLITS}, dtype=np.int64)
    timings["features_s"] = time.perf_counter() - t0

    say("fit")
    t = time.perf_counter()
    fit = fit_booster_dask(client, frames, registry.names, search=config.search,
                           n_trials=config.n_trials, seed=config.seed,
                           progress=trial_progress)  # fmt: skip
    timings["fit_s"] = time.perf_counter() - t
    return DaskFit(profile=prof, info=info, all_clients=all_clients, splits=splits,
                   held=held, registry=registry, sessions=sessions, clients=clients_,
                   train=frames["train"], counts=counts, fit=fit, timings=timings,
                   held_out=held_out)  # fmt: skip


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

    Raises
    ------
    ValueError
        On a contract violation, splits that cannot be drawn, more than ``gather_limit``
        session rows of the gathered calibration and test clients, or ``config.censoring``
        other than ``"exclude"``.
    """
    config = config or TrainConfig(censoring="exclude")
    if config.censoring != "exclude":
        # Censoring weights would have to reach every worker's landmark rows and the
        # xgboost.dask matrices; until they do, say so rather than train unweighted silently.
        raise ValueError(
            "the Dask engine does not apply censoring weights (--censoring ipcw); train with "
            "--censoring exclude (ongoing clients left out, unweighted) or with --engine pandas"
        )
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

    # Gathered: the baselines' columns of the train rows (the calibration and test clients
    # were gathered before the fit).
    base_cols = np.union1d(logistic_columns(registry), rule_columns(registry))
    X_train, y_train = fitted.train
    base = X_train[[registry.names[i] for i in base_cols]].compute()
    y_base = y_train.compute().to_numpy(np.float64)
    # Fortran order: untouched columns stay unallocated zeros, which the baselines never read.
    X_base = np.zeros((len(base), len(registry.names)), dtype=np.float32, order="F")
    X_base[:, base_cols] = base.to_numpy(np.float32)
    train_set = LandmarkSet(X_base, y_base, pd.DataFrame())
    # The persisted rows are released once nothing refers to them.
    del X_train, y_train, fitted, base
    held_set = landmark_set(
        pack_frames(sessions, clients_, prof), clients_, registry, k_max=config.k_max
    )
    cal, test = held_set.subset(splits.calibration), held_set.subset(splits.test)
    # Each split's rows are copies: the whole held-out matrix is not needed past this line.
    del held_set
    reference_rows = (
        "features, score and bands: the gathered calibration clients' ended episodes at "
        "their training landmarks; typical levels: attended, rated appointments of the "
        "same clients (Dask engine: only calibration and test clients reach the driver, "
        f"{_held_out_text(held_out)})"
    )
    summary = {
        **_data_summary(sum(i["n_sessions"] for i in info), all_clients, prof),
        "held_out_clients": _held_out_text(held_out),
        "censoring": exclusion_summary(all_clients),
        # Listed in the model card, so that a reader sees where the drift reference comes from.
        "reference_profile": reference_rows,
    }
    fingerprint = whole_fingerprint(info[0]["dtypes"], [i["hashes"] for i in info])
    result = finish_training(
        fit, registry, prof, config, splits=splits, train=train_set, calibration=cal,
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
        },
    )


def _held_out_text(held_out: dict[str, tuple[int, int]]) -> str:
    """E.g. ``calibration: 50,000 of 160,000 clients, test: 50,000 of 200,000 clients (...)``."""
    text = ", ".join(f"{k}: {u:,} of {t:,} clients" for k, (u, t) in held_out.items())
    if any(u < t for u, t in held_out.values()):
        text += " (a deterministic sample of whole clients, by a keyed hash of client_id)"
    return text
