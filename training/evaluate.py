"""Holdout metrics, quality gates and plots for classification and regression."""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from training.data import DataError

log = logging.getLogger("training.evaluate")

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")
REGRESSION_METRICS = ("rmse", "mae", "r2", "mape")
METRIC_NAMES = CLASSIFICATION_METRICS  # the breast-cancer default's metrics (kept for callers)
HIGHER_IS_BETTER = {"accuracy": True, "balanced_accuracy": True, "precision": True, "recall": True, "f1": True,
                    "roc_auc": True, "log_loss": False, "rmse": False, "mae": False, "r2": True, "mape": False}
# Champion/challenger order: the first metric that differs decides.
COMPARISON = {"classification": ("accuracy", "roc_auc", "log_loss"), "regression": ("rmse", "mae", "r2")}
PRIMARY = {"classification": "accuracy", "regression": "rmse"}


def metric_names(task: str) -> tuple[str, ...]:
    """The metrics logged for ``task``."""
    return REGRESSION_METRICS if task == "regression" else CLASSIFICATION_METRICS


def predictions(model, X, task: str = "classification") -> tuple[np.ndarray, np.ndarray | None]:
    """(predict, predict_proba or None) of ``model`` on ``X``: computed once, shared by metrics and plots.

    A pipeline's preprocessing runs once for both (as ``Pipeline.predict`` runs it: every step's
    ``transform``, then the final estimator).
    """
    want_proba = task != "regression" and hasattr(model, "predict_proba")
    if hasattr(model, "steps") and len(model.steps) > 1:
        Xt, est = model[:-1].transform(X), model[-1]
    else:
        Xt, est = X, model
    return est.predict(Xt), (est.predict_proba(Xt) if want_proba else None)


def evaluate(model, X, y, task: str = "classification",
             preds: tuple[np.ndarray, np.ndarray | None] | None = None) -> dict[str, float]:
    """The holdout metrics of ``model`` on (X, y) for ``task`` (``preds``: :func:`predictions` on X)."""
    pred, proba = preds if preds is not None else predictions(model, X, task)
    if task == "regression":
        return evaluate_regression(pred, np.asarray(y, dtype=float))
    labels = list(getattr(model, "classes_", np.unique(y)))
    binary = len(labels) == 2
    # Integer codes stand in for the labels: the same metrics, without scikit-learn sorting and
    # comparing 200,000 Python strings in every call.
    y, pred = label_codes(labels, y, pred)
    labels = list(range(len(labels)))
    avg = "binary" if binary else "macro"
    kw = {"average": avg, "zero_division": 0}
    if binary:
        kw["pos_label"] = labels[1]
    with warnings.catch_warnings():
        # A class the holdout lacks: the mean recall of the holdout's classes (all of them, even
        # when that is a single one).
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found in 'y_true' and 'y_pred'")
        balanced = skm.balanced_accuracy_score(y, pred)
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": balanced,
        "precision": skm.precision_score(y, pred, **kw),
        "recall": skm.recall_score(y, pred, **kw),
        "f1": skm.f1_score(y, pred, **kw),
    }
    if proba is not None:
        # ROC AUC is undefined (scikit-learn warns and gives NaN) unless every class is in the holdout.
        if every_class_present(labels, y):
            try:
                if binary:
                    out["roc_auc"] = skm.roc_auc_score(y, proba[:, 1])
                else:
                    out["roc_auc"] = skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
            except ValueError:
                pass  # a class the model never saw in the holdout: no AUC
        out["log_loss"] = skm.log_loss(y, proba, labels=labels)
    return {k: float(v) for k, v in out.items() if np.isfinite(v)}


def every_class_present(labels: list, y) -> bool:
    """True when each of ``labels`` occurs in ``y`` (ROC curves and AUC need every class)."""
    return not set(labels) - set(np.unique(np.asarray(y)).tolist())


def label_codes(labels: list, *arrays) -> list[np.ndarray]:
    """Each array's values as integer codes: ``labels[i]`` -> ``i``; a value not among ``labels``
    (a class the model never saw) gets a code of its own past them, so every metric is unchanged."""
    import pandas as pd

    values = [np.asarray(a) for a in arrays]
    extra = [v for v in pd.unique(np.concatenate([pd.unique(a) for a in values])) if v not in set(labels)]
    categories = pd.Index([*labels, *extra], dtype=object)
    return [np.asarray(pd.Categorical(a.astype(object), categories=categories).codes, dtype=np.int64) for a in values]


def evaluate_regression(pred, y) -> dict[str, float]:
    """RMSE, MAE, R² and (when no target is zero) MAPE."""
    pred = np.asarray(pred, dtype=float)
    out = {
        "rmse": float(np.sqrt(skm.mean_squared_error(y, pred))),
        "mae": float(skm.mean_absolute_error(y, pred)),
        "r2": float(skm.r2_score(y, pred)) if len(y) > 1 else float("nan"),
    }
    if len(y) and not np.any(np.isclose(y, 0.0)):
        out["mape"] = float(skm.mean_absolute_percentage_error(y, pred))
    return out


def beats(new: dict, old: dict | None, task: str = "classification") -> bool:
    """True if ``new`` is better than ``old`` on the task's metrics, each in its own direction."""
    if old is None:
        return True
    for key in COMPARISON[task]:
        a, b = new.get(key), old.get(key)
        if a is None or b is None or abs(a - b) < 1e-12:
            continue
        return a > b if HIGHER_IS_BETTER[key] else a < b
    return False


_CONDITION = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_OPS = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less}


@dataclass(frozen=True)
class Condition:
    """One gate condition, e.g. ``r2>=0.5``."""

    metric: str
    op: str
    value: float

    def holds(self, metrics: dict[str, float]) -> bool:
        got = metrics.get(self.metric)
        return got is not None and bool(_OPS[self.op](got, self.value))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_gate(text: str | None, task: str) -> list[Condition]:
    """Comma-separated conditions (``r2>=0.5,rmse<=60``); DataError when malformed or unknown."""
    if text is None or not text.strip() or text.strip().lower() == "none":
        return []
    known = metric_names(task)
    out = []
    for part in text.split(","):
        m = _CONDITION.match(part)
        if not m:
            raise DataError(f"malformed gate '{part.strip()}': write METRIC>=NUMBER (or >, <=, <), e.g. r2>=0.5")
        metric, op, value = m.group(1), m.group(2), float(m.group(3))
        if metric not in known:
            raise DataError(f"gate names unknown metric '{metric}' for {task} (use one of {', '.join(known)})")
        out.append(Condition(metric, op, value))
    return out


DEFAULT_GATE = {"regression": "r2>=0"}


# Plots that need many predictions (permutation importance: columns x repeats full passes) or
# draw one mark per row (regression scatter plots) use a fixed-seed sample of at most this many
# holdout rows; smaller holdouts are used whole. Metrics and the other plots always use all rows.
PLOT_SAMPLE_ROWS = 2_000


def plot_sample(X, y, seed: int, max_rows: int = PLOT_SAMPLE_ROWS):
    """(X, y) itself when it has at most ``max_rows`` rows, else a fixed-seed sample of that many."""
    if len(X) <= max_rows:
        return X, y
    idx = np.sort(np.random.default_rng(seed).choice(len(X), size=max_rows, replace=False))
    return X.iloc[idx], (y.iloc[idx] if hasattr(y, "iloc") else np.asarray(y)[idx])


def _of(n_used: int, n_all: int) -> str:
    """Title suffix naming the sample size when a plot does not use every holdout row."""
    return "" if n_used == n_all else f", {n_used:,} of {n_all:,} rows"


def save_plots(model, X, y, feature_names, out_dir: Path, task: str = "classification",
               seed: int = 0, max_rows: int = PLOT_SAMPLE_ROWS,
               preds: tuple[np.ndarray, np.ndarray | None] | None = None) -> list[Path]:
    """Write the task's plots (PNG) into ``out_dir``; return their paths.

    Confusion matrix, ROC and precision-recall use every holdout row; permutation importance and
    the regression scatter plots at most ``max_rows`` (a fixed-seed sample, see PLOT_SAMPLE_ROWS).
    ``preds``: :func:`predictions` on ``X`` when already computed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    Xs, ys = plot_sample(X, y, seed, max_rows)
    of = _of(len(Xs), len(X))
    if task == "regression":
        pred = np.asarray(model.predict(Xs), dtype=float)
        actual = np.asarray(ys, dtype=float)
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(actual, pred, s=12, alpha=0.7)
        lo, hi = float(min(actual.min(), pred.min())), float(max(actual.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1)
        ax.set_xlabel(f"actual {getattr(y, 'name', '') or ''}".strip())
        ax.set_ylabel("predicted")
        ax.set_title(f"Predicted vs actual (holdout{of})")
        paths.append(_save(fig, out_dir / "predicted_vs_actual.png"))
        fig, ax = plt.subplots(figsize=(4.5, 4))
        ax.scatter(pred, actual - pred, s=12, alpha=0.7)
        ax.axhline(0, color="k", linestyle="--", linewidth=1)
        ax.set_xlabel("predicted")
        ax.set_ylabel("residual (actual - predicted)")
        ax.set_title(f"Residuals (holdout{of})")
        paths.append(_save(fig, out_dir / "residuals.png"))
    else:
        labels = list(getattr(model, "classes_", np.unique(y)))
        pred, proba = preds if preds is not None else predictions(model, X, task)
        y, pred = label_codes(labels, y, pred)  # integer codes: the same plots, far faster
        shown, labels = [str(c) for c in labels], list(range(len(labels)))
        fig, ax = plt.subplots(figsize=(4.5 + 0.3 * max(0, len(labels) - 3), 4 + 0.3 * max(0, len(labels) - 3)))
        skm.ConfusionMatrixDisplay.from_predictions(
            y, pred, labels=labels, display_labels=shown, ax=ax, colorbar=False
        )
        ax.set_title("Confusion matrix (holdout)")
        paths.append(_save(fig, out_dir / "confusion_matrix.png"))
        if proba is not None and len(labels) == 2 and every_class_present(labels, y):
            score = proba[:, 1]
            name = type(model).__name__
            fig, ax = plt.subplots(figsize=(4.5, 4))
            skm.RocCurveDisplay.from_predictions(y, score, ax=ax, pos_label=labels[1], name=name)
            _name_positive_label(ax, shown[1])
            ax.set_title("ROC curve (holdout)")
            paths.append(_save(fig, out_dir / "roc_curve.png"))
            fig, ax = plt.subplots(figsize=(4.5, 4))
            skm.PrecisionRecallDisplay.from_predictions(y, score, ax=ax, pos_label=labels[1], name=name)
            _name_positive_label(ax, shown[1])
            ax.set_title("Precision-recall (holdout)")
            paths.append(_save(fig, out_dir / "precision_recall.png"))

    est = model[-1] if hasattr(model, "steps") else model
    names = _transformed_names(model, feature_names)
    values, label = None, None
    if hasattr(est, "feature_importances_"):
        values, label = np.asarray(est.feature_importances_), "feature importance"
    elif hasattr(est, "coef_"):
        coef = np.atleast_2d(np.asarray(est.coef_))
        values, label = (coef[0] if coef.shape[0] == 1 else np.abs(coef).mean(axis=0)), "coefficient"
    if values is not None and len(values) == len(names):
        order = np.argsort(np.abs(values))[::-1][:15]
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.barh([str(names[i]) for i in order][::-1], values[order][::-1])
        ax.set_xlabel(label)
        ax.set_title(f"Top features by {label}")
        name = "feature_importance.png" if label == "feature importance" else "coefficients.png"
        paths.append(_save(fig, out_dir / name))
    paths.append(permutation_plot(model, Xs, ys, out_dir, task, seed, of))
    return paths


def permutation_plot(model, X, y, out_dir: Path, task: str, seed: int, of: str = "") -> Path:
    """Permutation importance of the user's original columns on (a sample of) the holdout, any family."""
    import matplotlib.pyplot as plt
    from sklearn.inspection import permutation_importance

    scoring = "r2" if task == "regression" else "accuracy"
    repeats = 5 if X.shape[1] <= 30 else 2
    result = blockwise_permutation_importance(model, X, y, scoring, repeats, seed)
    if result is None:
        result = permutation_importance(model, X, y, scoring=scoring, n_repeats=repeats, random_state=seed, n_jobs=1)
    order = np.argsort(result.importances_mean)[::-1][:15]
    cols = [str(c) for c in X.columns]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh([cols[i] for i in order][::-1], result.importances_mean[order][::-1],
            xerr=result.importances_std[order][::-1])
    ax.set_xlabel(f"drop in {scoring} when the column is shuffled")
    ax.set_title(f"Permutation importance (holdout{of})")
    return _save(fig, out_dir / "permutation_importance.png")


def column_blocks(prep, X, Xt: np.ndarray) -> list[np.ndarray] | None:
    """For each column of ``X``, the columns of ``Xt = prep.transform(X)`` computed from it alone.

    Found by transforming ``X`` with one column's rows rotated by one: the outputs that changed
    must be exactly those outputs' rows rotated, every other output unchanged, and no output may
    depend on two columns. None when that does not hold (a step mixing columns or rows).
    """
    import pandas as pd

    n = len(X)
    roll = np.roll(np.arange(n), 1)
    rotated = []
    for col in X.columns:
        copy = X.copy()
        copy[col] = X[col].iloc[roll].to_numpy()
        rotated.append(copy)
    # One transform of all the rotated copies stacked (a transform call has a large fixed cost).
    stacked = prep.transform(pd.concat(rotated, ignore_index=True))
    if hasattr(stacked, "toarray") or np.shape(stacked) != (n * len(rotated), Xt.shape[1]):
        return None
    stacked = np.asarray(stacked)
    blocks, claimed = [], np.zeros(Xt.shape[1], dtype=bool)
    for i in range(len(rotated)):
        T = stacked[i * n:(i + 1) * n]
        changed = ~np.all((T == Xt) | (np.isnan(T) & np.isnan(Xt)), axis=0)
        cols = np.flatnonzero(changed)
        expected = Xt.copy()
        expected[:, cols] = Xt[np.ix_(roll, cols)]
        if claimed[cols].any() or not np.array_equal(T, expected, equal_nan=True):
            return None
        claimed[cols] = True
        blocks.append(cols)
    return blocks


def blockwise_permutation_importance(model, X, y, scoring: str, n_repeats: int, seed: int):
    """scikit-learn's ``permutation_importance`` of a pipeline, with its preprocessing run once.

    Shuffling a raw column and transforming equals transforming once and shuffling that column's
    output block (:func:`column_blocks`), so the estimator sees the same matrices, shuffled with
    the same random draws as scikit-learn's: the same importances, without 100 transforms. None
    when ``model`` is not such a pipeline (the caller then uses scikit-learn's own).
    """
    from sklearn.metrics import check_scoring
    from sklearn.utils import Bunch, check_random_state

    if not (hasattr(model, "steps") and len(model.steps) > 1) or not hasattr(X, "iloc") or len(X) < 3:
        return None
    prep, est = model[:-1], model[-1]
    Xt = prep.transform(X)
    if hasattr(Xt, "toarray") or getattr(Xt, "dtype", None) is None or Xt.dtype.kind != "f":
        return None
    Xt = np.asarray(Xt)
    blocks = column_blocks(prep, X, Xt)
    if blocks is None:
        return None
    scorer = _fast_scorer(est, scoring, y) or check_scoring(est, scoring=scoring)
    baseline = scorer(est, Xt, y)
    random_seed = check_random_state(seed).randint(np.iinfo(np.int32).max + 1)  # as scikit-learn draws it
    scores = []
    for cols in blocks:
        rng = check_random_state(random_seed)
        permuted, order = Xt.copy(), np.arange(len(Xt))
        row = []
        for _ in range(n_repeats):
            rng.shuffle(order)
            permuted[:, cols] = permuted[np.ix_(order, cols)]
            row.append(scorer(est, permuted, y))
        scores.append(row)
    importances = baseline - np.array(scores)
    return Bunch(importances_mean=np.mean(importances, axis=1), importances_std=np.std(importances, axis=1),
                 importances=importances)


def _fast_scorer(est, scoring: str, y):
    """``accuracy`` as scikit-learn's scorer computes it (the mean of ``predict == y``), without
    its per-call label checks; None for other scorings."""
    if scoring != "accuracy" or not hasattr(est, "predict"):
        return None
    truth = np.asarray(y)

    def accuracy(estimator, X, _y) -> float:
        return float(np.average(np.asarray(estimator.predict(X)) == truth))

    return accuracy


def _transformed_names(model, feature_names) -> list[str]:
    """Names of the columns the final estimator sees (one-hot columns by category)."""
    if hasattr(model, "steps") and len(model.steps) > 1:
        try:
            return [str(n) for n in model[:-1].get_feature_names_out()]
        except Exception:  # noqa: BLE001 - a step without names: fall back to the raw columns
            pass
    return [str(n) for n in feature_names]


def _name_positive_label(ax, label: str) -> None:
    """The axis titles name the positive class by its label, not by its integer code."""
    for get, put in ((ax.get_xlabel, ax.set_xlabel), (ax.get_ylabel, ax.set_ylabel)):
        put(get().replace("(Positive label: 1)", f"(Positive label: {label})"))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
