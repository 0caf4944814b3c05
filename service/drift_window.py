"""Live drift per clinic: a rolling window of the rows the service scored, compared with the
served model's reference profile, exported as gauges on /metrics.

A route hands its :class:`~models.scoreset.ScoreSet` to :meth:`DriftWindows.observe` after the
response is built; that copies the feature rows and probabilities into the clinic's ring buffer
(the latest ``drift_window_rows`` rows, and none older than ``drift_window_max_age_s``). Every
``drift_interval_s`` a background thread runs :func:`models.drift.drift_report` on each window,
the same rule as ``alliance-risk monitor``, and sets per clinic:

- ``alliance_risk_drift_psi{clinic,group}`` and ``alliance_risk_drift_ks{clinic,group}``, for
  each explanation group (its most drifted feature) and ``group="score"``;
- ``alliance_risk_drift_status{clinic,group}``: 0 ok, 1 watch, 2 alert;
- ``alliance_risk_drift_window_rows{clinic}``: the clients in the window.

A client scored more than once counts once, with their latest row (a dashboard that refreshes a
caseload must not weigh those clients more). Each clinic is compared with its own reference
where the model's profile keeps one, else with all clinics (:func:`models.drift.drift_report`).
PSI, KS and status read 0 until a window holds ``drift_min_clients`` clients. Labels are clinic ids and
group names only. At most ``drift_max_clinics`` clinics are tracked; rows of others are counted.
When the served model changes, the windows restart (the rows were another model's inputs, and
the reference is the new model's). A model without a reference profile exports no drift.

With several workers each keeps its own windows of the requests it served (a share of each
clinic's traffic); /metrics shows the largest PSI, KS and status across live workers and the sum
of their rows (``multiprocess_mode`` in :mod:`service.metrics`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from models.drift import drift_report
from models.scoreset import ScoreSet
from service.metrics import ServiceMetrics
from service.model_store import LoadedModel

logger = logging.getLogger(__name__)

#: Label value of episodes sent without a clinic id.
NO_CLINIC = "none"
_STATUS_VALUE = {"ok": 0, "watch": 1, "alert": 2, "too_few": 0}


class _Window:
    """Ring buffer of the latest ``size`` rows of one clinic: features, probability, time, and
    an in-memory hash of the client id (this process's salted ``hash``; never exported) so
    that a client scored again counts once."""

    def __init__(self, size: int, n_features: int) -> None:
        self.X = np.empty((size, n_features))
        self.p = np.empty(size)
        self.t = np.empty(size)
        self.client = np.empty(size, dtype=np.int64)
        self.n = 0
        self._next = 0

    def add(self, X: np.ndarray, p: np.ndarray, client: np.ndarray, now: float) -> None:
        size = self.p.shape[0]
        X, p, client = X[-size:], p[-size:], client[-size:]
        k = p.shape[0]
        at = (self._next + np.arange(k)) % size
        self.X[at], self.p[at], self.client[at], self.t[at] = X, p, client, now
        self._next = (self._next + k) % size
        self.n = min(self.n + k, size)

    def rows(self, since: float) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the latest row of each client scored at or after ``since``."""
        size = self.p.shape[0]
        order = np.arange(self.n) if self.n < size else (self._next + np.arange(size)) % size
        order = order[self.t[order] >= since]
        # The last occurrence of each client: first in the reversed order.
        _, last = np.unique(self.client[order][::-1], return_index=True)
        keep = np.sort(order[::-1][last])
        return self.X[keep], self.p[keep]


@dataclass(frozen=True)
class DriftConfig:
    window_rows: int
    max_age_s: float
    min_clients: int
    interval_s: float
    max_clinics: int


class DriftWindows:
    """Per-clinic windows of scored rows and the thread that turns them into gauges."""

    def __init__(self, metrics: ServiceMetrics, config: DriftConfig) -> None:
        self.metrics = metrics
        self.config = config
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._model: LoadedModel | None = None
        self._exported: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drift-windows", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def observe(self, model: LoadedModel, scored: ScoreSet) -> None:
        """Add ``scored``'s rows to their clinics' windows (a copy; never blocks for long)."""
        if scored.n_rows == 0 or model.scorer.reference is None:
            return
        clinics = scored.episodes.clinic_id[scored.episode]
        now = time.time()
        with self._lock:
            if self._model is not model:
                self._windows.clear()  # another model: other inputs, another reference
                self._model = model
            ids = scored.episodes.client_id[scored.episode]
            client = np.fromiter((hash(c) for c in ids.tolist()), np.int64, ids.shape[0])
            for clinic in dict.fromkeys(clinics.tolist()):
                label = NO_CLINIC if clinic is None else str(clinic)
                rows = clinics == clinic
                window = self._windows.get(label)
                if window is None:
                    if len(self._windows) >= self.config.max_clinics:
                        self.metrics.drift_untracked.inc(int(rows.sum()))
                        continue
                    n_features = scored.features.shape[1]
                    window = self._windows[label] = _Window(self.config.window_rows, n_features)
                window.add(
                    scored.features[rows], scored.explanation.probability[rows], client[rows], now
                )

    def recompute(self) -> None:
        """Judge every window against the model's reference and set the gauges."""
        since = time.time() - self.config.max_age_s if self.config.max_age_s > 0 else -np.inf
        with self._lock:
            model = self._model
            taken = {label: w.rows(since) for label, w in self._windows.items()}
        for label in self._exported - set(taken):  # windows restarted with a new model
            self.metrics.drift_rows.labels(label).set(0)
        if model is None or model.scorer.reference is None:
            return
        scorer, reference = model.scorer, model.scorer.reference
        for label, (X, p) in taken.items():
            self.metrics.drift_rows.labels(label).set(p.shape[0])
            self._exported.add(label)
            if p.shape[0] < self.config.min_clients:
                for group in ("score", *scorer.registry.groups):
                    for gauge in (self.metrics.drift_psi, self.metrics.drift_ks,
                                  self.metrics.drift_status):  # fmt: skip
                        gauge.labels(label, group).set(0.0)
                continue
            report = drift_report(
                reference,
                scorer.registry,
                X,
                p,
                clinic=None if label == NO_CLINIC else label,
                n_clients=p.shape[0],  # one row per client (the latest)
                min_clients=self.config.min_clients,
            )
            for group, drift in (("score", report.score), *report.groups.items()):
                self.metrics.drift_psi.labels(label, group).set(drift.psi)
                self.metrics.drift_ks.labels(label, group).set(drift.ks)
                self.metrics.drift_status.labels(label, group).set(_STATUS_VALUE[drift.status])

    def _run(self) -> None:
        while not self._stop.wait(self.config.interval_s):
            try:
                self.recompute()
            except Exception as exc:  # the gauges may go stale; the thread must not die
                logger.error("drift recomputation failed",
                             extra={"fields": {"error": type(exc).__name__}})  # fmt: skip
