"""Log training and evaluation results to MLflow, and register the model.

The run holds: parameters, test metrics (model and baselines), the dataset fingerprint and git
commit as tags, and artifacts under ``report/`` (calibration, ROC and PR plots, per-landmark,
subgroup, therapist, comparison, importance and search tables, the model card),
``evaluation/`` (the test split's tables, pseudonymised, so that ``promote`` can score the
candidate and the champion on the very same rows) and ``reference/reference_profile.json`` (the
model's reference profile, :mod:`models.reference`, for analysts). The logged model is one
self-contained pyfunc (:class:`models.pyfunc.AllianceRiskModel`) whose ``scorer`` artifact
carries everything needed to score, the same reference profile included
(``scorer.reference``); it takes raw episodes (:mod:`models.episode_frame`), so
``mlflow models serve`` of it scores what ``alliance-risk score`` reads.

What an analyst sees in MLflow: the model version's description is the model card's summary
and the card (run artifact and the scorer's copy) names the real version, because the version
is registered before the model's files are written; the registered model has a description;
the datasets (whole cohort, calibration and test splits, evaluation data) are run inputs with
the dataset fingerprint, schema and row counts only (never rows); and the test metrics, and
those of every later ``alliance-risk evaluate`` run, are logged against the logged model
(``model_id``), so external validation shows on the model's page.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

import features
import models
from features.contract import CLIENT_ID
from models.pyfunc import SCORER_ARTIFACT, input_example, model_signature, resolve_model
from models.scorer import Scorer
from training import decision, report, report_plots
from training.evaluation import ModelEvaluation, headline_metrics
from training.pipeline import TrainResult
from training.tracking import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    TAG_DATASET_FINGERPRINT,
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

#: MLflow keeps at most 36 characters of a dataset digest; the whole fingerprint is a tag.
_DIGEST_CHARS = 36
#: The registered model's description (set when it has none; an operator's edit is kept).
REGISTERED_MODEL_DESCRIPTION = (
    "Predicts the probability that a client in outpatient psychotherapy drops out (ends "
    "therapy unilaterally before the planned end), from the client's appointments so far: "
    "attendance and the session-by-session therapeutic alliance ratings. For clinicians and "
    "clinic analysts, to prompt a conversation with the client and an alliance-building "
    "focus; never to decide eligibility, funding or a therapist's performance.\n\n"
    "Each version's description summarises its model card (run artifact "
    "`report/model_card.md`). Serve the champion with `alliance-risk serve` "
    "(`models:/<name>@champion`), or a version on its own with `mlflow models serve`: it takes "
    "raw episodes, one row per appointment. See the README's Analyst guide: *MLflow for "
    "analysts*, *4. Promote*, *5. Evaluate on new data* and *6. Score a caseload*."
)

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
    # Weighted as the metrics are, titled with what was evaluated.
    report_plots.write_evaluation_plots(evaluation, out)
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
    # CITL's interval is the client-clustered sandwich one (training.metrics.citl_interval).
    ci_key = {"calibration_intercept": "citl"}
    for key in ("auroc", "auprc", "brier", "ece", "calibration_slope", "calibration_intercept",
                "flag_sensitivity", "flag_ppv", "effective_n", "weight_min", "weight_max"):  # fmt: skip
        name = ci_key.get(key, key)
        rows.append(
            {
                "metric": key,
                "value": o.get(key, np.nan),
                "ci_low": o.get(f"{name}_ci_low", np.nan),
                "ci_high": o.get(f"{name}_ci_high", np.nan),
            }
        )
    return pd.DataFrame(rows)


def calibration_text(config: Any, method: str, landmark_intercepts: bool) -> str:
    """The card's calibration line, from the training config (``calibration_folds``) and the
    fitted calibrator (its method, whether it has landmark intercepts)."""
    what = f"{method} on the booster margin" + (
        " with smooth landmark intercepts (a second-difference penalty whose strength is chosen"
        " by cross-validation over client folds)"
        if landmark_intercepts
        else ""
    )
    if not getattr(config, "calibration_folds", 0):
        return f"{what}, fitted on the calibration split (never used for fitting)"
    return (
        f"{what}, fitted on a held-out margin "
        "of every development client: out-of-fold margins of the train and validation clients "
        f"({config.calibration_folds}-fold cross-fit, the served booster refitted on them) and "
        "the served booster's margins of the calibration split"
    )


def held_out_rows_text(config: Any) -> str:
    """The rows the calibrator and the risk bands were fitted on, for the card (and that both
    weight them for censoring under ``--censoring ipcw``)."""
    weighted = " (weighted for censoring)" if getattr(config, "censoring", "") == "ipcw" else ""
    if not getattr(config, "calibration_folds", 0):
        return f"the calibration split's landmark rows{weighted}"
    return f"the held-out landmark rows of every development client{weighted}"


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


def _source(text: str) -> Any:
    """A dataset source naming the input files (their names only, as the card does)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        # A bare file name matches MLflow's local artifact source twice; it says so.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        return resolve_dataset_source(text or "unspecified")


def _dataset(
    name: str, sessions: pd.DataFrame, clients: pd.DataFrame, source: str, fingerprint: str
) -> tuple[Any, dict[str, str]]:
    """``(dataset, input tags)`` for ``mlflow.log_input``: the sessions table's schema and
    row count (MLflow's profile: counts only, never rows), the fingerprint as digest (its first
    36 characters, MLflow's limit) and, whole, as a tag, with the client count."""
    dataset = mlflow.data.from_pandas(
        sessions, source=_source(source), name=name, digest=fingerprint[:_DIGEST_CHARS]
    )
    return dataset, {TAG_DATASET_FINGERPRINT: fingerprint, "clients": str(len(clients))}


def _cohort_dataset(
    sessions: pd.DataFrame, clients: pd.DataFrame, source: str, fingerprint: str, partial: bool
) -> tuple[Any, dict[str, str]]:
    """The whole training cohort; when only part of it is at hand (the Dask engine gathers
    calibration and test clients), its schema and the whole cohort's fingerprint without
    counts."""
    if not partial:
        return _dataset("cohort", sessions, clients, source, fingerprint)
    from mlflow.data.meta_dataset import MetaDataset

    # Schema from the rows at hand (MLflow cannot infer Arrow string columns of an empty frame);
    # the digest is given, so no row is hashed.
    head = sessions.head(1000)
    schema = (
        mlflow.data.from_pandas(head, source=_source(source), digest=fingerprint[:8]).schema
        if len(head)
        else None
    )
    dataset = MetaDataset(
        _source(source), name="cohort", digest=fingerprint[:_DIGEST_CHARS], schema=schema
    )
    return dataset, {TAG_DATASET_FINGERPRINT: fingerprint}


def _split(sessions: pd.DataFrame, clients: pd.DataFrame, ids: Any) -> tuple[pd.DataFrame, ...]:
    return sessions[sessions[CLIENT_ID].isin(ids)], clients[clients[CLIENT_ID].isin(ids)]


def card_summary(
    card_data: dict[str, Any],
    metrics: dict[str, float],
    *,
    model_name: str,
    version: str | None,
    run_id: str,
    simulated: bool,
) -> str:
    """The model version's description: the model card in a few lines (Markdown).

    ``card_data`` is the card's ``data`` mapping (clients, dropout rate, profile, intake
    range); ``metrics`` the test split's :func:`training.evaluation.headline_metrics`.
    """

    def value(key: str, fmt: str = "{:.3f}") -> str:
        return fmt.format(metrics[key]) if key in metrics else "n/a"

    lines = [f"**{model_name} version {version or '(unregistered)'}**: dropout risk at each "
             "appointment, from attendance and alliance ratings (model card: run artifact "
             f"`report/model_card.md`, run {run_id})."]  # fmt: skip
    if simulated:
        lines.append("**Trained and evaluated on simulated data**: validate on your own clients "
                     "(`alliance-risk evaluate`) before any use.")  # fmt: skip

    def shown(key: str) -> str:
        v = card_data[key]
        if key == "dropout_rate" and isinstance(v, float):
            return f"{v:.1%} (per episode)"
        return f"{v:,}" if isinstance(v, int) else str(v)

    population = [
        f"{key.replace('_', ' ')} {shown(key)}"
        for key in ("clients", "dropout_rate", "profile", "intake_from", "intake_to")
        if key in card_data
    ]
    if population:
        lines.append("Training data: " + ", ".join(population) + ".")
    lines.append(
        f"Test split ({value('n', '{:.0f}')} landmark rows, prevalence {value('prevalence')}): "
        f"AUROC {value('auroc')} (95% CI {value('auroc_ci_low')} to {value('auroc_ci_high')}), "
        f"Brier {value('brier')}, ECE {value('ece')}, calibration intercept "
        f"{value('calibration_intercept', '{:+.3f}')} and slope {value('calibration_slope')}; "
        f"high-risk flag sensitivity {value('flag_sensitivity')}, PPV {value('flag_ppv')}."
    )
    lines.append(
        "External validations (`alliance-risk evaluate`) are logged against this model: see "
        "the metrics on its logged model page, by dataset."
    )
    return "\n\n".join(lines)


def _describe_registry(
    client: Any, name: str, version: str, summary: str, tags: dict[str, str]
) -> None:
    """Version description and tags; the registered model's description when it has none."""
    client.update_model_version(name, version, description=summary)
    for key, val in tags.items():
        client.set_model_version_tag(name, version, key, val)
    if not (client.get_registered_model(name).description or "").strip():
        client.update_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION)


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
    partial = fingerprint is not None
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
                "valid_logloss": float(result.fit.valid_logloss),
                **{f"time_{k}": float(v) for k, v in result.timings.items()},
            }
        )
        test_data = _dataset(
            "test", test_sessions, test_clients, source,
            dataset_fingerprint(test_sessions, test_clients),
        )  # fmt: skip
        calibration = _split(sessions, clients, result.splits.calibration)
        for (dataset, tags), context in (
            (_cohort_dataset(sessions, clients, source, fingerprint, partial), "training"),
            (_dataset("calibration", *calibration, source, dataset_fingerprint(*calibration)),
             "calibration"),
            (test_data, "test"),
        ):  # fmt: skip
            mlflow.log_input(dataset, context=context, tags=tags)
        # The version is registered before the model's files are written, so the model card
        # (in the run and in the model) can name it; a failure below deletes the version.
        model_id = mlflow.initialize_logged_model(
            name=MODEL_ARTIFACT, source_run_id=run_id
        ).model_id
        version = None
        if register_as:
            version = str(mlflow.register_model(f"models:/{model_id}", register_as).version)
        out = Path(tmp) / "report"
        out.mkdir()
        tables = _write_reports(evaluation, out)
        pd.DataFrame(list(result.fit.trials)).to_csv(out / "search_trials.csv", index=False)
        card_data = {**result.data_summary, "fingerprint": fingerprint, "source": source}
        card = report.model_card(
            model_name=register_as or DEFAULT_MODEL_NAME,
            data=card_data,
            model={
                "estimator": (
                    f"XGBoost, {result.fit.best_iteration + 1} trees of depth "
                    f"{result.fit.params.get('max_depth')}"
                ),
                "calibration": calibration_text(
                    result.config,
                    result.calibrator.method_,
                    bool(result.scorer.calibrator.get("landmark_knots")),
                ),
                "held_out_rows": held_out_rows_text(result.config),
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
            model_version=version,
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
        try:
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                model_id=model_id,
                python_model=str(Path(models.__file__).parent / "mlflow_entry.py"),
                artifacts={SCORER_ARTIFACT: str(scorer_dir)},
                code_paths=[
                    str(_python_sources(Path(pkg.__file__).parent, Path(tmp) / "code"))
                    for pkg in (features, models)
                ],
                signature=model_signature(scorer),
                input_example=input_example(scorer),
                pip_requirements=_requirements(),
            )
        except BaseException:
            if register_as and version:
                mlflow.MlflowClient().delete_model_version(register_as, version)
            raise
        # Logged against the model and the test split: the model's page shows them by dataset.
        mlflow.log_metrics(_mlflow_metrics(evaluation), model_id=model_id, dataset=test_data[0])
    if register_as and version:
        summary = card_summary(
            card_data,
            headline_metrics(evaluation),
            model_name=register_as,
            version=version,
            run_id=run_id,
            simulated=simulated,
        )
        _describe_registry(
            mlflow.MlflowClient(),
            register_as,
            version,
            summary,
            {
                "run_id": run_id,
                TAG_DATASET_FINGERPRINT: fingerprint,
                "metrics": json.dumps(headline_metrics(evaluation)),
            },
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


def evaluated_model_id(model_uri: str) -> str | None:
    """The MLflow 3 logged model (``m-...``) behind ``model_uri``, or ``None`` (a run URI, a
    path, or a version registered from a run before logged models existed).

    ``models:/m-<id>`` is itself; ``models:/<name>/<version>`` and ``models:/<name>@<alias>``
    are resolved through the registry (the version's ``model_id``, else its
    ``models:/m-<id>`` source).
    """
    if model_uri.startswith("models:/m-"):
        return model_uri.removeprefix("models:/")
    ref = resolve_model(model_uri)
    if ref.version == "local":
        return None
    found = mlflow.MlflowClient().get_model_version(ref.name, ref.version)
    if getattr(found, "model_id", None):
        return str(found.model_id)
    source = str(found.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def log_evaluation_run(
    evaluation: ModelEvaluation,
    *,
    model_uri: str,
    sessions: pd.DataFrame,
    clients: pd.DataFrame,
    experiment: str = DEFAULT_EXPERIMENT,
    simulated: bool = False,
    source: str = "",
    extra_tags: dict[str, Any] | None = None,
) -> LoggedRun:
    """Log an external/temporal validation of ``model_uri`` as its own MLflow run.

    The evaluation data are the run's input (context ``evaluation``: schema, counts and
    fingerprint, never rows), and the metrics are logged against the evaluated logged model
    (``model_id``) and that dataset, so they show on the model's page beside the training
    run's test metrics. ``model_uri`` is pinned to its version first (an alias may move).
    """
    experiment_id = ensure_experiment(experiment)
    fingerprint = dataset_fingerprint(sessions, clients)
    ref = resolve_model(model_uri)
    model_id = evaluated_model_id(ref.uri)
    with mlflow.start_run(experiment_id=experiment_id) as run, tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tags(
            {
                **provenance_tags(fingerprint, git_commit()),
                TAG_SIMULATED: str(simulated).lower(),
                "alliance_risk.kind": "evaluate",
                "evaluated_model_uri": model_uri,
                "evaluated_model_version": ref.version,
                **({"evaluated_model_id": model_id} if model_id else {}),
                **{k: str(v) for k, v in (extra_tags or {}).items()},
            }
        )
        dataset, tags = _dataset("evaluation", sessions, clients, source, fingerprint)
        mlflow.log_input(dataset, context="evaluation", tags=tags)
        # evaluation_*, not test_*: an external cohort is not the training run's test split.
        mlflow.log_metrics(
            _mlflow_metrics(evaluation, prefix="evaluation_"), model_id=model_id, dataset=dataset
        )
        out = Path(tmp) / "report"
        out.mkdir()
        _write_reports(evaluation, out)
        _metrics_table(evaluation).to_csv(out / "metrics.csv", index=False)
        mlflow.log_artifacts(str(out), artifact_path="report")
        return LoggedRun(run.info.run_id, experiment_id, None, None, None)
