"""``alliance-risk simulate``: write a synthetic cohort (sessions and clients tables) to a folder."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from features import contract as c
from training.commands.common import (
    EXIT_UNREADABLE,
    ProfileName,
    check_output_or_exit,
    error_console,
    fail,
)
from training.simulate import (
    Cohort,
    SimulationConfig,
    simulate_cohort,
    simulate_truth,
    write_cohort,
)

#: Offered as choices by typer; a test keeps it in step with features.profiles.PROFILES.
FileFormat = Literal["csv", "parquet"]

#: Subfolder of ``--out`` that ``--with-truth`` writes the fully followed tables to.
TRUTH_FOLDER = "truth"

_STAGES = {
    "calibrating": "Solving the dropout intercept",
    "simulating": "Simulating appointment slots",
    "assembling": "Building tables",
}


def _summary(cohort: Cohort, written: dict[str, Path]) -> Table:
    """Counts and outcome shares of ``cohort`` plus the files written, as a rich table."""
    clients = cohort.clients
    shares = clients[c.OUTCOME].value_counts(normalize=True)
    ended = clients[clients[c.OUTCOME] != c.ONGOING]
    dropout_ended = (ended[c.OUTCOME] == c.DROPOUT).mean() if len(ended) else float("nan")
    table = Table(title=f"Simulated cohort ({cohort.profile.name})", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("clients", f"{len(clients):,}")
    table.add_row("sessions (booked appointments)", f"{len(cohort.sessions):,}")
    for outcome in c.OUTCOME_CODES:
        table.add_row(f"{outcome} share", f"{shares.get(outcome, 0.0):.1%}")
    table.add_row("dropout share of ended episodes", f"{dropout_ended:.1%}")
    table.add_row("extraction date", cohort.extraction_date.date().isoformat())
    for name, path in written.items():
        table.add_row(f"{name} file", str(path))
    return table


def simulate(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output folder (created if missing).",
            metavar="<directory>",  # checked by check_output_or_exit, as every output
        ),
    ],
    clients: Annotated[
        int, typer.Option("--clients", min=1, help="Number of clients (episodes of care).")
    ] = 2000,
    seed: Annotated[
        int,
        typer.Option("--seed", min=0, help="Random seed; the same seed gives identical files."),
    ] = 7,
    profile: Annotated[
        ProfileName,
        typer.Option("--profile", help="Instrument the alliance ratings are recorded on."),
    ] = "alliance6",
    dropout_rate: Annotated[
        float,
        typer.Option(
            "--dropout-rate",
            min=0.02,
            max=0.8,
            help="Share of dropouts among episodes ended by the extraction date.",
        ),
    ] = SimulationConfig.dropout_rate,
    fmt: Annotated[
        FileFormat, typer.Option("--format", help="File format of the written tables.")
    ] = "csv",
    with_latent: Annotated[
        bool,
        typer.Option(
            "--with-latent",
            help="Also write latent.* and ruptures.* (the true generative quantities).",
        ),
    ] = False,
    enrolment_days: Annotated[
        int,
        typer.Option(
            "--enrolment-days",
            min=1,
            help="Intakes are spread over this many days up to two weeks before the extraction "
            "date. Shorter windows censor more, and by intake date: 900 leaves ~10% of episodes "
            "ongoing, 360 ~27%, 240 ~40%.",
            rich_help_panel="Censoring",
        ),
    ] = SimulationConfig.enrolment_days,
    with_truth: Annotated[
        bool,
        typer.Option(
            "--with-truth",
            help="Also write truth/sessions.* and truth/clients.*: the same episodes followed "
            "to their end (the eventual outcome of every ongoing client), for measuring what "
            "censoring does to a model. Never train on them.",
            rich_help_panel="Censoring",
        ),
    ] = False,
    drift_clinic: Annotated[
        str | None,
        typer.Option(
            "--drift-clinic",
            help="Drift scenarios apply at this clinic only (K01, K02, ...). Default: every "
            "clinic.",
            rich_help_panel="Drift scenarios (for testing alliance-risk monitor)",
        ),
    ] = None,
    drift_from: Annotated[
        datetime | None,
        typer.Option(
            "--drift-from",
            formats=["%Y-%m-%d"],
            help="Drift starts at this date (YYYY-MM-DD): sessions on or after it (ratings, "
            "instrument), clients with intake on or after it (no-shows). Default: from the "
            "start.",
            rich_help_panel="Drift scenarios (for testing alliance-risk monitor)",
        ),
    ] = None,
    rating_shift: Annotated[
        float,
        typer.Option(
            "--rating-shift",
            help="Points added to every recorded rating (e.g. -1: the clinic's ratings fall "
            "by one point; clipped to the scale). A measurement change: dropout does not "
            "follow it.",
            rich_help_panel="Drift scenarios (for testing alliance-risk monitor)",
        ),
    ] = 0.0,
    instrument_change: Annotated[
        ProfileName | None,
        typer.Option(
            "--instrument-change",
            help="The clinic records this instrument instead (e.g. srs at an alliance6 "
            "cohort): items are mapped by construct, the elements it lacks are left empty.",
            rich_help_panel="Drift scenarios (for testing alliance-risk monitor)",
        ),
    ] = None,
    noshow_log_odds: Annotated[
        float,
        typer.Option(
            "--noshow-log-odds",
            help="Log-odds added to the no-show propensity (1.0 about doubles the no-show "
            "share); dropout follows through the no-shows.",
            rich_help_panel="Drift scenarios (for testing alliance-risk monitor)",
        ),
    ] = 0.0,
) -> None:
    """Simulate a literature-grounded cohort and write its sessions and clients tables.

    The drift options make a cohort that no longer looks like the default one (a clinic whose
    ratings shift, an instrument change, a rise in no-shows), to test `alliance-risk monitor`.
    The censoring options make many episodes still running at extraction (--enrolment-days)
    and write their eventual outcomes apart (--with-truth), to test how training handles them.
    """
    check_output_or_exit("--out", out, folder=True)
    try:
        config = SimulationConfig(
            dropout_rate=dropout_rate,
            enrolment_days=enrolment_days,
            drift_clinic=drift_clinic,
            drift_from=drift_from.date() if drift_from else None,
            rating_shift=rating_shift,
            instrument_change=instrument_change,
            noshow_log_odds=noshow_log_odds,
        )
    except ValueError as err:
        raise fail(f"[bold red]Invalid option[/]: {escape(str(err))}", EXIT_UNREADABLE) from None
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=error_console(),
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(_STAGES.get(stage, stage), total=total)
            bar.update(tasks[stage], completed=done, total=total)

        cohort = simulate_cohort(
            clients, seed=seed, profile=profile, config=config, progress=on_progress
        )
        task = bar.add_task("Writing files", total=None)
        written = write_cohort(cohort, out, fmt=fmt, with_latent=with_latent)
        if with_truth:
            truth = simulate_truth(clients, seed=seed, profile=profile, config=config)
            truth_files = write_cohort(truth, out / TRUTH_FOLDER, fmt=fmt)
            written |= {f"truth {name}": truth_files[name] for name in ("sessions", "clients")}
        bar.update(task, total=1, completed=1)
    Console().print(_summary(cohort, written))


def register(app: typer.Typer) -> None:
    """Attach ``simulate`` to the ``alliance-risk`` app."""
    app.command("simulate")(simulate)
