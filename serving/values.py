"""Checked rows become typed values: one numpy array for a uniform numeric signature, typed
columns otherwise; CSV bodies parsed as MLflow's scoring server parses them. Every value that does
not fit its column is an :class:`~serving.errors.InputError` naming the row and the column.
"""

from __future__ import annotations

from itertools import chain

import numpy as np

from serving.errors import InputError
from serving.schema import (
    ALLOWED,
    ColumnSpec,
    InputSpec,
    TypedColumns,
    jtype,
    short_value,
)


def to_array(rows: list, spec: InputSpec, maybe_bool: bool = True) -> np.ndarray:
    """Rows (in signature order) → a column-major array of the signature dtype."""
    if not maybe_bool and spec.all_required and spec.dtype.kind == "f":
        # Fast: numpy infers float64/int64 only when every value is a JSON number (strings give
        # '<U', null gives object, nested lists another shape), so that is the type check.
        try:
            arr = np.array(rows)
        except (ValueError, TypeError, OverflowError):
            arr = None
        if arr is not None and arr.ndim == 2 and arr.dtype.kind in "fi" and arr.shape[1] == len(spec.columns):
            if arr.dtype != np.float64:
                arr = arr.astype(np.float64)
            if spec.dtype != np.float64:
                arr = arr.astype(spec.dtype)
            _check_finite(arr, spec)
            return np.asfortranarray(arr)
    ctype = spec.specs[0].type
    allowed = ALLOWED[ctype]
    if not spec.all_required:
        allowed = (*allowed, type(None))
    types = set(map(type, chain.from_iterable(rows)))
    if not types <= set(allowed):
        check_values(rows, spec)  # raises with the column and row
    try:
        if spec.dtype.kind == "f":
            arr = np.array(rows, dtype=np.float64)
            if spec.dtype != np.float64:
                arr = arr.astype(spec.dtype)
        else:
            arr = np.array(rows, dtype=spec.dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InputError("INVALID_VALUE", f"values do not fit the signature type {ctype}: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != len(spec.columns):
        raise InputError("INVALID_INPUT_FORMAT", f"expected rows of {len(spec.columns)} values")
    if arr.dtype.kind == "f":
        _check_finite(arr, spec)
    return np.asfortranarray(arr)


def _check_finite(arr: np.ndarray, spec: InputSpec) -> None:
    if spec.all_required:
        if np.isfinite(arr).all():
            return
        bad = np.argwhere(~np.isfinite(arr))[0]
    else:
        idx = [i for i, s in enumerate(spec.specs) if s.required]
        sub = arr[:, idx]
        if np.isfinite(sub).all():
            return
        b = np.argwhere(~np.isfinite(sub))[0]
        bad = (b[0], idx[b[1]])
    row, col = int(bad[0]), int(bad[1])
    value = arr[row, col]
    what = "a missing value (null/NaN)" if np.isnan(value) else f"a non-finite value ({value})"
    raise InputError(
        "MISSING_VALUE" if np.isnan(value) else "INVALID_VALUE",
        f"row {row}, column '{spec.columns[col]}': {what}; the signature requires a finite {spec.specs[col].type}",
    )


def check_values(rows: list, spec: InputSpec) -> None:
    """Slow, exact per-value check; raises at the first value that does not fit its column."""
    allowed = [ALLOWED[s.type] for s in spec.specs]
    for r, row in enumerate(rows):
        for c, value in enumerate(row):
            col = spec.specs[c]
            if value is None or (type(value) is float and value != value):
                if col.required:
                    raise InputError(
                        "MISSING_VALUE",
                        f"row {r}, column '{col.name}': a missing value (null/NaN); the signature requires a {col.type}",
                    )
                continue
            if type(value) not in allowed[c]:
                raise InputError(
                    "INVALID_VALUE_TYPE",
                    f"row {r}, column '{col.name}': expected {col.type}, got {jtype(value)} {short_value(value)}",
                )
            if type(value) is float and value in (float("inf"), float("-inf")) and col.required:
                raise InputError("INVALID_VALUE", f"row {r}, column '{col.name}': a non-finite value ({value})")


def to_columns(rows: list, spec: InputSpec) -> TypedColumns:
    """Checked rows → typed columns whose DataFrame (``to_frame``) is the one MLflow's own parser
    builds: JSON integers in a double column become doubles, ``null`` in an optional numeric column
    NaN; integer and boolean columns holding ``null`` stay object (no missing value exists for
    them) and strings stay Python strings."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in spec.specs]
    data = {}
    for s, values in zip(spec.specs, columns, strict=True):
        data[s.name] = _typed_column(values, s)
    return TypedColumns(list(spec.columns), data, len(rows))


def _typed_column(values: tuple, s: ColumnSpec):
    if s.dtype is None or s.type in ("string", "binary", "datetime"):
        return np.array(values, dtype=object) if s.type == "string" else list(values)
    if s.dtype.kind == "f":
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64).astype(s.dtype, copy=False)
    if any(v is None for v in values):
        return np.array(values, dtype=object)
    try:
        return np.array(values, dtype=s.dtype)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InputError("INVALID_VALUE", f"column '{s.name}': values do not fit the signature type {s.type}: {exc}") from None
