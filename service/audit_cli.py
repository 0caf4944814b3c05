"""``alliance-risk audit ref``: the audit trail's keyed ref of a client, for an auditor holding the
audit key.

Client ids are only unique within a clinic, so a client's ref is of the pair (clinic, client id):
``--clinic`` is required. Records written before refs were scoped by clinic hold the unscoped
form (``--unscoped``); a caller's ``X-Request-ID`` is held as ``--correlation``. The ref alone
goes to stdout (``grep "$(alliance-risk audit ref --clinic clinic-a C000123)" audit.jsonl``);
the id itself is never printed or logged. With ``-`` as the id, ids are read from stdin, one a
line, and one ref is printed per line (ids stay out of the shell history).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from service.audit import AuditError, ClientRefs
from service.audit_log import AuditSettings

audit_app = typer.Typer(
    help="Audit trail helpers for an auditor holding the audit key.", no_args_is_help=True
)


@audit_app.command("ref")
def ref(
    value: Annotated[str, typer.Argument(help="The client id as the clinic's records hold it "
                     "(or the caller's X-Request-ID with --correlation); '-' reads one a line "
                     "from stdin.", metavar="id")],
    clinic: Annotated[str | None, typer.Option(help="The clinic the client belongs to (client "
                      "ids are clinic-local, so the ref is of the pair). Required unless "
                      "--unscoped or --correlation.")] = None,
    unscoped: Annotated[bool, typer.Option("--unscoped", help="The form of records written "
                        "before refs were scoped by clinic: the HMAC of the id alone (the same "
                        "for every clinic's client of that id).")] = False,
    correlation: Annotated[bool, typer.Option("--correlation", help="The correlation_ref of a "
                           "caller's X-Request-ID (it has no clinic).")] = False,
) -> None:  # fmt: skip
    """Print the keyed ref that audit records hold for a client of a clinic.

    The key: ALLIANCE_RISK_AUDIT_KEY, else ALLIANCE_RISK_AUDIT_KEY_FILE (.alliance-risk/audit.key).
    A key file that does not exist is refused, not created.
    """
    console = Console(stderr=True)
    forms = (clinic is not None) + unscoped + correlation
    if forms != 1:
        console.print("[bold red]Error[/]: give exactly one of --clinic, --unscoped, --correlation")
        raise typer.Exit(2)
    settings = AuditSettings()
    if settings.key is None and not settings.key_file.is_file():
        console.print(f"[bold red]Error[/]: no audit key: {escape(str(settings.key_file))} does "
                      "not exist (set ALLIANCE_RISK_AUDIT_KEY or ALLIANCE_RISK_AUDIT_KEY_FILE)")  # fmt: skip
        raise typer.Exit(2)
    try:
        refs = ClientRefs(settings.load_key())
    except (AuditError, OSError) as exc:
        console.print(f"[bold red]Error[/]: audit key: {escape(type(exc).__name__)}: "
                      f"{escape(str(exc))}")  # fmt: skip
        raise typer.Exit(2) from None
    ids = [line.rstrip("\r\n") for line in sys.stdin] if value == "-" else [value]
    if clinic is not None:
        lines = refs.client_refs(clinic, ids)
    else:
        lines = [
            refs.correlation_ref(one) if correlation else refs.unscoped_ref(one) for one in ids
        ]
    for line in lines:
        typer.echo(line)


def register(app: typer.Typer) -> None:
    """Attach the ``audit`` command group to ``app``."""
    app.add_typer(audit_app, name="audit")
