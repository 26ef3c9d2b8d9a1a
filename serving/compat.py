"""Answers to ``POST /invocations`` exactly as ``mlflow models serve`` 3.17 gives them.

The service validates requests itself (``serving.inputs``) so that clean requests reach the fast
paths. Every request that validation refuses, and every request for a model without a fast path,
is answered here by MLflow's own scoring function (``mlflow.pyfunc.scoring_server.invocations``)
on the loaded model: the same parsing, the same schema enforcement, the same status and
``error_code``. What stays deliberately different (listed in docs/api.md): no ``stack_trace`` in an
error body, a 400 ``BAD_REQUEST`` where MLflow answers a 5xx to input it cannot use, and, where this
service's own validation has a clearer explanation, that explanation in ``message``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import orjson

from mlops.model_io import LoadedModel
from mlops.util import first_line
from serving import inputs
from serving.errors import InputError
from serving.schema import ParsedInput

log = logging.getLogger("serving.compat")

#: MLflow messages that start by echoing the whole input; their diagnosis follows the last "Error: ".
_ECHOES = ("Failed to predict data", "Failed to enforce schema of data")
#: How much of MLflow's own message an error body carries (its messages can echo the whole input).
_MAX_MESSAGE = 500


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status and JSON body (MLflow's own predictions text on success)."""

    status: int
    body: bytes
    error_code: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def invoke(pyfunc, body: bytes, content_type: str, clearer: InputError | None = None) -> Answer:
    """Score ``body`` with MLflow's scoring function; errors as MLflow's status and error_code.

    ``clearer`` is this service's own diagnosis of the request, if it refused it: its message
    replaces MLflow's in ``message`` (MLflow's stays in ``mlflow_message``).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from serving.predictors import sklearn_checks_on

    schema = pyfunc.metadata.get_input_schema()
    try:
        with warnings.catch_warnings(), sklearn_checks_on():
            warnings.simplefilter("ignore")
            result = scoring_server.invocations(body, content_type, pyfunc, schema)
    except MlflowException as exc:
        status, code = exc.get_http_status_code(), str(exc.error_code)
        if status >= 500:  # input MLflow could not use: a client mistake, never a 5xx here
            log.info("MLflow answered %s %s to a request; this service answers 400 BAD_REQUEST", status, code)
            status, code = 400, "BAD_REQUEST"
        return _error(status, code, summary(exc.message), clearer)
    except Exception as exc:  # noqa: BLE001 - MLflow's server would answer 500 with a traceback
        log.warning("MLflow's scoring function failed: %s", type(exc).__name__, exc_info=exc)
        return _error(400, "BAD_REQUEST", f"the input could not be scored: {summary(str(exc))}", clearer)
    if result.status == 200:
        payload = result.response
        return Answer(200, payload.encode("utf-8") if isinstance(payload, str) else payload)
    # MLflow answers 415 in plain text (content type or charset): this service answers JSON.
    return _error(result.status, "UNSUPPORTED_MEDIA_TYPE", summary(str(result.response)), clearer)


def _error(status: int, code: str, mlflow_message: str, clearer: InputError | None) -> Answer:
    body: dict = {"error_code": code, "message": clearer.message if clearer is not None else mlflow_message}
    if clearer is not None:
        body["mlflow_message"] = mlflow_message
    return Answer(status, orjson.dumps(body), code)


def summary(message: str) -> str:
    """MLflow's diagnosis without the echo of the input (``Failed to predict data '...'``)."""
    text = str(message)
    if text.startswith(_ECHOES) and "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else "invalid input"
    return first if len(first) <= _MAX_MESSAGE else first[: _MAX_MESSAGE - 3] + "..."


def parse_with_mlflow(body: bytes, kind: str, loaded: LoadedModel) -> ParsedInput:
    """Models without a column signature: MLflow's own parser, errors as InputError."""
    import io

    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data, parse_csv_input

    schema = loaded.signature.inputs if loaded.signature is not None else None
    try:
        if kind == "csv":
            frame = parse_csv_input(io.StringIO(body.decode("utf-8")), schema=schema)
            return ParsedInput(None, frame, None, len(frame), "csv")
        fmt, data, params = inputs.split_payload(inputs.decode_json(body))
        parsed = infer_and_parse_data({fmt: data}, schema)
    except InputError:
        raise
    except MlflowException as exc:
        raise InputError("INVALID_INPUT", first_line(exc.message)) from None
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InputError("INVALID_INPUT", first_line(str(exc))) from None
    try:
        n = len(parsed)
    except TypeError:
        n = 1
    if n == 0:
        raise InputError("EMPTY_INPUT", f"{fmt} holds no rows")
    return ParsedInput(None, parsed, params, n, fmt)
