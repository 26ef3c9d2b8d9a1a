"""Integration: real training runs on user-shaped data (penguins, diabetes, wine) and bad input."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from mlops.registry import stage_api
from tests.helpers import BIN, ROOT, clean_env, run, sqlite_uri, train

pytestmark = pytest.mark.slow
PENGUINS = ROOT / "training" / "datasets" / "penguins.csv"
SPECIES = {"Adelie", "Chinstrap", "Gentoo"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return sqlite_uri(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def client(store):
    mlflow.set_tracking_uri(store)
    return MlflowClient(tracking_uri=store, registry_uri=store)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """diabetes (plus a many-valued text column), wine with some targets missing, broken files."""
    from sklearn.datasets import load_diabetes, load_wine

    d = tmp_path_factory.mktemp("data")
    diabetes = load_diabetes(as_frame=True).frame
    diabetes["code"] = [f"c{i % 300}" for i in range(len(diabetes))]
    diabetes.to_csv(d / "diabetes.csv", index=False)
    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].astype(float)
    wine.loc[[0, 50, 100, 150, 170], "target"] = np.nan
    wine.to_csv(d / "wine.csv", index=False)
    base = pd.DataFrame({"a": np.arange(30.0), "b": ["x", "y", "z"] * 10, "y": [0, 1] * 15})
    base.assign(y=3).to_csv(d / "constant.csv", index=False)
    base.assign(y=np.nan).to_csv(d / "nolabel.csv", index=False)
    base.assign(y=[f"id{i}" for i in range(30)]).to_csv(d / "idlabel.csv", index=False)
    pd.DataFrame({"const": 1, "id": [f"r{i}" for i in range(30)], "empty": np.nan, "y": [0, 1] * 15}).to_csv(
        d / "nofeature.csv", index=False)
    (d / "binary.csv").write_bytes(b"\xff\xfe\x00\x81\x82garbage\x00\xff" * 50)
    (d / "empty.csv").write_text("")
    base.to_csv(d / "ok.csv", index=False)
    return d


def versions(client, name: str) -> list:
    return client.search_model_versions(f"name='{name}'")


@pytest.fixture(scope="module")
def penguins(store, client):
    train(store, "--data", str(PENGUINS), "--target", "species", "--model-name", "penguins",
          "--promote", "production", "--experiment", "tasks")
    return client.get_model_version("penguins", "1")


def test_penguins_trains_multiclass_on_raw_text_and_missing_values(penguins, client):
    assert penguins.tags["task"] == "classification" and penguins.tags["model_type"] == "logistic_regression"
    assert penguins.tags["classes"] == "Adelie,Chinstrap,Gentoo"
    assert "Classes: `Adelie`, `Chinstrap`, `Gentoo`." in penguins.description
    r = client.get_run(penguins.run_id)
    for m in ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"):
        assert m in r.data.metrics
    assert r.data.metrics["accuracy"] >= 0.9
    plots = {a.path for a in client.list_artifacts(penguins.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/permutation_importance.png"} <= plots
    assert "plots/roc_curve.png" not in plots  # binary only
    # A small holdout is used whole by every plot (the sample cap only applies past 2,000 rows).
    assert r.data.params["plot_sample_rows"] == r.data.params["n_test_rows"]


def test_penguins_signature_has_real_types_and_optional_columns(penguins):
    info = mlflow.models.get_model_info("models:/penguins/1")
    cols = {c.name: (c.type.to_numpy().kind if hasattr(c.type, "to_numpy") else str(c.type), c.required)
            for c in info.signature.inputs.inputs}
    types = {c.name: str(c.type) for c in info.signature.inputs.inputs}
    assert types == {"island": "DataType.string", "bill_length_mm": "DataType.double",
                     "bill_depth_mm": "DataType.double", "flipper_length_mm": "DataType.double",
                     "body_mass_g": "DataType.double", "sex": "DataType.string", "year": "DataType.long"}
    assert cols["sex"][1] is False and cols["bill_length_mm"][1] is False
    assert cols["island"][1] is True and cols["year"][1] is True
    assert info.saved_input_example_info is not None


def test_penguins_pyfunc_predicts_raw_rows_with_nulls_and_unseen_categories(penguins):
    model = mlflow.pyfunc.load_model("models:/penguins/1")
    rows = pd.DataFrame({
        "island": ["Biscoe", "Atlantis", "Dream"],
        "bill_length_mm": [47.5, None, np.nan],
        "bill_depth_mm": [14.5, 18.0, None],
        "flipper_length_mm": [215.0, 190.0, None],
        "body_mass_g": [5200.0, None, 3700.0],
        "sex": [None, "unknown", "female"],
        "year": [2008, 2009, 2007],
    })
    pred = model.predict(rows)
    assert len(pred) == 3 and set(pred) <= SPECIES
    assert all(isinstance(p, str) for p in pred)
    assert pred[0] == "Gentoo"  # long flipper, heavy, shallow bill, on Biscoe
    proba = model.get_raw_model().predict_proba(rows)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(axis=1), 1)


def test_hist_gradient_boosting_on_penguins_saves_and_loads(store, client):
    train(store, "--data", str(PENGUINS), "--target", "species", "--model", "hist_gradient_boosting",
          "--n-estimators", "20", "--model-name", "penguins-hgb", "--experiment", "tasks")
    model = mlflow.pyfunc.load_model("models:/penguins-hgb/1")
    frame = pd.read_csv(PENGUINS).drop(columns=["species"]).head(20)
    assert set(model.predict(frame)) <= SPECIES


@pytest.fixture(scope="module")
def diabetes(store, client, data):
    proc = train(store, "--data", str(data / "diabetes.csv"), "--target", "target", "--model", "random_forest",
                 "--n-estimators", "15", "--model-name", "diabetes", "--promote", "production",
                 "--experiment", "tasks")
    return client.get_model_version("diabetes", "1"), proc


def test_diabetes_is_detected_as_regression_with_its_metrics_and_plots(diabetes, client):
    mv, proc = diabetes
    assert "task: regression (numeric target with 214 distinct values)" in proc.stderr
    assert mv.tags["task"] == "regression" and mv.tags["model_type"] == "random_forest"
    r = client.get_run(mv.run_id)
    assert {"rmse", "mae", "r2", "mape"} <= set(r.data.metrics) and "accuracy" not in r.data.metrics
    assert 30 < r.data.metrics["rmse"] < 80 and r.data.metrics["r2"] > 0.2
    assert r.data.tags["mlops.gate_conditions"] == "r2>=0"
    plots = {a.path for a in client.list_artifacts(mv.run_id, "plots")}
    assert {"plots/predicted_vs_actual.png", "plots/residuals.png", "plots/permutation_importance.png"} <= plots
    assert "| rmse |" in mv.description


def test_many_distinct_strings_warn_and_are_bounded(diabetes):
    mv, proc = diabetes
    assert "code (300 values)" in proc.stderr and "keep their 50 most frequent" in proc.stderr
    raw = mlflow.pyfunc.load_model("models:/diabetes/1").get_raw_model()
    encoder = raw.named_steps["preprocess"].named_transformers_["cat"].named_steps["encode"]
    assert len(encoder.get_feature_names_out()) <= 51
    info = mlflow.models.get_model_info("models:/diabetes/1")
    assert {c.name: str(c.type) for c in info.signature.inputs.inputs}["code"] == "DataType.string"
    row = pd.DataFrame([{**{c: 0.01 for c in ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")},
                         "code": "never-seen"}])
    assert np.isfinite(mlflow.pyfunc.load_model("models:/diabetes/1").predict(row)).all()


def test_regression_gate_and_promotion_use_rmse_lower_is_better(diabetes, store, client, data):
    args = ["--data", str(data / "diabetes.csv"), "--target", "target", "--model-name", "diabetes",
            "--experiment", "tasks"]
    failed = train(store, *args, "--model", "ridge", "--gate", "r2>=0.99", check=False)
    assert failed.returncode == 3
    assert failed.stderr.strip().splitlines()[-1].startswith("error: quality gate failed: r2 0.")
    assert "does not satisfy r2>=0.99" in failed.stderr and len(versions(client, "diabetes")) == 1
    # A much worse challenger (one shallow tree) is registered but not promoted.
    train(store, *args, "--model", "random_forest", "--n-estimators", "1", "--max-depth", "1", "--promote", "auto")
    v1, v2 = client.get_model_version("diabetes", "1"), client.get_model_version("diabetes", "2")
    assert float(v2.tags["rmse"]) > float(v1.tags["rmse"])
    with stage_api():
        assert [str(p.version) for p in client.get_latest_versions("diabetes", ["Production"])] == ["1"]
    assert "Production v1" in v2.description


def test_wine_drops_rows_without_target_and_keeps_integer_labels(store, client, data):
    proc = train(store, "--data", str(data / "wine.csv"), "--target", "target", "--model", "random_forest",
                 "--n-estimators", "10", "--model-name", "wine", "--experiment", "tasks")
    assert "dropped 5 of 178 rows whose target 'target' is missing" in proc.stderr
    mv = client.get_model_version("wine", "1")
    r = client.get_run(mv.run_id)
    assert int(r.data.params["n_train_rows"]) + int(r.data.params["n_test_rows"]) == 173
    assert mv.tags["task"] == "classification" and mv.tags["classes"] == "0,1,2"
    assert r.data.metrics["accuracy"] > 0.85 and "roc_auc" in r.data.metrics
    from sklearn.datasets import load_wine

    pred = mlflow.pyfunc.load_model("models:/wine/1").predict(load_wine(as_frame=True).data.head(5))
    assert set(np.asarray(pred).tolist()) <= {0, 1, 2}


@pytest.mark.parametrize(
    "file, extra, message",
    [
        ("ok.csv", ["--target", "nope"], "target column 'nope' not found"),
        ("constant.csv", [], "target column 'y' is constant (3 in every row)"),
        ("nolabel.csv", [], "target column 'y' has no values (all 30 missing)"),
        ("idlabel.csv", [], "30 distinct text values in 30 rows"),
        ("nofeature.csv", [], "no usable feature column: const: constant (1); id: unique per row"),
        ("binary.csv", [], "cannot read"),
        ("empty.csv", [], "data file is empty"),
        ("ok.csv", ["--task", "regression", "--target", "b"], "'b' is not numeric"),
        ("ok.csv", ["--task", "regression", "--model", "logistic_regression"], "for classification only"),
        ("ok.csv", ["--gate", "f1>0.5,"], "malformed gate"),
        ("ok.csv", ["--gate", "r2>=0.5"], "unknown metric 'r2' for classification"),
    ],
)
def test_bad_input_gives_one_error_line_and_registers_nothing(store, client, data, file, extra, message):
    args = ["--data", str(data / file), "--target", "y", *extra]
    proc = train(store, *args, "--model-name", "bad", "--experiment", "tasks", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == [proc.stderr.strip().splitlines()[-1]] and errors[0].startswith("error: ")
    assert message in errors[0]
    assert "Traceback" not in proc.stderr
    assert versions(client, "bad") == []


def test_mlflow_run_trains_penguins_from_the_project(tmp_path):
    uri = sqlite_uri(tmp_path)
    cmd = [str(BIN / "mlflow"), "run", str(ROOT), "-e", "train", "--env-manager", "local",
           "--experiment-name", "penguins-run", "-P", f"data={PENGUINS}", "-P", "target=species",
           "-P", "model_name=penguins-run", "-P", "gate=f1>=0.8"]
    proc = run(cmd, env=clean_env(MLFLOW_TRACKING_URI=uri))
    assert "task: classification (text target with 3 classes)" in proc.stderr
    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = c.get_model_version("penguins-run", "1")
    r = c.get_run(mv.run_id)
    assert r.data.params["task"] == "auto" and r.data.params["model"] == "auto"
    assert r.data.tags["mlops.gate_conditions"] == "accuracy>=0.9,f1>=0.8"
    assert mv.tags["task"] == "classification"
