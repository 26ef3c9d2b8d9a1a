"""HTTP-level limits of the service, in process (Flask test client, no model, no server): the
metrics keep fixed label sets whatever clients send, and with API_TOKEN set only /health and
/ready answer without it."""

from __future__ import annotations

import random
import string

import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.app import create_app
from serving.settings import Settings

TOKEN = "http-limits-token"
METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}
OTHER = "other"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: the registry is refused at once


def app_for(tmp_path, **kw):
    settings = Settings(tracking_uri=UNREACHABLE, model_cache_dir=tmp_path / "models", log_dir=tmp_path / "logs",
                        poll_interval_s=3600, **kw)
    app = create_app(settings)
    return app, app.test_client()


def request_labels(text: str) -> set[tuple[str, str, str]]:
    """(endpoint, method, status) of every serving_http_requests_total sample."""
    out = set()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "serving_http_requests_total":
                out.add((s.labels["endpoint"], s.labels["method"], s.labels["status"]))
    return out


def test_random_methods_and_paths_do_not_grow_the_metrics(tmp_path):
    app, client = app_for(tmp_path)
    rng = random.Random(13)
    routes = {rule.rule for rule in app.url_map.iter_rules()} | {"<unmatched>"}

    def noise(n: int) -> None:
        for _ in range(n):
            method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
            path = "/" + "".join(rng.choices(string.ascii_lowercase + string.digits + "/", k=rng.randint(1, 30)))
            client.open(path, method=method)
            client.open(rng.choice(["/health", "/invocations", "/metrics"]), method=method)
            client.get(path)
            client.get("/health")

    noise(20)  # (nearly) every label combination the noise can reach exists after this
    client.get("/metrics")
    small = client.get("/metrics").get_data(as_text=True)
    noise(300)
    big = client.get("/metrics").get_data(as_text=True)
    labels = request_labels(big)
    assert {m for _, m, _ in labels} <= METHODS | {OTHER}, sorted(labels)
    assert {e for e, _, _ in labels} <= routes, sorted(labels)
    assert (OTHER in {m for _, m, _ in labels}) and ("/health" in {e for e, _, _ in labels})
    # 300 more rounds (900 odd requests) changed counts, not the set of series: at most a few
    # combinations the first rounds missed (a series is a counter plus ~18 histogram lines).
    new = labels - request_labels(small)
    assert request_labels(small) <= labels and len(new) <= 3, new
    assert len(big.splitlines()) - len(small.splitlines()) <= 3 * 20, (len(small), len(big))


def test_status_labels_are_fixed_codes_or_classes(tmp_path):
    from serving.metrics import Metrics

    m = Metrics()
    for status in (200, 404, 418, 299, 502, 999):
        m.observe_request("/health", "GET", status, 0.001)
    statuses = {s for _, _, s in request_labels(m.render()[0].decode())}
    assert statuses == {"200", "404", "4xx", "2xx", "5xx", OTHER}, statuses


@pytest.mark.parametrize("path", ["/api/model/info", "/openapi.json", "/metrics"])
def test_info_docs_and_metrics_need_the_api_token(tmp_path, path):
    _, client = app_for(tmp_path, api_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        r = client.get(path, headers=headers)
        assert r.status_code == 401, (path, headers, r.status_code)
        assert r.get_json()["error_code"] == "UNAUTHORIZED" and r.headers["WWW-Authenticate"] == "Bearer"
        assert "tracking_uri" not in r.get_data(as_text=True) and "serving_" not in r.get_data(as_text=True)
    r = client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    # /api/model/info has no model to describe here (503); the others answer.
    assert r.status_code == (503 if path == "/api/model/info" else 200), (path, r.status_code)


def test_health_and_ready_stay_open_with_a_token(tmp_path):
    _, client = app_for(tmp_path, api_token=TOKEN)
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 503  # no model, but not 401
    assert client.get("/ping").status_code == 503


def test_without_a_token_everything_is_open(tmp_path):
    _, client = app_for(tmp_path)
    for path in ("/metrics", "/openapi.json", "/health"):
        assert client.get(path).status_code == 200, path
