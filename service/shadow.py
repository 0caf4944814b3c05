"""The shadow challenger: every scored request is scored again by the ``challenger`` version,
off the response path, and the two are compared; the comparison is logged, never returned.

A route hands its :class:`~models.scoreset.ScoreSet` to :meth:`ShadowScorer.observe` after the
response is built. That only puts a small job (the validated episodes, the champion's
probabilities and bands) on a bounded queue, or counts the clients as dropped when the queue is
full: it never waits. One background thread per worker takes what queued up within
``shadow_batch_wait_s``, scores it with the challenger in one vectorised pass (the same
:meth:`~models.scorer.Scorer.score` the routes call, with ``explain=False``: probabilities and
bands only, no TreeSHAP and no drivers), and writes one line per client to a
JSON-lines file and the series of :meth:`~service.metrics.ServiceMetrics.observe_shadow`. A
challenger that raises, refuses a client or cannot write its file is logged and counted; the
response was sent before it ran.

A comparison line holds the two probabilities, the two bands and the two versions, and the time
of the pass (not of the request): no client id, rating, date or clinic. ``alliance-risk promote
--shadow-log`` summarises these files as evidence next to its gates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from features.episodes import Episodes
from models.scoreset import ScoreSet
from service.jsonl_log import RotatingLog as ComparisonLog
from service.metrics import ServiceMetrics
from service.model_store import LoadedModel, ModelStore

logger = logging.getLogger(__name__)

#: The most clients one shadow pass scores (a batch request larger than this is one pass).
MAX_PASS_CLIENTS = 2000
#: Fields of one comparison line, in order (``training.promotion`` reads them).
FIELDS = (
    "at",
    "model",
    "champion_version",
    "challenger_version",
    "p_champion",
    "p_challenger",
    "band_champion",
    "band_challenger",
)


class ScoreObserver(Protocol):
    """What a scoring route tells after it built its response (``app.state.observers``)."""

    def observe(self, model: LoadedModel, scored: ScoreSet) -> None: ...


def challenger_uri(model_uri: str, alias: str) -> str | None:
    """``models:/<name>@<alias>`` for a service watching ``models:/<name>@champion``, else None
    (a fixed URI or another alias has no challenger)."""
    name, sep, watched = model_uri.removeprefix("models:/").rpartition("@")
    if not model_uri.startswith("models:/") or not sep or watched != "champion" or not name:
        return None
    return f"models:/{name}@{alias}"


@dataclass(frozen=True, eq=False)
class ShadowJob:
    """One request's scored clients: the episodes and, per scored row, the champion's output."""

    episodes: Episodes
    episode: np.ndarray  # (n,) positions in ``episodes`` of the scored rows
    probability: np.ndarray  # (n,) the champion's probabilities
    band: np.ndarray  # (n,) the champion's bands
    model: str
    version: str

    @property
    def n(self) -> int:
        return int(self.episode.shape[0])


def concat_episodes(parts: list[Episodes]) -> Episodes:
    """Episodes of one profile, one after the other (episode indices shifted)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.n_episodes for p in parts[:-1]])
    columns = {}
    for f in dataclasses.fields(Episodes):
        if f.name == "profile":
            continue
        values = [getattr(p, f.name) for p in parts]
        if f.name == "episode":
            values = [np.where(v >= 0, v + o, -1) for v, o in zip(values, offsets, strict=True)]
        columns[f.name] = np.concatenate(values, axis=1 if f.name == "ratings" else 0)
    return Episodes(profile=parts[0].profile, **columns)


_STOP = object()


class ShadowScorer:
    """Scores what the champion scored with the challenger of ``store``, in one thread.

    Parameters
    ----------
    store
        The challenger's :class:`ModelStore` (``challenger=True``); nothing is queued while it
        holds no model.
    metrics
        Where comparisons, drops and failures are counted.
    log
        Where comparison lines go.
    queue_size
        Clients that may wait (a request's clients queue together or not at all); the clients
        of a request that does not fit are dropped and counted.
    batch_wait_s
        How long the thread collects requests before one scoring pass.
    """

    def __init__(
        self,
        store: ModelStore,
        metrics: ServiceMetrics,
        log: ComparisonLog,
        *,
        queue_size: int,
        batch_wait_s: float,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.log = log
        self.batch_wait_s = batch_wait_s
        self.queue_size = queue_size
        # Bounded in clients, not requests: a waiting batch holds all its clients' episodes.
        self._queue: queue.Queue[object] = queue.Queue()
        self._waiting = 0
        self._waiting_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="shadow-challenger", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    def observe(self, model: LoadedModel, scored: ScoreSet) -> None:
        """Queue ``scored`` for the challenger, or count it dropped; never blocks."""
        if self.store.current is None or scored.n_rows == 0 or self._stopping:
            return
        job = ShadowJob(
            episodes=scored.episodes,
            episode=scored.episode,
            probability=scored.explanation.probability,
            band=scored.risk_band,
            model=model.name,
            version=model.version,
        )
        with self._waiting_lock:
            fits = self._waiting + job.n <= self.queue_size
            if fits:
                self._waiting += job.n
        if not fits:
            self.metrics.shadow_dropped.inc(job.n)
            return
        self._queue.put_nowait(job)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Until every queued job was compared (tests and shutdown); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Compare what is queued (up to ``timeout``), stop the thread, close the file."""
        self._stopping = True
        if self._thread.is_alive():
            self.wait_idle(timeout)
            self._queue.put_nowait(_STOP)
            self._thread.join(timeout)
        self.log.close()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._queue.task_done()
                return
            assert isinstance(first, ShadowJob)
            self._taken(first)
            jobs, stop = self._collect(first)
            try:
                self._compare(jobs)
            except Exception as exc:  # the thread must outlive any one pass
                logger.error("shadow comparison failed", extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
            finally:
                for _ in range(len(jobs) + stop):
                    self._queue.task_done()
            if stop:
                return

    def _collect(self, first: ShadowJob) -> tuple[list[ShadowJob], bool]:
        """``first`` and what else arrives within ``batch_wait_s`` (up to a pass's size)."""
        jobs, n = [first], first.n
        deadline = time.monotonic() + self.batch_wait_s
        while n < MAX_PASS_CLIENTS:
            try:
                job = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            assert isinstance(job, ShadowJob)
            self._taken(job)
            jobs.append(job)
            n += job.n
        return jobs, False

    def _taken(self, job: ShadowJob) -> None:
        with self._waiting_lock:
            self._waiting -= job.n

    def _compare(self, jobs: list[ShadowJob]) -> None:
        challenger = self.store.current
        if challenger is None:  # the alias was removed meanwhile
            return
        profile = challenger.scorer.profile
        same = [j for j in jobs if j.episodes.profile == profile]
        other = sum(j.n for j in jobs if j.episodes.profile != profile)
        if other:  # e.g. another instrument: the challenger cannot score these requests
            self.metrics.shadow_failures.labels(reason="refused").inc(other)
        if not same:
            return
        episodes = concat_episodes([j.episodes for j in same])
        try:
            scored = challenger.scorer.score(episodes, explain=False)  # no TreeSHAP, no drivers
        except Exception as exc:
            self.metrics.shadow_failures.labels(reason="error").inc(sum(j.n for j in same))
            logger.error(
                "challenger failed to score; serving is unaffected",
                extra={"fields": {"challenger_version": challenger.version,
                                  "error": type(exc).__name__}},
            )  # fmt: skip
            return
        p = np.full(episodes.n_episodes, np.nan)
        band = np.full(episodes.n_episodes, None, dtype=object)
        p[scored.episode] = scored.explanation.probability
        band[scored.episode] = scored.risk_band
        at = datetime.now(UTC).isoformat(timespec="seconds")
        lines: list[str] = []
        refused = 0
        by_versions: dict[str, list[float]] = {}
        disagree: Counter[str] = Counter()
        offset = 0
        for job in same:
            for i, p0, b0 in zip(job.episode + offset, job.probability, job.band, strict=True):
                p1, b1 = p[i], band[i]
                if b1 is None:
                    refused += 1
                    continue
                lines.append(_line(at, job, challenger, float(p0), float(p1), str(b0), str(b1)))
                by_versions.setdefault(job.version, []).append(abs(float(p0) - float(p1)))
                disagree[job.version] += b0 != b1
            offset += job.episodes.n_episodes
        if refused:
            self.metrics.shadow_failures.labels(reason="refused").inc(refused)
        for version, differences in by_versions.items():
            self.metrics.observe_shadow(version, challenger.version, differences, disagree[version])
        if lines:
            try:
                self.log.write(lines)
            except OSError as exc:
                self.metrics.shadow_failures.labels(reason="log").inc(len(lines))
                logger.error("shadow comparisons not written", extra={"fields": {"error": type(exc).__name__}})  # fmt: skip


def _line(
    at: str, job: ShadowJob, challenger: LoadedModel, p0: float, p1: float, b0: str, b1: str
) -> str:
    values = (at, job.model, job.version, challenger.version, round(p0, 6), round(p1, 6), b0, b1)
    return json.dumps(dict(zip(FIELDS, values, strict=True)), separators=(",", ":"))
