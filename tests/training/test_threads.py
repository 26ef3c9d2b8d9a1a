"""Small tables train on one thread (OpenMP threads spin on tiny histogram fits), large ones on all."""

from __future__ import annotations

from threadpoolctl import threadpool_info

from training.train import SINGLE_THREAD_ROWS, _threads_for


def _openmp_threads() -> set[int]:
    import sklearn.ensemble  # noqa: F401 - loads scikit-learn's OpenMP runtime

    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"}


def test_small_table_runs_on_one_thread_and_restores_the_default():
    before = _openmp_threads()
    assert before, "scikit-learn's OpenMP runtime is loaded"
    with _threads_for(275):
        assert _openmp_threads() == {1}
    assert _openmp_threads() == before


def test_large_table_keeps_the_default_threads():
    before = _openmp_threads()
    with _threads_for(SINGLE_THREAD_ROWS):
        assert _openmp_threads() == before
