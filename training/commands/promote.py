"""``alliance-risk promote``: move the ``champion`` alias to a version that passes the gates."""

from __future__ import annotations

import math
from pathlib import Path
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
    from training.promotion import PromotionOutcome, ShadowEvidence


def render_shadow(console: Console, shadow: ShadowEvidence) -> None:
    """The shadow comparison, as a table beside the gates; it informs, it does not gate."""
    against = f"champion v{shadow.champion_version}" if shadow.champion_version else "no champion"
    table = Table(
        title=f"Shadow comparison: v{shadow.challenger_version} as challenger vs {against} "
        "(informs, does not gate)"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")

    def share(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.1%}"

    def prob(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{x:.4f}"

    for measure, value in (
        ("comparisons", f"{shadow.comparisons:,}"),
        ("first comparison", shadow.first_at or "n/a"),
        ("last comparison", shadow.last_at or "n/a"),
        ("mean |p_champion - p_challenger|", prob(shadow.mean_abs_difference)),
        ("95th percentile |p_champion - p_challenger|", prob(shadow.p95_abs_difference)),
        ("same risk band", share(shadow.band_agreement)),
        ("moved into high", share(shadow.into_high)),
        ("moved out of high", share(shadow.out_of_high)),
        ("lines of other versions (not summarised)", f"{shadow.other_lines:,}"),
    ):
        table.add_row(measure, value)
    console.print(table)
    if shadow.comparisons == 0:
        console.print(
            f"[yellow]No shadow comparisons of v{shadow.challenger_version} against {against} "
            "in the files given[/]: was it the challenger while the service ran?"
        )


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
    if outcome.shadow is not None:
        render_shadow(console, outcome.shadow)
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
    shadow_log: Annotated[
        list[Path] | None,
        typer.Option(
            "--shadow-log",
            exists=True,
            dir_okay=False,
            readable=True,
            help="A shadow comparison file of the service (ALLIANCE_RISK_SHADOW_LOG_PATH; repeat "
            "for its rotated .1). Its summary for this version against the champion is shown "
            "with the gates and recorded in the promotion.shadow tag; it informs, it does not "
            "gate.",
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Gate a registered version against the champion on its test rows, then move the alias.

    Gates: AUROC not worse than the champion's by more than 0.01; ECE at most 0.05; no
    subgroup (clinic, therapist, age band, gender, referral source) with at least 200 test rows
    has ECE above 0.10. Every decision, refused or forced, is recorded in the version's tags.

    With --shadow-log, the live comparison of this version (run as the service's challenger)
    with the champion is shown and recorded beside the gates, without deciding anything: it
    measures disagreement, not accuracy.
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
        outcome = promote_version(
            name, version, force=force, reason=reason, shadow_logs=shadow_log or ()
        )
    except (MlflowException, ValueError, OSError) as err:
        raise fail(f"[bold red]Cannot promote[/]: {escape(str(err))}", EXIT_UNREADABLE) from None
    if not render_promotion(console, outcome):
        raise typer.Exit(EXIT_ERRORS)


def register(app: typer.Typer) -> None:
    """Attach ``promote`` to ``app``."""
    app.command("promote")(promote)
