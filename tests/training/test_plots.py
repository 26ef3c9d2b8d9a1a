"""Plots on large holdouts: a fixed-seed sample for permutation importance and scatter plots only."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.evaluate import evaluate, plot_sample, predictions, save_plots
from training.models import build_model
from training.preprocess import CLASSIFICATION, REGRESSION, plan_columns, prepare_frame

HP = {"C": 1.0, "max_iter": 1000, "alpha": 1.0}


def _data(n: int, task: str) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(3)
    X = pd.DataFrame({"x": rng.normal(size=n), "k": rng.choice(["a", "b", "c"], n)})
    signal = X["x"] + (X["k"] == "a")
    y = pd.Series(np.where(signal > 0.5, "yes", "no") if task == CLASSIFICATION else signal * 3.0, name="y")
    return X, y


def test_sample_is_the_whole_holdout_up_to_the_cap_then_fixed_seed():
    X, y = _data(50, CLASSIFICATION)
    Xs, ys = plot_sample(X, y, seed=1, max_rows=50)
    assert Xs is X and ys is y
    a, b = plot_sample(X, y, seed=1, max_rows=20), plot_sample(X, y, seed=1, max_rows=20)
    assert len(a[0]) == 20 and a[0].index.equals(b[0].index) and a[0].index.equals(a[1].index)
    assert a[0].index.is_monotonic_increasing and a[0].index.is_unique


def test_precomputed_predictions_give_the_same_metrics():
    X, y = _data(300, CLASSIFICATION)
    plan = plan_columns(X)
    model = build_model("logistic_regression", HP, 0, CLASSIFICATION, plan).fit(prepare_frame(X, plan), y)
    Xp = prepare_frame(X, plan)
    pred, proba = predictions(model, Xp)  # preprocessing once, same values as the pipeline's own calls
    assert np.array_equal(pred, model.predict(Xp)) and np.array_equal(proba, model.predict_proba(Xp))
    assert evaluate(model, Xp, y) == evaluate(model, Xp, y, CLASSIFICATION, (pred, proba))


def test_sampled_plots_say_so_in_their_titles(tmp_path, monkeypatch):
    import matplotlib.axes

    titles = []
    original = matplotlib.axes.Axes.set_title
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title",
                        lambda self, label, *a, **k: titles.append(label) or original(self, label, *a, **k))
    for task, family in ((CLASSIFICATION, "logistic_regression"), (REGRESSION, "ridge")):
        X, y = _data(400, task)
        plan = plan_columns(X)
        Xp = prepare_frame(X, plan)
        model = build_model(family, HP, 0, task, plan).fit(Xp, y)
        paths = save_plots(model, Xp, y, list(Xp.columns), tmp_path / task, task, seed=0, max_rows=100)
        assert all(p.stat().st_size > 0 for p in paths)
    assert "Permutation importance (holdout, 100 of 400 rows)" in titles
    assert "Predicted vs actual (holdout, 100 of 400 rows)" in titles
    assert "Confusion matrix (holdout)" in titles and "ROC curve (holdout)" in titles  # every row
