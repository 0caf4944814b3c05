"""Rescoring in a process of its own (``rescore_mode = "process"``, the default): the run
happens in another process than the server's, rescores every open episode with the served
version, and is counted and audited by the server; closing the app mid-run stops the child
after its batch, and the lease it gives up lets another worker resume where it got."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.app import create_app
from service.audit_log import records
from service.model_store import LoadedModel
from service.settings import ServiceSettings
from service.store.db import Store
from service.store.rescore import Rescorer, RescoreResult
from service.store.tables import episodes, rescore_state, risk_scores
from tests.service.conftest import MODEL_NAME, Registry, security_settings
from tests.service.models import loaded_versions
from tests.service.test_caseload_support import seed_cohort

# Each test here that spawns a child starts a real interpreter (3-4.5 s, 17 s for the registry
# fixture): integration tests, still run by make test (which selects no marker).
pytestmark = pytest.mark.integration

CLINIC = "clinic-rp"


def _store(tmp_path: Path, registry: Registry, n: int, clinics: int = 1) -> str:
    """``n`` open episodes in each of ``clinics`` clinics (the cohort's clients again)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(url)
    store.ensure_ready()
    for k in range(clinics):
        seed_cohort(store, registry.cohort, f"{CLINIC}-{k}", n=n, start_id=1 + k * n)
    store.close()
    return url


def _settings(registry: Registry, url: str, **kw) -> ServiceSettings:
    kw.setdefault("rescore_check_interval_s", 60)
    return ServiceSettings(
        model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=registry.uri,
        poll_interval_s=0, store_url=url, **kw,
    )  # fmt: skip


def _wait(condition, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def version_1(registry: Registry) -> Iterator[LoadedModel]:
    with loaded_versions(registry.uri, "1") as loaded:
        yield loaded["1"]


def test_the_run_happens_in_another_process_and_rescores_every_open_episode(
    registry: Registry, dev_key_dir: Path, tmp_path: Path
) -> None:
    n = 40
    url = _store(tmp_path, registry, n)
    audit_dir = tmp_path / "audit"
    app = create_app(_settings(registry, url, rescore_batch_size=16), configure_logs=False,
                     **security_settings(dev_key_dir, audit_dir))  # fmt: skip
    with TestClient(app) as api:
        watcher = app.state.rescore
        assert watcher.job is not None
        _wait(lambda: watcher.last is not None)
        done = watcher.last
        metrics = api.get("/metrics").text
    assert (done.result, done.rescored, done.model_version) == ("done", n, "1")
    assert done.pid not in (0, os.getpid())
    assert done.holder == watcher.rescorer.holder  # the lease the server took for it
    store = Store(url)
    with store.read() as conn:
        versions = conn.execute(select(episodes.c.latest_model_version)).scalars().all()
        scores = conn.execute(select(func.count()).select_from(risk_scores)).scalar()
    store.close()
    assert versions == ["1"] * n and scores == n
    # The server counted the child's batches and its run, and wrote the one audit record.
    assert 'alliance_risk_rescored_episodes_total{model_version="1"} 40.0' in metrics
    assert 'alliance_risk_rescore_runs_total{result="done"} 1.0' in metrics
    [record] = [r for r in records(audit_dir / "audit.jsonl") if r.action == "clients.rescore"]
    assert (record.count, record.request_id) == (n, f"rescore-{done.holder}")


def test_closing_the_app_mid_run_leaves_a_lease_another_worker_resumes(
    registry: Registry, dev_key_dir: Path, tmp_path: Path, version_1: LoadedModel
) -> None:
    n = 1_200  # 600 batches: the run is still going when the app closes
    url = _store(tmp_path, registry, n // 2, clinics=2)
    store = Store(url)

    def lease():
        with store.read() as conn:
            return conn.execute(select(rescore_state)).first()

    app = create_app(_settings(registry, url, rescore_batch_size=2), configure_logs=False,
                     **security_settings(dev_key_dir, tmp_path / "audit"))  # fmt: skip
    with TestClient(app):
        _wait(lambda: (row := lease()) is not None and row.after_episode_id > 0)
        started = time.monotonic()
    closed_in = time.monotonic() - started
    watcher = app.state.rescore
    stopped = lease()
    assert watcher.last is not None and watcher.last.result == "stopped"
    assert watcher.last.pid != os.getpid()
    assert closed_in < 10, "the child was not stopped promptly"
    assert (stopped.holder, stopped.done) == (None, False)
    assert 0 < stopped.after_episode_id < n
    # Another worker takes the released lease at once and finishes the version.
    resumed = Rescorer(store, batch_size=50).run(version_1)
    assert resumed.result == "done"
    assert watcher.last.rescored + resumed.rescored == n
    with store.read() as conn:
        r = risk_scores.c
        per_episode = conn.execute(select(r.episode_id, func.count()).group_by(r.episode_id)).all()
        versions = set(conn.execute(select(episodes.c.latest_model_version)).scalars())
    store.close()
    assert len(per_episode) == n and {k for _, k in per_episode} == {1}
    assert versions == {"1"}


def test_a_child_that_fails_is_reported_by_its_error_type_not_left_hanging(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from service.store.rescore_process import RescoreJob, run_in_process

    missing, mlflow_db = str(tmp_path / "no-model"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = RescoreJob(
        settings=ServiceSettings(store_url=f"sqlite:///{tmp_path / 'store.db'}"),
        model_uri=missing, model_name=missing, model_version="local", tracking_uri=mlflow_db,
        registry_uri=mlflow_db, batch_size=10, lease_s=60, max_sessions=200, holder="w",
        configure_logs=False,
    )  # fmt: skip
    served = SimpleNamespace(name=missing, version="local")
    with pytest.raises(RuntimeError, match=r"^rescoring process failed: \w+$"):
        run_in_process(job, stop=threading.Event(), current=lambda: served, on_batch=print)


def test_the_server_takes_the_lease_before_its_child_starts(
    tmp_path: Path, registry_template: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With serve --workers N every worker sees the promotion at about the same time; the one
    # that takes the lease starts a process, and the others see it held at once, not only
    # once that process has started and claimed it (each would load a model meanwhile).
    import threading
    from types import SimpleNamespace

    from service.store import rescore_process
    from service.store.rescore import RescoreWatcher
    from tests.service.test_caseload_support import sqlite_store

    store = sqlite_store(tmp_path)
    seed_cohort(store, registry_template.cohort, CLINIC, n=5)
    model = SimpleNamespace(name=MODEL_NAME, version="1")
    started, release = [], threading.Event()

    def child_starting(job, **_kw):  # the spawned child: seconds before it claims anything
        started.append(job)
        release.wait(30)
        raise RuntimeError("not started in this test")

    monkeypatch.setattr(rescore_process, "run_in_process", child_starting)
    workers = [
        RescoreWatcher(Rescorer(store, holder=f"w{k}"), lambda: model, job=lambda m: m)
        for k in (1, 2)
    ]
    first = threading.Thread(target=lambda: pytest.raises(RuntimeError, workers[0]._run, model))
    first.start()
    try:
        _wait(lambda: len(started) == 1, timeout_s=10)
        assert workers[1]._run(model).result == "held"
        assert len(started) == 1
    finally:
        release.set()
        first.join()
        store.close()


def test_a_child_that_cannot_load_the_model_hands_the_run_to_the_server_thread(
    registry: Registry, dev_key_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The registry unreachable from the child (here: a model URI that does not load) while the
    # server still serves its loaded model: the run goes on in the server's thread with that
    # model, and no child is started again at every check interval.
    from dataclasses import replace

    from service.store import rescore_process

    n = 12
    url = _store(tmp_path, registry, n)
    audit_dir = tmp_path / "audit"
    starts: list[object] = []
    spawn = rescore_process.run_in_process

    def unloadable(job, **kw):
        starts.append(job)
        return spawn(replace(job, model_uri=str(tmp_path / "no-model")), **kw)

    runs: list[RescoreResult] = []
    record = Rescorer.record
    monkeypatch.setattr(rescore_process, "run_in_process", unloadable)
    monkeypatch.setattr(
        Rescorer, "record", lambda self, done: (runs.append(done), record(self, done))
    )
    app = create_app(_settings(registry, url, rescore_batch_size=5, rescore_check_interval_s=0.2),
                     configure_logs=False, **security_settings(dev_key_dir, audit_dir))  # fmt: skip
    with TestClient(app) as api:
        _wait(lambda: runs, timeout_s=60)
        time.sleep(1.0)  # five check intervals: the version is done, nothing is started again
        metrics = api.get("/metrics").text
    assert len(starts) == 1
    done = runs[0]
    assert (done.result, done.rescored, done.pid) == ("done", n, os.getpid())
    assert {r.result for r in runs[1:]} <= {"already_done"}
    store = Store(url)
    with store.read() as conn:
        versions = conn.execute(select(episodes.c.latest_model_version)).scalars().all()
        lease = conn.execute(select(rescore_state)).one()
    store.close()
    assert versions == ["1"] * n
    assert (lease.done, lease.holder) == (True, None)
    # One audit record, the run's (ok, every episode); the child's failure is logged, not
    # audited: the run it was part of did not fail.
    [record] = [r for r in records(audit_dir / "audit.jsonl") if r.action == "clients.rescore"]
    assert (record.outcome, record.count) == ("ok", n)
    assert 'alliance_risk_rescore_runs_total{result="done"} 1.0' in metrics
    assert 'result="failed"' not in metrics


class _Waits(threading.Event):
    """An Event that records how long each wait was asked to be."""

    def __init__(self, stop_after: int, stop: threading.Event) -> None:
        super().__init__()
        self.asked: list[float | None] = []
        self.stop_after, self.stop = stop_after, stop

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout)
        if len(self.asked) >= self.stop_after:
            self.stop.set()
        return True


def test_a_run_that_fails_in_the_child_and_the_thread_backs_off_and_releases_the_lease(
    tmp_path: Path, registry_template: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from service.store import rescore_process
    from service.store.rescore import RescoreWatcher
    from tests.service.test_caseload_support import sqlite_store

    store = sqlite_store(tmp_path)
    seed_cohort(store, registry_template.cohort, CLINIC, n=5)
    model = SimpleNamespace(name=MODEL_NAME, version="1")  # no scorer: the thread fails too
    starts: list[object] = []

    def failing_child(job, **_kw):
        starts.append(job)
        raise rescore_process.RescoreProcessError("OSError")

    monkeypatch.setattr(rescore_process, "run_in_process", failing_child)
    watcher = RescoreWatcher(Rescorer(store, holder="w1"), lambda: model, check_interval_s=10,
                             job=lambda m: m)  # fmt: skip
    watcher._wake = waits = _Waits(stop_after=7, stop=watcher._stop)
    try:
        watcher._loop()
        with store.read() as conn:
            lease = conn.execute(select(rescore_state)).one()
    finally:
        store.close()
    assert len(starts) == 7  # one child a try; each failing try falls back to the thread
    assert waits.asked == [20, 40, 80, 160, 320, 320, 320]  # doubling, capped
    assert (lease.holder, lease.done) == (None, False)  # released: another worker may try
