"""Prometheus metrics, correct across gunicorn workers (prometheus_client multiprocess mode).

Multiprocess mode is on when ``PROMETHEUS_MULTIPROC_DIR`` is set before ``prometheus_client`` is
first imported (``serving/gunicorn.conf.py`` does that). Without it (tests, a dev server) the
metrics live in this process only.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Label values are fixed sets, whatever clients send: other methods count as "other", statuses
#: outside STATUSES by their class ("2xx" ... "5xx"), unmatched paths as "<unmatched>" (the app).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
STATUSES = frozenset({200, 400, 401, 403, 404, 405, 408, 411, 413, 414, 415, 431, 500, 503})
OTHER = "other"

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: name -> help, for the docs and the tests
NAMES = {
    "serving_http_requests_total": "HTTP requests by endpoint, method and status",
    "serving_http_request_duration_seconds": "HTTP request latency by endpoint, method and status",
    "serving_prediction_rows_total": "Rows predicted, by endpoint and model version",
    "serving_model_version_info": "Workers serving each model version (1 per worker)",
    "serving_model_swaps_total": "Model versions swapped in",
    "serving_model_swap_failures_total": "Versions refused (download, load or smoke test failed), by phase",
    "serving_registry_checks_total": "Registry checks",
    "serving_registry_check_failures_total": "Registry checks that failed (registry unreachable or erroring)",
    "serving_registry_up": "1 when every live worker's last registry check succeeded",
}


class Metrics:
    """The service's metric objects and their exposition."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        n = NAMES
        self.requests = Counter("serving_http_requests", n["serving_http_requests_total"],
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("serving_http_request_duration_seconds", n["serving_http_request_duration_seconds"],
                                 ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.rows = Counter("serving_prediction_rows", n["serving_prediction_rows_total"],
                            ["endpoint", "model_version"], registry=r)
        self.model_info = Gauge("serving_model_version_info", n["serving_model_version_info"],
                                ["model_name", "version"], multiprocess_mode="livesum", registry=r)
        self.swaps = Counter("serving_model_swaps", n["serving_model_swaps_total"], ["model_name"], registry=r)
        self.swap_failures = Counter("serving_model_swap_failures", n["serving_model_swap_failures_total"],
                                     ["model_name", "phase"], registry=r)
        self.registry_checks = Counter("serving_registry_checks", n["serving_registry_checks_total"], registry=r)
        self.registry_failures = Counter("serving_registry_check_failures",
                                         n["serving_registry_check_failures_total"], registry=r)
        # Labelled, so that no value exists until a worker sets one: the master (which builds
        # the app before forking) would otherwise hold a 0 that "livemin" reports forever.
        self.registry_up = Gauge("serving_registry_up", n["serving_registry_up"], ["model_name"],
                                 multiprocess_mode="livemin", registry=r)
        self._children: dict = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one request and its latency (children cached: label lookup is the costly part).

        ``endpoint`` must come from a fixed set (route templates); method and status are mapped
        onto fixed sets here, so no request can add label values (or cache entries) of its own.
        """
        key = (endpoint, method if method in METHODS else OTHER, str(status) if status in STATUSES else status_class(status))
        pair = self._children.get(key)
        if pair is None:
            pair = (self.requests.labels(*key), self.latency.labels(*key))
            self._children[key] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def observe_rows(self, endpoint: str, version: str, rows: int) -> None:
        key = ("rows", endpoint, version)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.rows.labels(endpoint, version)
        child.inc(rows)

    def set_serving(self, name: str, old: str | None, new: str) -> None:
        """This worker now serves ``new`` (and no longer ``old``)."""
        if old is not None and old != new:
            self.model_info.labels(name, old).set(0)
        self.model_info.labels(name, new).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text (summed over all live and dead workers in multiprocess mode)."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def status_class(status: int) -> str:
    """``2xx`` ... ``5xx`` (``other`` outside 100-599)."""
    return f"{status // 100}xx" if 100 <= status <= 599 else OTHER
