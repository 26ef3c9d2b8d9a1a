"""The model families the trainer offers, as scikit-learn pipelines."""

from __future__ import annotations

from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODELS = ("logistic_regression", "random_forest", "gradient_boosting")

# Types skops must be told to trust when loading each family (it refuses unknown types).
SKOPS_TRUSTED_TYPES = {
    "logistic_regression": [],
    "random_forest": ["sklearn.tree._tree.Tree"],
    "gradient_boosting": [
        "sklearn.tree._tree.Tree",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.Interval",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss.link.MultinomialLogit",
        "sklearn._loss.loss.HalfMultinomialLoss",
        "sklearn._loss._loss.CyHalfMultinomialLoss",
        "sklearn.ensemble._gb.VerboseReporter",
        "sklearn.dummy.DummyClassifier",
    ],
}


def build_model(kind: str, params: dict, seed: int) -> Pipeline:
    """A pipeline for ``kind`` with the given hyperparameters."""
    if kind == "logistic_regression":
        return Pipeline([
            ("scaler", StandardScaler()),
            ("clf", LogisticRegression(C=float(params["C"]), max_iter=int(params["max_iter"]), random_state=seed)),
        ])
    if kind == "random_forest":
        depth = int(params["max_depth"])
        return Pipeline([
            ("clf", RandomForestClassifier(
                n_estimators=int(params["n_estimators"]),
                max_depth=depth if depth > 0 else None,
                random_state=seed,
                n_jobs=1,
            )),
        ])
    if kind == "gradient_boosting":
        return Pipeline([
            ("clf", GradientBoostingClassifier(
                n_estimators=int(params["n_estimators"]),
                learning_rate=float(params["learning_rate"]),
                max_depth=int(params["max_depth"]) if int(params["max_depth"]) > 0 else 3,
                random_state=seed,
            )),
        ])
    raise ValueError(f"unknown model '{kind}' (use one of {', '.join(MODELS)})")


def hyperparameters(kind: str, args) -> dict:
    """The hyperparameters that matter for ``kind``, taken from parsed arguments."""
    if kind == "logistic_regression":
        return {"C": args.C, "max_iter": args.max_iter}
    if kind == "random_forest":
        return {"n_estimators": args.n_estimators, "max_depth": args.max_depth}
    return {"n_estimators": args.n_estimators, "learning_rate": args.learning_rate, "max_depth": args.max_depth}
