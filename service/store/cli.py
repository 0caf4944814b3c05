"""``alliance-risk db upgrade|current|downgrade``: the client store's migrations, for operators
(the service also upgrades at start unless ``ALLIANCE_RISK_STORE_MIGRATE_ON_START=false``);
``alliance-risk db rescore``: the service's rescoring run, in the foreground."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from service.model_store import LoadedModel
    from service.settings import ServiceSettings
    from service.store.db import Store
    from service.store.rescore import RescoreResult

db_app = typer.Typer(
    name="db",
    help="The client store: upgrade its schema, show the current revision, downgrade; rescore "
    "its open episodes with a model version.",
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
    """Migrate the store up to --revision (default: the newest)."""
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
    """Migrate the store down to REVISION: rolls a release back, deleting what newer
    revisions added (base drops every table and its data). Asks first unless --yes;
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


@db_app.command("rescore")
def rescore(
    model_uri: Annotated[
        str | None,
        typer.Option(
            "--model-uri",
            help="Model to rescore with; an alias is resolved to its version once, at the "
            "start. Default: ALLIANCE_RISK_MODEL_URI (the served champion).",
        ),
    ] = None,
    url: UrlOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            min=1,
            max=20_000,
            help="Episodes per batch (one read, one scoring pass, one short write). Default: "
            "ALLIANCE_RISK_RESCORE_BATCH_SIZE (1000).",
        ),
    ] = None,
) -> None:
    """Rescore every open stored episode with one model version, in the foreground: the same
    run the service starts when a new champion is served, under the same lease (a run another
    worker holds is left to it; a version already done is not redone). Ctrl-C stops after the
    current batch; the next run, or the service, resumes where it got."""
    from service.settings import ServiceSettings

    console = Console(stderr=True)
    settings = ServiceSettings() if url is None else ServiceSettings(store_url=url)
    model = _rescore_model(console, settings, model_uri or settings.model_uri)
    done = _rescore_run(console, settings, model, batch_size or settings.rescore_batch_size)
    console.print(_summary(done, model))
    if done.result not in ("done", "already_done"):
        raise typer.Exit(1)


def _rescore_model(console: Console, settings: ServiceSettings, uri: str) -> LoadedModel:
    """The model version to rescore with, loaded and self-checked as the service does."""
    import mlflow

    from models.pyfunc import resolve_model
    from models.store import tracking_uri
    from service.store.rescore_process import load_model

    registry = settings.tracking_uri or tracking_uri()
    mlflow.set_tracking_uri(registry)
    mlflow.set_registry_uri(registry)
    try:
        ref = resolve_model(uri)
    except LookupError as exc:
        console.print(f"[bold red]No model to rescore with[/]: {escape(str(exc))}.")
        raise typer.Exit(1) from None
    except Exception as exc:
        console.print(f"[bold red]The model registry cannot be reached[/] ({type(exc).__name__}).")
        raise typer.Exit(1) from None
    try:
        return load_model(ref.uri, ref.name, ref.version)
    except Exception as exc:
        console.print(f"[bold red]{escape(ref.uri)} could not be loaded[/]: {type(exc).__name__}")
        raise typer.Exit(1) from None


def _rescore_run(
    console: Console, settings: ServiceSettings, model: LoadedModel, batch_size: int
) -> RescoreResult:
    import signal
    import threading

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from service.audit_log import AuditSettings
    from service.store.db import Store, StoreUnavailable
    from service.store.rescore import Rescorer

    stop = threading.Event()
    try:
        store = Store.from_settings(settings)
    except StoreUnavailable as exc:
        console.print(f"[bold red]The store cannot be reached[/] ({exc.reason}).")
        raise typer.Exit(1) from None
    except Exception as exc:  # by type only: the URL may hold a password
        console.print(f"[bold red]The store URL cannot be used[/] ({type(exc).__name__}).")
        raise typer.Exit(1) from None
    try:
        audit = AuditSettings().open_log()  # the service's audit file: one record per run
    except Exception as exc:  # unwritable or misconfigured: no run without its record
        store.close()
        console.print(f"[bold red]The audit log cannot be opened[/] ({type(exc).__name__}).")
        raise typer.Exit(1) from None
    main = threading.current_thread() is threading.main_thread()  # where signals can be set
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set()) if main else None
    try:
        with Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=console, transient=True,
        ) as progress:  # fmt: skip
            task = progress.add_task(f"version {model.version}", total=None)
            rescorer = Rescorer(
                store,
                batch_size=batch_size,
                lease_s=max(60.0, 2 * settings.rescore_check_interval_s),
                max_sessions=settings.max_sessions,
                audit=audit,
                progress=lambda n, skipped: progress.advance(task, n + skipped),
            )
            progress.update(task, total=rescorer.remaining(model))
            return rescorer.run(model, stop=stop)
    except StoreUnavailable as exc:
        console.print(f"[bold red]The store cannot be reached[/] ({exc.reason}).")
        raise typer.Exit(1) from None
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        audit.close()
        store.close()


def _summary(done: RescoreResult, model: LoadedModel) -> str:
    """What the run did, in one or two sentences (counts and versions only)."""
    version = f"{escape(model.name)} version {escape(model.version)}"
    if done.result == "already_done":
        return f"Every open episode already has a score of {version}: nothing to do."
    if done.result == "held":
        return (
            "[bold yellow]Another worker is rescoring[/] (the service, or another run of this "
            "command). Nothing changed: it finishes the job, or try again once it has stopped."
        )
    rate = done.rescored / done.seconds if done.seconds > 0 else 0.0
    line = (
        f"Rescored {done.rescored:,} open episodes with {version} in {done.seconds:.1f} s "
        f"({rate:,.0f}/s)"
    )
    if done.skipped:
        line += (
            f"; {done.skipped:,} left as they were (written meanwhile, over the appointment "
            "cap, or not scorable)"
        )
    if done.result == "done":
        return line + "."
    if done.result == "stopped":
        return line + ", then stopped. The next run, or the service, resumes where it got."
    return line + ", then another worker took the lease over; it finishes the job."


def _store_url(url: str | None) -> str:
    from service.settings import ServiceSettings

    return url if url is not None else ServiceSettings().resolved_store_url()


def register(app: typer.Typer) -> None:
    """Attach the ``db`` command group to ``app``."""
    app.add_typer(db_app)
