"""Shared test helpers: free ports, real processes in their own process group, waiting on health.

The processes and the throwaway store come from the product (:mod:`mlops.stack.process`,
:mod:`mlops.stack.harness`), which the benchmarks in scripts/ use too; what only tests need is here.
"""

from __future__ import annotations

import os
from pathlib import Path

import requests

from mlops.stack.harness import (  # noqa: F401 - re-exported for the test modules
    BIN,
    Service,
    clean_env,
    run,
    service,
    sqlite_uri,
    start_mlflow_server,
    start_serving,
    train,
)
from mlops.util import free_port, wait_for  # noqa: F401 - re-exported for the test modules

ROOT = Path(__file__).resolve().parents[1]


def healths(url: str, n: int = 20) -> dict[int, dict]:
    """/health of each worker that answered ``n`` fresh connections (they land on every worker)."""
    seen: dict[int, dict] = {}
    for _ in range(n):
        h = requests.get(url + "/health", headers={"Connection": "close"}, timeout=10).json()
        seen[h["pid"]] = h
    return seen


def gauge(url: str, name: str, headers: dict | None = None, **labels) -> float:
    """Sum of the samples of metric ``name`` matching ``labels`` in /metrics (``headers``: the
    bearer token when the service has API_TOKEN set)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(url + "/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    total = 0.0
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items()):
                total += s.value
    return total


def live_processes():
    """(pid, /proc stat fields after the command name) of every live, non-zombie process."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if fields[0] != "Z":
            yield int(name), fields
