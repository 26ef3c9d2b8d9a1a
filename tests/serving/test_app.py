"""The HTTP layer without gunicorn: the factory, the blueprint, the error handlers, and the
settings that reach gunicorn and ``mlops serve`` (one fresh app per test, as in Flask's tutorial)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serving.app import create_app
from serving.errors import InputError, ServingError
from serving.settings import Settings, SettingsError
from tests.helpers import BIN, ROOT, clean_env

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: the registry is refused at once


@pytest.fixture
def app(tmp_path):
    settings = Settings(tracking_uri=UNREACHABLE, model_cache_dir=tmp_path / "models", log_dir=tmp_path / "logs",
                        poll_interval_s=3600)
    app = create_app(settings)

    def boom():
        raise RuntimeError("secret internals\nTraceback-looking detail")

    def refused():
        raise ServingError("QUOTA_EXCEEDED", "too many requests for this key", 429)

    app.add_url_rule("/test/boom", "boom", boom)
    app.add_url_rule("/test/refused", "refused", refused)
    return app


def test_every_route_is_registered_once(app):
    rules = sorted((r.rule, m) for r in app.url_map.iter_rules() for m in r.methods - {"HEAD", "OPTIONS"}
                   if not r.rule.startswith(("/static", "/test")))
    assert len(rules) == len(set(rules))
    for rule in ("/invocations", "/api/predict", "/health", "/ready", "/ping", "/version", "/metrics",
                 "/openapi.json", "/api/model/info", "/api/model/reload", "/v2", "/v2/models/<name>/infer"):
        assert rule in {r for r, _ in rules}, rule


def test_an_unexpected_error_is_a_json_500_with_the_request_id_and_the_traceback_only_in_the_log(app, tmp_path):
    r = app.test_client().get("/test/boom", headers={"X-Request-ID": "req-42"})
    assert r.status_code == 500 and r.is_json
    assert r.json == {"error_code": "INTERNAL_ERROR",
                      "message": "internal error (request id req-42); see the service log"}
    assert r.headers["X-Request-ID"] == "req-42"
    log = (tmp_path / "logs" / "app.log").read_text()
    assert "secret internals" in log and "Traceback" in log


def test_a_serving_error_answers_its_own_code_and_status(app):
    r = app.test_client().get("/test/refused")
    assert (r.status_code, r.json) == (429, {"error_code": "QUOTA_EXCEEDED",
                                             "message": "too many requests for this key"})
    assert issubclass(InputError, ServingError)


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/nowhere", 404, "NOT_FOUND"),
    ("DELETE", "/invocations", 405, "METHOD_NOT_ALLOWED"),
    ("POST", "/invocations", 503, "MODEL_NOT_READY"),
])
def test_routing_errors_and_no_model_answer_json(app, method, path, status, code):
    r = app.test_client().open(path, method=method, json={"inputs": [[1.0]]})
    assert r.status_code == status and r.json["error_code"] == code, r.get_data(as_text=True)


def test_a_body_over_the_limit_is_refused_before_it_is_read(tmp_path):
    settings = Settings(tracking_uri=UNREACHABLE, model_cache_dir=tmp_path / "models", log_dir=tmp_path / "logs",
                        poll_interval_s=3600, max_body_bytes=2048)
    r = create_app(settings).test_client().post("/invocations", data=b"x" * 4096,
                                                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json["error_code"] == "PAYLOAD_TOO_LARGE"
    assert "MAX_BODY_BYTES" in r.json["message"]


def test_options_take_the_place_of_their_variables_and_are_checked_the_same_way():
    s = Settings.from_env({"PORT": "6000", "WORKERS": "2"}, port=5002, workers=None, host="0.0.0.0")
    assert (s.port, s.workers, s.host) == (5002, 2, "0.0.0.0")
    with pytest.raises(SettingsError, match=r"^PORT must be between 1 and 65535, got 70000$"):
        Settings.from_env({}, port=70000)
    with pytest.raises(SettingsError, match="unknown serving option"):
        Settings.from_env({}, colour="blue")
    # what `mlops serve` hands to gunicorn gives the same settings there
    again = Settings.from_env({**s.environ(), "WORKERS": str(s.workers)})
    assert again == s


def _gunicorn_conf(**env: str) -> subprocess.CompletedProcess[str]:
    code = ("import json, runpy; c = runpy.run_path('serving/gunicorn.conf.py'); "
            "print(json.dumps({k: c[k] for k in ('bind', 'workers', 'threads', 'worker_class', 'keepalive', "
            "'timeout', 'graceful_timeout', 'accesslog', 'forwarded_allow_ips', 'loglevel')})); c['on_exit'](None)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(**env), capture_output=True,
                          text=True, timeout=120)


def test_gunicorn_reads_its_settings_through_the_settings_object():
    p = _gunicorn_conf(PORT="5123", WORKERS="3", THREADS="6", KEEPALIVE_S="7", TIMEOUT_S="33",
                       GRACEFUL_TIMEOUT_S="4", ACCESS_LOG="-", FORWARDED_ALLOW_IPS="10.0.0.1", LOG_LEVEL="warning")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {
        "bind": "127.0.0.1:5123", "workers": 3, "threads": 6, "worker_class": "serving.worker.ServingWorker",
        "keepalive": 7, "timeout": 33, "graceful_timeout": 4, "accesslog": "-", "forwarded_allow_ips": "10.0.0.1",
        "loglevel": "warning",
    }
    bad = _gunicorn_conf(TIMEOUT_S="soon")
    assert bad.returncode != 0 and "TIMEOUT_S must be a whole number, got 'soon'" in bad.stderr


def test_mlops_serve_refuses_a_bad_option_in_one_line(tmp_path):
    p = subprocess.run([str(BIN / "mlops"), "serve", "--port", "70000"], env=clean_env(LOG_DIR=tmp_path),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == "error: PORT must be between 1 and 65535, got 70000"


def test_a_method_not_allowed_names_the_allowed_ones(app):
    client = app.test_client()
    for method in ("PUT", "OPTIONS"):
        r = client.open("/invocations", method=method)
        assert r.status_code == 405 and r.is_json and r.json["error_code"] == "METHOD_NOT_ALLOWED", (method, r.data)
        assert r.headers["Allow"] == "POST"
    r = client.open("/health", method="DELETE")
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"GET", "HEAD"}


def test_batching_and_rollout_variables_are_read_and_checked_once():
    s = Settings.from_env({"BATCHING": "off", "BATCH_MAX_ROWS": "64", "BATCH_MAX_WAIT_MS": "2.5",
                           "SHADOW_QUEUE_SIZE": "16"})
    assert (s.batching, s.batch_max_rows, s.batch_max_wait_ms, s.shadow_queue_size) == (False, 64, 2.5, 16)
    assert Settings.from_env({}).shadow_queue_size == 256
    for var, bad in (("SHADOW_QUEUE_SIZE", "0"), ("BATCH_MAX_ROWS", "0"), ("BATCH_MAX_WAIT_MS", "-1")):
        with pytest.raises(SettingsError, match=f"^{var} must be"):
            Settings.from_env({var: bad})
