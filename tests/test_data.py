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
        (lambda p, f: f.assign(label=1).to_csv(p, index=False), "label", "target column 'label' is constant (1"),
        (lambda p, f: f.assign(label=np.nan).to_csv(p, index=False), "label", "target column 'label' has no values"),
        (lambda p, f: f[["label"]].to_csv(p, index=False), "label", "no feature columns besides the target"),
        (lambda p, f: f.assign(label=[0, 1] + [np.nan] * 38).to_csv(p, index=False), "label", "only 2 rows with a target"),
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


def test_text_and_missing_features_are_accepted(tmp_path, frame):
    frame.assign(colour="red", a=np.nan).to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(str(tmp_path / "d.csv"), "label")
    assert list(ds.X.columns) == ["a", "b", "c", "colour"]


def test_rows_without_target_are_dropped_and_counted(tmp_path, frame, caplog):
    frame.loc[[3, 7, 11], "label"] = np.nan
    frame.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(str(tmp_path / "d.csv"), "label")
    assert ds.dropped_rows == 3 and len(ds.frame) == 37 and ds.y.notna().all()
    assert ds.y.dtype == "int64"  # read as floats because of the gaps, integers again without them
    assert "dropped 3 of 40 rows whose target 'label' is missing" in caplog.text


def test_bundled_penguins_csv():
    ds = load_dataset("penguins", "species")
    assert ds.frame.shape == (344, 8)
    assert sorted(ds.y.unique()) == ["Adelie", "Chinstrap", "Gentoo"]
    assert int(ds.X.isna().sum().sum()) == 19


def test_unsupported_extension(tmp_path, frame):
    path = tmp_path / "data.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match="unsupported data file type"):
        load_dataset(str(path), "label")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(
    "bad, kinds",
    [([np.inf] * 6, "inf"), ([np.inf] * 4 + [-np.inf] * 2, "inf, -inf"), ([-np.inf], "-inf")],
)
def test_a_non_finite_target_is_refused_with_its_count(tmp_path, suffix, bad, kinds):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x1": rng.normal(size=300), "x2": rng.choice(["a", "b"], 300), "y": rng.normal(size=300)})
    df.loc[[5 + 40 * i for i in range(len(bad))], "y"] = bad
    df.loc[[7], "y"] = np.nan  # missing targets are still dropped, not counted as non-finite
    path = tmp_path / f"inf{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path)
    with pytest.raises(DataError) as err:
        load_dataset(str(path), "y")
    values = "value" if len(bad) == 1 else "values"
    assert str(err.value) == f"target column 'y' has {len(bad)} non-finite {values} ({kinds})"
