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

TABLES = {
    "clinic_state", "episodes", "sessions", "outcomes", "risk_scores", "idempotency_keys",
    "cds_feedback", "rescore_state", "dashboard_signed_out",
}  # fmt: skip


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


def test_db_cli_upgrades_and_reports(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    url = f"sqlite:///{tmp_path / 'store.db'}"
    runner = CliRunner()
    before = runner.invoke(app, ["db", "current", "--url", url])
    assert before.exit_code == 0, before.output
    assert "revision none" in before.output
    up = runner.invoke(app, ["db", "upgrade", "--url", url])
    assert up.exit_code == 0, up.output
    assert Store(url).current() == Store(url).head()
    assert "at head" in runner.invoke(app, ["db", "current", "--url", url]).output
    # Dropping tables asks first: no answer (or "n") changes nothing.
    for answer in ("", "n\n"):
        kept = runner.invoke(app, ["db", "downgrade", "base", "--url", url], input=answer)
        assert kept.exit_code == 1 and "--yes" in kept.output
        assert Store(url).current() == Store(url).head()
    asked = runner.invoke(app, ["db", "downgrade", "base", "--url", url], input="y\n")
    assert asked.exit_code == 0 and Store(url).current() is None
    assert runner.invoke(app, ["db", "upgrade", "--url", url]).exit_code == 0
    down = runner.invoke(app, ["db", "downgrade", "base", "--url", url, "--yes"])
    assert down.exit_code == 0 and Store(url).current() is None
    closed = "postgresql+psycopg2://u:secret@127.0.0.1:9/x"
    refused = runner.invoke(app, ["db", "current", "--url", closed])
    assert refused.exit_code == 1
    assert "cannot be reached" in refused.output and "secret" not in refused.output


def test_postgresql_schema_of_its_own(pg_store_url: str) -> None:
    """With ``?options=-csearch_path%3D<schema>`` (compose: the store beside MLflow's tables in
    one database) the store and its version table live in that schema, created if missing."""
    _up_and_down(f"{pg_store_url}?options=-csearch_path%3Dalliance_store")
    store = Store(pg_store_url)
    try:
        public = set(inspect(store.engine).get_table_names(schema="public"))
        assert not (TABLES | {"alembic_version"}) & public
        assert set(inspect(store.engine).get_table_names(schema="alliance_store")) >= TABLES
    finally:
        store.close()


def test_an_unwritable_folder_leaves_the_store_unavailable_not_the_service(
    tmp_path: Path,
) -> None:
    from service.store.db import StoreUnavailable

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = Store(f"sqlite:///{blocker / 'sub' / 'store.db'}")  # built without touching disk
    with pytest.raises(StoreUnavailable):
        store.ensure_ready()
    store.close()
