"""The service's own routes (MLflow's scoring protocol, state, admin) as a Flask blueprint.

:class:`Routes` holds what every request needs (the model manager, the settings, the metrics) and
has one short method per route; :func:`blueprint` binds them. The request bookkeeping (request id,
body limit, metrics of every answer) is app-wide, so the V2 routes share it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid

import numpy as np
from flask import Blueprint, Response, g, request

from serving import compat, inputs, openapi
from serving.batching import Batcher
from serving.errors import InputError
from serving.health import iso
from serving.http import bearer_ok, body_reader, error_response, json_response, labels_json, rows_of
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.rollout import RolloutController
from serving.settings import Settings

log = logging.getLogger("serving.app")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
#: Refusals that protect the service: kept even where MLflow's scoring server would accept.
_OWN_LIMITS = frozenset({"TOO_MANY_COLUMNS", "PAYLOAD_TOO_LARGE"})


class Routes:
    """The views of one app: the model ``manager`` it serves, its ``settings`` and ``metrics``."""

    def __init__(self, manager: ModelManager, settings: Settings, metrics: Metrics):
        self.manager = manager
        self.settings = settings
        self.metrics = metrics
        self.api_token = settings.api_token.encode() if settings.api_token else None
        self.admin_token = settings.admin_token.encode() if settings.admin_token else None
        self.read_body = body_reader(settings.max_body_bytes, settings.read_timeout_s)
        # one batcher per loaded version, kept on the runtime itself, so a retired version's goes
        # with it (a dict keyed by runtime, even a weak one, held it through its bound predict)
        self._batchers_lock = threading.Lock()
        # canary / shadow: the candidate next to Production, followed by the poller
        self.rollout = manager.rollout = RolloutController(manager, settings, metrics)

    # -- request bookkeeping ----------------------------------------------------------------------

    def begin(self) -> None:
        """Before every request: clock, request id, the poller, the declared body length."""
        g.t0 = time.perf_counter()
        rid = request.headers.get("X-Request-ID")
        g.rid = rid if rid and _REQUEST_ID.match(rid) else uuid.uuid4().hex
        if not self.manager.running:
            self.manager.start()
        length = request.content_length
        limit = self.settings.max_body_bytes
        if length is not None and length > limit:
            raise InputError("PAYLOAD_TOO_LARGE",
                             f"request body is {length} bytes; the limit (MAX_BODY_BYTES) is {limit}", 413)

    def end(self, resp: Response) -> Response:
        """After every request: the request metrics and the ``X-Request-ID`` header."""
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "<unmatched>"
        t0 = getattr(g, "t0", None)
        elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
        self.metrics.observe_request(endpoint, request.method, resp.status_code, elapsed)
        resp.headers["X-Request-ID"] = getattr(g, "rid", "-")
        return resp

    def api_denied(self) -> Response | None:
        """401 unless the request carries the API token (None: go ahead, or no token is set)."""
        if self.api_token is not None and not bearer_ok(self.api_token):
            return error_response("UNAUTHORIZED", "missing or wrong bearer token (API_TOKEN is set)", 401,
                                  {"WWW-Authenticate": "Bearer"})
        return None

    def observe_prediction(self, endpoint: str, runtime, rows: int, fmt: str) -> None:
        """Metrics and the log line of one answered prediction (every prediction route)."""
        version = runtime.version
        self.metrics.observe_rows(endpoint, version, rows)
        fields = {"request_id": g.rid, "endpoint": endpoint, "model_version": version,
                  "rows": rows, "format": fmt, "ms": round((time.perf_counter() - g.t0) * 1000, 3)}
        act = self.rollout.state
        if act is not None:  # a canary or shadow runs: both versions and who answered
            cand = act.candidate.version
            fields.update({"rollout": act.rollout.mode, "candidate_version": cand,
                           "production_version": self.manager.current.version if self.manager.current else None,
                           "role": "canary" if version == cand and act.rollout.mode == "canary" else "production"})
        log.info("Prediction made: %s v%s, %d row(s)", runtime.name, version, rows, extra={"fields": fields})

    # -- predictions ------------------------------------------------------------------------------

    def predict(self, endpoint: str, with_meta: bool) -> Response:
        """Score the request body; ``with_meta`` adds the model, classes and probabilities."""
        denied = self.api_denied()
        if denied is not None:
            return denied
        runtime = self.manager.current
        if runtime is None:
            return error_response("MODEL_NOT_READY", "no model loaded yet; see /health", 503, {"Retry-After": "1"})
        content_type = request.headers.get("Content-Type")
        kind = inputs.media_type(content_type)
        body = self.read_body()
        # /invocations answers as `mlflow models serve` unless STRICT_INPUT is set: what the own
        # validation accepts takes the fast path; everything else gets MLflow's own answer.
        as_mlflow = endpoint == "/invocations" and not self.settings.strict_input
        if kind == "parquet":
            if endpoint != "/invocations":
                raise InputError("UNSUPPORTED_MEDIA_TYPE", "Parquet bodies are accepted on /invocations", 415)
            inputs.check_parquet(body, runtime.spec, self.settings.max_body_bytes)
            return self.answer_as_mlflow(endpoint, runtime, body, content_type, None)
        if as_mlflow and not runtime.fast:
            return self.answer_as_mlflow(endpoint, runtime, body, content_type, None)
        try:
            parsed = runtime.parse(body, kind)
            runtime, result = self.rollout.predict(self.predict_rows, runtime, parsed, with_meta,
                                                   lambda rt: rt.parse(body, kind),
                                                   request.headers.get("X-Routing-Key"), g.rid, len(body))
        except InputError as exc:
            if not as_mlflow or exc.code in _OWN_LIMITS:
                raise
            return self.answer_as_mlflow(endpoint, runtime, body, content_type, exc)
        version = runtime.version
        payload = {"predictions": labels_json(result.labels)}
        if with_meta:
            payload["model_name"] = runtime.name
            payload["model_version"] = version
            if result.classes is not None:  # a classifier: its labels, and probabilities where it has them
                payload["classes"] = result.classes
                payload["probabilities"] = np.ascontiguousarray(result.proba) if result.proba is not None else None
        self.observe_prediction(endpoint, runtime, result.rows, parsed.fmt)
        return json_response(payload, 200, {"X-Model-Version": version})

    def predict_rows(self, runtime, parsed, with_proba: bool):
        """Predict validated rows on ``runtime`` (the one call every prediction route makes):
        merged with concurrent requests on the same version unless BATCHING is off."""
        if not self.settings.batching or runtime.batch_reason is not None:
            return runtime.predict(parsed, with_proba=with_proba)
        batcher = getattr(runtime, "batcher", None)
        if batcher is None:
            with self._batchers_lock:
                batcher = getattr(runtime, "batcher", None)
                if batcher is None:
                    batcher = runtime.batcher = Batcher(
                        runtime.predict, runtime.fast_path, self.settings.batch_max_rows,
                        self.settings.batch_max_wait_ms / 1000.0, self.metrics.observe_batch)
        return batcher.predict(parsed, with_proba)

    def answer_as_mlflow(self, endpoint: str, runtime, body: bytes, content_type: str,
                         clearer: InputError | None) -> Response:
        """MLflow's own answer (``serving.compat``), with this service's headers, metrics and log."""
        answer = compat.invoke(runtime.loaded.pyfunc, body, content_type, clearer)
        if not answer.ok:
            return Response(answer.body, status=answer.status, mimetype="application/json")
        self.observe_prediction(endpoint, runtime, rows_of(answer.body), "mlflow")
        return Response(answer.body, status=200, mimetype="application/json",
                        headers={"X-Model-Version": runtime.version})

    def invocations(self) -> Response:
        return self.predict("/invocations", with_meta=False)

    def api_predict(self) -> Response:
        return self.predict("/api/predict", with_meta=True)

    # -- state ------------------------------------------------------------------------------------

    def health(self) -> Response:
        return json_response(self.manager.health())

    def mlflow_version(self) -> Response:
        """The MLflow version, as ``mlflow models serve`` answers it (its client reads the text)."""
        from mlflow.version import VERSION

        return Response(VERSION, status=200, mimetype="application/json")

    def ping(self) -> Response:
        """MLflow's health check: 200 with MLflow's body (a newline) once a model is loaded."""
        if self.manager.current is None:
            return self.ready()
        return Response("\n", status=200, mimetype="application/json")

    def ready(self) -> Response:
        rt = self.manager.current
        if rt is None:
            h = self.manager.health()
            why = h["registry"]["error"] or h["registry"]["note"] or "loading"
            return error_response("MODEL_NOT_READY", f"no model loaded yet ({why})", 503, {"Retry-After": "1"})
        return json_response({"ready": True, "model_name": rt.name, "model_version": rt.version})

    def model_info(self) -> Response:
        denied = self.api_denied()
        if denied is not None:
            return denied
        rt, manager = self.manager.current, self.manager
        if rt is None:
            return error_response("MODEL_NOT_READY", "no model loaded yet; see /health", 503)
        meta = rt.meta
        return json_response({
            "model_name": rt.name,
            "model_version": rt.version,
            "stage": meta.stage,
            "aliases": meta.aliases,
            "selector": manager.settings.selector,
            "run_id": meta.run_id,
            "source": meta.source,
            "signature": rt.signature_dict(),
            "metrics": meta.metrics,
            "flavors": rt.flavors,
            "classes": rt.classes,
            "fast_path": rt.fast,
            "fast_path_reason": rt.native_reason,
            "prediction_path": rt.fast_path,
            "batching": {**self.settings.batching_public(), "merges": self.settings.batching and rt.batch_reason is None,
                         "reason": rt.batch_reason if self.settings.batching else "BATCHING is off"},
            "loaded_at": iso(rt.loaded_at),
            "loaded_from": rt.loaded_from,
            "last_registry_check": iso(manager.last_check_at),
            "registry": manager.registry_status(),
            "description": meta.description,
            "service": manager.settings.public(),
            "pid": os.getpid(),
        })

    def reload(self) -> Response:
        if self.admin_token is None:
            return error_response("ADMIN_DISABLED", "reload is disabled: set ADMIN_TOKEN on the service", 403)
        if not bearer_ok(self.admin_token):
            return error_response("UNAUTHORIZED", "missing or wrong admin bearer token", 401,
                                  {"WWW-Authenticate": "Bearer"})
        manager = self.manager
        manager.cache.request_reload()  # the other workers check on their next tick, forced too
        result = manager.check(force=True, timeout=120)
        result["pid"] = os.getpid()
        log.info("reload requested: %s", result, extra={"fields": {"request_id": g.rid, "event": "reload"}})
        if result.get("error") or manager.current is None:
            return json_response({"error_code": "RELOAD_FAILED", "message": result.get("error") or "no model loaded",
                                  **result}, 503)
        return json_response(result)

    def metrics_endpoint(self) -> Response:
        denied = self.api_denied()  # Prometheus: `authorization: {credentials: <API_TOKEN>}`
        if denied is not None:
            return denied
        body, ctype = self.metrics.render()
        return Response(body, mimetype=ctype.split(";")[0], content_type=ctype)

    def openapi_doc(self) -> Response:
        denied = self.api_denied()
        if denied is not None:
            return denied
        return json_response(openapi.build(self.manager.current, self.settings))

    def index(self) -> Response:
        return json_response({"service": "prediction service", "model_name": self.settings.model_name,
                              "docs": "/openapi.json", "health": "/health"})


def blueprint(routes: Routes) -> Blueprint:
    """The routes as a blueprint; its before/after hooks run for every request of the app."""
    bp = Blueprint("serving", __name__)
    bp.before_app_request(routes.begin)
    bp.after_app_request(routes.end)
    table = [
        ("POST", "/invocations", routes.invocations),
        ("POST", "/api/predict", routes.api_predict),
        ("GET", "/health", routes.health),
        ("GET", "/version", routes.mlflow_version),
        ("GET", "/ping", routes.ping),
        ("GET", "/ready", routes.ready),
        ("GET", "/api/model/info", routes.model_info),
        ("POST", "/api/model/reload", routes.reload),
        ("GET", "/metrics", routes.metrics_endpoint),
        ("GET", "/openapi.json", routes.openapi_doc),
        ("GET", "/", routes.index),
    ]
    for method, rule, view in table:
        # no automatic OPTIONS answer (an empty HTML 200): OPTIONS is a 405 naming the method allowed
        bp.add_url_rule(rule, view.__name__, view, methods=[method], provide_automatic_options=False)
    return bp
