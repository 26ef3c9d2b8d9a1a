"""Load the training data set and check it before anything is trained."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BUNDLED = "sklearn:breast_cancer"
PENGUINS = str(Path(__file__).resolve().parent / "datasets" / "penguins.csv")

log = logging.getLogger("training.data")


class DataError(ValueError):
    """The data cannot be used for training; the message is one readable line."""


@dataclass
class Dataset:
    """Features, target and where they came from."""

    frame: pd.DataFrame
    target: str
    source: str
    name: str
    dropped_rows: int = 0

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 - sklearn naming
        return self.frame.drop(columns=[self.target])

    @property
    def y(self) -> pd.Series:
        return self.frame[self.target]


def load_dataset(path: str | None, target: str = "target") -> Dataset:
    """Read a CSV/Parquet file (or the bundled breast-cancer set) and validate it.

    ``penguins`` names the bundled penguins CSV (training/datasets/penguins.csv).
    """
    if path == "penguins":
        path = PENGUINS
    if not path or path == BUNDLED:
        import sklearn.datasets
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame
        target = target or "target"
        # The file scikit-learn ships the data in: a real, resolvable dataset source for MLflow.
        source = Path(sklearn.datasets.__file__).parent / "data" / "breast_cancer.csv"
        ds = Dataset(frame=frame, target=target, source=str(source), name="breast_cancer")
    else:
        p = Path(path)
        if not p.exists():
            raise DataError(f"data file not found: {path}")
        if p.is_dir():
            raise DataError(f"data path is a directory, not a file: {path}")
        if p.stat().st_size == 0:
            raise DataError(f"data file is empty: {path}")
        suffix = p.suffix.lower()
        try:
            if suffix == ".csv":
                header, first = csv_head(p)
                check_header(header)
                check_first_row(header, first)
                frame = pd.read_csv(p)
            elif suffix in (".parquet", ".pq"):
                frame = pd.read_parquet(p)
            else:
                raise DataError(f"unsupported data file type '{suffix or p.name}': use .csv or .parquet")
        except DataError:
            raise
        except pd.errors.EmptyDataError:
            raise DataError(f"data file is empty: {path}") from None
        except Exception as exc:  # noqa: BLE001 - parser errors become one line
            raise DataError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
        ds = Dataset(frame=frame, target=target, source=str(p.resolve()), name=p.stem)
    validate(ds)
    return ds


def csv_head(path: Path) -> tuple[list[str] | None, list[str] | None]:
    """The header cells of a CSV file as written, and its first data row, read as ``pd.read_csv``
    reads them (UTF-8, a BOM removed, blank lines skipped); None for what the csv module cannot
    read (pandas then reports the problem)."""
    head: list[list[str] | None] = [None, None]
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = (row for row in csv.reader(f) if row)
            for i in range(2):
                head[i] = next(rows, None)
    except (OSError, UnicodeDecodeError, csv.Error):
        pass
    return head[0], head[1]


def check_first_row(header: list[str] | None, first: list[str] | None) -> None:
    """DataError when the first data row has one value more than the header names: pandas would
    silently take the first column as the row index and shift every name one column to the right."""
    if header is not None and first is not None and len(first) == len(header) + 1:
        raise DataError(f"the first data row has {len(first)} values but the header names {len(header)} "
                        "columns: name every column in the header (a saved row index needs a name, or "
                        "write the file with index=False)")


def check_header(names: list[str] | None, where: str = " of the header") -> None:
    """DataError for duplicate or empty column names (a CSV's as written: pandas would rename
    them to ``a.1`` or ``Unnamed: 7`` and the model would take those made-up names as features)."""
    if names is None:
        return
    duplicates(names)
    unnamed = [i + 1 for i, name in enumerate(names) if not str(name).strip()]
    if unnamed:
        one = len(unnamed) == 1
        hint = (" (an unnamed first column is usually a saved row index: write the file with index=False)"
                if unnamed[0] == 1 else "")
        raise DataError(
            f"column{'' if one else 's'} {', '.join(map(str, unnamed))}{where} "
            f"{'has' if one else 'have'} no name: name {'it' if one else 'them'} or remove the "
            f"column{'' if one else 's'}{hint}"
        )


def duplicates(names) -> None:
    """DataError naming the column names that occur more than once (at most five)."""
    index = pd.Index([str(n) for n in names])
    if index.duplicated().any():
        dup = sorted(set(index[index.duplicated()]))
        raise DataError(f"duplicate column names: {', '.join(dup[:5])}")


def shown(value) -> str:
    """A value as a user wrote it (numpy scalars as plain Python values)."""
    return repr(value.item() if hasattr(value, "item") else value)


def validate(ds: Dataset) -> None:
    """Raise DataError for data that cannot train a model (a non-finite target value among them);
    drop rows whose target is missing.

    Feature columns are not checked here: text, booleans and missing values are handled by the
    preprocessing inside the pipeline (training.preprocess), which also drops useless columns.
    """
    frame = ds.frame
    if frame.empty or len(frame.columns) == 0:
        raise DataError(f"data has no rows: {ds.source}")
    if ds.target not in frame.columns:
        cols = ", ".join(map(str, frame.columns[:8])) + (", …" if len(frame.columns) > 8 else "")
        raise DataError(f"target column '{ds.target}' not found in data (columns: {cols})")
    check_header(list(frame.columns), where="")  # a CSV's header was checked as written, before pandas
    if frame.shape[1] < 2:
        raise DataError("data has no feature columns besides the target")
    missing = frame[ds.target].isna()
    if missing.all():
        raise DataError(f"target column '{ds.target}' has no values (all {len(frame)} missing)")
    check_finite(frame[ds.target].loc[~missing])  # refused before any warning: one error line
    if missing.any():
        ds.dropped_rows = int(missing.sum())
        log.warning("dropped %d of %d rows whose target '%s' is missing", ds.dropped_rows, len(frame), ds.target)
        ds.frame = frame = frame.loc[~missing].reset_index(drop=True)
        y = frame[ds.target]
        if pd.api.types.is_float_dtype(y) and bool((y % 1 == 0).all()):
            # An integer column with gaps is read as floats: without the gaps it is integers again.
            frame[ds.target] = y.astype("int64")
    if frame[ds.target].nunique() < 2:
        raise DataError(
            f"target column '{ds.target}' is constant ({shown(frame[ds.target].iloc[0])} in every row): nothing to learn"
        )
    if len(frame) < 10:
        raise DataError(f"data has only {len(frame)} rows with a target; at least 10 are needed")


def check_finite(y: pd.Series) -> None:
    """DataError naming how many ``inf``/``-inf`` values a numeric target (without its missing
    values) holds: no model fits them, and scikit-learn's refusal is a traceback."""
    if not pd.api.types.is_float_dtype(y):
        return
    values = y.to_numpy(dtype=float)
    pos, neg = int(np.isposinf(values).sum()), int(np.isneginf(values).sum())
    if pos or neg:
        kinds = ", ".join(k for k, n in (("inf", pos), ("-inf", neg)) if n)
        count = pos + neg
        raise DataError(f"target column '{y.name}' has {count} non-finite value{'s' if count != 1 else ''} "
                        f"({kinds})")


# --------------------------------------------------------------------------- the run's dataset input
#
# mlflow.data.from_pandas computes the digest with DataFrame.map(type) over every cell and the
# schema's `required` flags with a Python call per cell: about 20 s for a 1,000,000 x 21 table.
# The two functions below give the same digest and schema column by column with vectorised checks
# where the dtype allows it (numpy numbers and booleans, pandas' str dtype) and fall back to
# MLflow's own per-value code for every other dtype. tests/training/test_dataset_input.py compares
# them with MLflow's results.


def _fast_dtype(s: pd.Series) -> str | None:
    """"number" (numpy float64/int/bool), "str" (pandas str dtype, NaN for missing), else None."""
    dtype = s.dtype
    if isinstance(dtype, np.dtype) and (dtype == np.float64 or dtype.kind in "biu"):
        return "number"
    if isinstance(dtype, pd.StringDtype) and dtype.na_value is np.nan:
        return "str"
    return None


def pandas_digest(df: pd.DataFrame) -> str:
    """``mlflow.data.digest_utils.compute_pandas_digest(df)``, without a Python call per cell."""
    from mlflow.data.digest_utils import MAX_ROWS, get_normalized_md5_digest

    trimmed_df = df.head(MAX_ROWS)
    all_str = []
    for col in range(df.shape[1]):
        s = df.iloc[:, col]
        kind = _fast_dtype(s)
        if kind == "number":
            all_str.append(False)  # numpy scalars are never str
        elif kind == "str":
            all_str.append(not bool(s.isna().any()))  # a missing value is a float NaN
        else:
            # MLflow's own expression on this one column.
            all_str.append(bool((df.iloc[:, [col]].map(type) == str).all(axis=0).iloc[0]))  # noqa: E721
    string_columns = trimmed_df.columns[np.array(all_str, dtype=bool)]
    numeric_columns = trimmed_df.select_dtypes(include=[np.number]).columns
    trimmed_df = trimmed_df[string_columns.union(numeric_columns)]
    return get_normalized_md5_digest(
        [pd.util.hash_pandas_object(trimmed_df).values, np.int64(len(df))]
        + [str(x).encode() for x in df.columns]
    )


def pandas_schema(df: pd.DataFrame):
    """``PandasDataset.schema``: MLflow's inferred schema of ``df`` (None where MLflow infers none),
    vectorised where the dtype allows."""
    try:
        return _pandas_schema(df)
    except Exception:  # noqa: BLE001 - as PandasDataset.schema: a column MLflow cannot type, no schema
        return None


def _pandas_schema(df: pd.DataFrame):
    from mlflow.types import ColSpec, Schema
    from mlflow.types.utils import _infer_pandas_column, _infer_required

    cols = []
    for name in df.columns:
        s = df[name]
        kind = _fast_dtype(s)
        if kind == "number":
            spec = ColSpec(type=_infer_pandas_column(s), name=name, required=not bool(s.isna().any()))
        elif kind == "str":
            # The type depends only on which values occur: each distinct value (NaN included) once.
            spec = ColSpec(type=_infer_pandas_column(s.drop_duplicates()), name=name,
                           required=not bool(s.isna().any()))
        else:
            spec = ColSpec(type=_infer_pandas_column(s), name=name, required=_infer_required(s))
        cols.append(spec)
    return Schema(cols)


def mlflow_dataset(ds: Dataset):
    """The run's dataset input: ``mlflow.data.from_pandas`` of the whole frame, digest and schema
    computed by :func:`pandas_digest` and :func:`pandas_schema` (same values, vectorised)."""
    import mlflow.data

    dataset = mlflow.data.from_pandas(ds.frame, source=ds.source, targets=ds.target, name=ds.name,
                                      digest=pandas_digest(ds.frame))
    dataset.__dict__["schema"] = pandas_schema(ds.frame)  # PandasDataset.schema is a cached_property
    return dataset
