"""Request parsing and validation against a model signature (MLflow's scoring formats).

The fast path turns a request into one numpy array in signature column order without building a
pandas DataFrame. It lays the array out column-major, as pandas hands it to scikit-learn on the
pyfunc path, so both paths feed scikit-learn the same bytes and give bit-identical results.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from mlops.util import first_line
from serving.errors import InputError
from serving.schema import (  # noqa: F401 - ColumnSpec and TypedColumns re-exported for callers
    ColumnSpec,
    InputSpec,
    ParsedInput,
    TypedColumns,
    jtype,
    quoted_names,
    short_value,
)
from serving.settings import DEFAULT_MAX_COLUMNS
from serving.values import check_values, to_array, to_columns

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS_KEY = "params"
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)
PARQUET_TYPES = ("application/vnd.apache.parquet",)


#: The cap on the columns a request may name (CSV header, dataframe_split columns, record keys).
_limits = {"max_columns": DEFAULT_MAX_COLUMNS}
#: False (STRICT_INPUT off, the default): shapes that MLflow's scoring server reads differently from
#: this validation (positional rows, one row given as scalars) are refused here, so that the caller
#: answers them with MLflow's own parser.
_mode = {"strict": False}


def set_strict(strict: bool) -> None:
    """Set the process-wide input mode (the service's ``STRICT_INPUT`` setting)."""
    _mode["strict"] = bool(strict)


def _mlflow_reads_it_differently(what: str) -> None:
    """InputError for a shape only this validation reads (nothing in strict mode)."""
    if not _mode["strict"]:
        raise InputError("INVALID_INPUT_FORMAT", what)


def set_max_columns(limit: int) -> None:
    """Set the process-wide column cap (the service's ``MAX_COLUMNS`` setting)."""
    if limit < 1:
        raise ValueError(f"max_columns must be >= 1, got {limit}")
    _limits["max_columns"] = limit


def max_columns(spec: InputSpec) -> int:
    """The cap for ``spec``: ``MAX_COLUMNS``, never below the signature's own width."""
    return max(_limits["max_columns"], len(spec.columns))


def _check_width(count: int, spec: InputSpec, what: str) -> None:
    """InputError TOO_MANY_COLUMNS when a request names more columns than the cap."""
    limit = max_columns(spec)
    if count > limit:
        raise InputError(
            "TOO_MANY_COLUMNS",
            f"{what} has {count} columns; at most {limit} are accepted (MAX_COLUMNS; the model signature has "
            f"{len(spec.columns)})",
        )


# ------------------------------------------------------------------------------------------------
# Content type and body
# ------------------------------------------------------------------------------------------------

def media_type(content_type: str | None) -> str:
    """``json``, ``csv`` or ``parquet``; InputError 415 for anything else (or a charset other than UTF-8)."""
    if not content_type:
        raise InputError(
            "UNSUPPORTED_MEDIA_TYPE",
            "missing Content-Type: send application/json or text/csv",
            415,
        )
    parts = [p.strip() for p in content_type.split(";")]
    mime = parts[0].lower()
    for extra in parts[1:]:
        key, _, value = extra.partition("=")
        if key.strip().lower() == "charset":
            if value.strip().strip('"').lower() not in ("utf-8", "utf8"):
                raise InputError("UNSUPPORTED_MEDIA_TYPE", f"only UTF-8 is supported, got charset {value}", 415)
        elif key.strip():
            raise InputError("UNSUPPORTED_MEDIA_TYPE", f"unsupported Content-Type parameter '{key.strip()}'", 415)
    if mime in JSON_TYPES:
        return "json"
    if mime in CSV_TYPES:
        return "csv"
    if mime in PARQUET_TYPES:
        return "parquet"
    raise InputError(
        "UNSUPPORTED_MEDIA_TYPE",
        f"unsupported Content-Type '{parts[0]}': send application/json, text/csv or application/vnd.apache.parquet",
        415,
    )


def decode_json(body: bytes) -> dict:
    """The request object; InputError for malformed JSON or a non-object."""
    if not body:
        raise InputError("EMPTY_INPUT", "request body is empty")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # MLflow's parser also accepts NaN/Infinity literals; reject them later, by column
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InputError("MALFORMED_JSON", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InputError(
            "INVALID_INPUT_FORMAT",
            f"expected a JSON object with exactly one of {', '.join(FORMATS)}; got a {jtype(payload)}",
        )
    return payload


def split_payload(payload: dict) -> tuple[str, Any, dict | None]:
    """(format, data, params) from a scoring-protocol object."""
    found = [k for k in FORMATS if k in payload]
    if len(found) != 1:
        got = quoted_names(sorted(map(str, payload))) or "none"
        raise InputError(
            "INVALID_INPUT_FORMAT",
            f"the JSON object must have exactly one of {', '.join(FORMATS)} (plus optional params); got keys: {got}",
        )
    unknown = [k for k in payload if k not in FORMATS and k != PARAMS_KEY]
    if unknown:
        raise InputError("INVALID_INPUT_FORMAT", f"unknown top-level key(s): {quoted_names(map(str, unknown))}")
    params = payload.get(PARAMS_KEY)
    if params is not None and not isinstance(params, dict):
        raise InputError("INVALID_PARAMS", f"params must be a JSON object, got a {jtype(params)}")
    return found[0], payload[found[0]], params


# ------------------------------------------------------------------------------------------------
# Validation against the signature
# ------------------------------------------------------------------------------------------------

def parse(body: bytes, kind: str, spec: InputSpec, build_frame: bool = False) -> ParsedInput:
    """Validate a JSON or CSV body against ``spec``; raise InputError naming the problem."""
    if kind == "csv":
        return parse_csv(body, spec, build_frame)
    fmt, data, params = split_payload(decode_json(body))
    if fmt == "dataframe_split":
        rows = _split_rows(data, spec)
    elif fmt == "dataframe_records":
        if not isinstance(data, list):
            raise InputError("INVALID_INPUT_FORMAT", f"dataframe_records must be a list of objects, got a {jtype(data)}")
        rows = _records_rows(data, spec, fmt)
    else:
        rows = _tf_rows(data, spec, fmt)
    n = len(rows)
    if n == 0:
        raise InputError("EMPTY_INPUT", f"{fmt} holds no rows")
    if spec.uniform and not build_frame:
        # JSON booleans are the only values numpy would silently take for numbers: without the
        # tokens in the body, numpy's own type inference is an exact type check.
        maybe_bool = b"true" in body or b"false" in body
        return ParsedInput(to_array(rows, spec, maybe_bool), None, params, n, fmt)
    check_values(rows, spec)
    return ParsedInput(None, None, params, n, fmt, columns=to_columns(rows, spec))


def _split_rows(data: Any, spec: InputSpec) -> list:
    if not isinstance(data, dict):
        raise InputError("INVALID_INPUT_FORMAT", f"dataframe_split must be an object with columns and data, got a {jtype(data)}")
    extra = set(data) - {"columns", "data", "index"}
    if extra:
        raise InputError("INVALID_INPUT_FORMAT", f"dataframe_split has unknown key(s): {quoted_names(sorted(map(str, extra)))}")
    if "columns" not in data:
        raise InputError("MISSING_COLUMNS", "dataframe_split needs 'columns' (the signature's column names)")
    if "data" not in data:
        raise InputError("INVALID_INPUT_FORMAT", "dataframe_split needs 'data' (a list of rows)")
    columns, rows = data["columns"], data["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InputError("INVALID_INPUT_FORMAT", "dataframe_split columns must be a list of strings")
    _check_width(len(columns), spec, "dataframe_split columns")
    if not isinstance(rows, list):
        raise InputError("INVALID_INPUT_FORMAT", f"dataframe_split data must be a list of rows, got a {jtype(rows)}")
    index = data.get("index")
    if "index" in data and (not isinstance(index, list) or len(index) != len(rows)):
        got = f"{len(index)} entries" if isinstance(index, list) else f"a {jtype(index)}"
        raise InputError("INVALID_INPUT_FORMAT",
                         f"dataframe_split index has {got} but data has {len(rows)} rows")
    _check_rows_shape(rows, len(columns), "dataframe_split")
    if tuple(columns) == spec.columns:
        return rows
    perm = _permutation(columns, spec)
    if None in perm:  # an optional column left out: a missing value in every row
        return [[r[i] if i is not None else None for i in perm] for r in rows]
    getter = itemgetter(*perm)
    return [getter(r) for r in rows] if len(perm) > 1 else [[r[perm[0]]] for r in rows]


def _permutation(columns: list[str], spec: InputSpec) -> list[int | None]:
    """Positions of the signature's columns in ``columns`` (None: an absent optional column);
    InputError for missing required, extra or duplicate columns."""
    seen: dict[str, int] = {}
    dupes: dict[str, None] = {}  # each duplicated name once, in order
    for i, c in enumerate(columns):
        if c in seen:
            dupes[c] = None
        seen[c] = i
    if dupes:
        raise InputError("DUPLICATE_COLUMNS", f"duplicate column(s): {quoted_names(dupes)}")
    _check_column_names(set(columns), spec)
    return [seen.get(c) for c in spec.columns]


def _check_column_names(given: set, spec: InputSpec) -> None:
    required = {s.name for s in spec.specs if s.required}
    missing = [c for c in spec.columns if c in required and c not in given]
    extra = sorted(str(c) for c in given - set(spec.columns))
    if missing:
        raise InputError("MISSING_COLUMNS", f"missing column(s) required by the model signature: {quoted_names(missing)}")
    if extra:
        raise InputError("UNKNOWN_COLUMNS", f"column(s) not in the model signature: {quoted_names(extra)}")


def _check_rows_shape(rows: list, width: int, fmt: str) -> None:
    if not rows:
        return
    if not set(map(type, rows)) <= {list}:
        bad = next(i for i, r in enumerate(rows) if type(r) is not list)
        raise InputError("INVALID_INPUT_FORMAT", f"{fmt}: row {bad} must be a list of values, got a {jtype(rows[bad])}")
    if set(map(len, rows)) != {width}:
        bad = next(i for i, r in enumerate(rows) if len(r) != width)
        raise InputError("INVALID_INPUT_FORMAT", f"{fmt}: row {bad} has {len(rows[bad])} values, expected {width}")


def _records_rows(records: list, spec: InputSpec, fmt: str) -> list:
    if not records:
        return records
    if not set(map(type, records)) <= {dict}:
        bad = next(i for i, r in enumerate(records) if type(r) is not dict)
        raise InputError("INVALID_INPUT_FORMAT", f"{fmt}: record {bad} must be an object, got a {jtype(records[bad])}")
    width = len(spec.columns)
    if set(map(len, records)) == {width}:
        getter = itemgetter(*spec.columns)
        try:
            rows = list(map(getter, records))
            return rows if width > 1 else [[v] for v in rows]
        except KeyError:
            pass  # fall through to the per-record diagnosis
    for i, rec in enumerate(records):
        try:
            _check_width(len(rec), spec, "the record")
            _check_column_names(set(rec), spec)
        except InputError as exc:
            raise InputError(exc.code, f"{fmt} record {i}: {exc.message}") from None
    # Every record has the required columns; absent optional ones become None (a missing value).
    return [[rec.get(c) for c in spec.columns] for rec in records]


def _tf_rows(data: Any, spec: InputSpec, fmt: str) -> list:
    if isinstance(data, dict):
        return _columnar_rows(data, spec, fmt)
    if not isinstance(data, list):
        raise InputError("INVALID_INPUT_FORMAT", f"{fmt} must be a list of rows/records or an object of columns, got a {jtype(data)}")
    if data and isinstance(data[0], dict):
        return _records_rows(data, spec, fmt)
    _mlflow_reads_it_differently(f"{fmt}: rows without column names; send records or an object of columns "
                                 f"({', '.join(spec.columns[:3])}{', ...' if len(spec.columns) > 3 else ''})")
    _check_rows_shape(data, len(spec.columns), fmt)
    return data


def _columnar_rows(data: dict, spec: InputSpec, fmt: str) -> list:
    _check_width(len(data), spec, f"the {fmt} object")
    _check_column_names(set(data), spec)
    values = [data.get(c) for c in spec.columns]
    if all(not isinstance(v, list) for v in values):
        _mlflow_reads_it_differently(f"{fmt}: one row given as scalars; give each column a list of values")
        return [values]  # a single row given as {column: value}
    lengths = {len(v) for v in values if isinstance(v, list)}
    if len(lengths) != 1 or not all(isinstance(v, list) or v is None for v in values):
        raise InputError("INVALID_INPUT_FORMAT", f"{fmt}: every column must be a list of the same length")
    n = lengths.pop()
    cols = [v if isinstance(v, list) else [None] * n for v in values]
    return list(zip(*cols, strict=True))


def parse_csv(body: bytes, spec: InputSpec, build_frame: bool) -> ParsedInput:
    """CSV parsed exactly as MLflow's scoring server does (pandas with the signature dtypes)."""
    import pandas as pd

    if not body.strip():
        raise InputError("EMPTY_INPUT", "request body is empty")
    try:
        text = body.decode("utf-8-sig")  # a UTF-8 byte order mark is not part of the first name
    except UnicodeDecodeError as exc:
        raise InputError("MALFORMED_CSV", f"CSV body is not UTF-8: {exc}") from None
    try:
        cols = next(csv.reader(io.StringIO(text)))
    except (csv.Error, StopIteration) as exc:
        raise InputError("MALFORMED_CSV", f"cannot parse the CSV header: {first_line(exc)}") from None
    _check_width(len(cols), spec, "the CSV header")
    counts = Counter(cols)  # linear: a header of many (empty) names must not cost n^2
    dupes = sorted(c for c, n in counts.items() if n > 1)
    if dupes:
        raise InputError("DUPLICATE_COLUMNS", f"duplicate column(s): {quoted_names(dupes)}")
    _check_column_names(set(counts), spec)
    dtypes = {s.name: s.dtype for s in spec.specs if s.dtype is not None and s.name in counts}
    if not spec.all_required:
        dtypes = {k: v for k, v in dtypes.items() if v.kind == "f"}
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=dtypes)
    except (ValueError, TypeError) as exc:
        raise InputError("INVALID_VALUE_TYPE", f"CSV values do not match the signature types: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise InputError("MALFORMED_CSV", f"cannot parse CSV: {first_line(exc)}") from None
    if len(frame) == 0:
        raise InputError("EMPTY_INPUT", "CSV holds a header but no rows")
    if sorted(map(str, frame.columns)) != sorted(cols):
        raise InputError("MALFORMED_CSV", "cannot read the CSV header consistently (quoting, blank lines?)")
    required = [s.name for s in spec.specs if s.required]
    nulls = frame[required].isna().any()
    if nulls.any():
        col = nulls[nulls].index[0]
        row = int(frame[col].isna().to_numpy().argmax())
        raise InputError("MISSING_VALUE", f"row {row}, column '{col}': a missing value; the signature requires a value")
    for s in spec.specs:
        if s.name in frame and s.dtype is not None and s.dtype.kind == "f":
            values = frame[s.name].to_numpy()
            if s.required and not np.isfinite(values).all():
                row = int((~np.isfinite(values)).argmax())
                raise InputError("INVALID_VALUE", f"row {row}, column '{s.name}': a non-finite value")
    _check_integer_columns(frame, spec)
    frame = frame.reindex(columns=list(spec.columns)) if list(frame.columns) != list(spec.columns) else frame
    if spec.uniform and not build_frame:
        arr = np.asfortranarray(frame.to_numpy(dtype=spec.dtype))
        return ParsedInput(arr, None, None, len(frame), "csv")
    return ParsedInput(None, frame, None, len(frame), "csv")


_INT_LIMIT = 2**63


def _check_integer_columns(frame: Any, spec: InputSpec) -> None:
    """InputError naming the first CSV value of an integer column that is not a whole number in
    range (pandas reads such a column as floats or text when the signature does not fix its type)."""
    for s in spec.specs:
        if s.type not in ("long", "integer") or s.name not in frame or frame[s.name].dtype.kind == "i":
            continue
        values = frame[s.name].to_numpy()
        if values.dtype.kind == "f":  # whole numbers in range, or missing: checked at once
            present = values[~np.isnan(values)]
            if (np.floor(present) == present).all() and (np.abs(present) < _INT_LIMIT).all():
                continue
        for row, v in enumerate(values):
            if v is None or (isinstance(v, float) and v != v):
                continue  # missing: checked above for a required column
            if isinstance(v, str):
                try:
                    v = int(v.strip())
                except ValueError:
                    v = v.strip()
            ok = (isinstance(v, (int, np.integer)) and -_INT_LIMIT <= v < _INT_LIMIT) or (
                isinstance(v, (float, np.floating)) and float(v).is_integer() and abs(v) < _INT_LIMIT)
            if not ok:
                raise InputError("INVALID_VALUE_TYPE",
                                 f"row {row}, column '{s.name}': expected {s.type}, got {short_value(str(v))}")


def check_parquet(body: bytes, spec: InputSpec | None, max_body_bytes: int) -> None:
    """Refuse a Parquet body whose footer promises more than a JSON body of ``max_body_bytes``
    could carry (compressed columns can decode to millions of rows), or more columns than the cap.

    A body that is not Parquet passes: MLflow's own parser answers it.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(pa.BufferReader(body)).metadata
    except Exception:  # noqa: BLE001 - not Parquet: MLflow's parser explains
        return
    rows, cols = int(meta.num_rows), int(meta.num_columns)
    if spec is not None:
        _check_width(cols, spec, "the Parquet body")
    elif cols > _limits["max_columns"]:
        raise InputError("TOO_MANY_COLUMNS", f"the Parquet body has {cols} columns; at most "
                                             f"{_limits['max_columns']} are accepted (MAX_COLUMNS)")
    cells = max_body_bytes // 2  # the most values a JSON body of MAX_BODY_BYTES holds ("1,")
    if rows * max(cols, 1) > cells:
        raise InputError("PAYLOAD_TOO_LARGE", f"the Parquet body decodes to {rows} rows x {cols} columns; at most "
                                              f"{cells} values are accepted (MAX_BODY_BYTES / 2)", 413)
