"""Linear models without scikit-learn's per-call input checks, bit for bit.

For a one-row request, ``LogisticRegression.predict`` spends most of its time validating the
array (feature names, dtypes, finiteness: several dataframe-library probes per call), not in the
product. :class:`CompiledLinear` does only the arithmetic, written as scikit-learn 1.9 writes it:
``X @ coef_.T + intercept_`` (the same numpy product), then for logistic regression the same
``scipy.special.expit`` / ``sklearn.utils.extmath.softmax`` calls and the same class pick.

``LogisticRegression``, ``Ridge`` and ``LinearRegression`` on dense float64 input only. The
runtime compares it with scikit-learn on the input example and generated rows before it serves a
request (``serving.runtime``) and keeps scikit-learn's own call where the bits differ.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.compiled_hgb import Unsupported


class CompiledLinear:
    """predict / predict_proba of a fitted linear model from a float64 array."""

    kind = "linear model"

    def __init__(self, est: Any):
        from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

        kind = type(est)
        if kind not in (LogisticRegression, Ridge, LinearRegression):
            raise Unsupported(f"{kind.__name__} is not a compiled linear model")
        coef = np.asarray(est.coef_)
        if coef.dtype != np.float64:
            raise Unsupported("coefficients are not float64")
        self.est = est
        self.is_classifier = kind is LogisticRegression
        if self.is_classifier:
            self.coef_T = est.coef_.T if est.coef_.ndim == 2 else est.coef_
            self.binary = np.size(est.classes_) <= 2
        else:
            self.coef_T = est.coef_ if est.coef_.ndim == 1 else est.coef_.T
            if est.coef_.ndim != 1:
                raise Unsupported("multi-output regression")
        self.intercept = est.intercept_

    def _scores(self, X: np.ndarray) -> np.ndarray:
        scores = X @ self.coef_T + self.intercept
        if scores.ndim > 1 and scores.shape[1] == 1:
            scores = np.reshape(scores, (-1,))
        return scores

    def predict(self, X: np.ndarray, with_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels or values, probabilities or None)."""
        X = np.asarray(X, dtype=np.float64)  # what scikit-learn's product computes in for numbers
        scores = self._scores(X)
        if not self.is_classifier:
            return scores, None
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else np.argmax(scores, axis=1)
        labels = np.take(self.est.classes_, indices, axis=0)
        if not with_proba:
            return labels, None
        return labels, self._proba(self._scores(X))

    def _proba(self, decision: np.ndarray) -> np.ndarray:
        from scipy import special
        from sklearn.utils.extmath import softmax

        if self.binary:  # LinearClassifierMixin._predict_proba_lr
            prob = special.expit(decision, out=decision)
            if prob.ndim == 1:
                return np.stack([1 - prob, prob], axis=1)
            prob_sum = prob.sum(axis=1)
            all_zero = prob_sum == 0
            if np.any(all_zero):
                prob[all_zero, :] = 1
                prob_sum[all_zero] = prob.shape[1]
            prob /= np.reshape(prob_sum, (prob.shape[0], -1))
            return prob
        return softmax(decision, copy=False)
