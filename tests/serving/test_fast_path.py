"""The native fast path gives the pyfunc path's predictions bit for bit (in process, no server)."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from mlops.model_io import download_version
from serving.runtime import ModelRuntime, VersionMeta
from tests.serving.conftest import MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runtime(trained_store, tmp_path_factory) -> ModelRuntime:
    path = download_version(MODEL, "1", tmp_path_factory.mktemp("fast") / "1", trained_store.uri)
    return ModelRuntime.load(path, VersionMeta(MODEL, "1", "stage:Production"))


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_breast_cancer(as_frame=True).frame.drop(columns=["target"])


def bodies(df: pd.DataFrame) -> dict[str, tuple[bytes, str]]:
    cols = list(df.columns)
    rows = df.to_numpy().tolist()
    records = [dict(zip(cols, r, strict=True)) for r in rows]
    return {
        "dataframe_split": (json.dumps({"dataframe_split": {"columns": cols, "data": rows}}).encode(), "json"),
        "dataframe_records": (json.dumps({"dataframe_records": records}).encode(), "json"),
        "instances": (json.dumps({"instances": records}).encode(), "json"),
        "inputs": (json.dumps({"inputs": {c: df[c].tolist() for c in cols}}).encode(), "json"),
        "csv": (df.to_csv(index=False).encode(), "csv"),
    }


def mlflow_reference(rt: ModelRuntime, payload: bytes, kind: str):
    """What `mlflow models serve` computes: MLflow's own parsing, then pyfunc predict."""
    from mlflow.pyfunc.scoring_server import infer_and_parse_data, parse_csv_input

    schema = rt.loaded.signature.inputs
    if kind == "csv":
        data = parse_csv_input(io.StringIO(payload.decode()), schema=schema)
    else:
        data = infer_and_parse_data(json.loads(payload), schema)
    return rt.loaded.pyfunc.predict(data)


def sklearn_on_parsed_frame(rt: ModelRuntime, df: pd.DataFrame):
    """predict_proba on the DataFrame MLflow builds from a request (its memory layout matters)."""
    rows = json.loads(json.dumps(df.to_numpy().tolist()))
    return rt.loaded.sklearn_model.predict_proba(pd.DataFrame(rows, columns=list(df.columns)))


def bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_the_default_model_takes_the_native_path(runtime):
    assert runtime.fast, runtime.native_reason
    assert runtime.classes == [0, 1]


@pytest.mark.parametrize("n", [1, 7, 100, 569])
def test_native_equals_pyfunc_bit_for_bit_in_every_format(runtime, frame, n):
    df = frame.sample(n=n, random_state=n) if n < len(frame) else frame
    for fmt, (payload, kind) in bodies(df).items():
        parsed = runtime.parse(payload, kind)
        assert parsed.array is not None, fmt
        got = runtime.predict(parsed, with_proba=True)
        ref = mlflow_reference(runtime, payload, kind)
        assert bits_equal(got.labels, ref), fmt
        assert bits_equal(got.proba, sklearn_on_parsed_frame(runtime, df)), fmt


def test_single_rows_bit_for_bit_on_perturbed_data(runtime, frame):
    """Row by row (the commonest request), on data the model never saw, probabilities included."""
    rng = np.random.default_rng(7)
    X = frame.to_numpy()[rng.integers(0, len(frame), 200)] * rng.uniform(0.8, 1.2, (200, frame.shape[1]))
    for row in X:
        df = pd.DataFrame([row], columns=frame.columns)
        payload = json.dumps({"dataframe_split": {"columns": list(frame.columns), "data": [row.tolist()]}}).encode()
        got = runtime.predict(runtime.parse(payload, "json"), with_proba=True)
        assert bits_equal(got.labels, mlflow_reference(runtime, payload, "json"))
        assert bits_equal(got.proba, sklearn_on_parsed_frame(runtime, df))


def test_pyfunc_fallback_gives_the_same_answers(trained_store, tmp_path, frame):
    path = download_version(MODEL, "1", tmp_path / "1", trained_store.uri)
    rt = ModelRuntime.load(path, VersionMeta(MODEL, "1", "stage:Production"))
    rt.native = None  # as for a flavor without a native path
    native = ModelRuntime.load(path, VersionMeta(MODEL, "1", "stage:Production"))
    for _fmt, (payload, kind) in bodies(frame.head(50)).items():
        slow = rt.predict(rt.parse(payload, kind), with_proba=True)
        fast = native.predict(native.parse(payload, kind), with_proba=True)
        assert bits_equal(slow.labels, fast.labels)
        assert bits_equal(slow.proba, fast.proba)


def _local_copy(trained_store, folder):
    return download_version(MODEL, "1", folder / "1", trained_store.uri)


def test_a_model_without_input_example_is_smoke_tested_on_a_synthetic_row(trained_store, tmp_path):
    from mlflow.models import Model

    path = _local_copy(trained_store, tmp_path)
    mlmodel = Model.load(str(path / "MLmodel"))
    mlmodel.saved_input_example_info = None
    mlmodel.save(str(path / "MLmodel"))
    for name in ("input_example.json", "serving_input_example.json"):
        (path / name).unlink()
    rt = ModelRuntime.load(path, VersionMeta(MODEL, "1", "stage:Production"))
    assert rt.fast and rt.loaded.input_example.shape == (1, 30)


def test_a_model_failing_its_smoke_test_is_refused(trained_store, tmp_path):
    from mlops.model_io import ModelLoadError

    path = _local_copy(trained_store, tmp_path)
    example = json.loads((path / "input_example.json").read_text())
    example["columns"].pop(0)  # a column the model needs
    for row in example["data"]:
        row.pop(0)
    (path / "input_example.json").write_text(json.dumps(example))
    with pytest.raises(ModelLoadError) as info:
        ModelRuntime.load(path, VersionMeta(MODEL, "1", "stage:Production"))
    assert info.value.phase == "smoke_test"

    (path / "input_example.json").write_text("{not json")  # declared but unreadable: refused too
    with pytest.raises(ModelLoadError, match="input example"):
        ModelRuntime.load(path, VersionMeta(MODEL, "1", "stage:Production"))
