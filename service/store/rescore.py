"""Rescoring the stored open episodes when a new champion is served.

When the model store swaps in a new version (:class:`service.model_store.ModelStore` calls its
listeners), :class:`RescoreWatcher` wakes its own thread, which has :class:`Rescorer` rescore
every open stored episode with that model, in batches, through the one scorer (explanations
included: the caseload shows a top driver), and store each score with ``reason = 'rescore'``
and its model version. By default the run goes to a process of its own
(:mod:`service.store.rescore_process`), so it does not share the serving process's GIL;
``alliance-risk db rescore`` runs the same :meth:`Rescorer.run` in the foreground. Serving
never waits for it: scoring runs outside any transaction, each batch's write is one short
transaction, and requests keep scoring with the served model meanwhile.

One worker rescores. The ``rescore_state`` row is a lease: a worker claims it for a model
version (in a write transaction: SQLite's writer lock, PostgreSQL's row lock), renews it with
every batch's commit, and records how far it got (the last episode id), so another worker
takes over from there if the holder dies (at once if it stopped or was superseded: it gives
the lease up), and a version already done is not redone. A batch
skips an episode written since it was read (a new session scored by the served model, an
outcome): the newer score stands.

Progress is logged (counts and versions, never a client id) and counted on /metrics
(``alliance_risk_rescored_episodes_total``, ``alliance_risk_rescore_runs_total``).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from prometheus_client import Counter
from pydantic import TypeAdapter
from sqlalchemy import Connection, Text, bindparam, func, insert, select, type_coerce, update

from models.results import RiskExplanation, RiskScore
from service.audit import AuditError, AuditRecord, Outcome
from service.audit_log import AuditLog
from service.episodes import edge_problems, to_episodes
from service.metrics import ServiceMetrics
from service.model_store import LoadedModel
from service.schemas import RiskRequest
from service.store import repository
from service.store.db import Store, StoreUnavailable
from service.store.tables import clinic_state, episodes, rescore_state, risk_scores

if TYPE_CHECKING:
    from service.store.rescore_process import RescoreJob

logger = logging.getLogger(__name__)

#: The lease row's name (one champion per service).
LEASE = "champion"
RunResult = Literal["done", "already_done", "held", "superseded", "lost_lease", "stopped"]
#: A stored score's explanation straight to JSON text (the same fields as RiskScore.to_dict()).
_EXPLANATION: TypeAdapter[RiskExplanation] = TypeAdapter(RiskExplanation)


@dataclass(frozen=True)
class RescoreResult:
    """What one :meth:`Rescorer.run` did, and which worker (its lease holder name, its
    process id) did it."""

    result: RunResult
    model_version: str
    rescored: int
    skipped: int
    seconds: float
    holder: str = ""
    pid: int = 0


class StopFlag(Protocol):
    """What tells a run to stop after its batch: a :class:`threading.Event` in the serving
    process, a :func:`multiprocessing.Event` in a rescoring process."""

    def is_set(self) -> bool: ...


#: Audit outcome and status of a run's result (others: unavailable, 503).
_RUN_AUDIT: dict[str, tuple[Outcome, int]] = {"done": ("ok", 200), "failed": ("error", 500)}


class RescoreMetrics:
    """The rescoring series on the app's registry."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.rescored = Counter(
            "alliance_risk_rescored_episodes_total",
            "Stored open episodes rescored after a new champion, by model version.",
            ("model_version",),
            registry=metrics.registry,
        )
        self.runs = Counter(
            "alliance_risk_rescore_runs_total",
            "Rescoring runs by result (done, already_done, held, superseded, lost_lease, "
            "stopped, failed).",
            ("result",),
            registry=metrics.registry,
        )


class Rescorer:
    """Brings every open stored episode's latest score to one model version.

    Parameters
    ----------
    store
        The client store.
    batch_size
        Episodes per batch (one read, one scoring pass, one write transaction).
    lease_s
        How long a claim holds without a batch renewing it; past it another worker takes over.
    max_sessions
        The appointment cap of ``POST /v1/risk`` (an episode over it is left as it is).
    holder
        This worker's name in the lease (default: host pid and a random suffix).
    metrics, audit
        Where a run is counted and its one audit record goes (:meth:`record`); None in a
        rescoring process, whose parent records the run.
    progress
        Called after each committed batch with (rescored, skipped) (the command's progress
        bar, a rescoring process's report to its parent).
    """

    def __init__(
        self,
        store: Store,
        *,
        batch_size: int = 1000,
        lease_s: float = 60.0,
        max_sessions: int = 200,
        holder: str | None = None,
        metrics: RescoreMetrics | None = None,
        audit: AuditLog | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.lease_s = lease_s
        self.max_sessions = max_sessions
        self.holder = holder or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.metrics = metrics
        self.audit = audit
        self.progress = progress

    def run(
        self,
        model: LoadedModel,
        *,
        current: Callable[[], LoadedModel | None] | None = None,
        stop: StopFlag | None = None,
    ) -> RescoreResult:
        """Rescore with ``model`` until every open episode is done, another worker holds the
        lease, ``current()`` serves another version (superseded) or ``stop`` is set. A run
        that stops or is superseded gives the lease up (keeping how far it got), so another
        worker, or this one with the next version, goes on at once."""
        t0 = time.perf_counter()
        rescored = skipped = 0
        claim = self._claim(model)
        result: RunResult
        if isinstance(claim, str):
            result = claim
        else:
            after = claim
            logger.info(
                "rescoring stored episodes",
                extra={"fields": {"model_version": model.version, "resume_after": after > 0}},
            )
            # Every batch allocates a few hundred thousand short-lived objects, and each full
            # collection they trigger walks every object the service holds (MLflow, pandas,
            # the models): about a third of a run's CPU. What is alive now (the service and
            # its models) is left out of the cyclic collector from here on; reference counting
            # still frees it. Once per run, so a promotion's new model is left out too.
            gc.freeze()
            result = "done"
            while True:
                if stop is not None and stop.is_set():
                    result = "stopped"
                    break
                served = current() if current is not None else model
                if served is None or served.version != model.version:
                    result = "superseded"
                    break
                batch = self._batch(model, after)
                if batch is None:
                    self._finish(model)
                    break
                after, n_done, n_skipped = batch
                if n_done < 0:
                    result = "lost_lease"
                    break
                rescored += n_done
                skipped += n_skipped
                if self.metrics is not None:
                    self.metrics.rescored.labels(model.version).inc(n_done)
                if self.progress is not None:
                    self.progress(n_done, n_skipped)
                logger.info(
                    "rescoring progress",
                    extra={"fields": {"model_version": model.version, "rescored": rescored,
                                      "skipped": skipped}},
                )  # fmt: skip
        if result in ("stopped", "superseded"):
            with contextlib.suppress(StoreUnavailable):  # then the lease runs out instead
                self._release(model)
        done = RescoreResult(result, model.version, rescored, skipped,
                             time.perf_counter() - t0, self.holder, os.getpid())  # fmt: skip
        if result not in ("already_done", "held"):
            logger.info(
                "rescoring ended",
                extra={"fields": {"model_version": model.version, "result": result,
                                  "rescored": rescored, "skipped": skipped,
                                  "seconds": round(done.seconds, 2), "pid": done.pid}},
            )  # fmt: skip
        self.record(done)
        return done

    def record(self, done: RescoreResult) -> None:
        """Count a run on /metrics and write its audit record (:meth:`audit_run`): called by
        :meth:`run`, and by the serving process for a run its rescoring process made."""
        if self.metrics is not None:
            self.metrics.runs.labels(done.result).inc()
        if done.result not in ("already_done", "held"):
            self.audit_run(done.model_version, done.result, done.rescored, holder=done.holder)

    def audit_run(
        self,
        model_version: str,
        result: RunResult | str,
        rescored: int,
        *,
        holder: str | None = None,
    ) -> None:
        """One audit record per run that rescored episodes or failed (``clients.rescore``):
        the model version, the episodes rescored (``count``) and the result (done: ok; failed:
        error; superseded, stopped or lost lease: unavailable). A run with nothing to rescore
        (every start-up with an empty or current store) leaves none. The run is not a request:
        no subject or clinic, and ``request_id`` names the run's worker."""
        if self.audit is None or (rescored == 0 and result != "failed"):
            return
        outcome, status = _RUN_AUDIT.get(result, ("unavailable", 503))
        record = AuditRecord(action="clients.rescore", outcome=outcome, status=status,
                             request_id=f"rescore-{holder or self.holder}",
                             model_version=model_version, count=rescored)  # fmt: skip
        try:
            self.audit.write(record)
        except AuditError as exc:
            logger.error("rescoring audit record not written",
                         extra={"fields": {"error": type(exc).__name__}})  # fmt: skip

    # -- the lease ----------------------------------------------------------------------------

    def _claim(self, model: LoadedModel) -> int | Literal["already_done", "held"]:
        """Take the lease for ``model``'s version: the episode id to resume after, or why not."""
        now = datetime.now(UTC)
        s = rescore_state.c
        with self.store.write() as conn:
            row = self._lease_row(conn)
            if row is None:
                conn.execute(
                    insert(rescore_state).values(
                        name=LEASE, done=False, after_episode_id=0, rescored=0
                    )
                )
                row = self._lease_row(conn)
                assert row is not None
            same = (row.model_name, row.model_version) == (model.name, model.version)
            if same and row.done:
                return "already_done"
            lease_until = _aware(row.lease_until)
            if row.holder not in (None, self.holder) and lease_until and lease_until > now:
                return "held"
            values: dict[str, Any] = {"holder": self.holder, "lease_until": self._until()}
            if not same:
                values |= {
                    "model_name": model.name, "model_version": model.version, "done": False,
                    "after_episode_id": 0, "rescored": 0, "started_at": now, "finished_at": None,
                }  # fmt: skip
            conn.execute(update(rescore_state).where(s.name == LEASE).values(**values))
            return 0 if not same else int(row.after_episode_id)

    def remaining(self, model: LoadedModel) -> int | None:
        """How many open episodes a run with ``model`` would still go through (those after
        where the lease's run of this version got to); None when this version is done or
        another worker holds the lease. Reads only."""
        e = episodes.c
        with self.store.read() as conn:
            row = conn.execute(select(rescore_state).where(rescore_state.c.name == LEASE)).first()
            after = 0
            if row is not None:
                same = (row.model_name, row.model_version) == (model.name, model.version)
                lease_until = _aware(row.lease_until)
                if same and row.done:
                    return None
                if (
                    row.holder not in (None, self.holder)
                    and lease_until
                    and (lease_until > datetime.now(UTC))
                ):
                    return None
                after = int(row.after_episode_id) if same else 0
            query = select(func.count()).where(e.id > after, e.outcome.is_(None))
            return int(conn.execute(query).scalar_one())

    def _lease_row(self, conn: Connection) -> Any:
        query = select(rescore_state).where(rescore_state.c.name == LEASE)
        if self.store.backend == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).one_or_none()

    def _until(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.lease_s)

    def _release(self, model: LoadedModel) -> None:
        """Give the lease up, keeping how far this run got (a lease another worker already
        took over is left alone)."""
        s = rescore_state.c
        with self.store.write() as conn:
            conn.execute(
                update(rescore_state)
                .where(s.name == LEASE, s.holder == self.holder, s.model_version == model.version)
                .values(holder=None, lease_until=None)
            )

    def _finish(self, model: LoadedModel) -> None:
        s = rescore_state.c
        with self.store.write() as conn:
            conn.execute(
                update(rescore_state)
                .where(s.name == LEASE, s.holder == self.holder, s.model_version == model.version)
                .values(done=True, holder=None, lease_until=None, finished_at=datetime.now(UTC))
            )

    # -- one batch -----------------------------------------------------------------------------

    def _batch(self, model: LoadedModel, after: int) -> tuple[int, int, int] | None:
        """Read, score and write the next batch after episode id ``after``: (last id, rescored,
        skipped), rescored -1 when the lease was lost; None when no open episode is left."""
        with self.store.read() as conn:
            requests, seen = self._read(conn, after)
        if not seen:
            return None
        last = max(seen)
        scores = self._score(model, requests)
        try:
            with self.store.write() as conn:
                written = self._write(conn, model, scores, seen)
                s = rescore_state.c
                renewed = conn.execute(
                    update(rescore_state)
                    .where(
                        s.name == LEASE, s.holder == self.holder, s.model_version == model.version
                    )
                    .values(
                        after_episode_id=last,
                        rescored=s.rescored + written,
                        lease_until=self._until(),
                    )
                ).rowcount
                if renewed != 1:
                    raise _LostLease  # rolls the batch back
        except _LostLease:
            return last, -1, 0
        return last, written, len(seen) - written

    def _read(
        self, conn: Connection, after: int
    ) -> tuple[list[tuple[int, RiskRequest]], dict[int, tuple[Any, Any]]]:
        """The next open episodes as the requests the scorer path takes (those with an
        appointment), and what each episode row was when read (its latest score id and update
        time)."""
        e = episodes.c
        found = repository.episode_requests(
            conn, (e.id > after) & e.outcome.is_(None), limit=self.batch_size
        )
        requests = [(r.id, request) for r, request in found if request.sessions]
        seen = {r.id: (r.latest_score_id, r.updated_at) for r, _ in found}
        return requests, seen

    def _score(
        self, model: LoadedModel, requests: list[tuple[int, RiskRequest]]
    ) -> list[tuple[int, str, RiskScore]]:
        """(episode id, clinic, score) of each episode the model can score (the same edge
        checks and scorer as ``POST /v1/risk``)."""
        profile = model.scorer.profile
        full = sum(len(r.sessions) > self.max_sessions for _, r in requests)
        if full:  # POST .../sessions refuses to store more; older rows may hold more
            logger.warning("stored episodes over the appointment cap not rescored",
                           extra={"fields": {"episodes": full,
                                             "max_sessions": self.max_sessions}})  # fmt: skip
        ok = [
            (i, r)
            for i, r in requests
            if not edge_problems(r, profile, max_sessions=self.max_sessions)
        ]
        if not ok:
            return []
        scored = model.scorer.score(to_episodes([r for _, r in ok], profile).episodes)
        return [
            (ok[j][0], ok[j][1].clinic_id, outcome)
            for j, outcome in scored.by_episode()
            if isinstance(outcome, RiskScore)
        ]

    def _write(
        self,
        conn: Connection,
        model: LoadedModel,
        scores: list[tuple[int, str, RiskScore]],
        seen: dict[int, tuple[Any, Any]],
    ) -> int:
        """Store the scores of episodes unchanged since they were read; bump their clinics'
        change counters. Returns how many were stored."""
        if not scores:
            return 0
        e = episodes.c
        ids = [i for i, _, _ in scores]
        query = select(e.id, e.latest_score_id, e.updated_at, e.outcome).where(e.id.in_(ids))
        if self.store.backend == "postgresql":
            query = query.with_for_update()
        now_rows = {r.id: r for r in conn.execute(query)}
        keep = [
            (i, clinic, score)
            for i, clinic, score in scores
            if (r := now_rows.get(i)) is not None
            and r.outcome is None
            and (r.latest_score_id, r.updated_at) == seen[i]
        ]
        if not keep:
            return 0
        scored_at = datetime.now(UTC)
        values = [
            {
                "episode_id": i,
                "model_name": model.name,
                "model_version": model.version,
                "scored_at": scored_at,
                "landmark": score.landmark,
                "probability": score.probability,
                "band": score.risk_band,
                "top_driver": top_driver(score),
                "explanation_json": _EXPLANATION.dump_json(score.explanation).decode(),
                "reason": "rescore",
            }
            for i, _, score in keep
        ]
        # The explanation goes in as the JSON text pydantic writes (the JSON type would
        # convert it to Python objects and through json.dumps again).
        new_ids = conn.execute(
            insert(risk_scores)
            .values(explanation=type_coerce(bindparam("explanation_json"), Text))
            .returning(risk_scores.c.id, sort_by_parameter_order=True),
            values,
        ).scalars().all()  # fmt: skip
        conn.execute(
            update(episodes)
            .where(e.id == bindparam("b_id"))
            .values(
                latest_score_id=bindparam("b_score"),
                latest_probability=bindparam("b_p"),
                latest_band=bindparam("b_band"),
                latest_model_version=bindparam("b_version"),
                latest_scored_at=bindparam("b_at"),
                latest_top_driver=bindparam("b_driver"),
            ),
            [
                {"b_id": v["episode_id"], "b_score": sid, "b_p": v["probability"],
                 "b_band": v["band"], "b_version": model.version, "b_at": scored_at,
                 "b_driver": v["top_driver"]}
                for v, sid in zip(values, new_ids, strict=True)
            ],
        )  # fmt: skip
        c = clinic_state.c
        for clinic in sorted({clinic for _, clinic, _ in keep}):
            conn.execute(
                update(clinic_state).where(c.clinic_id == clinic).values(version=c.version + 1)
            )
        return len(keep)


#: The longest wait after failed runs, in check intervals (30 s each by default: 16 minutes).
_MAX_BACKOFF = 32


class _LostLease(Exception):
    """Another worker took the lease over (this one stalled past it)."""


def top_driver(score: RiskScore) -> str | None:
    """The caseload's main reason of ``score``: the same rule as a score stored by the routes
    (:func:`service.store.repository.top_driver`)."""
    return repository.top_driver(score.explanation.drivers)


def _aware(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # SQLite hands stored UTC times back naive


class RescoreWatcher:
    """The thread that rescores when the served version changes.

    :meth:`notify` (a :class:`~service.model_store.ModelStore` listener) only wakes the thread.
    The thread also looks every ``check_interval_s``: at start-up (stored scores may be from an
    older champion), and to take over the lease of a worker that died mid-way.

    With ``job`` (``rescore_mode = "process"``), a run with episodes to rescore goes to a
    process of its own (:mod:`service.store.rescore_process`), which runs the same
    :meth:`Rescorer.run`; this thread waits for it and records the run. A run with nothing to
    do (the usual start-up) stays in this thread: it is a read or two. A child that fails
    hands its run to this thread; a run that fails here too gives its lease up, and each
    failure in a row doubles the wait before the next look (up to 32 check intervals).
    """

    def __init__(
        self,
        rescorer: Rescorer,
        current: Callable[[], LoadedModel | None],
        *,
        check_interval_s: float = 30.0,
        job: Callable[[LoadedModel], RescoreJob] | None = None,
    ) -> None:
        self.rescorer = rescorer
        self.current = current
        self.check_interval_s = check_interval_s
        self.job = job
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: RescoreResult | None = None

    def notify(self, _model: LoadedModel | None = None) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rescore", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        failures = 0  # runs failed in a row: the next look waits twice as long, up to a cap
        while not self._stop.is_set():
            model = self.current()
            if model is not None:
                try:
                    self.last = self._run(model)
                    failures = 0
                except StoreUnavailable:
                    pass  # logged by the store; tried again at the next wake or interval
                except Exception as exc:  # the thread must outlive one failed run
                    failures += 1
                    self._failed(model, exc)
            self._wake.wait(self.check_interval_s * min(2**failures, _MAX_BACKOFF))
            self._wake.clear()

    def _failed(self, model: LoadedModel, exc: Exception) -> None:
        """Count, audit and log a failed run, and give its lease up (another worker may try)."""
        if self.rescorer.metrics is not None:
            self.rescorer.metrics.runs.labels("failed").inc()
        self.rescorer.audit_run(model.version, "failed", 0)
        logger.error("rescoring failed", extra={"fields": {"error": type(exc).__name__}})
        with contextlib.suppress(Exception):  # else the lease runs out
            self.rescorer._release(model)

    def _run(self, model: LoadedModel) -> RescoreResult:
        if self.job is None or not self.rescorer.remaining(model):
            return self.rescorer.run(model, current=self.current, stop=self._stop)
        from service.store.rescore_process import rescore_in_process

        return rescore_in_process(
            self.rescorer, model, self.job, stop=self._stop, current=self.current
        )
