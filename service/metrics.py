"""Prometheus metrics of one app instance (its own registry, so tests can build many apps).

Labels are routes, methods, status codes, bands, model versions and reload results: never a
client identifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

#: Latency buckets in seconds, fine below 10 ms where single-client scoring lives.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


@dataclass
class ServiceMetrics:
    """The service's metrics, registered in ``registry``."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

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
