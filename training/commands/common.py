"""Options and helpers shared by the commands that read a cohort or a tracking store."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from training.io import (
    ContractError,
    LoadedCohort,
    OutputError,
    load_cohort,
    quarantine_folder,
    write_problem_report,
)
from training.registry import CHAMPION_ALIAS
from training.tracking import DEFAULT_MODEL_NAME

#: Offered as choices by typer; a test keeps it in step with features.profiles.PROFILES.
ProfileName = Literal["alliance6", "srs", "wai_sr"]
OnErrorName = Literal["fail", "quarantine"]

#: Exit codes shared by every command: 0 success, 1 refused/contract errors, 2 unusable input.
EXIT_OK, EXIT_ERRORS, EXIT_UNREADABLE = 0, 1, 2

#: What ``score`` and ``evaluate`` use unless told otherwise: the promoted model, as the API.
DEFAULT_MODEL_URI = f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION_ALIAS}"

SessionsOpt = Annotated[
    Path,
    typer.Option(
        "--sessions",
        help="Sessions file (.csv, .csv.gz, .parquet): one row per scheduled appointment.",
        metavar="<file>",  # a folder is refused by read_table, as every unreadable input
    ),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Model URI: the promoted model by default, or a version such as "
        "models:/alliance-risk/3.",
    ),
]
ClientsOpt = Annotated[
    Path,
    typer.Option(
        "--clients",
        help="Clients file (.csv, .csv.gz, .parquet): one row per episode of care.",
        metavar="<file>",
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
        # Checked by check_quarantine_or_exit, not click, so that it fails like every output.
        metavar="<directory>",
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
        ".mlflow/ of the project checkout; outside one, in $XDG_DATA_HOME/alliance-risk/"
        ".mlflow/ (~/.local/share/alliance-risk/.mlflow/), whatever the current folder "
        "(env MLFLOW_TRACKING_URI).",
        show_default=False,
    ),
]


def unwritable_reason(path: Path, *, folder: bool = False) -> str | None:
    """Why the file (or, with ``folder``, the folder) ``path`` cannot be written, else None.

    Creates nothing: the nearest existing folder on the way is probed with a temporary file,
    which also catches read-only mounts and holds for root, whom permission bits do not stop.
    """
    if path.is_dir() and not folder:
        return "it is a folder"
    if path.exists() and folder and not path.is_dir():
        return "it exists and is not a folder"
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a folder"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        return f"cannot create files in {probe} ({err.strerror or type(err).__name__})"
    if not folder and path.exists() and not os.access(path, os.W_OK):
        return "the file is read-only"
    return None


def error_console() -> Console:
    """Where errors, refusals, warnings and progress go: stderr, so that stdout holds results.

    Made per call: rich then writes to the ``sys.stderr`` of the moment (a test runner's too).
    """
    return Console(stderr=True)


def fail(message: str, code: int) -> typer.Exit:
    """Print the one-line ``message`` (rich markup) on stderr; returns the Exit to raise."""
    error_console().print(message)
    return typer.Exit(code)


def check_output_or_exit(option: str, path: Path | None, *, folder: bool = False) -> None:
    """Exit 2 with a message naming ``option`` unless ``path`` can be written (None: no output).

    Called before any work, so that a long run does not end in an unwritable output. An
    existing folder where a file goes (or the reverse) is reported here too, in the same form.
    """
    if path is None:
        return
    reason = unwritable_reason(path, folder=folder)
    if reason is not None:
        raise fail(
            f"[bold red]Cannot write output[/]: {option} {escape(str(path))}: {escape(reason)}",
            EXIT_UNREADABLE,
        )


def check_quarantine_or_exit(on_error: str, sessions: Path, quarantine_dir: Path | None) -> None:
    """In quarantine mode, exit 2 unless the quarantine folder (given or default) is writable."""
    if on_error == "quarantine":
        folder = quarantine_folder(sessions, quarantine_dir)
        option = "--quarantine-dir" if quarantine_dir else "--quarantine-dir (default)"
        check_output_or_exit(option, folder, folder=True)


def load_or_exit(
    sessions: Path,
    clients: Path,
    *,
    profile: str | None = None,
    on_error: OnErrorName = "fail",
    quarantine_dir: Path | None = None,
    report: Path | None = None,
) -> LoadedCohort:
    """Load and validate a cohort, or print the contract report on stderr and exit non-zero."""
    check_output_or_exit("--report", report)
    check_quarantine_or_exit(on_error, sessions, quarantine_dir)
    errors = error_console()
    try:
        cohort = load_cohort(
            sessions, clients, profile=profile, on_error=on_error, quarantine_dir=quarantine_dir
        )
    except ContractError as err:
        errors.print(str(err), markup=False, highlight=False)
        if report is not None:
            write_problem_report(err.report, report, err.files)
        raise fail("Run `alliance-risk validate` for the full report.", EXIT_ERRORS) from None
    except OutputError as err:
        raise fail(
            f"[bold red]Cannot write output[/]: --quarantine-dir: {escape(str(err))}",
            EXIT_UNREADABLE,
        ) from None
    except (OSError, ValueError) as err:
        raise fail(f"[bold red]Cannot read input[/]: {escape(str(err))}", EXIT_UNREADABLE) from None
    if cohort.quarantine_files:
        errors.print(
            f"Quarantined {cohort.clients_quarantined} client episodes "
            f"({cohort.sessions_quarantined} session rows) to "
            f"{escape(str(cohort.quarantine_files['sessions'].parent))}; continuing with the rest."
        )
    return cohort


def configure_tracking(uri: str | None) -> str:
    """Point MLflow at ``uri`` or the embedded store; returns the URI in force."""
    from training.tracking import configure_mlflow

    return configure_mlflow(uri=uri).tracking_uri
