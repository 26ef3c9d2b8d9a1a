"""What a request is checked against and what it becomes: the model's column signature
(:class:`InputSpec`), a checked request (:class:`ParsedInput`, its :class:`TypedColumns`), and the
short wording of values and names in error messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

# JSON value types accepted for each signature type (bool is not a number here).
ALLOWED = {
    "double": (float, int),
    "float": (float, int),
    "long": (int,),
    "integer": (int,),
    "boolean": (bool,),
    "string": (str,),
    "binary": (str, bytes),
    "datetime": (str,),
}


_NUMERIC = ("double", "float", "long", "integer", "boolean")


@dataclass(frozen=True)
class ColumnSpec:
    """One named column of the model's input signature."""

    name: str
    type: str
    required: bool
    dtype: np.dtype | None


@dataclass(frozen=True)
class InputSpec:
    """Precomputed column order and dtypes of a column-based signature."""

    columns: tuple[str, ...]
    specs: tuple[ColumnSpec, ...]
    #: one numpy dtype for the whole array when every column has the same numeric type
    dtype: np.dtype | None
    all_required: bool
    has_params: bool

    @property
    def uniform(self) -> bool:
        """True when a request becomes one numpy array (the fast path)."""
        return self.dtype is not None

    @classmethod
    def from_signature(cls, signature) -> InputSpec | None:
        """The spec of a named, column-based signature; None for tensors or no signature."""
        if signature is None or signature.inputs is None:
            return None
        schema = signature.inputs
        if schema.is_tensor_spec() or not schema.has_input_names():
            return None
        specs = []
        for col in schema.inputs:
            type_name = getattr(col.type, "name", None)
            if type_name not in ALLOWED:
                return None  # arrays, objects, maps: leave them to MLflow's own parser
            try:
                dtype = np.dtype(col.type.to_numpy())
            except Exception:  # noqa: BLE001 - no numpy equivalent
                dtype = None
            specs.append(ColumnSpec(col.name, type_name, bool(col.required), dtype))
        types = {s.type for s in specs}
        uniform = None
        if len(types) == 1 and next(iter(types)) in _NUMERIC:
            uniform = specs[0].dtype
            if specs[0].type in ("long", "integer", "boolean") and not all(s.required for s in specs):
                uniform = None  # a missing value has no integer/bool representation
        params = getattr(signature, "params", None)
        return cls(
            columns=tuple(s.name for s in specs),
            specs=tuple(specs),
            dtype=uniform,
            all_required=all(s.required for s in specs),
            has_params=bool(params and getattr(params, "params", None)),
        )


class TypedColumns:
    """Checked columns with the signature's types, by name: what a DataFrame of the request would
    hold, without building one (the compiled path reads the arrays; :meth:`to_frame` builds the
    DataFrame MLflow's parser would, for every other path)."""

    __slots__ = ("names", "data", "rows")

    def __init__(self, names: list[str], data: dict[str, Any], rows: int):
        self.names = names
        self.data = data
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def column(self, name: str) -> np.ndarray:
        values = self.data[name]
        return values if isinstance(values, np.ndarray) else np.array(values, dtype=object)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(self.data, columns=self.names)


class ParsedInput:
    """A validated request: an array (fast path) or a DataFrame, plus MLflow ``params``.

    ``columns`` (typed columns by name) stands in for the DataFrame until one is asked for:
    ``frame`` builds it on first use."""

    __slots__ = ("array", "_frame", "params", "rows", "fmt", "columns")

    def __init__(self, array: np.ndarray | None, frame: Any | None, params: dict | None, rows: int, fmt: str,
                 columns: TypedColumns | None = None):
        self.array = array
        self._frame = frame
        self.params = params
        self.rows = rows
        self.fmt = fmt
        self.columns = columns

    @property
    def frame(self) -> Any | None:
        if self._frame is None and self.columns is not None:
            self._frame = self.columns.to_frame()
        return self._frame

    @property
    def tabular(self) -> bool:
        """A DataFrame (built or not) rather than an array."""
        return self._frame is not None or self.columns is not None


def jtype(value: Any) -> str:
    return {
        dict: "object", list: "list", str: "string", bool: "boolean", int: "integer",
        float: "number", type(None): "null", tuple: "list",
    }.get(type(value), type(value).__name__)


def short_value(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def quoted_names(names) -> str:
    """At most 10 quoted names, then how many more (messages stay short whatever the input)."""
    names = list(names)
    shown = ", ".join(f"'{short_name(n)}'" for n in names[:10])
    return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def short_name(name: Any) -> str:
    text = str(name)
    return text if len(text) <= 80 else text[:77] + "..."
