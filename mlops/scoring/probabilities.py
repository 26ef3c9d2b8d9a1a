"""Class probabilities (``--probabilities``): one ``probability_<label>`` column per class.

``spark_udf`` returns what ``pyfunc.predict`` returns, the labels. The probabilities come from a
second pandas UDF on the same pinned model files: the rows go through pyfunc's own schema
enforcement, exactly as for ``predict``, then to the scikit-learn model's ``predict_proba``. On a
cluster the model folder is shipped to the executors the way ``spark_udf`` ships it
(MLflow's ``SparkModelCache``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pandas as pd  # module level: pyspark resolves the UDF's type hints in this module

from mlops.scoring import BadInput
from mlops.scoring.model import PinnedModel

PREFIX = "probability_"


def labels(pinned: PinnedModel) -> list[Any]:
    """The classifier's class labels (``classes_``); BadInput for a model without ``predict_proba``."""
    import mlflow.pyfunc

    if "sklearn" not in pinned.mlmodel.flavors:
        raise BadInput(f"--probabilities: {pinned.name} v{pinned.version} is not a scikit-learn model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mlflow.pyfunc.load_model(str(pinned.path), suppress_warnings=True).get_raw_model()
    if not hasattr(raw, "predict_proba") or not hasattr(raw, "classes_"):
        raise BadInput(f"--probabilities: {pinned.name} v{pinned.version} is not a classifier with predict_proba")
    return [c.item() if hasattr(c, "item") else c for c in raw.classes_]


def column_names(classes: list[Any]) -> list[str]:
    """``probability_<label>`` for each class, in the model's class order."""
    return [f"{PREFIX}{c}" for c in classes]


def udf(spark: Any, pinned: PinnedModel, classes: list[Any]) -> Any:
    """A pandas UDF: a struct of the feature columns -> a struct of one double per class."""
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import DoubleType, StructField, StructType

    names = column_names(classes)
    schema = pinned.signature.inputs
    path = str(pinned.path)
    archive = None
    if not spark.sparkContext.master.startswith("local"):
        from mlflow.pyfunc.spark_model_cache import SparkModelCache

        archive = SparkModelCache.add_local_model(spark, path)

    @pandas_udf(StructType([StructField(n, DoubleType(), True) for n in names]))
    def probabilities(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow.pyfunc
        from mlflow.models.utils import _enforce_schema

        if archive is not None:
            from mlflow.pyfunc.spark_model_cache import SparkModelCache

            model, _ = SparkModelCache.get_or_load(archive)
        else:
            model = mlflow.pyfunc.load_model(path, suppress_warnings=True)
        raw = model.get_raw_model()
        for frame in batches:
            yield pd.DataFrame(raw.predict_proba(_enforce_schema(frame, schema)), columns=names)

    return probabilities


__all__ = ["PREFIX", "column_names", "labels", "udf"]
