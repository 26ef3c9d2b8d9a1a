"""Integration: the MLproject `train` entry point through `mlflow run` against a temp SQLite store."""

from __future__ import annotations

import sys

import mlflow
import pytest
from mlflow import MlflowClient

from mlops.registry import stage_api
from tests.helpers import BIN, ROOT, clean_env, run, sqlite_uri, train
from training.evaluate import METRIC_NAMES

pytestmark = pytest.mark.slow
NAME = "it-classifier"


def mlflow_run(uri: str, *params: str, check: bool = True):
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", "train", "--env-manager", "local",
           "--experiment-name", "it-exp", "-P", f"model_name={NAME}"]
    for p in params:
        cmd += ["-P", p]
    return run(cmd, env=clean_env(MLFLOW_TRACKING_URI=uri), check=check)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train-it")
    uri = sqlite_uri(tmp)
    run([str(BIN / "mlops"), "init"], env=clean_env(MLFLOW_TRACKING_URI=uri))
    mlflow_run(uri, "promote=production")
    return uri


@pytest.fixture()
def client(store):
    mlflow.set_tracking_uri(store)
    return MlflowClient(tracking_uri=store, registry_uri=store)


def test_first_run_registers_and_promotes_with_alias(client):
    mv = client.get_model_version(NAME, "1")
    assert mv.current_stage == "Production"
    assert {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()} == {"production": "1"}
    assert mv.tags["gate"] == "passed"
    assert len(mv.tags["data_digest"]) >= 8
    assert float(mv.tags["accuracy"]) >= 0.9
    assert "| accuracy |" in mv.description and "No Production version existed" in mv.description


def test_run_logs_params_metrics_plots_dataset_and_signature(client):
    mv = client.get_model_version(NAME, "1")
    r = client.get_run(mv.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["mlflow.source.type"] == "PROJECT"
    assert {"model", "data", "target", "test_size", "seed", "min_accuracy", "promote", "C", "max_iter"} <= set(r.data.params)
    assert set(METRIC_NAMES) | {"training_time_s"} <= set(r.data.metrics)
    plots = {a.path for a in client.list_artifacts(mv.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/roc_curve.png", "plots/coefficients.png"} <= plots
    ds = r.inputs.dataset_inputs[0].dataset
    assert ds.digest == mv.tags["data_digest"] and "breast_cancer.csv" in ds.source
    info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert len(info.signature.inputs.input_names()) == 30
    assert info.saved_input_example_info is not None


def test_auto_promotion_follows_holdout_comparison(client, store):
    mlflow_run(store, "model=random_forest", "n_estimators=30", "promote=auto")
    v1, v2 = client.get_model_version(NAME, "1"), client.get_model_version(NAME, "2")
    assert "Production v1" in v2.description  # compared on the same holdout
    new_acc, old_acc = float(v2.tags["accuracy"]), float(v1.tags["accuracy"])
    with stage_api():
        prod = client.get_latest_versions(NAME, ["Production"])
    if new_acc > old_acc:
        assert [str(p.version) for p in prod] == ["2"] and v1.current_stage == "Archived"
    elif new_acc < old_acc:
        assert [str(p.version) for p in prod] == ["1"] and v2.current_stage == "None"
    assert str(client.get_registered_model(NAME).aliases["production"]) == str(prod[0].version)


def test_gate_failure_keeps_run_registers_nothing(client, store):
    before = len(client.search_model_versions(f"name='{NAME}'"))
    proc = train(store, "--model-name", NAME, "--min-accuracy", "1.0", "--experiment", "it-exp", check=False)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith("error: quality gate failed: accuracy")
    assert len(client.search_model_versions(f"name='{NAME}'")) == before
    exp = client.get_experiment_by_name("it-exp")
    failed = client.search_runs([exp.experiment_id], "tags.`mlops.gate` = 'failed'")
    assert failed and failed[0].info.status == "FAILED"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/data.csv"], "data file not found"),
        (["--target", "no_such_column"], "target column 'no_such_column' not found"),
    ],
)
def test_bad_input_one_line_nothing_registered(client, store, args, message):
    before = len(client.search_model_versions(f"name='{NAME}'"))
    proc = train(store, "--model-name", NAME, *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {proc.stderr.strip()[7:]}" and message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(client.search_model_versions(f"name='{NAME}'")) == before


def test_gradient_boosting_saves_with_skops_and_loads(tmp_path):
    uri = sqlite_uri(tmp_path)
    train(uri, "--model", "gradient_boosting", "--n-estimators", "20", "--model-name", "gbm", "--promote", "staging")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/gbm@staging")
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer(as_frame=True).data.head(3)
    assert len(model.predict(X)) == 3
    assert sys.modules.get("skops") is not None
