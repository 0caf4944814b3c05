"""Censoring weights and cross-fitted calibration on the Dask engine, with the pandas engine's
functions: :func:`training.censoring.censoring_weights` for the weights and
:func:`training.crossfit.client_folds` for the folds; the fold models and the refit go through
``xgboost.dask``.

Weights. Every client's intake date, outcome and last appointment date are gathered (one row
per client, beside the ids the splits are drawn from), so the weights are computed once on the
driver by the same call as the pandas engine's, then joined onto each partition's landmark rows
by ``client_id`` (:func:`training.dask_engine.train.partition_matrices`).

Cross-fit. The rows stay on the workers. A fold model is fitted on every development row with
the held-out fold's rows at weight 0 (the same trees as leaving them out: the gradient, hessian
and weighted quantile sketch ignore them), so no per-fold copy of the features is made. The
out-of-fold margins the calibrator needs (margin, label, weight, landmark, client) are gathered
for at most :data:`CROSSFIT_CLIENT_CAP` development clients (a deterministic sample of whole
clients above it, :func:`training.dask_engine.train.sample_clients`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd

from features.contract import CLIENT_ID, SESSION_DATE
from models.booster import FitResult, margin
from training.censoring import CensoringWeights, censoring_weights
from training.crossfit import align_folds, client_folds
from training.dask_engine.rows import FitFrames, sample_clients
from training.landmarks import LandmarkSet
from training.splits import Splits

if TYPE_CHECKING:
    import dask.dataframe as dd
    import xgboost as xgb
    from distributed import Client

    from training.pipeline import TrainConfig


logger = logging.getLogger(__name__)

#: Most development (train + validation) clients whose out-of-fold margins the driver gathers
#: for the calibrator: 40 bytes per landmark row, so ~35 MB at ~12 rows per client. Below it
#: the calibrator sees every development row, as the pandas engine's does.
CROSSFIT_CLIENT_CAP: Final = 75_000


def last_sessions(info: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """``client_id`` and ``session_date`` of each client's last appointment (gathered per
    partition): all :func:`training.censoring.censoring_weights` reads of the sessions."""
    last = pd.concat([i["last_session"] for i in info])
    return pd.DataFrame(
        {CLIENT_ID: last.index.to_numpy(dtype=object), SESSION_DATE: last.to_numpy()}
    )


def dask_censoring_weights(
    info: Sequence[dict[str, Any]], clients: pd.DataFrame, splits: Splits, config: TrainConfig
) -> CensoringWeights:
    """The pandas engine's weights (:func:`training.pipeline.train_model`'s call) from the
    gathered per-client table: ``G`` is the follow-up of the intakes before the test set's."""
    return censoring_weights(
        last_sessions(info),
        clients,
        closure_days=config.censoring_closure_days,
        intake_before=splits.test_from,
    )


@dataclass(frozen=True)
class OutOfFold:
    """:func:`cross_fit_dask`'s result: the refitted booster and the gathered out-of-fold
    rows (``landmark`` NaN when the model has no landmark feature)."""

    booster: xgb.Booster
    #: The fold models, in fold order (:func:`training.crossfit.align_folds` needs them).
    fold_boosters: list[xgb.Booster]
    margin: np.ndarray
    #: The fold whose model gave each margin.
    fold: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    landmark: np.ndarray
    client_id: np.ndarray
    #: (development clients gathered, development clients with landmark rows)
    clients: tuple[int, int]


def _fold_weight(
    w: pd.Series, code: pd.Series, fold_of: np.ndarray, k: int, weighted: bool
) -> pd.Series:
    """The row weights of fold model ``k``: 0 for the clients it holds out, else ``w`` (or 1
    when unweighted)."""
    seen = fold_of[code.to_numpy()] != k
    return pd.Series(np.where(seen, w.to_numpy(np.float64) if weighted else 1.0, 0.0),
                     index=w.index, name=w.name)  # fmt: skip


def _oof_rows(
    X: pd.DataFrame,
    y: pd.Series,
    w: pd.Series,
    code: pd.Series,
    boosters: list[xgb.Booster],
    fold_of: np.ndarray,
    keep: np.ndarray,
    landmark: str | None,
) -> pd.DataFrame:
    """Each kept row's margin from the fold model that did not see its client."""
    c = code.to_numpy()
    chosen = keep[c]
    features = X.to_numpy()[chosen]
    fold = fold_of[c[chosen]]
    out = np.empty(fold.size, dtype=np.float64)
    for k, booster in enumerate(boosters):
        rows = fold == k
        if rows.any():
            out[rows] = margin(booster, features[rows])
    return pd.DataFrame({
        "margin": out,
        "fold": fold.astype(np.int64),
        "y": y.to_numpy(np.float64)[chosen],
        "weight": w.to_numpy(np.float64)[chosen],
        "landmark": np.nan if landmark is None else X[landmark].to_numpy(np.float64)[chosen],
        "code": c[chosen],
    })  # fmt: skip


def _pieces(frames: Sequence[FitFrames], name: str) -> list[Any]:
    return [p for f in frames for p in getattr(f, name).to_delayed()]


def cross_fit_dask(
    client: Client,
    frames: Sequence[FitFrames],
    client_ids: np.ndarray,
    fit: FitResult,
    *,
    weighted: bool,
    landmark: str | None,
    n_folds: int,
    seed: int,
    client_cap: int = CROSSFIT_CLIENT_CAP,
) -> OutOfFold:
    """:func:`training.crossfit.cross_fit` through ``xgboost.dask``: the chosen parameters and
    tree count refitted in the clients' folds (:func:`training.crossfit.client_folds`, the
    same clients held out as the pandas engine's) and on every row of ``frames`` (train and
    validation), weighted when ``weighted``; the out-of-fold rows of at most ``client_cap``
    clients are gathered.

    ``client_ids`` maps the frames' client codes to ids (the gathered client list).
    """
    import dask.dataframe as dd
    import xgboost.dask as dxgb
    from dask import delayed

    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    names = list(fit.feature_names)
    params = dict(fit.params)
    n_trees = fit.best_iteration + 1
    X = dd.concat([f.X for f in frames])
    y = dd.concat([f.y for f in frames])
    w = dd.concat([f.weight for f in frames])
    weights, code_parts = _pieces(frames, "weight"), _pieces(frames, "code")
    codes = np.unique(np.concatenate(client.gather(client.compute(
        [delayed(np.unique)(c) for c in code_parts]
    )))).astype(np.int64)  # fmt: skip
    ids = np.asarray(client_ids, dtype=object)[codes]
    fold_of = np.full(len(client_ids), -1, dtype=np.int8)
    fold_of[codes] = client_folds(ids, n_folds=n_folds, seed=seed).reindex(ids).to_numpy()
    kept = pd.Index(sample_clients(ids, client_cap))
    keep = np.zeros(len(client_ids), dtype=bool)
    keep[codes[pd.Index(ids).isin(kept)]] = True
    fold_d, keep_d = delayed(fold_of, traverse=False), delayed(keep, traverse=False)

    def train(weight: dd.Series) -> xgb.Booster:
        matrix = dxgb.DaskQuantileDMatrix(client, X, y, weight=weight, missing=np.nan,
                                          feature_names=names,
                                          max_bin=int(params.get("max_bin", 256)))  # fmt: skip
        return dxgb.train(client, params, matrix, num_boost_round=n_trees)["booster"]

    boosters = []
    for k in range(n_folds):
        fold_w = dd.from_delayed(
            [delayed(_fold_weight)(b, c, fold_d, k, weighted)
             for b, c in zip(weights, code_parts, strict=True)],
            meta=w._meta, verify_meta=False,
        )  # fmt: skip
        boosters.append(train(fold_w))
        logger.info("cross-fit: fold %d/%d fitted", k + 1, n_folds)
    booster = train(w if weighted else None)  # type: ignore[arg-type]
    booster.set_param({"nthread": 1})
    boosters_d = delayed(boosters, traverse=False)
    rows = client.gather(client.compute([
        delayed(_oof_rows)(xp, yp, wp, cp, boosters_d, fold_d, keep_d, landmark)
        for xp, yp, wp, cp in zip(_pieces(frames, "X"), _pieces(frames, "y"), weights,
                                  code_parts, strict=True)
    ]))  # fmt: skip
    got = pd.concat(rows, ignore_index=True)
    return OutOfFold(
        booster=booster,
        fold_boosters=boosters,
        margin=got["margin"].to_numpy(),
        fold=got["fold"].to_numpy(),
        y=got["y"].to_numpy(),
        weight=got["weight"].to_numpy(),
        landmark=got["landmark"].to_numpy(),
        client_id=np.asarray(client_ids, dtype=object)[got["code"].to_numpy()],
        clients=(len(kept), len(ids)),
    )


def calibration_rows(
    oof: OutOfFold, cal: LandmarkSet, n_features: int, landmark_column: int | None
) -> tuple[LandmarkSet, np.ndarray, pd.DataFrame]:
    """The calibrator's rows and margins: the gathered out-of-fold rows, aligned to the
    refitted booster's level on the calibration split (:func:`training.crossfit.align_folds`,
    as the pandas engine's), then the calibration split's with the refitted booster's margins
    (:func:`training.pipeline.train_model`'s order); and the alignment's shifts.

    The development rows' features are zeros except the landmark column (all that
    :func:`training.pipeline.finish_training` reads of a row besides its margin): in Fortran
    order the untouched columns stay unallocated."""
    n_dev = oof.margin.size
    X = np.zeros((n_dev + cal.X.shape[0], n_features), dtype=np.float64, order="F")
    if landmark_column is not None:
        X[:n_dev, landmark_column] = oof.landmark
    X[n_dev:] = cal.X
    context = pd.DataFrame({CLIENT_ID: np.concatenate([oof.client_id, cal.client_id])})
    weight = None if cal.weight is None else np.concatenate([oof.weight, cal.weight])
    rows = LandmarkSet(X, np.concatenate([oof.y, cal.y]), context, weight)
    aligned, shift = align_folds(
        oof.margin, oof.fold, oof.landmark, boosters=oof.fold_boosters, booster=oof.booster,
        reference=cal.X, reference_weight=cal.weight, landmark_column=landmark_column,
    )  # fmt: skip
    return rows, np.concatenate([aligned, margin(oof.booster, cal.X)]), shift
