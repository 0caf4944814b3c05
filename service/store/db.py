"""The store's database: engine, transactions, outage handling and migrations.

SQLite (the default, a file under ``.alliance-risk/``) or PostgreSQL (compose, CI's integration
tests), chosen by the URL. :class:`Store` opens no connection when it is built: the service
starts with the database down, and the store's routes answer 503 (:class:`StoreUnavailable`)
until it is back.

Durability: a write commits before the route answers. SQLite runs in WAL mode with
``synchronous=FULL``: ``NORMAL`` already survives the death of the process (SIGKILL), since the
WAL is in the operating system's page cache, but a power cut could then lose the last commits,
which a 2xx told the EHR it could forget; ``FULL`` syncs the WAL at each commit, as PostgreSQL's
default ``synchronous_commit=on`` does.

Concurrency: every write transaction takes the writer's lock first (SQLite: ``BEGIN IMMEDIATE``,
waiting up to the busy timeout; PostgreSQL: ``SELECT ... FOR UPDATE`` on the episode row in the
repository), so two writers to one client run one after the other.

Alembic is imported only when migrating.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, exc, make_url

if TYPE_CHECKING:
    from alembic.config import Config

    from service.settings import ServiceSettings

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
ALEMBIC_INI = Path(__file__).resolve().parent / "alembic.ini"
#: Seconds a caller is told to wait when the database is unreachable.
RETRY_AFTER_S = 5
#: PostgreSQL advisory lock held while migrating: two workers starting at once migrate once.
_MIGRATION_LOCK = 2_021_021
#: ``-c search_path=<schema>`` (or ``-csearch_path=``) in a PostgreSQL URL's libpq options.
_SEARCH_PATH = re.compile(r"-c\s*search_path=([A-Za-z_][A-Za-z0-9_]*)")
UNAVAILABLE = "the client store is unavailable; try again later"


class StoreUnavailable(Exception):
    """The database cannot be reached, timed out or is not migrated: answered 503 with
    ``Retry-After`` (:mod:`service.errors`). Carries no query, parameter or URL."""

    def __init__(self, reason: str = "unreachable", retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(UNAVAILABLE)
        self.reason = reason
        self.retry_after_s = retry_after_s


class Store:
    """The store's engine and its transactions.

    Parameters
    ----------
    url
        SQLAlchemy URL: ``sqlite:///path`` or ``postgresql+psycopg2://...``.
    connect_timeout_s
        How long to wait for a connection (TCP connect, and a free pooled connection).
    statement_timeout_s
        Longest statement (PostgreSQL ``statement_timeout``) and longest wait for SQLite's
        writer lock (``busy_timeout``).
    migrate
        Upgrade the schema to the head revision when first used (``ensure_ready``).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 3.0,
        statement_timeout_s: float = 5.0,
        migrate: bool = True,
        pool_size: int = 5,
    ) -> None:
        self.url = url
        self.migrate = migrate
        self.backend = url.split(":", 1)[0].split("+", 1)[0]
        self.schema: str | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._last_attempt = float("-inf")
        self.retry_interval_s = 1.0
        if self.backend == "sqlite":
            self.engine = _sqlite_engine(url, statement_timeout_s)
        else:
            # libpq options of the URL (?options=-csearch_path%3Dalliance_store keeps the store
            # in a schema of its own, beside MLflow's tables) plus the statement timeout.
            parsed = make_url(url)
            options = str(parsed.query.get("options", ""))
            if match := _SEARCH_PATH.search(options):
                self.schema = match[1]
            options = f"{options} -c statement_timeout={int(statement_timeout_s * 1000)}".strip()
            self.engine = create_engine(
                parsed.difference_update_query(["options"]),
                pool_pre_ping=True,  # a connection the server dropped is replaced, not used
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_timeout=connect_timeout_s,
                connect_args={
                    # libpq rounds values below 2 s up to 2 s.
                    "connect_timeout": max(2, round(connect_timeout_s)),
                    "options": options,
                },
            )

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Store:
        return cls(
            settings.resolved_store_url(),
            connect_timeout_s=settings.store_connect_timeout_s,
            statement_timeout_s=settings.store_statement_timeout_s,
            migrate=settings.store_migrate_on_start,
        )

    @property
    def ready(self) -> bool:
        return self._ready

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions ---------------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction; :class:`StoreUnavailable` on outage."""
        self.ensure_ready()
        with _translated(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction, committed when the block ends without error (before the route
        answers); SQLite takes its writer lock at the start."""
        self.ensure_ready()
        with _translated(), self.engine.connect() as conn:
            conn.execution_options(store_write=True)
            with conn.begin():
                yield conn

    def ensure_ready(self) -> None:
        """Check (or, with ``migrate``, bring) the schema at the head revision, once; while the
        database is down, at most one attempt per ``retry_interval_s``, others fail fast."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            now = time.monotonic()
            if now - self._last_attempt < self.retry_interval_s:
                raise StoreUnavailable()
            self._last_attempt = now
            self._make_folder()
            with _translated():
                if self.migrate:
                    self.upgrade()
                elif self.current() != self.head():
                    raise StoreUnavailable("not migrated")
            self._ready = True

    def _make_folder(self) -> None:
        """The SQLite file's folder, made when first needed (never at import or build time);
        one that cannot be made leaves the store unavailable, not the service down."""
        database = self.engine.url.database if self.backend == "sqlite" else None
        if not database or database == ":memory:":
            return
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            logger.warning("client store folder cannot be created",
                           extra={"fields": {"error": type(err).__name__}})  # fmt: skip
            raise StoreUnavailable("not writable") from None

    # -- migrations -------------------------------------------------------------------------

    def _alembic(self, conn: Connection | None = None) -> Config:
        from alembic.config import Config

        config = Config(str(ALEMBIC_INI))
        config.set_main_option("script_location", str(MIGRATIONS))
        if conn is not None:
            config.attributes["connection"] = conn
        return config

    def upgrade(self, revision: str = "head") -> None:
        """``alembic upgrade``: one transaction (PostgreSQL: under an advisory lock)."""
        from alembic import command

        with self.engine.connect() as conn:
            conn.execution_options(store_write=True)
            with conn.begin():
                if self.backend == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                    if self.schema is not None:
                        conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                command.upgrade(self._alembic(conn), revision)

    def downgrade(self, revision: str = "base") -> None:
        """``alembic downgrade`` (tests and operators rolling a release back)."""
        from alembic import command

        with self.engine.connect() as conn:
            conn.execution_options(store_write=True)
            with conn.begin():
                command.downgrade(self._alembic(conn), revision)
        self._ready = False

    def current(self) -> str | None:
        """The database's revision (None before the first migration)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head(self) -> str:
        """The newest revision the code ships."""
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic()).get_current_head()
        assert head is not None, "the store ships at least one migration"
        return head


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Connection failures and timeouts as :class:`StoreUnavailable` (logged by type only:
    a driver's message can quote the statement's parameters)."""
    try:
        yield
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as err:
        logger.warning(
            "client store unavailable",
            extra={"fields": {"error": type(getattr(err, "orig", err)).__name__}},
        )
        raise StoreUnavailable() from None
    except exc.DBAPIError as err:
        if err.connection_invalidated:
            raise StoreUnavailable() from None
        raise


def _sqlite_engine(url: str, busy_timeout_s: float) -> Engine:
    engine = create_engine(url, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy's recipe: the driver's own BEGIN handling off, ours in "begin" below.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A writer takes the lock up front: a read transaction upgraded to a write in WAL mode
        # fails at once with SQLITE_BUSY instead of waiting for the busy timeout.
        write = conn.get_execution_options().get("store_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine
