"""Unit tests: loading and validating training data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data import BUNDLED, PENGUINS, DataError, load_dataset


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


def _penguins_with_header(path, change) -> None:
    """The bundled penguins CSV with its header cells changed by ``change`` (a list -> list)."""
    lines = Path(PENGUINS).read_text().splitlines()
    lines[0] = ",".join(change(lines[0].split(",")))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize(
    "change, message",
    [
        (lambda h: h[:3] + ["bill_length_mm"] + h[4:], "duplicate column names: bill_length_mm"),
        (lambda h: [h[0], "sex"] + h[2:7] + ["species"],
         "duplicate column names: sex, species"),
        (lambda h: h[:7] + [""], "column 8 of the header has no name: name it or remove the column"),
        (lambda h: h[:2] + ["  "] + h[3:7] + [""],
         "columns 3, 8 of the header have no name: name them or remove the columns"),
        (lambda h: [""] + h[1:], "column 1 of the header has no name: name it or remove the column "
                                 "(an unnamed first column is usually a saved row index: write the file "
                                 "with index=False)"),
    ],
)
def test_a_bad_csv_header_is_refused_as_written(tmp_path, bom, change, message):
    # pandas would rename these (bill_length_mm.1, Unnamed: 7) and the model would train on them.
    path = tmp_path / "penguins.csv"
    _penguins_with_header(path, change)
    path.write_bytes(bom + path.read_bytes())
    with pytest.raises(DataError) as err:
        load_dataset(str(path), "species")
    assert str(err.value) == message


def test_a_header_one_name_short_of_its_rows_is_refused(tmp_path):
    # pandas would take the first column (island) as the row index and shift every name one to the right.
    path = tmp_path / "penguins.csv"
    _penguins_with_header(path, lambda h: h[1:])
    with pytest.raises(DataError) as err:
        load_dataset(str(path), "island")
    assert str(err.value) == ("the first data row has 8 values but the header names 7 columns: name every column in "
                              "the header (a saved row index needs a name, or write the file with index=False)")
    _penguins_with_header(path, lambda h: h)  # as written: fine
    assert load_dataset(str(path), "species").X.shape[1] == 7


def test_a_header_is_read_as_pandas_reads_it(tmp_path):
    # A BOM, blank lines before the header, a quoted name holding a comma and a name that only looks
    # like pandas' renaming of a duplicate: all fine.
    path = tmp_path / "d.csv"
    rows = "\n".join(f"{i},{i % 2},{i * 2},{i % 3}" for i in range(20))
    path.write_bytes(b"\xef\xbb\xbf\n\n" + f'"a,b",a,a.1,label\n{rows}\n'.encode())
    ds = load_dataset(str(path), "label")
    assert list(ds.frame.columns) == ["a,b", "a", "a.1", "label"]


def test_a_non_utf8_header_is_left_to_the_reader(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("caf\xe9,label\n1,0\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(str(path), "label")


def test_parquet_column_names_are_checked_too(tmp_path, frame):
    frame.rename(columns={"b": ""}).to_parquet(tmp_path / "d.parquet")
    with pytest.raises(DataError) as err:
        load_dataset(str(tmp_path / "d.parquet"), "label")
    assert str(err.value) == "column 2 has no name: name it or remove the column"
