"""Shared, read-only fixtures: the source registry (trained once) and its backup archive."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import BIN, clean_env, run, sqlite_uri, train
from tests.lifecycle import registry_data


def mlops(*args: str, uri: str | None = None, check: bool = True, timeout: float = 600, **env):
    """Run the real `mlops` console script against ``uri``."""
    extra = {"MLFLOW_TRACKING_URI": uri} if uri else {}
    return run([str(BIN / "mlops"), *map(str, args)], env=clean_env(**extra, **env), check=check, timeout=timeout)


@pytest.fixture(scope="session")
def source_registry(tmp_path_factory):
    """A SQLite store holding the full fixture; tests must not change it."""
    folder = tmp_path_factory.mktemp("source")
    uri = sqlite_uri(folder)
    train(uri, "--model", "logistic_regression", "--model-name", registry_data.NAME,
          "--experiment", "lc-exp-a", "--promote", "none")
    train(uri, "--data", "training/datasets/penguins.csv", "--target", "species", "--model-name",
          registry_data.PENGUINS, "--experiment", "lc-exp-c", "--promote", "none")
    registry_data.build(uri)
    before = registry_data.snapshot(uri, registry_data.NAME)
    preds = registry_data.predictions(uri, registry_data.NAME)
    penguins = registry_data.penguin_predictions(uri)
    return {"uri": uri, "folder": folder, "snapshot": before, "predictions": preds, "penguins": penguins,
            "penguins_snapshot": registry_data.snapshot(uri, registry_data.PENGUINS)}


@pytest.fixture(scope="session")
def archive(source_registry, tmp_path_factory):
    """`mlops backup` of the source registry (all models)."""
    out = tmp_path_factory.mktemp("backup") / "registry.tar.gz"
    proc = mlops("backup", "--out", out, uri=source_registry["uri"])
    assert out.is_file(), proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """Factory: an empty SQLite store in a new folder (a copy of one created once; MLflow's
    schema migrations take seconds per store)."""
    from mlops import config

    template = tmp_path_factory.mktemp("template")
    config.ensure_store(sqlite_uri(template))

    def make(folder: Path) -> str:
        (folder / "mlruns" / "artifacts").mkdir(parents=True, exist_ok=True)
        shutil.copy(template / "mlruns" / "mlflow.db", folder / "mlruns" / "mlflow.db")
        return sqlite_uri(folder)

    return make


@pytest.fixture()
def cli(monkeypatch):
    """In-process `mlops` (same click group and error handling as the console script)."""
    from mlops.cli import _load_commands
    from mlops.cli import cli as group

    _load_commands()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def invoke(*args: str, uri: str | None = None):
        if uri:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        return CliRunner().invoke(group, [str(a) for a in args], prog_name="mlops")

    return invoke
