"""The input of a scoring job: looked at without Spark, checked against the signature, then read.

:func:`inspect` lists the files (a CSV or Parquet file, or a folder of them, Hive-partitioned or
not) and reads only what is cheap: Parquet footers (schema, row count), the header and first block
of each CSV. :func:`check` compares that with the model's signature (missing columns, wrong types,
unknown id columns) and gives the :class:`Plan` of the job. :func:`read` builds the Spark DataFrame
with the signature's types; a value that does not fit, further down a CSV than the first block,
fails the job with that value and column in one line (``raise_error``), never silently as null.

CSV cells are missing values exactly where pandas reads them as such (``NA``, empty, ``null`` ...),
so that Spark scores the rows pandas' ``read_csv`` + ``pyfunc.predict`` would.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.scoring import BadInput
from mlops.util import first_line

log = logging.getLogger(__name__)

CSV_BLOCK_BYTES = 1 << 20  # what is read of each CSV file before Spark starts
# pandas' default missing-value tokens (pandas.read_csv, na_values).
CSV_NULLS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
             "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")
PREDICTION = "prediction"
NUMERIC = {"double", "float"}
INTEGER = {"long", "integer"}
_CSV_KEPT = ("long", "double", "boolean")  # inferred types kept for CSV columns the model does not read
SPARK_TYPES = {"double": "double", "float": "float", "long": "bigint", "integer": "int", "boolean": "boolean",
               "string": "string", "binary": "binary", "datetime": "timestamp"}


@dataclass
class InputInfo:
    """What the input is, learnt without Spark."""

    path: Path
    format: str  # "csv" or "parquet"
    files: list[Path]
    bytes: int
    digest: str  # sha256 of the listing: relative names, sizes, modification times
    columns: dict[str, str]  # name -> a kind: long, double, boolean, string, datetime, binary, null, other
    rows: int | None  # known for Parquet (footers); None for CSV
    sample: Any = None  # CSV: the first block of the first file with data (pyarrow Table)


@dataclass
class Plan:
    """Which columns the job reads, passes to the model and keeps."""

    features: list[str]  # signature columns present in the input, signature order
    types: dict[str, str]  # feature -> signature type
    keep: list[str]  # input columns copied to the output
    missing_optional: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)  # features the signature marks required
    ids: list[str] = field(default_factory=list)  # --id-columns: name a failing row in its error


def local_path(path: str) -> Path:
    """``path`` (or a ``file://`` URI) as a local Path; BadInput for other schemes."""
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif "://" in path:
        raise BadInput(f"{path}: mlops score reads and writes local (or mounted shared) paths only")
    return Path(path).expanduser()


def _visible(path: Path, root: Path) -> bool:
    """Spark and pyarrow skip names starting with ``_`` or ``.`` (``_SUCCESS``, ``.crc`` files)."""
    return not any(part.startswith(("_", ".")) for part in path.relative_to(root).parts)


def _format_of(file: Path) -> str | None:
    suffix = file.suffix.lower()
    if suffix in (".parquet", ".pq", ".parq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    try:
        with file.open("rb") as fh:
            return "parquet" if fh.read(4) == b"PAR1" else None
    except OSError as exc:
        raise BadInput(f"cannot read input {file}: {exc.strerror or exc}") from None


def _listing(root: Path) -> tuple[str, list[Path]]:
    if not root.exists():
        raise BadInput(f"input {root} does not exist")
    if not os.access(root, os.R_OK) or (root.is_dir() and not os.access(root, os.X_OK)):
        raise BadInput(f"cannot read input {root}: permission denied")
    if root.is_file():
        kind = _format_of(root)
        if kind is None:
            raise BadInput(f"cannot tell the format of {root}: name it .csv or .parquet")
        return kind, [root]
    files, kinds = [], set()
    for path in sorted(root.rglob("*")):
        if path.is_file() and _visible(path, root):
            kind = _format_of(path)
            if kind:
                files.append(path)
                kinds.add(kind)
    if not files:
        raise BadInput(f"input folder {root} holds no CSV or Parquet file")
    if len(kinds) > 1:
        raise BadInput(f"input folder {root} mixes CSV and Parquet files")
    unreadable = [f for f in files if not os.access(f, os.R_OK)]
    if unreadable:
        raise BadInput(f"cannot read input {unreadable[0]}: permission denied")
    return kinds.pop(), files


def _digest(root: Path, files: list[Path]) -> tuple[int, str]:
    h, total = hashlib.sha256(), 0
    for f in files:
        st = f.stat()
        total += st.st_size
        rel = f.name if f == root else str(f.relative_to(root))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return total, h.hexdigest()


def _kind(arrow_type: Any) -> str:
    import pyarrow.types as t

    if t.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if t.is_boolean(arrow_type):
        return "boolean"
    if t.is_integer(arrow_type):
        return "long"
    if t.is_floating(arrow_type) or t.is_decimal(arrow_type):
        return "double"
    if t.is_string(arrow_type) or t.is_large_string(arrow_type):
        return "string"
    if t.is_timestamp(arrow_type) or t.is_date(arrow_type):
        return "datetime"
    if t.is_binary(arrow_type) or t.is_large_binary(arrow_type):
        return "binary"
    if t.is_null(arrow_type):
        return "null"
    return "other"


def _inspect_parquet(root: Path) -> tuple[dict[str, str], int]:
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(str(root), format="parquet", partitioning="hive")
        rows = dataset.count_rows()
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the operator's to fix
        raise BadInput(f"cannot read Parquet input {root}: {first_line(exc)}") from None
    return {f.name: _kind(f.type) for f in dataset.schema}, rows


def _first_block(file: Path) -> Any:
    """The header and first block of one CSV file as a pyarrow Table (may have no rows)."""
    import pyarrow as pa
    from pyarrow import csv

    try:
        reader = csv.open_csv(
            str(file),
            read_options=csv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=csv.ConvertOptions(null_values=list(CSV_NULLS), strings_can_be_null=True),
        )
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return pa.Table.from_batches([], schema=reader.schema)
        return pa.Table.from_batches([batch])
    except pa.ArrowInvalid as exc:
        text = first_line(exc) if str(exc).strip() else "unreadable"
        if "Empty CSV file" in text:
            return None
        raise BadInput(f"cannot read CSV input {file}: {text}") from None


def _inspect_csv(files: list[Path]) -> tuple[dict[str, str], Any]:
    header, sample = None, None
    for f in files:
        block = _first_block(f)
        if block is None:
            continue
        if header is None:
            header = block.schema
        elif block.schema.names != header.names:
            raise BadInput(f"CSV file {f} has other columns than {files[0]}: {', '.join(block.schema.names)}")
        if sample is None and block.num_rows:
            sample = block
    if header is None:
        raise BadInput(f"the input is empty: {files[0] if len(files) == 1 else files[0].parent} has no header")
    if sample is None:
        raise BadInput("the input is empty: no data rows after the header")
    dup = sorted({n for n in header.names if header.names.count(n) > 1})
    if dup:
        raise BadInput(f"the CSV header names {', '.join(map(repr, dup))} more than once")
    return {f.name: _kind(sample.schema.field(f.name).type) for f in header}, sample


def inspect(path: str) -> InputInfo:
    """List and look at the input without Spark; BadInput (one line) if it cannot be scored."""
    root = local_path(path)
    kind, files = _listing(root)
    size, digest = _digest(root, files)
    if kind == "parquet":
        columns, rows = _inspect_parquet(root)
        if rows == 0:
            raise BadInput(f"the input is empty: {root} has no rows")
        sample = None
    else:
        columns, sample = _inspect_csv(files)
        rows = None
    log.debug("input %s: %s, %d file(s), %d bytes, %d columns%s", root, kind, len(files), size, len(columns),
             f", {rows} rows" if rows is not None else "")
    return InputInfo(path=root, format=kind, files=files, bytes=size, digest=digest, columns=columns, rows=rows,
                     sample=sample)


def _fits(have: str, want: str) -> bool:
    if have == "null":
        return True
    if want in NUMERIC:
        return have in ("long", "double")
    if want in INTEGER:
        return have == "long"
    if want == "string":
        return have == "string"
    return have == {"boolean": "boolean", "datetime": "datetime", "binary": "binary"}.get(want, "?")


def _bad_csv_value(sample: Any, name: str, want: str) -> str:
    """The first value of the CSV sample's column ``name`` that is not a ``want``, quoted."""
    for i, value in enumerate(sample.column(name).to_pylist()):
        if value is None:
            continue
        text = str(value)
        try:
            if want in NUMERIC:
                float(text)
                continue
            if want in INTEGER and float(text) == int(float(text)) and "." not in text:
                continue
        except (ValueError, OverflowError):
            pass
        return f"{text!r} on data row {i + 1}"
    return "a value"


def check(info: InputInfo, signature: Any, id_columns: list[str], keep_all: bool) -> Plan:
    """Compare the input's columns with the model's signature; BadInput names the first problem."""
    present = info.columns
    missing_ids = [c for c in id_columns if c not in present]
    if missing_ids:
        raise BadInput(f"--id-columns: the input has no column {', '.join(map(repr, missing_ids))} "
                       f"(it has {', '.join(list(present)[:20])})")
    inputs = signature.inputs if signature is not None else None
    if inputs is None or not inputs.has_input_names():
        raise BadInput("the model has no column signature: mlops score checks the input against one "
                       "(log the model with a signature or an input example)")
    if inputs.is_tensor_spec():
        raise BadInput("the model takes tensors, not columns: mlops score scores tables")
    specs = inputs.inputs
    missing = [s.name for s in specs if s.required and s.name not in present]
    if missing:
        raise BadInput(f"the input lacks column(s) {', '.join(map(repr, missing))} that the model requires")
    types: dict[str, str] = {}
    for s in specs:
        if s.name not in present:
            continue
        want = getattr(s.type, "name", str(s.type))
        if want not in SPARK_TYPES:
            raise BadInput(f"column {s.name!r}: the model expects {want}, which mlops score cannot read")
        have = present[s.name]
        if not (info.format == "csv" and want == "string") and not _fits(have, want):
            where = ""
            if info.format == "csv" and have == "string" and want != "string":
                where = f" ({_bad_csv_value(info.sample, s.name, want)})"
            elif info.format == "csv" and have == "double" and want in INTEGER:
                where = f" ({_bad_csv_value(info.sample, s.name, want)})"
            shown = "text" if have == "string" else have
            raise BadInput(f"column {s.name!r} holds {shown}{where}, but the model expects {want}")
        types[s.name] = want
    if PREDICTION in present and (keep_all or not id_columns or PREDICTION in id_columns):
        raise BadInput(f"the input already has a column {PREDICTION!r}: rename it or pick --id-columns")
    keep = list(present) if keep_all or not id_columns else list(dict.fromkeys(id_columns))
    optional = [s.name for s in specs if not s.required and s.name not in present]
    if optional:
        log.debug("optional column(s) %s absent: the model sees them as missing", ", ".join(optional))
    required = [s.name for s in specs if s.required and s.name in types]
    return Plan(features=list(types), types=types, keep=keep, missing_optional=optional, required=required,
                ids=list(dict.fromkeys(id_columns)))


def read(spark: Any, info: InputInfo, plan: Plan) -> Any:
    """The input as a Spark DataFrame: features with the signature's Spark types, kept columns as read.

    CSV is read as text (header checked against the names, FAILFAST on malformed lines), missing
    tokens become null, features are cast with ``try_cast`` to the signature's type and other
    numeric or boolean columns to the type of their first rows; a cell that does not convert raises
    ``column 'x' holds 'v', which is not a double`` from inside the job. Parquet is read natively
    and its features cast to the signature's types (widening only; :func:`check` made sure).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    if info.format == "parquet":
        df = spark.read.parquet(str(info.path))
        cols = []
        for name in df.columns:
            c = F.col(f"`{name}`")
            if name in plan.types:
                c = _required(c.cast(SPARK_TYPES[plan.types[name]]), name, plan)
            cols.append(c.alias(name))
        return df.select(*cols)
    names = list(info.columns)
    schema = StructType([StructField(n, StringType(), True) for n in names])
    paths = [str(f) for f in info.files]
    df = spark.read.csv(paths, schema=schema, header=True, enforceSchema=False, mode="FAILFAST",
                        escape='"', multiLine=False, nullValue=None)
    nulls = list(CSV_NULLS)
    cols = []
    for name in names:
        raw = F.col(f"`{name}`")
        cleaned = F.when(raw.isin(nulls), F.lit(None)).otherwise(raw)
        # Features get the signature's type; other columns the type of their first rows (ids stay numbers).
        want = plan.types.get(name) or (info.columns[name] if info.columns[name] in _CSV_KEPT else None)
        if want is not None and want != "string":
            converted = cleaned.try_cast(SPARK_TYPES[want])
            message = F.concat(F.lit(f"column '{name}' holds '"), cleaned, F.lit(f"', which is not a {want}"),
                               _row_label(plan, F))
            cleaned = F.when(cleaned.isNotNull() & converted.isNull(), F.raise_error(message)).otherwise(converted)
        if name in plan.types:
            cleaned = _required(cleaned, name, plan)
        cols.append(cleaned.alias(name))
    return df.select(*cols)


def _row_label(plan: Plan, F: Any) -> Any:
    """`` (on the row with id=…)`` from the --id-columns, else nothing: which row failed."""
    if not plan.ids:
        return F.lit("")
    parts = [F.concat(F.lit(f"{c}="), F.coalesce(F.col(f"`{c}`").cast("string"), F.lit("null"))) for c in plan.ids]
    return F.concat(F.lit(" (on the row with "), F.concat_ws(", ", *parts), F.lit(")"))


def _required(column: Any, name: str, plan: Plan) -> Any:
    """A required whole-number feature that is missing fails the job with that column (and row).

    pandas cannot hold a missing value in an integer column, so pyfunc refuses the whole batch with
    a dump of it; this says which column and row instead.
    """
    from pyspark.sql import functions as F

    if name not in plan.required or plan.types[name] not in INTEGER:
        return column
    message = F.concat(F.lit(f"column '{name}' is missing a value the model requires ({plan.types[name]})"),
                       _row_label(plan, F))
    return F.when(column.isNull(), F.raise_error(message)).otherwise(column)


__all__ = ["CSV_NULLS", "InputInfo", "local_path", "PREDICTION", "Plan", "check", "inspect", "read"]
