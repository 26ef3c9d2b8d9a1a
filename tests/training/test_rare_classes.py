"""A class with a single row: it trains the model, never lands in the holdout, and the metrics it
leaves undefined are not logged; one readable warning, no raw Python warnings."""

from __future__ import annotations

import logging
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from tests.helpers import ROOT, clean_env, run
from training.data import PENGUINS, DataError
from training.evaluate import evaluate, predictions, save_plots
from training.train import split

UNICORN = "Unicorn"
COLUMNS = ["x0", "x1", "x2"]


def unicorns(n: int = 300) -> pd.DataFrame:
    """The first ``n`` penguins rows with a species, one of them relabelled 'Unicorn'."""
    df = pd.read_csv(PENGUINS).dropna(subset=["species"]).head(n).reset_index(drop=True)
    df.loc[5, "species"] = UNICORN
    return df


@pytest.mark.parametrize("seed", range(8))
def test_a_single_row_class_trains_and_is_never_in_the_holdout(seed, caplog):
    df = unicorns()
    X, y = df.drop(columns=["species"]), df["species"]
    with caplog.at_level(logging.WARNING, logger="training"):
        X_train, X_test, y_train, y_test = split(X, y, "classification", 0.2, seed)
    assert (y_train == UNICORN).sum() == 1 and UNICORN not in set(y_test)
    assert len(X_train) + len(X_test) == 300 and len(X_test) == 60
    assert sorted(X_train.index.append(X_test.index)) == list(range(300))
    shares = y_test.value_counts(normalize=True)  # the other classes are still stratified
    expected = y[y != UNICORN].value_counts(normalize=True)
    assert np.allclose(shares.sort_index(), expected.sort_index(), atol=0.02)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "'Unicorn' (1 row)" in lines[0] and "roc_auc" in lines[0]


def test_the_usual_split_is_unchanged_without_rare_classes(caplog):
    from sklearn.model_selection import train_test_split

    df = unicorns().replace({UNICORN: "Adelie"})
    X, y = df.drop(columns=["species"]), df["species"]
    ours = split(X, y, "classification", 0.2, 42)
    theirs = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    assert all(a.index.equals(b.index) for a, b in zip(ours, theirs, strict=True))
    assert not caplog.records


def test_every_class_rare_or_a_holdout_too_small_is_one_error_line():
    X = pd.DataFrame({"x": range(12)})
    with pytest.raises(DataError, match="every class of target 'y' has fewer than 2 rows"):
        split(X, pd.Series(range(12), name="y"), "classification", 0.2, 0)
    with pytest.raises(DataError, match=r"cannot split 12 rows into training and holdout rows \(test_size=0.1\)"):
        split(X, pd.Series([0, 1, 2, 3] * 3, name="y"), "classification", 0.1, 0)


def _fitted(y_train: np.ndarray):
    """A 1-nearest-neighbour model (with probabilities) of 3 columns, class k around k * 3."""
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    X_train = rng.normal(size=(len(y_train), 3)) + 3.0 * np.asarray(pd.factorize(y_train)[0])[:, None]
    return KNeighborsClassifier(n_neighbors=1).fit(pd.DataFrame(X_train, columns=COLUMNS), y_train), rng


@pytest.mark.parametrize("predicted", [True, False], ids=["unicorn-predicted", "unicorn-not-predicted"])
@pytest.mark.parametrize("classes", [["a", "b", "c", UNICORN], ["a", UNICORN]], ids=["multiclass", "binary"])
def test_metrics_a_holdout_cannot_define_are_not_logged_and_warn_nothing(tmp_path, classes, predicted):
    y_train = np.array([c for c in classes[:-1] for _ in range(30)] + [UNICORN])
    model, rng = _fitted(y_train)
    y_test = np.array([classes[i % (len(classes) - 1)] for i in range(40)])
    X_test = rng.normal(size=(40, 3)) + 3.0 * np.asarray(pd.factorize(y_test)[0])[:, None]
    if predicted:
        X_test[:4] = 3.0 * (len(classes) - 1)  # at the Unicorn row: predicted as Unicorn
    X_test = pd.DataFrame(X_test, columns=COLUMNS)
    assert (UNICORN in set(model.predict(X_test))) == predicted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = evaluate(model, X_test, y_test, "classification")
        paths = save_plots(model, X_test, pd.Series(y_test), COLUMNS, tmp_path, "classification")
    assert "roc_auc" not in metrics and all(np.isfinite(v) for v in metrics.values())
    assert {"accuracy", "balanced_accuracy", "precision", "recall", "f1", "log_loss"} <= set(metrics)
    assert {p.name for p in paths}.isdisjoint({"roc_curve.png", "precision_recall.png"})


def test_roc_auc_is_still_logged_when_every_class_is_in_the_holdout():
    y_train = np.array(["a", "b", "c"] * 20)
    model, rng = _fitted(y_train)
    X_test = pd.DataFrame(rng.normal(size=(30, 3)) + 3.0 * np.asarray(pd.factorize(y_train[:30])[0])[:, None],
                          columns=COLUMNS)
    assert "roc_auc" in evaluate(model, X_test, y_train[:30], "classification", predictions(model, X_test))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 3])  # without the fix: raw UndefinedMetricWarning (1), a traceback (3)
def test_training_with_a_single_row_class_warns_in_one_line_and_registers(tmp_path, seed):
    from mlflow import MlflowClient

    data = tmp_path / "unicorns.csv"
    unicorns().to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run([sys.executable, "-m", "training.train", "--data", str(data), "--target", "species",
                "--seed", str(seed), "--model-name", "unicorns", "--experiment", "unicorns"],
               env=clean_env(MLFLOW_TRACKING_URI=uri), cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if " WARNING " in line]
    assert len(warned) == 1 and "'Unicorn' (1 row)" in warned[0], proc.stderr
    assert "Warning:" not in proc.stderr and "warnings.warn" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("unicorns", "1")
    metrics = client.get_run(mv.run_id).data.metrics
    assert "roc_auc" not in metrics and metrics["accuracy"] > 0.9
    assert UNICORN in mv.tags["classes"].split(",")
