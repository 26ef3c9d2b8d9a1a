"""Shared fixtures for the serving tests: one trained store for the whole session.

Modules that change the registry work on a copy of the store's database (the artifacts stay in
the original folder, which nothing deletes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import sqlite_uri, train

MODEL = "breast-cancer-classifier"


@dataclass
class Store:
    """A SQLite tracking store with a registered model."""

    root: Path
    uri: str


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory) -> Store:
    """A store where the default model's version 1 (logistic regression) is in Production."""
    root = tmp_path_factory.mktemp("serving-store")
    uri = sqlite_uri(root)
    train(uri, "--promote", "production")
    return Store(root, uri)


def copy_store(store: Store, dest: Path) -> Store:
    """A copy of ``store``'s database under ``dest`` (same artifact files)."""
    db = dest / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(store.root / "mlruns" / "mlflow.db", db)
    return Store(dest, sqlite_uri(dest))


@contextlib.contextmanager
def tracking(uri: str):
    """MLFLOW_TRACKING_URI set for in-process MLflow calls (the SQLite registry needs it)."""
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old


def register_same_as(uri: str, version: str = "1", name: str = MODEL) -> str:
    """Register a new version of ``name`` with the same model files as ``version``; its number."""
    from mlflow import MlflowClient

    with tracking(uri):
        client = MlflowClient(uri, uri)
        src = client.get_model_version(name, version)
        model_id = src.source.split("/")[-1] if src.source.startswith("models:/m-") else None
        mv = client.create_model_version(name, source=src.source, run_id=src.run_id, model_id=model_id)
    return str(mv.version)


def register_broken(uri: str, folder: Path, name: str = MODEL, version: str = "1") -> str:
    """Register a version whose model file is garbage (it downloads, but cannot load)."""
    import mlflow
    from mlflow import MlflowClient

    with tracking(uri):
        client = MlflowClient(uri, uri)
        src = client.get_model_version(name, version)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                         dst_path=str(folder / "download")))
        broken = folder / "broken-model"
        shutil.copytree(local, broken)
        (broken / "model.skops").write_bytes(b"this is not a model")
        mv = client.create_model_version(name, source=str(broken), run_id=src.run_id)
    return str(mv.version)


def promote(uri: str, version: str, name: str = MODEL) -> None:
    """Put ``version`` in Production (stage + alias) without pre-flight, like a careless operator."""
    from mlops import registry

    with tracking(uri):
        client = registry.get_client(uri)
        registry.promote(client, name, version, registry.PRODUCTION, reason="test", preflight=False, notify=False)
