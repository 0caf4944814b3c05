"""Baselines reported next to the model on the same test rows.

- ``logistic``: logistic regression on early-alliance and attendance features, the kind of
  model a published dropout study would fit (median imputation with missing indicators,
  standardised, L2-penalised).
- ``alert_rule``: the rule clinics use today (OpenFIT-style alert): the instrument total below
  its clinical cut-off, or a drop of at least the profile's ``drop_points`` since the last
  session, or any no-show so far. A 0/1 rule has no probabilities of its own; for Brier and ECE
  each arm is given the dropout rate observed in that arm of the training rows, which is how a
  clinic would read "flagged clients drop out X% of the time".

Both are fitted with the training rows' censoring weights when the run has them (``train
--censoring ipcw``), as the booster and the calibrator are: unweighted, the ended episodes of
recent intakes (the short ones) would set the logistic coefficients and the arms' rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from features.profiles import OVERALL
from features.registry import ATTENDANCE_GROUP, FeatureRegistry

_RULE_STATS = ("below_cutoff", "drop_alert")
_NO_SHOW_STAT = "no_show_count"


def logistic_columns(registry: FeatureRegistry) -> np.ndarray:
    """Positions of the early-alliance (every rating group) and attendance features."""
    return np.array(
        [
            i
            for i, f in enumerate(registry.features)
            if f.stat == "early_mean" or f.group == ATTENDANCE_GROUP
        ],
        dtype=np.int64,
    )


def rule_columns(registry: FeatureRegistry) -> np.ndarray:
    """Positions of the alert rule's inputs: below cut-off, drop alert, no-show count."""
    wanted = [(OVERALL, s) for s in _RULE_STATS] + [(ATTENDANCE_GROUP, _NO_SHOW_STAT)]
    by_key = {(f.group, f.stat): i for i, f in enumerate(registry.features)}
    missing = [f"{g}_{s}" for g, s in wanted if (g, s) not in by_key]
    if missing:
        raise KeyError(f"feature registry lacks the alert rule's input(s): {', '.join(missing)}")
    return np.array([by_key[k] for k in wanted], dtype=np.int64)


def alert_flags(columns: np.ndarray, X: np.ndarray) -> np.ndarray:
    """The alert rule's 0/1 flag per row of ``X``: 1 where any of ``columns`` is positive (NaN
    inputs count as not alerting). ``columns``: :func:`rule_columns`."""
    return (np.nan_to_num(X[:, columns], nan=0.0) > 0).any(axis=1).astype(np.int8)


@dataclass(frozen=True)
class AlertRule:
    """The fitted 0/1 alert with the observed dropout rate in each arm."""

    columns: np.ndarray
    rate_flagged: float
    rate_unflagged: float

    def flag(self, X: np.ndarray) -> np.ndarray:
        """1 where any input is positive (NaN inputs count as not alerting)."""
        return alert_flags(self.columns, X)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.where(self.flag(X) == 1, self.rate_flagged, self.rate_unflagged)


def fit_alert_rule(
    registry: FeatureRegistry, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None
) -> AlertRule:
    """Read the arms' dropout rates off the training rows ``(X, y)``, weighted by
    ``sample_weight`` (censoring) when given."""
    cols = rule_columns(registry)
    flagged = alert_flags(cols, X) == 1
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    overall = float(np.average(y, weights=w))

    def rate(mask: np.ndarray) -> float:
        return float(np.average(y[mask], weights=w[mask])) if w[mask].sum() > 0 else overall

    return AlertRule(columns=cols, rate_flagged=rate(flagged), rate_unflagged=rate(~flagged))


@dataclass(frozen=True)
class LogisticBaseline:
    """Fitted logistic-regression baseline on a subset of the feature columns."""

    columns: np.ndarray
    pipeline: Pipeline

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(X[:, self.columns])[:, 1]


def fit_logistic(
    registry: FeatureRegistry,
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int = 0,
    sample_weight: np.ndarray | None = None,
) -> LogisticBaseline:
    """Fit the logistic baseline on training rows ``(X, y)``, weighted by ``sample_weight``
    (censoring) when given."""
    cols = logistic_columns(registry)
    Xs = X[:, cols]
    # Columns that are NaN throughout training carry nothing; the imputer drops them otherwise.
    pipeline = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
        StandardScaler(),
        LogisticRegression(C=1.0, max_iter=2000, random_state=seed),
    )
    pipeline.fit(
        Xs,
        y,
        standardscaler__sample_weight=sample_weight,
        logisticregression__sample_weight=sample_weight,
    )
    return LogisticBaseline(columns=cols, pipeline=pipeline)
