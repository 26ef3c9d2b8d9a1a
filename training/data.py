"""Load the training data set and check it before anything is trained."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

BUNDLED = "sklearn:breast_cancer"


class DataError(ValueError):
    """The data cannot be used for training; the message is one readable line."""


@dataclass
class Dataset:
    """Features, target and where they came from."""

    frame: pd.DataFrame
    target: str
    source: str
    name: str

    @property
    def X(self) -> pd.DataFrame:  # noqa: N802 - sklearn naming
        return self.frame.drop(columns=[self.target])

    @property
    def y(self) -> pd.Series:
        return self.frame[self.target]


def load_dataset(path: str | None, target: str = "target") -> Dataset:
    """Read a CSV/Parquet file (or the bundled breast-cancer set) and validate it."""
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


def validate(ds: Dataset) -> None:
    """Raise DataError for data that cannot train a classifier."""
    frame = ds.frame
    if frame.empty or len(frame.columns) == 0:
        raise DataError(f"data has no rows: {ds.source}")
    if ds.target not in frame.columns:
        cols = ", ".join(map(str, frame.columns[:8])) + (", …" if len(frame.columns) > 8 else "")
        raise DataError(f"target column '{ds.target}' not found in data (columns: {cols})")
    features = frame.drop(columns=[ds.target])
    if features.shape[1] == 0:
        raise DataError("data has no feature columns besides the target")
    non_numeric = [str(c) for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise DataError(
            "non-numeric feature columns: " + ", ".join(non_numeric[:5])
            + (" …" if len(non_numeric) > 5 else "") + " (encode or drop them before training)"
        )
    if features.isna().any().any():
        bad = [str(c) for c in features.columns if features[c].isna().any()]
        raise DataError(f"missing values in feature columns: {', '.join(bad[:5])} (impute or drop them)")
    if frame[ds.target].isna().any():
        raise DataError(f"target column '{ds.target}' has missing values")
    if frame[ds.target].nunique() < 2:
        raise DataError(f"target column '{ds.target}' has fewer than 2 classes")
    if len(frame) < 10:
        raise DataError(f"data has only {len(frame)} rows; at least 10 are needed")
