"""Cross-fitted calibration data: out-of-fold margins of the fitting clients, then one refit.

Why (issue 19): a calibration split of ~600-700 clients cannot pin the calibration intercept
(cluster-bootstrap SD of the fitted intercept 0.16 log-odds at 714 clients, against a target of
|CITL| <= 0.1 per landmark), and still less one intercept per landmark. Cross-fitting gives
every fitting client (train and validation) a held-out margin: the chosen hyperparameters and
tree count are refitted on k-1 folds of clients and predict the k-th. The served booster is
then refitted with the same parameters on all of them, so its margins match the out-of-fold
ones in scale (each fold model saw (k-1)/k of the same data); the calibration split, never
fitted on, adds its margins from the served booster. Calibrating the early-stopped train-only
booster on out-of-fold margins instead left |CITL| up to 0.16 at landmarks 5-12 on 20k
external clients, because that booster saw less data.

A small leak: the tree count every fold model uses was chosen by early stopping on the
validation clients' log-loss, so the validation clients' out-of-fold margins come from models
whose size was tuned on those very clients. Their margins are slightly optimistic; the tree
count is one integer shared by all folds, so the effect is small, and the train and calibration
clients' margins are free of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import GroupKFold

from features.contract import CLIENT_ID
from models.booster import margin

#: Folds of the cross-fit. 5 keeps each fold model on 80% of the development clients.
N_FOLDS = 5


def _train(
    params: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None,
    n_trees: int,
    feature_names: Sequence[str],
) -> xgb.Booster:
    """One booster with fixed parameters and tree count (no early stopping)."""
    dtrain = xgb.QuantileDMatrix(
        np.asarray(X, dtype=np.float32),
        label=y,
        weight=weight,
        missing=np.nan,
        feature_names=list(feature_names),
        max_bin=int(params.get("max_bin", 256)),
    )
    return xgb.train(dict(params), dtrain, num_boost_round=n_trees)


def cross_fit(
    params: Mapping[str, Any],
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    n_trees: int,
    feature_names: Sequence[str],
    weight: np.ndarray | None = None,
    n_folds: int = N_FOLDS,
    seed: int = 0,
) -> tuple[np.ndarray, xgb.Booster]:
    """Out-of-fold margins of every row and the booster refitted on all rows.

    Parameters
    ----------
    params : mapping
        xgboost parameters of the chosen trial (:attr:`models.booster.FitResult.params`).
    X : ndarray of shape (n_rows, n_features)
        Development clients' landmark rows, NaN for missing.
    y : ndarray of shape (n_rows,)
        1 = dropout, 0 = completed.
    groups : ndarray of shape (n_rows,)
        Client id per row: a client's rows stay in one fold.
    n_trees : int
        Boosting rounds of every fit (the early-stopped count of the chosen trial).
    feature_names : sequence of str
        Column names stored on the boosters.
    weight : ndarray of shape (n_rows,), optional
        Row weights.
    n_folds, seed : int
        Folds (by client) and the seed of their shuffling.

    Returns
    -------
    (oof_margin, booster)
        ``oof_margin`` of shape (n_rows,), each row's margin from the fold model that did not
        see its client; ``booster`` fitted on every row with ``n_trees`` rounds.
    """
    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    oof = np.empty(X.shape[0], dtype=np.float64)
    for fit_rows, held_out in _folds(n_folds, seed).split(X, y, groups):
        w = None if weight is None else weight[fit_rows]
        fold = _train(params, X[fit_rows], y[fit_rows], w, n_trees, feature_names)
        oof[held_out] = margin(fold, X[held_out])
    return oof, _train(params, X, y, weight, n_trees, feature_names)


def _folds(n_folds: int, seed: int) -> GroupKFold:
    return GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)


def client_folds(client_ids: np.ndarray, *, n_folds: int = N_FOLDS, seed: int = 0) -> pd.Series:
    """The fold (0..n_folds-1) in which :func:`cross_fit` holds out each client.

    ``GroupKFold(shuffle=True)`` deals the sorted distinct clients out after a seeded
    permutation, so a client's fold depends on the set of clients alone, not on how many rows
    each has or their order: the Dask engine, which never holds the rows in one place, calls
    this with one id per client and holds out the same clients as :func:`cross_fit` does.

    Parameters
    ----------
    client_ids : ndarray of shape (n,)
        Client id of each landmark row, or of each client once.

    Returns
    -------
    Series
        Fold number (int64) indexed by the distinct client ids.
    """
    ids = pd.unique(np.asarray(client_ids, dtype=object))
    fold = np.empty(ids.size, dtype=np.int64)
    for k, (_, held_out) in enumerate(_folds(n_folds, seed).split(ids, groups=ids)):
        fold[held_out] = k
    return pd.Series(fold, index=pd.Index(ids, name=CLIENT_ID), name="fold")
