"""Landmark intercepts of the margin calibrator: ``slope * margin + offset(landmark)``.

Landmark intercepts (format version 2): the booster's margin is biased by landmark even where
it is calibrated pooled (issue 19: +0.1 to +0.2 log-odds at landmarks 1-3, -0.1 to -0.2 beyond
10, on 20k held-out clients, with a pooled Platt map fitted on those very clients), and a
pooled map cannot remove that. Given the landmark of each row, the sigmoid becomes
``slope * margin + intercept + offset(landmark)``, ``offset`` piecewise linear between
:data:`LANDMARK_KNOTS` (constant beyond the last knot). It is still affine in the margin for a
given row, so the offset joins that row's explanation base and the explanation stays exact.
The landmark is read from the feature column named by ``landmark_feature``.

Smoothness of the landmark intercepts: fitted near-unpenalised, each knot's intercept follows
its own rows, and the late knots (few clients, IPCW weights up to 20) wander with the training
file's noise. The fit therefore minimises the weighted log-loss plus
``penalty / 2 * sum((change of slope of the offset at each inner knot) ** 2)``, a P-spline style
second-difference penalty (Eilers & Marx 1996) scaled for the uneven knot spacing. It leaves a
straight line in the landmark unpenalised, so a strong penalty shrinks the offset towards a
linear trend, never towards a constant the early landmarks contradict. ``penalty`` is chosen
among :data:`LANDMARK_PENALTIES` by the weighted log-loss of held-out clients in grouped folds
(``cv`` folds, three shuffles seeded by ``random_state``): the data decide how much the offset
may bend. With thousands of rows per knot at landmarks 1-10 the chosen penalty barely moves
those knots; it matters at the sparse late ones.

:class:`models.calibration.MarginCalibrator` fits them (:func:`fit_landmark_sigmoid`) and the
scorer and the explanation apply them (:func:`landmark_offset`, :func:`landmark_column`); this
module holds the basis, the penalised fit and the choice of its penalty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.model_selection import GroupKFold, KFold

#: Knots of the piecewise-linear landmark intercept: one per landmark where the dropout hazard
#: changes fastest (1-8), sparser after, where fewer clients remain.
LANDMARK_KNOTS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20)
#: Inverse L2 strength on every coefficient of the landmark fit, so that a knot with few rows
#: (or one class only) stays finite; negligible beside the smoothness penalty.
_LANDMARK_C = 1e4
#: Candidate strengths of the landmark-intercept smoothness penalty, in units of (row-weight
#: normalised) log-loss: 0 (knots free) and 1 to 1000 by half decades. Cross-validation picks
#: one. Why no stronger: beyond ~1000 the penalty outweighs the information a knot's rows carry
#: even at landmarks 8-10 of a 5,000-client file (n p (1 - p), a few hundred), so it, not the
#: data, sets the offset at every knot: a straight line, which the margin's measured bias by
#: landmark (bending, issue 19) contradicts. Measured on the bench's date-censored cohort:
#: penalties of 1e4-1e6 moved CITL at landmarks 5-7 from -0.07 to -0.13, while held-out
#: log-loss differed by 5e-5, within the noise of one fold split.
LANDMARK_PENALTIES = (0.0, *(float(v) for v in np.logspace(0.0, 3.0, 7)))
#: Shuffles of the client folds whose held-out losses are averaged: one split's noise is of the
#: size of the differences between penalties.
LANDMARK_CV_REPEATS = 3


def landmark_offset(params: Mapping[str, Any], landmark: np.ndarray | None) -> np.ndarray | float:
    """Per-row landmark intercept on the log-odds scale (0.0 for calibrators without one).

    Raises ``ValueError`` when the calibrator has landmark intercepts and ``landmark`` is None.
    """
    knots = params.get("landmark_knots")
    if not knots:
        return 0.0
    if landmark is None:
        raise ValueError("this calibrator has landmark intercepts: pass each row's landmark")
    k = np.asarray(landmark, dtype=np.float64).reshape(-1)
    # np.interp is constant beyond the end knots; a missing landmark gets the first knot's.
    return np.interp(np.nan_to_num(k, nan=knots[0]), knots, params["landmark_intercepts"])


def landmark_column(params: Mapping[str, Any], feature_names: tuple[str, ...]) -> int | None:
    """Position of the calibrator's landmark feature in ``feature_names`` (None if unused)."""
    name = params.get("landmark_feature")
    if not params.get("landmark_knots") or name is None:
        return None
    if name not in feature_names:
        raise ValueError(f"the calibrator reads feature {name!r}, which the model does not have")
    return feature_names.index(name)


def _landmark_basis(landmark: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Hat functions of the piecewise-linear interpolation between ``knots``, (n_rows, n_knots)."""
    k = np.clip(np.nan_to_num(landmark, nan=knots[0]), knots[0], knots[-1])
    j = np.clip(np.searchsorted(knots, k, side="right") - 1, 0, max(knots.size - 2, 0))
    basis = np.zeros((k.size, knots.size))
    if knots.size == 1:
        basis[:, 0] = 1.0
        return basis
    t = (k - knots[j]) / (knots[j + 1] - knots[j])
    rows = np.arange(k.size)
    basis[rows, j] = 1.0 - t
    basis[rows, j + 1] += t
    return basis


def _slope_changes(knots: np.ndarray) -> np.ndarray:
    """(n_knots - 2, n_knots): the change of slope of the piecewise-linear offset at each inner
    knot; zero exactly on straight lines, second differences when knots are 1 apart."""
    d = np.zeros((max(knots.size - 2, 0), knots.size))
    h = np.diff(knots)
    for j in range(d.shape[0]):
        d[j, j : j + 3] = (1.0 / h[j], -1.0 / h[j] - 1.0 / h[j + 1], 1.0 / h[j + 1])
    return d


def _penalised_logistic(
    design: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    penalty_matrix: np.ndarray,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Coefficients minimising sum(w * log-loss) + theta' P theta / 2, by damped Newton steps.

    The objective is convex and P carries a small ridge, so the minimum is unique and finite
    (``start`` only saves iterations).
    """
    theta = np.zeros(design.shape[1]) if start is None else start.copy()

    def objective(t: np.ndarray, eta: np.ndarray) -> float:
        return float(np.sum(w * (np.logaddexp(0.0, eta) - y * eta)) + 0.5 * t @ penalty_matrix @ t)

    eta = design @ theta
    current = objective(theta, eta)
    for _ in range(100):
        p = expit(eta)
        grad = design.T @ (w * (p - y)) + penalty_matrix @ theta
        hess = (design * (w * p * (1.0 - p))[:, None]).T @ design + penalty_matrix
        step = np.linalg.solve(hess, grad)
        if np.max(np.abs(step)) < 1e-9:
            break
        shrink, moved = 1.0, design @ step
        candidate = objective(theta - step, eta - moved)
        # Rounding may leave a converged step a hair uphill: tolerate that, halve real ascents.
        while candidate > current + 1e-12 * abs(current) and shrink > 1e-6:
            shrink /= 2.0
            candidate = objective(theta - shrink * step, eta - shrink * moved)
        theta, eta, current = theta - shrink * step, eta - shrink * moved, candidate
    return theta


def _landmark_design(
    m: np.ndarray, landmark: np.ndarray, knots: np.ndarray, penalty: float
) -> tuple[np.ndarray, np.ndarray]:
    """The design [margin, hat basis] and its penalty matrix (smoothness plus a small ridge)."""
    design = np.column_stack([m, _landmark_basis(landmark, knots)])
    d = _slope_changes(knots)
    matrix = np.eye(design.shape[1]) / _LANDMARK_C
    matrix[1:, 1:] += penalty * d.T @ d
    return design, matrix


def _choose_landmark_penalty(
    m: np.ndarray,
    y: np.ndarray,
    landmark: np.ndarray,
    w: np.ndarray,
    knots: np.ndarray,
    groups: np.ndarray | None,
    n_folds: int,
    random_state: int | None,
) -> tuple[float, dict[str, Any]]:
    """The penalty of :data:`LANDMARK_PENALTIES` with the lowest held-out weighted log-loss,
    averaged over :data:`LANDMARK_CV_REPEATS` shuffles of ``n_folds`` folds.

    Folds are by client when ``groups`` is given (a client's landmark rows share its outcome,
    so row folds would judge a client on itself). Ties go to the stronger penalty.
    """
    n_groups = np.unique(groups).size if groups is not None else m.size
    if n_folds < 2 or n_groups < n_folds or knots.size < 3:
        return LANDMARK_PENALTIES[0], {}
    # Integer codes: GroupKFold's membership tests on object ids cost seconds at 40k rows.
    codes = None if groups is None else np.unique(groups, return_inverse=True)[1]
    seeds = np.random.RandomState(random_state).randint(0, 2**31 - 1, LANDMARK_CV_REPEATS)
    splits = [
        split
        for seed in seeds
        for split in (
            GroupKFold(n_splits=n_folds, shuffle=True, random_state=int(seed))
            if groups is not None
            else KFold(n_splits=n_folds, shuffle=True, random_state=int(seed))
        ).split(m, y, codes)
    ]
    losses = np.zeros(len(LANDMARK_PENALTIES))
    for train, test in splits:
        theta = None
        design = _landmark_design(m[train], landmark[train], knots, 0.0)[0]
        held_out = _landmark_design(m[test], landmark[test], knots, 0.0)[0]
        for i, penalty in enumerate(LANDMARK_PENALTIES):
            matrix = _landmark_design(m[:0], landmark[:0], knots, penalty)[1]
            theta = _penalised_logistic(design, y[train], w[train], matrix, start=theta)
            eta = held_out @ theta
            losses[i] += np.sum(w[test] * (np.logaddexp(0.0, eta) - y[test] * eta))
    losses /= LANDMARK_CV_REPEATS * np.sum(w)
    best = max(i for i in range(losses.size) if losses[i] <= losses.min() + 1e-12)
    return LANDMARK_PENALTIES[best], {
        "landmark_penalty": LANDMARK_PENALTIES[best],
        "landmark_penalty_log_loss": {
            f"{v:g}": float(x) for v, x in zip(LANDMARK_PENALTIES, losses, strict=True)
        },
        "n_folds": n_folds,
    }


def fit_landmark_sigmoid(
    m: np.ndarray,
    y: np.ndarray,
    landmark: np.ndarray,
    w: np.ndarray | None,
    *,
    penalty: float | None = None,
    groups: np.ndarray | None = None,
    n_folds: int = 5,
    random_state: int | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Slope and smooth landmark intercepts by one penalised logistic fit on [margin, hat basis].

    The hat functions sum to 1 on every row, so they carry the intercept; knots past the
    largest landmark seen are dropped (nothing to fit them on). ``penalty`` None: chosen by
    cross-validation (:func:`_choose_landmark_penalty`). Returns the plain parameters and the
    cross-validation record ({} when the penalty was given).
    """
    top = float(np.nanmax(landmark)) if np.isfinite(landmark).any() else 1.0
    knots = np.array([k for k in LANDMARK_KNOTS if k <= max(top, LANDMARK_KNOTS[0])], float)
    # Weights normalised to mean 1, so a penalty means the same whatever their scale.
    ww = np.ones_like(m) if w is None else w / np.mean(w)
    record: dict[str, Any] = {}
    if penalty is None:
        penalty, record = _choose_landmark_penalty(
            m, y, landmark, ww, knots, groups, n_folds, random_state
        )
    design, matrix = _landmark_design(m, landmark, knots, penalty)
    theta = _penalised_logistic(design, y, ww, matrix)
    slope, intercepts = float(theta[0]), theta[1:]
    params = {
        "method": "sigmoid",
        "a": -slope,
        "b": 0.0,
        "slope": slope,
        "intercept": 0.0,
        "landmark_knots": [float(v) for v in knots],
        "landmark_intercepts": [float(v) for v in intercepts],
    }
    return params, record
