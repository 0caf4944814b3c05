"""``alliance-risk score``: batch scoring of every client through the same scorer as the API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from training.commands.common import (
    EXIT_ERRORS,
    EXIT_UNREADABLE,
    ClientsOpt,
    OnErrorOpt,
    ProfileOpt,
    QuarantineDirOpt,
    SessionsOpt,
    TrackingOpt,
    configure_tracking,
    load_or_exit,
)


def score(
    model: Annotated[
        str,
        typer.Option("--model", help="Model URI, e.g. models:/alliance-risk@champion."),
    ],
    sessions: SessionsOpt,
    clients: ClientsOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Output file (.csv or .parquet), one row per client.", dir_okay=False
        ),
    ],
    landmark: Annotated[
        int | None,
        typer.Option(
            "--landmark",
            min=1,
            help="Score every client at appointment k (clients with fewer appointments are "
            "left out and counted). Default: each client's latest appointment.",
        ),
    ] = None,
    profile: ProfileOpt = None,
    on_error: OnErrorOpt = "fail",
    quarantine_dir: QuarantineDirOpt = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Score every client: probability, risk band, landmark, model version, top 3 groups.

    Output columns: client_id, landmark, probability, risk_band, base_probability, space,
    group_1..3 with contribution_1..3 (signed, in `space`), model_name, model_version.
    """
    console = Console()
    cohort = load_or_exit(
        console, sessions, clients, profile=profile, on_error=on_error,
        quarantine_dir=quarantine_dir,
    )  # fmt: skip
    configure_tracking(tracking_uri)
    from mlflow.exceptions import MlflowException

    from models.scorer import IncompatibleModelError
    from training.scoring import score_cohort

    try:
        result = score_cohort(model, cohort.sessions, cohort.clients, landmark=landmark)
    except (MlflowException, OSError) as err:
        console.print(f"[bold red]Cannot load model[/] {model}: {err}")
        raise typer.Exit(EXIT_UNREADABLE) from None
    except IncompatibleModelError as err:
        console.print(f"[bold red]Incompatible model[/]: {err}")
        raise typer.Exit(EXIT_ERRORS) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".parquet":
        result.frame.to_parquet(out, index=False)
    else:
        result.frame.to_csv(out, index=False)
    bands = result.frame["risk_band"].value_counts()
    console.print(
        f"Scored {len(result.frame)} clients with {result.model_name} v{result.model_version}: "
        + ", ".join(f"{bands.get(b, 0)} {b}" for b in ("high", "moderate", "low"))
        + (f"; {result.not_scored} clients had no appointment {landmark}" if landmark else "")
        + f". Written to {out}."
    )


def register(app: typer.Typer) -> None:
    """Attach ``score`` to ``app``."""
    app.command("score")(score)
