"""``alliance-risk simulate``: write a synthetic cohort (sessions and clients tables) to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from features import contract as c
from training.commands.common import ProfileName, check_output_or_exit, error_console
from training.simulate import Cohort, SimulationConfig, simulate_cohort, write_cohort

#: Offered as choices by typer; a test keeps it in step with features.profiles.PROFILES.
FileFormat = Literal["csv", "parquet"]

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
) -> None:
    """Simulate a literature-grounded cohort and write its sessions and clients tables."""
    check_output_or_exit("--out", out, folder=True)
    config = SimulationConfig(dropout_rate=dropout_rate)
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
        bar.update(task, total=1, completed=1)
    Console().print(_summary(cohort, written))


def register(app: typer.Typer) -> None:
    """Attach ``simulate`` to the ``alliance-risk`` app."""
    app.command("simulate")(simulate)
