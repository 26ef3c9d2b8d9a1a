"""Registry outages under load, on the stack's own processes.

* The tracking server is killed (SIGKILL of its process group): predictions go on, /health says
  the registry is unreachable. The service is then restarted while the registry is still down:
  it starts from its cache and is ready. `mlops stack up --no-serving` brings the tracking server
  back and the restarted service reconnects by itself. The restarted service is stopped at the
  end, so this test runs last among those that need serving (ORDER in conftest.py).
* The S3 endpoint is killed: metadata still answers, so a version promoted now cannot be
  downloaded: the old one keeps serving and /health shows the failed download. When
  `mlops stack up` restarts the endpoint, the service picks the new version up by itself.
"""

from __future__ import annotations

import signal
import time

import pytest
import requests

from mlops import registry
from mlops.loadgen import LoadGenerator
from tests.helpers import start_serving
from tests.reliability.conftest import (
    MODEL,
    WORKERS,
    all_workers,
    healths,
    serving_version,
    wait_for,
)
from tests.serving.conftest import register_same_as

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

CLIENTS = 4
PAUSE_S = 0.05  # a paced load (at most 20 requests/s per client): the restarts need the CPU too


def _summary(load: LoadGenerator) -> str:
    s = load.summary()
    return f"{s['sent']} requests sent, {s['failed']} failed, versions {s['versions']}"


def _no_failures(load: LoadGenerator, version: str | set[str]) -> None:
    failed = load.failed()
    assert not failed, [f"{r.status} {r.error}" for r in failed[:10]]
    expected = {version} if isinstance(version, str) else version
    assert load.results and {r.version for r in load.results} <= expected


def test_tracking_server_outage_and_a_restart_from_the_cache(stack, models, numbers):
    version = serving_version(stack)
    url = stack.serving

    # 1. The registry dies under load.
    with LoadGenerator(url, clients=CLIENTS, headers=stack.api_headers, pause_s=PAUSE_S) as down:
        time.sleep(1.0)
        killed_at = time.monotonic()
        stack.signal("mlflow", signal.SIGKILL)
        wait_for(lambda: all_workers(url, lambda h: h["registry"]["reachable"] is False), 60,
                 "every worker to report the registry unreachable")
        noticed_at = time.monotonic()
        for h in healths(url).values():
            assert (h["status"], h["model_version"]) == ("degraded", version), h
            assert h["registry"]["error"] and h["last_swap_error"] is None, h
        time.sleep(1.0)
    _no_failures(down, version)
    assert requests.get(url + "/ready", timeout=10).status_code == 200

    # 2. The service restarts while the registry is still down: same port, cache, logs, tokens.
    stack.signal("serving", signal.SIGTERM)
    ctx, _ = start_serving(stack.uri, stack.dir / "serving", port=stack.ports["serving"], workers=WORKERS,
                           ADMIN_TOKEN=stack.admin_token, API_TOKEN=stack.api_token)
    restart_began = time.monotonic()
    with ctx:  # returns once /ready answers 200
        ready_after = time.monotonic() - restart_began
        for h in healths(url).values():
            assert (h["model_version"], h["loaded_from"], h["started_from_cache"]) == (version, "cache", True), h
            assert h["registry"]["reachable"] is False and h["status"] == "degraded", h
        # 3. The registry comes back (only the tracking server is started) and the service
        #    reconnects by itself, under load.
        with LoadGenerator(url, clients=CLIENTS, headers=stack.api_headers, pause_s=PAUSE_S) as back:
            time.sleep(1.0)
            stack.up("--no-serving")
            back_at = time.monotonic()
            wait_for(lambda: all_workers(url, lambda h: h["registry"]["reachable"] is True and h["status"] == "ok"),
                     60, "every worker to reach the registry again")
            recovered_after = time.monotonic() - back_at
            time.sleep(1.0)
        _no_failures(back, version)
    numbers("tracking server down",
            f"{CLIENTS} clients: {_summary(down)}; outage seen by every worker {noticed_at - killed_at:.2f} s "
            f"after the kill; restart from cache ready in {ready_after:.1f} s; {_summary(back)} while it came "
            f"back; reconnected {recovered_after:.2f} s after `stack up` returned")



def test_s3_endpoint_outage(stack, models, numbers, monkeypatch):
    url = stack.serving
    version = serving_version(stack)
    new = register_same_as(stack.uri, version)  # same files, a version number serving never downloaded
    monkeypatch.setenv("SERVING_URL", url)
    monkeypatch.setenv("ADMIN_TOKEN", stack.admin_token)
    client = registry.get_client(stack.uri)

    with LoadGenerator(url, clients=CLIENTS, headers=stack.api_headers, pause_s=PAUSE_S) as load:
        time.sleep(1.0)
        stack.signal("s3", signal.SIGKILL)
        # Metadata still answers, so the change itself goes through (without the pre-flight, which
        # would refuse a version it cannot download); the files cannot be fetched.
        registry.promote(client, MODEL, new, registry.PRODUCTION, reason="reliability: S3 outage", preflight=False)
        wait_for(lambda: all_workers(url, lambda h: (h["last_swap_error"] or {}).get("phase") == "download"), 60,
                 "every worker to report the failed download")
        for h in healths(url).values():
            assert (h["status"], h["model_version"]) == ("degraded", version), h
            assert h["registry"]["reachable"] is True and h["registry"]["selected_version"] == new, h
            assert h["last_swap_error"]["version"] == new, h
        time.sleep(1.0)
        stack.up()  # restarts the S3 endpoint, the only component not running
        back_at = time.monotonic()
        wait_for(lambda: all_workers(url, lambda h: h["model_version"] == new and h["status"] == "ok"), 60,
                 f"every worker to download and serve v{new}")
        recovered_after = time.monotonic() - back_at
        time.sleep(1.0)
    _no_failures(load, {version, new})
    assert {r.version for r in load.results} == {version, new}
    numbers("S3 endpoint down",
            f"{CLIENTS} clients: {_summary(load)}; v{new} promoted during the outage, served "
            f"{recovered_after:.2f} s after `stack up` restarted the endpoint")
