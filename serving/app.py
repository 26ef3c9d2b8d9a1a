"""HTTP layer: the Flask app factory. The model runtime and its lifecycle live elsewhere
(``serving.runtime``, ``serving.manager``); nothing here touches the registry directly.

Nothing happens at import time: ``create_app(settings)`` builds the app, and the model poller
starts in each worker after the fork (gunicorn ``post_worker_init``) or on the first request.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
import uuid

import numpy as np
import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import inputs, openapi
from serving import logs as service_logs
from serving.inputs import InputError
from serving.manager import ModelManager, iso
from serving.metrics import Metrics
from serving.settings import Settings

log = logging.getLogger("serving.app")

EXTENSION = "serving.manager"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HTTP_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE", 408: "REQUEST_TIMEOUT", 411: "LENGTH_REQUIRED", 413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG", 415: "UNSUPPORTED_MEDIA_TYPE", 431: "HEADERS_TOO_LARGE",
}
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> Flask:
    """Build the service for ``settings`` (default: read from the environment)."""
    settings = settings or Settings.from_env()
    service_logs.setup(settings.log_dir, settings.log_level, settings.log_max_bytes, settings.log_backups)
    metrics = manager.metrics if manager is not None else Metrics()
    manager = manager or ModelManager(settings, metrics)

    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = manager
    api_token = settings.api_token.encode() if settings.api_token else None
    admin_token = settings.admin_token.encode() if settings.admin_token else None

    def json_response(payload, status: int = 200, headers: dict | None = None) -> Response:
        return Response(orjson.dumps(payload, option=_DUMPS_OPTS, default=_default), status=status,
                        mimetype="application/json", headers=headers)

    def error(code: str, message: str, status: int, headers: dict | None = None) -> Response:
        return json_response({"error_code": code, "message": message}, status, headers)

    def bearer_ok(expected: bytes) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest runs in time independent of where the tokens differ
        return hmac.compare_digest(token.strip().encode(), expected) and scheme.lower() == "bearer"

    def read_body() -> bytes:
        """The request body, at most MAX_BODY_BYTES (chunked bodies included); 413 above."""
        if request.content_length is not None:
            return request.get_data(cache=False)  # the length was checked in _begin
        stream = request.environ.get("wsgi.input")
        data = stream.read(settings.max_body_bytes + 1) if stream is not None else b""
        if len(data) > settings.max_body_bytes:
            raise InputError("PAYLOAD_TOO_LARGE",
                             f"request body is larger than the limit (MAX_BODY_BYTES = {settings.max_body_bytes})", 413)
        return data

    # -- request bookkeeping ----------------------------------------------------------------------

    @app.before_request
    def _begin():
        g.t0 = time.perf_counter()
        rid = request.headers.get("X-Request-ID")
        g.rid = rid if rid and _REQUEST_ID.match(rid) else uuid.uuid4().hex
        if not manager.running:
            manager.start()
        length = request.content_length
        if length is not None and length > settings.max_body_bytes:
            raise InputError("PAYLOAD_TOO_LARGE",
                             f"request body is {length} bytes; the limit (MAX_BODY_BYTES) is {settings.max_body_bytes}", 413)

    @app.after_request
    def _end(resp: Response) -> Response:
        rule = request.url_rule
        endpoint = rule.rule if rule is not None else "<unmatched>"
        t0 = getattr(g, "t0", None)
        elapsed = time.perf_counter() - t0 if t0 is not None else 0.0
        metrics.observe_request(endpoint, request.method, resp.status_code, elapsed)
        resp.headers["X-Request-ID"] = getattr(g, "rid", "-")
        return resp

    @app.errorhandler(InputError)
    def _input_error(exc: InputError):
        return error(exc.code, exc.message, exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "HTTP_ERROR")
        message = exc.description or code
        if status == 413:
            message = f"request body is larger than the limit (MAX_BODY_BYTES = {settings.max_body_bytes})"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif status == 404:
            message = f"no endpoint {request.path} (see /openapi.json)"
        return error(code, message, status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc,
                  extra={"fields": {"request_id": getattr(g, "rid", None)}})
        return error("INTERNAL_ERROR", f"internal error (request id {getattr(g, 'rid', '-')}); see the service log", 500)

    # -- predictions ------------------------------------------------------------------------------

    def predict(endpoint: str, with_meta: bool) -> Response:
        if api_token is not None and not bearer_ok(api_token):
            return error("UNAUTHORIZED", "missing or wrong bearer token (API_TOKEN is set)", 401,
                         {"WWW-Authenticate": "Bearer"})
        runtime = manager.current
        if runtime is None:
            return error("MODEL_NOT_READY", "no model loaded yet; see /health", 503, {"Retry-After": "1"})
        kind = inputs.media_type(request.headers.get("Content-Type"))
        parsed = runtime.parse(read_body(), kind)
        result = runtime.predict(parsed, with_proba=with_meta)
        version = runtime.version
        payload = {"predictions": _labels(result.labels)}
        if with_meta:
            payload["model_name"] = runtime.name
            payload["model_version"] = version
            payload["classes"] = result.classes
            payload["probabilities"] = np.ascontiguousarray(result.proba) if result.proba is not None else None
        metrics.observe_rows(endpoint, version, result.rows)
        log.info(
            "Prediction made: %s v%s, %d row(s)", runtime.name, version, result.rows,
            extra={"fields": {"request_id": g.rid, "endpoint": endpoint, "model_version": version,
                              "rows": result.rows, "format": parsed.fmt,
                              "ms": round((time.perf_counter() - g.t0) * 1000, 3)}},
        )
        return json_response(payload, 200, {"X-Model-Version": version})

    @app.post("/invocations")
    def invocations():
        return predict("/invocations", with_meta=False)

    @app.post("/api/predict")
    def api_predict():
        return predict("/api/predict", with_meta=True)

    # -- state ------------------------------------------------------------------------------------

    @app.get("/health")
    def health():
        return json_response(manager.health())

    @app.get("/ready")
    @app.get("/ping")
    def ready():
        rt = manager.current
        if rt is None:
            h = manager.health()
            why = h["registry"]["error"] or h["registry"]["note"] or "loading"
            return error("MODEL_NOT_READY", f"no model loaded yet ({why})", 503, {"Retry-After": "1"})
        return json_response({"ready": True, "model_name": rt.name, "model_version": rt.version})

    @app.get("/api/model/info")
    def model_info():
        rt = manager.current
        if rt is None:
            return error("MODEL_NOT_READY", "no model loaded yet; see /health", 503)
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
            "loaded_at": iso(rt.loaded_at),
            "loaded_from": rt.loaded_from,
            "last_registry_check": iso(manager.last_check_at),
            "registry": manager.registry_status(),
            "description": meta.description,
            "service": manager.settings.public(),
            "pid": os.getpid(),
        })

    @app.post("/api/model/reload")
    def reload():
        if admin_token is None:
            return error("ADMIN_DISABLED", "reload is disabled: set ADMIN_TOKEN on the service", 403)
        if not bearer_ok(admin_token):
            return error("UNAUTHORIZED", "missing or wrong admin bearer token", 401, {"WWW-Authenticate": "Bearer"})
        manager.cache.request_reload()  # the other workers check on their next tick, forced too
        result = manager.check(force=True, timeout=120)
        result["pid"] = os.getpid()
        log.info("reload requested: %s", result, extra={"fields": {"request_id": g.rid, "event": "reload"}})
        if result.get("error") or manager.current is None:
            return json_response({"error_code": "RELOAD_FAILED", "message": result.get("error") or "no model loaded",
                                  **result}, 503)
        return json_response(result)

    @app.get("/metrics")
    def metrics_endpoint():
        body, ctype = metrics.render()
        return Response(body, mimetype=ctype.split(";")[0], content_type=ctype)

    @app.get("/openapi.json")
    def openapi_doc():
        return json_response(openapi.build(manager.current, settings))

    @app.get("/")
    def index():
        return json_response({"service": "prediction service", "model_name": settings.model_name,
                              "docs": "/openapi.json", "health": "/health"})

    return app


def _labels(labels):
    """Predictions as something orjson writes natively (numeric arrays stay numpy)."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind in "biuf" and labels.flags.c_contiguous:
            return labels
        return labels.tolist()
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    return _get_jsonable_obj(labels, pandas_orient="records")


def _default(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
