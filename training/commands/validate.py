"""``alliance-risk validate``: check a cohort's two files against the data contract."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from features.validation import ValidationReport
from training.commands.common import (
    EXIT_ERRORS,
    EXIT_UNREADABLE,
    ClientsOpt,
    OnErrorName,
    ProfileOpt,
    QuarantineDirOpt,
    SessionsOpt,
    check_output_or_exit,
    check_quarantine_or_exit,
    fail,
)
from training.io import (
    ContractError,
    LoadedCohort,
    OutputError,
    load_cohort,
    problems_frame,
    write_problem_report,
)


def _text(frame: pd.DataFrame) -> list[dict[str, Text]]:
    """Rows of ``frame`` as literal display text (no rich markup), missing shown empty."""
    records = frame.astype("string").fillna("").to_dict("records")
    return [{str(k): Text(str(val)) for k, val in rec.items()} for rec in records]


def _problems_table(report: ValidationReport, files: dict[str, Path], show: int) -> Table:
    frame = problems_frame(report, files).head(show)
    table = Table(
        title=f"First {len(frame)} of {len(report.problems)} problems", title_justify="left"
    )
    columns = ("row", "line", "column", "severity", "reason")
    table.add_column("file")
    for name in columns:
        table.add_column(name, overflow="fold")
    for rec in _text(frame):
        table.add_row(Text(files[str(rec["table"])].name), *(rec[name] for name in columns))
    return table


def _summary_table(report: ValidationReport, files: dict[str, Path]) -> Table:
    table = Table(title="Problems by table, column and reason", title_justify="left")
    columns = ("column", "severity", "reason", "rows")
    table.add_column("file")
    for name in columns:
        table.add_column(name, overflow="fold", justify="right" if name == "rows" else "left")
    for rec in _text(report.summary()):
        table.add_row(Text(files[str(rec["table"])].name), *(rec[name] for name in columns))
    return table


def _render(console: Console, report: ValidationReport, files: dict[str, Path], show: int) -> None:
    if report.problems and show > 0:
        console.print(_problems_table(report, files, show))
    if report.problems:
        console.print(_summary_table(report, files))


def _quarantine_summary(console: Console, cohort: LoadedCohort) -> None:
    console.print(
        f"Quarantined {cohort.sessions_quarantined} of {cohort.sessions_read} session rows "
        f"and {cohort.clients_quarantined} of {cohort.clients_read} client rows "
        f"(whole episodes) to {cohort.quarantine_files['sessions'].parent}.",
        markup=False,
    )
    console.print(
        f"Continuing with {len(cohort.sessions)} session rows and {len(cohort.clients)} "
        f"client rows ({cohort.profile.name} profile)."
    )


def validate(
    sessions: SessionsOpt,
    clients: ClientsOpt,
    profile: ProfileOpt = None,
    on_error: Annotated[
        OnErrorName,
        typer.Option(
            "--on-error",
            help="fail: exit 1 on any error. quarantine: write every client episode with an "
            "error (client row and all its sessions) and orphan session rows to quarantine "
            "CSVs, report the counts and exit 0.",
        ),
    ] = "fail",
    quarantine_dir: QuarantineDirOpt = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write every problem as CSV with columns table, row, line, column, severity, "
            "reason "
            "(row: 1-based data row; line: CSV file line, header is line 1).",
            metavar="<file>",  # checked by check_output_or_exit, as every output
        ),
    ] = None,
    show: Annotated[
        int,
        typer.Option("--show", min=0, help="How many problems to list on screen (0: none)."),
    ] = 50,
) -> None:
    """Check a sessions file and a clients file against the data contract.

    Lists every problem with file, row, column and reason (never the cell's value), then the counts by reason.

    Exit 0 when clean (warnings allowed) or after quarantining, 1 on contract errors, 2 when a file cannot be read.
    """
    console = Console()
    files = {"sessions": sessions, "clients": clients}
    check_output_or_exit("--report", report)
    check_quarantine_or_exit(on_error, sessions, quarantine_dir)
    try:
        cohort = load_cohort(
            sessions, clients, profile=profile, on_error=on_error, quarantine_dir=quarantine_dir
        )
    except ContractError as err:
        _render(console, err.report, files, show)
        if report is not None:
            write_problem_report(err.report, report, files)
        # The tables above are the result (stdout); the verdict is the refusal (stderr).
        verdict = (
            f"[bold red]FAILED[/]: {len(err.report.errors)} errors, "
            f"{len(err.report.warnings)} warnings."
        )
        if err.report.table_errors and on_error == "quarantine":
            verdict += "\nTable-level errors (e.g. a missing column) cannot be quarantined."
        raise fail(verdict, EXIT_ERRORS) from None
    except OutputError as err:
        raise fail(
            f"[bold red]Cannot write output[/]: --quarantine-dir: {escape(str(err))}",
            EXIT_UNREADABLE,
        ) from None
    except (OSError, ValueError) as err:
        raise fail(f"[bold red]Cannot read input[/]: {escape(str(err))}", EXIT_UNREADABLE) from None

    _render(console, cohort.report, files, show)
    if report is not None:
        write_problem_report(cohort.report, report, files)
    if cohort.quarantine_files:
        _quarantine_summary(console, cohort)
    status = "[bold green]OK[/]" if cohort.report.ok else "[bold yellow]QUARANTINED[/]"
    console.print(
        f"{status}: read {cohort.sessions_read} session rows and {cohort.clients_read} client "
        f"rows; {len(cohort.report.errors)} errors, {len(cohort.report.warnings)} warnings."
    )


def register(app: typer.Typer) -> None:
    """Attach ``validate`` to ``app``."""
    app.command("validate")(validate)
