"""Differential suite: this service against ``mlflow models serve`` 3.17.2, MLflow as the oracle.

Every HTTP-level case of MLflow's own ``tests/pyfunc/test_scoring_server.py`` and
``tests/pyfunc/test_pyfunc_schema_enforcement.py`` (their test names are in the case ids), plus the
requests of issue 14, is sent to both servers serving the same registered version; the status, the
``error_code`` and the predictions must be the same. The few intentional differences are listed in
``INTENTIONAL`` with their reason (and in docs/api.md); for those the service's own answer is
checked instead. The numbers (cases, same, intentional) are recorded for the end-of-run summary.

Models (registered once for the module, each served by both servers):

* ``iris-knn``: MLflow's ``sklearn_model`` fixture (k-NN on two iris columns, no signature);
* ``breast-cancer-classifier``: the project's numeric pipeline (the native fast path);
* ``penguins``: the project's mixed-type pipeline (strings, nulls; the frame fast path);
* ``echo``: a PythonModel returning its input and params; the signature of MLflow's
  ``test_enforce_schema_in_python_model_serving`` (one unnamed string column, basic and array params);
* ``query-table``: an echo PythonModel with ``query`` and an optional ``table`` string column;
* ``all-types``: MLflow's ``test_serving_model_with_schema`` model (answers its input's dtypes) with
  the ``param1`` datetime param of ``test_serving_model_with_param_schema``.

MLflow's schema-enforcement serving cases that each log a model of their own signature (tensor
examples, lists, objects, arrays, maps, params from an input example: 26 models) are served by a
rolling pool of server pairs, started a few models ahead and stopped once used.

Not ported: the two Keras cases (``..._tf_serving_keras_instances`` / ``_inputs``): TensorFlow is not
installed here; the ``inputs``/``instances`` shapes they send are covered on the other models.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from mlops.stack.state import StackError
from tests.conftest import record_number
from tests.helpers import BIN, ROOT, Service, clean_env, free_port, sqlite_uri, train
from tests.serving.conftest import promote, tracking

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

log = logging.getLogger("tests.parity")

PENGUINS = ROOT / "training" / "datasets" / "penguins.csv"
BREAST = "breast-cancer-classifier"
JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"

#: Cases where this service answers differently on purpose: case id -> reason.
INTENTIONAL: dict[str, str] = {
    "issue14_missing_content_type": (
        "MLflow answers 500 (its handler calls .split on a missing header); a missing Content-Type "
        "is a client mistake: 415 UNSUPPORTED_MEDIA_TYPE naming the accepted types"),
    "issue14_charset_utf8_without_dash": (
        "MLflow accepts only the spelling 'utf-8' and answers 415 to charset=utf8; it names the "
        "same encoding, so the request is scored"),
    "issue14_uppercase_media_type": (
        "MLflow compares the media type case-sensitively (415 for Application/JSON); media types "
        "are case-insensitive (RFC 9110), so the request is scored"),
    "issue14_optional_column_left_out": (
        "MLflow passes the frame without the optional column and the pipeline fails (400 "
        "BAD_REQUEST); an optional column of the signature left out is a missing value here, as a "
        "null is, and the row is scored"),
    "issue14_too_many_columns": (
        "MLflow ignores any number of extra columns; more columns than MAX_COLUMNS are refused "
        "(400 TOO_MANY_COLUMNS) so a huge header cannot cost the service its time"),
}
#: Not a case of its own: every error body of this service omits MLflow's ``stack_trace``.
NO_STACK_TRACE = ("MLflow puts a Python traceback (``stack_trace``) in some error bodies; this service "
                  "never sends one: it names the problem in ``message`` and logs the rest")


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------

ECHO_CODE = '''
import json
import pandas as pd
import mlflow
from mlflow.pyfunc import PythonModel


class Echo(PythonModel):
    """Answers its input (as MLflow's schema enforcement handed it over) and its params."""

    def predict(self, context, model_input, params=None):
        tag = json.dumps(params, default=str, sort_keys=True)
        if isinstance(model_input, pd.DataFrame):
            return model_input.assign(_params=tag)
        return {"input": json.loads(json.dumps(model_input, default=str)), "params": tag}


mlflow.models.set_model(Echo())
'''

DTYPES_CODE = '''
import mlflow
from mlflow.pyfunc import PythonModel


class Dtypes(PythonModel):
    """MLflow's TestModel of test_serving_model_with_schema, plus the param it was given."""

    def predict(self, context, model_input, params=None):
        return [[k, str(v)] for k, v in model_input.dtypes.items()] + [["param1", str((params or {}).get("param1"))]]


mlflow.models.set_model(Dtypes())
'''


def iris_data() -> tuple[np.ndarray, np.ndarray]:
    """MLflow's ``sklearn_model`` fixture data: the first two iris columns."""
    from sklearn import datasets

    iris = datasets.load_iris()
    return iris.data[:, :2], iris.target


def sample_params_basic() -> dict:
    """MLflow's ``sample_params_basic`` and ``sample_params_with_arrays`` fixtures, merged."""
    return {
        "str_param": "str_a",
        "int_param": np.int32(1),
        "bool_param": True,
        "double_param": 1.0,
        "float_param": np.float32(0.1),
        "long_param": 100,
        "datetime_param": np.datetime64("2023-06-26 00:00:00"),
        "str_list": ["a", "b", "c"],
        "bool_list": [True, False],
        "double_array": np.array([1.0, 2.0]),
        "int_array": np.array([np.int32(1), np.int32(2)]),
        "float_array": np.array([np.float32(1.0), np.float32(2.0)]),
        "long_array": np.array([1, 2]),
        "datetime_array": np.array([np.datetime64("2023-06-26 00:00:00"), np.datetime64("2023-06-26 00:00:00")]),
    }


def all_types_frame() -> pd.DataFrame:
    """MLflow's ``pandas_df_with_all_types`` fixture."""
    from mlflow.types import DataType

    pdf = pd.DataFrame({
        "boolean": [True, False, True],
        "integer": np.array([1, 2, 3], np.int32),
        "long": np.array([1, 2, 3], np.int64),
        "float": np.array([math.pi, 2 * math.pi, 3 * math.pi], np.float32),
        "double": [math.pi, 2 * math.pi, 3 * math.pi],
        "binary": [bytearray([1, 2, 3]), bytearray([4, 5, 6]), bytearray([7, 8, 9])],
        "datetime": [np.datetime64("2021-01-01 00:00:00"), np.datetime64("2021-02-02 00:00:00"),
                     np.datetime64("2021-03-03 12:00:00")],
    })
    pdf["string"] = pd.Series(["a", "b", "c"], dtype=DataType.string.to_pandas())
    return pdf


def register_models(uri: str, folder: Path) -> None:
    """Register iris-knn, echo, query-table and all-types (version 1 each, in Production)."""
    import mlflow
    import sklearn.neighbors as knn
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

    pins = [f"mlflow=={mlflow.__version__}"]
    (folder / "echo_model.py").write_text(ECHO_CODE)
    (folder / "dtypes_model.py").write_text(DTYPES_CODE)
    with tracking(uri):
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri, uri)
        eid = client.create_experiment("parity", artifact_location=str(folder / "parity-artifacts"))
        X, y = iris_data()
        with mlflow.start_run(experiment_id=eid):
            mlflow.sklearn.log_model(knn.KNeighborsClassifier().fit(X, y), name="model", pip_requirements=pins,
                                     serialization_format="cloudpickle", registered_model_name="iris-knn")
            mlflow.pyfunc.log_model(name="echo", python_model=str(folder / "echo_model.py"), pip_requirements=pins,
                                    signature=infer_signature(["input1"], params=sample_params_basic()),
                                    registered_model_name="echo")
            qt = Schema([ColSpec(DataType.string, "query"), ColSpec(DataType.string, "table", required=False)])
            mlflow.pyfunc.log_model(name="qt", python_model=str(folder / "echo_model.py"), pip_requirements=pins,
                                    signature=ModelSignature(qt), registered_model_name="query-table")
            frame = all_types_frame()
            schema = Schema([ColSpec(c, c) for c in frame.columns])
            params = ParamSchema([ParamSpec("param1", DataType.datetime, np.datetime64("2023-07-01"))])
            mlflow.pyfunc.log_model(name="dtypes", python_model=str(folder / "dtypes_model.py"), pip_requirements=pins,
                                    signature=ModelSignature(schema, params=params), registered_model_name="all-types")
        mlflow.set_tracking_uri(None)
    for name in ("iris-knn", "echo", "query-table", "all-types"):
        promote(uri, "1", name=name)


# ------------------------------------------------------------------------------------------------
# Servers
# ------------------------------------------------------------------------------------------------

@dataclass
class Pair:
    """The two servers of one model: this service and ``mlflow models serve``."""

    ours: str
    theirs: str
    services: list = field(default_factory=list)


MODELS = ("iris-knn", BREAST, "penguins", "echo", "query-table", "all-types")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    """One SQLite store holding every model of the module (version 1 each, in Production)."""
    folder = tmp_path_factory.mktemp("parity")
    uri = sqlite_uri(folder)
    train(uri, "--promote", "production", "--experiment", "parity-train")
    train(uri, "--data", str(PENGUINS), "--target", "species", "--model-name", "penguins",
          "--model", "hist_gradient_boosting", "--promote", "production", "--experiment", "parity-train")
    register_models(uri, folder)
    register_signature_models(uri, folder)
    return uri, folder


def start_pair(uri: str, folder: Path, name: str) -> Pair:
    """This service (gunicorn, one worker) and ``mlflow models serve`` for ``name`` v1 (not yet ready)."""
    home = folder / name
    home.mkdir(exist_ok=True)
    ours_port, theirs_port = free_port(), free_port()
    ours = Service([str(BIN / "mlops"), "serve"], clean_env(
        MLFLOW_TRACKING_URI=uri, MODEL_NAME=name, PORT=ours_port, HOST="127.0.0.1", WORKERS=1,
        MODEL_CACHE_DIR=home / "models", LOG_DIR=home / "logs"), home / "ours.log")
    theirs = Service([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}/1", "--env-manager",
                      "local", "-h", "127.0.0.1", "-p", str(theirs_port)],
                     clean_env(MLFLOW_TRACKING_URI=uri), home / "mlflow.log", cwd=home)
    return Pair(f"http://127.0.0.1:{ours_port}", f"http://127.0.0.1:{theirs_port}", [ours, theirs])


_PORT_TAKEN = ("address already in use", "connection in use")


def wait_ready(pair: Pair, restart=None) -> Pair:
    """Both servers answer: this service's /ready, MLflow's /ping. A server whose port was taken
    by another process between free_port() and its own bind is started again on new ports
    (``restart()`` makes a new pair), at most twice; the pair that answers is returned."""
    for attempt in range(3):
        ours, theirs = pair.services
        try:
            ours.wait_http(pair.ours + "/ready", timeout=300)
            theirs.wait_http(pair.theirs + "/ping", timeout=300)
            return pair
        except StackError as exc:
            for svc in pair.services:
                svc.stop()
            if restart is None or attempt == 2 or not any(t in str(exc).lower() for t in _PORT_TAKEN):
                raise
            log.warning("a port was taken before its server bound it; starting the pair again")
            pair = restart()
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def servers(store):
    """Both servers for each of the six main models, started together, stopped (process groups)."""
    uri, folder = store
    pairs: dict[str, Pair] = {}
    try:
        for name in MODELS:
            pairs[name] = start_pair(uri, folder, name)
        t0 = time.monotonic()
        for name in MODELS:
            pairs[name] = wait_ready(pairs[name], lambda n=name: start_pair(uri, folder, n))
        log.info("%d servers ready in %.1f s", 2 * len(pairs), time.monotonic() - t0)
        yield {**pairs, "_uri": uri}
    finally:
        for pair in pairs.values():
            for svc in pair.services:
                svc.stop()


class Pool:
    """Server pairs for the per-signature models, started a few ahead of use and stopped after."""

    def __init__(self, uri: str, folder: Path, order: list[str], ahead: int = 3):
        self.uri, self.folder, self.order, self.ahead = uri, folder, order, ahead
        self.running: dict[str, Pair] = {}

    def get(self, name: str) -> Pair:
        i = self.order.index(name)
        for done in [n for n in self.running if self.order.index(n) < i]:
            self._stop(done)
        for upcoming in self.order[i:i + self.ahead + 1]:
            if upcoming not in self.running:
                self.running[upcoming] = start_pair(self.uri, self.folder, upcoming)
        self.running[name] = wait_ready(self.running[name],
                                        lambda: start_pair(self.uri, self.folder, name))
        return self.running[name]

    def _stop(self, name: str) -> None:
        for svc in self.running.pop(name).services:
            svc.stop()

    def close(self) -> None:
        for name in list(self.running):
            self._stop(name)


@pytest.fixture(scope="module")
def pool(store):
    uri, folder = store
    p = Pool(uri, folder, list(SIGNATURE_MODELS))
    try:
        yield p
    finally:
        p.close()


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One request, sent as is to both servers."""

    id: str
    model: str
    body: bytes | str | None = None
    content_type: str | None = JSON
    method: str = "POST"
    path: str = "/invocations"


def _json(obj) -> str:
    from mlflow.utils.proto_json_utils import NumpyEncoder

    return json.dumps(obj, cls=NumpyEncoder)


def _shuffle(pdf: pd.DataFrame) -> pd.DataFrame:
    cols = list(pdf.columns)
    random.Random(7).shuffle(cols)
    return pdf[cols]


def scoring_server_cases() -> list[Case]:
    """The HTTP-level cases of MLflow's tests/pyfunc/test_scoring_server.py."""
    from mlflow.utils.proto_json_utils import dump_input_data

    X, _ = iris_data()
    pdf = pd.DataFrame(X)
    knn = "iris-knn"
    cases = [Case("test_scoring_server_responds_to_malformed_json_input_with_error_code_and_message", knn,
                  "this is,,,, not valid json")]
    for i, content in enumerate([1, "1", [1], {"not": "a serialized dataframe"},
                                 {"dataframe_records": [], "dataframe_split": {"data": []}}]):
        cases.append(Case(f"test_scoring_server_responds_to_invalid_json_format_with_error_code_and_message[{i}]",
                          knn, json.dumps(content)))
    name = "test_scoring_server_responds_to_invalid_pandas_input_format_with_stacktrace_and_error_code"
    cases += [Case(f"{name}[split_as_records]", knn, json.dumps({"dataframe_split": pdf.to_dict(orient="records")})),
              Case(f"{name}[records_as_split]", knn, json.dumps({"dataframe_records": pdf.to_dict(orient="split")}))]
    cases.append(Case("test_scoring_server_responds_to_invalid_dataframe_with_stacktrace_and_error_code", knn,
                      json.dumps({"dataframe_split": {"index": [1, 2], "data": [[1], [2], [3]]}})))
    cases.append(Case("test_scoring_server_responds_to_incompatible_inference_dataframe_with_stacktrace_and_error_code",
                      knn, dump_input_data(pd.DataFrame(np.array(range(10))))))
    cases.append(Case("test_scoring_server_responds_to_invalid_csv_input_with_stacktrace_and_error_code", knn, "", CSV))
    records = json.dumps({"dataframe_records": pdf.to_dict(orient="records")})
    name = "test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_records_orientation"
    cases += [Case(f"{name}[json]", knn, records), Case(f"{name}[charset]", knn, records, JSON + "; charset=UTF-8")]
    split = json.dumps({"dataframe_split": pdf.to_dict(orient="split")})
    name = "test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_split_orientation"
    cases += [Case(f"{name}[charset]", knn, split, JSON + "; charset=UTF-8"), Case(f"{name}[json]", knn, split)]
    table = pdf.to_json(orient="split")
    cases += [
        Case("test_scoring_server_responds_to_invalid_content_type_request_with_unsupported_content_type_code",
             knn, table, "not_a_supported_content_type"),
        Case("test_scoring_server_responds_to_invalid_content_type_request_with_unrecognized_content_param",
             knn, table, JSON + "; something=something"),
        Case("test_scoring_server_successfully_evaluates_correct_tf_serving_sklearn", knn,
             json.dumps({"instances": X.tolist()})),
    ]
    frame = _shuffle(all_types_frame())
    name = "test_serving_model_with_schema"
    cases += [
        Case(f"{name}[dataframe_split]", "all-types", _json({"dataframe_split": frame.to_dict(orient="split")})),
        Case(f"{name}[dataframe_records]", "all-types",
             _json({"dataframe_records": all_types_frame().to_dict(orient="records")})),
        Case(f"{name}[inputs]", "all-types", _json({"inputs": frame.to_dict(orient="list")})),
    ]
    body = {"dataframe_split": all_types_frame().to_dict(orient="split")}
    name = "test_serving_model_with_param_schema"
    cases += [
        Case(f"{name}[no_params]", "all-types", _json(body), JSON + "; charset=UTF-8"),
        Case(f"{name}[invalid_value]", "all-types", _json({**body, "params": {"param1": "invalid_value1"}}),
             JSON + "; charset=UTF-8"),
        Case(f"{name}[unknown_param_ignored]", "all-types", _json({**body, "params": {"invalid_param": "value"}}),
             JSON + "; charset=UTF-8"),
    ]
    urls = pd.DataFrame({"url": ["http://foo.com", "https://bar.com"], "bad_protocol": ["aaa://bbb", "address:/path"]})
    cases += [Case(f"test_parse_json_input_including_path[{m}]", m, dump_input_data(urls)) for m in ("echo", knn)]
    chat = {"messages": [{"role": "user", "content": "hello!"}], "temperature": 0.5, "max_tokens": 20}
    completions = {"prompt": "hello!", "temperature": 0.5, "max_tokens": 20}
    embeddings = {"input": "hello!", "random": "test"}
    for model in ("echo", "query-table", knn):
        cases += [
            Case(f"test_scoring_server_allows_payloads_with_llm_chat_keys_for_pyfunc[{model}]", model, json.dumps(chat)),
            Case(f"test_scoring_server_allows_payloads_with_llm_completions_keys_for_pyfunc[{model}]", model,
                 json.dumps(completions)),
            Case(f"test_scoring_server_allows_payloads_with_llm_embeddings_keys_for_pyfunc[{model}]", model,
                 json.dumps(embeddings)),
        ]
    cases.append(Case("test_scoring_server_allows_payloads_with_messages_for_pyfunc_wrapped", knn,
                      json.dumps({"messages": [{"role": "user", "content": "[2,2,2,2]"}], "max_tokens": 20})))
    cases += [Case("test_scoring_server_client[ping]", knn, None, None, "GET", "/ping"),
              Case("test_scoring_server_client[version]", knn, None, None, "GET", "/version")]
    return cases


def schema_enforcement_cases() -> list[Case]:
    """The HTTP-level cases of MLflow's tests/pyfunc/test_pyfunc_schema_enforcement.py."""
    from mlflow.utils.proto_json_utils import dump_input_data

    params = {
        "str_param": "str_a", "int_param": 1, "bool_param": True, "double_param": 1.0, "float_param": 0.1,
        "long_param": 100, "datetime_param": datetime.datetime(2023, 6, 6, 0, 0, 0), "str_list": ["a", "b", "c"],
        "bool_list": [True, False], "double_array": np.array([1.0, 2.0]),
    }
    name = "test_enforce_schema_in_python_model_serving"
    cases = [
        Case(f"{name}[valid]", "echo", dump_input_data(["a", "b"], params=params)),
        Case(f"{name}[invalid_double]", "echo", dump_input_data(["a", "b"], params={"double_param": "invalid"})),
        Case("test_python_model_serving_compatible", "echo", dump_input_data(["a", "b"])),
        Case("test_function_python_model_serving_compatible", "echo", dump_input_data(["a", "b"], inputs_key="instances")),
    ]
    arrays = {k: v for k, v in sample_params_basic().items() if k.endswith("_array")}
    name = "test_enforce_schema_with_arrays_in_python_model_serving"
    cases += [
        Case(f"{name}[valid]", "echo", dump_input_data(["a", "b"], params=arrays)),
        Case(f"{name}[datetime_array]", "echo", dump_input_data(["a", "b"], params={"datetime_array": [1.0, 2.0]})),
        Case(f"{name}[int_array]", "echo", dump_input_data(["a", "b"], params={"int_array": np.array([1.0, 2.0])})),
        Case(f"{name}[float_array]", "echo", dump_input_data(["a", "b"], params={"float_array": [True, False]})),
        Case(f"{name}[double_array]", "echo", dump_input_data(["a", "b"], params={"double_array": [1.0, "2.0"]})),
    ]
    dicts = [{"query": "sentence"}, {"query": ["sentence_1", "sentence_2"]},
             {"query": ["sentence_1", "sentence_2"], "table": "some_table"}]
    for i, data in enumerate(dicts):
        df = pd.DataFrame([data]) if all(isinstance(x, str) for x in data.values()) else pd.DataFrame(data)
        for key in ("inputs", "dataframe_split", "dataframe_records"):
            payload = {key: data} if key == "inputs" else {key: df.to_dict(orient=key[10:])}
            cases.append(Case(f"test_pyfunc_model_serving_with_dicts[{key}-{i}]", "query-table", json.dumps(payload)))
    lists = [[{"query": "sentence"}, {"query": "sentence"}],
             [{"query": ["sentence_1", "sentence_2"], "table": "some_table"},
              {"query": ["sentence_1", "sentence_2"], "table": "some_table"}]]
    for i, data in enumerate(lists):
        df = pd.DataFrame(data)
        for key in ("instances", "dataframe_split", "dataframe_records"):
            payload = {key: data} if key == "instances" else {key: df.to_dict(orient=key[10:])}
            cases.append(Case(f"test_pyfunc_model_serving_with_lists_of_dicts[{key}-{i}]", "query-table",
                              json.dumps(payload)))
    backwards = [[{"query": "question1"}, {"query": "question2"}],
                 [{"query": ["sentence_1", "sentence_2"]}, {"query": ["sentence_1", "sentence_2"]}],
                 [{"query": ["sentence_1", "sentence_2"], "table": "some_table"},
                  {"query": ["sentence_1", "sentence_2"], "table": "some_table"}]]
    cases += [Case(f"test_pyfunc_model_scoring_instances_backwards_compatibility[{i}]", "query-table",
                   json.dumps({"instances": data})) for i, data in enumerate(backwards)]
    return cases


def issue_cases() -> list[Case]:
    """The requests of issue 14 (and their neighbours) on the numeric and the mixed-type model."""
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer(as_frame=True).frame.drop(columns="target")
    cols = list(cancer.columns)
    rows = cancer.head(3).to_numpy().tolist()
    rec = dict(zip(cols, rows[0], strict=True))
    split = {"columns": cols, "data": rows}
    csv = cancer.head(3).to_csv(index=False)
    header, first, *rest = csv.splitlines()
    buf = io.BytesIO()
    cancer.head(3).to_parquet(buf)
    b = BREAST
    cases = [
        Case("issue14_split", b, json.dumps({"dataframe_split": split})),
        Case("issue14_extra_column_ignored", b, json.dumps({"dataframe_records": [{**rec, "customer_id": 7}]})),
        Case("issue14_extra_top_level_key_dropped", b, json.dumps({"dataframe_split": split, "request_id": "r-1"})),
        Case("issue14_numeric_string_converted", b, json.dumps({"dataframe_records": [{**rec, cols[0]: "17.99"}]})),
        Case("issue14_non_numeric_string", b, json.dumps({"dataframe_records": [{**rec, cols[0]: "abc"}]})),
        Case("issue14_true_in_double_json", b, json.dumps({"dataframe_records": [{**rec, cols[0]: True}]})),
        Case("issue14_null_in_double", b, json.dumps({"dataframe_records": [{**rec, cols[0]: None}]})),
        Case("issue14_missing_column", b, json.dumps({"dataframe_records": [{k: v for k, v in rec.items() if k != cols[0]}]})),
        Case("issue14_index_length_differs", b, json.dumps({"dataframe_split": {**split, "index": [0]}})),
        Case("issue14_index_length_matches", b, json.dumps({"dataframe_split": {**split, "index": [5, 6, 7]}})),
        Case("issue14_positional_instances", b, json.dumps({"instances": rows})),
        Case("issue14_inputs_columns", b, json.dumps({"inputs": {c: [v] for c, v in rec.items()}})),
        Case("issue14_inputs_one_row_of_scalars", b, json.dumps({"inputs": rec})),
        Case("issue14_instances_records", b, json.dumps({"instances": [rec, rec]})),
        Case("issue14_params_for_a_model_without_params", b, json.dumps({"dataframe_split": split, "params": {"a": 1}})),
        Case("issue14_empty_records", b, json.dumps({"dataframe_records": []})),
        Case("issue14_duplicate_column", b, json.dumps({"dataframe_split": {"columns": cols + cols[:1],
                                                                            "data": [r + r[:1] for r in rows]}})),
        Case("issue14_row_too_short", b, json.dumps({"dataframe_split": {"columns": cols, "data": [rows[0][:-1]]}})),
        Case("issue14_nan_literal", b, json.dumps({"dataframe_records": [{**rec, cols[0]: float("nan")}]})),
        Case("issue14_csv", b, csv, CSV),
        Case("issue14_csv_one_value_more_than_header", b, "\n".join([header, first + ",5", *rest]) + "\n", CSV),
        Case("issue14_csv_utf8_bom", b, "\ufeff" + csv, CSV),
        Case("issue14_csv_true_in_double", b, "\n".join([header, "True" + first[first.index(","):], *rest]) + "\n", CSV),
        Case("issue14_csv_extra_column", b, "\n".join([header + ",customer_id"] + [r + ",1" for r in [first, *rest]]) + "\n", CSV),
        Case("issue14_csv_missing_column", b, "\n".join(line.split(",", 1)[1] for line in [header, first, *rest]) + "\n", CSV),
        Case("issue14_csv_header_only", b, header + "\n", CSV),
        Case("issue14_parquet", b, buf.getvalue(), PARQUET),
        Case("issue14_parquet_garbage", b, b"not parquet", PARQUET),
        Case("issue14_missing_content_type", b, json.dumps({"dataframe_split": split}), None),
        Case("issue14_charset_latin1", b, json.dumps({"dataframe_split": split}), JSON + "; charset=latin-1"),
        Case("issue14_charset_utf8_without_dash", b, json.dumps({"dataframe_split": split}), JSON + "; charset=utf8"),
        Case("issue14_uppercase_media_type", b, json.dumps({"dataframe_split": split}), "Application/JSON"),
        Case("issue14_text_plain", b, json.dumps({"dataframe_split": split}), "text/plain"),
        Case("issue14_too_many_columns", b, json.dumps({"dataframe_records": [{**rec, **{f"x{i}": 0 for i in range(2100)}}]})),
        Case("issue14_ping", b, None, None, "GET", "/ping"),
        Case("issue14_version", b, None, None, "GET", "/version"),
    ]
    peng = pd.read_csv(PENGUINS).drop(columns="species").dropna().head(3)
    pcols = list(peng.columns)
    prow = json.loads(peng.iloc[[0]].to_json(orient="values"))[0]
    prec = dict(zip(pcols, prow, strict=True))
    pcsv = peng.to_csv(index=False)
    p = "penguins"
    cases += [
        Case("issue14_mixed_records", p, json.dumps({"dataframe_records": [prec]})),
        Case("issue14_mixed_extra_column", p, json.dumps({"dataframe_records": [{**prec, "tag": "x"}]})),
        Case("issue14_mixed_numeric_string", p, json.dumps({"dataframe_records": [{**prec, "bill_length_mm": "40.1"}]})),
        Case("issue14_mixed_number_for_string", p, json.dumps({"dataframe_records": [{**prec, "island": 5}]})),
        Case("issue14_mixed_float_for_long", p, json.dumps({"dataframe_records": [{**prec, "year": 2007.5}]})),
        Case("issue14_mixed_null_string", p, json.dumps({"dataframe_records": [{**prec, "sex": None}]})),
        Case("issue14_mixed_null_long", p, json.dumps({"dataframe_records": [{**prec, "year": None}]})),
        Case("issue14_mixed_unseen_category", p, json.dumps({"dataframe_records": [{**prec, "island": "Atlantis"}]})),
        Case("issue14_optional_column_left_out", p,
             json.dumps({"dataframe_records": [{k: v for k, v in prec.items() if k != "sex"}]})),
        Case("issue14_mixed_csv", p, pcsv, CSV),
        Case("issue14_mixed_csv_bom", p, "\ufeff" + pcsv, CSV),
    ]
    return cases


class _IntEncoder(json.JSONEncoder):
    """MLflow's CustomJsonEncoder of test_pyfunc_model_schema_enforcement_map_type."""

    def default(self, o):
        if isinstance(o, np.integer):
            return int(o)
        return super().default(o)


def _frame_of(data) -> pd.DataFrame:
    return pd.DataFrame(data) if isinstance(data, list) else pd.DataFrame([data])


def _format_payloads(data, df: pd.DataFrame, keys=("inputs", "dataframe_split", "dataframe_records"), cls=None) -> dict:
    out = {}
    for key in keys:
        payload = {key: data} if key in ("inputs", "instances") else {key: df.to_dict(orient=key[10:])}
        out[key] = json.dumps(payload, cls=cls)
    return out


def _signature_specs() -> tuple[dict[str, dict], list[Case]]:
    """The per-signature models of MLflow's schema-enforcement serving tests and their cases.

    Returns {model name: how to log it} and the cases, grouped by model in serving order.
    """
    from mlflow.models import (
        ModelSignature,
        convert_input_example_to_serving_input,
        infer_signature,
    )
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array, Map, Object, Property

    models: dict[str, dict] = {}
    cases: list[Case] = []
    basic = {k: v for k, v in sample_params_basic().items() if not k.endswith("_array") or k == "double_array"}
    examples = [["input1", "input2", "input3"], [{"a": "a", "b": "b"}, {"a": "b"}],
                {"a": ["a", "b", "c"], "b": "b"}, pd.DataFrame({"a": ["a", "b", "c"], "b": "b"})]
    for i, example in enumerate(examples):
        name = f"example-params-{i}"
        models[name] = {"input_example": (example, basic)}
        manual = (json.dumps({"dataframe_split": example.to_dict(orient="split")}) if isinstance(example, pd.DataFrame)
                  else json.dumps({"inputs": example}))
        cases += [Case(f"test_pyfunc_model_input_example_with_params[{i}-saved_example]", name,
                       convert_input_example_to_serving_input((example, basic))),
                  Case(f"test_pyfunc_model_input_example_with_params[{i}-manual_example]", name, manual)]
    examples = [pd.DataFrame({"a": ["input1", "input2", "input3"]}), np.array([1, 2, 3]), np.array([1, 2, 3, np.nan]),
                {"a": np.array([1, 2, 3])}, ["input1", "input2", "input3"],
                [{"a": ["sentence1", "sentence2"], "b": ["answer1", "answer2"]}],
                {"messages": [{"role": "user", "content": "some question"}]}]
    for i, example in enumerate(examples):
        name = f"example-validation-{i}"
        models[name] = {"input_example": example}
        cases.append(Case(f"test_input_example_validation_during_logging[{i}]", name,
                          convert_input_example_to_serving_input(example)))
    objects = [
        {"query": "sentence"},
        {"query": ["sentence_1", "sentence_2"]},
        {"query": ["sentence_1", "sentence_2"], "table": "some_table"},
        {"query": [{"name": "value"}, {"name": "value"}], "table": ["some_table"]},
        [{"query": "sentence"}, {"query": "sentence"}],
        [{"query": ["sentence_1", "sentence_2"], "table": "some_table"}, {"query": ["sentence_1", "sentence_2"]}],
        [{"query": [{"name": "value"}, {"name": "value"}], "table": ["some_table"]},
         {"query": [{"name": "value", "age": 10}, {"name": "value"}], "table": ["some_table"]}],
    ]
    errors = [[{"query": {"a": "b"}, "name": "A"}, {"query": {"a": "c"}, "name": "B"}], objects[5], objects[6]]
    by_signature: dict[str, str] = {}

    def model_for(data) -> str:
        sig = infer_signature(data)
        key = json.dumps(sig.to_dict(), sort_keys=True)
        if key not in by_signature:
            by_signature[key] = f"objects-{len(by_signature)}"
            models[by_signature[key]] = {"signature": sig}
        return by_signature[key]

    grouped: dict[str, list[Case]] = {}
    for i, data in enumerate(objects):
        name = model_for(data)
        for key, body in _format_payloads(data, _frame_of(data)).items():
            grouped.setdefault(name, []).append(Case(f"test_pyfunc_model_scoring_with_objects_and_arrays[{key}-{i}]", name, body))
        if i < 5:
            grouped[name].append(Case(f"test_pyfunc_model_scoring_with_objects_and_arrays_instances[{i}]", name,
                                      json.dumps({"instances": data})))
    for i, data in enumerate(errors):
        name = model_for(data)
        grouped.setdefault(name, []).append(Case(f"test_pyfunc_model_scoring_with_objects_and_arrays_instances_errors[{i}]",
                                                 name, json.dumps({"instances": data})))
    for group in grouped.values():
        cases += group
    maps = [
        ({"simple_map": [{"a": 3, "b": 4}, {}, {"c": 5}]}, Schema([ColSpec(Map(value_type=DataType.long), name="simple_map")])),
        ({"simple_map": [{"a": 3, "b": 4}, {}, {"c": 5}]}, Schema([ColSpec(Map(value_type=DataType.long))])),
        ({"nested_map": [{"a": {"a1": 3, "a2": 4}, "b": {"b1": 5}}, {}, {"c": {}}]},
         Schema([ColSpec(Map(value_type=Map(value_type=DataType.long)), name="nested_map")])),
        ({"array_in_map": [{"a": [1, 2, 3], "b": [4, 5]}, {}, {"c": []}]},
         Schema([ColSpec(Map(value_type=Array(dtype=DataType.long)), name="array_in_map")])),
        ({"object_in_map": [{"a": {"key1": "a1", "key2": 1}, "b": {"key1": "b1"}}, {}, {"c": {"key1": "c1"}}]},
         Schema([ColSpec(Map(value_type=Object([Property("key1", DataType.string),
                                                Property("key2", DataType.long, required=False)])), name="object_in_map")])),
        ({"map_in_array": [[{"a": 3, "b": 4}, {"c": 5}], [], [{"d": 6}]]},
         Schema([ColSpec(Array(dtype=Map(value_type=DataType.long)), name="map_in_array")])),
        ({"map_in_object": [{"key1": {"a": 3, "b": 4}, "key2": {"c": 5}}, {"key1": {"d": 6}}]},
         Schema([ColSpec(Object([Property("key1", Map(value_type=DataType.long)),
                                 Property("key2", Map(value_type=DataType.long), required=False)]), name="map_in_object")])),
    ]
    for i, (data, schema) in enumerate(maps):
        name = f"map-{i}"
        models[name] = {"signature": ModelSignature(inputs=schema, outputs=schema)}
        df = pd.DataFrame.from_records(data)
        for key, body in _format_payloads(data, df, ("dataframe_split", "dataframe_records"), _IntEncoder).items():
            cases.append(Case(f"test_pyfunc_model_schema_enforcement_map_type[{key}-{i}]", name, body))
    complex_data = [
        {"object_column": {"query": ["sentence_1", "sentence_2"], "table": "some_table"}, "string_column": "some_string",
         "array_column": [{"name": "value"}, {"name": "value"}]},
        {"object_column": {"query": ["sentence_1", "sentence_2"]}, "string_column": "some_string",
         "array_column": [{"name": "value"}]},
    ]
    df = pd.DataFrame.from_records(complex_data)
    models["complex"] = {"signature": infer_signature(df)}
    for key, body in _format_payloads(complex_data, df).items():
        cases.append(Case(f"test_pyfunc_model_schema_enforcement_complex[{key}]", "complex", body))
    return models, cases


def register_signature_models(uri: str, folder: Path) -> None:
    """Register the per-signature echo models (version 1 each, in Production)."""
    import mlflow
    from mlflow import MlflowClient

    pins = [f"mlflow=={mlflow.__version__}"]
    code = folder / "echo_model.py"
    with tracking(uri):
        mlflow.set_tracking_uri(uri)
        eid = MlflowClient(uri, uri).get_experiment_by_name("parity").experiment_id
        with mlflow.start_run(experiment_id=eid):
            for name, how in SIGNATURE_MODELS.items():
                mlflow.pyfunc.log_model(name=name, python_model=str(code), pip_requirements=pins,
                                        registered_model_name=name, **how)
        mlflow.set_tracking_uri(None)
    for name in SIGNATURE_MODELS:
        promote(uri, "1", name=name)


SIGNATURE_MODELS, SIGNATURE_CASES = _signature_specs()
CASES = scoring_server_cases() + schema_enforcement_cases() + issue_cases()
_results: dict[str, str] = {}  # case id -> "same" | "intentional"


def send(base: str, case: Case) -> requests.Response:
    headers = {"Content-Type": case.content_type} if case.content_type is not None else {}
    data = case.body.encode("utf-8") if isinstance(case.body, str) else case.body
    return requests.request(case.method, base + case.path, data=data, headers=headers, timeout=60)


def outcome(resp: requests.Response) -> dict:
    """Status, error_code and predictions (the parsed JSON body of a 200) of an answer."""
    out: dict = {"status": resp.status_code}
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code == 200:
        out["body"] = body if body is not None else resp.text
    elif isinstance(body, dict) and "error_code" in body:
        out["error_code"] = body["error_code"]
    return out


def compare(pair: Pair, case: Case) -> None:
    """Send ``case`` to both servers of ``pair``: same status, error_code and predictions, or the
    listed intentional difference (never a 5xx, never a traceback)."""
    theirs, ours = send(pair.theirs, case), send(pair.ours, case)
    expected, got = outcome(theirs), outcome(ours)
    if "error_code" not in expected:  # MLflow's plain-text 415: only the status to compare
        got.pop("error_code", None)
    if 400 <= ours.status_code < 500:
        body = ours.json()  # bad input: always a JSON message, never a traceback
        assert body.get("message") and "stack_trace" not in body, body
        assert "Traceback" not in ours.text
    if case.id in INTENTIONAL:
        assert got != expected, f"{case.id} is listed as an intentional difference but answers the same"
        assert ours.status_code < 500, ours.text
        _results[case.id] = "intentional"
        return
    if case.path in ("/ping", "/version"):
        assert ours.status_code == theirs.status_code == 200 and ours.text == theirs.text
        assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]
    else:
        assert got == expected, f"mlflow: {theirs.status_code} {theirs.text[:600]}\nours:   {ours.status_code} {ours.text[:600]}"
    _results[case.id] = "same"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_same_answer_as_mlflow_models_serve(servers, case: Case):
    compare(servers[case.model], case)


@pytest.mark.parametrize("case", SIGNATURE_CASES, ids=[c.id for c in SIGNATURE_CASES])
def test_same_answer_as_mlflow_models_serve_per_signature(pool, case: Case):
    """MLflow's serving cases that each log a model of their own signature (tensors, lists,
    objects, arrays, maps, params from an input example)."""
    compare(pool.get(case.model), case)


def test_mlflow_scoring_server_client_works_unchanged(servers):
    """MLflow's own ScoringServerClient (as in test_scoring_server_client): ready, invoke, version."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient
    from mlflow.version import VERSION

    X, _ = iris_data()
    answers = {}
    for side in ("theirs", "ours"):
        url = getattr(servers["iris-knn"], side)
        host, port = url.removeprefix("http://").split(":")
        client = ScoringServerClient(host=host, port=int(port))
        client.wait_server_ready(timeout=30)
        answers[side] = client.invoke(pd.DataFrame(X)).get_predictions().to_numpy()[:, 0]
        assert client.get_version() == VERSION
    np.testing.assert_array_equal(answers["ours"], answers["theirs"])
    cancer = servers[BREAST]
    for side in ("theirs", "ours"):
        host, port = getattr(cancer, side).removeprefix("http://").split(":")
        from sklearn.datasets import load_breast_cancer

        frame = load_breast_cancer(as_frame=True).frame.drop(columns="target").head(20)
        answers[side] = ScoringServerClient(host=host, port=int(port)).invoke(frame).get_predictions().to_numpy()[:, 0]
    np.testing.assert_array_equal(answers["ours"], answers["theirs"])


def test_clean_requests_still_take_the_fast_paths(servers):
    """Parity did not cost the fast paths: the numeric and the mixed model still use them."""
    for name in (BREAST, "penguins"):
        info = requests.get(servers[name].ours + "/api/model/info", timeout=10).json()
        assert info["fast_path"] is True, (name, info["fast_path_reason"])


def test_strict_input_keeps_the_own_refusals(servers, tmp_path):
    """STRICT_INPUT=true: unknown columns and top-level keys refused with this service's codes,
    where the default (and MLflow) ignore them; clean requests answer as before."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns="target").head(2)
    rows = frame.to_numpy().tolist()
    split = {"columns": list(frame.columns), "data": rows}
    records = [dict(zip(frame.columns, r, strict=True)) for r in rows]
    port = free_port()
    strict = Service([str(BIN / "mlops"), "serve"], clean_env(
        MLFLOW_TRACKING_URI=servers["_uri"], MODEL_NAME=BREAST, PORT=port, HOST="127.0.0.1", WORKERS=1,
        MODEL_CACHE_DIR=tmp_path / "models", LOG_DIR=tmp_path / "logs", STRICT_INPUT="true"), tmp_path / "strict.log")
    try:
        strict.wait_http(f"http://127.0.0.1:{port}/ready", timeout=180)
        cases = {
            "UNKNOWN_COLUMNS": {"dataframe_records": [{**records[0], "customer_id": 7}]},
            "INVALID_INPUT_FORMAT": {"dataframe_split": split, "request_id": "r-1"},
            "INVALID_VALUE_TYPE": {"dataframe_records": [{**records[0], "mean radius": "17.99"}]},
        }
        for code, payload in cases.items():
            r = requests.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=30)
            assert r.status_code == 400 and r.json()["error_code"] == code, r.text[:300]
            default = requests.post(servers[BREAST].ours + "/invocations", json=payload, timeout=30)
            assert default.status_code == 200, default.text[:300]
        ok = requests.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_split": split}, timeout=30)
        same = requests.post(servers[BREAST].theirs + "/invocations", json={"dataframe_split": split}, timeout=30)
        assert ok.status_code == 200 and ok.json() == same.json()
    finally:
        strict.stop()


def test_every_intentional_difference_is_documented():
    """docs/api.md lists each intentional difference with its reason and its parity case."""
    text = (ROOT / "docs" / "api.md").read_text()
    section = text[text.index("### Differences from `mlflow models serve`"):]
    for case_id in INTENTIONAL:
        assert f"`{case_id}`" in section, case_id
    assert "stack_trace" in section
    assert set(INTENTIONAL) <= {c.id for c in CASES + SIGNATURE_CASES}


def test_zz_report(servers):
    """The differential numbers, for the end-of-run summary (runs last in this module)."""
    n = len(CASES) + len(SIGNATURE_CASES)
    same = sum(1 for v in _results.values() if v == "same")
    intentional = sum(1 for v in _results.values() if v == "intentional")
    # Under -n the cases of this module may be spread over several test processes: each reports
    # the cases it ran (every case asserts its own answer; this only sums them up).
    line = (f"{n} cases vs mlflow models serve {__import__('mlflow').__version__}; in this process "
            f"{same + intentional} ran: {same} same, {intentional} intentional differences")
    log.info(line)
    record_number("mlflow parity", line)
    assert set(_results.values()) <= {"same", "intentional"}, line
