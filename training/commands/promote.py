"""``alliance-risk promote``: move the ``champion`` alias to a version that passes the gates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from training.commands.common import (
    EXIT_ERRORS,
    EXIT_UNREADABLE,
    TrackingOpt,
    configure_tracking,
    error_console,
    fail,
)
from training.tracking import DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    from training.promotion import PromotionOutcome


def render_promotion(console: Console, outcome: PromotionOutcome) -> bool:
    """Print the gate checks and the decision; True when the version is (now) the champion.

    A refusal goes to stderr, as every command's refusals; the table and a promotion to ``console``.
    """
    if outcome.already_champion:
        console.print(f"Version {outcome.version} of {outcome.name} is already the champion.")
        return True
    if outcome.gate is not None:
        table = Table(title=f"Promotion gates for {outcome.name} v{outcome.version}")
        for col in ("check", "value", "threshold", "passed", "detail"):
            table.add_column(col, overflow="fold")
        for check in outcome.gate.checks:
            table.add_row(
                check.name,
                "n/a" if check.value is None else f"{check.value:.4f}",
                f"{check.threshold:.4f}",
                "[green]yes[/]" if check.passed else "[red]no[/]",
                check.detail,
            )
        console.print(table)
    result = outcome.result
    if result is not None and result.promoted:
        forced = " (FORCED: gates did not pass)" if result.forced else ""
        console.print(
            f"[bold green]Promoted[/] {outcome.name} v{outcome.version} to champion{forced}; "
            f"previous champion: {outcome.previous_champion or 'none'}."
        )
        return True
    error_console().print(
        f"[bold red]Refused[/]: {outcome.name} v{outcome.version} did not pass the gates; the "
        f"champion stays {outcome.previous_champion or 'unset'}. Use --force --reason TEXT to "
        "override (recorded on the version)."
    )
    return False


def promote(
    name: Annotated[
        str, typer.Option("--name", help="Registered model name.")
    ] = DEFAULT_MODEL_NAME,
    version: Annotated[
        str | None, typer.Option("--version", help="Version to promote. Default: the latest.")
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Promote even if the gates fail; needs --reason."),
    ] = False,
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why (required with --force; recorded as a version tag)."),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Gate a registered version against the champion on its test rows, then move the alias.

    Gates: AUROC not worse than the champion's by more than 0.01; ECE at most 0.05; no
    subgroup (clinic, therapist, age band, gender, referral source) with at least 200 test rows
    has ECE above 0.10. Every decision, refused or forced, is recorded in the version's tags.
    """
    console = Console()
    if force and not (reason or "").strip():
        raise fail(
            "[bold red]--force needs --reason TEXT[/] (it is recorded on the version).",
            EXIT_UNREADABLE,
        )
    configure_tracking(tracking_uri)
    from mlflow.exceptions import MlflowException

    from training.promotion import promote_version

    try:
        outcome = promote_version(name, version, force=force, reason=reason)
    except (MlflowException, ValueError) as err:
        raise fail(f"[bold red]Cannot promote[/]: {escape(str(err))}", EXIT_UNREADABLE) from None
    if not render_promotion(console, outcome):
        raise typer.Exit(EXIT_ERRORS)


def register(app: typer.Typer) -> None:
    """Attach ``promote`` to ``app``."""
    app.command("promote")(promote)
