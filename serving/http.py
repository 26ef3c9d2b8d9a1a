"""What every route shares: JSON answers, the bearer-token check and the bounded body reader."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

import numpy as np
import orjson
from flask import Response, g, request
from gunicorn.http.errors import (
    ChunkMissingTerminator,
    InvalidChunkExtension,
    InvalidChunkSize,
    NoMoreData,
    ParseException,
)
from werkzeug.exceptions import ClientDisconnected

from mlops.util import first_line
from serving.errors import BodyError, InputError
from serving.worker import abandon_body, read_expired

log = logging.getLogger("serving.app")

# What gunicorn's body readers raise for a malformed chunked body (trailers included: they are
# parsed as headers, so any of gunicorn's parse errors), and for one that ends early.
_BAD_CHUNKS: tuple[type[Exception], ...] = (InvalidChunkSize, ChunkMissingTerminator, InvalidChunkExtension,
                                            ParseException)
_BODY_ENDED: tuple[type[Exception], ...] = (NoMoreData, ClientDisconnected)
_DUMPS_OPTS = orjson.OPT_SERIALIZE_NUMPY


def json_response(payload: object, status: int = 200, headers: dict | None = None) -> Response:
    """``payload`` as JSON (numpy arrays written natively)."""
    return Response(orjson.dumps(payload, option=_DUMPS_OPTS, default=to_jsonable), status=status,
                    mimetype="application/json", headers=headers)


def error_response(code: str, message: str, status: int, headers: dict | None = None) -> Response:
    """The service's error body: ``{"error_code", "message"}``."""
    return json_response({"error_code": code, "message": message}, status, headers)


def to_jsonable(obj: object) -> object:
    """orjson's fallback for numpy values it does not write itself."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def bearer_ok(expected: bytes) -> bool:
    """True when the request's ``Authorization: Bearer`` token equals ``expected``."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    # compare_digest runs in time independent of where the tokens differ
    return hmac.compare_digest(token.strip().encode(), expected) and scheme.lower() == "bearer"


def body_reader(max_body_bytes: int, read_timeout_s: float) -> Callable[[], bytes]:
    """A reader of the request body, at most ``max_body_bytes`` (chunked bodies included); 413 above.

    A malformed chunked body is a 400, a body that stops early (the client went away, or its read
    deadline passed: 408) too; both close the connection and log one debug line.
    """

    def read_body() -> bytes:
        environ = request.environ
        try:
            if request.content_length is not None:  # the length was checked before the route
                data = request.get_data(cache=False)
                if len(data) < request.content_length:  # gunicorn: the stream just ends
                    raise NoMoreData(data)
                return data
            stream = environ.get("wsgi.input")
            data = stream.read(max_body_bytes + 1) if stream is not None else b""
        except (*_BAD_CHUNKS, *_BODY_ENDED) as exc:
            abandon_body(environ)
            fields = {"fields": {"request_id": g.rid}}
            if read_expired(environ):
                log.debug("request body read timed out (READ_TIMEOUT_S)", extra=fields)
                raise BodyError("REQUEST_TIMEOUT", "the request body did not arrive in time "
                                                   f"(READ_TIMEOUT_S = {read_timeout_s:g})", 408) from None
            if isinstance(exc, _BAD_CHUNKS):
                log.debug("malformed chunked body: %s", exc, extra=fields)
                raise BodyError("MALFORMED_BODY", f"invalid chunked transfer encoding: {type(exc).__name__} "
                                                  f"({first_line(exc, 200)})") from None
            log.debug("client disconnected during the body: %s", type(exc).__name__, extra=fields)
            raise BodyError("INCOMPLETE_BODY", "the request body ended before it was complete") from None
        if len(data) > max_body_bytes:
            raise InputError("PAYLOAD_TOO_LARGE",
                             f"request body is larger than the limit (MAX_BODY_BYTES = {max_body_bytes})", 413)
        return data

    return read_body


def rows_of(body: bytes) -> int:
    """How many predictions an MLflow answer holds (1 for anything but a list)."""
    try:
        preds = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    if isinstance(preds, dict):
        preds = preds.get("predictions")
    return len(preds) if isinstance(preds, list) else 1


def labels_json(labels):
    """Predictions as something orjson writes natively (numeric arrays stay numpy)."""
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind in "biuf" and labels.flags.c_contiguous:
            return labels
        return labels.tolist()
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    return _get_jsonable_obj(labels, pandas_orient="records")
