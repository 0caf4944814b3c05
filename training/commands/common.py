"""Options and helpers shared by the commands that read a cohort or a tracking store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from training.io import ContractError, LoadedCohort, load_cohort, write_problem_report

#: Offered as choices by typer; a test keeps it in step with features.profiles.PROFILES.
ProfileName = Literal["alliance6", "srs", "wai_sr"]
OnErrorName = Literal["fail", "quarantine"]

#: Exit codes shared by every command: 0 success, 1 refused/contract errors, 2 unusable input.
EXIT_OK, EXIT_ERRORS, EXIT_UNREADABLE = 0, 1, 2

SessionsOpt = Annotated[
    Path,
    typer.Option(
        "--sessions",
        help="Sessions file (.csv, .csv.gz, .parquet): one row per scheduled appointment.",
        dir_okay=False,
    ),
]
ClientsOpt = Annotated[
    Path,
    typer.Option(
        "--clients",
        help="Clients file (.csv, .csv.gz, .parquet): one row per episode of care.",
        dir_okay=False,
    ),
]
ProfileOpt = Annotated[
    ProfileName | None,
    typer.Option(
        "--profile",
        help="Instrument profile of the alliance_* ratings. Default: inferred from the "
        "alliance_* columns.",
    ),
]
OnErrorOpt = Annotated[
    OnErrorName,
    typer.Option(
        "--on-error",
        help="fail: stop on any contract error. quarantine: set aside every client episode "
        "with an error (client row and all its sessions) in quarantine CSVs and continue "
        "with the clean rest.",
    ),
]
QuarantineDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--quarantine-dir",
        help="Where sessions.quarantine.csv and clients.quarantine.csv go. "
        "Default: quarantine/ next to the sessions file.",
        file_okay=False,
    ),
]
ExperimentOpt = Annotated[
    str, typer.Option("--experiment", help="MLflow experiment the run is logged to.")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        help="MLflow tracking server or database. Default: the embedded SQLite store in "
        ".mlflow/ of the project (env MLFLOW_TRACKING_URI).",
        show_default=False,
    ),
]


def load_or_exit(
    console: Console,
    sessions: Path,
    clients: Path,
    *,
    profile: str | None = None,
    on_error: OnErrorName = "fail",
    quarantine_dir: Path | None = None,
    report: Path | None = None,
) -> LoadedCohort:
    """Load and validate a cohort, or print the contract report and exit non-zero."""
    try:
        cohort = load_cohort(
            sessions, clients, profile=profile, on_error=on_error, quarantine_dir=quarantine_dir
        )
    except ContractError as err:
        console.print(str(err), markup=False, highlight=False)
        if report is not None:
            write_problem_report(err.report, report, err.files)
        console.print("Run `alliance-risk validate` for the full report.")
        raise typer.Exit(EXIT_ERRORS) from None
    except (OSError, ValueError) as err:
        console.print(f"[bold red]Cannot read input[/]: {err}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    if cohort.quarantine_files:
        console.print(
            f"Quarantined {cohort.clients_quarantined} client episodes "
            f"({cohort.sessions_quarantined} session rows) to "
            f"{cohort.quarantine_files['sessions'].parent}; continuing with the rest."
        )
    return cohort


def configure_tracking(uri: str | None) -> str:
    """Point MLflow at ``uri`` or the embedded store; returns the URI in force."""
    from training.tracking import configure_mlflow

    return configure_mlflow(uri=uri).tracking_uri
