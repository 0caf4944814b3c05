"""End-to-end ``alliance-risk train`` on 20,000 simulated clients (2,000 with ``--quick``).

Targets (issue #4): the whole command (read, validate, features, search, calibration,
evaluation, MLflow logging and registration) in at most 3 minutes; test ECE at most 0.03;
better AUROC and Brier than both baselines; and the test AUROC reported next to what the
simulator's signal allows.

* ``train_cli``: the real command in a subprocess against a fresh SQLite tracking store, run
  ``repeats`` times (min and median). Quality figures are read back from the logged run.
* ``baseline_fit``: the same-run baseline for the timing ratio: one fixed XGBoost fit
  (300 rounds, depth 4, the command's thread count) on the same training landmark rows with
  the features already built. ``ratio_to_single_fit`` is how much the whole command costs
  relative to the bare minimum of fitting one booster.
* ``oracle``: an XGBoost model given the simulator's true per-client latent values (intake
  risk, latent alliance level and growth, no-show propensity, therapist effects, the decline
  process; never the outcome, its timing or whole-episode counts) on top of the observed features,
  trained on the same split and judged on the same test rows. Its AUROC is an estimate of the
  ceiling the simulated signal allows; the gap says how much a data-only model leaves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import brier_score_loss, roc_auc_score

from benchmarks._harness import Target, Timing, measure, provenance
from features.build import build_features, landmark_labels
from training.pipeline import TrainConfig
from training.simulate import Cohort, simulate_cohort, write_cohort
from training.splits import split_clients

TARGET_TRAIN_S = 180.0
TARGET_ECE = 0.03
#: Latent columns the oracle may see: per-client parameters fixed at intake (or the decline
#: process, which the observed ratings only hint at). Outcome, dropout timing, terminal misses,
#: censoring and whole-episode counts such as ruptures (shorter episodes have fewer) are
#: excluded: they are, or leak, the answer rather than the signal.
ORACLE_LATENT = (
    "therapist_alliance_effect",
    "therapist_dropout_effect",
    "alliance_level",
    "alliance_intake_mean",
    "alliance_growth",
    "noshow_propensity",
    "planned_sessions",
    "intake_logit",
    "declines",
    "decline_onset",
    "decline_rate",
)


def _train_cli(data: Path, store: Path) -> float:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    cmd = [
        str(Path(sys.executable).parent / "alliance-risk"),
        "train",
        "--sessions", str(data / "sessions.csv"),
        "--clients", str(data / "clients.csv"),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=store, check=True, capture_output=True)
    return time.perf_counter() - t0


def _logged_metrics(store: Path) -> dict[str, float]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("alliance-risk")
    if experiment is None:
        raise RuntimeError("alliance-risk train logged no experiment")
    runs = client.search_runs(
        [experiment.experiment_id],
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return dict(runs[0].data.metrics)


def _xgb(train_x, train_y, valid_x, valid_y, *, rounds: int, early: int | None) -> xgb.Booster:
    params = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "max_depth": 4,
        "eta": 0.05,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 5,
        "nthread": int(os.environ.get("OMP_NUM_THREADS", "2") or 2),
        "seed": 0,
    }
    dtrain = xgb.DMatrix(train_x, label=train_y, missing=np.nan)
    dvalid = xgb.DMatrix(valid_x, label=valid_y, missing=np.nan)
    return xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=[(dvalid, "valid")],
        early_stopping_rounds=early,
        verbose_eval=False,
    )


@dataclass(frozen=True)
class Rows:
    """Labelled landmark rows of some clients: features, dropout label, client and landmark."""

    X: np.ndarray
    y: np.ndarray
    client_id: np.ndarray
    landmark: np.ndarray

    def subset(self, client_ids: np.ndarray) -> Rows:
        keep = pd.Index(self.client_id).isin(pd.Index(client_ids))
        return Rows(self.X[keep], self.y[keep], self.client_id[keep], self.landmark[keep])


def _training_rows(cohort: Cohort, config: TrainConfig) -> Rows:
    """The rows training fits on, from the features' public functions: every landmark of an
    open episode up to ``k_max``, ongoing clients left out."""
    frame = build_features(
        cohort.sessions,
        cohort.clients,
        profile=cohort.profile,
        landmarks="training",
        k_max=config.k_max,
        include_covariates=config.include_covariates,
    )
    assert isinstance(frame.index, pd.MultiIndex)
    y = landmark_labels(cohort.clients, frame.index).to_numpy()
    labelled = np.isfinite(y)
    index = frame.index[labelled]
    return Rows(
        X=frame.to_numpy()[labelled],
        y=y[labelled],
        client_id=index.get_level_values(0).to_numpy(dtype=object),
        landmark=index.get_level_values(1).to_numpy(dtype=np.float64),
    )


def _with_latent(X: np.ndarray, ids: np.ndarray, latent: pd.DataFrame, k: np.ndarray) -> np.ndarray:
    info = latent.set_index("client_id").reindex(pd.Index(ids))
    cols = []
    for name in ORACLE_LATENT:
        col = pd.to_numeric(info[name], errors="coerce").to_numpy(dtype=np.float64)
        cols.append(col)
    onset = pd.to_numeric(info["decline_onset"], errors="coerce").to_numpy(dtype=np.float64)
    cols.append(np.where(np.isfinite(onset), k - onset, np.nan))  # decline under way at k
    return np.column_stack([X, *cols])


def run(quick: bool) -> dict[str, Any]:
    started = provenance()
    n_clients = 2_000 if quick else 20_000
    repeats = 1 if quick else 3
    cohort = simulate_cohort(n_clients, seed=11)
    config = TrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cohort"
        write_cohort(cohort, data)

        # Same-run baseline: one fixed booster fit on the training rows, features prebuilt.
        rows = _training_rows(cohort, config)
        splits = split_clients(
            cohort.clients,
            strategy=config.split,
            test_fraction=config.test_fraction,
            calibration_fraction=config.calibration_fraction,
            valid_fraction=config.valid_fraction,
            seed=config.seed,
        )
        train, valid, test = (
            rows.subset(splits.train),
            rows.subset(splits.valid),
            rows.subset(splits.test),
        )
        single = measure(
            "one fixed XGBoost fit (300 rounds)",
            lambda: _xgb(train.X, train.y, valid.X, valid.y, rounds=300, early=None),
            repeats=repeats,
            warmup=0,
        )

        times = []
        metrics: dict[str, float] = {}
        for i in range(repeats):
            store = Path(tmp) / f"store{i}"
            store.mkdir()
            times.append(_train_cli(data, store))
            metrics = _logged_metrics(store)
        train_t = Timing("alliance-risk train", repeats, min(times), float(np.median(times)))

        # Oracle: observed features plus the simulator's latent truth, same split and rows.
        def oracle_x(part: Rows) -> np.ndarray:
            return _with_latent(part.X, part.client_id, cohort.latent, part.landmark)

        oracle = _xgb(oracle_x(train), train.y, oracle_x(valid), valid.y, rounds=2000, early=50)
        p_oracle = oracle.predict(
            xgb.DMatrix(oracle_x(test), missing=np.nan),
            iteration_range=(0, oracle.best_iteration + 1),
        )

    base = "test_baseline_"
    lr, rule = "logistic_early_alliance_attendance", "alert_rule"
    model = {k: metrics[f"test_{k}"] for k in ("auroc", "brier", "ece", "calibration_slope")}
    baselines = {
        name: {k: metrics.get(f"{base}{name}_{k}") for k in ("auroc", "brier", "ece")}
        for name in (lr, rule)
    }
    beats = all(
        b["auroc"] is not None
        and b["brier"] is not None
        and model["auroc"] > b["auroc"]
        and model["brier"] < b["brier"]
        for b in baselines.values()
    )
    targets = {
        "train_cli_s": Target(
            goal=f"alliance-risk train on {n_clients:,} clients in at most {TARGET_TRAIN_S:g} s",
            unit="s", min=round(train_t.min_s, 1), median=round(train_t.median_s, 1),
            judged_on=f"median of {repeats}", met=train_t.median_s <= TARGET_TRAIN_S,
        ),
        "test_ece": Target(
            goal=f"test ECE at most {TARGET_ECE}", unit="ECE", min=round(model["ece"], 4),
            median=round(model["ece"], 4), judged_on="the last run's logged metric",
            met=model["ece"] <= TARGET_ECE,
        ),
    }  # fmt: skip
    return {
        "provenance": started,
        "targets": {k: t.as_dict() for k, t in targets.items()},
        "clients": n_clients,
        "test_rows": int(test.X.shape[0]),
        "train_cli_s": {"min": round(train_t.min_s, 1), "median": round(train_t.median_s, 1)},
        "baseline_single_fit_s": {
            "min": round(single.min_s, 2),
            "median": round(single.median_s, 2),
        },
        "ratio_to_single_fit": [round(1 / r, 1) for r in train_t.ratio(single)],
        "model": {k: round(v, 4) for k, v in model.items()},
        "baselines": {
            n: {k: round(v, 4) for k, v in b.items() if v is not None} for n, b in baselines.items()
        },  # fmt: skip
        "oracle_with_latent": {
            "auroc": round(float(roc_auc_score(test.y, p_oracle)), 4),
            "brier": round(float(brier_score_loss(test.y, p_oracle)), 4),
        },
        "beats_both_baselines": beats,
    }
