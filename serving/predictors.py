"""The direct prediction paths a runtime may pick (``serving.runtime`` checks them first), and the
rows it checks them on: scikit-learn called on a validated numpy array (native) or a typed
DataFrame (frame), bypassing pyfunc's per-request work.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from typing import Any

import numpy as np

_tls = threading.local()


class NativePredictor:
    """Calls a scikit-learn estimator or pipeline directly on a validated numpy array."""

    def __init__(self, model: Any, assume_finite: bool):
        steps = getattr(model, "steps", None)
        if steps is not None:
            self.transforms = [_strip(est) for _, est in steps[:-1] if est not in (None, "passthrough")]
            self.final = _strip(steps[-1][1])
        else:
            self.transforms = []
            self.final = _strip(model)
        if self.final in (None, "passthrough") or not hasattr(self.final, "predict"):
            raise TypeError("the model's last step cannot predict")
        self.has_proba = hasattr(self.final, "predict_proba")
        self.classes = jsonable(getattr(self.final, "classes_", None))
        # A signature where every column is required is validated finite, so scikit-learn's own
        # NaN/inf scan is redundant; its config is thread-local, hence set per request thread.
        self.assume_finite = assume_finite
        #: the forest's arithmetic without scikit-learn's per-call overhead (serving.forest), if it is one
        self.forest = compiled_final(self.final)
        #: the transforms as float operations (None: scikit-learn's own transform calls)
        self.ops = _ops(self.transforms)

    def __call__(self, X: np.ndarray, with_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if self.assume_finite:
            if not getattr(_tls, "assume_finite", False):
                import sklearn

                sklearn.set_config(assume_finite=True)
                _tls.assume_finite = True
            return self._run(X, with_proba)
        import sklearn

        with sklearn.config_context(assume_finite=False):
            return self._run(X, with_proba)

    def _run(self, X: np.ndarray, with_proba: bool):
        if self.ops is not None and self.forest is not None:
            from serving.compiled import apply_ops

            X = apply_ops(X, self.ops)
        else:
            for t in self.transforms:
                X = t.transform(X)
        if self.forest is not None:
            return self.forest.predict(X, with_proba and self.has_proba)
        labels = self.final.predict(X)
        proba = self.final.predict_proba(X) if with_proba and self.has_proba else None
        return labels, proba


class FramePredictor:
    """Calls a scikit-learn pipeline directly on a validated, typed DataFrame."""

    def __init__(self, model: Any):
        self.model = model
        self.has_proba = hasattr(model, "predict_proba")

    def __call__(self, frame, with_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        with sklearn_checks_on():
            labels = self.model.predict(frame)
            proba = self.model.predict_proba(frame) if with_proba and self.has_proba else None
        return labels, proba


def sklearn_checks_on():
    """scikit-learn's own finiteness checks back on in this thread (the native path of another
    model may have turned them off here); a no-op context when it never did."""
    if not getattr(_tls, "assume_finite", False):
        return contextlib.nullcontext()
    import sklearn

    return sklearn.config_context(assume_finite=False)


def generated_rows(spec: Any, example, predictor: Any, n: int, seed: int) -> list[list]:
    """Rows of the signature's types: categories the compiled tables know plus unseen ones,
    missing values in optional columns, numbers spread around the example's."""
    rng = np.random.default_rng(seed)
    known: dict[str, list] = {}
    for block in getattr(predictor, "blocks", []):
        for col, table in zip(getattr(block, "columns", []), getattr(block, "tables", []), strict=False):
            known[col] = [k for k in table if isinstance(k, (str, bool))]
    columns = []
    for s in spec.specs:
        base = example[s.name].dropna().tolist() if s.name in example.columns else []
        if s.type == "string":
            pool = [*known.get(s.name, []), *[str(v) for v in base], "unseen-generated"]
            col = [pool[i] for i in rng.integers(0, len(pool), n)]
        elif s.type == "boolean":
            col = [bool(v) for v in rng.integers(0, 2, n)]
        elif s.type in ("long", "integer"):
            center = int(base[0]) if base else 0
            col = [int(v) for v in center + rng.integers(-3, 4, n)]
        elif s.type in ("double", "float"):
            center = float(base[0]) if base else 0.0
            spread = abs(center) * 0.5 + 1.0
            col = [float(v) for v in center + rng.normal(0.0, spread, n)]
        else:
            col = [base[0] if base else None] * n
        if not s.required:
            col = [None if m else v for v, m in zip(col, rng.random(n) < 0.15, strict=True)]
        columns.append(col)
    return [list(r) for r in zip(*columns, strict=True)]


def compiled_final(est: Any):
    """The final step as compiled arithmetic (serving.forest, serving.linear), or None."""
    from serving.compiled_hgb import Unsupported
    from serving.forest import CompiledForest
    from serving.linear import CompiledLinear

    for kind in (CompiledForest, CompiledLinear):
        try:
            return kind(est)
        except Unsupported:
            continue
    return None


def _ops(transforms: list) -> list | None:
    """The numeric steps (imputer, scaler) as the compiled pipeline's float operations, or None."""
    from serving.compiled import numeric_ops
    from serving.compiled_hgb import Unsupported

    try:
        return numeric_ops(transforms) if transforms else None
    except Unsupported:
        return None


def _strip(est: Any) -> Any:
    """A shallow copy without ``feature_names_in_`` (the fitted arrays are shared, not copied)."""
    if est is None or isinstance(est, str) or "feature_names_in_" not in getattr(est, "__dict__", {}):
        return est
    clone = copy.copy(est)
    del clone.feature_names_in_
    return clone


def same_bits(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a.view(np.uint8 if a.itemsize == 1 else f"u{a.itemsize}"),
                                   b.view(np.uint8 if b.itemsize == 1 else f"u{b.itemsize}")))
    return bool(np.array_equal(a, b))


def jsonable(classes: Any) -> list | None:
    if classes is None:
        return None
    return np.asarray(classes).tolist()
