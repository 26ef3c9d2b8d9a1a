"""Error handlers: every failure leaves as ``{"error_code", "message"}`` with its status.

A :class:`~serving.errors.ServingError` answers its own code and status; Flask's HTTP errors
(404, 405, 413, ...) get a fixed code per status and a message naming the path or limit; anything
else is logged with its traceback and answered 500 with the request id, never the traceback.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving.errors import ServingError
from serving.http import error_response

log = logging.getLogger("serving.app")

HTTP_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
    406: "NOT_ACCEPTABLE", 408: "REQUEST_TIMEOUT", 411: "LENGTH_REQUIRED", 413: "PAYLOAD_TOO_LARGE",
    414: "URI_TOO_LONG", 415: "UNSUPPORTED_MEDIA_TYPE", 431: "HEADERS_TOO_LARGE",
}


def register(app: Flask, max_body_bytes: int) -> None:
    """Attach the service's error handlers to ``app``."""

    @app.errorhandler(ServingError)
    def _serving_error(exc: ServingError) -> Response:
        return error_response(exc.code, exc.message, exc.status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = HTTP_CODES.get(status, "HTTP_ERROR")
        message = exc.description or code
        if status == 413:
            message = f"request body is larger than the limit (MAX_BODY_BYTES = {max_body_bytes})"
        elif status == 405:
            message = f"{request.method} is not allowed on {request.path}"
            methods = getattr(exc, "valid_methods", None)
            if methods:
                return error_response(code, message, status, {"Allow": ", ".join(methods)})
        elif status == 404:
            message = f"no endpoint {request.path} (see /openapi.json)"
        return error_response(code, message, status)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rid = getattr(g, "rid", "-")
        log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc,
                  extra={"fields": {"request_id": getattr(g, "rid", None)}})
        return error_response("INTERNAL_ERROR", f"internal error (request id {rid}); see the service log", 500)
