"""Serving a team's own table: penguins (strings, nulls, three string classes, histogram gradient
boosting) and diabetes (regression), trained by the project, served for real.

MLflow's pyfunc is the oracle: whatever the service answers for raw rows equals
``mlflow.pyfunc.load_model(...).predict`` on the same rows, bit for bit, on random valid rows
(nulls and unseen categories included) in every request format.
"""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.app import create_app
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings
from tests.helpers import ROOT, sqlite_uri, start_serving, train

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PENGUINS = ROOT / "training" / "datasets" / "penguins.csv"
COLUMNS = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from sklearn.datasets import load_diabetes

    folder = tmp_path_factory.mktemp("mixed")
    uri = sqlite_uri(folder)
    load_diabetes(as_frame=True).frame.to_csv(folder / "diabetes.csv", index=False)
    train(uri, "--data", str(PENGUINS), "--target", "species", "--model-name", "penguins",
          "--model", "hist_gradient_boosting", "--promote", "production", "--experiment", "mixed")
    train(uri, "--data", str(folder / "diabetes.csv"), "--target", "target", "--model-name", "diabetes",
          "--promote", "production", "--experiment", "mixed")
    return uri, folder


def client_for(store, name: str):
    uri, folder = store
    s = Settings(tracking_uri=uri, model_name=name, model_cache_dir=folder / "models", log_dir=folder / "logs")
    manager = ModelManager(s, Metrics())
    assert manager.check()["error"] is None
    return create_app(s, manager).test_client(), manager


@pytest.fixture(scope="module")
def penguins(store):
    import mlflow

    client, manager = client_for(store, "penguins")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.pyfunc.load_model(str(manager.current.loaded.path))
    return client, manager, model


@pytest.fixture(scope="module")
def diabetes(store):
    client, manager = client_for(store, "diabetes")
    return client, manager


def oracle(model, rows: list[list]) -> tuple[np.ndarray, np.ndarray]:
    """pyfunc's predictions and scikit-learn's probabilities on the rows as a user's DataFrame."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for c in ("bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"):
        frame[c] = frame[c].astype("float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(model.predict(frame)), model.get_raw_model().predict_proba(frame)


def bodies(rows: list[list]) -> dict[str, tuple[str, bytes]]:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    csv = io.StringIO()
    frame.to_csv(csv, index=False)
    return {
        "dataframe_split": ("application/json", json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}).encode()),
        "dataframe_records": ("application/json",
                              json.dumps({"dataframe_records": [dict(zip(COLUMNS, r, strict=True)) for r in rows]}).encode()),
        "csv": ("text/csv", csv.getvalue().encode()),
    }


ISLANDS = st.sampled_from(["Biscoe", "Dream", "Torgersen", "Atlantis", "biscoe", "Biscoe Island"])  # "" is a missing value in CSV
SEXES = st.one_of(st.none(), st.sampled_from(["male", "female", "unknown"]))


def optional_float(lo: float, hi: float):
    return st.one_of(st.none(), st.floats(lo, hi, allow_nan=False, allow_infinity=False))


ROW = st.tuples(ISLANDS, optional_float(25, 65), optional_float(12, 23), optional_float(160, 240),
                optional_float(2500, 6500), SEXES, st.integers(2005, 2011)).map(list)


def test_the_penguins_model_takes_the_compiled_fast_path(penguins):
    client, manager, _ = penguins
    info = client.get("/api/model/info").get_json()
    assert info["prediction_path"] == "compiled" and info["fast_path"] is True, info["fast_path_reason"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=12))
def test_raw_rows_are_predicted_as_pyfunc_predicts_them(penguins, rows):
    client, manager, model = penguins
    expected, proba = oracle(model, rows)
    for fmt, (ctype, body) in bodies(rows).items():
        resp = client.post("/invocations", data=body, headers={"Content-Type": ctype})
        assert resp.status_code == 200, (fmt, resp.get_json())
        assert resp.get_json()["predictions"] == expected.tolist(), fmt
    resp = client.post("/api/predict", data=bodies(rows)["dataframe_split"][1], headers={"Content-Type": "application/json"})
    body = resp.get_json()
    assert body["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    got = np.array(body["probabilities"])
    assert got.shape == proba.shape and np.array_equal(got.view(np.uint64), proba.view(np.uint64))


def test_the_frame_path_and_pyfunc_agree_bit_for_bit_inside_the_service(penguins):
    """The same rows through the frame path and through the pyfunc path of the same runtime."""
    client, manager, _ = penguins
    rt = manager.current
    rows = [["Biscoe", 47.5, None, 215.0, 5200.0, None, 2008], ["Dream", None, None, None, None, None, 2009],
            ["Atlantis", 38.1, 18.6, 190.0, 3450.0, "female", 2007]]
    body = json.dumps({"dataframe_split": {"columns": COLUMNS, "data": rows}}).encode()
    fast = rt.predict(rt.parse(body, "json"), with_proba=True)
    frame_native, rt.frame_native = rt.frame_native, None
    try:
        slow = rt.predict(rt.parse(body, "json"), with_proba=True)
    finally:
        rt.frame_native = frame_native
    assert list(fast.labels) == list(slow.labels)
    assert np.array_equal(fast.proba.view(np.uint64), slow.proba.view(np.uint64))


def test_integers_in_double_columns_are_taken_as_doubles(penguins):
    client, _, model = penguins
    rows = [["Dream", 40, 18, 190, 3500, "male", 2009]]
    resp = client.post("/invocations", json={"dataframe_split": {"columns": COLUMNS, "data": rows}})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["predictions"] == oracle(model, [[float(v) if isinstance(v, int) and i in (1, 2, 3, 4) else v
                                                            for i, v in enumerate(rows[0])]])[0].tolist()


@pytest.mark.parametrize(("row", "code", "column"), [
    ([None, 40.0, 18.0, 190.0, 3500.0, "male", 2009], "MISSING_VALUE", "island"),
    (["Dream", 40.0, 18.0, 190.0, 3500.0, "male", None], "MISSING_VALUE", "year"),
    (["Dream", "forty", 18.0, 190.0, 3500.0, "male", 2009], "INVALID_VALUE_TYPE", "bill_length_mm"),
    (["Dream", 40.0, 18.0, 190.0, 3500.0, True, 2009], "INVALID_VALUE_TYPE", "sex"),
])
def test_a_bad_value_is_a_400_naming_its_column(penguins, row, code, column):
    """/api/predict validates strictly (/invocations answers these as MLflow does: the parity suite)."""
    client, _, _ = penguins
    resp = client.post("/api/predict", json={"dataframe_split": {"columns": COLUMNS, "data": [row]}})
    body = resp.get_json()
    assert resp.status_code == 400 and body["error_code"] == code and f"'{column}'" in body["message"], body


CSV_HEADER = ",".join(COLUMNS)


@pytest.mark.parametrize("year", ["2008.5", "99999999999999999999999", "1e30", "9223372036854775808", "abc"])
def test_a_csv_value_that_is_not_a_whole_number_in_an_integer_column_is_refused(penguins, year):
    """pandas reads such a column as floats or text; scoring it would silently change the value."""
    client, _, _ = penguins
    body = f"{CSV_HEADER}\nBiscoe,45.1,15.2,215.0,5000.0,male,{year}\n".encode()
    strict = client.post("/api/predict", data=body, headers={"Content-Type": "text/csv"})
    msg = strict.get_json()
    assert strict.status_code == 400 and msg["error_code"] == "INVALID_VALUE_TYPE", msg
    assert msg["message"].startswith("row 0, column 'year': expected long"), msg
    as_mlflow = client.post("/invocations", data=body, headers={"Content-Type": "text/csv"})
    assert as_mlflow.status_code == 400 and as_mlflow.get_json()["error_code"] == "BAD_REQUEST", as_mlflow.get_json()


def test_a_csv_byte_order_mark_is_not_part_of_the_first_column_name(penguins):
    client, _, model = penguins
    body = f"{CSV_HEADER}\nBiscoe,45.1,15.2,215.0,5000.0,male,2008\n".encode()
    plain = client.post("/api/predict", data=body, headers={"Content-Type": "text/csv"})
    bom = client.post("/api/predict", data=b"\xef\xbb\xbf" + body, headers={"Content-Type": "text/csv"})
    assert plain.status_code == bom.status_code == 200, bom.get_json()
    assert bom.get_json()["predictions"] == plain.get_json()["predictions"]


def _parquet(frame) -> bytes:
    buf = io.BytesIO()
    frame.to_parquet(buf, compression="zstd")
    return buf.getvalue()


def test_a_parquet_body_that_decodes_beyond_the_limits_is_refused_before_decoding(penguins):
    """A few hundred KB of compressed Parquet can hold millions of rows: checked from its footer."""
    client, _, _ = penguins
    n = 800_000  # 5.6M values: more than a 10 MiB JSON body holds
    bomb = pd.DataFrame({"island": ["Biscoe"] * n, "bill_length_mm": np.full(n, 45.1), "bill_depth_mm": np.full(n, 15.2),
                         "flipper_length_mm": np.full(n, 215.0), "body_mass_g": np.full(n, 5000.0),
                         "sex": ["male"] * n, "year": np.full(n, 2008)})
    body = _parquet(bomb)
    assert len(body) < 1024 * 1024
    r = client.post("/invocations", data=body, headers={"Content-Type": "application/vnd.apache.parquet"})
    assert r.status_code == 413 and r.get_json()["error_code"] == "PAYLOAD_TOO_LARGE", r.get_json()
    assert f"{n} rows x 7 columns" in r.get_json()["message"]
    wide = pd.DataFrame({**{f"c{i}": [1] for i in range(5000)}, **{c: bomb[c].head(1) for c in COLUMNS}})
    r = client.post("/invocations", data=_parquet(wide), headers={"Content-Type": "application/vnd.apache.parquet"})
    assert r.status_code == 400 and r.get_json()["error_code"] == "TOO_MANY_COLUMNS", r.get_json()
    ok = client.post("/invocations", data=_parquet(bomb.head(3)), headers={"Content-Type": "application/vnd.apache.parquet"})
    assert ok.status_code == 200 and len(ok.get_json()["predictions"]) == 3, ok.get_json()


def test_regression_predicts_floats_without_classes_or_probabilities(diabetes, store):
    import mlflow

    client, manager = diabetes
    rt = manager.current
    frame = rt.loaded.input_example.head(3)
    body = {"dataframe_split": {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}}
    resp = client.post("/api/predict", json=body)
    out = resp.get_json()
    assert resp.status_code == 200, out
    assert "probabilities" not in out and "classes" not in out, out
    assert all(isinstance(p, float) for p in out["predictions"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = mlflow.pyfunc.load_model(str(rt.loaded.path)).predict(frame)
    assert out["predictions"] == np.asarray(expected).tolist()


def test_gunicorn_serves_penguins_raw_rows_exactly_as_pyfunc(store, penguins, tmp_path):
    """The must-show: the real service (gunicorn, 2 workers) on the registry's Production penguins."""
    uri, _ = store
    _, _, model = penguins
    rows = [["Biscoe", 47.5, None, 215.0, 5200.0, None, 2008], ["Torgersen", 39.1, 18.7, 181.0, 3750.0, "male", 2007],
            ["Atlantis", None, 17.0, None, 4000.0, "unknown", 2009]]
    expected, _ = oracle(model, rows)
    ctx, port = start_serving(uri, tmp_path, workers=1, MODEL_NAME="penguins")
    with ctx:
        for fmt, (ctype, body) in bodies(rows).items():
            resp = requests.post(f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": ctype},
                                 timeout=30)
            assert resp.status_code == 200, (fmt, resp.text)
            assert resp.json()["predictions"] == expected.tolist(), fmt
            assert resp.headers["X-Model-Version"] == "1"
