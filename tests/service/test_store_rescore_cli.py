"""``alliance-risk db rescore`` end to end on SQLite with a real trained model: the same run
as the service's (every open episode once, one audit record), a clear summary, a version done
is not redone, and a lease another worker holds is refused politely."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pytest
from sqlalchemy import func, insert, select, update
from typer.testing import CliRunner

from cli.main import app
from service.audit_log import records
from service.store.db import Store
from service.store.rescore import LEASE
from service.store.tables import episodes, rescore_state, risk_scores
from tests.service.conftest import MODEL_NAME, Registry
from tests.service.test_caseload_support import seed_cohort

CLINIC = "clinic-rc"
N = 24


@pytest.fixture
def store_url(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.ensure_ready()
    seed_cohort(store, registry.cohort, CLINIC, n=N + 2)
    with store.write() as conn:  # two closed episodes are left alone
        conn.execute(update(episodes).where(episodes.c.id > N).values(outcome="completed"))
    store.close()
    monkeypatch.setenv("ALLIANCE_RISK_MODEL_URI", f"models:/{MODEL_NAME}@champion")
    monkeypatch.setenv("ALLIANCE_RISK_TRACKING_URI", registry.uri)
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_PATH", str(tmp_path / "audit.jsonl"))
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        yield url
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])


def _said(result) -> str:
    """The command's output without rich's line wrapping."""
    return " ".join(result.output.split())


def _versions(url: str) -> list[str | None]:
    store = Store(url)
    with store.read() as conn:
        e = episodes.c
        found = conn.execute(select(e.latest_model_version).order_by(e.id)).scalars().all()
    store.close()
    return list(found)


def test_rescores_every_open_episode_and_says_what_it_did(
    store_url: str, registry: Registry, tmp_path: Path
) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["db", "rescore", "--url", store_url, "--batch-size", "7"])
    assert first.exit_code == 0, first.output
    assert f"Rescored {N} open episodes with {MODEL_NAME} version 1" in _said(first)
    assert _versions(store_url) == ["1"] * N + [None, None]
    [record] = list(records(tmp_path / "audit.jsonl"))
    assert (record.action, record.count, record.model_version) == ("clients.rescore", N, "1")
    assert not any(c in _said(first) for c in registry.cohort.clients["client_id"].iloc[: N + 2])

    again = runner.invoke(app, ["db", "rescore", "--url", store_url])
    assert again.exit_code == 0, again.output
    assert "already has a score of" in _said(again) and "nothing to do" in _said(again)

    pinned = ["db", "rescore", "--url", store_url, "--model-uri", f"models:/{MODEL_NAME}/2"]
    second = runner.invoke(app, pinned)
    assert second.exit_code == 0, second.output
    assert f"Rescored {N} open episodes with {MODEL_NAME} version 2" in _said(second)
    assert _versions(store_url) == ["2"] * N + [None, None]


def test_a_lease_another_worker_holds_is_refused_politely(store_url: str) -> None:
    store = Store(store_url)
    with store.write() as conn:  # the service's rescoring process is mid-way
        conn.execute(insert(rescore_state).values(
            name=LEASE, model_name=MODEL_NAME, model_version="1", done=False,
            after_episode_id=5, rescored=5, holder="4242-service",
            lease_until=datetime.now(UTC) + timedelta(minutes=5),
        ))  # fmt: skip
    result = CliRunner().invoke(app, ["db", "rescore", "--url", store_url])
    assert result.exit_code == 1
    assert "Another worker is rescoring" in _said(result) and "Nothing changed" in _said(result)
    assert "Traceback" not in _said(result)
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(risk_scores)).scalar() == 0
    store.close()


def test_no_model_to_rescore_with_is_a_clear_error(store_url: str) -> None:
    missing = ["db", "rescore", "--url", store_url, "--model-uri", f"models:/{MODEL_NAME}@nope"]
    result = CliRunner().invoke(app, missing)
    assert result.exit_code == 1
    assert "No model to rescore with" in _said(result) and "Traceback" not in _said(result)


def test_an_unreachable_store_is_a_one_line_error(store_url: str) -> None:
    from tests.conftest import free_port

    unreachable = f"postgresql+psycopg2://nobody:nothing@127.0.0.1:{free_port()}/none"
    result = CliRunner().invoke(app, ["db", "rescore", "--url", unreachable])
    assert result.exit_code == 1
    assert "The store cannot be reached" in _said(result)
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_an_audit_log_that_cannot_be_opened_is_a_one_line_error_and_closes_the_store(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ALLIANCE_RISK_AUDIT_PATH", str(blocker / "audit.jsonl"))
    closed: list[Store] = []
    close = Store.close
    monkeypatch.setattr(Store, "close", lambda self: (closed.append(self), close(self)))
    result = CliRunner().invoke(app, ["db", "rescore", "--url", store_url])
    assert result.exit_code == 1
    assert "The audit log cannot be opened" in _said(result)
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert len(closed) == 1
    assert _versions(store_url) == [None] * (N + 2)  # nothing rescored without its audit record


def test_a_store_url_that_cannot_be_used_is_a_one_line_error_without_the_url(
    store_url: str,
) -> None:
    result = CliRunner().invoke(app, ["db", "rescore", "--url", "nonsense://secret@127.0.0.1"])
    assert result.exit_code == 1
    assert "The store URL cannot be used" in _said(result) and "secret" not in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
