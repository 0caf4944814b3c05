"""``alliance-risk score``: batch scoring of every client through the same scorer as the API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape

from training.commands.common import (
    DEFAULT_MODEL_URI,
    EXIT_ERRORS,
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
from training.commands.train import DaskWorkersOpt, SchedulerOpt, check_dask_inputs_or_exit


def score(
    sessions: SessionsOpt,
    clients: ClientsOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output file (.csv or .parquet), one row per client. With --engine dask: a "
            "folder, written as a Parquet dataset (part.<i>.parquet, one file per client "
            "partition).",
            metavar="<file>",  # checked by check_output_or_exit, as every output
        ),
    ],
    model: ModelOpt = DEFAULT_MODEL_URI,
    landmark: Annotated[
        int | None,
        typer.Option(
            "--landmark",
            min=1,
            help="Score every client at the appointment numbered k (clients with no appointment "
            "numbered k are left out and counted). Default: each client's latest appointment.",
        ),
    ] = None,
    include_ended: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Score every client. Default: open episodes only (outcome 'ongoing'), the "
            "caseload.",
        ),
    ] = False,
    profile: ProfileOpt = None,
    on_error: OnErrorOpt = "fail",
    quarantine_dir: QuarantineDirOpt = None,
    tracking_uri: TrackingOpt = None,
    engine: Annotated[
        Literal["pandas", "dask"],
        typer.Option(
            "--engine",
            help="pandas: one process. dask: Parquet files or dataset folders in, a Parquet "
            "dataset folder out, each client partition scored on a Dask worker by the same "
            "scorer; only counts come back to the driver.",
        ),
    ] = "pandas",
    scheduler: SchedulerOpt = None,
    dask_workers: DaskWorkersOpt = 2,
) -> None:
    """Score the caseload: probability, risk band and the top 3 drivers of each open episode.

    Output columns: client_id, clinic_id, therapist_id, landmark, probability, risk_band,
    base_probability, space, scored_at, then for i = 1..3: group_i, contribution_i (signed, in
    `space`), driver_i (the reason in clinician language, with its numbers) and focus_i (the
    alliance-building focus; empty for attendance and engagement); model_name, model_version.
    """
    console = Console()
    if engine == "dask":
        _score_with_dask(
            console, sessions, clients, out, model=model, landmark=landmark,
            include_ended=include_ended, profile=profile, on_error=on_error,
            tracking_uri=tracking_uri, scheduler=scheduler, workers=dask_workers,
        )  # fmt: skip
        return
    check_output_or_exit("--out", out)
    cohort = load_or_exit(
        sessions, clients, profile=profile, on_error=on_error,
        quarantine_dir=quarantine_dir,
    )  # fmt: skip
    configure_tracking(tracking_uri)
    from mlflow.exceptions import MlflowException

    from models.scorer import IncompatibleModelError
    from training.scoring import score_cohort

    try:
        with error_console().status(f"Scoring {len(cohort.clients)} clients"):
            result = score_cohort(
                model, cohort.sessions, cohort.clients, cohort.profile,
                landmark=landmark, include_ended=include_ended,
            )  # fmt: skip
    except (MlflowException, OSError, LookupError) as err:
        message = f"[bold red]Cannot load model[/] {escape(model)}: {escape(str(err))}"
        raise fail(message, EXIT_UNREADABLE) from None
    except IncompatibleModelError as err:
        raise fail(f"[bold red]Incompatible model[/]: {escape(str(err))}", EXIT_ERRORS) from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".parquet":
            result.frame.to_parquet(out, index=False)
        else:
            result.frame.to_csv(out, index=False)
    except OSError as err:
        raise fail(
            f"[bold red]Cannot write output[/]: --out {escape(str(out))}: "
            f"{escape(err.strerror or type(err).__name__)}",
            EXIT_UNREADABLE,
        ) from None
    bands = {str(b): int(n) for b, n in result.frame["risk_band"].value_counts().items()}
    _print_scored(console, result, bands, len(result.frame), landmark, out)


def _print_scored(
    console: Console, result: Any, bands: dict[str, int], rows: int, landmark: int | None,
    out: Path,
) -> None:  # fmt: skip
    """The one-line summary: scored clients per band, and who was not scored and why."""
    left_out = [
        f"{result.skipped_ended} ended episodes (--all scores them)" if result.skipped_ended else "",
        f"{result.no_appointments} clients with no appointment yet"
        if result.no_appointments else "",
        f"{result.not_at_landmark} clients had no appointment numbered {landmark}"
        if result.not_at_landmark else "",
        f"{result.refused} clients broke the data contract" if result.refused else "",
    ]  # fmt: skip
    console.print(
        f"Scored {rows} clients with {result.model_name} v{result.model_version}: "
        + ", ".join(f"{bands.get(b, 0)} {b}" for b in ("high", "moderate", "low"))
        + "".join(f"; not scored: {text}" for text in left_out if text)
        + f". Written to {escape(str(out))}."
    )


def _score_with_dask(
    console: Console,
    sessions: Path,
    clients: Path,
    out: Path,
    *,
    model: str,
    landmark: int | None,
    include_ended: bool,
    profile: str | None,
    on_error: str,
    tracking_uri: str | None,
    scheduler: str | None,
    workers: int,
) -> None:
    """``score --engine dask``: load the model once, score each client partition on the
    workers, write a Parquet dataset folder."""
    check_output_or_exit("--out", out, folder=True)
    check_dask_inputs_or_exit(sessions, clients, on_error)
    configure_tracking(tracking_uri)
    from mlflow.exceptions import MlflowException

    from models.pyfunc import load_scorer, resolve_model
    from models.scorer import IncompatibleModelError
    from training.dask_engine import dask_client, score_dask

    try:
        ref = resolve_model(model)
        scorer = load_scorer(ref.uri)
    except (MlflowException, OSError, LookupError) as err:
        message = f"[bold red]Cannot load model[/] {escape(model)}: {escape(str(err))}"
        raise fail(message, EXIT_UNREADABLE) from None
    try:
        with (
            error_console().status("Scoring client partitions on Dask"),
            dask_client(scheduler, workers=workers) as client,
        ):
            result = score_dask(
                client, scorer, sessions, clients, out, model_name=ref.name,
                model_version=ref.version, profile=profile, landmark=landmark,
                include_ended=include_ended,
            )  # fmt: skip
    except IncompatibleModelError as err:
        raise fail(f"[bold red]Incompatible model[/]: {escape(str(err))}", EXIT_ERRORS) from None
    except ValueError as err:
        raise fail(f"[bold red]Cannot score[/]: {escape(str(err))}", EXIT_ERRORS) from None
    except OSError as err:
        raise fail(
            f"[bold red]Cannot score[/]: {escape(err.strerror or type(err).__name__)}",
            EXIT_UNREADABLE,
        ) from None
    _print_scored(console, result.totals, result.bands, result.rows, landmark, out)


def register(app: typer.Typer) -> None:
    """Attach ``score`` to ``app``."""
    app.command("score")(score)
