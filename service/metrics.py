"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Labels are routes, methods, status codes, bands, model versions and reload results: never a
client identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

#: Latency buckets in seconds, fine below 10 ms where single-client scoring lives.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


@dataclass
class ServiceMetrics:
    """The service's metrics, registered in ``registry``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # Labelled children by metric and label values: ``labels()`` checks and locks on every call
    # (~1.6 us); every request records a latency and every scored request a prediction. The
    # label values come from small fixed sets (route templates, methods, statuses, bands,
    # versions).
    _children: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One request's latency, by route template, method and status code."""
        self._child(self.request_latency, route, method, str(status)).observe(seconds)

    def count_predictions(self, band: str, model_version: str, n: int = 1) -> None:
        """``n`` clients scored into ``band`` by ``model_version``."""
        self._child(self.predictions, band, model_version).inc(n)

    def __post_init__(self) -> None:
        r = self.registry
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
        self.model_info = Info(
            "alliance_risk_model", "The model being served (name, version, alias).", registry=r
        )
        self.model_loaded = Gauge(
            "alliance_risk_model_loaded", "1 when a model is loaded and serving.", registry=r
        )
        self.registry_up = Gauge(
            "alliance_risk_registry_up",
            "1 when the last check of the model registry succeeded, 0 when it failed.",
            registry=r,
        )
