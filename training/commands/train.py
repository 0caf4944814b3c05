"""``alliance-risk train``: validate, build landmark features, fit, calibrate, evaluate, log, register."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.contract import CLIENT_ID
from training.commands.common import (
    EXIT_ERRORS,
    ClientsOpt,
    ExperimentOpt,
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
from training.commands.promote import render_promotion
from training.simulate import is_simulated
from training.tracking import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    from training.pipeline import TrainResult


_STAGES = {
    "features": "Building landmark features",
    "fit": "Fitting XGBoost (hyperparameter search)",
    "calibrate": "Calibrating on the calibration split",
    "baselines": "Fitting baselines",
    "evaluate": "Evaluating on the test split",
    "log": "Logging to MLflow and registering",
}


def results_table(result: TrainResult) -> Table:
    """Model and baselines side by side on the test rows."""
    table = Table(title="Test split: model and baselines on the same rows", title_justify="left")
    # Short headers keep the table readable in an 80-column terminal; the caption names them.
    cols = {
        "auroc": "AUROC",
        "auprc": "AUPRC",
        "brier": "Brier",
        "ece": "ECE",
        "calibration_slope": "slope",
        "flag_sensitivity": "sens@10%",
        "flag_ppv": "PPV@10%",
    }
    names = {"logistic_early_alliance_attendance": "logistic", "alert_rule": "alert rule"}
    table.add_column("model")
    for header in cols.values():
        table.add_column(header, justify="right")
    for row in result.evaluation.comparison().to_dict("records"):
        name = str(row["model"])
        table.add_row(names.get(name, name), *(f"{row[c]:.3f}" for c in cols))
    o = result.evaluation.model.overall
    table.caption = (
        f"AUROC 95% CI {o['auroc_ci_low']:.3f}-{o['auroc_ci_high']:.3f}; "
        f"Brier 95% CI {o['brier_ci_low']:.4f}-{o['brier_ci_high']:.4f} "
        f"(cluster bootstrap by client); {int(o['n'])} landmark rows, "
        f"{result.splits.sizes()['test']} clients. logistic: early alliance + attendance; "
        "alert rule: below cutoff, 1-point drop or a no-show; sens/PPV@10%: top 10% flagged"
    )
    return table


def train(
    sessions: SessionsOpt,
    clients: ClientsOpt,
    profile: ProfileOpt = None,
    on_error: OnErrorOpt = "fail",
    quarantine_dir: QuarantineDirOpt = None,
    experiment: ExperimentOpt = DEFAULT_EXPERIMENT,
    register_name: Annotated[
        str, typer.Option("--register", help="Registered model name the new version goes to.")
    ] = DEFAULT_MODEL_NAME,
    promote: Annotated[
        bool,
        typer.Option(
            "--promote",
            help="After registering, move the 'champion' alias to the new version if it passes "
            "the gates against the current champion on the same test rows.",
        ),
    ] = False,
    split: Annotated[
        Literal["temporal", "random"],
        typer.Option(
            "--split",
            help="temporal: the latest 20% of intakes are the test set. random: a random 20% "
            "of clients.",
        ),
    ] = "temporal",
    trials: Annotated[
        int, typer.Option("--trials", min=1, max=100, help="Hyperparameter search trials.")
    ] = 8,
    k_max: Annotated[
        int, typer.Option("--k-max", min=1, help="Largest landmark (appointment) trained on.")
    ] = 20,
    calibration: Annotated[
        Literal["auto", "sigmoid", "isotonic"],
        typer.Option(
            "--calibration",
            help="auto: sigmoid on the margin unless isotonic is clearly better in "
            "cross-validation on the calibration split (sigmoid keeps explanations exact).",
        ),
    ] = "auto",
    include_covariates: Annotated[
        bool,
        typer.Option(
            "--include-covariates",
            help="Add age and an age<25 flag as model inputs (off by default; gender and "
            "referral source are never inputs, only audit subgroups).",
        ),
    ] = False,
    simulated: Annotated[
        bool | None,
        typer.Option(
            "--simulated/--real-data",
            help="Label the model as trained on simulated data (model card warning). "
            "Default: detected from the simulate command's marker file.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of splits and search.")] = 0,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Train a calibrated dropout model on a cohort and register it in MLflow.

    Splits by client (temporal holdout, calibration split never used for fitting), fits XGBoost
    with a bounded search and early stopping, calibrates, evaluates against two baselines on the
    same test rows, logs plots, tables and the model card, and registers the model.
    """
    # Heavy imports (xgboost, mlflow) here, so `alliance-risk --help` starts fast.
    from training.pipeline import TrainConfig, train_model
    from training.runlog import log_training_run

    console = Console()
    cohort = load_or_exit(
        sessions, clients, profile=profile, on_error=on_error,
        quarantine_dir=quarantine_dir,
    )  # fmt: skip
    uri = configure_tracking(tracking_uri)
    config = TrainConfig(
        k_max=k_max,
        include_covariates=include_covariates,
        split=split,
        n_trials=trials,
        calibration=calibration,
        seed=seed,
    )
    is_sim = is_simulated(sessions) if simulated is None else simulated
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=error_console(),  # progress, so stdout holds only the results
        transient=False,
    ) as progress:
        stages = progress.add_task("Training", total=len(_STAGES))
        trials_task = progress.add_task("Search trials", total=trials, visible=False)

        def on_stage(stage: str) -> None:
            progress.update(stages, description=_STAGES.get(stage, stage), advance=0)
            if stage != "features":
                progress.advance(stages)
            progress.update(trials_task, visible=stage == "fit")

        def on_trial(done: int, total: int) -> None:
            progress.update(trials_task, completed=done, total=total)

        try:
            result = train_model(
                cohort.sessions, cohort.clients, cohort.profile, config,
                progress=on_stage, trial_progress=on_trial,
            )  # fmt: skip
        except ValueError as err:
            progress.stop()
            raise fail(f"[bold red]Cannot train[/]: {escape(str(err))}", EXIT_ERRORS) from None
        on_stage("log")
        test_ids = result.splits.test
        logged, _ = log_training_run(
            result,
            sessions=cohort.sessions,
            clients=cohort.clients,
            test_sessions=cohort.sessions[cohort.sessions[CLIENT_ID].isin(test_ids)],
            test_clients=cohort.clients[cohort.clients[CLIENT_ID].isin(test_ids)],
            experiment=experiment,
            register_as=register_name,
            simulated=is_sim,
            source=f"{Path(sessions).name}, {Path(clients).name}",
        )
        progress.update(stages, completed=len(_STAGES), description="Done")
    console.print(results_table(result))
    console.print(
        f"Run {logged.run_id} in experiment '{experiment}' ({uri}); registered "
        f"[bold]{register_name}[/] version {logged.model_version}. "
        f"Calibration: {result.calibrator.method_}; {result.fit.best_iteration + 1} trees; "
        f"total {result.timings['total_s']:.1f} s."
    )
    if promote and logged.model_version is not None:
        from training.promotion import promote_version

        outcome = promote_version(register_name, logged.model_version)
        if not render_promotion(console, outcome):
            raise typer.Exit(EXIT_ERRORS)


def register(app: typer.Typer) -> None:
    """Attach ``train`` to ``app``."""
    app.command("train")(train)
