"""Load through change: 8 clients for more than 30 s while Production is promoted and rolled back
6 times through mlops.registry (pre-flight, stage + alias, history, serving notified through
SERVING_URL + ADMIN_TOKEN) against the stack's tracking server.

Swap time of one change, as measured here: from the moment the registry holds the change (the
stage transition request made by the promote/rollback call has returned; the pre-flight runs
before it and is not counted) to the send time of the first request after which every request
got the new version, among the requests sent before the next change's transition request. Requests
sent before that point may still get the old version (they are counted, not failed); the service
must converge before the next change is requested (every answer after the last old one carries
the new version). How fast it converges is printed in the summary, not asserted: `make bench`
measures swap time under load. A version the workers served before is kept loaded, so only the
first promotion loads a model.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass

import pytest
from mlflow import MlflowClient

from mlops import model_io, registry
from mlops.loadgen import LoadGenerator
from tests.helpers import ROOT, run
from tests.reliability.conftest import MODEL, serving_version

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

CLIENTS = 8
CHANGES = 6
GAP_S = 5.0  # from one promote/rollback call to the next
MIN_WINDOW_S = 3.0  # at least this long between two registry changes
MIN_LOAD_S = 32.0


class TimedClient(MlflowClient):
    """An MlflowClient that notes when a stage transition was sent and when it had been committed
    (time.monotonic()). Serving may see the change before the response arrives here, never before
    the request was sent."""

    requested_at: float | None = None
    changed_at: float | None = None

    def transition_model_version_stage(self, *args, **kwargs):
        self.requested_at = time.monotonic()
        mv = super().transition_model_version_stage(*args, **kwargs)
        self.changed_at = time.monotonic()
        return mv


@dataclass
class Change:
    action: str
    old: str
    new: str
    at: float
    requested_at: float
    notified: bool | None


def _swap_time(results, change: Change, until: float) -> tuple[float, int, int]:
    """(swap time, old answers, new answers) of the requests sent in [change.at, until).

    ``until`` is when the next change's transition was sent: requests sent after that may
    already get the next version."""
    window = sorted((r for r in results if change.at <= r.sent < until), key=lambda r: r.sent)
    assert window, f"no request sent after the change to v{change.new}"
    versions = {r.version for r in window}
    assert versions <= {change.old, change.new}, (change, versions)
    old = [r for r in window if r.version == change.old]
    after = [r for r in window if not old or r.sent > old[-1].sent]
    assert after, f"nothing sent after the last v{change.old} answer of the window: {change}"
    assert all(r.version == change.new for r in after)
    return max(0.0, after[0].sent - change.at), len(old), len(window) - len(old)


def test_load_through_promotions_and_rollbacks(stack, models, numbers, monkeypatch):
    monkeypatch.setenv("SERVING_URL", stack.serving)
    monkeypatch.setenv("ADMIN_TOKEN", stack.admin_token)
    client = TimedClient(tracking_uri=stack.uri, registry_uri=stack.uri)
    current = serving_version(stack)
    other = models.second if current == models.first else models.first
    model_io.preflight(MODEL, other, stack.uri)  # warm this process's imports before the load

    changes: list[Change] = []
    load = LoadGenerator(stack.serving, clients=CLIENTS, headers=stack.api_headers)
    with load:
        next_at = time.monotonic() + 2.0
        for i in range(CHANGES):
            time.sleep(max(0.0, next_at - time.monotonic()))
            began = time.monotonic()
            client.changed_at = None
            if i % 2 == 0:
                res = registry.promote(client, MODEL, other, registry.PRODUCTION, reason=f"reliability change {i + 1}")
                action = "promote"
            else:
                res = registry.rollback(client, MODEL, reason=f"reliability change {i + 1}")
                action = "rollback"
            assert client.changed_at is not None
            assert (res.from_version, res.stage) == (current, registry.PRODUCTION), res
            changes.append(Change(action, current, res.to_version, client.changed_at, client.requested_at,
                                  res.notified))
            current, other = res.to_version, current
            next_at = max(began + GAP_S, client.changed_at + MIN_WINDOW_S)
        time.sleep(max(0.0, max(next_at, load.started_at + MIN_LOAD_S) - time.monotonic()))
    s = load.summary()
    failed = load.failed()

    swaps = []
    for i, change in enumerate(changes):
        until = changes[i + 1].requested_at if i + 1 < len(changes) else load.stopped_at
        swaps.append(_swap_time(load.results, change, until))
    history = registry.history(client, MODEL)[-CHANGES:]
    numbers("load through change",
            f"{s['clients']} clients, {s['seconds']} s: {s['sent']} requests sent, {s['failed']} failed, "
            f"{s['req_per_s']} req/s, p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, versions {s['versions']}")
    numbers("swap times (s)", ", ".join(f"{c.action} v{c.old}->v{c.new} {t:.2f}" for c, (t, _, _) in zip(changes, swaps, strict=True))
            + f"; max {max(t for t, _, _ in swaps):.2f}")

    assert not failed, [f"{r.status} {r.error}" for r in failed[:10]]
    assert s["seconds"] >= 30 and s["sent"] > 0
    assert all(r.version for r in load.results), "a response without X-Model-Version"
    assert [c.action for c in changes].count("rollback") == CHANGES // 2
    assert all(c.notified is True for c in changes), changes
    assert [(e.action, e.from_version, e.to_version) for e in history] == [(c.action, c.old, c.new) for c in changes]
    assert serving_version(stack) == current


def test_the_operator_script_prints_the_numbers(stack, models):
    """scripts/load_test.py, as an operator runs it (API_TOKEN from the environment)."""
    proc = run([sys.executable, str(ROOT / "scripts" / "load_test.py"), "--url", stack.serving, "--clients", "2",
                "--seconds", "2"], env=stack.env(), timeout=120)
    out = dict(line.split(None, 1) for line in proc.stdout.strip().splitlines())
    assert set(out) >= {"url", "clients", "requests", "throughput", "latency", "versions"}, proc.stdout
    sent, failed = re.fullmatch(r"(\d+) sent, (\d+) failed", out["requests"]).groups()
    assert int(sent) > 0 and failed == "0"
    assert re.fullmatch(r"p50 [\d.]+ ms, p99 [\d.]+ ms", out["latency"])
    assert re.fullmatch(rf"v{serving_version(stack)}: {sent}", out["versions"])
