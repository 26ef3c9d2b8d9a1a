"""Open Inference Protocol (KServe V2, REST) beside ``/invocations``: a Flask blueprint.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready`` and ``POST .../infer``. Inference goes through the same runtime as
``/invocations`` (the tensors become the same validated input, so the native and frame fast paths
are used) with the same bearer-token check, body limits, metrics and log line, which ``create_app``
hands over as :class:`Hooks`. Client mistakes answer ``{"error": "..."}`` with a 4xx status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as pkg_metadata
from typing import TYPE_CHECKING

import orjson
from flask import Blueprint, Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving import codecs_v2, inputs, v2_outputs
from serving.errors import InputError
from serving.http import json_response
from serving.v2_tensors import bad, short

if TYPE_CHECKING:
    from serving.manager import ModelManager
    from serving.runtime import ModelRuntime
    from serving.settings import Settings

log = logging.getLogger("serving.v2")

PREFIX = "/v2"
SERVER_NAME = "ml-devops-app"


@dataclass(frozen=True)
class Hooks:
    """What the V2 routes share with ``/invocations`` (built once by ``create_app``)."""

    #: None to go ahead, else the 401 answer (API_TOKEN is set and the bearer token is wrong)
    api_denied: Callable[[], Response | None]
    #: the request body within MAX_BODY_BYTES (InputError otherwise)
    read_body: Callable[[], bytes]
    #: metrics and the log line of one answered prediction: (endpoint, runtime, rows, format)
    observe: Callable[..., None]
    #: predict validated rows on a runtime: (runtime, parsed, with_proba) -> Prediction
    predict: Callable[..., object]
    #: canary/shadow routing (serving.rollout.route_hook): (runtime, parsed, with_proba, reparse)
    #: -> (runtime that answered, Prediction); None: always the served version
    route: Callable[..., tuple] | None = None


def _error(message: str, status: int, headers: dict | None = None) -> Response:
    return json_response({"error": message}, status, headers)


def _server_version() -> str:
    try:
        return pkg_metadata.version(SERVER_NAME)
    except pkg_metadata.PackageNotFoundError:
        return "unknown"


def is_v2_path(path: str) -> bool:
    """True for the paths of this protocol."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def register(app: Flask, manager: ModelManager, settings: Settings, hooks: Hooks) -> None:
    """Add the V2 routes to ``app``; unmatched V2 paths (404, 405) answer ``{"error"}`` too."""
    app.register_blueprint(blueprint(manager, settings, hooks))

    def routing_error(exc: HTTPException) -> Response | HTTPException:
        if is_v2_path(request.path):
            status = exc.code or 404
            what = (f"{request.method} is not allowed on {request.path}" if status == 405
                    else f"no V2 endpoint {request.path} (see /openapi.json)")
            methods = getattr(exc, "valid_methods", None)
            return _error(what, status, {"Allow": ", ".join(methods)} if status == 405 and methods else None)
        fallback = app.error_handler_spec[None][None].get(HTTPException)
        return fallback(exc) if fallback is not None else exc

    app.register_error_handler(404, routing_error)
    app.register_error_handler(405, routing_error)


def blueprint(manager: ModelManager, settings: Settings, hooks: Hooks) -> Blueprint:
    """The V2 routes for the model ``manager`` serves."""
    bp = Blueprint("v2", __name__)
    server_version = _server_version()

    _error_handlers(bp, settings)

    def denied() -> Response | None:
        resp = hooks.api_denied()
        if resp is None:
            return None
        message = orjson.loads(resp.get_data()).get("message", "unauthorized")
        headers = {k: v for k, v in resp.headers.items() if k == "WWW-Authenticate"}
        return _error(message, resp.status_code, headers)

    def served(name: str, version: str | None) -> ModelRuntime:
        """The runtime serving ``name`` (and ``version``, if given); 404 / 503 otherwise."""
        rt = manager.current
        served_name = rt.name if rt is not None else settings.model_name
        if name != served_name:
            raise InputError("NOT_FOUND", f"unknown model '{short(name)}': this server serves "
                                          f"'{served_name}'", 404)
        if rt is None:
            raise InputError("MODEL_NOT_READY", f"model '{served_name}' is not loaded yet; see /health", 503)
        if version is not None and version != rt.version:
            raise InputError("NOT_FOUND", f"version '{short(version)}' of model '{served_name}' is not "
                                          f"served; the served version is {rt.version}", 404)
        return rt

    # -- server -----------------------------------------------------------------------------------

    @bp.get(PREFIX)
    @bp.get(PREFIX + "/")
    def server_metadata() -> Response:
        return json_response({"name": SERVER_NAME, "version": server_version, "extensions": []})

    @bp.get(PREFIX + "/health/live")
    def live() -> Response:
        return json_response({"live": True})

    @bp.get(PREFIX + "/health/ready")
    def ready() -> Response:
        if manager.current is None:
            return json_response({"ready": False, "error": "no model loaded yet; see /health"}, 503, {"Retry-After": "1"})
        return json_response({"ready": True})

    # -- model ------------------------------------------------------------------------------------

    @bp.get(PREFIX + "/models/<name>")
    @bp.get(PREFIX + "/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        resp = denied()
        if resp is not None:
            return resp
        return json_response(v2_outputs.metadata(served(name, version)))

    @bp.get(PREFIX + "/models/<name>/ready")
    @bp.get(PREFIX + "/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        try:
            rt = served(name, version)
        except InputError as exc:
            if exc.status != 503:
                raise
            return json_response({"name": name, "ready": False, "error": exc.message}, 503, {"Retry-After": "1"})
        return json_response({"name": rt.name, "ready": True})

    @bp.post(PREFIX + "/models/<name>/infer")
    @bp.post(PREFIX + "/models/<name>/versions/<version>/infer")
    def infer(name: str, version: str | None = None) -> Response:
        resp = denied()
        if resp is not None:
            return resp
        rt = served(name, version)
        _check_content_type()
        body = hooks.read_body()
        doc = codecs_v2.decode(body)
        req = codecs_v2.to_request(doc, rt, body)
        with_proba = codecs_v2.PROBABILITIES in req.outputs
        if hooks.route is not None and version is None:  # a version named in the path is never rerouted
            rt, result = hooks.route(rt, req.parsed, with_proba, lambda r: codecs_v2.to_request(doc, r, body).parsed)
        else:
            result = hooks.predict(rt, req.parsed, with_proba)
        payload = v2_outputs.response(rt, req, result)
        hooks.observe(request.url_rule.rule, rt, result.rows, req.parsed.fmt)
        return json_response(payload, 200, {"X-Model-Version": rt.version})

    return bp


def _error_handlers(bp: Blueprint, settings: Settings) -> None:
    """Every V2 failure as ``{"error": message}`` with its status (never a traceback)."""

    @bp.errorhandler(InputError)
    def _input_error(exc: InputError) -> Response:
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return _error(exc.message, exc.status, headers)

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = exc.description or exc.name
        if status == 413:
            message = f"request body is larger than the limit (MAX_BODY_BYTES = {settings.max_body_bytes})"
        return _error(message, status)

    @bp.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rid = getattr(g, "rid", "-")
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc,
                  extra={"fields": {"request_id": rid}})
        return _error(f"internal error (request id {rid}); see the service log", 500)


def _check_content_type() -> None:
    """JSON only (a missing Content-Type is JSON: tritonclient sends none); 400 for binary data."""
    if request.headers.get("Inference-Header-Content-Length") is not None:
        raise bad("binary tensor data (Inference-Header-Content-Length) is not supported; send the "
                            "elements in JSON 'data' (tritonclient: binary_data=False)")
    ctype = request.headers.get("Content-Type")
    if not ctype:
        return
    try:
        kind = inputs.media_type(ctype)
    except InputError:
        kind = None
    if kind != "json":
        raise InputError("UNSUPPORTED_MEDIA_TYPE", f"unsupported Content-Type '{short(ctype)}': "
                                                   "V2 inference takes application/json (UTF-8)", 415)
