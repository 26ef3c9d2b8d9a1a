"""The holdout split: stratified for classification (on integer codes of the labels), classes too
rare to stratify kept in training."""

from __future__ import annotations

import logging

from training.data import DataError
from training.preprocess import (
    CLASSIFICATION,
)

log = logging.getLogger("training")


def stratify_codes(y):
    """Integer codes of the class labels in sorted order: ``train_test_split(stratify=...)`` draws
    exactly the same split as with the labels (it sorts them into the same classes), without
    sorting a million Python strings."""
    import numpy as np
    import pandas as pd

    codes, _ = pd.factorize(np.asarray(y), sort=True)
    return codes


#: A class with fewer rows than this cannot be both trained on and measured on the holdout.
MIN_CLASS_ROWS = 2


def split(X, y, task: str, test_size: float, seed: int):
    """(X_train, X_test, y_train, y_test): stratified for classification.

    The rows of a class with fewer than ``MIN_CLASS_ROWS`` rows all go to the training rows (one
    warning names those classes and their row counts): the model learns the class, and the holdout
    never holds a class the model has not seen. The other rows are split stratified, as usual.
    """
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from training.data import shown

    def draw(X, y, stratify):
        try:
            return train_test_split(X, y, test_size=test_size, random_state=seed, stratify=stratify)
        except ValueError as exc:  # e.g. a holdout smaller than the number of classes
            raise DataError(f"cannot split {len(y)} rows into training and holdout rows "
                            f"(test_size={test_size}): {str(exc).splitlines()[0]}") from None

    if task != CLASSIFICATION:
        return draw(X, y, None)
    counts = y.value_counts()
    rare = counts[counts < MIN_CLASS_ROWS]
    if rare.empty:
        return draw(X, y, stratify_codes(y))
    keep = ~y.isin(rare.index).to_numpy()
    if not keep.any():
        raise DataError(f"every class of target '{y.name}' has fewer than {MIN_CLASS_ROWS} rows: "
                        "nothing to measure on a holdout")
    log.warning(
        "classes with fewer than %d rows train the model but are not in the holdout (its metrics do not "
        "measure them; roc_auc is undefined and not logged): %s", MIN_CLASS_ROWS,
        ", ".join(f"{shown(c)} ({n} row{'s' if n != 1 else ''})" for c, n in rare.items()),
    )
    X_train, X_test, y_train, y_test = draw(X[keep], y[keep], stratify_codes(y[keep]))
    return pd.concat([X_train, X[~keep]]), X_test, pd.concat([y_train, y[~keep]]), y_test
