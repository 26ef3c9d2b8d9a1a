"""Worker death: kill -9 one gunicorn worker of the stack's serving service under 8 clients. The
master forks a replacement, which loads the model before it takes requests; the requests lost are
at most those in flight on the killed worker (each client has at most one request in flight).

The clients open a new connection for every request (``Connection: close``, like a proxy without
upstream keep-alive), so the replacement worker gets its share of them as soon as it accepts:
keep-alive clients would all stay on the surviving worker and hide a replacement that answers
before its model is loaded.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from mlops.loadgen import LoadGenerator
from tests.reliability.conftest import WORKERS, children, serving_version, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(600)]

CLIENTS = 8


def _health_of(url: str, pid: int) -> dict | None:
    """/health as answered by worker ``pid`` (fresh connections until that worker answers)."""
    for _ in range(20):
        h = requests.get(url + "/health", headers={"Connection": "close"}, timeout=10).json()
        if h["pid"] == pid:
            return h
    return None


def _predictions_logged_by(stack, pid: int) -> int:
    """"Prediction made" lines that worker ``pid`` wrote to the service's app.log (rotated ones too)."""
    marker = f'"pid":{pid},'
    return sum(1 for log in (stack.dir / "serving" / "logs").glob("app.log*")
               for line in log.read_text(errors="replace").splitlines() if marker in line and "Prediction made" in line)


def test_a_killed_worker_is_replaced_and_only_in_flight_requests_are_lost(stack, models, numbers):
    master = stack.entry("serving")["pid"]
    assert b"gunicorn" in Path(f"/proc/{master}/cmdline").read_bytes(), "the stack's serving pid is not gunicorn's master"
    before = children(master)
    assert len(before) == WORKERS, before
    version = serving_version(stack)
    victim = before[0]

    load = LoadGenerator(stack.serving, clients=CLIENTS, headers={**stack.api_headers, "Connection": "close"})
    with load:
        time.sleep(2.0)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        now = wait_for(lambda: (lambda c: c if len(c) == WORKERS and victim not in c else None)(children(master)),
                       60, "the master to fork a replacement worker")
        forked_at = time.monotonic()
        (new,) = set(now) - set(before)
        ready = wait_for(lambda: (lambda h: h if h and h["model_version"] == version else None)(
            _health_of(stack.serving, new)), 60, f"the new worker {new} to serve v{version}")
        ready_at = time.monotonic()
        time.sleep(3.0)
    s = load.summary()
    by_new = _predictions_logged_by(stack, new)
    lost = load.failed()
    numbers("worker death",
            f"{s['clients']} clients, {s['seconds']} s: {s['sent']} requests sent, {len(lost)} lost "
            f"({', '.join(sorted({(r.error or '').split(':')[0] for r in lost})) or 'none'}); replacement forked "
            f"{forked_at - killed_at:.2f} s and serving {ready_at - killed_at:.2f} s after the kill, "
            f"then answered {by_new} of them")

    assert ready["status"] == "ok" and ready["model_version"] == version
    assert len(lost) <= CLIENTS, [r.error for r in lost]
    # Only requests already sent when the worker died: no error answers from the new worker.
    assert all(r.status is None and r.sent <= forked_at for r in lost), [(r.sent - killed_at, r.error) for r in lost]
    assert not [r for r in load.results if r.sent > ready_at and not r.ok]
    assert {r.version for r in load.results if r.ok} == {version}
    assert by_new > 0, "the replacement worker took no prediction"
    assert master == stack.entry("serving")["pid"] and len(children(master)) == WORKERS
