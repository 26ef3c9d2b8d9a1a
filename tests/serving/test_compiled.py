"""The compiled path (serving.compiled) against scikit-learn itself, bit for bit.

Every family the project trains, on a mixed table with strings, booleans, integers, missing values
and unseen categories, for classification (binary and multiclass) and regression. scikit-learn's
own ``Pipeline.predict`` / ``predict_proba`` on the same frame is the oracle.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.compiled import CompiledPipeline, Unsupported
from training.models import build_model
from training.preprocess import plan_columns, prepare_frame

CITIES = ["Oslo", "Lima", "Pune", "Kyiv", "Accra"]
COLORS = ["red", "green", "blue"]

TYPES = {"city": "string", "color": "string", "flag": "boolean", "x": "double", "y": "double", "n": "long"}


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    x[rng.random(n) < 0.1] = np.nan
    y = rng.uniform(-5, 5, n)
    city = np.array([CITIES[i] for i in rng.integers(0, len(CITIES), n)], dtype=object)
    city[rng.random(n) < 0.08] = None
    return pd.DataFrame({
        "city": city,
        "color": np.array([COLORS[i] for i in rng.integers(0, 3, n)], dtype=object),
        "flag": rng.random(n) < 0.4,
        "x": x,
        "y": y,
        "n": rng.integers(0, 20, n),
    })


def target(frame: pd.DataFrame, task: str, classes: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    score = np.nan_to_num(frame["x"].to_numpy()) + 0.3 * frame["y"] + (frame["city"] == "Oslo") * 1.5 \
        + frame["flag"] * 0.7 + rng.normal(0, 0.5, len(frame))
    if task == "regression":
        return score.astype(float)
    cuts = np.quantile(score, np.linspace(0, 1, classes + 1)[1:-1])
    return np.array(["abcdef"[i] for i in np.digitize(score, cuts)], dtype=object)


PARAMS = {"n_estimators": 30, "learning_rate": 0.1, "max_depth": 0, "C": 1.0, "max_iter": 500, "alpha": 1.0}
CASES = [
    ("hist_gradient_boosting", "classification", 3),
    ("hist_gradient_boosting", "classification", 2),
    ("hist_gradient_boosting", "regression", 0),
    ("random_forest", "classification", 3),
    ("logistic_regression", "classification", 3),
    ("gradient_boosting", "regression", 0),
    ("ridge", "regression", 0),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}")
def fitted(request):
    family, task, classes = request.param
    raw = table(400, seed=7)
    plan = plan_columns(raw)
    X = prepare_frame(raw, plan)
    model = build_model(family, PARAMS, seed=0, task=task, plan=plan).fit(X, target(raw, task, classes, 7))
    compiled = CompiledPipeline.build(model, {c: TYPES[c] for c in X.columns}, X.head(3))
    return model, compiled, list(X.columns)


def request_frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    """A frame typed as serving's validation builds it (object strings, float NaN, int, bool)."""
    data = {}
    for c in columns:
        values = [r[c] for r in rows]
        if TYPES[c] == "double":
            data[c] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif TYPES[c] == "long":
            data[c] = np.array(values, dtype=np.int64)
        elif TYPES[c] == "boolean":
            data[c] = np.array(values, dtype=bool)
        else:
            data[c] = np.array(values, dtype=object)
    return pd.DataFrame(data, columns=columns)


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f":
        return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return a.shape == b.shape and bool(np.array_equal(a, b))


ROW = st.fixed_dictionaries({
    "city": st.one_of(st.none(), st.sampled_from([*CITIES, "Atlantis", "oslo", ""])),
    "color": st.sampled_from([*COLORS, "mauve"]),
    "flag": st.booleans(),
    "x": st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
    "y": st.floats(-50, 50, allow_nan=False),
    "n": st.integers(-100, 100),
})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=20))
def test_compiled_equals_scikit_learn_bit_for_bit(fitted, rows):
    model, compiled, columns = fitted
    frame = request_frame(rows, columns)
    labels, proba = compiled(frame, with_proba=True)
    assert same(labels, model.predict(frame))
    if hasattr(model, "predict_proba"):
        assert same(proba, model.predict_proba(frame))
    else:
        assert proba is None


def test_a_large_batch_is_exact_too(fitted, monkeypatch):
    """3,000 rows, walked in chunks of a few rows (the chunking must not change a bit)."""
    import serving.compiled_hgb

    monkeypatch.setattr(serving.compiled_hgb, "CHUNK_CELLS", 5000)
    model, compiled, columns = fitted
    raw = table(3000, seed=99)
    frame = prepare_frame(raw, plan_columns(raw))[columns]
    labels, proba = compiled(frame, with_proba=True)
    assert same(labels, model.predict(frame))
    if proba is not None:
        assert same(proba, model.predict_proba(frame))


def test_a_frame_with_other_types_goes_to_scikit_learn(fitted):
    """An object column where numbers were compiled: scikit-learn answers (and refuses) it."""
    model, compiled, columns = fitted
    frame = request_frame([{"city": "Oslo", "color": "red", "flag": True, "x": 1.0, "y": 2.0, "n": 3}], columns)
    frame["n"] = frame["n"].astype(object)
    labels, _ = compiled(frame, with_proba=False)
    assert same(labels, model.predict(frame))
    frame["x"] = np.array(["not a number"], dtype=object)
    with pytest.raises(ValueError):
        compiled(frame, with_proba=False)


def test_what_is_not_compiled_says_why():
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    raw = table(50, seed=1)
    X = raw[["x", "y"]].fillna(0.0)
    with pytest.raises(Unsupported, match="ColumnTransformer"):
        CompiledPipeline.build(Pipeline([("p", PolynomialFeatures()), ("m", LinearRegression())]).fit(X, raw["y"]),
                               {"x": "double", "y": "double"}, X)
    with pytest.raises(Unsupported, match="Pipeline"):
        CompiledPipeline.build(LinearRegression().fit(X, raw["y"]), {"x": "double", "y": "double"}, X)


# -- linear models without scikit-learn's per-call checks (serving.linear) ------------------------


@pytest.mark.parametrize("kind", ["binary", "multiclass", "ridge", "least_squares"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_compiled_linear_equals_scikit_learn_bit_for_bit(kind, order):
    """The native predictor of an imputer + scaler + linear model pipeline, with its transforms as
    float operations and the final step compiled, against ``Pipeline.predict``/``predict_proba``
    on the same array, for both memory orders (a Fortran-ordered input example once made the
    compiled product differ in its last bits, because the copy was always C-ordered)."""
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from serving.predictors import NativePredictor

    loader, est = {"binary": (load_breast_cancer, LogisticRegression(max_iter=5000)),
                   "multiclass": (load_wine, LogisticRegression(max_iter=5000)),
                   "ridge": (load_diabetes, Ridge(alpha=0.5)),
                   "least_squares": (load_diabetes, LinearRegression())}[kind]
    X, y = loader(return_X_y=True)
    X = X.copy()
    X[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
    pipe = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(), est).fit(X, y)
    native = NativePredictor(pipe, assume_finite=False)
    assert native.forest is not None and native.forest.kind == "linear model" and native.ops is not None
    rng = np.random.default_rng(1)
    for n in (1, 2, 7, 64):
        rows = np.asarray(X[rng.integers(0, len(X), n)] * rng.normal(1, 0.2, (n, X.shape[1])), order=order)
        labels, proba = native(rows, with_proba=True)
        assert np.array_equal(labels, pipe.predict(rows)), (kind, order, n)
        if kind in ("binary", "multiclass"):
            assert np.array_equal(proba, pipe.predict_proba(rows)), (kind, order, n)
        else:
            assert proba is None


def test_other_linear_models_are_not_compiled():
    from sklearn.linear_model import SGDClassifier

    from serving.linear import CompiledLinear

    est = SGDClassifier(random_state=0).fit(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(Unsupported):
        CompiledLinear(est)
