"""Holdout metrics and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss")


def evaluate(model, X, y) -> dict[str, float]:
    """Accuracy, precision, recall, f1, roc_auc and log_loss of ``model`` on (X, y)."""
    pred = model.predict(X)
    proba = model.predict_proba(X) if hasattr(model, "predict_proba") else None
    classes = np.unique(y)
    binary = len(classes) == 2
    avg = "binary" if binary else "weighted"
    out = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred, average=avg, zero_division=0),
        "recall": skm.recall_score(y, pred, average=avg, zero_division=0),
        "f1": skm.f1_score(y, pred, average=avg, zero_division=0),
    }
    if proba is not None:
        labels = list(getattr(model, "classes_", classes))
        try:
            if binary:
                out["roc_auc"] = skm.roc_auc_score(y, proba[:, 1])
            else:
                out["roc_auc"] = skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels)
        except ValueError:
            pass  # a class missing from the holdout: no AUC
        out["log_loss"] = skm.log_loss(y, proba, labels=labels)
    return {k: float(v) for k, v in out.items()}


def save_plots(model, X, y, feature_names, out_dir: Path) -> list[Path]:
    """Write confusion matrix, ROC curve and feature importance/coefficient PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(4.5, 4))
    skm.ConfusionMatrixDisplay.from_estimator(model, X, y, ax=ax, colorbar=False)
    ax.set_title("Confusion matrix (holdout)")
    paths.append(_save(fig, out_dir / "confusion_matrix.png"))

    if hasattr(model, "predict_proba") and len(np.unique(y)) == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4))
        skm.RocCurveDisplay.from_estimator(model, X, y, ax=ax)
        ax.set_title("ROC curve (holdout)")
        paths.append(_save(fig, out_dir / "roc_curve.png"))

    est = model[-1] if hasattr(model, "steps") else model
    values, label = None, None
    if hasattr(est, "feature_importances_"):
        values, label = np.asarray(est.feature_importances_), "feature importance"
    elif hasattr(est, "coef_"):
        coef = np.asarray(est.coef_)
        values, label = (coef[0] if coef.shape[0] == 1 else np.abs(coef).mean(axis=0)), "coefficient"
    if values is not None:
        order = np.argsort(np.abs(values))[::-1][:15]
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.barh([str(feature_names[i]) for i in order][::-1], values[order][::-1])
        ax.set_xlabel(label)
        ax.set_title(f"Top features by {label}")
        name = "feature_importance.png" if label == "feature importance" else "coefficients.png"
        paths.append(_save(fig, out_dir / name))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
