"""Serve any registered model, not only ours.

Models a team logs itself, outside `training.train`: a scikit-learn pipeline logged from a notebook
with MLflow's defaults (no signature, no input example), the same kind of pipeline logged with an
input example (MLflow infers the signature), a custom ``mlflow.pyfunc.PythonModel`` whose class
lives in a module shipped with ``code_paths``, and a pipeline logged without a signature
(``signature=False``). Each one is promoted with `mlops promote` (its pre-flight runs), answered by
the real service (gunicorn) exactly as ``mlflow.pyfunc.load_model(...).predict`` answers on the
same rows, backed up with `mlops backup` and restored with `mlops restore` into an empty store,
where a fresh interpreter loads it and predicts the same.

One store, one service and one backup for the module: the versions of one registered model are
promoted in turn and the service follows Production.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from tests.helpers import BIN, ROOT, clean_env, free_port, service
from tests.lifecycle.conftest import mlops
from tests.lifecycle.registry_data import pip_requirements

pytestmark = pytest.mark.slow

NAME = "any-model"
PENGUINS = ROOT / "training" / "datasets" / "penguins.csv"
NUMERIC = ["bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g", "year"]
TEXT = ["island", "sex"]
MODULE = "anymodel_rules"
MODULE_SOURCE = '''
import mlflow.pyfunc
import pandas as pd


class MassRule(mlflow.pyfunc.PythonModel):
    """A rule, not an estimator: "heavy" above a body mass, "light" below, "unknown" without one."""

    def __init__(self, threshold):
        self.threshold = threshold

    def predict(self, context, model_input, params=None):
        mass = pd.to_numeric(model_input["body_mass_g"], errors="coerce")
        return ["unknown" if m != m else "heavy" if m > self.threshold else "light" for m in mass]
'''

# Which registered version each kind of model gets (logged in this order).
NOTEBOOK, EXAMPLE, CUSTOM, UNSIGNED = "1", "2", "3", "4"


def _raw_rows():
    """Penguin rows as a user's file has them: strings, missing values (NaN), an unseen island."""
    import pandas as pd

    frame = pd.read_csv(PENGUINS).drop(columns=["species"])
    rows = frame.iloc[[0, 3, 8, 9, 47, 120, 178, 200, 256, 271, 300, 343]].reset_index(drop=True)
    unseen = rows.iloc[[0]].copy()
    unseen["island"] = "Anvers"
    return pd.concat([rows, unseen], ignore_index=True)


def _body(frame) -> str:
    """The rows as a `dataframe_split` request, missing values as JSON null."""
    data = [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
            for row in frame.astype(object).to_numpy().tolist()]
    return json.dumps({"dataframe_split": {"columns": list(frame.columns), "data": data}})


def _jsonable(preds) -> list:
    import numpy as np

    return np.asarray(preds).tolist() if not isinstance(preds, list) else list(preds)


def _log_models(uri: str, folder: Path) -> None:
    """Log and register the four versions the way a user would in a notebook."""
    import mlflow
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    code = folder / "code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(MODULE_SOURCE)
    data = pd.read_csv(PENGUINS).dropna(subset=["species"])
    X, y = data.drop(columns=["species"]), data["species"]
    complete = data.dropna(subset=NUMERIC)
    numeric = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(complete[NUMERIC],
                                                                                      complete["species"])
    mixed = make_pipeline(
        ColumnTransformer([
            ("num", make_pipeline(SimpleImputer(), StandardScaler()), NUMERIC),
            ("txt", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")),
             TEXT),
        ]),
        LogisticRegression(max_iter=2000),
    ).fit(X, y)
    # Explicit pip requirements only spare MLflow's requirement inference (a subprocess taking half
    # a minute here); the model files, signature and example are MLflow's defaults all the same.
    reqs = pip_requirements()
    sys.path.insert(0, str(code))
    try:
        rules = __import__(MODULE).MassRule(4000)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        try:
            # An experiment of its own: the process-wide active experiment may belong to another store.
            eid = mlflow.MlflowClient(uri).create_experiment("any-model-notebook")
            with mlflow.start_run(run_name="notebook", experiment_id=eid):
                infos = [
                    mlflow.sklearn.log_model(numeric, name="model", registered_model_name=NAME, pip_requirements=reqs),
                    mlflow.sklearn.log_model(mixed, name="model", registered_model_name=NAME, input_example=X.head(5),
                                             serialization_format="cloudpickle",
                                             pip_requirements=[*reqs, "cloudpickle"]),
                    mlflow.pyfunc.log_model(name="model", python_model=rules, code_paths=[str(code / f"{MODULE}.py")],
                                            registered_model_name=NAME, input_example=X.head(5),
                                            pip_requirements=reqs),
                    mlflow.sklearn.log_model(mixed, name="model", registered_model_name=NAME, input_example=X.head(5),
                                             signature=False, skops_trusted_types=["numpy.dtype"],
                                             pip_requirements=reqs),
                ]
        finally:
            mlflow.set_tracking_uri(previous)
    finally:
        sys.path.remove(str(code))
    # The module now exists only inside the logged model: serving and the restored copy must use that.
    shutil.rmtree(code)
    assert infos[0].signature is None and infos[0].saved_input_example_info is None
    assert infos[1].signature is not None and infos[2].signature is not None
    assert infos[3].signature is None and infos[3].saved_input_example_info is not None


def _columns(version: str) -> list[str]:
    return NUMERIC if version == NOTEBOOK else list(_raw_rows().columns)


def _rows(version: str):
    rows = _raw_rows()
    if version == NOTEBOOK:  # a numeric-only model with no imputer takes complete numeric rows
        rows = rows.dropna(subset=NUMERIC)[NUMERIC].reset_index(drop=True)
    return rows


@pytest.fixture(scope="module")
def store(tmp_path_factory, new_store):
    """The source store with the four versions, and what pyfunc predicts for each in this process."""
    import mlflow

    folder = tmp_path_factory.mktemp("any-model")
    uri = new_store(folder)
    _log_models(uri, folder)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        expected = {}
        for v in (NOTEBOOK, EXAMPLE, CUSTOM, UNSIGNED):
            (folder / f"pyfunc-{v}").mkdir()
            model = mlflow.pyfunc.load_model(f"models:/{NAME}/{v}", dst_path=str(folder / f"pyfunc-{v}"))
            expected[v] = _jsonable(model.predict(_rows(v)))
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(set(map(str, expected[EXAMPLE]))) == 3, expected  # multiclass on these rows
    return {"uri": uri, "folder": folder, "expected": expected}


@pytest.fixture(scope="module")
def served(store):
    """The real service (gunicorn, one worker) following Production of NAME; started before any
    version is in Production, so /health is what says it is up."""
    folder, port = store["folder"], free_port()
    env = clean_env(MLFLOW_TRACKING_URI=store["uri"], MODEL_NAME=NAME, PORT=port, HOST="127.0.0.1", WORKERS=1,
                    MODEL_CACHE_DIR=folder / "serving-models", LOG_DIR=folder / "logs", POLL_INTERVAL_S=0.2)
    url = f"http://127.0.0.1:{port}"
    with service([str(BIN / "mlops"), "serve"], env, folder / "serving.log", url + "/health", timeout=180) as svc:
        yield url, svc


@pytest.fixture(scope="module")
def restored(store, tmp_path_factory, new_store):
    """`mlops backup` of NAME, `mlops restore` into an empty store, then every restored version
    loaded and predicted by a fresh interpreter outside the repository (nothing of this test or
    of the deleted module on its path)."""
    folder = tmp_path_factory.mktemp("any-model-restored")
    archive = folder / "any-model.tar.gz"
    mlops("backup", "--models", NAME, "--out", archive, uri=store["uri"])
    uri = new_store(folder)
    proc = mlops("restore", archive, uri=uri)
    assert "1 models" in proc.stdout, proc.stdout
    script = folder / "predict_restored.py"
    script.write_text(
        "import json, sys\nimport mlflow, pandas as pd\n"
        "spec = json.loads(sys.stdin.read())\nout = {}\n"
        "for v, split in spec.items():\n"
        "    rows = pd.DataFrame(split['data'], columns=split['columns'])\n"
        f"    model = mlflow.pyfunc.load_model('models:/{NAME}/' + v)\n"
        "    preds = model.predict(rows)\n"
        "    out[v] = preds.tolist() if hasattr(preds, 'tolist') else list(preds)\n"
        "print(json.dumps(out))\n"
    )
    spec = {v: json.loads(_rows(v).to_json(orient="split", index=False)) for v in store["expected"]}
    import subprocess

    env = clean_env(MLFLOW_TRACKING_URI=uri)
    env.pop("PYTHONPATH", None)
    done = subprocess.run([sys.executable, "-I", "-B", str(script)], input=json.dumps(spec), env=env, cwd=folder,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"uri": uri, "predictions": json.loads(done.stdout.strip().splitlines()[-1])}


def _promote(store, version: str):
    from mlops.cli import _load_commands
    from mlops.cli import cli as group

    _load_commands()
    return CliRunner().invoke(group, ["promote", NAME, version, "--tracking-uri", store["uri"]], prog_name="mlops")


def _served_predictions(url: str, version: str, timeout: float = 90) -> list:
    """/invocations once the service answers from ``version``."""
    body = _body(_rows(version))
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        r = requests.post(url + "/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=30)
        if r.status_code == 200 and r.headers.get("X-Model-Version") == version:
            return r.json()["predictions"]
        last = f"HTTP {r.status_code} v{r.headers.get('X-Model-Version')}: {r.text[:300]}"
        time.sleep(0.2)
    health = requests.get(url + "/health", timeout=10).json()
    raise AssertionError(f"v{version} not served after {timeout}s (last: {last}); health: {health}")


def _check(store, served, restored, version: str) -> None:
    url, svc = served
    res = _promote(store, version)
    assert res.exit_code == 0 and f"{NAME} v{version} is now Production" in res.output, res.output
    assert _served_predictions(url, version) == store["expected"][version], svc.log_tail()
    assert restored["predictions"][version] == store["expected"][version]


def _model_files(uri: str, version: str, dest: Path) -> dict[str, bytes]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{version}", dst_path=str(dest)))
    finally:
        mlflow.set_tracking_uri(previous)
    return {str(p.relative_to(local)): p.read_bytes() for p in sorted(local.rglob("*")) if p.is_file()}


def test_a_notebook_model_logged_with_mlflow_defaults(store, served, restored):
    _check(store, served, restored, NOTEBOOK)


def test_a_notebook_model_logged_with_an_input_example(store, served, restored):
    _check(store, served, restored, EXAMPLE)
    info = requests.get(served[0] + "/api/model/info", timeout=10).json()
    assert info["signature"]["inputs"] and info["classes"] == ["Adelie", "Chinstrap", "Gentoo"]


def test_a_custom_pyfunc_model_with_its_module_in_code_paths(store, served, restored, tmp_path):
    _check(store, served, restored, CUSTOM)
    assert set(store["expected"][CUSTOM]) == {"heavy", "light", "unknown"}
    files = _model_files(restored["uri"], CUSTOM, tmp_path / "restored")
    assert files == _model_files(store["uri"], CUSTOM, tmp_path / "source")
    assert f"code/{MODULE}.py" in files


def test_a_model_without_a_signature(store, served, restored):
    _check(store, served, restored, UNSIGNED)
    info = requests.get(served[0] + "/api/model/info", timeout=10).json()
    assert info["signature"] is None and info["model_version"] == UNSIGNED


def test_a_version_that_cannot_predict_is_not_promoted(store, served):
    """The pre-flight is a real check for these models too: a row its own example cannot pass refuses it."""
    import mlflow
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store["uri"])
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/{UNSIGNED}",
                                                         dst_path=str(store["folder"] / "broken")))
    finally:
        mlflow.set_tracking_uri(previous)
    example = json.loads((local / "input_example.json").read_text())
    drop = example["columns"].index("island")
    example["columns"].pop(drop)
    for row in example["data"]:
        row.pop(drop)
    (local / "input_example.json").write_text(json.dumps(example))
    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    mv = client.create_model_version(NAME, str(local))
    res = _promote(store, str(mv.version))
    assert res.exit_code != 0, res.output
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: pre-flight failed for {NAME} v{mv.version}, nothing changed"), res.stderr
    assert client.get_model_version(NAME, mv.version).current_stage == "None"
