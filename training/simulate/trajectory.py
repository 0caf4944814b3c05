"""How much the falling-alliance signal adds to a model's discrimination on a simulated cohort.

One method, used by ``tests/training/simulate/test_deterioration.py`` (the gain must be at least
0.01 AUROC) and by ``scripts/trajectory_signal.py`` (the table docs/simulator.md quotes, whose
last row the test checks against its own measurement).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features import contract as c
from features.build import build_features, landmark_labels
from training.simulate.config import Cohort


def trajectory_signal(cohort: Cohort) -> tuple[float, float]:
    """Test AUROC of (the early-alliance means plus the attendance group, every feature).

    Landmark features of every labelled landmark row of ``cohort`` (``landmarks="training"``
    and :func:`~features.build.landmark_labels`; ongoing clients dropped), split 70/30 by
    client (``numpy.random.default_rng(0)``); logistic regression (median imputation with
    missing indicators, standardised, C = 1) on each set of columns.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = build_features(
        cohort.sessions, cohort.clients, profile=cohort.profile, landmarks="training"
    )
    assert isinstance(x.index, pd.MultiIndex)  # (client, landmark) rows
    y = landmark_labels(cohort.clients, x.index)
    labelled = y.notna().to_numpy()
    x, target = x[labelled], y[labelled].to_numpy()
    ids, row_client = np.unique(x.index.get_level_values(c.CLIENT_ID), return_inverse=True)
    test = (np.random.default_rng(0).random(ids.size) < 0.3)[row_client]
    baseline = [
        col for col in x.columns if col.endswith("_early_mean") or col.startswith("attendance_")
    ]

    def auroc(columns: list[str]) -> float:
        model = make_pipeline(
            SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
            StandardScaler(),
            LogisticRegression(C=1.0, solver="newton-cholesky", max_iter=200),
        )
        values = x[columns].to_numpy()
        model.fit(values[~test], target[~test])
        return float(roc_auc_score(target[test], model.predict_proba(values[test])[:, 1]))

    return auroc(baseline), auroc(list(x.columns))
