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
    "serving_batch_size": "Requests per model call (BATCHING: concurrent requests merged into one call)",
    "serving_batch_rows": "Rows per model call",
    "serving_batch_queue_wait_seconds": "Time a request waited for its model call to start",
    "serving_batched_requests_total": "Requests predicted in a call shared with other requests",
}

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


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
        self.batch_size = Histogram("serving_batch_size", n["serving_batch_size"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_rows = Histogram("serving_batch_rows", n["serving_batch_rows"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_wait = Histogram("serving_batch_queue_wait_seconds", n["serving_batch_queue_wait_seconds"],
                                    buckets=WAIT_BUCKETS, registry=r)
        self.batched = Counter("serving_batched_requests", n["serving_batched_requests_total"], registry=r)
        self._children: dict = {}
        self.rollout = RolloutMetrics(r)

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

    def observe_batch(self, requests: int, rows: int, waits: list[float]) -> None:
        """One model call of the batcher: its requests, its rows and each request's queue wait."""
        self.batch_size.observe(requests)
        self.batch_rows.observe(rows)
        for wait in waits:
            self.batch_wait.observe(wait)
        if requests > 1:
            self.batched.inc(requests)

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


#: canary and shadow (serving.rollout): name -> help
ROLLOUT_NAMES = {
    "serving_rollout_requests_total": "Predictions by model version and role (production, canary, shadow) during a rollout",
    "serving_rollout_errors_total": "Predictions that raised or timed out, by model version and role",
    "serving_rollout_latency_seconds": "Model latency by model version and role during a rollout",
    "serving_rollout_compared_rows_total": "Rows predicted by both the candidate and Production",
    "serving_rollout_agreeing_rows_total": "Compared rows whose labels were equal",
    "serving_rollout_active": "1 while this worker routes a canary or shadow (mode, candidate version)",
    "serving_rollout_percent": "Share of requests routed (canary) or mirrored (shadow) to the candidate",
    "serving_shadow_dropped_total": "Shadow (and comparison) predictions dropped because their queue was full",
    "serving_rollout_ended_total": "Rollouts ended by serving, by mode and outcome (withdrawn, promoted)",
}
NAMES.update(ROLLOUT_NAMES)


class RolloutMetrics:
    """The canary/shadow metrics (per version and role), with cached children."""

    def __init__(self, r: CollectorRegistry) -> None:
        n = ROLLOUT_NAMES
        labels = ["model_version", "role"]
        self.requests = Counter("serving_rollout_requests", n["serving_rollout_requests_total"], labels, registry=r)
        self.errors = Counter("serving_rollout_errors", n["serving_rollout_errors_total"], labels, registry=r)
        self.latency = Histogram("serving_rollout_latency_seconds", n["serving_rollout_latency_seconds"], labels,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.compared = Counter("serving_rollout_compared_rows", n["serving_rollout_compared_rows_total"],
                                ["model_version"], registry=r)
        self.agreeing = Counter("serving_rollout_agreeing_rows", n["serving_rollout_agreeing_rows_total"],
                                ["model_version"], registry=r)
        self.active = Gauge("serving_rollout_active", n["serving_rollout_active"], ["mode", "model_version"],
                            multiprocess_mode="livemax", registry=r)
        self.percent = Gauge("serving_rollout_percent", n["serving_rollout_percent"], ["mode", "model_version"],
                             multiprocess_mode="livemax", registry=r)
        self.dropped = Counter("serving_shadow_dropped", n["serving_shadow_dropped_total"], registry=r)
        self.ended = Counter("serving_rollout_ended", n["serving_rollout_ended_total"], ["mode", "outcome"], registry=r)
        self._children: dict = {}

    def observe(self, version: str, role: str, seconds: float | None) -> None:
        """One prediction of ``role`` on ``version``; ``seconds`` None: it failed."""
        key = (version, role)
        trio = self._children.get(key)
        if trio is None:
            trio = self._children[key] = (self.requests.labels(*key), self.errors.labels(*key), self.latency.labels(*key))
        trio[0].inc()
        if seconds is None:
            trio[1].inc()
        else:
            trio[2].observe(seconds)

    def set_state(self, mode: str | None, version: str | None, percent: float, old: tuple | None) -> None:
        """This worker now routes ``mode`` of ``version`` (None: nothing); ``old``: what it routed."""
        if old is not None:
            self.active.labels(*old).set(0)
            self.percent.labels(*old).set(0)
        if mode is not None and version is not None:
            self.active.labels(mode, version).set(1)
            self.percent.labels(mode, version).set(percent)
