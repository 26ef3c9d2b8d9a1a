"""The worker's model manager in-process: versions kept loaded, the reload marker between polls."""

from __future__ import annotations

import threading

import pytest

from serving.cache import ModelCache
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.settings import Settings
from tests.serving.conftest import MODEL, copy_store, promote, register_same_as, tracking


@pytest.fixture()
def store(trained_store, tmp_path):
    return copy_store(trained_store, tmp_path)


def manager_for(store, tmp_path, **kw) -> ModelManager:
    settings = Settings(tracking_uri=store.uri, model_name=MODEL, model_cache_dir=tmp_path / "cache",
                        log_dir=tmp_path / "logs", **kw)
    return ModelManager(settings, Metrics())


def test_a_version_served_before_is_swapped_back_without_loading_it_again(store, tmp_path):
    v2 = register_same_as(store.uri)
    with tracking(store.uri):
        m = manager_for(store, tmp_path)
        assert m.check()["model_version"] == "1"
        first = m.current
        promote(store.uri, v2)
        res = m.check(force=True)
        assert (res["previous_version"], res["model_version"], res["swapped"]) == ("1", v2, True)
        second = m.current
        assert second is not first and list(m.loaded) == ["1", v2]
        promote(store.uri, "1")
        res = m.check(force=True)
        assert (res["model_version"], res["swapped"]) == ("1", True)
        assert m.current is first, "the kept version was loaded again instead of swapped back"
        assert m.current.meta.stage == "Production"
        assert m.current.meta.aliases == ["production"], "aliases are read after the swap"
        assert list(m.loaded) == [v2, "1"]
        assert m.cache.read_pointer(m.settings.selector)["version"] == "1"


def test_only_keep_loaded_versions_stay_in_memory(store, tmp_path):
    v2 = register_same_as(store.uri)
    with tracking(store.uri):
        m = manager_for(store, tmp_path, keep_loaded_versions=1)
        m.check()
        first = m.current
        promote(store.uri, v2)
        m.check(force=True)
        assert list(m.loaded) == [v2] and getattr(first, "retired_at", None) is not None
        promote(store.uri, "1")
        m.check(force=True)
        assert m.current.version == "1" and m.current is not first, "an evicted version must be loaded afresh"


def test_a_waiting_poller_sees_another_workers_reload_request(store, tmp_path):
    m = manager_for(store, tmp_path, poll_interval_s=600)
    m._reload_seen = m.cache.reload_marker_mtime()
    other_worker = ModelCache(m.settings.model_cache_dir, MODEL)
    timer = threading.Timer(0.2, other_worker.request_reload)
    timer.start()
    try:
        assert m._sleep(60) is True, "the reload marker was not noticed while waiting for the next poll"
    finally:
        timer.cancel()
    assert m._reload_requested() is False, "one request must force exactly one check"
    m.stop()
    assert m._sleep(60) is False
