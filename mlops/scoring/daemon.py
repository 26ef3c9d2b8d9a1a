"""PySpark's worker daemon, with MLflow and scikit-learn imported once before it forks workers.

Spark starts one daemon per executor (``python -m`` the module named by
``spark.python.daemon.module``) and forks every Python worker from it. Stock, each worker then
imports MLflow, scikit-learn and skops on its first task (≈ 6 s each, all at once on a busy
machine); imported here, the workers inherit them. Nothing is printed: the daemon's stdout
carries its port to the JVM.
"""

from __future__ import annotations

import importlib
import warnings

PRELOAD = ("pandas", "pyarrow", "mlflow.pyfunc", "mlflow.sklearn", "sklearn.pipeline", "skops.io")


def preload() -> None:
    """Import what a scoring worker needs; a module that cannot be imported is left to the worker."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the worker itself reports what is missing
                pass


if __name__ == "__main__":
    preload()
    from pyspark import daemon

    daemon.manager()
