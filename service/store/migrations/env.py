"""Alembic's environment for the store.

The service and ``alliance-risk db`` pass an open connection in ``config.attributes``
(:meth:`service.store.db.Store.upgrade`); plain ``alembic -c service/store/alembic.ini`` connects
to ``ALLIANCE_RISK_STORE_URL`` (default: the SQLite file under ``.alliance-risk/``).
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from service.store.tables import metadata

config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    from service.settings import ServiceSettings
    from service.store.db import Store

    store = Store.from_settings(ServiceSettings())
    try:
        with store.engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        store.close()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them against a database")
_main()
