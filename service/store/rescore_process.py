"""Rescoring in a process of its own, so that it and serving each get a core.

In one process, rescoring and serving share the GIL: rescoring 100,000 episodes while
``POST /v1/risk`` answered took about twice its own CPU time, and serving's p95 tripled
(bench_store). :func:`run_in_process` starts a child that loads the same model version (by its
resolved URI, never the alias, which may have moved since), opens the store from the same
settings and runs the same :meth:`~service.store.rescore.Rescorer.run`. The parent thread waits
for it, counts its batches on /metrics and records the run (one audit record, written by the
parent: the child has no audit log open).

Why :mod:`multiprocessing`'s *spawn* context rather than a subprocess of our own CLI: the
settings object crosses as it is (pickled), including settings a caller built in code rather
than read from the environment; its Event, Pipe and parent sentinel work the same on Linux,
macOS and Windows (spawn is the only start method on Windows and the default on macOS); and a
spawned child starts a fresh interpreter, where ``fork`` would copy a server whose other
threads may hold locks. The child needs no ``alliance-risk`` script on ``PATH``: it runs
``sys.executable`` with the parent's import path.

Stopping: the parent sets the child's Event when the app closes or another version is served;
the child stops after its batch and gives the lease up (with how far it got). A child that
does not stop within ``grace_s`` is terminated; its lease then runs out and another worker
resumes. A child whose parent dies stops by itself (it watches the parent's sentinel).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from service.model_store import LoadedModel
from service.store.db import Store, StoreUnavailable
from service.store.rescore import Rescorer, RescoreResult, StopFlag

if TYPE_CHECKING:
    from service.settings import ServiceSettings

logger = logging.getLogger(__name__)


class RescoreProcessError(RuntimeError):
    """The rescoring process failed (``error``: its error's type) or ended without a result."""

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


@dataclass(frozen=True)
class RescoreJob:
    """What a rescoring process needs (pickled to it): the model version, where MLflow is, the
    store's settings and the rescorer's options."""

    settings: ServiceSettings
    model_uri: str
    model_name: str
    model_version: str
    tracking_uri: str
    registry_uri: str
    batch_size: int
    lease_s: float
    max_sessions: int
    holder: str
    configure_logs: bool = True


def version_uri(model: LoadedModel) -> str:
    """The URI of exactly ``model``'s version: ``models:/<name>/<version>`` for a registered
    model (the alias it was served under may have moved since), the URI itself otherwise
    (:func:`models.pyfunc.resolve_model` names an unregistered model by its URI, version
    ``local``)."""
    return model.name if model.version == "local" else f"models:/{model.name}/{model.version}"


def load_model(uri: str, name: str, version: str) -> LoadedModel:
    """Load and self-check the scorer at ``uri`` (a resolved version) as a served model."""
    from models.pyfunc import load_scorer

    scorer = load_scorer(uri)
    scorer.self_check()
    return LoadedModel(scorer, name, version, None, datetime.now(UTC))


def job_for(
    settings: ServiceSettings, model: LoadedModel, rescorer: Rescorer, *, configure_logs: bool
) -> RescoreJob:
    """The job that rescores with ``model`` as ``rescorer`` would, in another process, under
    its lease holder name (the serving process takes the lease before it starts the child)."""
    import mlflow

    return RescoreJob(
        settings=settings,
        model_uri=version_uri(model),
        model_name=model.name,
        model_version=model.version,
        tracking_uri=mlflow.get_tracking_uri(),
        registry_uri=mlflow.get_registry_uri(),
        batch_size=rescorer.batch_size,
        lease_s=rescorer.lease_s,
        max_sessions=rescorer.max_sessions,
        holder=rescorer.holder,
        configure_logs=configure_logs,
    )


def rescore_in_process(
    rescorer: Rescorer,
    model: LoadedModel,
    job: Callable[[LoadedModel], RescoreJob],
    *,
    stop: threading.Event,
    current: Callable[[], LoadedModel | None],
) -> RescoreResult:
    """Take the lease for ``model`` in ``rescorer``'s name, run ``job(model)`` in a child
    (:func:`run_in_process`) and record the run; a lease another worker holds, or a version
    already done, is recorded as such and no child starts.

    A child that fails (it could not load the version: the registry unreachable, say, while
    this process still serves the model it loaded) hands the run to this thread, which goes on
    under the same lease with ``model`` itself: started again at every check interval, the
    child would fail the same way each time.
    """
    # The lease is taken here, in this worker's name, which the child goes on under: the other
    # workers (serve --workers N) see it held and start no process of their own.
    claim = rescorer._claim(model)
    if isinstance(claim, str):
        held = RescoreResult(claim, model.version, 0, 0, 0.0, rescorer.holder, os.getpid())
        rescorer.record(held)
        return held
    metrics = rescorer.metrics

    def counted(rescored: int, _skipped: int) -> None:
        if metrics is not None:
            metrics.rescored.labels(model.version).inc(rescored)

    try:
        done = run_in_process(job(model), stop=stop, current=current, on_batch=counted)
    except RescoreProcessError as exc:
        logger.warning("rescoring process failed; rescoring in the serving process instead",
                       extra={"fields": {"error": exc.error,
                                         "model_version": model.version}})  # fmt: skip
        return rescorer.run(model, current=current, stop=stop)
    rescorer.record(done)
    return done


def run_in_process(
    job: RescoreJob,
    *,
    stop: threading.Event,
    current: Callable[[], LoadedModel | None],
    on_batch: Callable[[int, int], None],
    grace_s: float = 10.0,
) -> RescoreResult:
    """Run ``job`` in a spawned child and wait for it (call from a thread, never the event
    loop). ``on_batch(rescored, skipped)`` is called here for each batch the child commits.
    When ``stop`` is set or ``current()`` serves another version, the child is told to stop
    (result ``stopped`` or ``superseded``).

    Raises
    ------
    StoreUnavailable
        The child could not reach the store.
    RescoreProcessError
        The child failed (its error's type is in the message) or ended without a result.
    """
    ctx = multiprocessing.get_context("spawn")
    halt = ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(
        target=_child, args=(job, halt, send), name="alliance-risk-rescore", daemon=True
    )
    child.start()
    send.close()  # the child holds the only write end: its exit ends recv() with EOFError
    logger.info("rescoring process started",
                extra={"fields": {"model_version": job.model_version, "pid": child.pid}})  # fmt: skip
    message: tuple[Any, ...] | None = None
    rescored = skipped = 0
    halted_at: float | None = None
    superseded = False
    try:
        while True:
            if receive.poll(0.2):
                try:
                    received = receive.recv()
                except EOFError:
                    break
                if received[0] == "batch":
                    rescored, skipped = rescored + received[1], skipped + received[2]
                    on_batch(received[1], received[2])
                else:
                    message = received
            # Looked at after every message too: a child sends one per batch, and stopping
            # must not wait for a pause between them.
            if halted_at is None:
                served = current()
                superseded = served is None or (served.name, served.version) != (
                    job.model_name,
                    job.model_version,
                )
                if stop.is_set() or superseded:
                    halt.set()
                    halted_at = time.monotonic()
            elif time.monotonic() - halted_at > grace_s:
                logger.warning("rescoring process did not stop in time; terminated",
                               extra={"fields": {"pid": child.pid}})  # fmt: skip
                child.terminate()
                break
    finally:
        child.join(grace_s)
        if child.is_alive():
            child.kill()
            child.join()
        receive.close()
    if message is None:
        if halted_at is not None:  # terminated while stopping: its lease runs out
            return RescoreResult("stopped", job.model_version, rescored, skipped, 0.0,
                                 pid=child.pid or 0)  # fmt: skip
        raise RescoreProcessError(
            f"rescoring process ended without a result (exit {child.exitcode})", "exit"
        )
    if message[0] == "unavailable":
        raise StoreUnavailable(message[1])
    if message[0] == "error":
        raise RescoreProcessError(f"rescoring process failed: {message[1]}", message[1])
    result: RescoreResult = message[1]
    if result.result == "stopped" and superseded and not stop.is_set():
        result = replace(result, result="superseded")
    return result


def _child(job: RescoreJob, halt: StopFlag, send: Connection) -> None:
    """The rescoring process: load the version, open the store, run, report to the parent."""
    if job.configure_logs:
        from service.logs import configure_logging

        configure_logging(job.settings.log_level)
    threading.Thread(target=_stop_with_parent, args=(halt,), daemon=True).start()
    store: Store | None = None
    try:
        import mlflow

        mlflow.set_tracking_uri(job.tracking_uri)
        mlflow.set_registry_uri(job.registry_uri)
        model = load_model(job.model_uri, job.model_name, job.model_version)
        store = Store.from_settings(job.settings)
        rescorer = Rescorer(
            store,
            batch_size=job.batch_size,
            lease_s=job.lease_s,
            max_sessions=job.max_sessions,
            holder=job.holder,
            progress=lambda done, skipped: send.send(("batch", done, skipped)),
        )
        send.send(("result", rescorer.run(model, stop=halt)))
    except StoreUnavailable as exc:
        send.send(("unavailable", exc.reason))
    except Exception as exc:  # reported by type: an error's text may quote stored data
        logger.error("rescoring process failed", extra={"fields": {"error": type(exc).__name__}})
        send.send(("error", type(exc).__name__))
    finally:
        if store is not None:
            store.close()
        send.close()


def _stop_with_parent(halt: Any) -> None:
    """Stop after the batch once the serving process is gone (killed, say): no orphan keeps
    rescoring; the lease it gives up lets the next worker resume."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        halt.set()
