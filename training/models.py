"""The model families the trainer offers, as scikit-learn pipelines for either task."""

from __future__ import annotations

from sklearn.pipeline import Pipeline

from training.data import DataError
from training.preprocess import (
    CLASSIFICATION,
    REGRESSION,
    ColumnPlan,
    build_preprocessor,
    categorical_positions,
)

MODELS = ("logistic_regression", "random_forest", "gradient_boosting", "hist_gradient_boosting", "ridge")
AUTO = "auto"
# The family `model=auto` picks: linear, fast, and served by serving's fast path on numeric data.
DEFAULT_FAMILY = {CLASSIFICATION: "logistic_regression", REGRESSION: "ridge"}
ONLY_FOR = {"logistic_regression": CLASSIFICATION, "ridge": REGRESSION}
# The final step's name in the pipeline (serving and the plots read the last step, not the name).
FINAL_STEP = "clf"
# Modules whose types the saved model may reference: skops is told to trust exactly these.
# functools.partial wraps a function that skops checks on its own (HistGradientBoosting holds one).
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.", "functools.partial")


def resolve_family(model: str, task: str) -> str:
    """The family to train: ``auto`` picks one per task; a family that cannot do ``task`` is refused."""
    if model == AUTO:
        return DEFAULT_FAMILY[task]
    if model not in MODELS:
        raise DataError(f"unknown model '{model}' (use auto or one of {', '.join(MODELS)})")
    only = ONLY_FOR.get(model)
    if only and only != task:
        other = DEFAULT_FAMILY[task] if DEFAULT_FAMILY[task] != model else "random_forest"
        raise DataError(f"{model} is for {only} only and this is a {task} task (use model={other}, "
                        f"or task={only} if the target really is {'classes' if only == CLASSIFICATION else 'numbers'})")
    return model


def build_estimator(kind: str, task: str, params: dict, seed: int, plan: ColumnPlan | None = None):
    """The final estimator of ``kind`` for ``task``."""
    from sklearn import ensemble, linear_model

    depth = int(params.get("max_depth", 0) or 0)
    cls = task == CLASSIFICATION
    if kind == "logistic_regression":
        return linear_model.LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]), random_state=seed)
    if kind == "ridge":
        return linear_model.Ridge(alpha=float(params["alpha"]))
    if kind == "random_forest":
        est = ensemble.RandomForestClassifier if cls else ensemble.RandomForestRegressor
        return est(n_estimators=int(params["n_estimators"]), max_depth=depth or None, random_state=seed, n_jobs=1)
    if kind == "gradient_boosting":
        est = ensemble.GradientBoostingClassifier if cls else ensemble.GradientBoostingRegressor
        return est(n_estimators=int(params["n_estimators"]), learning_rate=float(params["learning_rate"]),
                   max_depth=depth or 3, random_state=seed)
    if kind == "hist_gradient_boosting":
        est = ensemble.HistGradientBoostingClassifier if cls else ensemble.HistGradientBoostingRegressor
        cats = categorical_positions(plan) if plan is not None else None
        return est(max_iter=int(params["n_estimators"]), learning_rate=float(params["learning_rate"]),
                   max_depth=depth or None, categorical_features=cats, random_state=seed)
    raise DataError(f"unknown model '{kind}' (use one of {', '.join(MODELS)})")


def build_model(kind: str, params: dict, seed: int, task: str = CLASSIFICATION,
                plan: ColumnPlan | None = None) -> Pipeline:
    """Preprocessing for ``plan`` followed by the estimator (``plan`` None: all-numeric columns)."""
    plan = plan if plan is not None else ColumnPlan()
    steps = build_preprocessor(plan, kind)
    return Pipeline([*steps, (FINAL_STEP, build_estimator(kind, task, params, seed, plan))])


def hyperparameters(kind: str, args) -> dict:
    """The hyperparameters that matter for ``kind``, taken from parsed arguments."""
    if kind == "logistic_regression":
        return {"C": args.C, "max_iter": args.max_iter}
    if kind == "ridge":
        return {"alpha": args.alpha}
    if kind == "random_forest":
        return {"n_estimators": args.n_estimators, "max_depth": args.max_depth}
    return {"n_estimators": args.n_estimators, "learning_rate": args.learning_rate, "max_depth": args.max_depth}


def skops_trusted_types(model) -> list[str]:
    """The types skops must trust to load ``model``, checked against ``TRUSTED_PREFIXES``.

    Computed from the fitted model itself, so every family and preprocessor loads; a type outside
    the allow-list raises instead of being trusted blindly.
    """
    import skops.io as sio

    found = sorted(sio.get_untrusted_types(data=sio.dumps(model)))
    foreign = [t for t in found if not t.startswith(TRUSTED_PREFIXES)]
    if foreign:
        raise RuntimeError(f"the model references types outside the allow-list: {', '.join(foreign)}")
    return found
