"""The model server's Prometheus metrics: requests, latency, errors, batches, versions.

Seed 004's dashboards read these; they live in a registry of their own, so tests
can run several servers in one process.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

__all__ = ["ServerMetrics"]

_OUTCOMES = {
    200: "ok",
    400: "bad_request",
    403: "forbidden",
    404: "not_found",
    405: "bad_method",
    413: "too_large",
    415: "not_json",
    500: "error",
    501: "not_implemented",
    503: "unavailable",
    504: "deadline",
}
_ERROR_KINDS = {
    400: "bad_request",
    404: "not_found",
    405: "not_found",
    403: "forbidden",
    413: "too_large",
    415: "not_json",
    501: "not_implemented",
    503: "unavailable",
    504: "deadline",
}


class ServerMetrics:
    """Prometheus metrics in a registry of their own, so several servers can share a process."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        fast = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
        sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
        reg = self.registry
        self.requests = Counter(
            "kfnb_serving_requests",
            "HTTP requests answered, by API and outcome",
            ["model", "api", "outcome"],
            registry=reg,
        )
        self.latency = Histogram(
            "kfnb_serving_request_seconds",
            "Time from request to answer",
            ["model", "api"],
            buckets=fast,
            registry=reg,
        )
        self.errors = Counter(
            "kfnb_serving_errors",
            "Errors: bad_request, not_found, too_large, not_implemented, unavailable, "
            "internal (a 500), model_load (a version that failed to load)",
            ["model", "kind"],
            registry=reg,
        )
        self.batches = Counter(
            "kfnb_serving_batches",
            "Signature calls made by the batching worker",
            ["model"],
            registry=reg,
        )
        self.batch_requests = Histogram(
            "kfnb_serving_batch_requests",
            "Requests merged into one signature call",
            ["model"],
            buckets=sizes,
            registry=reg,
        )
        self.batch_rows = Histogram(
            "kfnb_serving_batch_rows",
            "Instances (rows) in one signature call",
            ["model"],
            buckets=sizes,
            registry=reg,
        )
        self.batch_seconds = Histogram(
            "kfnb_serving_batch_seconds",
            "Time of one signature call",
            ["model"],
            buckets=fast,
            registry=reg,
        )
        self.queued = Gauge(
            "kfnb_serving_queued_requests",
            "Requests waiting for the batching worker",
            registry=reg,
        )
        self.version = Gauge(
            "kfnb_serving_model_version",
            "Version that requests without a version get",
            ["model"],
            registry=reg,
        )
        self.loads = Counter(
            "kfnb_serving_model_loads",
            "Version loads, by outcome",
            ["model", "outcome"],
            registry=reg,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, model: str, api: str, status: int, seconds: float) -> None:
        key = (model, api, status)
        children = self._request_children.get(key)
        if children is None:  # labels() takes a lock: cache the children per key
            outcome = _OUTCOMES.get(status, f"http_{status}")
            children = (self.requests.labels(model, api, outcome), self.latency.labels(model, api))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if status >= 400:
            self.errors.labels(model, _ERROR_KINDS.get(status, "internal")).inc()

    def observe_batch(self, requests: int, rows: int, seconds: float) -> None:
        self.batches.labels(self.model).inc()
        self.batch_requests.labels(self.model).observe(requests)
        self.batch_rows.labels(self.model).observe(rows)
        self.batch_seconds.labels(self.model).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
