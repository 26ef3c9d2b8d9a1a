"""One local[2] Spark session for the whole test session, and a store with the models to score.

The store holds the project's breast-cancer classifier and a penguins classifier (strings, nulls,
string labels), both trained by the trainer itself and in Production. Tests that change the
registry register models of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlops import config
from tests.helpers import ROOT, clean_env, sqlite_uri

BREAST_CANCER = "scoring-breast-cancer"
PENGUINS = "scoring-penguins"
PENGUINS_CSV = ROOT / "training" / "datasets" / "penguins.csv"


@pytest.fixture(scope="session")
def spark():
    """A local[2] SparkSession, stopped (JVM and Python workers with it) when the session ends."""
    pytest.importorskip("pyspark", reason="the spark extra (pip install -e '.[spark]') is not installed")
    from mlops.scoring.spark import start_session

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session, _ = start_session("local[2]", "mlops-tests", {"spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> dict:
    """A SQLite store with both models trained by `python -m training.train` (in parallel)."""
    folder = tmp_path_factory.mktemp("scoring-store")
    uri = sqlite_uri(folder)
    config.ensure_store(uri)
    env = clean_env(MLFLOW_TRACKING_URI=uri)
    common = ["--promote", "production", "--experiment", "scoring-training"]
    jobs = [
        [sys.executable, "-m", "training.train", "--model-name", BREAST_CANCER, *common],
        [sys.executable, "-m", "training.train", "--data", str(PENGUINS_CSV), "--target", "species",
         "--model-name", PENGUINS, "--model", "hist_gradient_boosting", *common],
    ]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in jobs]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    return {"uri": uri, "folder": folder}
