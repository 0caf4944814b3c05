"""``alliance-risk token``: mint a short-lived dev-mode bearer token for local use.

The token goes to stdout alone, so ``TOKEN=$(alliance-risk token --clinic demo --scope
risk:read)`` works; everything else goes to stderr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from service.auth import SCOPES, SMART_ALIASES, AuthSettings, DevModeRefused, mint_dev_token

_SCOPE_HELP = ", ".join(sorted(SCOPES) + sorted(SMART_ALIASES))


def token(
    clinic: Annotated[str, typer.Option(help="Clinic the token may read (the clinic claim).")],
    scope: Annotated[list[str], typer.Option("--scope", help="Scope to grant; repeat for "
                     f"several. One of: {_SCOPE_HELP}.")],
    ttl: Annotated[int, typer.Option(min=1, max=86_400, help="Lifetime in seconds.")] = 3600,
    subject: Annotated[str, typer.Option(help="The sub claim (who the token stands for).")]
    = "dev-user",
    key_dir: Annotated[Path | None, typer.Option(help="Dev key directory. Default: "
                       "ALLIANCE_RISK_AUTH_DEV_KEY_DIR, else .alliance-risk/dev-keys in the "
                       "project root. Keys are created there if absent.",
                       metavar="<directory>")]  # checked below, in the one-line form
    = None,
) -> None:  # fmt: skip
    """Print a dev-mode token, accepted by a service running with ALLIANCE_RISK_AUTH_MODE=dev."""
    console = Console(stderr=True)
    folder = key_dir
    try:
        settings = AuthSettings(mode="dev")
        folder = key_dir or settings.dev_key_dir
        jwt_text = mint_dev_token(
            clinic,
            scope,
            ttl_s=ttl,
            sub=subject,
            key_dir=folder,
            clinic_claim=settings.clinic_claim,
        )
    except DevModeRefused as exc:
        console.print(f"[bold red]Refused[/]: {escape(str(exc))}")
        raise typer.Exit(1) from None
    except (ValueError, PermissionError) as exc:
        console.print(f"[bold red]Error[/]: {escape(str(exc))}")
        raise typer.Exit(2) from None
    except OSError as exc:  # the key folder cannot be created or written
        option = "--key-dir" if key_dir else "--key-dir (default)"
        exists = folder is not None and folder.exists() and not folder.is_dir()
        reason = "it exists and is not a folder" if exists else exc.strerror or type(exc).__name__
        console.print(
            f"[bold red]Cannot write output[/]: {option} {escape(str(folder))}: {escape(reason)}"
        )
        raise typer.Exit(2) from None
    configured = os.environ.get("ALLIANCE_RISK_AUTH_MODE", "")
    if configured and configured != "dev":
        console.print(
            f"[yellow]ALLIANCE_RISK_AUTH_MODE={configured}: a service started from this "
            "environment will not accept dev tokens.[/]"
        )
    console.print(
        f"[dim]Dev token for clinic {escape(repr(clinic))}, scopes {escape(' '.join(scope))}, "
        f"valid {ttl} s.[/]"
    )
    typer.echo(jwt_text)


def register(app: typer.Typer) -> None:
    """Attach ``token`` to ``app``."""
    app.command("token")(token)
