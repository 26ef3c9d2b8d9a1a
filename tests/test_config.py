"""The embedded store: created once with its artifact root, left alone once it exists."""

from __future__ import annotations

from mlflow import MlflowClient

from mlops import config
from tests.helpers import sqlite_uri


def test_a_new_store_gets_its_artifact_root_and_an_existing_one_is_not_reopened(tmp_path):
    uri = sqlite_uri(tmp_path)
    config.ensure_store(uri)
    db = tmp_path / "mlruns" / "mlflow.db"
    default = MlflowClient(uri).get_experiment("0")
    assert default.artifact_location == (tmp_path / "mlruns" / "artifacts").resolve().as_uri() + "/0"
    before = (db.read_bytes(), db.stat().st_mtime_ns)
    config.ensure_store(uri)  # exists: nothing opened, nothing written
    assert (db.read_bytes(), db.stat().st_mtime_ns) == before


def test_an_empty_database_file_is_created_as_a_store(tmp_path):
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").touch()
    uri = sqlite_uri(tmp_path)
    config.ensure_store(uri)
    assert MlflowClient(uri).get_experiment("0").name == "Default"
