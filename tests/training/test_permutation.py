"""Permutation importance with the preprocessing run once equals scikit-learn's own, exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.inspection import permutation_importance
from sklearn.pipeline import Pipeline

from training.evaluate import blockwise_permutation_importance
from training.models import build_model
from training.preprocess import CLASSIFICATION, REGRESSION, plan_columns, prepare_frame

HP = {"C": 1.0, "max_iter": 500, "alpha": 1.0, "n_estimators": 20, "max_depth": 0, "learning_rate": 0.1}


def _table(n: int, task: str, seed: int = 5) -> tuple[pd.DataFrame, pd.Series]:
    """Numbers with gaps, text with gaps and many values, a boolean: a team's first CSV."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({
        "x": rng.normal(size=n),
        "count": rng.poisson(3, n),
        "town": rng.choice([f"t{i}" for i in range(40)], n).astype(object),
        "kind": rng.choice(["a", "b", "c"], n).astype(object),
        "flag": rng.random(n) < 0.3,
    })
    X.loc[rng.random(n) < 0.1, "x"] = np.nan
    X.loc[rng.random(n) < 0.05, "kind"] = None
    signal = X["x"].fillna(0) + (X["kind"] == "a") + 0.2 * X["count"] - X["flag"]
    y = np.where(signal > 0.7, "yes", np.where(signal > 0, "maybe", "no")) if task == CLASSIFICATION else signal * 3
    return X, pd.Series(y, name="y")


@pytest.mark.parametrize("family,task", [
    ("logistic_regression", CLASSIFICATION), ("hist_gradient_boosting", CLASSIFICATION),
    ("random_forest", REGRESSION), ("ridge", REGRESSION), ("hist_gradient_boosting", REGRESSION),
])
def test_same_importances_as_scikit_learn(family, task):
    X, y = _table(600, task)
    plan = plan_columns(X)
    Xp = prepare_frame(X, plan)
    model = build_model(family, HP, 0, task, plan).fit(Xp, y)
    holdout, yh = _table(300, task, seed=9)
    holdout = prepare_frame(holdout, plan)
    scoring = "r2" if task == REGRESSION else "accuracy"
    ours = blockwise_permutation_importance(model, holdout, yh, scoring, 5, 42)
    assert ours is not None, "the trainer's pipelines are column-wise"
    theirs = permutation_importance(model, holdout, yh, scoring=scoring, n_repeats=5, random_state=42, n_jobs=1)
    assert np.array_equal(ours.importances, theirs.importances)
    assert np.array_equal(ours.importances_mean, theirs.importances_mean)
    assert np.array_equal(ours.importances_std, theirs.importances_std)
    assert np.abs(ours.importances_mean).max() > 0  # the comparison is not between two all-zero tables


def test_a_step_mixing_columns_falls_back_to_scikit_learn():
    X, y = _table(400, CLASSIFICATION)
    plan = plan_columns(X)
    Xp = prepare_frame(X, plan)
    base = build_model("logistic_regression", HP, 0, CLASSIFICATION, plan)
    mixed = Pipeline([base.steps[0], ("pca", PCA(n_components=3)), base.steps[-1]]).fit(Xp, y)
    assert blockwise_permutation_importance(mixed, Xp, y, "accuracy", 2, 0) is None


def test_numeric_only_pipeline_as_well():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target
    plan = plan_columns(X)
    model = build_model("logistic_regression", HP, 0, CLASSIFICATION, plan).fit(X.iloc[:400], y.iloc[:400])
    ours = blockwise_permutation_importance(model, X.iloc[400:], y.iloc[400:], "accuracy", 3, 1)
    theirs = permutation_importance(model, X.iloc[400:], y.iloc[400:], scoring="accuracy", n_repeats=3,
                                    random_state=1, n_jobs=1)
    assert ours is not None and np.array_equal(ours.importances, theirs.importances)


@pytest.mark.parametrize("labels", [["yes", "no", "maybe"], [True, False], [3, 10, 7], ["b", "B", "a", "é"]])
def test_stratifying_on_codes_draws_the_same_split_as_on_the_labels(labels):
    from sklearn.model_selection import train_test_split

    from training.train import stratify_codes

    rng = np.random.default_rng(4)
    y = pd.Series(np.array(labels, dtype=object)[rng.integers(0, len(labels), 3000)])
    if not isinstance(labels[0], str):
        y = y.astype(type(labels[0]))
    X = pd.DataFrame({"x": np.arange(3000)})
    a = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    b = train_test_split(X, y, test_size=0.2, random_state=42, stratify=stratify_codes(y))
    assert all(p.index.equals(q.index) for p, q in zip(a, b, strict=True))
