"""The Dask engine: train and score from Parquet on a Dask cluster, with the pandas engine's code.

The data are split into client partitions (every row of a client, in both tables, lands in the
same partition: the partition is a hash of ``client_id``). Each partition is validated with
:func:`features.validation.validate_and_normalise`, turned into landmark rows with
:func:`training.pipeline.landmark_set` (the same feature functions as the pandas engine), or
scored with :func:`training.scoring.score_tables` (the one scorer). The booster is fitted with
``xgboost.dask`` on the workers, one thread each, with the search of
:func:`models.booster.fit_booster` (same trials, same choice rule).

What the driver gathers (and nothing else):

* ``client_id``, ``intake_date`` and ``outcome`` of every client (to draw the splits with
  :func:`training.splits.split_clients`, exactly as the pandas engine does);
* one 64-bit hash per row of both tables (the dataset fingerprint, equal to the pandas
  engine's);
* the baselines' input columns of the train split's landmark rows (a few columns);
* the validated rows of the calibration and test clients, at most
  :data:`GATHER_LIMIT_SESSIONS` session rows: calibration, risk bands, the reference profile
  and the test evaluation then run through :func:`training.pipeline.finish_training`, the
  pandas engine's code. The typical levels of the reference profile come from the calibration
  clients only (the pandas engine also uses train and validation clients).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.build import pack_frames
from features.contract import CLIENT_ID, INTAKE_DATE, OUTCOME, SESSION_NUMBER
from features.profiles import InstrumentProfile, get_profile
from features.registry import FeatureRegistry, feature_registry
from features.validation import validate_and_normalise
from models.booster import FitResult, SearchSpace, shap_cost
from models.scorer import Scorer
from training.baselines import logistic_columns, rule_columns
from training.io import check_parquet_source, format_problem
from training.pipeline import (
    LandmarkSet,
    TrainConfig,
    TrainResult,
    _data_summary,
    finish_training,
    landmark_set,
)
from training.scoring import CohortScores, score_tables
from training.splits import Splits, split_clients
from training.tracking import _FINGERPRINT_VERSION

if TYPE_CHECKING:
    import dask.dataframe as dd
    from distributed import Client

logger = logging.getLogger(__name__)

#: Most session rows of calibration and test clients the driver gathers (about 1 GB with
#: their landmark features); above it training refuses rather than running out of memory.
GATHER_LIMIT_SESSIONS: Final = 3_000_000
#: Workers (1 thread each) of the LocalCluster started when no scheduler is given.
DEFAULT_WORKERS: Final = 2
LABEL: Final = "_label"
SPLIT: Final = "_split"
PART: Final = "_part"
GATHERED: Final = (
    "client_id, intake_date and outcome of every client; one hash per row (fingerprint); the "
    "baselines' input columns of the train landmark rows; the validated rows of the "
    "calibration and test clients"
)

Progress = Callable[[str], None]


@contextmanager
def dask_client(
    scheduler: str | None = None, *, workers: int = DEFAULT_WORKERS
) -> Iterator[Client]:
    """A client of ``scheduler`` (``tcp://host:port``), or of a LocalCluster on 127.0.0.1 with
    ``workers`` single-threaded worker processes and no dashboard, closed on exit."""
    from distributed import Client, LocalCluster

    if scheduler:
        # Gives up after dask's distributed.comm.timeouts.connect (30 s by default).
        with Client(scheduler) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=None,
            processes=True,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


# ---------------------------------------------------------------------------------------------
# Client partitions
# ---------------------------------------------------------------------------------------------


def _with_part(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """``frame`` plus its partition number: a process-independent hash of ``client_id``."""
    ids = frame[CLIENT_ID].astype(str).to_numpy(dtype=object)
    return frame.assign(**{PART: (pd.util.hash_array(ids) % np.uint64(n)).astype(np.int64)})


def _take_part(frame: pd.DataFrame, part: int) -> pd.DataFrame:
    return frame.loc[frame[PART] == part].drop(columns=PART)


def read_partitioned(path: str | Path, n: int) -> dd.DataFrame:
    """Read a Parquet file or dataset folder, with the partition column added (see
    :func:`client_partitions`)."""
    import dask.dataframe as dd

    frame = dd.read_parquet(str(check_parquet_source(path)))
    meta = frame._meta.assign(**{PART: pd.Series(dtype=np.int64)})
    return frame.map_partitions(_with_part, n, meta=meta)


def client_partitions(frame: dd.DataFrame, n: int) -> list[Any]:
    """``n`` delayed pandas frames; partition ``i`` holds exactly the rows whose client hashes to
    ``i``, so a client's sessions and clients rows meet in the same partition number.

    Each output is a filter of every input partition: plain tasks, no shuffle service, and the
    rule does not depend on how dask would hash a column.
    """
    from dask import delayed

    pieces = frame.to_delayed()
    return [
        delayed(pd.concat)([delayed(_take_part)(p, i) for p in pieces], ignore_index=True)
        for i in range(n)
    ]


@dataclass(frozen=True)
class CheckedPart:
    """One client partition, validated and normalised, plus what the driver may gather."""

    sessions: pd.DataFrame
    clients: pd.DataFrame
    errors: int
    problems: tuple[str, ...]


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    if SESSION_NUMBER in frame.columns:
        frame = frame.astype({SESSION_NUMBER: np.int64})
    return frame


def _check_part(sessions: pd.DataFrame, clients: pd.DataFrame, profile: str) -> CheckedPart:
    """Validate one partition; problems are kept without their row (partition rows mean
    nothing to a person) and, as everywhere, without cell values."""
    checked = validate_and_normalise(sessions, clients, get_profile(profile))
    report = checked.report
    shown = tuple(format_problem(replace(p, row=None)) for p in report.errors[:5])
    return CheckedPart(
        sessions=_clean(checked.sessions),
        clients=_clean(checked.clients),
        errors=len(report.errors),
        problems=shown,
    )


def _gatherable(part: CheckedPart) -> dict[str, Any]:
    """What the driver gathers of every partition: errors, split inputs, row hashes, counts."""
    return {
        "errors": part.errors,
        "problems": part.problems,
        "clients": part.clients[[CLIENT_ID, INTAKE_DATE, OUTCOME]],
        "n_sessions": len(part.sessions),
        "hashes": (_row_hashes(part.sessions), _row_hashes(part.clients)),
        "dtypes": (_header(part.sessions), _header(part.clients)),
    }


def _row_hashes(frame: pd.DataFrame) -> np.ndarray:
    columns = sorted(frame.columns, key=str)
    return pd.util.hash_pandas_object(frame.loc[:, columns], index=False).to_numpy(np.uint64)


def _header(frame: pd.DataFrame) -> str:
    columns = sorted(frame.columns, key=str)
    return "|".join(f"{c!s}:{frame[c].dtype}" for c in columns)


def _fingerprint(headers: Sequence[str], hashes: Sequence[Sequence[np.ndarray]]) -> str:
    """:func:`training.tracking.dataset_fingerprint` of the whole tables from per-partition row
    hashes (the same canonical form: sorted columns with dtypes, row count, sorted hashes)."""
    digest = hashlib.sha256(_FINGERPRINT_VERSION.encode())
    for table, header in enumerate(headers):
        rows = np.sort(np.concatenate([h[table] for h in hashes]))
        part = f"{header}|rows={rows.size}".encode()
        if rows.size and header:
            part += b"\x00" + rows.astype("<u8").tobytes()
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def check_partitions(
    client: Client,
    sessions_path: str | Path,
    clients_path: str | Path,
    *,
    profile: str | None,
    npartitions: int,
) -> tuple[list[Any], InstrumentProfile, list[dict[str, Any]]]:
    """Read both tables, validate every client partition on the workers (kept there) and
    gather :func:`_gatherable` of each.

    Raises
    ------
    ValueError
        On a table-level problem (missing column, unknown profile) or any row error, with the
        count and the first problems (column and reason, never a value).
    """
    from dask import delayed

    sessions = read_partitioned(sessions_path, npartitions)
    clients = read_partitioned(clients_path, npartitions)
    # Table-level checks (columns, profile) on the empty frames dask already knows.
    head = validate_and_normalise(
        sessions._meta.drop(columns=PART),
        clients._meta.drop(columns=PART),
        get_profile(profile) if profile else None,
    ).report
    if head.profile is None or head.table_errors:
        raise ValueError(
            "the tables break the data contract: "
            + "; ".join(format_problem(p) for p in head.table_errors or head.errors)
        )
    parts = [
        delayed(_check_part)(s, c, head.profile.name)
        for s, c in zip(
            client_partitions(sessions, npartitions),
            client_partitions(clients, npartitions),
            strict=True,
        )
    ]
    parts = client.persist(parts)
    info = client.gather(client.compute([delayed(_gatherable)(p) for p in parts]))
    errors = sum(i["errors"] for i in info)
    if errors:
        shown = [p for i in info for p in i["problems"]][:10]
        raise ValueError(
            f"the tables break the data contract: {errors} errors, e.g.\n  "
            + "\n  ".join(shown)
            + "\n(alliance-risk validate lists them all with rows; the Dask engine has no "
            "quarantine mode)"
        )
    return parts, head.profile, info


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


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
        Client partitions; default 4 per worker (a partition's landmark rows must fit in a
        worker's memory).
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
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n = npartitions or 4 * max(1, len(client.scheduler_info()["workers"]))

    say("features")
    parts, prof, info = check_partitions(
        client, sessions_path, clients_path, profile=profile, npartitions=n
    )
    all_clients = pd.concat([i["clients"] for i in info], ignore_index=True)
    splits = split_clients(
        all_clients,
        strategy=config.split,
        test_fraction=config.test_fraction,
        calibration_fraction=config.calibration_fraction,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
    )
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

    # Gathered: the baselines' columns of the train rows; the calibration and test clients.
    base_cols = np.union1d(logistic_columns(registry), rule_columns(registry))
    train_rows = frame[frame[SPLIT] == "train"]
    base = train_rows[[registry.names[i] for i in base_cols] + [LABEL]].compute()
    # Fortran order: untouched columns stay unallocated zeros, which the baselines never read.
    X_base = np.zeros((len(base), len(registry.names)), dtype=np.float32, order="F")
    X_base[:, base_cols] = base[[registry.names[i] for i in base_cols]].to_numpy(np.float32)
    train_set = LandmarkSet(X_base, base[LABEL].to_numpy(np.float64), pd.DataFrame())
    frame = None  # the persisted rows are released once nothing refers to them
    taken = client.gather(client.compute([delayed(_take_clients)(p, held) for p in parts]))
    sessions = _clean(pd.concat([s for s, _ in taken], ignore_index=True))
    clients_ = _clean(pd.concat([c for _, c in taken], ignore_index=True))
    held_set = landmark_set(
        pack_frames(sessions, clients_, prof), clients_, registry, k_max=config.k_max
    )
    cal, test = held_set.subset(splits.calibration), held_set.subset(splits.test)
    summary = _data_summary(sum(i["n_sessions"] for i in info), all_clients, prof)
    fingerprint = _fingerprint(info[0]["dtypes"], [i["hashes"] for i in info])
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


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DaskScores:
    """What :func:`score_dask` wrote: ``rows`` scored clients in ``files`` (one Parquet file per
    client partition), ``bands`` counts per risk band, and the clients left out, counted as
    :class:`training.scoring.CohortScores` counts them."""

    files: tuple[Path, ...]
    rows: int
    bands: dict[str, int]
    model_name: str
    model_version: str
    no_appointments: int
    not_at_landmark: int
    refused: int
    skipped_ended: int


_COUNTS: Final = ("no_appointments", "not_at_landmark", "refused", "skipped_ended")


def _score_part(
    part: CheckedPart, scorer: Scorer, profile: str, path: Path, options: dict[str, Any]
) -> dict[str, Any]:
    """Score one client partition, write its rows to ``path``, return the counts."""
    scored: CohortScores = score_tables(
        scorer, part.sessions, part.clients, get_profile(profile), **options
    )
    scored.frame.to_parquet(path, index=False)
    return {
        "rows": len(scored.frame),
        "bands": scored.frame["risk_band"].value_counts().to_dict(),
        **{k: int(getattr(scored, k)) for k in _COUNTS},
    }


def score_dask(
    client: Client,
    scorer: Scorer,
    sessions_path: str | Path,
    clients_path: str | Path,
    out: str | Path,
    *,
    model_name: str,
    model_version: str,
    profile: str | None = None,
    landmark: int | None = None,
    include_ended: bool = False,
    npartitions: int | None = None,
) -> DaskScores:
    """Score every client partition with :func:`training.scoring.score_tables` (the one scorer)
    and write the rows as a Parquet dataset folder ``out``: ``part.<i>.parquet``, one per
    partition, each sorted by ``client_id``, with the pandas engine's columns. Earlier
    ``part.*.parquet`` files in ``out`` are removed first.

    The workers write the files, so ``out`` must be a folder they can all reach (on one
    machine, any local folder).
    """
    from dask import delayed

    n = npartitions or 4 * max(1, len(client.scheduler_info()["workers"]))
    parts, prof, _ = check_partitions(
        client, sessions_path, clients_path, profile=profile, npartitions=n
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part.*.parquet"):
        old.unlink()
    remote = client.scatter(scorer, broadcast=True)
    options = {"model_name": model_name, "model_version": model_version,
               "landmark": landmark, "include_ended": include_ended}  # fmt: skip
    files = tuple(out / f"part.{i}.parquet" for i in range(len(parts)))
    results = client.gather(client.compute([
        delayed(_score_part)(p, remote, prof.name, f, options)
        for p, f in zip(parts, files, strict=True)
    ]))  # fmt: skip
    bands: dict[str, int] = {}
    for r in results:
        for band, k in r["bands"].items():
            bands[str(band)] = bands.get(str(band), 0) + int(k)
    return DaskScores(
        files=files,
        rows=sum(r["rows"] for r in results),
        bands=bands,
        model_name=model_name,
        model_version=model_version,
        **{k: sum(r[k] for r in results) for k in _COUNTS},
    )
