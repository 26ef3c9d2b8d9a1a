"""Task detection, column screening and the preprocessing steps inside the logged pipeline.

The logged model takes the user's raw columns: numeric columns are imputed (and scaled for the
linear families), boolean columns become 0/1, text columns are imputed and one-hot encoded (ordinal
for hist_gradient_boosting) with unseen categories predicted, not refused. Columns that cannot help
are left out of the model (and of its signature) with a warning naming them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from training.data import DataError, shown

log = logging.getLogger("training.preprocess")

CLASSIFICATION, REGRESSION = "classification", "regression"
TASKS = (CLASSIFICATION, REGRESSION)
# An integer target with at most this many distinct values is a class label.
MAX_INT_CLASSES = 20
# Classification refuses a target with more classes than this.
MAX_CLASSES = 100
# Text columns keep at most this many categories (the rarest are grouped as "infrequent").
MAX_CATEGORIES = 50
MISSING = "__missing__"


def detect_task(y: pd.Series, override: str | None = None) -> tuple[str, str]:
    """(task, reason) for target ``y`` (missing values already removed).

    Text, booleans or integers with at most ``MAX_INT_CLASSES`` distinct values are classification;
    floats, or integers with more distinct values, regression. ``override`` forces the task but is
    checked against the target; DataError when the target fits neither.
    """
    name = y.name
    n_unique = int(y.nunique())
    if pd.api.types.is_datetime64_any_dtype(y) or isinstance(y.dtype, pd.PeriodDtype):
        raise DataError(f"target column '{name}' holds dates: neither classes nor numbers to predict")
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if not numeric and not pd.api.types.is_bool_dtype(y) and _all_bools(y):
        numeric = False
    with np.errstate(invalid="ignore"):  # inf % 1 is NaN (not whole), without a RuntimeWarning
        whole = numeric and bool(np.all(np.mod(y.to_numpy(dtype=float), 1) == 0))
    if override:
        if override not in TASKS:
            raise DataError(f"unknown task '{override}': use classification or regression")
        if override == REGRESSION and not numeric:
            raise DataError(f"target column '{name}' is not numeric: it cannot be a regression target "
                            "(use task=classification)")
        if override == CLASSIFICATION and n_unique > MAX_CLASSES:
            raise DataError(f"target column '{name}' has {n_unique} distinct values: too many classes "
                            f"for classification (at most {MAX_CLASSES}; use task=regression)")
        return override, f"task={override} given"
    if not numeric:
        if n_unique > MAX_CLASSES or (n_unique == len(y) and n_unique > MAX_INT_CLASSES):
            raise DataError(
                f"target column '{name}' has {n_unique} distinct text values in {len(y)} rows: "
                "not class labels (is it an ID?) and not numbers"
            )
        kind = "boolean" if (pd.api.types.is_bool_dtype(y) or _all_bools(y)) else "text"
        return CLASSIFICATION, f"{kind} target with {n_unique} classes"
    if whole and n_unique <= MAX_INT_CLASSES and pd.api.types.is_integer_dtype(y):
        return CLASSIFICATION, f"integer target with {n_unique} distinct values (<= {MAX_INT_CLASSES})"
    if pd.api.types.is_integer_dtype(y):
        return REGRESSION, f"integer target with {n_unique} distinct values (> {MAX_INT_CLASSES})"
    return REGRESSION, f"numeric target with {n_unique} distinct values"


def _all_bools(s: pd.Series) -> bool:
    """True for an object column whose non-missing values are all Python/numpy booleans."""
    if s.dtype != object:
        return False
    values = s.dropna()
    return len(values) > 0 and all(isinstance(v, (bool, np.bool_)) for v in values)


@dataclass
class ColumnPlan:
    """Which raw columns the model uses, as what, and which it leaves out (with why)."""

    numeric: list[str] = field(default_factory=list)
    boolean: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    high_cardinality: dict[str, int] = field(default_factory=dict)
    mixed: list[str] = field(default_factory=list)

    @property
    def used(self) -> list[str]:
        """The model's input columns, in this order."""
        return [*self.numeric, *self.boolean, *self.categorical]

    def ordered(self, columns: list) -> list[str]:
        """The used columns in the order of the user's file."""
        used = set(self.used)
        return [str(c) for c in columns if str(c) in used]

    @property
    def all_numeric(self) -> bool:
        """Only numeric (non-boolean) columns: a flat pipeline serving's fast path can call."""
        return not self.boolean and not self.categorical


def plan_columns(X: pd.DataFrame) -> ColumnPlan:
    """Sort feature columns into numeric/boolean/categorical, or dropped with a reason."""
    plan = ColumnPlan()
    n = len(X)
    for col in X.columns:
        s = X[col]
        name = str(col)
        non_missing = s.dropna()
        if non_missing.empty:
            plan.dropped[name] = "all values missing"
            continue
        if s.nunique(dropna=False) <= 1:
            plan.dropped[name] = f"constant ({shown(non_missing.iloc[0])})"
            continue
        if pd.api.types.is_datetime64_any_dtype(s) or isinstance(s.dtype, pd.PeriodDtype):
            plan.dropped[name] = "dates are not used (derive numeric columns such as year or weekday)"
            continue
        if pd.api.types.is_bool_dtype(s) or _all_bools(s):
            plan.boolean.append(name)
            continue
        if pd.api.types.is_numeric_dtype(s):
            plan.numeric.append(name)
            continue
        # Text (or a mix of types: every value is then read as text).
        values = non_missing.astype(str)
        # Each distinct text once, with its count: the checks below cost O(distinct values), not O(rows).
        counts = values.value_counts(sort=False)
        n_unique = len(counts)
        if _looks_like_dates(values):
            plan.dropped[name] = "dates are not used (derive numeric columns such as year or weekday)"
            continue
        if n_unique == len(values) and n_unique == n and n >= 20:
            plan.dropped[name] = "unique per row (an ID?)"
            continue
        only_text = isinstance(s.dtype, pd.StringDtype)  # pandas' string dtype holds str values only
        if (not only_text and len({type(v) for v in non_missing}) > 1) or _partly_numeric(counts):
            plan.mixed.append(name)
        if n_unique > MAX_CATEGORIES:
            plan.high_cardinality[name] = n_unique
        plan.categorical.append(name)
    return plan


def _looks_like_dates(values: pd.Series) -> bool:
    """Text that parses as dates (at least 95% of a sample, and containing digits)."""
    sample = values.head(200)
    if not sample.str.contains(r"\d", regex=True).all() or not sample.str.contains(r"[-/:]", regex=True).all():
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() >= 0.95)


def _partly_numeric(counts: pd.Series) -> bool:
    """Text where most, but not all, values are numbers (e.g. "12", "7", "n/a").

    ``counts``: each distinct text (index) with how many rows hold it.
    """
    as_num = pd.to_numeric(pd.Series(counts.index, dtype=object), errors="coerce")
    share = float(counts.to_numpy()[as_num.notna().to_numpy()].sum() / counts.sum())
    return 0.5 <= share < 1.0


def check_finite_features(X: pd.DataFrame, plan: ColumnPlan) -> None:
    """DataError naming the numeric columns holding ``inf``/``-inf`` (with counts): the imputer
    fills only missing values, and scikit-learn's refusal of infinity is a traceback."""
    bad, kinds = {}, set()
    for col in plan.numeric:
        values = X[col].to_numpy(dtype=float, na_value=np.nan)
        pos, neg = int(np.isposinf(values).sum()), int(np.isneginf(values).sum())
        if pos or neg:
            bad[col] = pos + neg
            kinds |= {k for k, n in (("inf", pos), ("-inf", neg)) if n}
    if bad:
        shown_kinds = ", ".join(k for k in ("inf", "-inf") if k in kinds)
        raise DataError(f"feature columns hold non-finite values ({shown_kinds}): "
                        + ", ".join(f"{c} ({n})" for c, n in bad.items()))


def warn_plan(plan: ColumnPlan) -> None:
    """Log one warning per kind of decision the user should know about."""
    if plan.dropped:
        log.warning("columns not used: %s", "; ".join(f"{c}: {why}" for c, why in plan.dropped.items()))
    if plan.mixed:
        log.warning("columns mixing numbers and text are treated as categories: %s (clean them to use "
                    "them as numbers)", ", ".join(plan.mixed))
    if plan.high_cardinality:
        log.warning(
            "columns with many distinct values keep their %d most frequent categories (the rest are "
            "grouped): %s", MAX_CATEGORIES,
            ", ".join(f"{c} ({k} values)" for c, k in plan.high_cardinality.items()),
        )


def prepare_frame(X: pd.DataFrame, plan: ColumnPlan) -> pd.DataFrame:
    """The used columns with uniform types: text as str (missing as NaN), booleans kept."""
    out = X[plan.ordered(list(X.columns))].copy()
    for col in plan.categorical:
        out[col] = _as_text(out[col])
    return out


def _as_text(s: pd.Series) -> pd.Series:
    """``s`` as an object column of str, missing values as NaN.

    pandas' string dtype (how CSV text is read) is converted through its distinct values, so each
    distinct text is one shared Python object (a large table's column costs 8 bytes per row);
    other columns value by value with ``str``.
    """
    if isinstance(s.dtype, pd.StringDtype):
        codes, uniques = pd.factorize(s)  # missing -> -1, the lookup's last entry
        lookup = np.append(np.asarray(uniques, dtype=object), np.nan)
        return pd.Series(lookup[codes], index=s.index, dtype=object)
    return pd.Series([np.nan if _missing(v) else str(v) for v in s], index=s.index, dtype=object)


def _missing(value) -> bool:
    """None, NaN or pandas' NA."""
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


LINEAR = ("logistic_regression", "ridge")


def build_preprocessor(plan: ColumnPlan, family: str):
    """The preprocessing steps for ``family`` as (name, transformer) pairs for a Pipeline.

    All-numeric data gets flat steps (imputer, scaler) a numpy array can go through; otherwise one
    ColumnTransformer selecting the raw columns by name.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    scale = family in LINEAR
    native_missing = family == "hist_gradient_boosting"
    if plan.all_numeric:
        steps = [] if native_missing else [("imputer", SimpleImputer(strategy="median"))]
        if scale:
            steps.append(("scaler", StandardScaler()))
        return steps

    num_steps = [] if native_missing else [("impute", SimpleImputer(strategy="median"))]
    if scale:
        num_steps.append(("scale", StandardScaler()))
    # None and NaN both mean missing (requests bring None, files NaN): two constant imputers.
    cat_impute = [
        ("impute_nan", SimpleImputer(missing_values=np.nan, strategy="constant", fill_value=MISSING)),
        ("impute_none", SimpleImputer(missing_values=None, strategy="constant", fill_value=MISSING)),
    ]
    if native_missing:
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1,
            max_categories=MAX_CATEGORIES, dtype=np.float64,
        )
    else:
        encoder = OneHotEncoder(
            handle_unknown="infrequent_if_exist", max_categories=MAX_CATEGORIES, sparse_output=False,
        )
    transformers = []
    # Categories first: hist_gradient_boosting names them by position (0 .. n_categorical-1).
    if plan.categorical:
        transformers.append(("cat", Pipeline([*cat_impute, ("encode", encoder)]), plan.categorical))
    if plan.numeric:
        transformers.append(("num", Pipeline(num_steps) if num_steps else "passthrough", plan.numeric))
    if plan.boolean:
        # One-hot without imputing: a missing value is its own category, an unseen one all zeros.
        transformers.append(("bool", OneHotEncoder(handle_unknown="ignore", sparse_output=False), plan.boolean))
    return [("preprocess", ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False))]


def categorical_positions(plan: ColumnPlan) -> list[int] | None:
    """For hist_gradient_boosting: the ColumnTransformer outputs that are ordinal-encoded categories."""
    if plan.all_numeric or not plan.categorical:
        return None
    return list(range(len(plan.categorical)))
