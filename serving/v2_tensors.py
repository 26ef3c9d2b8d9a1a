"""Open Inference Protocol request tensors, checked one field at a time: names, datatypes, shapes
against data lengths, element types and ranges. Every mistake is a 400 naming the tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np

from serving.errors import InputError
from serving.inputs import max_columns
from serving.schema import InputSpec, jtype

FLOATS = ("FP16", "FP32", "FP64")
INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
DATATYPES = (*FLOATS, *INTS, "BOOL", "BYTES")
NULL = type(None)
#: JSON element types each datatype accepts (null is a missing value, judged by the signature).
ELEMENT_TYPES: dict[str, frozenset] = {
    **{d: frozenset((float, int, NULL)) for d in FLOATS},
    **{d: frozenset((int, NULL)) for d in INTS},
    "BOOL": frozenset((bool, NULL)),
    "BYTES": frozenset((str, NULL)),
}
ELEMENT_NAMES = {**dict.fromkeys(FLOATS, "a number"), **dict.fromkeys(INTS, "an integer"),
                  "BOOL": "a boolean", "BYTES": "a string"}


@dataclass
class Tensor:
    """One checked request input: its elements flattened in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    data: list
    has_null: bool


def bad(message: str, status: int = 400) -> InputError:
    """The V2 client error (rendered as ``{"error": message}``)."""
    return InputError("BAD_REQUEST", message, status)


def check_tensors(raw: Any, spec: InputSpec | None) -> list[Tensor]:
    if not isinstance(raw, list):
        raise bad(f"'inputs' must be a list of tensors, got {a_type(raw)}")
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
                    and name not in seen and "parameters" not in t and datatype in ELEMENT_TYPES):
                types = set(map(type, data))
                if types <= ELEMENT_TYPES[datatype]:
                    check_range(f"input tensor '{short(name)}'", datatype, data, NULL in types)
                    seen.add(name)
                    out.append(Tensor(name, datatype, shape, data, NULL in types))
                    continue
        out.append(_tensor(i, t, seen))
    return out


def _tensor(i: int, t: Any, seen: set[str]) -> Tensor:
    """One tensor, every field checked in turn: 400 naming the tensor at the first mistake."""
    if type(t) is not dict:
        raise bad(f"inputs[{i}] must be a tensor object, got {a_type(t)}")
    name = t.get("name")
    if type(name) is not str:
        raise bad(f"inputs[{i}]: 'name' must be a string, got {a_type(name)}")
    label = f"input tensor '{short(name)}'"
    if name in seen:
        raise bad(f"{label} is given twice")
    datatype = t.get("datatype")
    if type(datatype) is not str:
        raise bad(f"{label}: 'datatype' must be a string, got {a_type(datatype)}")
    if datatype not in ELEMENT_TYPES:
        raise bad(f"{label}: unknown or unsupported datatype '{short(datatype)}' (one of {', '.join(DATATYPES)})")
    shape = t.get("shape")
    if type(shape) is not list or not shape or not all(type(d) is int and d >= 0 for d in shape):
        raise bad(f"{label}: 'shape' must be a non-empty list of non-negative integers, got {short(shape)}")
    params = t.get("parameters")
    if params is not None and type(params) is not dict:
        raise bad(f"{label}: 'parameters' must be an object, got {a_type(params)}")
    if params and "binary_data_size" in params:
        raise bad(f"{label}: binary tensor data is not supported; send the elements in 'data' "
                  "(tritonclient: binary_data=False)")
    if "data" not in t:
        raise bad(f"{label}: 'data' is missing")
    data = t["data"]
    if type(data) is not list:
        raise bad(f"{label}: 'data' must be a list, got {a_type(data)}")
    flat = _flatten(data, len(shape), label)
    count = math.prod(shape)
    if len(flat) != count:
        raise bad(f"{label}: shape {shape} holds {count} element(s) but 'data' has {len(flat)}")
    types = set(map(type, flat))
    if list in types:
        raise bad(f"{label}: 'data' is nested deeper than its shape {shape}")
    allowed = ELEMENT_TYPES[datatype]
    if not types <= allowed:
        k = next(k for k, v in enumerate(flat) if type(v) not in allowed)
        raise bad(f"{label}: datatype {datatype} needs {ELEMENT_NAMES[datatype]} per element; element {k} "
                  f"is {a_type(flat[k])} ({short(flat[k])})")
    check_range(label, datatype, flat, NULL in types)
    seen.add(name)
    return Tensor(name, datatype, shape, flat, NULL in types)


def _flatten(data: list, ndim: int, label: str) -> list:
    """Row-major elements of ``data`` given flat or nested as the shape (``ndim`` dimensions)."""
    for _ in range(ndim - 1):
        if not data or type(data[0]) is not list:
            break
        if not all(type(d) is list for d in data):
            raise bad(f"{label}: nested 'data' must be lists at every level of the shape")
        data = list(chain.from_iterable(data))
    return data


NUMPY = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT8": np.int8, "INT16": np.int16,
          "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
          "UINT64": np.uint64, "BOOL": np.bool_}


#: The values each sized datatype holds (FP64 and BOOL hold every JSON number or boolean).
RANGES: dict[str, tuple[float, float]] = {
    **{dt: (int(np.iinfo(NUMPY[dt]).min), int(np.iinfo(NUMPY[dt]).max)) for dt in INTS},
    "FP16": (-float(np.finfo(np.float16).max), float(np.finfo(np.float16).max)),
    "FP32": (-float(np.finfo(np.float32).max), float(np.finfo(np.float32).max)),
}


def check_range(label: str, datatype: str, data: list, has_null: bool) -> None:
    """400 naming the first element outside what ``datatype`` holds (INT8 300, FP32 1e300)."""
    bounds = RANGES.get(datatype)
    if bounds is None or not data:
        return
    lo, hi = bounds
    values = [v for v in data if v is not None] if has_null else data
    if not values or (lo <= min(values) and max(values) <= hi):
        return
    k, v = next((k, v) for k, v in enumerate(data) if v is not None and not lo <= v <= hi)
    raise bad(f"{label}: element {k} ({short(v)}) does not fit {datatype} ({lo:g} to {hi:g})")


def a_type(value: Any) -> str:
    """The JSON type of ``value`` with its article: "an integer", "a list"."""
    name = jtype(value)
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def short(value: Any) -> str:
    """``value`` as text of at most 80 characters (messages stay short whatever the input)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
