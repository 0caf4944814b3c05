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

Level alignment. The 5 fold models (each on 80% of the development clients) do not sit at the
served refit's level: on the same new clients their margins were 0.014 +/- 0.002 lower at
landmarks 4-5, 0.011 lower at 6 and 0.011 higher at 11-12 (15 simulator runs), with the same
spread. A calibrator fitted mostly on out-of-fold margins then sets its landmark intercepts
for margins the served booster does not give, and over-predicted by about 0.03 log-odds at
landmarks 4-6. :func:`align_folds` measures each fold model's gap to the refit on rows none of
them saw (the calibration split), per landmark, and adds it to that fold's out-of-fold margins:
landmarks 4-6 moved by +0.011 (SE 0.001) in every run. Only the calibrator's input moves; the
served booster and the calibrator's form do not, so explanations still add up exactly. A
single pooled shift made CITL worse (the gap changes sign across landmarks).

A small leak: the tree count every fold model uses was chosen by early stopping on the
validation clients' log-loss, so the validation clients' out-of-fold margins come from models
whose size was tuned on those very clients. Their margins are slightly optimistic; the tree
count is one integer shared by all folds, so the effect is small, and the train and calibration
clients' margins are free of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import GroupKFold

from features.contract import CLIENT_ID
from models.booster import margin

#: Folds of the cross-fit. 5 keeps each fold model on 80% of the development clients.
N_FOLDS = 5

#: Fewest reference rows behind one landmark's shift: a landmark with fewer takes in its
#: neighbours (±1, ±2, ... sessions) until it has them. The paired margin difference has an SD
#: of about 0.1-0.2 log-odds, so 200 rows pin a shift to about 0.01.
MIN_ALIGN_ROWS: Final = 200


@dataclass(frozen=True)
class CrossFit:
    """:func:`cross_fit`'s result."""

    #: Each development row's margin from the fold model that did not see its client, aligned
    #: to the served booster's level when a reference was given (:func:`align_folds`).
    margin: np.ndarray
    #: The booster refitted on every development row: the one that is served.
    booster: xgb.Booster
    #: The fold models, in fold order.
    fold_boosters: list[xgb.Booster]
    #: Shift added to each fold's margins, one row per (landmark, fold) with its standard error
    #: and the reference rows behind it (:func:`align_folds`); empty without a reference.
    shift: pd.DataFrame


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
    reference: np.ndarray | None = None,
    reference_weight: np.ndarray | None = None,
    landmark_column: int | None = None,
) -> CrossFit:
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
    reference : ndarray of shape (n_ref, n_features), optional
        Rows of clients that neither the fold models nor the refit saw (the calibration
        split): when given, each fold's margins are aligned to the refit's level on them
        (:func:`align_folds`).
    reference_weight : ndarray of shape (n_ref,), optional
        Their row weights.
    landmark_column : int, optional
        Column of ``X`` and ``reference`` holding the landmark (None: one pooled shift).

    Returns
    -------
    CrossFit
    """
    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    oof = np.empty(X.shape[0], dtype=np.float64)
    fold_of = np.empty(X.shape[0], dtype=np.int64)
    boosters = []
    for k, (fit_rows, held_out) in enumerate(_folds(n_folds, seed).split(X, y, groups)):
        w = None if weight is None else weight[fit_rows]
        boosters.append(_train(params, X[fit_rows], y[fit_rows], w, n_trees, feature_names))
        oof[held_out] = margin(boosters[-1], X[held_out])
        fold_of[held_out] = k
    booster = _train(params, X, y, weight, n_trees, feature_names)
    # Without a reference, align_folds leaves the margins as they are (an empty table).
    aligned, shift = align_folds(
        oof,
        fold_of,
        None if landmark_column is None else X[:, landmark_column],
        boosters=boosters,
        booster=booster,
        reference=np.empty((0, X.shape[1])) if reference is None else reference,
        reference_weight=reference_weight,
        landmark_column=landmark_column,
    )
    return CrossFit(aligned, booster, boosters, shift)


def align_folds(
    oof: np.ndarray,
    fold: np.ndarray,
    landmark: np.ndarray | None,
    *,
    boosters: Sequence[xgb.Booster],
    booster: xgb.Booster,
    reference: np.ndarray,
    reference_weight: np.ndarray | None = None,
    landmark_column: int | None = None,
    min_rows: int = MIN_ALIGN_ROWS,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Out-of-fold margins moved to the served booster's level, landmark by landmark.

    Each fold model ``k`` and the served ``booster`` score the ``reference`` rows (clients
    none of them saw); at each landmark ``j`` of the out-of-fold rows the (weighted) mean of
    ``served - fold k`` over the reference rows at ``j`` (widened to ``j ± 1``, ``j ± 2``, ...
    until they are ``min_rows``) is added to fold ``k``'s rows at ``j``. Both engines call this.
    Without reference rows the margins are returned as they are (and an empty table).

    Parameters
    ----------
    oof : ndarray of shape (n,)
        Out-of-fold margins.
    fold : ndarray of shape (n,)
        The fold (index into ``boosters``) whose model gave each margin.
    landmark : ndarray of shape (n,), optional
        Each row's landmark; None (or all NaN) for one pooled shift per fold.
    boosters : sequence of xgboost.Booster
        The fold models, in fold order.
    booster : xgboost.Booster
        The served (refitted) booster.
    reference : ndarray of shape (n_ref, n_features)
        Rows no booster saw.
    reference_weight : ndarray of shape (n_ref,), optional
        Their weights (None: equal).
    landmark_column : int, optional
        Column of ``reference`` holding the landmark.
    min_rows : int
        Fewest reference rows behind one shift.

    Returns
    -------
    (aligned, table)
        The moved margins, and one row per (landmark, fold): ``shift``, its standard error
        ``se`` (of the weighted mean of the paired differences) and the reference ``rows``
        and landmark range (``from``, ``to``) it was measured on.

    Raises
    ------
    ValueError
        A landmark of the out-of-fold rows is missing while the model has one, or a shift
        cannot be measured (no reference row with weight).
    """
    table = pd.DataFrame(columns=["landmark", "fold", "shift", "se", "rows", "from", "to"])
    if reference.shape[0] == 0:
        return np.asarray(oof, dtype=np.float64), table
    served = margin(booster, reference)
    gap = np.stack([served - margin(b, reference) for b in boosters])  # (n_folds, n_ref)
    w = np.ones(served.size) if reference_weight is None else np.asarray(reference_weight, float)
    pooled = landmark is None or landmark_column is None or np.isnan(landmark).all()
    at = np.zeros(oof.size) if pooled else np.asarray(landmark, dtype=np.float64)
    ref_at = np.zeros(served.size) if pooled else reference[:, landmark_column].astype(float)
    if not np.isfinite(at).all():
        raise ValueError("out-of-fold rows without a landmark cannot be aligned")
    usable = np.isfinite(ref_at) & (w > 0)
    if not usable.any():
        raise ValueError("aligning the fold models needs reference rows with a landmark")
    values = np.unique(at)
    shift = np.empty((values.size, len(boosters)))
    rows = []
    for i, value in enumerate(values):
        distance = np.where(usable, np.abs(ref_at - value), np.inf)
        # The smallest window around this landmark holding min_rows usable reference rows.
        reach = np.sort(distance)[min(min_rows, int(usable.sum())) - 1]
        near = distance <= reach
        ww = w[near] / w[near].sum()
        shift[i] = gap[:, near] @ ww
        # SE of a weighted mean of paired differences (rows as independent: a slight
        # understatement, since a client's landmark rows are correlated).
        se = np.sqrt(((gap[:, near] - shift[i][:, None]) ** 2) @ (ww**2))
        span = (float(ref_at[near].min()), float(ref_at[near].max()))
        rows += [(value, k, shift[i, k], se[k], int(near.sum()), *span) for k in range(len(se))]
    table = pd.DataFrame(rows, columns=table.columns)
    aligned = oof + shift[np.searchsorted(values, at), np.asarray(fold, dtype=np.int64)]
    return aligned, table


def alignment_text(table: pd.DataFrame) -> str:
    """One line for the model card: how far the fold models were moved (:func:`align_folds`)."""
    if table.empty:
        return "out-of-fold margins used as the fold models gave them (no reference rows)"
    whole = (
        (table["rows"] == table["rows"].max())
        & (table["from"] == table["from"].min())
        & (table["to"] == table["to"].max())
    ).all()
    if table["landmark"].nunique() == 1:
        how = " (one pooled shift per fold)"
    elif whole:
        how = " (one pooled shift per fold: too few calibration rows to tell landmarks apart)"
    else:
        how = f" at each landmark (each over at least {int(table['rows'].min()):,} rows)"
    return (
        f"out-of-fold margins of {table['fold'].nunique()} fold models moved to the served "
        f"booster's level on the calibration clients{how}: shifts "
        f"{table['shift'].min():+.3f} to {table['shift'].max():+.3f} log-odds "
        f"(largest standard error {table['se'].max():.3f})"
    )


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
