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
import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from serving.errors import InputError
from serving.inputs import max_columns
from serving.schema import ColumnSpec, InputSpec, ParsedInput, jtype, quoted_names
from serving.values import check_values, to_columns

if TYPE_CHECKING:
    from serving.runtime import ModelRuntime, Prediction

#: The name of the single 2-D tensor form (KServe's and MLServer's default input name).
MATRIX_INPUT = "input-0"
PREDICTIONS = "predictions"
PROBABILITIES = "probabilities"
FMT = "v2"

_FLOATS = ("FP16", "FP32", "FP64")
_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
DATATYPES = (*_FLOATS, *_INTS, "BOOL", "BYTES")
_NULL = type(None)
#: JSON element types each datatype accepts (null is a missing value, judged by the signature).
_ELEMENT_TYPES: dict[str, frozenset] = {
    **{d: frozenset((float, int, _NULL)) for d in _FLOATS},
    **{d: frozenset((int, _NULL)) for d in _INTS},
    "BOOL": frozenset((bool, _NULL)),
    "BYTES": frozenset((str, _NULL)),
}
_ELEMENT_NAMES = {**dict.fromkeys(_FLOATS, "a number"), **dict.fromkeys(_INTS, "an integer"),
                  "BOOL": "a boolean", "BYTES": "a string"}
#: Datatypes a column of each signature type takes (integers widen losslessly into doubles).
COLUMN_DATATYPES: dict[str, tuple[str, ...]] = {
    "double": (*_FLOATS, *_INTS), "float": (*_FLOATS, *_INTS), "long": _INTS, "integer": _INTS,
    "boolean": ("BOOL",), "string": ("BYTES",), "binary": ("BYTES",), "datetime": ("BYTES",),
}
#: The datatype model metadata advertises for each signature type.
METADATA_DATATYPE = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                     "boolean": "BOOL", "string": "BYTES", "binary": "BYTES", "datetime": "BYTES"}


@dataclass
class Tensor:
    """One checked request input: its elements flattened in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    data: list
    has_null: bool


@dataclass
class V2Request:
    """A decoded inference request: the model input, the outputs asked for, the request id."""

    parsed: ParsedInput
    outputs: tuple[str, ...]
    request_id: str | None


def bad(message: str, status: int = 400) -> InputError:
    """The V2 client error (rendered as ``{"error": message}``)."""
    return InputError("BAD_REQUEST", message, status)


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
        raise bad(f"expected an inference request object with 'inputs', got {_a(payload)}")
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
        raise bad(f"'id' must be a string, got {_a(request_id)}")
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise bad(f"'parameters' must be an object, got {_a(parameters)}")
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
    tensors = _tensors(payload["inputs"], spec)
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
                or type(shape[0]) is not int or shape[0] != len(data) or t.get("datatype") not in _FLOATS
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
    if narrow and float(np.abs(arr).max()) > _RANGES[narrow][1]:
        return None  # a value FP16/FP32 cannot hold: the checked path names it
    return ParsedInput(arr, None, params, n, FMT)


def _requested_outputs(raw: Any, runtime: ModelRuntime) -> tuple[str, ...]:
    available = output_names(runtime)
    if raw is None or raw == []:
        return available
    if not isinstance(raw, list):
        raise bad(f"'outputs' must be a list of {{\"name\": ...}} objects, got {_a(raw)}")
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


def _tensors(raw: Any, spec: InputSpec | None) -> list[Tensor]:
    if not isinstance(raw, list):
        raise bad(f"'inputs' must be a list of tensors, got {_a(raw)}")
    if not raw:
        raise bad("'inputs' is empty: send one tensor per signature column (or one 2-D tensor)")
    if spec is not None and len(raw) > max_columns(spec):
        raise bad(f"the request has {len(raw)} input tensors; at most {max_columns(spec)} are accepted "
                  f"(MAX_COLUMNS; the model signature has {len(spec.columns)} columns)")
    out: list[Tensor] = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        if type(t) is dict:  # the common case, checked with as little work as possible
            name, datatype, shape, data = t.get("name"), t.get("datatype"), t.get("shape"), t.get("data")
            if (type(name) is str and type(datatype) is str and type(shape) is list and type(data) is list
                    and len(shape) == 1 and type(shape[0]) is int and shape[0] == len(data)
                    and name not in seen and "parameters" not in t and datatype in _ELEMENT_TYPES):
                types = set(map(type, data))
                if types <= _ELEMENT_TYPES[datatype]:
                    _check_range(f"input tensor '{short(name)}'", datatype, data, _NULL in types)
                    seen.add(name)
                    out.append(Tensor(name, datatype, shape, data, _NULL in types))
                    continue
        out.append(_tensor(i, t, seen))
    return out


def _tensor(i: int, t: Any, seen: set[str]) -> Tensor:
    """One tensor, every field checked in turn: 400 naming the tensor at the first mistake."""
    if type(t) is not dict:
        raise bad(f"inputs[{i}] must be a tensor object, got {_a(t)}")
    name = t.get("name")
    if type(name) is not str:
        raise bad(f"inputs[{i}]: 'name' must be a string, got {_a(name)}")
    label = f"input tensor '{short(name)}'"
    if name in seen:
        raise bad(f"{label} is given twice")
    datatype = t.get("datatype")
    if type(datatype) is not str:
        raise bad(f"{label}: 'datatype' must be a string, got {_a(datatype)}")
    if datatype not in _ELEMENT_TYPES:
        raise bad(f"{label}: unknown or unsupported datatype '{short(datatype)}' (one of {', '.join(DATATYPES)})")
    shape = t.get("shape")
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"{label}: 'shape' must be a non-empty list of non-negative integers, got {short(shape)}")
    params = t.get("parameters")
    if params is not None and type(params) is not dict:
        raise bad(f"{label}: 'parameters' must be an object, got {_a(params)}")
    if params and "binary_data_size" in params:
        raise bad(f"{label}: binary tensor data is not supported; send the elements in 'data' "
                  "(tritonclient: binary_data=False)")
    if "data" not in t:
        raise bad(f"{label}: 'data' is missing")
    data = t["data"]
    if type(data) is not list:
        raise bad(f"{label}: 'data' must be a list, got {_a(data)}")
    flat = _flatten(data, len(shape), label)
    count = math.prod(shape)
    if len(flat) != count:
        raise bad(f"{label}: shape {shape} holds {count} element(s) but 'data' has {len(flat)}")
    types = set(map(type, flat))
    if list in types:
        raise bad(f"{label}: 'data' is nested deeper than its shape {shape}")
    allowed = _ELEMENT_TYPES[datatype]
    if not types <= allowed:
        k = next(k for k, v in enumerate(flat) if type(v) not in allowed)
        raise bad(f"{label}: datatype {datatype} needs {_ELEMENT_NAMES[datatype]} per element; element {k} "
                  f"is {_a(flat[k])} ({short(flat[k])})")
    _check_range(label, datatype, flat, _NULL in types)
    seen.add(name)
    return Tensor(name, datatype, shape, flat, _NULL in types)


def _flatten(data: list, ndim: int, label: str) -> list:
    """Row-major elements of ``data`` given flat or nested as the shape (``ndim`` dimensions)."""
    for _ in range(ndim - 1):
        if not data or type(data[0]) is not list:
            break
        if not all(type(d) is list for d in data):
            raise bad(f"{label}: nested 'data' must be lists at every level of the shape")
        data = list(chain.from_iterable(data))
    return data


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
            hint = f" (or one 2-D tensor '{MATRIX_INPUT}')" if _one_type(spec) else ""
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
    if not _one_type(spec):
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
        dtype = object if t.datatype == "BYTES" or t.has_null else _NUMPY.get(t.datatype)
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


_NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
          "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "BOOL": np.bool_}


#: The values each sized datatype holds (FP64 and BOOL hold every JSON number or boolean).
_RANGES: dict[str, tuple[float, float]] = {
    **{dt: (int(np.iinfo(_NUMPY[dt]).min), int(np.iinfo(_NUMPY[dt]).max)) for dt in _INTS},
    "FP16": (-float(np.finfo(np.float16).max), float(np.finfo(np.float16).max)),
    "FP32": (-float(np.finfo(np.float32).max), float(np.finfo(np.float32).max)),
}


def _check_range(label: str, datatype: str, data: list, has_null: bool) -> None:
    """400 naming the first element outside what ``datatype`` holds (INT8 300, FP32 1e300)."""
    bounds = _RANGES.get(datatype)
    if bounds is None or not data:
        return
    lo, hi = bounds
    values = [v for v in data if v is not None] if has_null else data
    if not values or (lo <= min(values) and max(values) <= hi):
        return
    k, v = next((k, v) for k, v in enumerate(data) if v is not None and not lo <= v <= hi)
    raise bad(f"{label}: element {k} ({short(v)}) does not fit {datatype} ({lo:g} to {hi:g})")


def _one_type(spec: InputSpec) -> bool:
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

def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype (strings and objects are BYTES)."""
    kind = dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu" and dtype.itemsize in (1, 2, 4, 8):
        return f"{'U' if kind == 'u' else ''}INT{dtype.itemsize * 8}"
    if kind == "f" and dtype.itemsize in (2, 4, 8):
        return f"FP{dtype.itemsize * 8}"
    return "BYTES"


def output_tensor(name: str, values: Any) -> dict:
    """A response output: shape, datatype and row-major data of ``values``."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values)
    datatype = datatype_of(arr.dtype)
    if datatype == "BYTES":
        data: Any = [v if v is None or isinstance(v, str) else str(v) for v in arr.ravel().tolist()]
    else:
        data = np.ascontiguousarray(arr).ravel()
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def response(runtime: ModelRuntime, req: V2Request, result: Prediction) -> dict:
    """The inference response for ``result`` (outputs in the order the model produces them)."""
    outputs = []
    if PREDICTIONS in req.outputs:
        outputs.append(output_tensor(PREDICTIONS, result.labels))
    if PROBABILITIES in req.outputs:
        if result.proba is None:
            raise bad(f"output '{PROBABILITIES}' is not available for this input")
        out = output_tensor(PROBABILITIES, np.asarray(result.proba, dtype=np.float64))
        out["parameters"] = {"classes": orjson.dumps(result.classes).decode()}
        outputs.append(out)
    payload: dict[str, Any] = {"model_name": runtime.name, "model_version": runtime.version}
    if req.request_id is not None:
        payload["id"] = req.request_id
    payload["outputs"] = outputs
    return payload


def metadata(runtime: ModelRuntime) -> dict:
    """Model metadata: one input tensor per signature column, the outputs with their datatypes."""
    spec = runtime.spec
    if spec is not None:
        inputs = [{"name": s.name, "datatype": METADATA_DATATYPE.get(s.type, "BYTES"), "shape": [-1]} for s in spec.specs]
    else:
        inputs = _tensor_inputs(runtime.loaded.signature)
    outputs = [{"name": PREDICTIONS, "datatype": _label_datatype(runtime), "shape": [-1]}]
    if has_proba(runtime):
        outputs.append({"name": PROBABILITIES, "datatype": "FP64", "shape": [-1, len(runtime.classes)],
                        "parameters": {"classes": orjson.dumps(runtime.classes).decode()}})
    flavor = "sklearn" if runtime.loaded.sklearn_model is not None else "pyfunc"
    doc: dict[str, Any] = {"name": runtime.name, "versions": [runtime.version], "platform": f"mlflow_{flavor}",
                           "inputs": inputs, "outputs": outputs}
    if spec is not None and _one_type(spec):
        doc["parameters"] = {"matrix_input": orjson.dumps({
            "name": MATRIX_INPUT, "datatype": METADATA_DATATYPE.get(spec.specs[0].type, "BYTES"),
            "shape": [-1, len(spec.columns)]}).decode()}
    return doc


def _tensor_inputs(signature: Any) -> list[dict]:
    schema = getattr(signature, "inputs", None)
    if schema is None:
        return []
    out = []
    for i, s in enumerate(schema.inputs):
        name = getattr(s, "name", None) or (MATRIX_INPUT if i == 0 else f"input-{i}")
        if hasattr(s, "shape"):  # a TensorSpec
            out.append({"name": name, "datatype": datatype_of(np.dtype(s.type)), "shape": list(s.shape)})
        else:
            out.append({"name": name, "datatype": METADATA_DATATYPE.get(getattr(s.type, "name", ""), "BYTES"),
                        "shape": [-1]})
    return out


def _label_datatype(runtime: ModelRuntime) -> str:
    """The datatype of the predictions, from the signature's outputs (else the classes)."""
    outputs = getattr(runtime.loaded.signature, "outputs", None)
    if outputs is not None and outputs.inputs:
        first = outputs.inputs[0]
        if hasattr(first, "shape"):
            try:
                return datatype_of(np.dtype(first.type))
            except TypeError:
                return "BYTES"
        return METADATA_DATATYPE.get(getattr(first.type, "name", ""), "BYTES")
    if runtime.classes:
        return datatype_of(np.asarray(runtime.classes).dtype)
    return "FP64"


def _a(value: Any) -> str:
    """The JSON type of ``value`` with its article: "an integer", "a list"."""
    name = jtype(value)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def short(value: Any) -> str:
    """``value`` as text of at most 80 characters (messages stay short whatever the input)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
