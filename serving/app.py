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
from gunicorn.http.errors import (
    ChunkMissingTerminator,
    InvalidChunkExtension,
    InvalidChunkSize,
    NoMoreData,
    ParseException,
)
from werkzeug.exceptions import ClientDisconnected, HTTPException

from serving import compat, inputs, openapi
from serving import logs as service_logs
from serving.inputs import InputError
from serving.manager import ModelManager, iso
from serving.metrics import Metrics
from serving.settings import Settings
from serving.worker import abandon_body, read_expired

# What gunicorn's body readers raise for a malformed chunked body (trailers included: they are
# parsed as headers, so any of gunicorn's parse errors), and for one that ends early.
_BAD_CHUNKS: tuple[type[Exception], ...] = (InvalidChunkSize, ChunkMissingTerminator, InvalidChunkExtension,
                                            ParseException)
_BODY_ENDED: tuple[type[Exception], ...] = (NoMoreData, ClientDisconnected)

log = logging.getLogger("serving.app")

EXTENSION = "serving.manager"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HTTP_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE", 408: "REQUEST_TIMEOUT", 411: "LENGTH_REQUIRED", 413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG", 415: "UNSUPPORTED_MEDIA_TYPE", 431: "HEADERS_TOO_LARGE",
}
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY
#: Refusals that protect the service: kept even where MLflow's scoring server would accept.
_OWN_LIMITS = frozenset({"TOO_MANY_COLUMNS", "PAYLOAD_TOO_LARGE"})


def create_app(settings: Settings | None = None, manager: ModelManager | None = None) -> Flask:
    """Build the service for ``settings`` (default: read from the environment)."""
    settings = settings or Settings.from_env()
    service_logs.setup(settings.log_dir, settings.log_level, settings.log_max_bytes, settings.log_backups)
    metrics = manager.metrics if manager is not None else Metrics()
    manager = manager or ModelManager(settings, metrics)

    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    inputs.set_max_columns(settings.max_columns)
    inputs.set_strict(settings.strict_input)
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
        """The request body, at most MAX_BODY_BYTES (chunked bodies included); 413 above.

        A malformed chunked body is a 400, a body that stops early (the client went away, or
        its read deadline passed: 408) too; both close the connection and log one debug line.
        """
        environ = request.environ
        try:
            if request.content_length is not None:  # the length was checked in _begin
                data = request.get_data(cache=False)
                if len(data) < request.content_length:  # gunicorn: the stream just ends
                    raise NoMoreData(data)
                return data
            stream = environ.get("wsgi.input")
            data = stream.read(settings.max_body_bytes + 1) if stream is not None else b""
        except (*_BAD_CHUNKS, *_BODY_ENDED) as exc:
            abandon_body(environ)
            fields = {"fields": {"request_id": g.rid}}
            if read_expired(environ):
                log.debug("request body read timed out (READ_TIMEOUT_S)", extra=fields)
                raise BodyError("REQUEST_TIMEOUT", "the request body did not arrive in time "
                                                   f"(READ_TIMEOUT_S = {settings.read_timeout_s:g})", 408) from None
            if isinstance(exc, _BAD_CHUNKS):
                log.debug("malformed chunked body: %s", exc, extra=fields)
                raise BodyError("MALFORMED_BODY", f"invalid chunked transfer encoding: {type(exc).__name__} "
                                                  f"({_first_line(exc)})") from None
            log.debug("client disconnected during the body: %s", type(exc).__name__, extra=fields)
            raise BodyError("INCOMPLETE_BODY", "the request body ended before it was complete") from None
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

    def api_denied() -> Response | None:
        """401 unless the request carries the API token (None: go ahead, or no token is set)."""
        if api_token is not None and not bearer_ok(api_token):
            return error("UNAUTHORIZED", "missing or wrong bearer token (API_TOKEN is set)", 401,
                         {"WWW-Authenticate": "Bearer"})
        return None

    def observe_prediction(endpoint: str, runtime, rows: int, fmt: str) -> None:
        """Metrics and the log line of one answered prediction (every prediction route)."""
        version = runtime.version
        metrics.observe_rows(endpoint, version, rows)
        log.info(
            "Prediction made: %s v%s, %d row(s)", runtime.name, version, rows,
            extra={"fields": {"request_id": g.rid, "endpoint": endpoint, "model_version": version,
                              "rows": rows, "format": fmt, "ms": round((time.perf_counter() - g.t0) * 1000, 3)}},
        )

    # -- predictions ------------------------------------------------------------------------------

    def predict(endpoint: str, with_meta: bool) -> Response:
        denied = api_denied()
        if denied is not None:
            return denied
        runtime = manager.current
        if runtime is None:
            return error("MODEL_NOT_READY", "no model loaded yet; see /health", 503, {"Retry-After": "1"})
        content_type = request.headers.get("Content-Type")
        kind = inputs.media_type(content_type)
        body = read_body()
        # /invocations answers as `mlflow models serve` unless STRICT_INPUT is set: what the own
        # validation accepts takes the fast path; everything else gets MLflow's own answer.
        as_mlflow = endpoint == "/invocations" and not settings.strict_input
        if kind == "parquet":
            if endpoint != "/invocations":
                raise InputError("UNSUPPORTED_MEDIA_TYPE", "Parquet bodies are accepted on /invocations", 415)
            return answer_as_mlflow(endpoint, runtime, body, content_type, None)
        if as_mlflow and not runtime.fast:
            return answer_as_mlflow(endpoint, runtime, body, content_type, None)
        try:
            parsed = runtime.parse(body, kind)
            result = runtime.predict(parsed, with_proba=with_meta)
        except InputError as exc:
            if not as_mlflow or exc.code in _OWN_LIMITS:
                raise
            return answer_as_mlflow(endpoint, runtime, body, content_type, exc)
        version = runtime.version
        payload = {"predictions": _labels(result.labels)}
        if with_meta:
            payload["model_name"] = runtime.name
            payload["model_version"] = version
            if result.classes is not None:  # a classifier: its labels, and probabilities where it has them
                payload["classes"] = result.classes
                payload["probabilities"] = np.ascontiguousarray(result.proba) if result.proba is not None else None
        observe_prediction(endpoint, runtime, result.rows, parsed.fmt)
        return json_response(payload, 200, {"X-Model-Version": version})

    def answer_as_mlflow(endpoint: str, runtime, body: bytes, content_type: str,
                         clearer: InputError | None) -> Response:
        """MLflow's own answer (``serving.compat``), with this service's headers, metrics and log."""
        answer = compat.invoke(runtime.loaded.pyfunc, body, content_type, clearer)
        version = runtime.version
        if not answer.ok:
            return Response(answer.body, status=answer.status, mimetype="application/json")
        rows = _rows_of(answer.body)
        metrics.observe_rows(endpoint, version, rows)
        log.info(
            "Prediction made: %s v%s, %d row(s)", runtime.name, version, rows,
            extra={"fields": {"request_id": g.rid, "endpoint": endpoint, "model_version": version,
                              "rows": rows, "format": "mlflow",
                              "ms": round((time.perf_counter() - g.t0) * 1000, 3)}},
        )
        return Response(answer.body, status=200, mimetype="application/json", headers={"X-Model-Version": version})

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

    @app.get("/version")
    def mlflow_version():
        """The MLflow version, as ``mlflow models serve`` answers it (its client reads the text)."""
        from mlflow.version import VERSION

        return Response(VERSION, status=200, mimetype="application/json")

    @app.get("/ping")
    def ping():
        """MLflow's health check: 200 with MLflow's body (a newline) once a model is loaded."""
        if manager.current is None:
            return ready()
        return Response("\n", status=200, mimetype="application/json")

    @app.get("/ready")
    def ready():
        rt = manager.current
        if rt is None:
            h = manager.health()
            why = h["registry"]["error"] or h["registry"]["note"] or "loading"
            return error("MODEL_NOT_READY", f"no model loaded yet ({why})", 503, {"Retry-After": "1"})
        return json_response({"ready": True, "model_name": rt.name, "model_version": rt.version})

    @app.get("/api/model/info")
    def model_info():
        denied = api_denied()
        if denied is not None:
            return denied
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
            "prediction_path": rt.fast_path,
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
        denied = api_denied()  # Prometheus: `authorization: {credentials: <API_TOKEN>}`
        if denied is not None:
            return denied
        body, ctype = metrics.render()
        return Response(body, mimetype=ctype.split(";")[0], content_type=ctype)

    @app.get("/openapi.json")
    def openapi_doc():
        denied = api_denied()
        if denied is not None:
            return denied
        return json_response(openapi.build(manager.current, settings))

    @app.get("/")
    def index():
        return json_response({"service": "prediction service", "model_name": settings.model_name,
                              "docs": "/openapi.json", "health": "/health"})

    from serving import v2  # Open Inference Protocol (KServe V2) beside /invocations

    v2.register(app, manager, settings, v2.Hooks(api_denied, read_body, observe_prediction))
    return app


class BodyError(InputError):
    """The request body could not be read to its end (answered; the worker then closes the connection)."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _rows_of(body: bytes) -> int:
    """How many predictions an MLflow answer holds (1 for anything but a list)."""
    try:
        preds = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    if isinstance(preds, dict):
        preds = preds.get("predictions")
    return len(preds) if isinstance(preds, list) else 1


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
