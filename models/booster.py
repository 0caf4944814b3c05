"""Gradient-boosted dropout classifier: bounded random search, early stopping, one native booster.

The artefact is a plain :class:`xgboost.Booster` (native ``xgb.train`` API, not
``XGBClassifier``) trimmed to its best iteration, so that ``inplace_predict`` and
``pred_contribs`` see exactly the same trees without any ``iteration_range`` bookkeeping.

Why the search is bounded and shallow: exact TreeSHAP costs O(trees x leaves x depth^2) per
row (Lundberg et al. 2020, "From local explanations to global understanding with explainable
AI for trees", Algorithm 1), and the service explains every prediction. Depth is capped at 5,
boosting rounds at 600, and among trials whose validation log-loss is within
``SearchSpace.tie_tolerance`` of the best the cheapest to explain is kept. The service reads
the same values from tables (:mod:`models.treeshap`: O(leaves x depth) per row, tables of
leaves x 2**depth x depth numbers); the depth cap keeps those small too, and the budget still
bounds xgboost's own TreeSHAP, which explains any model the tables cannot.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xgboost as xgb

logger = logging.getLogger(__name__)

#: Threads used while fitting large problems. The machine has 2 shared cores (perf-notes).
FIT_NTHREAD = 2
#: Below this many training rows one thread is faster: per-tree synchronisation dominates
#: (measured 0.09 s vs 0.44 s for 60 trees on 1,000 rows with the other core busy).
SINGLE_THREAD_ROWS = 20_000


@dataclass(frozen=True)
class SearchSpace:
    """Bounds of the random hyperparameter search (inclusive).

    ``eta``, ``min_child_weight`` and ``reg_lambda`` are sampled log-uniformly, the others
    uniformly; ``max_depth`` is an integer. ``max_rounds`` caps boosting rounds per trial and
    ``early_stopping_rounds`` stops a trial when validation log-loss has not improved for that
    many rounds. ``tie_tolerance`` (log-loss units, nats per row): among trials within it of
    the best validation log-loss, the one with the lowest TreeSHAP cost proxy is chosen.

    ``max_shap_cost`` is a hard explanation budget in :func:`shap_cost` units: a trial of
    depth d may grow at most ``max_shap_cost // (2**d * d**2)`` trees (and ``max_rounds``), so
    deeper trees get fewer rounds (default: 600 at depth 2-3, 187 at depth 4, 60 at depth 5).
    Exact TreeSHAP was measured at ~4 ns per unit (perf-notes: 300 trees of depth 4 = 76,800
    units in ~0.32 ms per row), so 48,000 keeps explanation near 0.2 ms per row, the share of
    the 5,000 clients/s batch target it can take. ``None`` disables the budget.
    """

    max_depth: tuple[int, int] = (2, 5)
    eta: tuple[float, float] = (0.03, 0.2)
    min_child_weight: tuple[float, float] = (1.0, 20.0)
    subsample: tuple[float, float] = (0.6, 1.0)
    colsample_bytree: tuple[float, float] = (0.5, 1.0)
    reg_lambda: tuple[float, float] = (0.5, 10.0)
    max_rounds: int = 600
    early_stopping_rounds: int = 30
    max_bin: int = 256
    tie_tolerance: float = 0.0005
    max_shap_cost: int | None = 48_000

    def __post_init__(self) -> None:
        for name in ("max_depth", "eta", "min_child_weight", "subsample", "colsample_bytree"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"SearchSpace.{name} must satisfy 0 < low <= high")
        low, high = self.reg_lambda
        if not 0 <= low <= high:
            raise ValueError("SearchSpace.reg_lambda must satisfy 0 <= low <= high")
        if self.max_depth[1] > 8:
            raise ValueError("SearchSpace.max_depth above 8 makes exact TreeSHAP too slow to serve")
        if self.subsample[1] > 1 or self.colsample_bytree[1] > 1:
            raise ValueError("SearchSpace.subsample and colsample_bytree must be at most 1")
        if self.max_rounds < 1 or self.early_stopping_rounds < 1:
            raise ValueError("SearchSpace.max_rounds and early_stopping_rounds must be >= 1")
        if self.tie_tolerance < 0:
            raise ValueError("SearchSpace.tie_tolerance must be >= 0")
        if self.max_shap_cost is not None and self.rounds_for(self.max_depth[1]) < 10:
            raise ValueError(
                "SearchSpace.max_shap_cost allows fewer than 10 trees at the largest max_depth"
            )

    def rounds_for(self, max_depth: int) -> int:
        """Boosting-round cap for trees of this depth under ``max_rounds`` and the budget."""
        if self.max_shap_cost is None:
            return self.max_rounds
        return max(1, min(self.max_rounds, self.max_shap_cost // shap_cost(1, max_depth)))

    def default_trial(self) -> dict[str, float | int]:
        """A conventional starting point, clipped into the bounds: always trial 0."""
        centre: dict[str, float | int] = {
            "max_depth": 3,
            "eta": 0.1,
            "min_child_weight": 5.0,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "lambda": 1.0,
        }
        bounds = self._bounds()
        return {k: type(v)(min(max(v, bounds[k][0]), bounds[k][1])) for k, v in centre.items()}

    def sample(self, rng: np.random.Generator) -> dict[str, float | int]:
        """One random draw from the space (xgboost parameter names)."""
        low, high = self.max_depth
        out: dict[str, float | int] = {"max_depth": int(rng.integers(low, high + 1))}
        for key, (lo, hi) in self._bounds().items():
            if key == "max_depth":
                continue
            if key in ("eta", "min_child_weight", "lambda") and lo > 0:
                out[key] = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            else:
                out[key] = float(rng.uniform(lo, hi))
        return out

    def _bounds(self) -> dict[str, tuple[float, float]]:
        """Bounds keyed by xgboost parameter name."""
        return {
            "max_depth": (float(self.max_depth[0]), float(self.max_depth[1])),
            "eta": self.eta,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
        }


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit_booster`.

    Attributes
    ----------
    booster : xgboost.Booster
        Trimmed to ``best_iteration + 1`` trees; predicts margins (log-odds of dropout).
    params : dict
        Full xgboost parameters of the chosen trial.
    best_iteration : int
        Zero-based index of the last kept boosting round (``n_trees - 1``).
    trials : tuple of dict
        One row per trial: ``trial``, the sampled parameters, ``best_iteration``,
        ``n_trees``, ``round_cap`` (rounds allowed by ``max_rounds`` and ``max_shap_cost``;
        ``n_trees == round_cap`` means the cap, not early stopping, ended the trial),
        ``valid_logloss`` (nats per row at the best iteration),
        ``shap_cost`` (n_trees x 2**max_depth x max_depth**2, a TreeSHAP cost proxy),
        ``fit_seconds`` and ``chosen``.
    chosen_trial : int
        Index into ``trials`` of the kept model.
    valid_logloss : float
        Validation log-loss of the kept model.
    feature_names : tuple of str
        Column order the booster expects.
    """

    booster: xgb.Booster
    params: dict[str, Any]
    best_iteration: int
    trials: tuple[dict[str, Any], ...]
    chosen_trial: int
    valid_logloss: float
    feature_names: tuple[str, ...] = field(default=())


def _check_xy(
    X: np.ndarray, y: np.ndarray, n_features: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (X, y) pair; messages name rows and columns, never values."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"{name}: X must be 2-dimensional (rows x features)")
    if X.shape[1] != n_features:
        raise ValueError(
            f"{name}: X has {X.shape[1]} columns but {n_features} feature names were given"
        )
    if y.shape != (X.shape[0],):
        raise ValueError(f"{name}: y must be 1-dimensional with one label per row of X")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"{name}: label at row {int(np.argmax(bad))} is not 0 or 1")
    if np.unique(y).size < 2:
        raise ValueError(f"{name}: y must contain both classes (0 and 1)")
    inf = np.isinf(X)
    if inf.any():
        row, col = np.argwhere(inf)[0]
        raise ValueError(f"{name}: row {int(row)}, column {int(col)} is infinite (use NaN)")
    return X, y.astype(np.float32)


def shap_cost(n_trees: int, max_depth: int) -> int:
    """TreeSHAP cost proxy: trees x max leaves x depth^2 (Lundberg et al. 2020)."""
    return int(n_trees * (2**max_depth) * max_depth**2)


def fit_booster(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    feature_names: Sequence[str],
    search: SearchSpace | None = None,
    n_trials: int = 12,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    sample_weight: np.ndarray | None = None,
    valid_sample_weight: np.ndarray | None = None,
    nthread: int | None = None,
    time_budget: float | None = None,
) -> FitResult:
    """Fit an XGBoost dropout classifier with a bounded random search and early stopping.

    Parameters
    ----------
    X_train, X_valid : ndarray of shape (n_rows, n_features)
        Feature matrices in ``feature_names`` order; NaN marks a missing value (features are
        NaN by design, e.g. a slope before the third rated session). Infinite values are
        rejected.
    y_train, y_valid : ndarray of shape (n_rows,)
        1 = dropout, 0 = completed. Both classes must be present in each.
    feature_names : sequence of str
        Column names, stored on the booster (and checked by ``pred_contribs``).
    search : SearchSpace, optional
        Bounds of the search; ``None`` uses :class:`SearchSpace` defaults.
    n_trials : int, default 12
        Trials to run. Trial 0 is always :meth:`SearchSpace.default_trial`, the rest random.
    seed : int, default 0
        Seeds both the parameter draws and xgboost's row/column subsampling.
    progress : callable(done, total), optional
        Called after each trial, e.g. to advance a progress bar.
    sample_weight, valid_sample_weight : ndarray of shape (n_rows,), optional
        Row weights for the training and validation sets.
    nthread : int, optional
        Fitting threads; default 1 below :data:`SINGLE_THREAD_ROWS` training rows, else
        :data:`FIT_NTHREAD`. On 2 shared cores a second thread was 10x SLOWER while the
        other core was busy (198 vs 19 ms per tree, 100k rows x 40 features) and no faster
        under ``OMP_NUM_THREADS=1``, which caps it; pass 1 on a busy machine.
    time_budget : float, optional
        Seconds after which no new trial starts (trial 0 always runs). Trials cut by the
        budget are simply absent from ``trials``; with a budget, the result depends on
        machine speed.

    Returns
    -------
    FitResult
        The trimmed booster, its parameters and the table of trials.

    Notes
    -----
    The validation set drives both early stopping and model choice, so its log-loss is
    optimistic; the caller must keep a separate calibration split and test split (all split
    by client, so that no client's landmark rows straddle two sets).
    """
    if n_trials < 1:
        raise ValueError("n_trials must be >= 1")
    space = search if search is not None else SearchSpace()
    names = [str(n) for n in feature_names]
    if len(set(names)) != len(names):
        raise ValueError("feature_names must be unique")
    X_tr, y_tr = _check_xy(X_train, y_train, len(names), "training set")
    X_va, y_va = _check_xy(X_valid, y_valid, len(names), "validation set")
    for weights, rows, label in (
        (sample_weight, X_tr.shape[0], "sample_weight"),
        (valid_sample_weight, X_va.shape[0], "valid_sample_weight"),
    ):
        if weights is not None and np.shape(weights) != (rows,):
            raise ValueError(f"{label} must have one weight per row")

    threads = nthread or (1 if X_tr.shape[0] < SINGLE_THREAD_ROWS else FIT_NTHREAD)
    # QuantileDMatrix bins once and is reused by every trial (hist needs nothing else).
    dtrain = xgb.QuantileDMatrix(
        X_tr,
        label=y_tr,
        weight=sample_weight,
        missing=np.nan,
        feature_names=names,
        max_bin=space.max_bin,
        nthread=threads,
    )
    dvalid = xgb.QuantileDMatrix(
        X_va,
        label=y_va,
        weight=valid_sample_weight,
        missing=np.nan,
        feature_names=names,
        ref=dtrain,
        nthread=threads,
    )
    started_all = time.perf_counter()
    fixed: dict[str, Any] = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "max_bin": space.max_bin,
        "nthread": threads,
        "seed": seed,
        "verbosity": 0,
    }

    rng = np.random.default_rng(seed)
    trials: list[dict[str, Any]] = []
    boosters: list[xgb.Booster] = []
    for trial in range(n_trials):
        sampled = space.default_trial() if trial == 0 else space.sample(rng)
        if (
            trial > 0
            and time_budget is not None
            and time.perf_counter() - started_all > time_budget
        ):
            logger.info("search stopped after %d of %d trials: time budget spent", trial, n_trials)
            break
        params = {**fixed, **sampled}
        rounds = space.rounds_for(int(sampled["max_depth"]))
        started = time.perf_counter()
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=rounds,
            evals=[(dvalid, "valid")],
            early_stopping_rounds=space.early_stopping_rounds,
            verbose_eval=False,
        )
        best = int(booster.best_iteration)
        loss = float(booster.best_score)
        trials.append(
            {
                "trial": trial,
                **sampled,
                "best_iteration": best,
                "n_trees": best + 1,
                "round_cap": rounds,
                "valid_logloss": loss,
                "shap_cost": shap_cost(best + 1, int(sampled["max_depth"])),
                "fit_seconds": time.perf_counter() - started,
                "chosen": False,
            }
        )
        boosters.append(booster)
        logger.info(
            "trial %d/%d: validation log-loss %.5f with %d trees of depth %d",
            trial + 1,
            n_trials,
            loss,
            best + 1,
            sampled["max_depth"],
        )
        if progress is not None:
            progress(trial + 1, n_trials)

    return choose_trial(trials, boosters, fixed, space, names)


def choose_trial(
    trials: list[dict[str, Any]],
    boosters: Sequence[xgb.Booster],
    fixed: dict[str, Any],
    space: SearchSpace,
    feature_names: Sequence[str],
) -> FitResult:
    """The search's result, for both engines: among ``trials`` whose ``valid_logloss`` is within
    ``space.tie_tolerance`` of the best, the lowest ``shap_cost`` (then the lower log-loss).

    ``trials`` are the rows of :attr:`FitResult.trials` (the chosen one gets ``chosen=True``),
    ``boosters`` their untrimmed boosters (same order), ``fixed`` the parameters every trial
    shared. The chosen booster is trimmed to ``best_iteration + 1`` trees.
    """
    best_loss = min(t["valid_logloss"] for t in trials)
    near_best = [t for t in trials if t["valid_logloss"] <= best_loss + space.tie_tolerance]
    chosen = int(min(near_best, key=lambda t: (t["shap_cost"], t["valid_logloss"]))["trial"])
    trials[chosen]["chosen"] = True
    best_iteration = int(trials[chosen]["best_iteration"])
    # Slicing drops best_iteration/best_score, so every predict uses all remaining trees.
    booster = boosters[chosen][: best_iteration + 1]
    chosen_params = {**fixed, **{k: trials[chosen][k] for k in space.default_trial()}}
    return FitResult(
        booster=booster,
        params=chosen_params,
        best_iteration=best_iteration,
        trials=tuple(trials),
        chosen_trial=chosen,
        valid_logloss=float(trials[chosen]["valid_logloss"]),
        feature_names=tuple(feature_names),
    )


def margin(booster: xgb.Booster, X: np.ndarray) -> np.ndarray:
    """Raw margin (uncalibrated log-odds of dropout) for each row.

    Parameters
    ----------
    booster : xgboost.Booster
        A booster from :func:`fit_booster` (already trimmed to its best iteration).
    X : ndarray of shape (n_rows, n_features)
        Features in the booster's column order, NaN for missing.

    Returns
    -------
    ndarray of shape (n_rows,), float64
        Margins in log-odds units.

    Notes
    -----
    ``inplace_predict`` on a numpy array skips DMatrix construction (~0.1 ms per call saved,
    perf-notes). For serving, call ``booster.set_param({"nthread": 1})`` once after loading
    and run with ``OMP_NUM_THREADS=1``; scale with processes, not threads.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim == 1:
        X = X.reshape(1, -1)
    out = booster.inplace_predict(X, predict_type="margin", missing=np.nan)
    return np.asarray(out, dtype=np.float64).reshape(-1)
