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
* **histogram gradient boosting**: every tree's nodes in flat arrays, all trees of all rows walked
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

from serving.inputs import TypedColumns

log = logging.getLogger("serving.compiled")

UNSEEN = "\x00unseen-category\x00"  # a string no fitted encoder knows
CHUNK_CELLS = 1 << 18  # rows x trees walked at once (a few MiB per index array)


class Unsupported(Exception):
    """The pipeline holds something this module does not compile (the reason is the message)."""


class Mismatch(Exception):
    """A request's columns do not have the types the pipeline was compiled for."""


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
        X = np.array(X, dtype=np.float64, order="C", copy=True)
        for op, arg in self.ops:
            if op == "impute":
                mask = np.isnan(X)
                if mask.any():
                    X[mask] = np.broadcast_to(arg, X.shape)[mask]
            elif op == "sub":
                X -= arg
            elif op == "div":
                X /= arg
        return X


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _numeric_ops(steps: list) -> list[tuple[str, np.ndarray]]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    ops: list[tuple[str, np.ndarray]] = []
    for est in steps:
        if est is None or (isinstance(est, str) and est == "passthrough"):
            continue
        if type(est) is FunctionTransformer and est.func is None:  # a fitted "passthrough"
            continue
        if isinstance(est, SimpleImputer) and type(est) is SimpleImputer:
            if not _is_nan(est.missing_values) or est.add_indicator:
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
        if base[c] is None or _is_nan(base[c]):
            base[c] = next((v for v in categories[columns.index(c)] if v is not None and not _is_nan(v)), UNSEEN)
    tables, missing, unseen = [], [], []
    start = 0
    for j, col in enumerate(columns):
        keys = [v for v in categories[j].tolist() if v is not None and not _is_nan(v)]
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
            blocks.append(_NumericBlock(list(cols), _numeric_ops(steps)))
        elif kinds <= {"string", "boolean"} and _per_value(steps):
            blocks.append(_table_block(trans, steps, list(cols), example))
        else:
            raise Unsupported(f"transformer '{name}' ({', '.join(type(s).__name__ for s in steps)}) on {sorted(kinds)}")
    if not blocks:
        raise Unsupported("no output columns")
    return blocks


# -- histogram gradient boosting ------------------------------------------------------------------


class _CompiledHGB:
    """All trees of a fitted HistGradientBoosting model, walked together in numpy."""

    def __init__(self, est: Any):
        self.est = est
        self.is_classifier = hasattr(est, "classes_")
        self.baseline = np.asarray(est._baseline_prediction, dtype=np.float64)
        self.K = int(est.n_trees_per_iteration_)
        predictors = est._predictors
        self.I = len(predictors)
        if self.I == 0:
            raise Unsupported("no trees")
        feat, thr, left, right, leaf, miss_left, is_cat, bitset, value, roots = ([] for _ in range(10))
        bitsets = []
        offset = bit_offset = 0
        self.max_depth = 0
        for it in predictors:
            if len(it) != self.K:
                raise Unsupported("uneven iterations")
            for p in it:
                nodes = p.nodes
                roots.append(offset)
                feat.append(nodes["feature_idx"].astype(np.intp))
                thr.append(nodes["num_threshold"].astype(np.float64))
                left.append(nodes["left"].astype(np.intp) + offset)
                right.append(nodes["right"].astype(np.intp) + offset)
                leaf.append(nodes["is_leaf"].astype(bool))
                miss_left.append(nodes["missing_go_to_left"].astype(bool))
                is_cat.append(nodes["is_categorical"].astype(bool))
                bitset.append(nodes["bitset_idx"].astype(np.intp) + bit_offset)
                value.append(nodes["value"].astype(np.float64))
                raw_bits = np.asarray(p.raw_left_cat_bitsets, dtype=np.uint32).reshape(-1, 8)
                bitsets.append(raw_bits)
                bit_offset += raw_bits.shape[0]
                offset += len(nodes)
                self.max_depth = max(self.max_depth, int(nodes["depth"].max()))
        self.feat, self.thr = np.concatenate(feat), np.concatenate(thr)
        self.left, self.right = np.concatenate(left), np.concatenate(right)
        self.leaf, self.miss_left = np.concatenate(leaf), np.concatenate(miss_left)
        self.is_cat, self.bitset = np.concatenate(is_cat), np.concatenate(bitset)
        self.value = np.concatenate(value)
        self.roots = np.asarray(roots, dtype=np.intp)
        self.bitsets = np.concatenate(bitsets) if bit_offset else np.zeros((1, 8), dtype=np.uint32)
        self.has_cat = bool(self.is_cat.any())
        self._setup_categories()

    def _setup_categories(self) -> None:
        est = self.est
        pre = getattr(est, "_preprocessor", None)
        self.cat_columns: list[tuple[int, np.ndarray]] = []
        self.order: np.ndarray | None = None
        if pre is None:
            if self.has_cat:
                raise Unsupported("categorical splits without the model's own encoder")
            return
        mask = np.asarray(est.is_categorical_, dtype=bool)
        encoder = pre.named_transformers_["encoder"]
        if encoder.handle_unknown != "use_encoded_value" or not _is_nan(encoder.unknown_value) \
                or not _is_nan(encoder.encoded_missing_value):
            raise Unsupported("the model's own encoder is configured differently")
        cat_idx = np.flatnonzero(mask)
        for j, cats in zip(cat_idx, encoder.categories_, strict=True):
            cats = np.asarray(cats, dtype=np.float64)
            known = cats[~np.isnan(cats)]
            if known.size and np.any(np.diff(known) <= 0):
                raise Unsupported("unsorted categories")
            self.cat_columns.append((int(j), known))
        self.order = np.concatenate([cat_idx, np.flatnonzero(~mask)])
        known_bits, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
        self.known_bits = np.asarray(known_bits, dtype=np.uint32)
        self.f_idx_map = np.asarray(f_idx_map, dtype=np.intp)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        """The model's own OrdinalEncoder (unknown and missing → NaN), categories first."""
        if self.order is None:
            return X
        out = X[:, self.order].astype(np.float64, copy=True)
        for pos, (j, known) in enumerate(self.cat_columns):
            v = X[:, j]
            codes = np.full(v.shape, np.nan)
            if known.size:
                idx = np.searchsorted(known, v)
                idx_c = np.minimum(idx, known.size - 1)
                hit = (~np.isnan(v)) & (known[idx_c] == v)
                codes[hit] = idx_c[hit]
            out[:, pos] = codes
        return out

    def raw(self, X: np.ndarray) -> np.ndarray:
        """The summed leaf values, shape (rows, trees per iteration), in chunks of rows so a large
        request never holds more than a few (chunk x trees) index arrays."""
        X = self._encode(np.asarray(X, dtype=np.float64))
        step = max(1, CHUNK_CELLS // max(1, self.roots.size))
        if X.shape[0] <= step:
            return self._raw(X)
        return np.asfortranarray(np.vstack([self._raw(X[i:i + step]) for i in range(0, X.shape[0], step)]))

    def _raw(self, X: np.ndarray) -> np.ndarray:
        n, trees = X.shape[0], self.roots.size
        # one entry per (row, tree), row-major; each level moves only the entries not yet at a leaf
        idx = np.tile(self.roots, n)
        row_of = np.repeat(np.arange(n), trees)
        active = np.flatnonzero(~self.leaf[idx])
        for _ in range(self.max_depth + 1):
            if active.size == 0:
                break
            node = idx[active]
            x = X[row_of[active], self.feat[node]]
            missing = np.isnan(x)
            go_left = x <= self.thr[node]
            if self.has_cat:
                cat = self.is_cat[node] & ~missing
                if cat.any():
                    go_left, missing = self._categorical(node, x, cat, go_left, missing)
            go_left = np.where(missing, self.miss_left[node], go_left)
            nxt = np.where(go_left, self.left[node], self.right[node])
            idx[active] = nxt
            active = active[~self.leaf[nxt]]
        if active.size:
            raise Unsupported("a tree deeper than recorded")
        vals = self.value[idx].reshape(n, self.I, self.K)
        start = np.zeros((n, 1, self.K), dtype=np.float64)
        start += self.baseline.reshape(1, 1, self.K)
        # scikit-learn adds the iterations one after another: an accumulate, not a pairwise sum.
        raw = np.add.accumulate(np.concatenate([start, vals], axis=1), axis=1)[:, -1, :]
        return np.asfortranarray(raw)

    def _categorical(self, idx, x, cat, go_left, missing):
        xv = x[cat]
        if np.any(xv >= 256):
            raise Mismatch("category code out of range")
        neg = xv < 0
        code = np.where(neg, 0, xv).astype(np.uint8).astype(np.intp)
        nodes = idx[cat]
        word, bit = code >> 5, (code & 31).astype(np.uint32)
        in_left = (self.bitsets[self.bitset[nodes], word] >> bit) & 1
        in_known = (self.known_bits[self.f_idx_map[self.feat[nodes]], word] >> bit) & 1
        left = in_left.astype(bool) & ~neg
        unknown = neg | (~left & ~in_known.astype(bool))
        go_left = go_left.copy()
        missing = missing.copy()
        go_left[cat] = left
        missing[cat] = unknown
        return go_left, missing

    def predict(self, X: np.ndarray, with_proba: bool) -> tuple[np.ndarray, np.ndarray | None]:
        raw = self.raw(X)
        est = self.est
        if not self.is_classifier:
            return est._loss.link.inverse(raw.ravel()), None
        encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
        labels = est.classes_[encoded]
        proba = est._loss.predict_proba(raw) if with_proba else None
        return labels, proba


class _Estimator:
    """Any other final estimator, called on the numpy array without feature names."""

    def __init__(self, est: Any):
        self.est = copy.copy(est)
        self.est.__dict__.pop("feature_names_in_", None)
        self.has_proba = hasattr(est, "predict_proba")

    def predict(self, X: np.ndarray, with_proba: bool):
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
            final, kind = _CompiledHGB(est), "hist_gradient_boosting"
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
