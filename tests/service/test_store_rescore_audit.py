"""A rescoring run leaves one audit record (``clients.rescore``): the model version, how many
episodes it rescored and how it ended; an episode over the appointment cap is counted in the
logs, not skipped silently."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.audit_log import JsonLinesAuditLog, records
from service.model_store import LoadedModel
from service.store.db import Store
from service.store.rescore import Rescorer
from tests.service.conftest import Registry
from tests.service.models import loaded_versions
from tests.service.test_caseload_support import seed_cohort, sqlite_store

CLINIC = "clinic-ra"
N = 6


@pytest.fixture(scope="module")
def model(registry_template: Registry) -> Iterator[LoadedModel]:
    with loaded_versions(registry_template.uri, "2") as loaded:
        yield loaded["2"]


@pytest.fixture
def store(tmp_path: Path, registry_template: Registry) -> Iterator[Store]:
    s = sqlite_store(tmp_path)
    seed_cohort(s, registry_template.cohort, CLINIC, n=N)
    try:
        yield s
    finally:
        s.close()


def test_one_audit_record_per_run(store: Store, model: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with JsonLinesAuditLog(path) as audit:
        rescorer = Rescorer(store, batch_size=4, audit=audit)
        done = rescorer.run(model)
        again = rescorer.run(model)  # nothing left to do: no record
    assert (done.result, again.result) == ("done", "already_done")
    lines = list(records(path))
    assert len(lines) == 1
    record = lines[0]
    assert (record.action, record.outcome, record.status) == ("clients.rescore", "ok", 200)
    assert record.model_version == "2" and record.count == done.rescored == N
    assert record.client_ref is None and record.clinic is None


def test_episodes_over_the_cap_are_counted_in_the_log(
    store: Store, model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.store.rescore")
    result = Rescorer(store, max_sessions=1).run(model)
    assert result.skipped == N
    warned = [r for r in caplog.records if "appointment cap" in r.getMessage()]
    assert warned and sum(r.fields["episodes"] for r in warned) == N  # type: ignore[attr-defined]
