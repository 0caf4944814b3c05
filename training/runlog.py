"""Log training and evaluation results to MLflow, and register the model.

The run holds: parameters, test metrics (model and baselines), the dataset fingerprint and git
commit as tags, and artifacts under ``report/`` (calibration, ROC and PR plots, per-landmark,
subgroup, therapist, comparison, importance and search tables, the model card),
``evaluation/`` (the test split's tables, pseudonymised, so that ``promote`` can score the
candidate and the champion on the very same rows) and ``reference/reference_profile.json`` (the
model's reference profile, :mod:`models.reference`, for analysts). The logged model is one
self-contained pyfunc (:class:`models.pyfunc.AllianceRiskModel`) whose ``scorer`` artifact
carries everything needed to score, the same reference profile included
(``scorer.reference``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature

import features
import models
from features.contract import CLIENT_ID
from models.pyfunc import SCORER_ARTIFACT, predict_frame
from models.scorer import Scorer
from training import decision, report, report_plots
from training.pipeline import ModelEvaluation, TrainResult, headline_metrics
from training.tracking import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    dataset_fingerprint,
    ensure_experiment,
    git_commit,
    provenance_tags,
)

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model"
EVALUATION_DIR = "evaluation"
TEST_SESSIONS = "test_sessions.parquet"
TEST_CLIENTS = "test_clients.parquet"
REFERENCE_ARTIFACT = "reference/reference_profile.json"
TAG_SIMULATED = "data.simulated"
TAG_PROFILE = "instrument.profile"

#: Exact requirements written into the logged model: the versions its artefacts depend on.
_PINNED = ("numpy", "pandas", "scikit-learn", "scipy", "xgboost-cpu", "mlflow", "pyarrow")


@dataclass(frozen=True)
class LoggedRun:
    """Where a training or evaluation run went."""

    run_id: str
    experiment_id: str
    model_uri: str | None
    model_name: str | None
    model_version: str | None


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in _PINNED:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def pseudonymise(
    sessions: pd.DataFrame, clients: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Replace client ids by salted hashes (salt discarded) so stored test data names nobody.

    Clinic and therapist ids, dates and covariates stay: the gates need them for subgroups and
    features. Treat the tracking store like the source data all the same.
    """
    salt = secrets.token_bytes(16)
    ids = pd.unique(clients[CLIENT_ID].astype(str))
    mapping = {c: hashlib.sha256(salt + c.encode()).hexdigest()[:20] for c in ids}
    return (
        sessions.assign(**{CLIENT_ID: sessions[CLIENT_ID].astype(str).map(mapping)}),
        clients.assign(**{CLIENT_ID: clients[CLIENT_ID].astype(str).map(mapping)}),
    )


def _write_reports(evaluation: ModelEvaluation, out: Path) -> dict[str, pd.DataFrame]:
    """Plots and tables of one evaluation into ``out``; returns the tables for the card."""
    y = evaluation.data.y
    curves = {"model": (y, evaluation.probability)}
    curves.update({k: (y, p) for k, p in evaluation.baseline_probability.items()})
    report.plot_calibration(y, evaluation.probability, out)
    if np.unique(y).size == 2:
        report.plot_roc(curves, out)
        report.plot_pr(curves, out)
    tables = {
        "landmarks": evaluation.landmark_table(),
        "subgroups": evaluation.subgroup_table(),
        "therapists": evaluation.therapists,
        "comparison": evaluation.comparison(),
        "importance": evaluation.importance.rename_axis("group").reset_index(),
    }
    for name, table in tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    # Decision curve, alert workload, calibration with intervals, per-landmark plot.
    support = decision.decision_support(evaluation)
    tables.update(report_plots.write_decision_support(support, tables["landmarks"], out))
    (out / "therapist_summary.json").write_text(json.dumps(evaluation.therapist_summary, indent=2))
    return tables


def _metrics_table(evaluation: ModelEvaluation) -> pd.DataFrame:
    o = evaluation.model.overall
    rows = []
    for key in ("auroc", "auprc", "brier", "ece", "calibration_slope", "calibration_intercept",
                "flag_sensitivity", "flag_ppv"):  # fmt: skip
        rows.append(
            {
                "metric": key,
                "value": o.get(key, np.nan),
                "ci_low": o.get(f"{key}_ci_low", np.nan),
                "ci_high": o.get(f"{key}_ci_high", np.nan),
            }
        )
    return pd.DataFrame(rows)


def _mlflow_metrics(evaluation: ModelEvaluation, prefix: str = "test_") -> dict[str, float]:
    out = {f"{prefix}{k}": float(v) for k, v in evaluation.model.overall.items() if np.isfinite(v)}
    for name, rep in evaluation.baselines.items():
        for k in ("auroc", "brier", "ece"):
            v = rep.overall.get(k, np.nan)
            if np.isfinite(v):
                out[f"{prefix}baseline_{name}_{k}"] = float(v)
    for k, v in evaluation.therapist_summary.items():
        if np.isfinite(v):
            out[f"{prefix}therapist_{k}"] = float(v)
    return out


def log_training_run(
    result: TrainResult,
    *,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    test_sessions: pd.DataFrame,
    test_clients: pd.DataFrame,
    experiment: str = DEFAULT_EXPERIMENT,
    register_as: str | None = DEFAULT_MODEL_NAME,
    simulated: bool = False,
    source: str = "",
    fingerprint: str | None = None,
) -> tuple[LoggedRun, Scorer]:
    """Log ``result`` as one MLflow run, log its model, and register it under ``register_as``.

    Returns the run and the scorer as logged (with headline metrics and the model card in it).
    ``fingerprint`` is the whole dataset's when ``sessions``/``clients`` hold only part of it
    (the Dask engine's gathered calibration and test clients); by default theirs.
    """
    experiment_id = ensure_experiment(experiment)
    fingerprint = fingerprint or dataset_fingerprint(sessions, clients)
    commit = git_commit()
    evaluation = result.evaluation
    with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        run_id = run.info.run_id
        mlflow.set_tags(
            {
                **provenance_tags(fingerprint, commit),
                TAG_SIMULATED: str(simulated).lower(),
                TAG_PROFILE: result.scorer.profile.name,
                "alliance_risk.kind": "train",
            }
        )
        mlflow.log_params(
            {
                **result.config.params(),
                "profile": result.scorer.profile.name,
                "n_features": len(result.scorer.feature_names),
                "calibration_method": result.calibrator.method_,
                "n_trees": result.fit.best_iteration + 1,
                **{f"booster_{k}": v for k, v in result.fit.params.items() if k != "nthread"},
                **{f"split_{k}_clients": v for k, v in result.splits.sizes().items()},
            }
        )
        mlflow.log_metrics(
            {
                **_mlflow_metrics(evaluation),
                "valid_logloss": float(result.fit.valid_logloss),
                **{f"time_{k}": float(v) for k, v in result.timings.items()},
            }
        )
        out = Path(tmp) / "report"
        out.mkdir()
        tables = _write_reports(evaluation, out)
        pd.DataFrame(list(result.fit.trials)).to_csv(out / "search_trials.csv", index=False)
        card = report.model_card(
            model_name=register_as or DEFAULT_MODEL_NAME,
            data={**result.data_summary, "fingerprint": fingerprint, "source": source},
            model={
                "estimator": (
                    f"XGBoost, {result.fit.best_iteration + 1} trees of depth "
                    f"{result.fit.params.get('max_depth')}"
                ),
                "calibration": (
                    f"{result.calibrator.method_} on the booster margin, fitted on the "
                    "calibration split (never used for fitting)"
                ),
                "features": len(result.scorer.feature_names),
                "params": {k: v for k, v in result.fit.params.items() if k != "nthread"},
            },
            metrics=_metrics_table(evaluation),
            landmarks=tables["landmarks"],
            subgroups=tables["subgroups"],
            baselines=tables["comparison"],
            importance=tables["importance"],
            bands=result.scorer.bands.to_dict(),
            decision=decision.card_table(
                tables["decision_curve"], tables["alert_workload"], result.scorer.bands.high_from
            ),
            simulated=simulated,
            run_id=run_id,
            git_commit=commit,
            created_at=str(result.scorer.metadata.get("trained_at", "")),
        )
        (out / "model_card.md").write_text(card)
        mlflow.log_artifacts(str(out), artifact_path="report")

        ev = Path(tmp) / EVALUATION_DIR
        ev.mkdir()
        ps, pc = pseudonymise(test_sessions, test_clients)
        ps.to_parquet(ev / TEST_SESSIONS, index=False)
        pc.to_parquet(ev / TEST_CLIENTS, index=False)
        mlflow.log_artifacts(str(ev), artifact_path=EVALUATION_DIR)
        if result.scorer.reference is not None:
            mlflow.log_dict(result.scorer.reference.to_dict(), REFERENCE_ARTIFACT)

        scorer = replace(
            result.scorer,
            metadata={
                **result.scorer.metadata,
                "run_id": run_id,
                "dataset_fingerprint": fingerprint,
                "git_commit": commit,
                "metrics": headline_metrics(evaluation),
                "simulated": simulated,
            },
            model_card=card,
        )
        scorer_dir = scorer.save(Path(tmp) / "scorer")
        example = pd.DataFrame(evaluation.data.X[:3], columns=list(scorer.feature_names)).astype(
            "float64"
        )
        signature = infer_signature(example, predict_frame(scorer, example))
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(Path(models.__file__).parent / "mlflow_entry.py"),
            artifacts={SCORER_ARTIFACT: str(scorer_dir)},
            code_paths=[
                str(_python_sources(Path(pkg.__file__).parent, Path(tmp) / "code"))
                for pkg in (features, models)
            ],
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=register_as,
        )
    version = None if info.registered_model_version is None else str(info.registered_model_version)
    if register_as and version:
        client = mlflow.MlflowClient()
        client.set_model_version_tag(register_as, version, "run_id", run_id)
        client.set_model_version_tag(register_as, version, "dataset.fingerprint", fingerprint)
        client.set_model_version_tag(
            register_as, version, "metrics", json.dumps(headline_metrics(evaluation))
        )
    logger.info("logged training run %s (model version %s)", run_id, version)
    return (
        LoggedRun(run_id, experiment_id, info.model_uri, register_as, version),
        scorer,
    )


def _python_sources(package: Path, into: Path) -> Path:
    """A copy of ``package`` with its ``.py`` files only: the logged model carries no compiled
    file (no extension module, no bytecode), so it loads on any OS with the pinned libraries."""
    target = into / package.name
    for source in package.rglob("*.py"):
        if "__pycache__" not in source.parts:
            dest = target / source.relative_to(package)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(source.read_bytes())
    return target


def log_evaluation_run(
    evaluation: ModelEvaluation,
    *,
    model_uri: str,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    experiment: str = DEFAULT_EXPERIMENT,
    simulated: bool = False,
    extra_tags: dict[str, Any] | None = None,
) -> LoggedRun:
    """Log an external/temporal validation of ``model_uri`` as its own MLflow run."""
    experiment_id = ensure_experiment(experiment)
    fingerprint = dataset_fingerprint(sessions, clients)
    with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags(
            {
                **provenance_tags(fingerprint, git_commit()),
                TAG_SIMULATED: str(simulated).lower(),
                "alliance_risk.kind": "evaluate",
                "evaluated_model_uri": model_uri,
                **{k: str(v) for k, v in (extra_tags or {}).items()},
            }
        )
        mlflow.log_metrics(_mlflow_metrics(evaluation))
        out = Path(tmp) / "report"
        out.mkdir()
        _write_reports(evaluation, out)
        _metrics_table(evaluation).to_csv(out / "metrics.csv", index=False)
        mlflow.log_artifacts(str(out), artifact_path="report")
        return LoggedRun(run.info.run_id, experiment_id, None, None, None)
