"""Unit tests: task detection, column screening, preprocessing, gates and model families."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import DataError
from training.evaluate import Condition, beats, evaluate, parse_gate
from training.models import MODELS, build_model, resolve_family, skops_trusted_types
from training.preprocess import CLASSIFICATION, REGRESSION, detect_task, plan_columns, prepare_frame

HP = {"C": 1.0, "max_iter": 500, "alpha": 1.0, "n_estimators": 5, "learning_rate": 0.1, "max_depth": 0}


@pytest.mark.parametrize(
    "values, task",
    [
        (["a", "b", "a", "c"] * 10, CLASSIFICATION),
        ([True, False] * 20, CLASSIFICATION),
        ([0, 1, 2] * 13 + [1], CLASSIFICATION),
        (list(range(40)), REGRESSION),  # integers with many distinct values
        (np.linspace(0, 1, 40).tolist(), REGRESSION),
        ([1.0, 2.0] * 20, REGRESSION),  # floats are numbers, even when few
    ],
)
def test_task_is_detected_from_the_target(values, task):
    assert detect_task(pd.Series(values, name="y"))[0] == task


def test_task_override_is_checked_against_the_target():
    ints = pd.Series([0, 1, 2] * 10, name="y")
    assert detect_task(ints, REGRESSION)[0] == REGRESSION
    assert detect_task(pd.Series(np.arange(30.0), name="y"), CLASSIFICATION)[0] == CLASSIFICATION
    with pytest.raises(DataError, match="'y' is not numeric: it cannot be a regression target"):
        detect_task(pd.Series(["a", "b"] * 10, name="y"), REGRESSION)
    with pytest.raises(DataError, match="too many classes"):
        detect_task(pd.Series(np.arange(500.0), name="y"), CLASSIFICATION)


@pytest.mark.parametrize(
    "series, message",
    [
        (pd.Series([f"id-{i}" for i in range(50)], name="y"), "50 distinct text values in 50 rows"),
        (pd.Series(pd.date_range("2024-01-01", periods=30), name="y"), "holds dates"),
    ],
)
def test_a_target_that_fits_neither_task_is_refused(series, message):
    with pytest.raises(DataError, match=message):
        detect_task(series)


def frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "num": rng.normal(size=n),
        "const": 7,
        "empty": np.nan,
        "id": [f"row-{i}" for i in range(n)],
        "colour": rng.choice(["red", "green", "blue"], size=n),
        "flag": rng.choice([True, False], size=n),
        "when": pd.date_range("2024-01-01", periods=n).strftime("%Y-%m-%d"),
        "mixed": rng.choice(["1", "2", "3", "n/a"], size=n),
        "many": [f"v{i % 55}" for i in range(n)],
    })


def test_useless_columns_are_dropped_with_their_reason(caplog):
    plan = plan_columns(frame())
    assert plan.numeric == ["num"]
    assert plan.boolean == ["flag"]
    assert plan.categorical == ["colour", "mixed", "many"]
    assert set(plan.dropped) == {"const", "empty", "id", "when"}
    assert plan.dropped["const"] == "constant (7)"
    assert plan.dropped["empty"] == "all values missing"
    assert "unique per row" in plan.dropped["id"] and "dates" in plan.dropped["when"]
    assert plan.mixed == ["mixed"] and plan.high_cardinality == {"many": 55}
    from training.preprocess import warn_plan

    warn_plan(plan)
    assert "columns not used: const: constant (7); empty: all values missing" in caplog.text
    assert "many (55 values)" in caplog.text


def test_a_numeric_id_and_a_small_text_column_are_kept():
    df = pd.DataFrame({"n": range(30), "t": ["a", "b", "c"] * 10})
    plan = plan_columns(df)
    assert plan.used == ["n", "t"] and not plan.dropped


def test_prepared_frame_keeps_file_order_and_text_as_strings():
    df = pd.DataFrame({"b": [1, 2, None], "a": ["x", None, 3]}, dtype=object)
    df["b"] = df["b"].astype(float)
    plan = plan_columns(pd.concat([df] * 10, ignore_index=True))
    out = prepare_frame(df, plan)
    assert list(out.columns) == ["b", "a"]
    assert out["a"].tolist()[0] == "x" and out["a"].tolist()[2] == "3" and pd.isna(out["a"].tolist()[1])


def mixed_data(n: int = 80, regression: bool = False):
    rng = np.random.default_rng(1)
    X = pd.DataFrame({
        "x": rng.normal(size=n),
        "k": rng.integers(0, 5, size=n),
        "colour": rng.choice(["red", "green", "blue"], size=n).astype(object),
        "flag": rng.choice([True, False], size=n),
    })
    X.loc[::7, "x"] = np.nan
    X.loc[::5, "colour"] = np.nan
    y = X["x"].fillna(0) * 3 + (X["colour"] == "red") if regression else np.where(X["k"] > 2, "high", "low")
    return X, pd.Series(y, name="y")


def _fits(family: str, task: str) -> bool:
    try:
        resolve_family(family, task)
    except DataError:
        return False
    return True


FAMILY_TASKS = [(f, t) for t in (CLASSIFICATION, REGRESSION) for f in MODELS if _fits(f, t)]


def test_families_that_do_not_fit_a_task_are_refused_in_one_line():
    refused = [(f, t) for t in (CLASSIFICATION, REGRESSION) for f in MODELS if not _fits(f, t)]
    assert sorted(refused) == [("logistic_regression", REGRESSION), ("ridge", CLASSIFICATION)]
    with pytest.raises(DataError) as err:
        resolve_family("ridge", CLASSIFICATION)
    assert "\n" not in str(err.value) and "ridge" in str(err.value)


@pytest.mark.parametrize(("family", "task"), FAMILY_TASKS)
def test_every_family_trains_on_raw_mixed_columns_and_round_trips_through_skops(family, task):
    import skops.io as sio

    X, y = mixed_data(regression=task == REGRESSION)
    plan = plan_columns(X)
    model = build_model(family, HP, 0, task, plan).fit(prepare_frame(X, plan), y)
    loaded = sio.loads(sio.dumps(model), trusted=skops_trusted_types(model))
    raw = pd.DataFrame({"x": [np.nan, 0.5], "k": [1, 4], "colour": [None, "purple"], "flag": [True, False]})
    pred = loaded.predict(raw)
    assert len(pred) == 2
    np.testing.assert_array_equal(pred, model.predict(raw))
    if task == CLASSIFICATION:
        assert set(pred) <= {"high", "low"}


def test_families_that_cannot_do_the_task_are_refused():
    assert resolve_family("auto", CLASSIFICATION) == "logistic_regression"
    assert resolve_family("auto", REGRESSION) == "ridge"
    with pytest.raises(DataError, match="logistic_regression is for classification only"):
        resolve_family("logistic_regression", REGRESSION)
    with pytest.raises(DataError, match="ridge is for regression only"):
        resolve_family("ridge", CLASSIFICATION)


def test_all_numeric_data_gets_a_flat_pipeline():
    X, _ = mixed_data()
    plan = plan_columns(X[["x", "k"]])
    steps = [name for name, _ in build_model("logistic_regression", HP, 0, CLASSIFICATION, plan).steps]
    assert steps == ["imputer", "scaler", "clf"]
    assert [n for n, _ in build_model("hist_gradient_boosting", HP, 0, REGRESSION, plan).steps] == ["clf"]


def test_gate_parsing_is_strict():
    assert parse_gate("r2>=0.5", REGRESSION) == [Condition("r2", ">=", 0.5)]
    assert parse_gate(" f1 > .8 , roc_auc>=9e-1", CLASSIFICATION) == [
        Condition("f1", ">", 0.8), Condition("roc_auc", ">=", 0.9)]
    assert parse_gate("none", REGRESSION) == [] and parse_gate("", REGRESSION) == []
    for bad in ("r2>=", "r2=>0.5", "r2 >= 0.5x", "r2>=0.5,", ">=0.5"):
        with pytest.raises(DataError, match="malformed gate"):
            parse_gate(bad, REGRESSION)
    with pytest.raises(DataError, match="unknown metric 'accuracy' for regression"):
        parse_gate("accuracy>=0.9", REGRESSION)
    assert Condition("rmse", "<=", 50).holds({"rmse": 49.0}) and not Condition("rmse", "<=", 50).holds({"rmse": 51})


def test_comparison_uses_each_metric_in_its_direction():
    assert beats({"rmse": 10.0}, {"rmse": 12.0}, REGRESSION)
    assert not beats({"rmse": 12.0}, {"rmse": 10.0}, REGRESSION)
    assert beats({"rmse": 10.0, "mae": 5.0}, {"rmse": 10.0, "mae": 6.0}, REGRESSION)
    assert beats({"accuracy": 0.9}, {"accuracy": 0.8}) and not beats({"accuracy": 0.8}, {"accuracy": 0.9})
    assert beats({"accuracy": 0.9, "log_loss": 0.1}, {"accuracy": 0.9, "log_loss": 0.2})


def test_regression_and_multiclass_metrics():
    class Fixed:
        def __init__(self, pred):
            self.pred = pred

        def predict(self, X):
            return self.pred

    m = evaluate(Fixed(np.array([1.0, 2.0, 4.0])), None, pd.Series([1.0, 2.0, 3.0]), REGRESSION)
    assert m["rmse"] == pytest.approx(np.sqrt(1 / 3)) and m["mae"] == pytest.approx(1 / 3)
    assert m["mape"] == pytest.approx((1 / 3) / 3)
    assert "mape" not in evaluate(Fixed(np.array([1.0, 2.0])), None, pd.Series([0.0, 2.0]), REGRESSION)
    pred = np.array(["a", "b", "c", "a"])
    c = evaluate(Fixed(pred), None, pd.Series(["a", "b", "c", "c"]))
    assert c["accuracy"] == 0.75 and c["recall"] == pytest.approx((1 + 1 + 0.5) / 3)  # macro


def test_detecting_the_task_of_a_non_finite_target_warns_nothing():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert detect_task(pd.Series([1.5, np.inf, -np.inf, 2.0] * 10, name="y"))[0] == REGRESSION


def test_non_finite_numeric_features_are_refused_naming_columns_and_counts():
    from training.preprocess import check_finite_features

    X = frame(40).assign(more=1.0)
    X.loc[[1, 2], "num"] = [np.inf, -np.inf]
    X.loc[[5], "more"] = np.inf
    X.loc[[6], "more"] = np.nan  # missing is imputed, not refused
    plan = plan_columns(X)
    with pytest.raises(DataError) as err:
        check_finite_features(X, plan)
    assert str(err.value) == "feature columns hold non-finite values (inf, -inf): num (2), more (1)"
    check_finite_features(X.replace([np.inf, -np.inf], np.nan), plan)  # no error
