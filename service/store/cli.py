"""``alliance-risk db upgrade|current|downgrade``: the client store's migrations, for operators
(the service also upgrades at start unless ``ALLIANCE_RISK_STORE_MIGRATE_ON_START=false``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from service.store.db import Store

db_app = typer.Typer(
    name="db",
    help="The client store's schema: upgrade, show the current revision, downgrade.",
    no_args_is_help=True,
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="SQLAlchemy URL of the store. Default: ALLIANCE_RISK_STORE_URL, else the SQLite "
        "file under .alliance-risk/.",
    ),
]


def _store(url: str | None) -> Store:
    from service.settings import ServiceSettings
    from service.store.db import Store

    settings = ServiceSettings() if url is None else ServiceSettings(store_url=url)
    return Store.from_settings(settings)


def _where(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _run(url: str | None, action: str, revision: str) -> None:
    from sqlalchemy.exc import InterfaceError, OperationalError

    console = Console(stderr=True)
    store = _store(url)
    try:
        if action == "upgrade":
            store.upgrade(revision)
        elif action == "downgrade":
            store.downgrade(revision)
        current, head = store.current(), store.head()
    except (OperationalError, InterfaceError) as exc:
        reason = type(getattr(exc, "orig", exc)).__name__
        console.print(f"[bold red]The store cannot be reached[/] ({reason}).")
        raise typer.Exit(1) from None
    except Exception as exc:  # sqlalchemy and alembic errors: their type, not their text
        console.print(f"[bold red]{action} failed[/]: {type(exc).__name__}")
        raise typer.Exit(1) from None
    finally:
        store.close()
    state = "at head" if current == head else f"head is {head}"
    console.print(f"[dim]{escape(_where(store.url))}[/]: revision {current or 'none'} ({state})")


@db_app.command("upgrade")
def upgrade(
    url: UrlOption = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Migrate the store up to ``revision`` (default: the newest)."""
    _run(url, "upgrade", revision)


@db_app.command("current")
def current(url: UrlOption = None) -> None:
    """Show the store's revision and whether it is the newest."""
    _run(url, "current", "")


@db_app.command("downgrade")
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision (base: drop every table).")],
    url: UrlOption = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Do not ask: drop what newer revisions added (scripts)."),
    ] = False,
) -> None:
    """Migrate the store down to ``revision``: rolls a release back, deleting what newer
    revisions added (``base`` drops every table and its data). Asks first unless ``--yes``;
    without a terminal to ask on, refuses."""
    if not yes:
        where = escape(_where(_store_url(url)))
        question = f"Downgrade {where} to {revision}, deleting the data of the dropped tables?"
        try:
            confirmed = typer.confirm(question, default=False)
        except typer.Abort:
            confirmed = False
        if not confirmed:
            Console(stderr=True).print("Nothing changed (pass --yes to downgrade).")
            raise typer.Exit(1)
    _run(url, "downgrade", revision)


def _store_url(url: str | None) -> str:
    from service.settings import ServiceSettings

    return url if url is not None else ServiceSettings().resolved_store_url()


def register(app: typer.Typer) -> None:
    """Attach the ``db`` command group to ``app``."""
    app.add_typer(db_app)
