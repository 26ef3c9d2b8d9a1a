"""The run's dataset input: digest and schema equal to what mlflow.data.from_pandas computes."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from training.data import (
    PENGUINS,
    Dataset,
    load_dataset,
    mlflow_dataset,
    pandas_digest,
    pandas_schema,
)


def _frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    n = 300
    text = pd.Series(rng.choice(["a", "b", "c"], n), dtype="str")
    gappy = text.copy()
    gappy[::7] = np.nan
    frames = {
        "penguins": pd.read_csv(PENGUINS),
        "breast_cancer": load_dataset(None).frame,
        "mixed": pd.DataFrame({
            "f": rng.normal(size=n), "f_gaps": np.where(rng.random(n) < 0.1, np.nan, 1.5),
            "i": rng.integers(0, 9, n), "b": rng.random(n) < 0.5,
            "s": text, "s_gaps": gappy,
            "obj": pd.Series(["x", 1, 2.5, None] * (n // 4), dtype=object),
            "obj_str": pd.Series(["x", "y", "z"] * (n // 3), dtype=object),
            "cat": pd.Series(rng.choice(["u", "v"], n)).astype("category"),
            "f32": np.where(rng.random(n) < 0.1, np.nan, 2.0).astype(np.float32),
            "int_na": pd.array([1, None, 3] * (n // 3), dtype="Int64"),
            "when": pd.date_range("2024-01-01", periods=n, freq="h"),
            "y": rng.choice(["yes", "no"], n),
        }),
        # Past MLflow's 10,000-row digest window: a gap only after it still matters.
        "long": pd.DataFrame({"s": pd.Series(["p"] * 12_000 + [np.nan], dtype="str"),
                              "x": np.arange(12_001.0), "y": [0, 1] * 6_000 + [0]}),
    }
    # MLflow infers no schema at all for a column mixing types: compare the others column by column too.
    frames["typed"] = frames["mixed"].drop(columns=["obj"])
    return frames


@pytest.mark.parametrize("name", list(_frames()))
def test_digest_and_schema_equal_mlflows(name):
    import mlflow.data
    from mlflow.data.digest_utils import compute_pandas_digest

    df = _frames()[name]
    assert pandas_digest(df) == compute_pandas_digest(df)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow's hint about integer columns
        dataset = mlflow.data.from_pandas(df, source="/data/x.csv", targets=df.columns[-1], name="x")
        expected = dataset.schema
        theirs = dataset._to_mlflow_entity()
    assert pandas_schema(df) == expected
    assert (expected is None) == (name == "mixed")
    target = df.columns[-1]
    ours = mlflow_dataset(Dataset(frame=df, target=target, source="/data/x.csv", name="x"))
    assert ours._to_mlflow_entity() == theirs
