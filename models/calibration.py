"""Calibration of the booster's margin: Platt scaling on the log-odds, or isotonic regression.

Both maps are fitted with scikit-learn's own tools: the margin is wrapped as the
``decision_function`` of a fitted identity classifier inside
``CalibratedClassifierCV(FrozenEstimator(...))``, which is the documented way to calibrate a
pre-fitted model since scikit-learn 1.6 (the ``cv="prefit"`` form is deprecated). The fitted
map is then reduced to plain numbers (:meth:`MarginCalibrator.to_dict`), so the model artefact
holds JSON rather than a pickle of scikit-learn objects, and the scorer applies it with numpy
only (:func:`calibrate_logit`).

Why sigmoid is preferred: calibrated log-odds = slope * margin + intercept is affine, so the
booster's exact TreeSHAP contributions rescale by ``slope`` and still add up, with the base,
to the log-odds of the returned probability. Isotonic regression is monotone but not affine;
its explanation stays in the uncalibrated margin and is labelled so.

Landmark intercepts (format version 2, :mod:`models.landmark_intercepts`): given the landmark
of each row, the sigmoid becomes ``slope * margin + offset(landmark)``, smooth and piecewise
linear in the landmark, with its smoothness chosen by client-fold cross-validation. It is still
affine in the margin for a given row, so the offset joins that row's explanation base and the
explanation stays exact.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from models.landmark_intercepts import (
    LANDMARK_KNOTS,
    LANDMARK_PENALTIES,
    fit_landmark_sigmoid,
    landmark_column,
    landmark_offset,
)

__all__ = [
    "EPS",
    "LANDMARK_KNOTS",
    "LANDMARK_PENALTIES",
    "SPACE_CALIBRATED",
    "SPACE_UNCALIBRATED",
    "MarginCalibrator",
    "calibrate_logit",
    "calibrate_probability",
    "landmark_column",
    "landmark_offset",
]

logger = logging.getLogger(__name__)

#: Label of the explanation space when the calibrator is a sigmoid on the margin.
SPACE_CALIBRATED = "calibrated log-odds"
#: Label of the explanation space when the calibrator is isotonic.
SPACE_UNCALIBRATED = "uncalibrated log-odds (monotone in the returned probability)"

#: Isotonic is chosen by ``method="auto"`` only if its cross-validated Brier score is lower
#: than sigmoid's by more than this (and its log-loss is not worse): giving up an exact
#: explanation in calibrated space must buy a real gain. 0.0005 is about a tenth of the
#: fold-to-fold standard deviation of Brier at a few thousand calibration rows.
ISOTONIC_MIN_BRIER_GAIN = 0.0005

#: Isotonic probabilities are clipped into [EPS, 1 - EPS] so log-odds and log-loss are finite.
EPS = 1e-6

_FORMAT = "alliance-risk/margin-calibrator"
#: Version 2 adds the landmark intercepts; version 1 artefacts (no landmark terms) still load.
_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


class _MarginAsDecision(ClassifierMixin, BaseEstimator):
    """Identity classifier: its decision_function is column 0 of X (the margin)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> _MarginAsDecision:
        self.classes_ = np.array([0, 1])
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)[:, 0]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)


def _fit_sklearn(
    method: Literal["sigmoid", "isotonic"],
    m: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None,
) -> dict[str, Any]:
    """Fit one calibration map with CalibratedClassifierCV and return its plain parameters."""
    frozen = FrozenEstimator(_MarginAsDecision().fit(m[:, None], y))
    # A frozen estimator is never refitted, so the split only routes every row once through
    # decision_function; one (all, all) split skips the per-fold class-count check.
    rows = np.arange(m.shape[0])
    cal = CalibratedClassifierCV(frozen, method=method, cv=[(rows, rows)])
    cal.fit(m[:, None], y, sample_weight=sample_weight)
    fitted = cal.calibrated_classifiers_[0].calibrators[0]
    if method == "sigmoid":
        # scikit-learn's convention: p = 1 / (1 + exp(a * f + b)), so log-odds = -a f - b.
        a, b = float(fitted.a_), float(fitted.b_)
        return {"method": "sigmoid", "a": a, "b": b, "slope": -a, "intercept": -b}
    return {
        "method": "isotonic",
        "x_thresholds": [float(v) for v in fitted.X_thresholds_],
        "y_thresholds": [float(v) for v in fitted.y_thresholds_],
    }


def calibrate_probability(
    margin: np.ndarray, params: Mapping[str, Any], landmark: np.ndarray | None = None
) -> np.ndarray:
    """Calibrated probability of dropout from margins, numpy only (the scorer's fast path).

    Parameters
    ----------
    margin : ndarray of shape (n_rows,)
        Booster margins (uncalibrated log-odds).
    params : mapping
        :meth:`MarginCalibrator.to_dict` output.
    landmark : ndarray of shape (n_rows,), optional
        Each row's landmark; required when the calibrator has landmark intercepts.

    Returns
    -------
    ndarray of shape (n_rows,)
        Probabilities in [0, 1]; isotonic ones clipped into [1e-6, 1 - 1e-6].
    """
    m = np.asarray(margin, dtype=np.float64)
    method = params["method"]
    if method == "sigmoid":
        return expit(params["slope"] * m + params["intercept"] + landmark_offset(params, landmark))
    if method == "isotonic":
        # np.interp clips outside the thresholds, as IsotonicRegression(out_of_bounds="clip").
        p = np.interp(m, params["x_thresholds"], params["y_thresholds"])
        return np.clip(p, EPS, 1.0 - EPS)
    raise ValueError("calibrator params: unknown method (expected 'sigmoid' or 'isotonic')")


def calibrate_logit(
    margin: np.ndarray, params: Mapping[str, Any], landmark: np.ndarray | None = None
) -> np.ndarray:
    """Calibrated log-odds of dropout from margins, numpy only (the scorer's fast path).

    For sigmoid this is ``slope * margin + intercept (+ landmark offset)`` exactly; for
    isotonic it is the logit of the clipped isotonic probability.

    Parameters
    ----------
    margin : ndarray of shape (n_rows,)
        Booster margins (uncalibrated log-odds).
    params : mapping
        :meth:`MarginCalibrator.to_dict` output.

    Returns
    -------
    ndarray of shape (n_rows,)
        Log-odds, finite.
    """
    if params["method"] == "sigmoid":
        m = np.asarray(margin, dtype=np.float64)
        offset = landmark_offset(params, landmark)
        return np.asarray(params["slope"] * m + params["intercept"] + offset, dtype=np.float64)
    p = calibrate_probability(margin, params)
    return np.log(p) - np.log1p(-p)


def _brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1.0 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


class MarginCalibrator(BaseEstimator):
    """Map booster margins to calibrated probabilities (scikit-learn estimator conventions).

    Parameters
    ----------
    method : {"auto", "sigmoid", "isotonic"}, default "auto"
        ``"sigmoid"``: Platt scaling on the margin (Platt 1999), calibrated log-odds =
        ``slope_ * margin + intercept_``. ``"isotonic"``: isotonic regression on the margin
        (Zadrozny & Elkan 2002). ``"auto"``: sigmoid unless isotonic's cross-validated Brier
        score is lower by more than :data:`ISOTONIC_MIN_BRIER_GAIN` and its log-loss is not
        higher.
    cv : int, default 5
        Folds for the cross-validated comparison (stratified; grouped when ``groups`` is given
        to :meth:`fit`). Both candidates are always scored when the data allow it; ``cv < 2``
        skips the comparison (then ``"auto"`` means sigmoid).
    random_state : int or None, default None
        Seeds the fold shuffling.
    landmark_feature : str or None, default None
        Name of the feature column holding the landmark, recorded for the scorer. When
        :meth:`fit` is given each row's landmark, the map is a sigmoid with landmark intercepts
        (see the module docstring); ``"auto"`` then means sigmoid, since isotonic has no such
        terms and the per-landmark bias matters more than isotonic's small Brier gain.
    landmark_penalty : float or "cv", default "cv"
        Strength of the smoothness penalty on the landmark intercepts (module docstring);
        ``"cv"`` chooses it among :data:`LANDMARK_PENALTIES` in ``cv`` folds by client
        (``groups``), shuffled with ``random_state``.

    Attributes
    ----------
    method_ : str
        ``"sigmoid"`` or ``"isotonic"``.
    a_, b_ : float
        Sigmoid only: scikit-learn's parameters, p = 1 / (1 + exp(a_ * margin + b_)).
    slope_, intercept_ : float
        Sigmoid only: calibrated log-odds = slope_ * margin + intercept_ (slope_ = -a_), plus
        the landmark intercept when there is one.
    landmark_knots_, landmark_intercepts_ : tuple of float
        Sigmoid with landmarks only: the piecewise-linear landmark intercept; empty otherwise.
    x_thresholds_, y_thresholds_ : ndarray
        Isotonic only: the piecewise-linear map from margin to probability.
    cv_scores_ : dict
        ``{"sigmoid": {"brier": .., "log_loss": ..}, "isotonic": {...}, "n_folds": k}``,
        mean over held-out folds; empty if there were too few rows of a class to cross-validate.
        With landmark intercepts: ``{"landmark_penalty": chosen, "landmark_penalty_log_loss":
        {penalty: held-out weighted log-loss}, "n_folds": k}`` (empty if the penalty was given).
    explanation_space_ : str
        Label of the space in which explanations add up exactly (:data:`SPACE_CALIBRATED` or
        :data:`SPACE_UNCALIBRATED`).
    n_samples_ : int
        Rows the final map was fitted on.
    """

    def __init__(
        self,
        method: Literal["auto", "sigmoid", "isotonic"] = "auto",
        cv: int = 5,
        random_state: int | None = None,
        landmark_feature: str | None = None,
        landmark_penalty: float | Literal["cv"] = "cv",
    ) -> None:
        self.method = method
        self.cv = cv
        self.random_state = random_state
        self.landmark_feature = landmark_feature
        self.landmark_penalty = landmark_penalty

    def fit(
        self,
        margin: np.ndarray,
        y: np.ndarray,
        *,
        groups: np.ndarray | None = None,
        sample_weight: np.ndarray | None = None,
        landmark: np.ndarray | None = None,
    ) -> MarginCalibrator:
        """Fit the calibration map on held-out margins (out-of-fold or a calibration split).

        Parameters
        ----------
        margin : ndarray of shape (n_rows,)
            Booster margins on the calibration split (never the training rows).
        y : ndarray of shape (n_rows,)
            1 = dropout, 0 = completed.
        groups : ndarray of shape (n_rows,), optional
            Cluster ids (e.g. client ids) so that one client's landmark rows stay in one fold
            of the cross-validated comparison.
        sample_weight : ndarray of shape (n_rows,), optional
            Row weights.
        landmark : ndarray of shape (n_rows,), optional
            Each row's landmark: fit a sigmoid with landmark intercepts.

        Returns
        -------
        self
        """
        if self.method not in ("auto", "sigmoid", "isotonic"):
            raise ValueError("method must be 'auto', 'sigmoid' or 'isotonic'")
        m, yy = self._check(margin, y)
        w = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if w is not None and w.shape != m.shape:
            raise ValueError("sample_weight must have one weight per row")
        if groups is not None and np.shape(groups) != m.shape:
            raise ValueError("groups must have one cluster id per row")
        if landmark is not None:
            if np.shape(landmark) != m.shape:
                raise ValueError("landmark must have one value per row")
            if self.method == "isotonic":
                raise ValueError("landmark intercepts need method 'sigmoid' or 'auto'")
            params, self.cv_scores_ = fit_landmark_sigmoid(
                m,
                yy,
                np.asarray(landmark, float),
                w,
                penalty=None if self.landmark_penalty == "cv" else float(self.landmark_penalty),
                groups=None if groups is None else np.asarray(groups),
                n_folds=int(self.cv),
                random_state=self.random_state,
            )
            self._set_params(params)
            self.n_samples_ = int(m.shape[0])
            return self

        self.cv_scores_ = self._cross_validate(m, yy, groups, w)
        method = self.method
        if method == "auto":
            method = "sigmoid"
            if self.cv_scores_:
                sig, iso = self.cv_scores_["sigmoid"], self.cv_scores_["isotonic"]
                if (
                    sig["brier"] - iso["brier"] > ISOTONIC_MIN_BRIER_GAIN
                    and iso["log_loss"] <= sig["log_loss"]
                ):
                    method = "isotonic"
            logger.info("calibration: chose %s by cross-validated Brier score", method)
        self._set_params(_fit_sklearn(method, m, yy, w))
        self.n_samples_ = int(m.shape[0])
        return self

    def _check(self, margin: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate margins and labels; messages name rows, never values."""
        m = np.asarray(margin, dtype=np.float64).reshape(-1)
        yy = np.asarray(y).reshape(-1)
        if m.shape != yy.shape:
            raise ValueError("margin and y must have the same number of rows")
        bad = ~np.isfinite(m)
        if bad.any():
            raise ValueError(f"margin at row {int(np.argmax(bad))} is not finite")
        bad = ~np.isin(yy, (0, 1))
        if bad.any():
            raise ValueError(f"label at row {int(np.argmax(bad))} is not 0 or 1")
        if np.unique(yy).size < 2:
            raise ValueError("y must contain both classes (0 and 1) to calibrate")
        return m, yy.astype(np.float64)

    def _cross_validate(
        self,
        m: np.ndarray,
        y: np.ndarray,
        groups: np.ndarray | None,
        w: np.ndarray | None,
    ) -> dict[str, Any]:
        """Mean held-out Brier and log-loss of both methods; {} when folds are impossible."""
        n_minority = int(min(y.sum(), y.size - y.sum()))
        n_folds = int(self.cv)
        if n_folds < 2 or n_minority < n_folds:
            logger.info("calibration: too few rows of one class for %d-fold comparison", n_folds)
            return {}
        if groups is not None:
            if np.unique(np.asarray(groups)).size < n_folds:
                return {}
            splitter: Any = StratifiedGroupKFold(
                n_splits=n_folds, shuffle=True, random_state=self.random_state
            )
        else:
            splitter = StratifiedKFold(
                n_splits=n_folds, shuffle=True, random_state=self.random_state
            )
        methods: tuple[Literal["sigmoid", "isotonic"], ...] = ("sigmoid", "isotonic")
        scores: dict[str, list[tuple[float, float]]] = {k: [] for k in methods}
        for train, test in splitter.split(m[:, None], y, groups):
            if np.unique(y[train]).size < 2 or test.size == 0:
                continue
            for method in methods:
                params = _fit_sklearn(method, m[train], y[train], None if w is None else w[train])
                p = calibrate_probability(m[test], params)
                scores[method].append((_brier(y[test], p), _log_loss(y[test], p)))
        if not scores["sigmoid"]:
            return {}
        out: dict[str, Any] = {
            method: {
                "brier": float(np.mean([s[0] for s in rows])),
                "log_loss": float(np.mean([s[1] for s in rows])),
            }
            for method, rows in scores.items()
        }
        out["n_folds"] = len(scores["sigmoid"])
        return out

    def _set_params(self, params: Mapping[str, Any]) -> None:
        """Set the fitted attributes from plain parameters."""
        self.method_ = str(params["method"])
        if self.method_ == "sigmoid":
            self.a_ = float(params["a"])
            self.b_ = float(params["b"])
            self.slope_ = -self.a_
            self.intercept_ = -self.b_
            self.landmark_knots_ = tuple(float(v) for v in params.get("landmark_knots") or ())
            self.landmark_intercepts_ = tuple(
                float(v) for v in params.get("landmark_intercepts") or ()
            )
            if len(self.landmark_knots_) != len(self.landmark_intercepts_):
                raise ValueError("landmark knots and intercepts must have equal lengths")
            self.explanation_space_ = SPACE_CALIBRATED
        elif self.method_ == "isotonic":
            x = np.asarray(params["x_thresholds"], dtype=np.float64)
            yv = np.asarray(params["y_thresholds"], dtype=np.float64)
            if x.ndim != 1 or x.shape != yv.shape or x.size == 0:
                raise ValueError("isotonic thresholds must be two non-empty lists of equal length")
            if np.any(np.diff(x) < 0) or np.any(np.diff(yv) < 0):
                raise ValueError("isotonic thresholds must be non-decreasing")
            self.x_thresholds_ = x
            self.y_thresholds_ = yv
            self.explanation_space_ = SPACE_UNCALIBRATED
        else:
            raise ValueError("calibrator params: unknown method (expected 'sigmoid' or 'isotonic')")

    def _fitted_params(self) -> dict[str, Any]:
        """The plain parameters :func:`calibrate_logit` needs."""
        if not hasattr(self, "method_"):
            raise ValueError("MarginCalibrator is not fitted yet; call fit() or from_dict()")
        if self.method_ == "sigmoid":
            out: dict[str, Any] = {
                "method": "sigmoid",
                "a": self.a_,
                "b": self.b_,
                "slope": self.slope_,
                "intercept": self.intercept_,
            }
            if self.landmark_knots_:
                out["landmark_feature"] = self.landmark_feature
                out["landmark_knots"] = list(self.landmark_knots_)
                out["landmark_intercepts"] = list(self.landmark_intercepts_)
            return out
        return {
            "method": "isotonic",
            "x_thresholds": [float(v) for v in self.x_thresholds_],
            "y_thresholds": [float(v) for v in self.y_thresholds_],
        }

    def predict_proba(self, margin: np.ndarray, landmark: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities, shape (n_rows, 2): column 1 is the probability of dropout."""
        p = calibrate_probability(np.asarray(margin).reshape(-1), self._fitted_params(), landmark)
        return np.column_stack([1.0 - p, p])

    def predict_logit(self, margin: np.ndarray, landmark: np.ndarray | None = None) -> np.ndarray:
        """Calibrated log-odds of dropout, shape (n_rows,)."""
        return calibrate_logit(np.asarray(margin).reshape(-1), self._fitted_params(), landmark)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters (plain floats and lists): the model artefact's calibrator.

        Python floats round-trip exactly through ``json``, so :meth:`from_dict` reproduces
        predictions bit for bit.
        """
        return {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            **self._fitted_params(),
            "explanation_space": self.explanation_space_,
            "estimator_params": {
                "method": self.method,
                "cv": self.cv,
                "random_state": self.random_state,
                "landmark_feature": self.landmark_feature,
                "landmark_penalty": self.landmark_penalty,
            },
            "cv_scores": getattr(self, "cv_scores_", {}),
            "n_samples": getattr(self, "n_samples_", None),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MarginCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        if data.get("format") != _FORMAT or data.get("format_version") not in _READABLE_VERSIONS:
            raise ValueError(
                f"calibrator params: expected format {_FORMAT!r} version {_FORMAT_VERSION}"
            )
        est_params = dict(data.get("estimator_params") or {})
        obj = cls(**est_params)
        obj._set_params(data)
        obj.cv_scores_ = dict(data.get("cv_scores") or {})
        n = data.get("n_samples")
        if n is not None:
            obj.n_samples_ = int(n)
        return obj
