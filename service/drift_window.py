"""Live drift per clinic: a rolling window of the clients the service scored, scored again at the
served model's reference landmarks and compared with its reference profile, exported as gauges
on /metrics.

A route hands its :class:`~models.scoreset.ScoreSet` to :meth:`DriftWindows.observe` after the
response is built. That copies each scored client's history into its clinic's window, keyed by
an in-memory hash of the client id (this process's salted ``hash``; never exported): a client
scored again replaces their earlier history and moves to the end, and the least recently scored
client leaves first. A window is bounded in clients (``drift_window_clients``) and in
appointments (``drift_window_rows``), and a client not scored for ``drift_window_max_age_s``
leaves it. Only the compact history is kept (appointment number, date, attendance and ratings of
the appointments up to the model's ``k_max``, intake day, age, outcome): no id, no feature row.

Every ``drift_interval_s`` a background thread takes each window's histories (a list copy under
the lock), rebuilds them as :class:`~features.episodes.Episodes`, and, outside the lock, scores
them with the served model's own :meth:`~models.scorer.Scorer.score`, :data:`PASS_CLIENTS`
clients per pass (each pass's rows are counted into the reference's bins and dropped, so the
transient memory is a pass's, not the window's), at the landmarks its
reference holds (``landmarks="training"``: every appointment up to ``k_max``, an ended
episode's last included) with ``explain=False``, as ``alliance-risk monitor`` does. A request is scored at
whatever appointment it asks about (beyond ``k_max`` too); judging those rows against a
reference of every landmark would report service usage as drift. The counts are judged by
:class:`models.drift.DriftCounts` (the rule of :func:`models.drift.drift_report`, the same
report as one pass over the whole window), counting clients, and set per clinic:

- ``alliance_risk_drift_psi{clinic,group}`` and ``alliance_risk_drift_ks{clinic,group}``, for
  each explanation group (its most drifted feature) and ``group="score"``;
- ``alliance_risk_drift_status{clinic,group}``: 0 ok, 1 watch, 2 alert;
- ``alliance_risk_drift_window_rows{clinic}``: the clients in the window;
- ``alliance_risk_drift_judged{clinic}``: 1 when the window held ``drift_min_clients`` clients
  and was judged, else 0 (PSI, KS and status then read 0 and say nothing).

Each clinic is compared with its own reference where the model's profile keeps one, else with all
clinics. Every series the last recomputation did not set is set to 0: a clinic that went quiet, a
group the new model does not have. Labels are clinic ids and group names only. At most
``drift_max_clinics`` clinics are tracked; clients of others are counted. When the served model
changes, the windows restart (the reference is the new model's). A model without a reference
profile exports no drift.

With several workers each keeps its own windows of the requests it served (a share of each
clinic's traffic); /metrics shows the largest PSI, KS, status and judged across live workers and
the sum of their clients (``multiprocess_mode`` in :mod:`service.metrics`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from features import contract
from features.episodes import Episodes
from features.profiles import InstrumentProfile
from models.drift import DriftCounts
from models.scorer import Scorer
from models.scoreset import ScoreSet
from service.metrics import ServiceMetrics
from service.model_store import LoadedModel

logger = logging.getLogger(__name__)

#: Label value of episodes sent without a clinic id.
NO_CLINIC = "none"
_STATUS_VALUE = {"ok": 0, "watch": 1, "alert": 2, "too_few": 0}
_ENDED = np.array([contract.OUTCOME_CODES.index(c) for c in (contract.COMPLETED, contract.DROPOUT)])
#: Columns of a history before the ratings: appointment number, day, attendance code.
_FIXED = 3
#: Clients scored in one pass of a recomputation. A window of 500 clients scored at once took
#: 22.7 MB of transient memory (tracemalloc) in the recompute thread, on top of a worker that had
#: just answered a 1,000-client batch: bench_service's worker peaked at 410 MB (target 400).
#: In passes of 50 into one buffer for the window's rows: 10.7 MB (17.6 MB for a window of 1,000
#: clients). Each pass counted into the reference's bins and dropped: 3.2 MB whatever the
#: window's size (1.7 MB at 25 clients per pass, 6.0 MB at 100); worker VmHWM after four
#: 1,000-client batches and recomputes, median 398.6 -> 390.9 MB.
PASS_CLIENTS = 50


@dataclass(frozen=True, eq=False)
class _History:
    """One client's latest history: ``appointments`` is ``(m, 3 + n_elements)`` float64 (number,
    day, attendance code, ratings), ``m`` at most the model's ``k_max``; ``at`` when scored."""

    appointments: np.ndarray
    intake_day: float
    age: float
    outcome: int
    at: float

    @property
    def n(self) -> int:
        return int(self.appointments.shape[0])


class _Window:
    """A clinic's clients, least recently scored first, bounded in clients and appointments."""

    def __init__(self, max_clients: int, max_rows: int) -> None:
        self.max_clients = max_clients
        self.max_rows = max_rows
        self.clients: OrderedDict[int, _History] = OrderedDict()
        self.n_rows = 0

    def put(self, key: int, history: _History) -> None:
        old = self.clients.pop(key, None)
        if old is not None:
            self.n_rows -= old.n
        self.clients[key] = history
        self.n_rows += history.n
        while len(self.clients) > self.max_clients or self.n_rows > self.max_rows:
            self._pop_oldest()

    def histories(self, since: float) -> list[_History]:
        """The histories of clients scored at or after ``since`` (older ones leave)."""
        while self.clients and next(iter(self.clients.values())).at < since:
            self._pop_oldest()
        return list(self.clients.values())

    def _pop_oldest(self) -> None:
        _, gone = self.clients.popitem(last=False)
        self.n_rows -= gone.n


def _histories(scored: ScoreSet, k_max: int, now: float) -> list[tuple[int, _History]]:
    """Position in ``scored.episodes`` and compact history of each scored episode (vectorised:
    it runs in the request thread, after the response is built)."""
    episodes = scored.episodes
    positions = np.unique(scored.episode)
    if positions.size == 0:
        return []
    if positions.size == 1:  # /v1/risk, FHIR, CDS: one client, no sort
        order = np.flatnonzero(episodes.episode == positions[0])
        kept = order[episodes.session_number[order] <= k_max]
        n_all, n_kept = np.array([order.size]), np.array([kept.size])
    else:
        of = np.full(episodes.n_episodes + 1, -1, dtype=np.int64)  # episode -> its index
        of[positions] = np.arange(positions.size)
        which = of[episodes.episode]  # an appointment of no episode (-1) maps to of[-1] = -1
        ours = which >= 0
        order = np.flatnonzero(ours)[np.argsort(which[ours], kind="stable")]
        kept = order[episodes.session_number[order] <= k_max]
        n_all = np.bincount(which[order], minlength=positions.size)
        n_kept = np.bincount(which[kept], minlength=positions.size)
    table = np.column_stack(
        (
            episodes.session_number[kept],
            episodes.day[kept],
            episodes.attendance[kept],
            episodes.ratings[:, kept].T,
        )
    ).astype(np.float64)
    outcome = episodes.outcome[positions].astype(np.int64)
    # An ended episode whose last appointment is beyond k_max: every kept one was open.
    outcome[(n_kept < n_all) & ((outcome == _ENDED[0]) | (outcome == _ENDED[1]))] = -1
    ends = np.cumsum(n_kept).tolist()
    return [
        (ep, _History(table[start:end].copy(), intake, age, out, now))  # no view of the batch
        for ep, start, end, intake, age, out in zip(
            positions.tolist(),
            [0, *ends[:-1]],
            ends,
            episodes.intake_day[positions].tolist(),
            episodes.age[positions].tolist(),
            outcome.tolist(),
            strict=True,
        )
    ]


def _episodes(
    histories: list[_History], profile: InstrumentProfile, clinic: str | None
) -> Episodes:
    """The histories as episodes of one clinic (positional ids: nothing identifies a client)."""
    n = len(histories)
    lengths = [h.n for h in histories]
    table = np.concatenate([h.appointments for h in histories])
    return Episodes.from_columns(
        profile,
        client_id=[str(i) for i in range(n)],
        clinic_id=[clinic] * n,
        therapist_id=[None] * n,
        intake_day=[h.intake_day for h in histories],
        age=[h.age for h in histories],
        outcome=[h.outcome for h in histories],
        episode=np.repeat(np.arange(n), lengths),
        session_number=table[:, 0],
        day=table[:, 1],
        attendance=table[:, 2],
        ratings=table[:, _FIXED:].T,
    )


def _count_window(
    scorer: Scorer, histories: list[_History], clinic: str | None
) -> tuple[DriftCounts, int]:
    """The reference's bin counts of the histories' rows at its landmarks, and the clients that
    have any.

    Scored :data:`PASS_CLIENTS` clients per pass, each pass's rows counted into the bins and
    dropped: the transient memory is one pass's, whatever the window's size. Passes hold
    distinct clients, so their client counts add up."""
    assert scorer.reference is not None
    counts = DriftCounts(scorer.reference, scorer.registry, clinic=clinic)
    n_clients = 0
    for start in range(0, len(histories), PASS_CLIENTS):
        part = histories[start : start + PASS_CLIENTS]
        scored = scorer.score(
            _episodes(part, scorer.profile, clinic), landmarks="training", explain=False
        )
        counts.add(scored.features, scored.probability)
        n_clients += int(np.unique(scored.episode).shape[0])
        del scored
    return counts, n_clients


@dataclass(frozen=True)
class DriftConfig:
    window_clients: int
    window_rows: int
    max_age_s: float
    min_clients: int
    interval_s: float
    max_clinics: int


class DriftWindows:
    """Per-clinic windows of scored clients and the thread that turns them into gauges."""

    def __init__(self, metrics: ServiceMetrics, config: DriftConfig) -> None:
        self.metrics = metrics
        self.config = config
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._model: LoadedModel | None = None
        # Series set by earlier recomputations: clinic -> groups (recompute thread only).
        self._exported: dict[str, set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-windows", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def observe(self, model: LoadedModel, scored: ScoreSet) -> None:
        """Put ``scored``'s clients' histories in their clinics' windows (copies; the lock is
        held for the dictionary updates only)."""
        if scored.n_rows == 0 or model.scorer.reference is None:
            return
        now = time.time()
        histories = _histories(scored, model.scorer.k_max, now)
        ids = scored.episodes.client_id
        clinics = scored.episodes.clinic_id
        keyed = [
            (NO_CLINIC if clinics[ep] is None else str(clinics[ep]), hash(ids[ep]), history)
            for ep, history in histories
        ]
        untracked = 0
        with self._lock:
            if self._model is not model:
                self._windows.clear()  # another model: another reference, another k_max
                self._model = model
            for label, key, history in keyed:
                window = self._windows.get(label)
                if window is None:
                    if len(self._windows) >= self.config.max_clinics:
                        untracked += 1
                        continue
                    window = self._windows[label] = _Window(
                        self.config.window_clients, self.config.window_rows
                    )
                window.put(key, history)
        if untracked:
            self.metrics.drift_untracked.inc(untracked)

    def recompute(self) -> None:
        """Score every window at the reference's landmarks, judge it, and set the gauges."""
        since = time.time() - self.config.max_age_s if self.config.max_age_s > 0 else -np.inf
        with self._lock:
            model = self._model
            taken = {label: w.histories(since) for label, w in self._windows.items()}
        exported: dict[str, set[str]] = {}
        if model is not None and model.scorer.reference is not None:
            for label, histories in taken.items():
                self.metrics.drift_rows.labels(label).set(len(histories))
                exported[label] = self._judge(model, label, histories)
        m = self.metrics
        for label, groups in self._exported.items():  # a quiet clinic, another model's groups
            if label not in exported:
                m.drift_rows.labels(label).set(0)
                m.drift_judged.labels(label).set(0)
            for group in groups - exported.get(label, set()):
                for gauge in (m.drift_psi, m.drift_ks, m.drift_status):
                    gauge.labels(label, group).set(0.0)
        self._exported = exported

    def _judge(self, model: LoadedModel, label: str, histories: list[_History]) -> set[str]:
        """Set the clinic's gauges; the groups whose series were set (none when too few)."""
        scorer = model.scorer
        if len(histories) < self.config.min_clients:
            self.metrics.drift_judged.labels(label).set(0)
            return set()
        clinic = None if label == NO_CLINIC else label
        counts, n_clients = _count_window(scorer, histories, clinic)
        if n_clients < self.config.min_clients:  # e.g. ended after their first appointment
            self.metrics.drift_judged.labels(label).set(0)
            return set()
        report = counts.report(n_clients=n_clients, min_clients=self.config.min_clients)
        for group, drift in (("score", report.score), *report.groups.items()):
            self.metrics.drift_psi.labels(label, group).set(drift.psi)
            self.metrics.drift_ks.labels(label, group).set(drift.ks)
            self.metrics.drift_status.labels(label, group).set(_STATUS_VALUE[drift.status])
        self.metrics.drift_judged.labels(label).set(1)
        return {"score", *report.groups}

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.recompute()
            except Exception as exc:  # the gauges may go stale; the thread must not die
                logger.error("drift recomputation failed",
                             extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
