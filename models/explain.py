"""Exact TreeSHAP explanations, rescaled into the calibrated space and grouped for clinicians.

The booster's exact TreeSHAP values (Lundberg et al. 2020) add up, with the bias term, to its
margin. With a sigmoid calibrator, calibrated log-odds = slope * margin + intercept is affine,
so ``slope * phi`` plus the base ``slope * bias + intercept`` add up exactly to the calibrated
log-odds of the returned probability: the explanation is in "calibrated log-odds". With an
isotonic calibrator no affine map exists; contributions stay in the margin, which is monotone
in the returned probability, and the space is labelled so.

Groups (alliance elements, attendance, engagement) are SIGNED sums of their features'
contributions. Shapley values are additive, so a group's sum is the group's contribution;
summing absolute values would not add up to anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from scipy.special import expit

from models.calibration import (
    SPACE_CALIBRATED,
    SPACE_UNCALIBRATED,
    MarginCalibrator,
    calibrate_probability,
    landmark_column,
    landmark_offset,
)
from models.treeshap import PathTables


@dataclass(frozen=True, eq=False)
class Explanation:
    """Per-row explanation of calibrated dropout risk. Arrays are read-only.

    Attributes
    ----------
    space : str
        Units of ``base_logit``, the contributions and ``logit``: ``"calibrated log-odds"``
        (sigmoid calibrator) or ``"uncalibrated log-odds (monotone in the returned
        probability)"`` (isotonic).
    base_logit : ndarray of shape (n_rows,)
        Where every explanation starts: the model's expected output over the training data,
        in ``space``, plus the calibrator's intercept for the row's landmark when it has
        landmark intercepts (so it varies by landmark).
    base_probability : ndarray of shape (n_rows,)
        ``base_logit`` mapped through the calibrator: the base rate at the row's landmark
        that the explanation starts from.
    feature_contributions : ndarray of shape (n_rows, n_features)
        Signed contribution of each feature, in ``space``; columns follow ``feature_names``.
    group_contributions : ndarray of shape (n_rows, n_groups)
        Signed sums of ``feature_contributions`` over each group's columns; columns follow
        ``group_names``.
    feature_names, group_names : tuple of str
        Column labels of the two contribution matrices.
    logit : ndarray of shape (n_rows,)
        The model output in ``space``: ``base_logit + group_contributions.sum(1)`` (exact up to
        float64 rounding). With a sigmoid calibrator it is the calibrated log-odds and
        ``probability == 1 / (1 + exp(-logit))``.
    probability : ndarray of shape (n_rows,)
        Calibrated probability of dropout, the number to return to the caller.
    """

    space: str
    base_logit: np.ndarray
    base_probability: np.ndarray
    feature_contributions: np.ndarray
    group_contributions: np.ndarray
    feature_names: tuple[str, ...]
    group_names: tuple[str, ...]
    logit: np.ndarray
    probability: np.ndarray

    def __post_init__(self) -> None:
        for name in (
            "base_logit",
            "base_probability",
            "feature_contributions",
            "group_contributions",
            "logit",
            "probability",
        ):
            getattr(self, name).setflags(write=False)

    @property
    def n_rows(self) -> int:
        """Number of explained rows."""
        return int(self.logit.shape[0])


def tree_contributions(booster: xgb.Booster, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact TreeSHAP contributions in margin space.

    Parameters
    ----------
    booster : xgboost.Booster
        Trimmed to its best iteration (see :func:`models.booster.fit_booster`).
    X : ndarray of shape (n_rows, n_features)
        Features in the booster's column order, NaN for missing.

    Returns
    -------
    phi : ndarray of shape (n_rows, n_features), float64
        Contribution of each feature to the margin (log-odds).
    bias : ndarray of shape (n_rows,), float64
        The expected margin; ``phi.sum(1) + bias`` equals the margin up to float32 rounding.

    Notes
    -----
    The DMatrix is built with ``nthread=1``: by default it uses every core and leaves
    spinning threads behind, which cut serving throughput ~10x on 2 cores (perf-notes).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2 or X.shape[1] != booster.num_features():
        raise ValueError(f"X must have {booster.num_features()} columns, one per booster feature")
    # Column order is checked by shape here and by name in explain(); attaching names to the
    # DMatrix would cost ~0.1 ms per call for the same check.
    dmat = xgb.DMatrix(X, missing=np.nan, nthread=1)
    out = booster.predict(dmat, pred_contribs=True, validate_features=False)
    out = np.asarray(out, dtype=np.float64)
    return out[:, :-1], out[:, -1]


@dataclass(frozen=True, eq=False)
class Grouping:
    """Validated explanation grouping, built once and reused for every call to :func:`explain`.

    Attributes
    ----------
    feature_names : tuple of str
        Feature columns, in model order.
    group_names : tuple of str
        Groups, in output column order.
    matrix : ndarray of shape (n_features, n_groups)
        0/1 membership; each row has exactly one 1 (the groups partition the features).
    columns : tuple of ndarray
        Per group, the positions of its features (what the group sums add).
    """

    feature_names: tuple[str, ...]
    group_names: tuple[str, ...]
    matrix: np.ndarray
    columns: tuple[np.ndarray, ...]

    @classmethod
    def build(cls, groups: Mapping[str, np.ndarray], feature_names: Sequence[str]) -> Grouping:
        """Check that ``groups`` (group -> column positions) partitions ``feature_names``."""
        names = tuple(str(n) for n in feature_names)
        matrix, group_names = _group_matrix(groups, names)
        matrix.setflags(write=False)
        columns = tuple(np.flatnonzero(matrix[:, g]) for g in range(matrix.shape[1]))
        return cls(feature_names=names, group_names=group_names, matrix=matrix, columns=columns)


def _group_matrix(
    groups: Mapping[str, np.ndarray], feature_names: Sequence[str]
) -> tuple[np.ndarray, tuple[str, ...]]:
    """0/1 matrix (n_features, n_groups); the groups must partition the features."""
    n_features = len(feature_names)
    names = tuple(groups)
    if not names:
        raise ValueError("groups must not be empty")
    positions = [np.asarray(groups[name], dtype=np.intp).reshape(-1) for name in names]
    idx = np.concatenate(positions)
    if idx.size and (idx.min() < 0 or idx.max() >= n_features):
        j = next(
            j for j, p in enumerate(positions) if p.size and (p.min() < 0 or p.max() >= n_features)
        )
        raise ValueError(f"group {names[j]!r} has a column position outside 0..{n_features - 1}")
    counts = np.bincount(idx, minlength=n_features)
    if np.any(counts != 1):
        k = int(np.argmax(counts != 1))
        problem = "no group" if counts[k] == 0 else "more than one group"
        raise ValueError(
            f"feature {feature_names[k]!r} belongs to {problem}; "
            "groups must partition the features so contributions add up"
        )
    G = np.zeros((n_features, len(names)), dtype=np.float64)
    G[idx, np.repeat(np.arange(len(names)), [p.size for p in positions])] = 1.0
    return G, names


def _row_sums(values: np.ndarray) -> np.ndarray:
    """Each row's sum, adding its columns left to right.

    ``np.add.accumulate`` is sequential by definition; ``sum`` and ``@`` choose their order by
    the array's shape (pairwise, BLAS blocks), so a client's explanation would differ in the
    last bit alone and in a batch.
    """
    if values.shape[1] == 0:
        return np.zeros(values.shape[0])
    return np.add.accumulate(values, axis=1)[:, -1]


def _group_sums(contributions: np.ndarray, grouping: Grouping) -> np.ndarray:
    """Signed sums of each group's columns, ``(n_rows, n_groups)``, by :func:`_row_sums`."""
    out = np.empty((contributions.shape[0], len(grouping.columns)))
    for g, columns in enumerate(grouping.columns):
        out[:, g] = _row_sums(contributions[:, columns])
    return out


def explain(
    booster: xgb.Booster,
    calibrator_params: Mapping[str, Any] | MarginCalibrator,
    X: np.ndarray,
    *,
    feature_names: Sequence[str],
    groups: Mapping[str, np.ndarray] | Grouping,
    check_booster_names: bool = True,
    tables: PathTables | None = None,
) -> Explanation:
    """Explain calibrated dropout risk for each row of ``X``.

    Parameters
    ----------
    booster : xgboost.Booster
        Trimmed booster predicting the margin.
    calibrator_params : mapping or MarginCalibrator
        :meth:`MarginCalibrator.to_dict` output (or the fitted calibrator itself).
    X : ndarray of shape (n_rows, n_features)
        Features in ``feature_names`` order, NaN for missing.
    feature_names : sequence of str
        Column names; must equal the booster's stored names, in order, when it has them.
    groups : mapping of str to ndarray of int, or Grouping
        Explanation group -> positions of its columns in ``feature_names``. Every feature
        must be in exactly one group. Pass a :class:`Grouping` built once to skip the
        per-call check (it matters for one-row serving latency).
    check_booster_names : bool
        Compare ``feature_names`` with the booster's stored names. Reading them is a C call
        plus 148 string conversions (~0.1 ms); a caller that checked once at load time (the
        :class:`~models.scorer.Scorer`) passes False.
    tables : PathTables, optional
        The booster's TreeSHAP tables (:mod:`models.treeshap`, checked against it): the same
        values as ``pred_contribs`` up to its float32 rounding, by table lookups instead of a
        ``DMatrix`` and xgboost's recursion over every path. Without them xgboost computes
        the contributions.

    Returns
    -------
    Explanation
        Base, per-feature and per-group contributions, output and probability, with
        ``base_logit + group_contributions.sum(1) == logit`` exactly (float64 rounding).
    """
    names = (
        groups.feature_names
        if isinstance(groups, Grouping) and feature_names is groups.feature_names
        else tuple(str(n) for n in feature_names)
    )
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    if X.ndim != 2 or X.shape[1] != len(names):
        raise ValueError(f"X must have {len(names)} columns, one per feature name")
    if check_booster_names:
        booster_names = booster.feature_names
        if booster_names is not None and tuple(booster_names) != names:
            raise ValueError("feature_names do not match the booster's column order")
    if isinstance(groups, Grouping):
        if groups.feature_names != names:
            raise ValueError("the Grouping was built for a different feature list")
        grouping = groups
    else:
        grouping = Grouping.build(groups, names)
    params = (
        calibrator_params.to_dict()
        if isinstance(calibrator_params, MarginCalibrator)
        else calibrator_params
    )

    phi, bias = tree_contributions(booster, X) if tables is None else tables.contributions(X)
    method = params["method"]
    if method == "sigmoid":
        slope, intercept = float(params["slope"]), float(params["intercept"])
        contributions = slope * phi
        # The landmark intercept (if any) is part of each row's base, so the sum stays exact.
        col = landmark_column(params, names)
        offset = 0.0 if col is None else landmark_offset(params, X[:, col])
        base_logit = slope * bias + intercept + offset
        space = SPACE_CALIBRATED
    elif method == "isotonic":
        contributions = phi
        base_logit = bias
        space = SPACE_UNCALIBRATED
    else:
        raise ValueError("calibrator params: unknown method (expected 'sigmoid' or 'isotonic')")
    group_contributions = _group_sums(contributions, grouping)
    logit = base_logit + _row_sums(group_contributions)
    if method == "sigmoid":
        probability = expit(logit)
        base_probability = expit(base_logit)
    else:
        probability = calibrate_probability(logit, params)
        base_probability = calibrate_probability(base_logit, params)
    return Explanation(
        space=space,
        base_logit=base_logit,
        base_probability=base_probability,
        feature_contributions=contributions,
        group_contributions=group_contributions,
        feature_names=names,
        group_names=grouping.group_names,
        logit=logit,
        probability=probability,
    )


def _top(values: np.ndarray, labels: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """Up to k (label, signed value) pairs by decreasing |value|; ties keep column order."""
    if k < 0:
        raise ValueError("k must be >= 0")
    order = np.argsort(-np.abs(values), kind="stable")[:k]
    return [(labels[j], float(values[j])) for j in order]


def top_features(explanation: Explanation, i: int, k: int = 10) -> list[tuple[str, float]]:
    """The ``k`` features with the largest |contribution| for row ``i``, signed values."""
    return _top(explanation.feature_contributions[i], explanation.feature_names, k)


def top_groups(explanation: Explanation, i: int, k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` groups with the largest |contribution| for row ``i``, signed values."""
    return _top(explanation.group_contributions[i], explanation.group_names, k)


def global_importance(explanation: Explanation) -> pd.Series:
    """Mean |group contribution| over rows, per group, largest first.

    Absolute values are taken of each row's signed GROUP total (a magnitude summary for the
    report), never summed across a group's features.

    Returns
    -------
    pandas.Series
        Index: group names; values: mean absolute contribution in ``explanation.space`` units;
        name ``"mean_abs_contribution"``.
    """
    if explanation.n_rows == 0:
        values = np.full(len(explanation.group_names), np.nan)
    else:
        values = np.abs(explanation.group_contributions).mean(axis=0)
    series = pd.Series(values, index=list(explanation.group_names), name="mean_abs_contribution")
    return series.sort_values(ascending=False, kind="stable")
