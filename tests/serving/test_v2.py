"""Open Inference Protocol (KServe V2, REST) against the real service under gunicorn.

Two services: the default breast-cancer model (numeric, native path, API_TOKEN set) and a
penguins model (strings, nulls, integers: the frame path). NVIDIA's ``tritonclient`` (JSON mode,
``binary_data=False``) and raw bodies shaped as the protocol specification's examples are the
clients; ``/invocations`` and ``/api/predict`` of the same service are the oracle, bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import requests

from serving import codecs_v2, inputs
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings
from tests.conftest import record_number
from tests.helpers import BIN, ROOT, gauge, run, sqlite_uri, start_serving, train
from tests.serving.conftest import MODEL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

API_TOKEN = "v2-test-token"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PENGUINS = ROOT / "training" / "datasets" / "penguins.csv"
P_COLUMNS = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "sex", "year"]
P_TYPES = ["BYTES", "FP64", "FP64", "FP64", "FP64", "BYTES", "INT64"]
P_ROWS = [["Biscoe", 47.5, None, 215.0, 5200.0, None, 2008], ["Dream", None, None, None, None, None, 2009],
          ["Atlantis", 38.1, 18.6, 190.0, 3450.0, "female", 2007], ["Torgersen", 39.1, 18.7, 181.0, 3750.0, "male", 2007]]


@pytest.fixture(scope="module")
def penguins_uri(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("v2-penguins")
    uri = sqlite_uri(folder)
    train(uri, "--data", str(PENGUINS), "--target", "species", "--model-name", "penguins",
          "--model", "hist_gradient_boosting", "--promote", "production", "--experiment", "v2")
    return uri


@pytest.fixture(scope="module")
def services(trained_store, penguins_uri, tmp_path_factory):
    """(breast-cancer URL, penguins URL, breast-cancer tmp folder): one worker each."""
    bc_tmp = tmp_path_factory.mktemp("v2-bc")
    p_tmp = tmp_path_factory.mktemp("v2-p")
    with contextlib.ExitStack() as stack:
        bc_ctx, bc_port = start_serving(trained_store.uri, bc_tmp, workers=1, API_TOKEN=API_TOKEN)
        p_ctx, p_port = start_serving(penguins_uri, p_tmp, workers=1, MODEL_NAME="penguins")
        stack.enter_context(bc_ctx)
        stack.enter_context(p_ctx)
        yield f"http://127.0.0.1:{bc_port}", f"http://127.0.0.1:{p_port}", bc_tmp


@pytest.fixture(scope="module")
def bc(services) -> str:
    return services[0]


@pytest.fixture(scope="module")
def pg(services) -> str:
    return services[1]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame.drop(columns=["target"])


def triton(url: str):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(url=url.removeprefix("http://"))


def column_body(df: pd.DataFrame, datatype: str = "FP64", **extra) -> dict:
    return {**extra, "inputs": [{"name": c, "shape": [len(df)], "datatype": datatype, "data": df[c].tolist()}
                                for c in df.columns]}


def invocations(url: str, df_or_rows, columns=None, headers=None) -> dict:
    if isinstance(df_or_rows, pd.DataFrame):
        columns, rows = list(df_or_rows.columns), df_or_rows.to_numpy().tolist()
    else:
        rows = df_or_rows
    body = {"dataframe_split": {"columns": columns, "data": rows}}
    r = requests.post(url + "/api/predict", json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    plain = requests.post(url + "/invocations", json=body, headers=headers, timeout=30).json()
    assert plain["predictions"] == r.json()["predictions"]
    return r.json()


def infer(url: str, body, model: str = MODEL, headers=None, version: str | None = None, **kw) -> requests.Response:
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    if isinstance(body, (bytes, str)):
        return requests.post(url + path, data=body, headers=headers, timeout=30, **kw)
    return requests.post(url + path, json=body, headers=headers, timeout=30, **kw)


def same_bits(a, b) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a.view(np.uint64), b.view(np.uint64))


def outputs(resp: requests.Response) -> dict[str, dict]:
    return {o["name"]: o for o in resp.json()["outputs"]}


# ---------------------------------------------------------------------------------------------
# Server and model endpoints
# ---------------------------------------------------------------------------------------------


def test_server_health_and_metadata_with_tritonclient(bc):
    client = triton(bc)
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "ml-devops-app" and meta["extensions"] == [] and meta["version"]
    assert requests.get(bc + "/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(bc + "/v2/health/ready", timeout=10).json() == {"ready": True}


def test_model_ready_for_the_served_name_and_version_only(bc):
    client = triton(bc)
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "7") and not client.is_model_ready("other-model")
    assert requests.get(bc + f"/v2/models/{MODEL}/ready", timeout=10).json() == {"name": MODEL, "ready": True}
    r = requests.get(bc + f"/v2/models/{MODEL}/versions/7/ready", timeout=10)
    assert r.status_code == 404 and r.json() == {"error": f"version '7' of model '{MODEL}' is not served; "
                                                          "the served version is 1"}


def test_model_metadata_comes_from_the_signature(bc, frame):
    meta = triton(bc).get_model_metadata(MODEL, headers=AUTH)
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "mlflow_sklearn"
    assert meta["inputs"] == [{"name": c, "datatype": "FP64", "shape": [-1]} for c in frame.columns]
    assert meta["outputs"][0] == {"name": "predictions", "datatype": "INT64", "shape": [-1]}
    assert meta["outputs"][1]["name"] == "probabilities" and meta["outputs"][1]["shape"] == [-1, 2]
    assert json.loads(meta["outputs"][1]["parameters"]["classes"]) == [0, 1]
    assert json.loads(meta["parameters"]["matrix_input"]) == {"name": "input-0", "datatype": "FP64", "shape": [-1, 30]}
    versioned = requests.get(bc + f"/v2/models/{MODEL}/versions/1", headers=AUTH, timeout=10).json()
    assert versioned == meta


@pytest.mark.parametrize(("path", "status", "needle"), [
    (f"/v2/models/{MODEL}/versions/2", 404, "the served version is 1"),
    ("/v2/models/another-model", 404, f"this server serves '{MODEL}'"),
    ("/v2/models/another-model/versions/1/infer", 405, "GET is not allowed"),
    ("/v2/models/x/y/z", 404, "no V2 endpoint"),
])
def test_wrong_model_version_or_path_is_an_error_object(bc, path, status, needle):
    r = requests.get(bc + path, headers=AUTH, timeout=10)
    assert r.status_code == status and list(r.json()) == ["error"] and needle in r.json()["error"], r.text
    if status == 405:
        assert "POST" in r.headers["Allow"]


def test_pyfunc_style_metadata_for_penguins(pg):
    meta = requests.get(pg + "/v2/models/penguins", timeout=10).json()
    assert meta["inputs"] == [{"name": c, "datatype": t, "shape": [-1]} for c, t in zip(P_COLUMNS, P_TYPES, strict=True)]
    assert meta["outputs"][0] == {"name": "predictions", "datatype": "BYTES", "shape": [-1]}
    assert json.loads(meta["outputs"][1]["parameters"]["classes"]) == ["Adelie", "Chinstrap", "Gentoo"]
    assert "parameters" not in meta  # mixed types: no single 2-D tensor form


# ---------------------------------------------------------------------------------------------
# Inference: numeric model (native path)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 100])
def test_tritonclient_infer_equals_invocations(bc, frame, n):
    import tritonclient.http as httpclient

    df = frame.head(n)
    inputs = []
    for c in df.columns:
        t = httpclient.InferInput(c, [n], "FP64")
        t.set_data_from_numpy(df[c].to_numpy(), binary_data=False)
        inputs.append(t)
    outs = [httpclient.InferRequestedOutput("predictions", binary_data=False),
            httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    result = triton(bc).infer(MODEL, inputs, outputs=outs, request_id=f"req-{n}", headers=AUTH)
    expected = invocations(bc, df, headers=AUTH)
    assert result.as_numpy("predictions").tolist() == expected["predictions"]
    assert same_bits(result.as_numpy("probabilities"), expected["probabilities"])
    response = result.get_response()
    assert response["id"] == f"req-{n}" and response["model_name"] == MODEL and response["model_version"] == "1"


def test_one_2d_tensor_fp32_and_column_shapes_n_by_1(bc, frame):
    """FP32 elements are the float32-rounded numbers; /invocations on those same numbers agrees."""
    import tritonclient.http as httpclient

    df = frame.iloc[10:17]
    x32 = df.to_numpy(dtype=np.float32)
    t = httpclient.InferInput("input-0", list(x32.shape), "FP32")
    t.set_data_from_numpy(x32, binary_data=False)
    result = triton(bc).infer(MODEL, [t], outputs=[httpclient.InferRequestedOutput("predictions", binary_data=False)],
                              headers=AUTH)
    same_rows = pd.DataFrame(x32.astype(np.float64), columns=df.columns)
    expected = invocations(bc, same_rows, headers=AUTH)
    assert result.as_numpy("predictions").tolist() == expected["predictions"]
    assert [o["name"] for o in result.get_response()["outputs"]] == ["predictions"]
    by_column = {"inputs": [{"name": c, "shape": [len(df), 1], "datatype": "FP64", "data": df[c].tolist()}
                            for c in df.columns]}
    got = outputs(infer(bc, by_column, headers=AUTH))
    assert got["predictions"]["data"] == invocations(bc, df, headers=AUTH)["predictions"]


def test_spec_example_shapes(bc, frame):
    """The protocol specification's example request (id "42", named outputs), and its two ways to
    give tensor data (natural nested form and flattened) for one 2-D tensor."""
    df = frame.head(2)
    flat = {"id": "42", "inputs": [{"name": "input-0", "shape": [2, 30], "datatype": "FP64",
                                    "data": df.to_numpy().ravel().tolist()}],
            "outputs": [{"name": "probabilities"}]}
    nested = {**flat, "inputs": [{**flat["inputs"][0], "data": df.to_numpy().tolist()}]}
    a, b = infer(bc, flat, headers=AUTH), infer(bc, nested, headers=AUTH)
    assert a.status_code == b.status_code == 200 and a.json() == b.json()
    body = a.json()
    assert body["id"] == "42" and [o["name"] for o in body["outputs"]] == ["probabilities"]
    assert body["outputs"][0]["shape"] == [2, 2] and body["outputs"][0]["datatype"] == "FP64"
    assert same_bits(np.reshape(body["outputs"][0]["data"], (2, 2)), invocations(bc, df, headers=AUTH)["probabilities"])
    # The specification's own example body, sent as is: its tensors are not this model's.
    spec_example = {"id": "42", "inputs": [{"name": "input0", "shape": [2, 2], "datatype": "UINT32", "data": [1, 2, 3, 4]},
                                           {"name": "input1", "shape": [3], "datatype": "BOOL", "data": [True]}],
                    "outputs": [{"name": "output0"}]}
    r = infer(bc, spec_example, headers=AUTH)
    assert r.status_code == 400 and "output0" in r.json()["error"]
    spec_example.pop("outputs")
    r = infer(bc, spec_example, headers=AUTH)
    assert r.status_code == 400 and "input1" in r.json()["error"]  # its shape [3] holds 3 elements, data 1


def test_integers_in_double_columns_and_request_parameters(bc, frame):
    df = frame.head(3).round(0)
    body = column_body(df.astype(np.int64), "INT64", parameters={"content_type": "np", "anything": 1})
    got = outputs(infer(bc, body, headers=AUTH))
    assert got["predictions"]["data"] == invocations(bc, df, headers=AUTH)["predictions"]


def test_v2_answers_like_the_in_process_fast_path(trained_store, frame, tmp_path):
    """The V2 codec builds the very array /invocations' validation builds (native path)."""
    s = Settings(tracking_uri=trained_store.uri, model_name=MODEL, model_cache_dir=tmp_path / "m", log_dir=tmp_path / "l")
    manager = ModelManager(s, Metrics())
    assert manager.check()["error"] is None
    rt = manager.current
    assert rt.fast_path == "native"
    df = frame.head(9)
    theirs = rt.parse(json.dumps({"dataframe_split": {"columns": list(df.columns), "data": df.to_numpy().tolist()}}).encode(),
                      "json")
    body = json.dumps(column_body(df)).encode()
    checked = codecs_v2.to_request(codecs_v2.decode(body), rt).parsed  # every tensor checked in turn
    quick = codecs_v2.to_request(codecs_v2.decode(body), rt, body).parsed  # the one-pass numeric path
    for mine in (checked, quick):
        assert mine.frame is None and theirs.frame is None
        assert mine.array.flags.f_contiguous and mine.array.dtype == theirs.array.dtype
        assert mine.array.tobytes(order="A") == theirs.array.tobytes(order="A")


# ---------------------------------------------------------------------------------------------
# Inference: mixed types (frame path)
# ---------------------------------------------------------------------------------------------


def penguin_body(rows: list[list], shape_n1: bool = False, **extra) -> dict:
    n = len(rows)
    return {**extra, "inputs": [{"name": c, "datatype": t, "shape": [n, 1] if shape_n1 else [n], "data": [r[i] for r in rows]}
                                for i, (c, t) in enumerate(zip(P_COLUMNS, P_TYPES, strict=True))]}


def test_penguins_strings_nulls_and_unseen_categories_equal_invocations(pg):
    expected = invocations(pg, P_ROWS, P_COLUMNS)
    for shape_n1 in (False, True):
        r = infer(pg, penguin_body(P_ROWS, shape_n1, id="p"), model="penguins")
        assert r.status_code == 200, r.text
        got = outputs(r)
        assert got["predictions"] == {"name": "predictions", "datatype": "BYTES", "shape": [len(P_ROWS)],
                                      "data": expected["predictions"]}
        assert same_bits(np.reshape(got["probabilities"]["data"], got["probabilities"]["shape"]), expected["probabilities"])
    # An optional column may be left out altogether: a missing value in every row.
    body = penguin_body(P_ROWS)
    body["inputs"] = [t for t in body["inputs"] if t["name"] != "sex"]
    r = infer(pg, body, model="penguins")
    assert outputs(r)["predictions"]["data"] == invocations(pg, [[*r_[:5], None, r_[6]] for r_ in P_ROWS], P_COLUMNS)["predictions"]


def test_penguins_with_tritonclient_bytes_and_nan(pg):
    import tritonclient.http as httpclient

    # tritonclient writes NaN for a missing number (JSON mode); BYTES elements must be strings
    rows = [*(r for r in P_ROWS if r[5] is not None), ["Dream", 45.2, None, 200.0, None, "male", 2009]]
    inputs = []
    for i, (c, t) in enumerate(zip(P_COLUMNS, P_TYPES, strict=True)):
        values = [r[i] for r in rows]
        arr = (np.array(values, dtype=object) if t == "BYTES" else
               np.array([np.nan if v is None else v for v in values], dtype=np.float64 if t == "FP64" else np.int64))
        inp = httpclient.InferInput(c, [len(rows)], t)
        inp.set_data_from_numpy(arr, binary_data=False)
        inputs.append(inp)
    result = triton(pg).infer("penguins", inputs, outputs=[httpclient.InferRequestedOutput("predictions", binary_data=False)])
    expected = invocations(pg, rows, P_COLUMNS)
    assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predictions").tolist()] == expected["predictions"]


@pytest.mark.parametrize(("name", "mutate", "needle"), [
    ("2-D tensor for mixed types", lambda b: {"inputs": [{"name": "input-0", "shape": [1, 7], "datatype": "BYTES",
                                                         "data": ["Biscoe"] * 7}]}, "same type"),
    ("FP64 for an integer column", lambda b: _retype(b, "year", "FP64", [2008.0] * 4), "'year'"),
    ("BYTES for an integer column", lambda b: _retype(b, "year", "BYTES", ["2008"] * 4), "'year'"),
    ("number in a BYTES tensor", lambda b: _retype(b, "island", "BYTES", [1, "Dream", "Biscoe", "Dream"]), "'island'"),
    ("null in a required column", lambda b: _retype(b, "island", "BYTES", [None, "Dream", "Biscoe", "Dream"]), "'island'"),
    ("required tensor missing", lambda b: {"inputs": [t for t in b["inputs"] if t["name"] != "island"]}, "'island'"),
    ("rows disagree", lambda b: _retype(b, "sex", "BYTES", ["male"]), "'sex'"),
])
def test_penguins_bad_input_names_the_tensor(pg, name, mutate, needle):
    r = infer(pg, mutate(penguin_body(P_ROWS)), model="penguins")
    assert r.status_code == 400 and list(r.json()) == ["error"] and needle in r.json()["error"], (name, r.text)


def _retype(body: dict, column: str, datatype: str, data: list) -> dict:
    body["inputs"] = [{**t, "datatype": datatype, "data": data, "shape": [len(data)]} if t["name"] == column else t
                      for t in body["inputs"]]
    return body


# ---------------------------------------------------------------------------------------------
# Bad input on the numeric model: always a 400 {"error"} naming the tensor
# ---------------------------------------------------------------------------------------------

R = "mean radius"


def _one(df: pd.DataFrame, **override) -> dict:
    body = column_body(df.head(2))
    body["inputs"][0] = {**body["inputs"][0], **override}
    return body


BAD = [
    # (case, body builder (frame → bytes|dict), status, substring of the message)
    ("bad JSON", lambda f: b'{"inputs": [', 400, "not valid JSON"),
    ("empty body", lambda f: b"", 400, "empty"),
    ("not an object", lambda f: b"[1, 2]", 400, "got a list"),
    ("a JSON string", lambda f: b'"inputs"', 400, "got a string"),
    ("no inputs", lambda f: {"id": "1"}, 400, "no 'inputs'"),
    ("inputs not a list", lambda f: {"inputs": {"name": R}}, 400, "'inputs' must be a list"),
    ("inputs empty", lambda f: {"inputs": []}, 400, "'inputs' is empty"),
    ("tensor not an object", lambda f: {"inputs": [[1.0]]}, 400, "inputs[0]"),
    ("tensor without a name", lambda f: {"inputs": [{"shape": [1], "datatype": "FP64", "data": [1.0]}]}, 400, "'name'"),
    ("shape and data length disagree", lambda f: _one(f, shape=[3]), 400, f"'{R}': shape [3] holds 3"),
    ("2-D shape, 1-D length", lambda f: _one(f, shape=[2, 2]), 400, f"'{R}'"),
    ("unknown datatype", lambda f: _one(f, datatype="FP128"), 400, f"'{R}': unknown or unsupported datatype 'FP128'"),
    ("datatype not a string", lambda f: _one(f, datatype=64), 400, f"'{R}': 'datatype'"),
    ("BF16 (not in JSON)", lambda f: _one(f, datatype="BF16"), 400, f"'{R}'"),
    ("BYTES where a number is expected", lambda f: _one(f, datatype="BYTES", data=["17.99", "20.57"]), 400,
     f"'{R}': datatype BYTES does not fit column '{R}'"),
    ("BOOL where a number is expected", lambda f: _one(f, datatype="BOOL", data=[True, False]), 400, f"'{R}'"),
    ("string element in FP64", lambda f: _one(f, data=["17.99", 20.57]), 400, f"'{R}': datatype FP64 needs a number"),
    ("boolean element in FP64", lambda f: _one(f, data=[True, 20.57]), 400, f"'{R}'"),
    ("float element in INT64", lambda f: _one(f, datatype="INT64", data=[17.5, 20]), 400, f"'{R}'"),
    ("data not a list", lambda f: _one(f, data=17.99), 400, f"'{R}': 'data' must be a list"),
    ("data an object", lambda f: _one(f, data={"a": 1}), 400, f"'{R}': 'data' must be a list"),
    ("data missing", lambda f: {"inputs": [{"name": R, "shape": [1], "datatype": "FP64"}]}, 400, f"'{R}': 'data' is missing"),
    ("nested deeper than the shape", lambda f: _one(f, shape=[2], data=[[1.0], [2.0]]), 400, f"'{R}'"),
    ("ragged nesting", lambda f: _one(f, shape=[2, 1], data=[[1.0], 2.0]), 400, f"'{R}'"),
    ("negative shape", lambda f: _one(f, shape=[-2]), 400, f"'{R}': 'shape'"),
    ("shape of booleans", lambda f: _one(f, shape=[True, True]), 400, f"'{R}': 'shape'"),
    ("shape not a list", lambda f: _one(f, shape=2), 400, f"'{R}': 'shape'"),
    ("column tensor of shape [n, 2]", lambda f: _one(f, shape=[1, 2]), 400, f"'{R}': shape [1, 2]"),
    ("unknown tensor name", lambda f: {"inputs": [*column_body(f.head(2))["inputs"],
                                                  {"name": "radius", "shape": [2], "datatype": "FP64", "data": [1, 2]}]},
     400, "unknown input tensor 'radius'"),
    ("missing tensor", lambda f: {"inputs": column_body(f.head(2))["inputs"][1:]}, 400, f"missing input tensor(s) required by the model signature: '{R}'"),
    ("duplicate tensor", lambda f: {"inputs": [*column_body(f.head(2))["inputs"], column_body(f.head(2))["inputs"][0]]},
     400, f"'{R}' is given twice"),
    ("tensors disagree on rows", lambda f: _one(f, shape=[1], data=[1.0]), 400, f"has 2 row(s) but tensor '{R}' has 1"),
    ("null in a required column", lambda f: _one(f, data=[None, 1.0]), 400, f"'{R}': element 0 is a missing value"),
    ("NaN literal", lambda f: json.dumps(_one(f, data=[math.nan, 1.0])).encode(), 400, f"'{R}', element 0"),
    ("Infinity literal", lambda f: json.dumps(_one(f, data=[1.0, math.inf])).encode(), 400, f"'{R}', element 1"),
    ("no rows", lambda f: {"inputs": [{"name": c, "shape": [0], "datatype": "FP64", "data": []} for c in f.columns]},
     400, "holds no rows"),
    ("2-D tensor of the wrong width", lambda f: {"inputs": [{"name": "input-0", "shape": [1, 29], "datatype": "FP64",
                                                             "data": [1.0] * 29}]}, 400, "'input-0': shape [1, 29]"),
    ("2-D tensor with a null", lambda f: {"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                                                      "data": [None] + [1.0] * 29}]}, 400, f"'input-0': element 0 (row 0, column '{R}')"),
    ("unknown output", lambda f: {**column_body(f.head(1)), "outputs": [{"name": "output0"}]}, 400, "unknown output 'output0'"),
    ("outputs not a list", lambda f: {**column_body(f.head(1)), "outputs": "predictions"}, 400, "'outputs'"),
    ("id not a string", lambda f: {**column_body(f.head(1)), "id": 42}, 400, "'id' must be a string"),
    ("parameters not an object", lambda f: {**column_body(f.head(1)), "parameters": [1]}, 400, "'parameters'"),
    ("binary data parameters", lambda f: _one(f, parameters={"binary_data_size": 16}), 400, f"'{R}': binary tensor data"),
    ("too many tensors", lambda f: {"inputs": [{"name": f"c{i}", "shape": [1], "datatype": "FP64", "data": [1.0]}
                                               for i in range(2100)]}, 400, "MAX_COLUMNS"),
]


@pytest.mark.parametrize(("case", "build", "status", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_tensor(bc, frame, case, build, status, needle):
    r = infer(bc, build(frame), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == status, (case, r.status_code, r.text)
    assert list(r.json()) == ["error"] and needle in r.json()["error"], (case, r.text)


def test_content_types_binary_extension_and_auth(bc, frame):
    body = json.dumps(column_body(frame.head(1)))
    no_type = infer(bc, body.encode(), headers=AUTH)  # tritonclient sends no Content-Type
    assert no_type.status_code == 200, no_type.text
    r = infer(bc, body, headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    r = infer(bc, body, headers={**AUTH, "Inference-Header-Content-Length": str(len(body))})
    assert r.status_code == 400 and "binary_data=False" in r.json()["error"]
    r = infer(bc, body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and list(r.json()) == ["error"]
    assert requests.get(bc + f"/v2/models/{MODEL}", timeout=10).status_code == 401
    for open_path in ("/v2", "/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):
        assert requests.get(bc + open_path, timeout=10).status_code == 200, open_path


def test_version_in_the_infer_url(bc, frame):
    body = column_body(frame.head(1))
    ok = infer(bc, body, headers=AUTH, version="1")
    assert ok.status_code == 200 and ok.headers["X-Model-Version"] == "1"
    r = infer(bc, body, headers=AUTH, version="3")
    assert r.status_code == 404 and r.json() == {"error": f"version '3' of model '{MODEL}' is not served; "
                                                          "the served version is 1"}
    r = infer(bc, body, headers=AUTH, model="iris")
    assert r.status_code == 404 and f"this server serves '{MODEL}'" in r.json()["error"]


def test_metrics_and_log_line_as_for_invocations(services, frame):
    bc, _, tmp = services
    endpoint = "/v2/models/<name>/infer"
    before = gauge(bc, "serving_prediction_rows_total", AUTH, endpoint=endpoint)
    requests_before = gauge(bc, "serving_http_requests_total", AUTH, endpoint=endpoint, status="200")
    r = infer(bc, column_body(frame.head(5)), headers={**AUTH, "X-Request-ID": "v2-log-check"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == "v2-log-check"
    assert gauge(bc, "serving_prediction_rows_total", AUTH, endpoint=endpoint) == before + 5
    assert gauge(bc, "serving_http_requests_total", AUTH, endpoint=endpoint, status="200") == requests_before + 1
    deadline = time.monotonic() + 10
    line = None
    while line is None and time.monotonic() < deadline:
        for raw in (tmp / "logs" / "app.log").read_text().splitlines():
            rec = json.loads(raw)
            if rec.get("request_id") == "v2-log-check" and rec["msg"].startswith("Prediction made"):
                line = rec
        time.sleep(0.1)
    assert line is not None and line["endpoint"] == endpoint and line["rows"] == 5 and line["format"] == "v2"


def test_openapi_lists_every_v2_route(bc):
    paths = requests.get(bc + "/openapi.json", headers=AUTH, timeout=10).json()["paths"]
    for path, method in [("/v2", "get"), ("/v2/health/live", "get"), ("/v2/health/ready", "get"),
                         ("/v2/models/{name}", "get"), ("/v2/models/{name}/versions/{version}", "get"),
                         ("/v2/models/{name}/ready", "get"), ("/v2/models/{name}/versions/{version}/ready", "get"),
                         ("/v2/models/{name}/infer", "post"), ("/v2/models/{name}/versions/{version}/infer", "post")]:
        assert method in paths[path], path


def test_schemathesis_on_the_v2_routes_finds_no_server_error(bc, tmp_path):
    """`st run` on the live document, V2 operations only: the document's example (a valid request),
    coverage (boundary and invalid values of every field) and fuzzing; never a 5xx."""
    cmd = [str(BIN / "st"), "run", f"{bc}/openapi.json", "--include-path-regex", "^/v2",
           "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing", "--max-examples", "25",
           "--seed", "20261202", "--request-timeout", "30", "--header", f"Authorization: Bearer {API_TOKEN}",
           "--report", "ndjson,json", "--report-dir", str(tmp_path / "report")]
    proc = run(cmd, cwd=tmp_path, check=False, timeout=600)
    summary = json.loads(next((tmp_path / "report").glob("json-*.json")).read_text())
    statuses: Counter = Counter()
    for line in next((tmp_path / "report").glob("ndjson-*.ndjson")).read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        for interaction in ((event or {}).get("recorder") or {}).get("interactions", {}).values():
            req = interaction["request"]
            status = (interaction.get("response") or {}).get("status_code")
            statuses[(req["method"], req["uri"].split("?")[0].rsplit("/", 1)[-1], status)] += 1
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert summary["test_cases"]["with_failures"] == 0 and not summary["errors"], summary
    assert not [k for k in statuses if k[2] is None or k[2] >= 500], statuses
    infer_status = Counter({k[2]: n for k, n in statuses.items() if k[:2] == ("POST", "infer")})
    assert infer_status[200] >= 1 and infer_status[400] >= 100, infer_status
    assert sum(statuses.values()) >= 300, statuses
    record_number("v2 schemathesis", f"{sum(statuses.values())} requests on the V2 routes; infer statuses "
                                     + ", ".join(f"{s}: {n}" for s, n in sorted(infer_status.items(), key=str)))


# ---------------------------------------------------------------------------------------------
# Every datatype a signature needs (codec only, no server): INT32, BOOL, FP32 columns
# ---------------------------------------------------------------------------------------------


def _runtime_for(columns: list[tuple[str, str, bool]], native: bool = False):
    from types import SimpleNamespace

    from serving.inputs import ColumnSpec, InputSpec

    specs = tuple(ColumnSpec(n, t, r, np.dtype({"boolean": "bool", "integer": "int32", "float": "float32",
                                                 "long": "int64", "double": "float64"}.get(t, "object")))
                  for n, t, r in columns)
    types = {s.type for s in specs}
    spec = InputSpec(tuple(n for n, _, _ in columns), specs, specs[0].dtype if len(types) == 1 and "string" not in types else None,
                     all(s.required for s in specs), False)
    return SimpleNamespace(spec=spec, native=object() if native else None, classes=None,
                           loaded=SimpleNamespace(signature=None, sklearn_model=None))


def test_int32_bool_and_fp32_columns_become_the_signature_types():
    rt = _runtime_for([("flag", "boolean", True), ("count", "integer", True), ("ratio", "float", False),
                       ("label", "string", False)])
    body = {"inputs": [{"name": "flag", "shape": [2], "datatype": "BOOL", "data": [True, False]},
                       {"name": "count", "shape": [2, 1], "datatype": "INT32", "data": [[3], [4]]},
                       {"name": "ratio", "shape": [2], "datatype": "FP32", "data": [0.5, None]},
                       {"name": "label", "shape": [2], "datatype": "BYTES", "data": ["a", None]}]}
    frame = codecs_v2.to_request(body, rt).parsed.frame
    rows = [[True, 3, 0.5, "a"], [False, 4, None, None]]
    split = json.dumps({"dataframe_split": {"columns": ["flag", "count", "ratio", "label"], "data": rows}}).encode()
    pd.testing.assert_frame_equal(frame, inputs.parse(split, "json", rt.spec, build_frame=True).frame)
    assert [str(t) for t in frame.dtypes][:3] == ["bool", "int32", "float32"]
    assert frame["flag"].tolist() == [True, False] and frame["count"].tolist() == [3, 4]
    assert frame["ratio"].iloc[0] == np.float32(0.5) and np.isnan(frame["ratio"].iloc[1])
    assert frame["label"].iloc[0] == "a" and pd.isna(frame["label"].iloc[1])
    for name, datatype, data, needle in [("flag", "INT32", [1, 0], "BOOL"), ("count", "FP32", [3.0, 4.0], "INT32"),
                                         ("count", "BOOL", [True, False], "INT32"), ("label", "FP32", [1.0, 2.0], "BYTES")]:
        bad = {"inputs": [{**t, "datatype": datatype, "data": data, "shape": [2]} if t["name"] == name else t
                          for t in body["inputs"]]}
        with pytest.raises(codecs_v2.InputError) as exc:
            codecs_v2.to_request(bad, rt)
        assert exc.value.status == 400 and f"'{name}'" in exc.value.message and needle in exc.value.message


@pytest.mark.parametrize(("datatype", "value"), [
    ("INT8", 300), ("INT8", -129), ("UINT8", -5), ("UINT64", -1), ("INT64", 2**70), ("INT32", 2**31),
    ("FP16", 1e10), ("FP32", 1e300), ("FP32", -1e39),
])
@pytest.mark.parametrize("native", [False, True])
def test_an_element_outside_its_datatype_is_a_400_naming_it(datatype, value, native):
    """The element would otherwise be scored as if it were an INT64 or FP64."""
    column = "year" if datatype.startswith(("INT", "UINT")) else "length"
    rt = _runtime_for([("year", "double", True), ("length", "double", True)], native=native)
    good = {"year": 7, "length": 45.1}
    tensors = [{"name": n, "shape": [2], "datatype": datatype if n == column else "FP64",
                "data": [good[n], value] if n == column else [good[n]] * 2} for n in ("year", "length")]
    body = {"inputs": tensors}
    with pytest.raises(codecs_v2.InputError) as exc:
        codecs_v2.to_request(body, rt, json.dumps(body).encode())
    assert exc.value.status == 400
    assert exc.value.message.startswith(f"input tensor '{column}': element 1 ") and f"does not fit {datatype}" in exc.value.message
    inside = [{**t, "data": [good[t["name"]]] * 2} for t in tensors]
    assert codecs_v2.to_request({"inputs": inside}, rt).parsed.rows == 2


def test_one_boolean_2d_tensor_on_a_native_boolean_signature():
    rt = _runtime_for([("a", "boolean", True), ("b", "boolean", True)], native=True)
    parsed = codecs_v2.to_request({"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "BOOL",
                                               "data": [[True, False], [False, True]]}]}, rt).parsed
    assert parsed.array.dtype == np.bool_ and parsed.array.flags.f_contiguous
    assert parsed.array.tolist() == [[True, False], [False, True]]
