"""Classification metrics and plots run on integer codes of the labels: the same numbers as
scikit-learn computes on the labels themselves (strings, booleans, integers; a holdout class the
model never saw), and the plots still name the labels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm

from training.evaluate import evaluate, label_codes, save_plots


def _on_labels(labels, y, pred, proba) -> dict[str, float]:
    """The metrics computed directly on the labels (what evaluate computed before it used codes)."""
    binary = len(labels) == 2
    kw = {"average": "binary" if binary else "macro", "zero_division": 0}
    if binary:
        kw["pos_label"] = labels[1]
    out = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
           "precision": skm.precision_score(y, pred, **kw), "recall": skm.recall_score(y, pred, **kw),
           "f1": skm.f1_score(y, pred, **kw)}
    try:
        out["roc_auc"] = (skm.roc_auc_score(y, proba[:, 1]) if binary
                          else skm.roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    except ValueError:
        pass
    out["log_loss"] = skm.log_loss(y, proba, labels=labels)
    return {k: float(v) for k, v in out.items()}


CASES = {
    "binary strings": (["no", "yes"], None),
    "multiclass strings": (["Adelie", "Chinstrap", "Gentoo"], None),
    "booleans": ([False, True], None),
    "integers": ([1, 3, 7, 9], None),
    "unseen class in the holdout": (["a", "b", "c"], "d"),
}


@pytest.mark.parametrize("case", CASES)
def test_metrics_on_codes_equal_metrics_on_labels(case):
    labels, unseen = CASES[case]
    rng = np.random.default_rng(len(case))
    n = 5_000
    y = np.array(labels)[rng.integers(0, len(labels), n)]
    if unseen is not None:
        y[rng.random(n) < 0.01] = unseen
    pred = np.array(labels)[rng.integers(0, len(labels), n)]
    proba = rng.dirichlet(np.ones(len(labels)), n)
    model = SimpleNamespace(classes_=np.array(labels, dtype=object))
    if unseen is not None:
        with pytest.raises(ValueError):  # log loss refuses a label outside `labels` either way
            _on_labels(labels, y, pred, proba)
        y = y[y != unseen]
        pred, proba = pred[: len(y)], proba[: len(y)]
    got = evaluate(model, None, y, "classification", (pred, proba))
    assert got == pytest.approx(_on_labels(labels, y, pred, proba), rel=1e-12, abs=1e-15)


def test_codes_keep_unseen_values_apart():
    y, pred = label_codes(["a", "b"], np.array(["b", "z", "a", "y"], dtype=object), np.array(["a", "a", "b", "z"]))
    assert y.tolist() == [1, 2, 0, 3] and pred.tolist() == [0, 0, 1, 2]


def test_plots_name_the_labels_not_the_codes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib import pyplot as plt
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame({"x": rng.normal(size=400)})
    y = pd.Series(np.where(X["x"] + rng.normal(0, 0.5, 400) > 0, "yes", "no"))
    model = LogisticRegression().fit(X, y)
    seen = []
    original = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        seen.append([t.get_text() for ax in fig.axes for t in (ax.xaxis.label, ax.yaxis.label,
                                                                 *ax.get_xticklabels(), *ax.get_yticklabels())])
        return original(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        paths = save_plots(model, X, y, ["x"], tmp_path)
    finally:
        plt.Figure.savefig = original
    by_name = dict(zip([p.name for p in paths], seen, strict=True))
    assert {"no", "yes"} <= set(by_name["confusion_matrix.png"])
    assert any("Positive label: yes" in t for t in by_name["roc_curve.png"])
    assert any("Positive label: yes" in t for t in by_name["precision_recall.png"])
