"""``alliance-risk monitor``: is the model still right for these clinics? Drift, expected and
realized performance per clinic, as an HTML report with plots and an MLflow run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from training.monitor import MonitorResult

from training.commands.common import (
    DEFAULT_MODEL_URI,
    EXIT_ERRORS,
    EXIT_OK,
    EXIT_UNREADABLE,
    ClientsOpt,
    ModelOpt,
    OnErrorOpt,
    ProfileOpt,
    QuarantineDirOpt,
    SessionsOpt,
    TrackingOpt,
    check_output_or_exit,
    configure_tracking,
    error_console,
    fail,
    load_or_exit,
)

#: Exit codes of ``monitor``: no alert, an alert somewhere, no report (bad input or model).
EXIT_NO_ALERT, EXIT_ALERT, EXIT_NO_REPORT = EXIT_OK, EXIT_ERRORS, EXIT_UNREADABLE
_STYLE = {"ok": "green", "watch": "yellow", "alert": "bold red", "too_few": "dim"}


def monitor(
    sessions: SessionsOpt,
    clients: ClientsOpt,
    model: ModelOpt = DEFAULT_MODEL_URI,
    outcomes: Annotated[
        Path | None,
        typer.Option(
            "--outcomes",
            help="Outcomes that arrived after the extract (.csv, .csv.gz, .parquet): columns "
            "client_id, outcome (completed, dropout, ongoing). They override the clients "
            "file's outcome; realized AUROC, Brier and ECE are computed where an outcome is "
            "known.",
            metavar="<file>",
        ),
    ] = None,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Report folder (created): monitor.html, monitor.json and the PNG plots.",
            metavar="<directory>",
        ),
    ] = Path("monitor-report"),
    landmark: Annotated[
        int | None,
        typer.Option(
            "--landmark",
            min=1,
            help="Compare only the appointment numbered k. Default: the landmarks the model's "
            "reference was taken at (every appointment up to the model's last landmark, except "
            "an ended episode's last). The reference mixes every landmark, so with k, features "
            "that grow with the appointment number (counts) drift by construction.",
        ),
    ] = None,
    min_clients: Annotated[
        int,
        typer.Option(
            "--min-clients",
            "--min-rows",
            min=1,
            help="Fewest clients for a clinic's drift to be judged; below it: 'too few'. "
            "Clients, not rows: a client's rows at successive appointments are not independent. "
            "(--min-rows is the older name.)",
        ),
    ] = 200,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment the run is logged to.")
    ] = "alliance-risk-monitoring",
    profile: ProfileOpt = None,
    on_error: OnErrorOpt = "fail",
    quarantine_dir: QuarantineDirOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Monitor a model on new data: drift (PSI, KS) of each feature group and of the score per
    clinic, expected performance while outcomes are pending, realized performance once known.

    Exit code: 0 no alert, 1 an alert at some clinic (or overall), 2 no report (unreadable or
    invalid input, a model that cannot be loaded or has no reference profile, no row to score)
    or nothing judged (every clinic below --min-clients: the report is written, but "no alert"
    would mean nothing).
    """
    check_output_or_exit("--out", out, folder=True)
    try:
        cohort = load_or_exit(
            sessions, clients, profile=profile, on_error=on_error,
            quarantine_dir=quarantine_dir,
        )  # fmt: skip
    except typer.Exit as err:  # contract errors exit 1 elsewhere; here 1 means an alert
        raise typer.Exit(EXIT_NO_REPORT) from err
    from features.episodes import Episodes
    from training.io import read_table
    from training.monitor import labels_of, outcomes_from_table, unmatched_outcomes

    later = None
    if outcomes is not None:
        try:
            later = outcomes_from_table(read_table(outcomes))
        except (OSError, ValueError) as err:
            raise fail(
                f"[bold red]Cannot read input[/]: --outcomes: {escape(str(err))}", EXIT_NO_REPORT
            ) from None
    configure_tracking(tracking_uri)
    from mlflow.exceptions import MlflowException

    from models.pyfunc import load_scorer, resolve_model
    from models.scorer import IncompatibleModelError
    from training.monitor import NoReferenceError, NothingToJudgeError
    from training.monitor import monitor as run_monitor
    from training.monitor_report import log_monitor_run, write_report

    episodes = Episodes.from_frames(cohort.sessions, cohort.clients, cohort.profile)
    unmatched = unmatched_outcomes(episodes, later)
    try:
        with error_console().status("Loading the model"):
            ref = resolve_model(model)
            scorer = load_scorer(ref.uri)
        with error_console().status(f"Scoring and comparing {episodes.n_episodes} clients"):
            result = run_monitor(
                scorer, episodes, labels_of(episodes, later), model_name=ref.name,
                model_version=ref.version, landmark=landmark, min_clients=min_clients,
                unmatched_outcomes=unmatched,
            )  # fmt: skip
    except (MlflowException, OSError, LookupError) as err:
        message = f"[bold red]Cannot load model[/] {escape(model)}: {escape(str(err))}"
        raise fail(message, EXIT_NO_REPORT) from None
    except (IncompatibleModelError, NoReferenceError) as err:
        raise fail(f"[bold red]Cannot monitor[/]: {escape(str(err))}", EXIT_NO_REPORT) from None
    except NothingToJudgeError as err:
        raise fail(f"[bold red]Nothing to judge[/]: {escape(str(err))}", EXIT_NO_REPORT) from None
    try:
        with error_console().status("Writing the report"):
            files = write_report(result, out)
    except OSError as err:
        raise fail(
            f"[bold red]Cannot write output[/]: --out {escape(str(out))}: "
            f"{escape(err.strerror or type(err).__name__)}",
            EXIT_NO_REPORT,
        ) from None
    try:
        run_id = log_monitor_run(result, files, model_uri=ref.uri, experiment=experiment)
    except (MlflowException, OSError) as err:
        raise fail(
            f"[bold red]Cannot log the MLflow run[/] (the report is in {escape(str(out))}): "
            f"{escape(str(err))}",
            EXIT_NO_REPORT,
        ) from None
    _print_summary(result, files["html"], run_id)
    if result.alerts:
        raise typer.Exit(EXIT_ALERT)
    if result.status == "too_few":
        raise typer.Exit(EXIT_NO_REPORT)
    raise typer.Exit(EXIT_NO_ALERT)


def _print_summary(result: MonitorResult, html_file: Path, run_id: str) -> None:
    table = Table(title=f"Monitoring {result.model_name} v{result.model_version}")
    for col in ("clinic", "rows", "score PSI", "drifted groups", "exp. AUROC", "real. AUROC"):
        table.add_column(col, justify="left" if col in ("clinic", "drifted groups") else "right")
    for s in (result.overall, *result.clinics):
        flagged = [
            f"{g} ({d.status})" for g, d in s.drift.groups.items() if d.status in ("watch", "alert")
        ]
        d = s.drift.score
        table.add_row(
            escape(s.name),
            f"{s.n_rows:,}",
            f"[{_STYLE[d.status]}]{d.psi:.2f} {d.status}[/]",
            escape(", ".join(flagged)) or ("too few clients" if s.status == "too_few" else "none"),
            _number(s.pending.auroc),
            _number(s.realized.auroc) if s.realized else "–",
        )
    console = Console()
    console.print(table)
    if result.unmatched_outcomes:
        console.print(
            f"[yellow]{result.unmatched_outcomes} outcome(s) in --outcomes name a client that "
            "is not in --clients[/]: ignored (check that both files come from the same extract)."
        )
    alerts = result.alerts
    if alerts:
        headline = f"[bold red]{len(alerts)} alert(s)[/]"
    elif result.status == "too_few":
        headline = (
            f"[bold red]Nothing judged[/]: every clinic has fewer than {result.min_clients} "
            "clients (--min-clients), so 'no alert' would mean nothing; monitor a longer "
            "period, or lower --min-clients knowing that small samples are noisy"
        )
    else:
        headline = "[green]No alert[/]"
    console.print(f"{headline}. Report: {escape(str(html_file))} (MLflow run {run_id}).")


def _number(value: float) -> str:
    """Three decimals, or "–" when undefined (no pending row, a single outcome class)."""
    return f"{value:.3f}" if math.isfinite(value) else "–"


def register(app: typer.Typer) -> None:
    """Attach ``monitor`` to ``app``."""
    app.command("monitor")(monitor)
