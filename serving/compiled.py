"""A compiled form of a fitted scikit-learn pipeline for one request's rows (the ``compiled`` path).

scikit-learn spends most of a small request in per-call overhead: a ColumnTransformer walks its
transformers through pandas, and a histogram gradient boosting model calls one Cython routine per
tree (300 calls for 100 iterations of a three-class model), each opening an OpenMP region. Here
the same fitted objects are turned into plain numpy:

* **preprocessing**: a ColumnTransformer whose blocks are either *per-value* (string or boolean
  columns through constant imputers and an ordinal or one-hot encoder: the output for a value
  depends on that value alone) or *numeric* (passthrough, median/mean imputer, standard scaler).
  Per-value blocks become lookup tables filled by asking the fitted block itself about every
  known category, a missing value and an unseen one; numeric blocks repeat the same float
  operations scikit-learn does (``X[nan] = statistic``, ``X -= mean``, ``X /= scale``).
* **histogram gradient boosting** (``serving.compiled_hgb``): every tree's nodes in flat arrays, all trees of all rows walked
  together one level per step; leaf values summed in scikit-learn's order (baseline, then the
  iterations one after another), the class or value and the probabilities computed by the
  model's own loss object.
* any other final estimator is called on the numpy array (feature names stripped), as the native
  path does.

Nothing here is trusted on its own: serving uses a compiled pipeline only after it reproduced the
pipeline's labels and probabilities bit for bit on the input example, its variants and a few
hundred generated rows (see ``serving.runtime``), and a request whose columns do not have the types
it was compiled for goes to scikit-learn instead.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.compiled_hgb import CompiledHGB, Mismatch, Unsupported, is_nan
from serving.schema import TypedColumns

log = logging.getLogger("serving.compiled")

UNSEEN = "\x00unseen-category\x00"  # a string no fitted encoder knows


# -- preprocessing --------------------------------------------------------------------------------


def _column(frame: Any, name: str) -> np.ndarray:
    """One column's values from a request's typed columns or a DataFrame."""
    return frame.column(name) if isinstance(frame, TypedColumns) else frame[name].to_numpy()


@dataclass
class _TableBlock:
    """Per-value columns: each value looked up in a table filled by the fitted block itself."""

    columns: list[str]
    tables: list[dict]
    missing: list[np.ndarray]
    unseen: list[np.ndarray]
    width: int

    def transform(self, frame) -> np.ndarray:
        n = len(frame)
        parts = []
        for col, table, miss, unseen in zip(self.columns, self.tables, self.missing, self.unseen, strict=True):
            values = _column(frame, col)
            if values.dtype.kind not in "OUb":
                raise Mismatch(col)
            out = np.empty((n, miss.shape[0]), dtype=np.float64)
            for i, v in enumerate(values.tolist()):
                if v is None or (isinstance(v, float) and v != v):
                    out[i] = miss
                else:
                    try:
                        out[i] = table.get(v, unseen)
                    except TypeError:  # unhashable
                        raise Mismatch(col) from None
            parts.append(out)
        return parts[0] if len(parts) == 1 else np.hstack(parts)


@dataclass
class _NumericBlock:
    """Numeric columns through the same float operations as the fitted steps."""

    columns: list[str]
    ops: list[tuple[str, np.ndarray]]

    @property
    def width(self) -> int:
        return len(self.columns)

    def transform(self, frame) -> np.ndarray:
        cols = []
        for col in self.columns:
            values = _column(frame, col)
            if values.dtype.kind not in "fiu":
                raise Mismatch(col)
            cols.append(values)
        X = np.column_stack(cols).astype(np.float64, copy=False) if len(cols) > 1 else \
            np.asarray(cols[0], dtype=np.float64).reshape(-1, 1)
        return apply_ops(X, self.ops)


def apply_ops(X: np.ndarray, ops: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """A copy of ``X`` through the fitted imputer/scaler operations (as scikit-learn does them)."""
    X = np.array(X, dtype=np.float64, order="K", copy=True)  # the memory order scikit-learn keeps (BLAS sums depend on it)
    for op, arg in ops:
        if op == "impute":
            mask = np.isnan(X)
            if mask.any():
                X[mask] = np.broadcast_to(arg, X.shape)[mask]
        elif op == "sub":
            X -= arg
        elif op == "div":
            X /= arg
    return X


def numeric_ops(steps: list) -> list[tuple[str, np.ndarray]]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    ops: list[tuple[str, np.ndarray]] = []
    for est in steps:
        if est is None or (isinstance(est, str) and est == "passthrough"):
            continue
        if type(est) is FunctionTransformer and est.func is None:  # a fitted "passthrough"
            continue
        if isinstance(est, SimpleImputer) and type(est) is SimpleImputer:
            if not is_nan(est.missing_values) or est.add_indicator:
                raise Unsupported("an imputer with non-NaN missing values or an indicator")
            stats = np.asarray(est.statistics_, dtype=np.float64)
            if np.isnan(stats).any():
                raise Unsupported("an imputer that drops empty columns")
            ops.append(("impute", stats))
        elif type(est) is StandardScaler:
            if est.with_mean:
                ops.append(("sub", np.asarray(est.mean_, dtype=np.float64)))
            if est.with_std:
                ops.append(("div", np.asarray(est.scale_, dtype=np.float64)))
        else:
            raise Unsupported(f"numeric step {type(est).__name__}")
    return ops


def _per_value(steps: list) -> bool:
    """Steps whose output for a value depends on that value alone (imputers, encoders)."""
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if not steps:
        return False
    *head, last = steps
    if type(last) not in (OneHotEncoder, OrdinalEncoder):
        return False
    if type(last) is OneHotEncoder and last.sparse_output:
        return False
    return all(type(s) is SimpleImputer and s.strategy == "constant" and not s.add_indicator for s in head)


def _encoder_widths(encoder: Any, n_columns: int) -> list[int]:
    from sklearn.preprocessing import OrdinalEncoder

    if type(encoder) is OrdinalEncoder:
        return [1] * n_columns
    widths = getattr(encoder, "_n_features_outs", None)
    if widths is None or len(widths) != n_columns:
        raise Unsupported("one-hot encoder without per-column widths")
    return [int(w) for w in widths]


def _table_block(block: Any, steps: list, columns: list[str], example) -> _TableBlock:
    """Fill lookup tables by transforming, column by column, every known value, None and an
    unseen string with the fitted block (the other columns held at a known value)."""
    import pandas as pd

    encoder = steps[-1]
    categories = encoder.categories_
    widths = _encoder_widths(encoder, len(columns))
    base = {c: example[c].iloc[0] if c in example.columns else None for c in columns}
    for c in columns:
        if base[c] is None or is_nan(base[c]):
            base[c] = next((v for v in categories[columns.index(c)] if v is not None and not is_nan(v)), UNSEEN)
    tables, missing, unseen = [], [], []
    start = 0
    for j, col in enumerate(columns):
        keys = [v for v in categories[j].tolist() if v is not None and not is_nan(v)]
        probe_values = [*keys, None, UNSEEN]
        rows = {c: [base[c]] * len(probe_values) for c in columns}
        rows[col] = probe_values
        probe = pd.DataFrame({c: pd.Series(rows[c], dtype=object) for c in columns})
        out = np.asarray(block.transform(probe), dtype=np.float64)
        part = out[:, start:start + widths[j]]
        table = {}
        for key, vec in zip(keys, part[: len(keys)], strict=True):
            try:
                table[key] = vec.copy()
            except TypeError:
                raise Unsupported(f"column '{col}' has unhashable categories") from None
        tables.append(table)
        missing.append(part[len(keys)].copy())
        unseen.append(part[len(keys) + 1].copy())
        start += widths[j]
    if start != np.asarray(block.transform(pd.DataFrame({c: pd.Series([base[c]], dtype=object) for c in columns}))).shape[1]:
        raise Unsupported("encoder widths do not add up")
    return _TableBlock(columns, tables, missing, unseen, start)


def _compile_column_transformer(ct: Any, spec_types: dict[str, str], example) -> list:
    from sklearn.pipeline import Pipeline

    if getattr(ct, "sparse_output_", False):
        raise Unsupported("sparse output")
    blocks: list = []
    for name, trans, cols in ct.transformers_:
        if isinstance(trans, str) and trans == "drop":
            continue
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols) or not cols:
            raise Unsupported(f"transformer '{name}' selects columns other than by name")
        missing = [c for c in cols if c not in spec_types]
        if missing:
            raise Unsupported(f"columns not in the signature: {missing}")
        steps = [s for _, s in trans.steps] if isinstance(trans, Pipeline) else [trans]
        kinds = {spec_types[c] for c in cols}
        if kinds <= {"double", "float", "long", "integer"}:
            blocks.append(_NumericBlock(list(cols), numeric_ops(steps)))
        elif kinds <= {"string", "boolean"} and _per_value(steps):
            blocks.append(_table_block(trans, steps, list(cols), example))
        else:
            raise Unsupported(f"transformer '{name}' ({', '.join(type(s).__name__ for s in steps)}) on {sorted(kinds)}")
    if not blocks:
        raise Unsupported("no output columns")
    return blocks


class _Estimator:
    """Any other final estimator, called on the numpy array without feature names."""

    def __init__(self, est: Any):
        self.est = copy.copy(est)
        self.est.__dict__.pop("feature_names_in_", None)
        self.has_proba = hasattr(est, "predict_proba")
        from serving.predictors import compiled_final

        self.forest = compiled_final(self.est)

    def predict(self, X: np.ndarray, with_proba: bool):
        if self.forest is not None:  # checked against the pipeline itself with the rest (serving.runtime)
            return self.forest.predict(X, with_proba and self.has_proba)
        labels = self.est.predict(X)
        proba = self.est.predict_proba(X) if with_proba and self.has_proba else None
        return labels, proba


# -- the pipeline ---------------------------------------------------------------------------------


class CompiledPipeline:
    """predict / predict_proba of a fitted pipeline from a typed request frame."""

    def __init__(self, model: Any, blocks: list, final: Any, kind: str):
        self.model = model
        self.blocks = blocks
        self.final = final
        self.kind = kind
        self.has_proba = hasattr(model, "predict_proba")

    @classmethod
    def build(cls, model: Any, spec_types: dict[str, str], example) -> CompiledPipeline:
        """Compile ``model`` (a Pipeline: one ColumnTransformer, then the estimator); raise
        Unsupported with the reason otherwise."""
        from sklearn.compose import ColumnTransformer
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.pipeline import Pipeline

        if type(model) is not Pipeline:
            raise Unsupported("not a scikit-learn Pipeline")
        steps = [s for _, s in model.steps if s not in (None, "passthrough")]
        if len(steps) != 2 or type(steps[0]) is not ColumnTransformer:
            raise Unsupported("not one ColumnTransformer followed by an estimator")
        blocks = _compile_column_transformer(steps[0], spec_types, example)
        est = steps[1]
        if type(est) in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
            final, kind = CompiledHGB(est), "hist_gradient_boosting"
        else:
            final, kind = _Estimator(est), type(est).__name__
        return cls(model, blocks, final, kind)

    def transform(self, frame) -> np.ndarray:
        parts = [b.transform(frame) for b in self.blocks]
        return parts[0] if len(parts) == 1 else np.hstack(parts)

    def __call__(self, frame, with_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            return self.final.predict(self.transform(frame), with_proba and self.has_proba)
        except Mismatch:
            if isinstance(frame, TypedColumns):
                frame = frame.to_frame()
            labels = self.model.predict(frame)
            proba = self.model.predict_proba(frame) if with_proba and self.has_proba else None
            return labels, proba
