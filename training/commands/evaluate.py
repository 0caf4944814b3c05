"""``alliance-risk evaluate``: external or temporal validation of a registered model on new data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.commands.common import (
    DEFAULT_MODEL_URI,
    EXIT_ERRORS,
    EXIT_UNREADABLE,
    ClientsOpt,
    ExperimentOpt,
    ModelOpt,
    OnErrorOpt,
    ProfileOpt,
    QuarantineDirOpt,
    SessionsOpt,
    TrackingOpt,
    configure_tracking,
    error_console,
    fail,
    load_or_exit,
)
from training.simulate import is_simulated
from training.tracking import DEFAULT_EXPERIMENT

_SHOWN = ("n", "effective_n", "weight_max", "prevalence", "auroc", "auprc", "brier", "ece",
          "calibration_slope", "calibration_intercept", "flag_sensitivity", "flag_ppv")  # fmt: skip


def evaluate(
    sessions: SessionsOpt,
    clients: ClientsOpt,
    model: ModelOpt = DEFAULT_MODEL_URI,
    profile: ProfileOpt = None,
    on_error: OnErrorOpt = "fail",
    quarantine_dir: QuarantineDirOpt = None,
    experiment: ExperimentOpt = DEFAULT_EXPERIMENT,
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", min=0, help="Bootstrap resamples for the 95% CIs.")
    ] = 200,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Validate a registered model on new data: every labelled landmark is a test row.

    The metrics are weighted by inverse probability of censoring, from the follow-up of every
    client in the file (ongoing ones included), unless the model was trained with
    --censoring exclude; effective_n (Kish) and weight_max say how much the
    weights stretch the labelled rows. Logged as evaluation_* metrics.

    Produces the same report as training (overall, per landmark, per subgroup, calibration,
    ROC and PR plots, the decision curve with the alert rule; titled with the sessions file's
    name) and logs it as an MLflow evaluation run, its metrics logged against the
    evaluated model version's logged model, so they show on that model's page.
    """
    console = Console()
    cohort = load_or_exit(
        sessions, clients, profile=profile, on_error=on_error,
        quarantine_dir=quarantine_dir,
    )  # fmt: skip
    configure_tracking(tracking_uri)
    from mlflow.exceptions import MlflowException

    from models.pyfunc import load_scorer
    from models.scorer import IncompatibleModelError
    from training.promotion import evaluate_on
    from training.runlog import log_evaluation_run

    try:
        scorer = load_scorer(model)
    except (MlflowException, IncompatibleModelError, OSError) as err:
        message = f"[bold red]Cannot load model[/] {escape(model)}: {escape(str(err))}"
        raise fail(message, EXIT_UNREADABLE) from None
    if scorer.profile.name != cohort.profile.name:
        raise fail(
            f"[bold red]Profile mismatch[/]: the model was trained on {scorer.profile.name!r} "
            f"ratings, the data are {cohort.profile.name!r}.",
            EXIT_ERRORS,
        )
    try:
        with error_console().status("Scoring and evaluating"):
            evaluation = evaluate_on(scorer, cohort.sessions, cohort.clients, n_boot=bootstrap)
    except ValueError as err:
        raise fail(f"[bold red]Cannot evaluate[/]: {escape(str(err))}", EXIT_ERRORS) from None
    # The plots name what they are on: this file, not a training run's test split.
    evaluation = replace(evaluation, population=evaluated_population(Path(sessions)))
    run = log_evaluation_run(
        evaluation,
        model_uri=model,
        sessions=cohort.sessions,
        clients=cohort.clients,
        experiment=experiment,
        simulated=is_simulated(sessions),
        source=f"{Path(sessions).name}, {Path(clients).name}",
    )
    table = Table(title=f"Evaluation of {model}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    o = evaluation.model.overall
    for key in _SHOWN:
        table.add_row(key, f"{o[key]:.4f}" if key not in ("n", "effective_n") else f"{o[key]:,.0f}")
    table.caption = (
        f"AUROC 95% CI {o['auroc_ci_low']:.3f}-{o['auroc_ci_high']:.3f} (cluster bootstrap)"
    )
    console.print(table)
    console.print(f"Logged evaluation run {run.run_id} in experiment '{experiment}'.")


def evaluated_population(sessions: Path) -> str:
    """How an evaluate run's plots name its data: ``"the evaluation cohort (<file name>)"``."""
    return f"the evaluation cohort ({sessions.name})"


def register(app: typer.Typer) -> None:
    """Attach ``evaluate`` to ``app``."""
    app.command("evaluate")(evaluate)
