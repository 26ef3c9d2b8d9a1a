"""Load against the prediction service: N concurrent clients posting the same body in a loop.

Each client is a thread with its own keep-alive HTTP session; every request is recorded (sent,
answered, status, ``X-Model-Version``, error). scripts/load_test.py is the operator's front end and
the reliability tests apply the same load, so what operators measure and what the tests assert on
is one piece of code.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass

import requests

COLUMNS = [
    "mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness", "mean compactness",
    "mean concavity", "mean concave points", "mean symmetry", "mean fractal dimension", "radius error",
    "texture error", "perimeter error", "area error", "smoothness error", "compactness error",
    "concavity error", "concave points error", "symmetry error", "fractal dimension error", "worst radius",
    "worst texture", "worst perimeter", "worst area", "worst smoothness", "worst compactness",
    "worst concavity", "worst concave points", "worst symmetry", "worst fractal dimension",
]
# The first row of the bundled data set.
ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871, 1.095, 0.9053, 8.589,
       153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193, 25.38, 17.33, 184.6, 2019.0, 0.1622,
       0.6656, 0.7119, 0.2654, 0.4601, 0.1189]
DEFAULT_BODY = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [ROW]}}).encode()


@dataclass(frozen=True)
class Result:
    """One request: when it was sent and answered (time.monotonic()), status, version, error."""

    sent: float
    done: float
    status: int | None
    version: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        """Answered with 200 and no error."""
        return self.status == 200 and self.error is None


class LoadGenerator:
    """``clients`` threads posting ``body`` to ``url + path`` until stopped (or ``max_seconds``).

    Each client sends its next request as soon as the previous one is answered, or ``pause_s``
    later (a lighter, paced load). Use it as a context manager (``with LoadGenerator(url) as load: ...``) or call ``start()`` and
    ``stop()``. Every request ends up in ``results``; a request counts as failed when it got no
    answer or a status other than 200.
    """

    def __init__(self, url: str, clients: int = 8, path: str = "/invocations", body: bytes = DEFAULT_BODY,
                 headers: dict[str, str] | None = None, timeout: float = 30.0, max_seconds: float = 600.0,
                 pause_s: float = 0.0):
        self.url = url.rstrip("/") + path
        self.clients = clients
        self.body = body
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.pause_s = pause_s
        self.results: list[Result] = []
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _client(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + self.max_seconds
        post, append, now = session.post, self.results.append, time.monotonic
        first = True
        while not self._stop.is_set() and now() < deadline:
            if self.pause_s and not first and self._stop.wait(self.pause_s):
                break
            first = False
            sent = now()
            try:
                r = post(self.url, data=self.body, headers=self.headers, timeout=self.timeout)
            except requests.RequestException as exc:
                append(Result(sent, now(), None, None, f"{type(exc).__name__}: {str(exc)[:200]}"))
                session.close()  # a new connection for the next request
                continue
            error = None if r.status_code == 200 else f"HTTP {r.status_code}: {r.text[:200]}"
            append(Result(sent, now(), r.status_code, r.headers.get("X-Model-Version"), error))
        session.close()

    def start(self) -> LoadGenerator:
        """Start the client threads."""
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._client, name=f"load-{i}", daemon=True)
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop the clients and wait for their last requests."""
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        self.stopped_at = time.monotonic()

    def run(self, seconds: float) -> LoadGenerator:
        """Apply the load for ``seconds`` and return when it is over."""
        self.start()
        try:
            self._stop.wait(seconds)
        finally:
            self.stop()
        return self

    def __enter__(self) -> LoadGenerator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def failed(self) -> list[Result]:
        """The requests that got no answer or a status other than 200."""
        return [r for r in self.results if not r.ok]

    def summary(self) -> dict:
        """Counts, throughput, latency percentiles and versions seen (so far)."""
        results = list(self.results)
        end = self.stopped_at or time.monotonic()
        elapsed = max(end - (self.started_at or end), 1e-9)
        latencies = sorted((r.done - r.sent) * 1000 for r in results if r.ok)
        return {
            "clients": self.clients,
            "seconds": round(elapsed, 2),
            "sent": len(results),
            "failed": sum(1 for r in results if not r.ok),
            "req_per_s": round(len(results) / elapsed, 1),
            "p50_ms": round(_percentile(latencies, 50), 2) if latencies else None,
            "p99_ms": round(_percentile(latencies, 99), 2) if latencies else None,
            "versions": dict(sorted(Counter(r.version for r in results if r.ok).items(), key=lambda kv: str(kv[0]))),
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


__all__ = ["COLUMNS", "DEFAULT_BODY", "ROW", "LoadGenerator", "Result"]
