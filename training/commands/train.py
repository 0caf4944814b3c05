"""``alliance-risk train``: validate, build landmark features, fit, calibrate, evaluate, log, register."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from features.contract import CLIENT_ID
from training.commands.common import (
    EXIT_ERRORS,
    EXIT_UNREADABLE,
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
    from training.dask_engine import DaskTrained
    from training.pipeline import TrainResult


SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Dask scheduler address (tcp://HOST:PORT). Default: a local cluster on 127.0.0.1, "
        "closed at the end.",
        metavar="<address>",
    ),
]
DaskWorkersOpt = Annotated[
    int,
    typer.Option(
        "--dask-workers", min=1, help="Workers (1 thread each) of the local Dask cluster."
    ),
]

_STAGES = {
    "features": "Building landmark features",
    "fit": "Fitting XGBoost (hyperparameter search)",
    "cross-fit": "Cross-fitting the chosen model in client folds",
    "calibrate": "Calibrating on held-out margins",
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
    bands = result.scorer.bands
    high_rule = (
        f"net-benefit:{bands.threshold_probability:g}"
        if bands.threshold_probability is not None
        else f"alert-rate:{bands.high_share:g}"
    )
    table.caption = (
        f"AUROC 95% CI {o['auroc_ci_low']:.3f}-{o['auroc_ci_high']:.3f}; "
        f"Brier 95% CI {o['brier_ci_low']:.4f}-{o['brier_ci_high']:.4f} "
        f"(cluster bootstrap by client); {int(o['n'])} landmark rows, "
        f"{result.splits.sizes()['test']} clients. logistic: early alliance + attendance; "
        "alert rule: below cutoff, 1-point drop or a no-show; sens/PPV@10%: top 10% flagged. "
        f"High band from risk {bands.high_from:.3f} ({high_rule}; {bands.high_share:.1%} of "
        "calibration rows); decision curve and workload in the run's report/"
    )
    return table


def _check_high_band(value: str) -> str:
    from models.scorer import HighBandRule

    try:
        return str(HighBandRule.parse(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


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
    high_band: Annotated[
        str,
        typer.Option(
            "--high-band",
            help="How the high risk band's threshold is set on the calibration split, stored "
            "in the model: alert-rate:SHARE (the highest-risk SHARE of sessions are high) or "
            "net-benefit:PT (high when risk >= PT, the threshold probability: at 0.25 one "
            "missed dropout weighs as much as 3 unneeded check-ins).",
            callback=_check_high_band,
        ),
    ] = "alert-rate:0.10",
    censoring: Annotated[
        Literal["ipcw", "exclude"],
        typer.Option(
            "--censoring",
            help="Ongoing episodes have no outcome yet, and those of recent intakes that have "
            "ended are the short ones, so leaving the ongoing out skews the labels. ipcw: "
            "weight each ended episode by 1 / the share of clients followed at least as long. "
            "exclude: leave the ongoing out unweighted. Both engines.",
        ),
    ] = "ipcw",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of splits and search.")] = 0,
    tracking_uri: TrackingOpt = None,
    engine: Annotated[
        Literal["pandas", "dask"],
        typer.Option(
            "--engine",
            help="pandas: one process. dask: Parquet files or dataset folders, features and "
            "the XGBoost fits on Dask workers; the driver gathers only the clients' ids, intake "
            "dates, outcomes and last appointment dates, one hash per row, the baselines' "
            "columns of the train rows, the cross-fit's out-of-fold margins, and the "
            "calibration and test clients' rows (at most 600,000 session rows).",
        ),
    ] = "pandas",
    scheduler: SchedulerOpt = None,
    dask_workers: DaskWorkersOpt = 2,
) -> None:
    """Train a calibrated dropout model on a cohort and register it in MLflow.

    Splits by client (temporal holdout, calibration split never used for fitting), fits XGBoost
    with a bounded search and early stopping, calibrates, evaluates against two baselines on the
    same test rows, logs plots, tables and the model card, and registers the model.
    """
    # Heavy imports (xgboost, mlflow) here, so `alliance-risk --help` starts fast.
    from training.censoring import evaluation_population
    from training.pipeline import TrainConfig, train_model
    from training.runlog import log_training_run

    console = Console()
    if engine == "dask":
        check_dask_inputs_or_exit(sessions, clients, on_error)
        cohort = None
    else:
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
        high_band=high_band,
        seed=seed,
        censoring=censoring,
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

        fingerprint = None
        try:
            if cohort is not None:
                result = train_model(
                    cohort.sessions, cohort.clients, cohort.profile, config,
                    progress=on_stage, trial_progress=on_trial,
                )  # fmt: skip
                tables = cohort.sessions, cohort.clients
            else:
                trained = train_with_dask(
                    sessions, clients, profile=profile, config=config, scheduler=scheduler,
                    workers=dask_workers, progress=on_stage, trial_progress=on_trial,
                )  # fmt: skip
                result, fingerprint = trained.result, trained.fingerprint
                tables = trained.sessions, trained.clients
                error_console().print(
                    "Gathered to the driver: "
                    + ", ".join(f"{n:,} {what}" for what, n in trained.gathered.items())
                )
        except ValueError as err:
            progress.stop()
            raise fail(f"[bold red]Cannot train[/]: {escape(str(err))}", EXIT_ERRORS) from None
        on_stage("log")
        all_sessions, all_clients = tables
        # The stored test tables keep the ongoing clients of the test intakes: the promotion
        # gate re-evaluates on them and weights by their follow-up (IPCW), as training did.
        test_ids = evaluation_population(
            all_clients,
            test_ids=result.splits.test,
            test_from=result.splits.test_from,
            seed=result.config.seed,
        )[CLIENT_ID]
        logged, _ = log_training_run(
            result,
            sessions=all_sessions,
            clients=all_clients,
            test_sessions=all_sessions[all_sessions[CLIENT_ID].isin(test_ids)],
            test_clients=all_clients[all_clients[CLIENT_ID].isin(test_ids)],
            fingerprint=fingerprint,
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


def check_dask_inputs_or_exit(sessions: Path, clients: Path, on_error: str) -> None:
    """Exit 2 unless both inputs are Parquet files or dataset folders and no quarantine is
    asked for (the Dask engine validates partition by partition and has no quarantine mode)."""
    from training.io import check_parquet_source

    if on_error != "fail":
        raise fail(
            "[bold red]Not available[/]: --on-error quarantine with --engine dask (it validates "
            "partition by partition); quarantine with the pandas engine first",
            EXIT_UNREADABLE,
        )
    for path in (sessions, clients):
        try:
            check_parquet_source(path)
        except (OSError, ValueError) as err:
            raise fail(
                f"[bold red]Cannot read input[/]: {escape(str(err))}", EXIT_UNREADABLE
            ) from None


def train_with_dask(
    sessions: Path,
    clients: Path,
    *,
    scheduler: str | None,
    workers: int,
    **options: Any,
) -> DaskTrained:
    """:func:`training.dask_engine.train_dask` on ``scheduler`` or a local cluster; exit 2 when
    the scheduler cannot be reached."""
    from training.dask_engine import dask_client, train_dask

    with ExitStack() as stack:
        try:
            client = stack.enter_context(dask_client(scheduler, workers=workers))
        except (OSError, TimeoutError) as err:
            where = scheduler or "the local cluster"
            raise fail(
                f"[bold red]Cannot reach the Dask cluster[/] {escape(where)}: "
                f"{escape(type(err).__name__)}",
                EXIT_UNREADABLE,
            ) from None
        return train_dask(client, sessions, clients, **options)
    raise AssertionError("unreachable")  # ExitStack does not swallow exceptions here


def register(app: typer.Typer) -> None:
    """Attach ``train`` to ``app``."""
    app.command("train")(train)
