"""Histogram gradient boosting compiled to numpy: every tree's nodes in flat arrays, all trees of
all rows walked together one level per step, leaf values summed in scikit-learn's order (baseline,
then the iterations one after another), the class or value and the probabilities computed by the
model's own loss object. Used by ``serving.compiled``, which checks it against scikit-learn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CHUNK_CELLS = 1 << 18  # rows x trees walked at once (a few MiB per index array)


class Unsupported(Exception):
    """The pipeline holds something this module does not compile (the reason is the message)."""


class Mismatch(Exception):
    """A request's columns do not have the types the pipeline was compiled for."""


def is_nan(value: Any) -> bool:
    """True for a float NaN (of any float type), False for anything else."""
    return isinstance(value, float) and value != value


class CompiledHGB:
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
        if encoder.handle_unknown != "use_encoded_value" or not is_nan(encoder.unknown_value) \
                or not is_nan(encoder.encoded_missing_value):
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
