"""The model cache against the registry, in-process on real SQLite stores and real model files:
entries checked against the registry's version, damaged entries fetched again, a served version
that leaves the registry, and a full cache disk (a real size-limited tmpfs).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from serving.app import create_app
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings
from tests.serving.conftest import (
    MODEL,
    copy_store,
    promote,
    register_broken,
    register_same_as,
    tracking,
)

ADMIN = "cache-admin-token"


def manager_for(store, cache_dir: Path, tmp_path: Path, **kw) -> ModelManager:
    """A worker's manager on ``store`` with its cache in ``cache_dir`` (no poller thread)."""
    settings = Settings(tracking_uri=store.uri, model_name=MODEL, model_cache_dir=cache_dir,
                        log_dir=tmp_path / "logs", admin_token=ADMIN, **kw)
    return ModelManager(settings, Metrics())


def example_predictions(m: ModelManager) -> np.ndarray:
    """What the served model predicts on its own input example (through the serving path)."""
    rt = m.current
    frame = rt.loaded.input_example
    body = rt.loaded.input_example.to_json(orient="split", index=False).encode()
    body = b'{"dataframe_split": ' + body + b"}"
    assert len(frame) > 1
    return np.asarray(rt.predict(rt.parse(body, "json")).labels)


def recreate_as_constant_model(uri: str, constant: int = 1) -> str:
    """Delete the registered model and create it again with a model that always predicts
    ``constant`` as its version 1, in Production; returns the new version's run id."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer
    from sklearn.dummy import DummyClassifier

    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target
    model = DummyClassifier(strategy="constant", constant=constant).fit(X, y)
    with tracking(uri):
        client = MlflowClient(uri, uri)
        experiment_id = client.get_run(client.get_model_version(MODEL, "1").run_id).info.experiment_id
        client.delete_registered_model(MODEL)
        mlflow.set_tracking_uri(uri)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.sklearn.log_model(
                model, name="model", signature=infer_signature(X, model.predict(X)),
                input_example=pd.DataFrame(X.head(5)), pip_requirements=["scikit-learn", "skops"],
                registered_model_name=MODEL,
            )
    assert str(info.registered_model_version) == "1"
    promote(uri, "1")
    return run.info.run_id


@pytest.fixture(scope="module")
def stores(trained_store, tmp_path_factory):
    """Two registries: ``a`` (the trained model) and ``b`` (the same name re-created as a
    constant model, so its version 1 holds other weights)."""
    root = tmp_path_factory.mktemp("cache-stores")
    a = copy_store(trained_store, root / "a")
    b = copy_store(trained_store, root / "b")
    b_run = recreate_as_constant_model(b.uri)
    return a, b, b_run


@pytest.fixture()
def store(trained_store, tmp_path):
    return copy_store(trained_store, tmp_path / "store")


# -- item 9: an entry is checked against the registry's version ------------------------------------


def test_two_registries_sharing_a_cache_each_serve_their_own_weights(stores, tmp_path):
    a, b, b_run = stores
    cache = tmp_path / "models"
    with tracking(a.uri):
        ma = manager_for(a, cache, tmp_path)
        assert ma.check()["model_version"] == "1"
        real = example_predictions(ma)
    assert not (real == 1).all(), "the trained model must not look like the constant one"

    with tracking(b.uri):
        mb = manager_for(b, cache, tmp_path)
        assert mb.check()["model_version"] == "1"
        assert mb.current.meta.run_id == b_run
        assert (example_predictions(mb) == 1).all(), "registry b is served registry a's cached weights"

    with tracking(a.uri):  # and back: a restarted server of registry a gets its own model again
        ma2 = manager_for(a, cache, tmp_path)
        ma2.check()
        assert (example_predictions(ma2) == real).all()
        assert ma2.current.meta.run_id == ma.current.meta.run_id


def test_a_live_server_follows_a_model_deleted_and_created_again_under_the_same_number(store, tmp_path):
    with tracking(store.uri):
        m = manager_for(store, tmp_path / "models", tmp_path)
        m.check()
        assert not (example_predictions(m) == 1).all()
        new_run = recreate_as_constant_model(store.uri)
        res = m.check(force=True)
        assert res["error"] is None and res["model_version"] == "1", res
        assert m.current.meta.run_id == new_run, "/api/model/info would show the old run"
        assert (example_predictions(m) == 1).all(), "still serving the deleted model's weights"


def test_a_restart_never_starts_from_another_registrys_pointer(stores, tmp_path):
    a, b, _ = stores
    a = copy_store(a, tmp_path / "a")
    cache = tmp_path / "models"
    with tracking(a.uri):
        manager_for(a, cache, tmp_path).check()
    with tracking(b.uri):
        manager_for(b, cache, tmp_path).check()  # b now holds the shared pointer and v1 entry
    with tracking(a.uri):
        from mlflow import MlflowClient

        MlflowClient(a.uri, a.uri).delete_registered_model(MODEL)
        restarted = manager_for(a, cache, tmp_path)
        restarted.check()
        h = restarted.health()
        assert restarted.current is None, "registry a serves registry b's model from the shared cache"
        assert h["status"] == "unavailable" and "another registry" in h["reason"], h


# -- item 10: a damaged entry is dropped and fetched again ------------------------------------------


def test_a_truncated_cached_model_is_downloaded_again(store, tmp_path):
    cache = tmp_path / "models"
    with tracking(store.uri):
        first = manager_for(store, cache, tmp_path)
        first.check()
        model_file = cache / MODEL / "1" / "model.skops"
        size = model_file.stat().st_size
        with open(model_file, "r+b") as fh:
            fh.truncate(size // 3)

        restarted = manager_for(store, cache, tmp_path)
        res = restarted.check()
        assert res["error"] is None and res["model_version"] == "1", res
        assert restarted.health()["status"] == "ok"
        assert model_file.stat().st_size == size, "the damaged copy was not replaced"


def test_a_version_that_fails_from_cache_is_downloaded_once_more_then_refused_clearly(store, tmp_path):
    cache = tmp_path / "models"
    with tracking(store.uri):
        broken = register_broken(store.uri, tmp_path)
        promote(store.uri, broken)
        first = manager_for(store, cache, tmp_path)
        assert "load failed" in first.check()["error"]
        entry = cache / MODEL / broken
        first_download = json.loads((entry / ".cache-entry.json").read_text())["downloaded_at"]

        restarted = manager_for(store, cache, tmp_path)
        res = restarted.check()
        assert res["model_version"] is None
        assert "downloaded again" in res["error"] and "load failed" in res["error"], res
        again = json.loads((entry / ".cache-entry.json").read_text())["downloaded_at"]
        assert again > first_download, "the cached copy was not dropped and fetched again"
        h = restarted.health()
        assert h["status"] == "unavailable" and "downloaded again" in h["reason"], h


# -- item 15: the served version leaves the registry ------------------------------------------------


def _archive(uri: str, version: str) -> None:
    from mlflow import MlflowClient

    from mlops import registry

    with tracking(uri), registry.stage_api():
        MlflowClient(uri, uri).transition_model_version_stage(MODEL, version, "Archived")


def _delete_version(uri: str, version: str) -> None:
    from mlflow import MlflowClient

    with tracking(uri):
        MlflowClient(uri, uri).delete_model_version(MODEL, version)


def _same_state(live: dict, restarted: dict) -> None:
    for key in ("status", "reason", "model_version", "model_name", "selector"):
        assert live[key] == restarted[key], (key, live[key], restarted[key])
    assert live["registry"]["selected_version"] is None and restarted["registry"]["selected_version"] is None


def test_an_archived_served_version_is_degraded_live_and_after_a_restart(store, tmp_path):
    cache = tmp_path / "models"
    with tracking(store.uri):
        live = manager_for(store, cache, tmp_path)
        live.check()
        assert live.health()["status"] == "ok"
        _archive(store.uri, "1")
        live.check(force=True)
        h = live.health()
        assert (h["status"], h["model_version"]) == ("degraded", "1"), h
        assert "no version in stage Production" in h["reason"] and "v1" in h["reason"]
        assert "Archived" in h["reason"], h["reason"]

        restarted = manager_for(store, cache, tmp_path)
        restarted.check()
        h2 = restarted.health()
        assert h2["loaded_from"] == "cache" and h2["started_from_cache"] is True
        _same_state(h, h2)

        promote(store.uri, "1")  # put back: both are ok again
        for m in (live, restarted):
            m.check(force=True)
            assert m.health()["status"] == "ok" and m.health()["reason"] is None


def test_a_deleted_served_version_is_degraded_live_and_after_a_restart(store, tmp_path):
    cache = tmp_path / "models"
    v2 = register_same_as(store.uri)
    promote(store.uri, v2)
    with tracking(store.uri):
        live = manager_for(store, cache, tmp_path, model_alias="production", model_stage=None)
        assert live.check()["model_version"] == v2
        _delete_version(store.uri, v2)
        live.check(force=True)
        h = live.health()
        assert (h["status"], h["model_version"]) == ("degraded", v2), h
        assert "no alias 'production'" in h["reason"] and "deleted" in h["reason"], h["reason"]
        assert example_predictions(live) is not None

        restarted = manager_for(store, cache, tmp_path, model_alias="production", model_stage=None)
        restarted.check()
        _same_state(h, restarted.health())


def test_nothing_selected_and_nothing_cached_is_unavailable_not_starting(store, tmp_path):
    _archive(store.uri, "1")
    with tracking(store.uri):
        m = manager_for(store, tmp_path / "models", tmp_path)
        m.check()
        h = m.health()
        assert h["status"] == "unavailable", h
        assert "no version in stage Production" in h["reason"] and "no cached version" in h["reason"], h


# -- item 16: a full cache disk ---------------------------------------------------------------------


@contextlib.contextmanager
def tiny_disk(path: Path, size: str):
    """A real size-limited tmpfs at ``path`` (we run as root), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> None:
    """Write a filler file until the device is full."""
    with open(disk / "filler", "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass


def test_reload_on_a_full_cache_disk_is_a_clear_503_and_health_keeps_the_cause(store, tmp_path):
    v2 = register_same_as(store.uri)
    with tiny_disk(tmp_path / "disk", "160k") as disk, tracking(store.uri):
        cache = disk / "models"
        m = manager_for(store, cache, tmp_path, poll_interval_s=3600)
        m.check()
        assert m.current.version == "1"
        promote(store.uri, v2)
        fill(disk)
        client = create_app(m.settings, m).test_client()
        try:
            r = client.post("/api/model/reload", headers={"Authorization": f"Bearer {ADMIN}"})
            assert r.status_code == 503, r.get_data(as_text=True)
            body = r.get_json()
            assert body["error_code"] == "RELOAD_FAILED" and body["model_version"] == "1"
            assert "no space left on device" in body["message"] and str(cache) in body["message"], body

            h = client.get("/health").get_json()
            assert h["status"] == "degraded" and h["model_version"] == "1"
            assert h["last_swap_error"]["phase"] == "download"
            assert "no space left on device" in h["last_swap_error"]["error"] and str(cache) in h["reason"], h
            assert not [p for p in (cache / MODEL).iterdir() if "partial" in p.name], "half-written entry left"

            row = m.current.loaded.input_example.head(1).to_json(orient="split", index=False)
            r = client.post("/invocations", data='{"dataframe_split": ' + row + "}",
                            headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.headers["X-Model-Version"] == "1"
        finally:
            m.stop()
