"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Labels are routes, methods, status codes, bands, model versions, reload results, clinic ids and
feature-group names (the drift gauges): never a client identifier.

One process: the registry also holds prometheus_client's process (CPU, memory, open files) and
garbage-collector collectors, which a custom ``CollectorRegistry`` does not have by default.

Several workers (``alliance-risk serve --workers N`` sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh
folder before they start): every worker writes its values to files there, and ``/metrics``, on
whichever worker answers, adds them up with prometheus_client's ``MultiProcessCollector``. Gauges
say how (``multiprocess_mode``); a worker's live gauges are removed when it exits
(:meth:`ServiceMetrics.close`). Process and GC series are per process and not exported then
(prometheus_client's multiprocess mode does not support them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Latency buckets in seconds, fine below 10 ms where single-client scoring lives.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

#: Buckets of served dropout probabilities, in steps of 0.05: fine enough to see bands and drift.
PROBABILITY_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 21))


def multiprocess_dir() -> str | None:
    """The folder shared by the workers of one ``serve``, or None in a single process."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


#: Buckets of |p_champion - p_challenger| in probability units (shadow comparisons).
DIFFERENCE_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class ModelInfo:
    """``alliance_risk_model_info{name,version,alias} 1``: the model being served (or, named
    ``alliance_risk_challenger_info``, the shadow challenger).

    A gauge rather than prometheus_client's ``Info``, which multiprocess mode does not support.
    The previous model's series is set to 0 before it is dropped (across workers its last value
    stays in the shared files, so it reads 0 there, not 1).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str = "alliance_risk_model_info",
        documentation: str = "The model being served (name, version, alias): 1.",
    ) -> None:
        self._gauge = Gauge(
            name,
            documentation,
            ("name", "version", "alias"),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self._current: tuple[str, str, str] | None = None

    def info(self, labels: dict[str, str]) -> None:
        """Set the model being served (keys ``name``, ``version``, ``alias``)."""
        new = (labels["name"], labels["version"], labels["alias"])
        if self._current is not None and self._current != new:
            self._gauge.labels(*self._current).set(0)
            self._gauge.remove(*self._current)
        self._gauge.labels(*new).set(1)
        self._current = new

    def clear(self) -> None:
        """No model any more (a challenger alias that was removed)."""
        if self._current is not None:
            self._gauge.labels(*self._current).set(0)
            self._gauge.remove(*self._current)
            self._current = None


@dataclass(frozen=True)
class StoreSeries:
    """The series one :class:`~service.model_store.ModelStore` records: reload results, whether a
    model is loaded and which. ``registry_up`` only for the served model's store."""

    reloads: Counter
    loaded: Gauge
    info: ModelInfo
    registry_up: Gauge | None


@dataclass
class ServiceMetrics:
    """The service's metrics, registered in ``registry``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Labelled children by metric and label values: ``labels()`` checks and locks on every call
    # (~1.6 us); every request records a latency and every scored request a prediction. The
    # label values come from small fixed sets (route templates, methods, statuses, bands,
    # versions).
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False)
    multiprocess_dir: str | None = field(default_factory=multiprocess_dir)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def request_started(self) -> None:
        """A request came in; :meth:`observe_request` counts it out again."""
        self.in_flight.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request's latency, by route template, method and status code; the request is
        no longer in flight."""
        self._child(self.request_latency, route, method, str(status)).observe(seconds)
        self.in_flight.dec()

    def count_predictions(self, band: str, model_version: str, n: int = 1) -> None:
        """``n`` clients scored into ``band`` by ``model_version``."""
        self._child(self.predictions, band, model_version).inc(n)

    def observe_probabilities(self, probabilities: Iterable[float], model_version: str) -> None:
        """The dropout probability of every client served, single or in a batch."""
        histogram = self._child(self.probabilities, model_version)
        for p in probabilities:
            histogram.observe(p)

    def store_series(self, *, challenger: bool = False) -> StoreSeries:
        """What the served model's store records, or the shadow challenger's."""
        if challenger:
            return StoreSeries(
                self.challenger_reloads, self.challenger_loaded, self.challenger_info, None
            )
        return StoreSeries(self.reloads, self.model_loaded, self.model_info, self.registry_up)

    def observe_shadow(
        self,
        champion_version: str,
        challenger_version: str,
        differences: Iterable[float],
        disagreements: int,
    ) -> None:
        """Shadow comparisons: ``|p_champion - p_challenger|`` per client, and how many of them
        fell in different bands."""
        labels = (champion_version, challenger_version)
        histogram = self._child(self.shadow_difference, *labels)
        for d in differences:
            histogram.observe(d)
        self._child(self.shadow_disagreements, *labels).inc(disagreements)

    def exposition(self) -> tuple[bytes, str]:
        """The ``/metrics`` body and its content type: this process's registry, or the sum of
        every worker's files in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self.multiprocess_dir)
        return generate_latest(merged), CONTENT_TYPE_LATEST

    def close(self) -> None:
        """At worker exit: drop this worker's live gauges from the shared files."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def __post_init__(self) -> None:
        r = self.registry
        if self.multiprocess_dir is None:
            # What the default registry has (PROCESS_COLLECTOR, GC_COLLECTOR), for this one.
            ProcessCollector(registry=r)
            GCCollector(registry=r)
        self.request_latency = Histogram(
            "alliance_risk_request_duration_seconds",
            "Request latency by route template, method and status code.",
            ("route", "method", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "alliance_risk_predictions",
            "Clients scored, by risk band and model version.",
            ("band", "model_version"),
            registry=r,
        )
        self.reloads = Counter(
            "alliance_risk_model_reloads",
            "Model reload attempts by result: loaded, unchanged, refused, registry_unreachable, "
            "no_champion.",
            ("result",),
            registry=r,
        )
        self.model_info = ModelInfo(r)
        self.model_loaded = Gauge(
            "alliance_risk_model_loaded",
            "1 when a model is loaded and serving (across workers: the least of them).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.registry_up = Gauge(
            "alliance_risk_registry_up",
            "1 when the last check of the model registry succeeded, 0 when it failed (across "
            "workers: the least of them).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.in_flight = Gauge(
            "alliance_risk_requests_in_flight",
            "Requests received and not yet answered (across workers: their sum).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.probabilities = Histogram(
            "alliance_risk_probability",
            "Dropout probability of every client served, single or in a batch, by model version.",
            ("model_version",),
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.observer_failures = Counter(
            "alliance_risk_observer_failures",
            "Exceptions of a score observer (the shadow challenger, the drift windows) after a "
            "response was built; the response is still sent. By observer class name.",
            ("observer",),
            registry=r,
        )
        self._shadow_series(r)
        self._drift_series(r)

    def _drift_series(self, r: CollectorRegistry) -> None:
        # Each worker keeps its own window of the requests it served (service/drift_window.py):
        # across workers the largest PSI, KS and status are shown (a worker whose window is
        # still too small reports 0, so it never hides another's drift) and the rows add up.
        labels = ("clinic", "group")
        self.drift_psi = Gauge(
            "alliance_risk_drift_psi",
            "PSI of the clinic's rolling window of scored rows against the model's reference, "
            "by explanation group (its worst feature) and group=score; 0 until the window holds "
            "drift_min_clients clients (across workers: the largest).",
            labels,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_ks = Gauge(
            "alliance_risk_drift_ks",
            "Kolmogorov-Smirnov distance, as alliance_risk_drift_psi.",
            labels,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_status = Gauge(
            "alliance_risk_drift_status",
            "Drift status as models.drift judges it (PSI and significant KS): 0 ok or too few "
            "rows, 1 watch, 2 alert (across workers: the worst).",
            labels,
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_rows = Gauge(
            "alliance_risk_drift_window_rows",
            "Clients in the clinic's rolling drift window, each with their latest history "
            "(across workers: their sum).",
            ("clinic",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.drift_judged = Gauge(
            "alliance_risk_drift_judged",
            "1 when the clinic's window held drift_min_clients clients at the last "
            "recomputation and its drift was judged; 0 when too few (its PSI, KS and status "
            "then read 0 and say nothing). Across workers: the largest.",
            ("clinic",),
            registry=r,
            multiprocess_mode="livemax",
        )
        self.drift_untracked = Counter(
            "alliance_risk_drift_untracked_rows",
            "Scored rows of clinics beyond drift_max_clinics, not in any drift window.",
            registry=r,
        )

    def _shadow_series(self, r: CollectorRegistry) -> None:
        self.challenger_reloads = Counter(
            "alliance_risk_challenger_reloads",
            "Shadow challenger reload attempts by result: loaded, unchanged, refused, "
            "registry_unreachable, no_alias.",
            ("result",),
            registry=r,
        )
        self.challenger_info = ModelInfo(
            r,
            "alliance_risk_challenger_info",
            "The shadow challenger (name, version, alias): 1; absent when there is none.",
        )
        self.challenger_loaded = Gauge(
            "alliance_risk_challenger_loaded",
            "1 when a shadow challenger is loaded (across workers: the least of them).",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.shadow_difference = Histogram(
            "alliance_risk_shadow_abs_difference",
            "|p_champion - p_challenger| of every client the challenger scored in the shadow, "
            "by the two model versions.",
            ("champion_version", "challenger_version"),
            buckets=DIFFERENCE_BUCKETS,
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "alliance_risk_shadow_band_disagreements",
            "Shadow comparisons whose risk bands differ, by the two model versions (the "
            "comparisons are alliance_risk_shadow_abs_difference_count).",
            ("champion_version", "challenger_version"),
            registry=r,
        )
        self.shadow_dropped = Counter(
            "alliance_risk_shadow_dropped",
            "Scored clients not compared in the shadow because its queue was full.",
            registry=r,
        )
        self.shadow_failures = Counter(
            "alliance_risk_shadow_failures",
            "Shadow scorings that failed, in clients, by reason: error (the challenger raised), "
            "refused (its checks refused a client the champion scored), log (the comparison "
            "file could not be written).",
            ("reason",),
            registry=r,
        )
