"""Unit tests: loading and validating training data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import BUNDLED, DataError, load_dataset


@pytest.fixture()
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    df["label"] = (df["a"] > 0).astype(int)
    return df


def test_bundled_default_has_features_and_binary_target():
    ds = load_dataset(None)
    assert ds.source.endswith("breast_cancer.csv")
    assert ds.X.shape == (569, 30)
    assert set(ds.y.unique()) == {0, 1}
    assert load_dataset(BUNDLED).X.shape == (569, 30)


def test_csv_and_parquet_round_trip(tmp_path, frame):
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        ds = load_dataset(str(tmp_path / name), "label")
        assert list(ds.X.columns) == ["a", "b", "c"]
        assert ds.y.tolist() == frame["label"].tolist()


@pytest.mark.parametrize(
    "setup, target, message",
    [
        (lambda p, f: None, "label", "data file not found"),
        (lambda p, f: p.write_text(""), "label", "data file is empty"),
        (lambda p, f: p.write_text("a,b,label\n"), "label", "data has no rows"),
        (lambda p, f: f.to_csv(p, index=False), "nope", "target column 'nope' not found"),
        (lambda p, f: f.assign(colour="red").to_csv(p, index=False), "label", "non-numeric feature columns: colour"),
        (lambda p, f: f.assign(a=np.nan).to_csv(p, index=False), "label", "missing values in feature columns: a"),
        (lambda p, f: f.assign(label=1).to_csv(p, index=False), "label", "fewer than 2 classes"),
        (lambda p, f: p.write_text('a,b\n1,"2\n'), "a", "cannot read"),
    ],
)
def test_bad_data_gives_one_clear_error(tmp_path, frame, setup, target, message):
    path = tmp_path / "data.csv"
    setup(path, frame)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), target)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unsupported_extension(tmp_path, frame):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported data file type"):
        load_dataset(str(path), "label")
