"""Following the registry: a swap under load, a broken version refused, registry outages and
starting from the cache. Real gunicorn (2 workers), a real `mlflow server`, real promotions.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.helpers import gauge, healths, start_mlflow_server, start_serving
from tests.serving.conftest import MODEL, copy_store, promote, register_broken, register_same_as

pytestmark = pytest.mark.slow

ADMIN = "lifecycle-admin-token"
ROW = json.dumps({"dataframe_split": {
    "columns": ["mean radius", "mean texture", "mean perimeter", "mean area", "mean smoothness",
                "mean compactness", "mean concavity", "mean concave points", "mean symmetry",
                "mean fractal dimension", "radius error", "texture error", "perimeter error", "area error",
                "smoothness error", "compactness error", "concavity error", "concave points error",
                "symmetry error", "fractal dimension error", "worst radius", "worst texture",
                "worst perimeter", "worst area", "worst smoothness", "worst compactness", "worst concavity",
                "worst concave points", "worst symmetry", "worst fractal dimension"],
    "data": [[17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871, 1.095, 0.9053,
              8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003, 0.006193, 25.38, 17.33, 184.6,
              2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601, 0.1189]]}})
HEADERS = {"Content-Type": "application/json"}


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


class Load:
    """Concurrent clients posting one row in a loop, recording every answer."""

    def __init__(self, url: str, clients: int = 4):
        self.url = url
        self.results: list[tuple[float, int | None, str | None]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(clients)]

    def _loop(self) -> None:
        session = requests.Session()
        deadline = time.monotonic() + 120  # bounded even if the test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                r = session.post(self.url + "/invocations", data=ROW, headers=HEADERS, timeout=30)
                self.results.append((time.monotonic(), r.status_code, r.headers.get("X-Model-Version")))
                if r.status_code != 200:
                    self.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            except requests.RequestException as exc:
                self.errors.append(repr(exc))

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


@pytest.fixture(scope="module")
def served(trained_store, tmp_path_factory):
    """The service (2 workers, following alias ``production``) on a store behind `mlflow server`.

    The tests run in file order; the last one stops the registry server.
    """
    tmp = tmp_path_factory.mktemp("lifecycle")
    store = copy_store(trained_store, tmp / "store")
    server_ctx, mport = start_mlflow_server(store.uri, tmp)
    with server_ctx as server:
        remote = f"http://127.0.0.1:{mport}"
        ctx, port = start_serving(remote, tmp, workers=2, ADMIN_TOKEN=ADMIN, POLL_INTERVAL_S="0.5",
                                  RETRY_FAILED_AFTER_S="600", MODEL_ALIAS="production", MODEL_STAGE="")
        with ctx:
            yield Served(store, f"http://127.0.0.1:{port}", tmp, server, remote)


class Served:
    def __init__(self, store, url, tmp, server, remote):
        self.store, self.url, self.tmp, self.server, self.remote = store, url, tmp, server, remote


def test_swap_under_load_without_a_failed_request(served):
    store, url = served.store, served.url
    assert requests.get(url + "/health", timeout=10).json()["model_version"] == "1"
    with Load(url) as load:
        time.sleep(1.0)
        new = register_same_as(store.uri)
        promote(store.uri, new)
        promoted_at = time.monotonic()
        wait_for(lambda: gauge(url, "serving_model_version_info", version=new) == 2
                 and gauge(url, "serving_model_version_info", version="1") == 0, what="both workers on the new version")
        converged_at = time.monotonic()
        time.sleep(1.0)
    assert not load.errors, load.errors[:5]
    assert len(load.results) > 50
    assert {v for _, _, v in load.results} == {"1", new}
    assert all(v == new for t, _, v in load.results if t > converged_at + 0.05)
    assert all(h["model_version"] == new for h in healths(url, 30).values())
    last_old = max(t for t, _, v in load.results if v == "1")
    print(f"\nswap: every worker on v{new} {converged_at - promoted_at:.2f}s after the promotion "
          f"(last v1 answer {last_old - promoted_at:.2f}s after), {len(load.results)} requests, 0 failed")


def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(served):
    store, url, tmp = served.store, served.url, served.tmp
    good = requests.get(url + "/health", timeout=10).json()["model_version"]
    broken = register_broken(store.uri, tmp)
    failures_before = gauge(url, "serving_model_swap_failures_total")
    with Load(url, clients=2) as load:
        promote(store.uri, broken)
        wait_for(lambda: gauge(url, "serving_model_swap_failures_total", phase="load") - failures_before >= 2,
                 what="both workers refusing the broken version")
        time.sleep(0.5)
    assert not load.errors, load.errors[:5]
    assert {v for _, _, v in load.results} == {good}

    for h in healths(url, 30).values():
        assert h["model_version"] == good and h["status"] == "degraded"
        assert h["registry"]["selected_version"] == broken
        assert (h["last_swap_error"]["version"], h["last_swap_error"]["phase"]) == (broken, "load")
    assert requests.get(url + "/ready", timeout=10).status_code == 200

    r = requests.post(url + "/api/model/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120)
    assert r.status_code == 503 and r.json()["error_code"] == "RELOAD_FAILED"
    assert r.json()["model_version"] == good and "refused" in r.json()["message"]

    errors = [json.loads(line) for line in (tmp / "logs" / "app.log").read_text().splitlines() if '"ERROR"' in line]
    assert any(e["level"] == "ERROR" and f"v{broken}" in e["msg"] and "refused" in e["msg"] for e in errors)

    promote(store.uri, good)  # roll back: the error clears everywhere
    wait_for(lambda: all(h["last_swap_error"] is None and h["status"] == "ok" for h in healths(url, 10).values()),
             what="the swap error to clear after the rollback")


def test_registry_outage_keeps_serving_and_a_restart_starts_from_cache(served):
    url = served.url
    info = requests.get(url + "/api/model/info", timeout=10).json()
    version = info["model_version"]
    assert info["aliases"] == ["production"] and info["selector"] == "alias:production"

    served.server.stop()  # the registry goes away while the service runs
    wait_for(lambda: all(h["registry"]["reachable"] is False for h in healths(url, 10).values()),
             what="every worker to notice the outage")
    for h in healths(url, 30).values():
        assert (h["status"], h["model_version"], h["started_from_cache"]) == ("degraded", version, False)
    for _ in range(20):
        r = requests.post(url + "/invocations", data=ROW, headers=HEADERS, timeout=10)
        assert r.status_code == 200 and r.headers["X-Model-Version"] == version
    assert gauge(url, "serving_registry_check_failures_total") >= 2
    assert gauge(url, "serving_registry_up") == 0

    # A second service started now, on the same cache, serves the last known good version.
    ctx, port = start_serving(served.remote, served.tmp, workers=2, MODEL_ALIAS="production", MODEL_STAGE="")
    with ctx:
        url2 = f"http://127.0.0.1:{port}"
        for h in healths(url2, 30).values():
            assert (h["model_version"], h["loaded_from"], h["started_from_cache"]) == (version, "cache", True)
            assert h["registry"]["reachable"] is False and h["status"] == "degraded"
        info = requests.get(url2 + "/api/model/info", timeout=10).json()
        assert info["loaded_from"] == "cache" and info["metrics"]["accuracy"] > 0.9
        assert info["aliases"] == ["production"]
        r = requests.post(url2 + "/invocations", data=ROW, headers=HEADERS, timeout=10)
        assert r.status_code == 200 and r.headers["X-Model-Version"] == version and r.json()["predictions"] == [0]
        # no ADMIN_TOKEN on this one: reload is disabled, whatever the caller sends
        r = requests.post(url2 + "/api/model/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
        assert r.status_code == 403 and r.json()["error_code"] == "ADMIN_DISABLED"
    cache = served.tmp / "models" / MODEL
    assert (cache / "current").is_file() and (cache / version / "MLmodel").is_file()
