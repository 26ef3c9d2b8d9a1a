"""Open Inference Protocol (KServe V2) tensors ⇄ the service's validated input and its answers.

A V2 request carries either one tensor per signature column (shape ``[n]`` or ``[n, 1]``, named
after the column) or, when every column has the same type, one 2-D tensor named ``input-0`` of
shape ``[n, columns]`` in signature column order. :func:`to_parsed` checks the tensors (names,
datatypes, shapes against data lengths, element types) and builds the same
:class:`~serving.inputs.ParsedInput` that ``/invocations`` builds for the same rows: a column-major
numpy array for the native path, a DataFrame with the signature's column types for the frame and
pyfunc paths. Every mistake is an :class:`~serving.errors.InputError` (400) naming the tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from serving.errors import InputError  # noqa: F401 - re-exported: what every V2 mistake raises
from serving.schema import ColumnSpec, InputSpec, ParsedInput, quoted_names
from serving.v2_tensors import (
    FLOATS,
    INTS,
    NUMPY,
    RANGES,
    Tensor,
    a_type,
    bad,
    check_tensors,
    short,
)
from serving.values import check_values, to_columns

if TYPE_CHECKING:
    from serving.runtime import ModelRuntime

#: The name of the single 2-D tensor form (KServe's and MLServer's default input name).
MATRIX_INPUT = "input-0"
PREDICTIONS = "predictions"
PROBABILITIES = "probabilities"
FMT = "v2"

#: Datatypes a column of each signature type takes (integers widen losslessly into doubles).
COLUMN_DATATYPES: dict[str, tuple[str, ...]] = {
    "double": (*FLOATS, *INTS), "float": (*FLOATS, *INTS), "long": INTS, "integer": INTS,
    "boolean": ("BOOL",), "string": ("BYTES",), "binary": ("BYTES",), "datetime": ("BYTES",),
}
#: The datatype model metadata advertises for each signature type.
METADATA_DATATYPE = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                     "boolean": "BOOL", "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}


@dataclass
class V2Request:
    """A decoded inference request: the model input, the outputs asked for, the request id."""

    parsed: ParsedInput
    outputs: tuple[str, ...]
    request_id: str | None


def decode(body: bytes) -> dict:
    """The request object; 400 for an empty body, malformed JSON or a non-object."""
    if not body:
        raise bad("request body is empty: send an inference request object with 'inputs'")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # NaN/Infinity literals (Python's json.dumps writes them): missing or non-finite values
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise bad(f"expected an inference request object with 'inputs', got {a_type(payload)}")
    return payload


def has_proba(runtime: ModelRuntime) -> bool:
    """True when the served model answers class probabilities."""
    sk = runtime.loaded.sklearn_model
    return runtime.classes is not None and sk is not None and hasattr(sk, "predict_proba")


def output_names(runtime: ModelRuntime) -> tuple[str, ...]:
    """The outputs this model produces."""
    return (PREDICTIONS, PROBABILITIES) if has_proba(runtime) else (PREDICTIONS,)


def to_request(payload: dict, runtime: ModelRuntime, body: bytes | None = None) -> V2Request:
    """Check a decoded inference request against the served model; 400 naming the tensor.

    ``body`` (the raw request) lets the common numeric request skip the per-tensor checks: without
    a JSON ``true``/``false`` in it, numpy's own type inference is an exact type check.
    """
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad(f"'id' must be a string, got {a_type(request_id)}")
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise bad(f"'parameters' must be an object, got {a_type(parameters)}")
    outputs = _requested_outputs(payload.get("outputs"), runtime)
    if "inputs" not in payload:
        raise bad("the inference request has no 'inputs' (a list of tensors)")
    params = _params(parameters, runtime)
    spec = runtime.spec
    if (body is not None and spec is not None and spec.uniform and spec.all_required and spec.dtype.kind == "f"
            and runtime.native is not None and b"true" not in body and b"false" not in body):
        parsed = _fast_columns(payload["inputs"], spec, params)
        if parsed is not None:
            return V2Request(parsed, outputs, request_id)
    tensors = check_tensors(payload["inputs"], spec)
    if spec is None:
        parsed = _unsigned(tensors, params)
    elif len(tensors) == 1 and tensors[0].name == MATRIX_INPUT and MATRIX_INPUT not in spec.columns:
        parsed = _from_matrix(tensors[0], spec, params, runtime.native is not None)
    else:
        parsed = _from_columns(tensors, spec, params, runtime.native is not None)
    return V2Request(parsed, outputs, request_id)


def _fast_columns(raw: Any, spec: InputSpec, params: dict | None) -> ParsedInput | None:
    """The common numeric request in one pass: every column once as a 1-D tensor of a float
    datatype holding finite numbers. None for anything else (the checked path then explains it)."""
    if type(raw) is not list:
        return None
    width = len(spec.columns)
    index = dict(zip(spec.columns, range(width), strict=True))
    cols: list = [None] * width
    n = -1
    narrow: str | None = None  # the narrowest float datatype given, unless all are FP64
    for t in raw:
        if type(t) is not dict:
            return None
        name, shape, data = t.get("name"), t.get("shape"), t.get("data")
        if (type(name) is not str or type(data) is not list or type(shape) is not list or len(shape) != 1
                or type(shape[0]) is not int or shape[0] != len(data) or t.get("datatype") not in FLOATS
                or "parameters" in t):
            return None
        j = index.get(name)
        if j is None or cols[j] is not None or (n >= 0 and len(data) != n):
            return None
        n = len(data)
        cols[j] = data
        if t["datatype"] != "FP64":
            narrow = "FP16" if t["datatype"] == "FP16" or narrow == "FP16" else "FP32"
    if n <= 0 or any(c is None for c in cols):
        return None
    try:
        arr = np.array(cols)
    except (ValueError, TypeError, OverflowError):
        return None
    if arr.dtype.kind not in "fi" or arr.shape != (width, n):
        return None  # strings, nulls, nesting: the checked path names the tensor
    arr = arr.T  # (columns, n) → its transpose is the column-major (n, columns) array /invocations builds
    if arr.dtype != spec.dtype:
        arr = arr.astype(np.float64).astype(spec.dtype, copy=False)
    if not np.isfinite(arr).all():
        return None
    if narrow and float(np.abs(arr).max()) > RANGES[narrow][1]:
        return None  # a value FP16/FP32 cannot hold: the checked path names it
    return ParsedInput(arr, None, params, n, FMT)


def _requested_outputs(raw: Any, runtime: ModelRuntime) -> tuple[str, ...]:
    available = output_names(runtime)
    if raw is None or raw == []:
        return available
    if not isinstance(raw, list):
        raise bad(f"'outputs' must be a list of {{\"name\": ...}} objects, got {a_type(raw)}")
    wanted: list[str] = []
    for i, out in enumerate(raw):
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise bad(f"outputs[{i}] must be an object with a string 'name'")
        if out.get("parameters") is not None and not isinstance(out["parameters"], dict):
            raise bad(f"output '{short(out['name'])}': 'parameters' must be an object")
        if out["name"] not in available:
            raise bad(f"unknown output '{short(out['name'])}': this model produces {quoted_names(available)}")
        if out["name"] not in wanted:
            wanted.append(out["name"])
    return tuple(n for n in available if n in wanted)


def _params(parameters: dict | None, runtime: ModelRuntime) -> dict | None:
    """The request parameters the model's signature declares (MLflow params); others are ignored."""
    if not parameters:
        return None
    sig = runtime.loaded.signature
    declared = getattr(getattr(sig, "params", None), "params", None) or []
    names = {p.name for p in declared}
    chosen = {k: v for k, v in parameters.items() if k in names}
    return chosen or None


def _check_datatype(t: Tensor, column: str, ctype: str) -> None:
    if t.datatype not in COLUMN_DATATYPES.get(ctype, ()):
        ok = COLUMN_DATATYPES.get(ctype, ())
        send = f"send {METADATA_DATATYPE[ctype]}" if ok else "this column type is not supported"
        if ok and ctype in ("double", "float"):
            send += " (or another FP or an integer datatype)"
        elif ok and ctype in ("long", "integer"):
            send += " (or another integer datatype)"
        raise bad(f"input tensor '{short(t.name)}': datatype {t.datatype} does not fit column '{short(column)}' "
                  f"({ctype} in the model signature); {send}")


def _from_columns(tensors: list[Tensor], spec: InputSpec, params: dict | None, native: bool) -> ParsedInput:
    index = {c: j for j, c in enumerate(spec.columns)}
    cols: list[list | None] = [None] * len(spec.columns)
    n: int | None = None
    first = ""
    for t in tensors:
        j = index.get(t.name)
        if j is None:
            hint = f" (or one 2-D tensor '{MATRIX_INPUT}')" if one_type(spec) else ""
            raise bad(f"unknown input tensor '{short(t.name)}': the model takes one tensor per signature column, "
                      f"named {quoted_names(spec.columns)}{hint}")
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise bad(f"input tensor '{short(t.name)}': shape {t.shape}; a column tensor has shape [n] or [n, 1]")
        if n is None:
            n, first = t.shape[0], t.name
        elif t.shape[0] != n:
            raise bad(f"input tensor '{short(t.name)}' has {t.shape[0]} row(s) but tensor '{short(first)}' has {n}")
        s = spec.specs[j]
        _check_datatype(t, s.name, s.type)
        if t.has_null and s.required:
            _missing(t, t.data.index(None), s)
        cols[j] = t.data
    missing = [s.name for s, c in zip(spec.specs, cols, strict=True) if c is None and s.required]
    if missing:
        raise bad(f"missing input tensor(s) required by the model signature: {quoted_names(missing)}")
    assert n is not None
    if n == 0:
        raise bad(f"input tensor '{short(first)}' holds no rows")
    filled = [c if c is not None else [None] * n for c in cols]
    if spec.uniform and native:
        try:
            # (columns, n) → its transpose is the column-major (n, columns) array /invocations builds
            arr = np.array(filled, dtype=np.float64 if spec.dtype.kind == "f" else spec.dtype).T
        except (OverflowError, ValueError, TypeError) as exc:
            raise bad(f"input values do not fit the signature type {spec.specs[0].type}: {exc}") from None
        if spec.dtype.kind == "f":
            if spec.dtype != np.float64:
                arr = arr.astype(spec.dtype)
            _check_finite(arr, spec, lambda row, col: f"input tensor '{short(spec.columns[col])}', element {row}")
        return ParsedInput(arr, None, params, n, FMT)
    return _frame(list(zip(*filled, strict=True)), spec, params, n)


def _from_matrix(t: Tensor, spec: InputSpec, params: dict | None, native: bool) -> ParsedInput:
    width = len(spec.columns)
    label = f"input tensor '{MATRIX_INPUT}'"
    if not one_type(spec):
        raise bad(f"{label}: one 2-D tensor needs every column to have the same type, but the model signature mixes "
                  f"{', '.join(sorted({s.type for s in spec.specs}))}; send one tensor per column")
    if len(t.shape) != 2 or t.shape[1] != width:
        raise bad(f"{label}: shape {t.shape}; the 2-D form has shape [n, {width}] (the signature's {width} columns in order)")
    n = t.shape[0]
    if n == 0:
        raise bad(f"{label} holds no rows")
    s0 = spec.specs[0]
    _check_datatype(t, s0.name, s0.type)
    if t.has_null:
        for k, v in enumerate(t.data):
            if v is None and spec.specs[k % width].required:
                _missing(t, k, spec.specs[k % width], f" (row {k // width}, column '{short(spec.columns[k % width])}')")
    if spec.uniform and native:
        try:
            arr = np.array(t.data, dtype=np.float64 if spec.dtype.kind == "f" else spec.dtype).reshape(n, width)
        except (OverflowError, ValueError, TypeError) as exc:
            raise bad(f"{label}: values do not fit the signature type {s0.type}: {exc}") from None
        if spec.dtype.kind == "f":
            if spec.dtype != np.float64:
                arr = arr.astype(spec.dtype)
            _check_finite(arr, spec, lambda row, col: f"{label}, element {row * width + col} (row {row}, column "
                                                      f"'{short(spec.columns[col])}')")
        return ParsedInput(np.asfortranarray(arr), None, params, n, FMT)
    rows = [t.data[i * width:(i + 1) * width] for i in range(n)]
    return _frame(rows, spec, params, n)


def _frame(rows: list, spec: InputSpec, params: dict | None, n: int) -> ParsedInput:
    """Rows in signature order → the typed DataFrame /invocations builds (same checks)."""
    check_values(rows, spec)
    return ParsedInput(None, None, params, n, FMT, columns=to_columns(rows, spec))


def _unsigned(tensors: list[Tensor], params: dict | None) -> ParsedInput:
    """No column signature: one tensor as an array, several as the columns of a DataFrame (pyfunc)."""
    import pandas as pd

    def array(t: Tensor) -> np.ndarray:
        dtype = object if t.datatype == "BYTES" or t.has_null else NUMPY.get(t.datatype)
        try:
            return np.array(t.data, dtype=dtype).reshape(t.shape)
        except (OverflowError, ValueError, TypeError) as exc:
            raise bad(f"input tensor '{short(t.name)}': values do not fit {t.datatype}: {exc}") from None

    if len(tensors) == 1 and len(tensors[0].shape) > 1 and tensors[0].shape[-1] != 1:
        arr = array(tensors[0])
        if arr.shape[0] == 0:
            raise bad(f"input tensor '{short(tensors[0].name)}' holds no rows")
        return ParsedInput(None, arr, params, arr.shape[0], FMT)
    columns = {}
    n = None
    for t in tensors:
        if len(t.shape) > 2 or (len(t.shape) == 2 and t.shape[1] != 1):
            raise bad(f"input tensor '{short(t.name)}': shape {t.shape}; a column tensor has shape [n] or [n, 1]")
        if n is not None and t.shape[0] != n:
            raise bad(f"input tensor '{short(t.name)}' has {t.shape[0]} row(s); the first tensor has {n}")
        n = t.shape[0]
        columns[t.name] = array(t).reshape(-1)
    if not n:
        raise bad("the input tensors hold no rows")
    return ParsedInput(None, pd.DataFrame(columns), params, n, FMT)


def one_type(spec: InputSpec) -> bool:
    return len({s.type for s in spec.specs}) == 1


def _missing(t: Tensor, k: int, s: ColumnSpec, where: str = "") -> None:
    raise bad(f"input tensor '{short(t.name)}': element {k}{where} is a missing value (null); the model signature "
              f"requires a {s.type} in column '{short(s.name)}'")


def _check_finite(arr: np.ndarray, spec: InputSpec, where: Callable[[int, int], str]) -> None:
    """400 at the first NaN/infinity in a required column (``where(row, col)`` names it)."""
    if spec.all_required:
        if np.isfinite(arr).all():
            return
        row, col = (int(x) for x in np.argwhere(~np.isfinite(arr))[0])
    else:
        idx = [i for i, s in enumerate(spec.specs) if s.required]
        sub = arr[:, idx]
        if np.isfinite(sub).all():
            return
        r, c = np.argwhere(~np.isfinite(sub))[0]
        row, col = int(r), idx[int(c)]
    value = arr[row, col]
    what = "a missing value (NaN)" if np.isnan(value) else f"a non-finite value ({value})"
    raise bad(f"{where(row, col)} is {what}; the model signature requires a finite {spec.specs[col].type}")


# ------------------------------------------------------------------------------------------------
# Answers
# ------------------------------------------------------------------------------------------------
