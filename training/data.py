"""Load the training data set and check it before anything is trained."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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


def shown(value) -> str:
    """A value as a user wrote it (numpy scalars as plain Python values)."""
    return repr(value.item() if hasattr(value, "item") else value)


def validate(ds: Dataset) -> None:
    """Raise DataError for data that cannot train a model; drop rows whose target is missing.

    Feature columns are not checked here: text, booleans and missing values are handled by the
    preprocessing inside the pipeline (training.preprocess), which also drops useless columns.
    """
    frame = ds.frame
    if frame.empty or len(frame.columns) == 0:
        raise DataError(f"data has no rows: {ds.source}")
    if ds.target not in frame.columns:
        cols = ", ".join(map(str, frame.columns[:8])) + (", …" if len(frame.columns) > 8 else "")
        raise DataError(f"target column '{ds.target}' not found in data (columns: {cols})")
    if frame.columns.duplicated().any():
        dup = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
        raise DataError(f"duplicate column names: {', '.join(dup[:5])}")
    if frame.shape[1] < 2:
        raise DataError("data has no feature columns besides the target")
    missing = frame[ds.target].isna()
    if missing.all():
        raise DataError(f"target column '{ds.target}' has no values (all {len(frame)} missing)")
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
