"""The store's Alembic migrations: one linear chain, up to head and down to base on SQLite and
PostgreSQL, and the head schema equal to ``service.store.tables``."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from service.store.db import Store
from service.store.tables import metadata

TABLES = {"clinic_state", "episodes", "sessions", "outcomes", "risk_scores", "idempotency_keys"}


def _up_and_down(url: str) -> None:
    store = Store(url)
    try:
        assert store.current() is None
        store.upgrade()
        assert store.current() == store.head()
        assert set(inspect(store.engine).get_table_names()) >= TABLES
        with store.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
        store.downgrade("base")
        assert store.current() is None
        assert not TABLES & set(inspect(store.engine).get_table_names())
        store.upgrade()  # and up again: the downgrade left nothing behind
        assert store.current() == store.head()
    finally:
        store.close()


def test_one_linear_chain() -> None:
    store = Store("sqlite://")
    scripts = ScriptDirectory.from_config(store._alembic())
    assert len(scripts.get_heads()) == 1
    revisions = list(scripts.walk_revisions())
    assert revisions[-1].down_revision is None
    assert all(not isinstance(r.down_revision, tuple) for r in revisions)


def test_sqlite_up_and_down(tmp_path: Path) -> None:
    _up_and_down(f"sqlite:///{tmp_path / 'store.db'}")


def test_postgresql_up_and_down(pg_store_url: str) -> None:
    _up_and_down(pg_store_url)


def test_ensure_ready_migrates_once_and_can_be_turned_off(tmp_path: Path) -> None:
    from service.store.db import StoreUnavailable

    url = f"sqlite:///{tmp_path / 'store.db'}"
    manual = Store(url, migrate=False)
    with pytest.raises(StoreUnavailable):
        manual.ensure_ready()
    auto = Store(url)
    auto.ensure_ready()
    assert auto.ready and auto.current() == auto.head()
    manual.retry_interval_s = 0
    manual.ensure_ready()
    assert manual.ready
    manual.close()
    auto.close()
