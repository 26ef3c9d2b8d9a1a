"""Canary/shadow state and the worker-side controller against hostile registry contents, wild
predictions and stuck candidates, in-process (no servers): each case once crashed the poller or
/health, stopped the judgement, or withdrew a healthy candidate.

The registry tag is written by anyone with registry write access (or a restored archive), so
``mlops.rollout.Rollout.from_json`` must turn anything malformed into one ValueError and
``read`` into "no rollout"; the controller's candidate calls must keep a hung candidate from
taking slots from the next rollout and must not blame a busy (not failing) one.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from types import SimpleNamespace

import numpy as np
import pytest

from mlops import rollout as ro_mod
from serving.metrics import Metrics
from serving.rollout import Active, RolloutController, _compare, merge
from serving.runtime import Prediction

GOOD = {"mode": "canary", "version": "2", "production_version": "1", "percent": 20, "started": 1_760_000_000.0,
        "duration_s": 600, "min_requests": 100}


def tag(**changes) -> str:
    return json.dumps({**GOOD, **changes})


HOSTILE = {
    "huge percent": tag(percent=10**400),
    "huge started": tag(started=10**400),
    "far-future started": tag(started=1e306),
    "huge min_requests": tag(min_requests=10**400),
    "negative min_requests": tag(min_requests=-1),
    "negative duration": tag(duration_s=-5),
    "zero duration": tag(duration_s=0),
    "auto_promote as text": tag(auto_promote="no"),
    "NaN percent": tag(percent=float("nan")),
    "infinite duration": tag(duration_s=float("inf")),
    "huge timeout": tag(thresholds={"timeout_ms": 1e13}),
    "NaN threshold": tag(thresholds={"min_agreement": float("nan")}),
    "huge threshold int": tag(thresholds={"max_error_rate": 10**400}),
    "superscript version": tag(version="\u00b2"),
    "arabic-indic version": tag(version="\u0661"),
    "long version": tag(version="9" * 40),
    "deep nesting": "[" * 5000 + "]" * 5000,
    "deep object": '{"mode": "canary", "thresholds": ' + '{"a": ' * 3000 + "1" + "}" * 3000 + "}",
    "not an object": "[1, 2]",
    "too long": tag(reason="x" * 100_000),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_tag_is_one_value_error_and_reads_as_no_rollout(case):
    with pytest.raises(ValueError):
        ro_mod.Rollout.from_json(HOSTILE[case])
    rm = SimpleNamespace(tags={ro_mod.TAG: HOSTILE[case]}, aliases={"canary": "2"})
    assert ro_mod.read(None, "m", rm) is None
    assert ro_mod.active(None, "m", rm) is None


def test_a_good_tag_still_parses_and_an_unplain_verdict_is_dropped():
    ro = ro_mod.Rollout.from_json(tag())
    assert (ro.mode, ro.version, ro.percent, ro.min_requests) == ("canary", "2", 20.0, 100)
    assert ro_mod.Rollout.from_json(ro.to_json()).id == ro.id
    kept = ro_mod.Rollout.from_json(tag(state="withdrawn", verdict={"figures": {"compared": 3}}))
    assert kept.verdict == {"figures": {"compared": 3}}
    for verdict in ({"figures": {"n": 2**64}}, {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}, [1]):
        assert ro_mod.Rollout.from_json(tag(state="withdrawn", verdict=verdict)).verdict is None
    # the table of a malformed verdict is a line saying so, not a traceback
    odd = ro_mod.Rollout.from_json(tag(state="withdrawn", verdict={"figures": {"production": 1}}))
    assert ro_mod.format_table(odd, odd.verdict["figures"])[-1].startswith("figures unreadable")


@pytest.mark.parametrize("kwargs, text", [
    ({"percent": 0.001}, "--percent"),
    ({"percent": float("nan")}, "--percent"),
    ({"duration_s": float("inf")}, "--duration"),
    ({"min_requests": 10**12}, "--min-requests"),
    ({"thresholds": ro_mod.Thresholds(timeout_ms=1e13)}, "--timeout-ms"),
    ({"thresholds": ro_mod.Thresholds(min_agreement=float("nan"))}, "--min-agreement"),
    ({"thresholds": ro_mod.Thresholds(max_p99_ratio=float("inf"))}, "--max-p99-ratio"),
])
def test_start_refuses_what_it_could_not_read_back_before_touching_the_registry(kwargs, text):
    args = {"percent": 10.0, **kwargs}
    percent = args.pop("percent")
    with pytest.raises(ro_mod.RolloutError, match=text.replace("-", r"[-_]")):
        ro_mod.start(None, "m", "2", "canary", percent, **args)  # client None: nothing may be called on it


def test_a_duration_too_long_to_hold_is_refused():
    with pytest.raises(ValueError, match="366 days"):
        ro_mod.parse_duration("9" * 400 + "h")
    assert ro_mod.parse_duration("10m") == 600.0


def test_relative_difference_is_bounded_per_row_and_never_nan():
    prod = np.array([1.0, 0.0, np.inf, 5.0, np.nan])
    cand = np.array([1.0, 0.01, np.inf, 1e300, np.nan])
    kind, n, equal, rel = _compare(cand, prod, None)
    assert (kind, n, equal) == ("regression", 5, 3)
    assert np.isfinite(rel) and rel == pytest.approx(2.0)  # two rows off: each counts at most 1
    kind, n, equal, rel = _compare(np.array([np.inf - np.inf]), np.array([1.0]), None)
    assert rel == 1.0


def test_a_malformed_figures_file_adds_nothing_of_itself():
    good = {"roles": {"production": {"requests": 10, "errors": 0, "latency_ms": [1.0]},
                      "candidate": {"requests": 100, "errors": 0, "latency_ms": [1.0]}},
            "compared": {"n": 100, "equal": 100, "rel_diff_sum": 0.0, "kind": "regression"}, "dropped": 0}
    poisoned = json.loads(json.dumps(good))
    poisoned["roles"]["candidate"]["requests"] = 900
    poisoned["compared"].update({"n": 900, "equal": 0, "rel_diff_sum": None})  # NaN written by orjson as null
    merged = merge([poisoned, good])
    assert merged["candidate"]["requests"] == 100 and merged["compared"]["n"] == 100
    figures = ro_mod.table(merged)
    assert figures["relative_difference"] == 0.0 and figures["kind"] == "regression"


# -- the controller's candidate calls -------------------------------------------------------------


def _controller(tmp_path, threads: int = 4) -> RolloutController:
    manager = SimpleNamespace(cache=SimpleNamespace(dir=tmp_path))
    settings = SimpleNamespace(threads=threads, tracking_uri="sqlite:///x.db", model_name="m")
    return RolloutController(manager, settings, Metrics())


def _active(ctl: RolloutController, version: str, timeout_ms: float, slots: int) -> Active:
    ro = ro_mod.Rollout(mode="canary", version=version, production_version="1", percent=100.0,
                        started=time.time(), thresholds=ro_mod.Thresholds(timeout_ms=timeout_ms))
    act = Active(ro, SimpleNamespace(version=version), queue_size=4, slots=slots)
    act.start(ctl._run_job)
    return act


def _prediction(proba: bool = True) -> Prediction:
    return Prediction(np.array([1]), np.array([[0.2, 0.8]]) if proba else None, [0, 1], 1)


def test_a_hung_candidate_is_counted_and_takes_nothing_from_the_next_rollout(tmp_path):
    ctl = _controller(tmp_path)
    release = threading.Event()

    def hang(rt, parsed, with_proba):
        release.wait(30)
        return _prediction()

    try:
        act = _active(ctl, "2", timeout_ms=50, slots=2)
        for _ in range(4):  # two time out holding their slots, two find every slot held by them
            assert ctl._try_candidate(act, hang, None, True, lambda rt: None, "r") is None
        c = act.figures.snapshot()["roles"]["candidate"]
        assert (c["requests"], c["errors"]) == (4, 4)  # judged: a hung candidate gets withdrawn
        act.stop()
        nxt = _active(ctl, "3", timeout_ms=1000, slots=2)
        got = ctl._try_candidate(nxt, lambda rt, p, w: _prediction(), None, True, lambda rt: None, "r")
        assert got is not None  # the next rollout has slots of its own
        assert nxt.figures.snapshot()["roles"]["candidate"]["errors"] == 0
        nxt.stop()
    finally:
        release.set()


def test_a_busy_candidate_is_not_blamed_and_one_without_probabilities_leaves_them_to_production(tmp_path):
    ctl = _controller(tmp_path)
    act = _active(ctl, "2", timeout_ms=5000, slots=1)
    go = threading.Event()
    started = threading.Event()

    def slow(rt, parsed, with_proba):
        started.set()
        go.wait(10)
        return _prediction()

    first = threading.Thread(target=ctl._try_candidate, args=(act, slow, None, True, lambda rt: None, "a"))
    first.start()
    try:
        assert started.wait(10)
        assert ctl._try_candidate(act, slow, None, True, lambda rt: None, "b") is None  # busy, within time
    finally:
        go.set()
        first.join(10)
    c = act.figures.snapshot()["roles"]["candidate"]
    assert (c["requests"], c["errors"]) == (1, 0)
    no_proba = ctl._try_candidate(act, lambda rt, p, w: _prediction(proba=False), None, True, lambda rt: None, "c")
    assert no_proba is None  # asked for probabilities it has none of: Production answers
    assert act.figures.snapshot()["roles"]["candidate"]["errors"] == 0
    assert ctl._try_candidate(act, lambda rt, p, w: _prediction(proba=False), None, False, lambda rt: None, "d")
    act.stop()


def test_a_huge_timeout_does_not_fail_candidate_calls(tmp_path):
    ctl = _controller(tmp_path)
    act = _active(ctl, "2", timeout_ms=ro_mod.MAX_TIMEOUT_MS, slots=2)

    def later(rt, parsed, with_proba):
        time.sleep(0.05)
        return _prediction()

    assert ctl._try_candidate(act, later, None, True, lambda rt: None, "r") is not None
    act.stop()


def test_health_answers_whatever_the_rollout_report_holds(tmp_path):
    from serving.manager import ModelManager
    from serving.settings import Settings

    settings = Settings(tracking_uri="http://127.0.0.1:9", model_cache_dir=tmp_path / "models",
                        log_dir=tmp_path / "logs", poll_interval_s=3600)
    manager = ModelManager(settings, Metrics())
    for report in (lambda: {"figures": {"n": 2**64}}, lambda: 1 / 0):
        manager.rollout = SimpleNamespace(report=report)
        assert manager.health()["rollout"]["error"].startswith("rollout state unreadable")


def test_a_retired_version_is_freed_with_its_batcher(tmp_path):
    """A version's batcher once lived in a dict keyed by the runtime, which its bound predict kept
    alive: every version ever served stayed in memory."""
    from serving.manager import ModelManager
    from serving.routes import Routes
    from serving.schema import ParsedInput
    from serving.settings import Settings

    settings = Settings(tracking_uri="http://127.0.0.1:9", model_cache_dir=tmp_path / "models",
                        log_dir=tmp_path / "logs", poll_interval_s=3600)
    metrics = Metrics()
    routes = Routes(ModelManager(settings, metrics), settings, metrics)

    class Runtime:
        batch_reason = None
        fast_path = "native"
        version = "1"
        batcher = None

        def predict(self, parsed, with_proba=False):
            return Prediction(parsed.array.sum(axis=1), None, None, parsed.rows)

    rt = Runtime()
    out = routes.predict_rows(rt, ParsedInput(np.ones((2, 3)), None, None, 2, "json"), False)
    assert out.labels.tolist() == [3.0, 3.0]
    gone = weakref.ref(rt)
    del rt
    gc.collect()
    assert gone() is None


def test_a_direct_path_candidate_runs_inline_and_a_slow_answer_is_still_a_timeout(tmp_path):
    """A candidate on scikit-learn's direct path is called on the request's own thread (no hand-off);
    an answer that came back later than the timeout is counted as an error and not returned."""
    ctl = _controller(tmp_path)
    act = _active(ctl, "2", timeout_ms=20, slots=2)
    act.candidate = SimpleNamespace(version="2", native=SimpleNamespace(forest=object(), ops=[], transforms=[]))
    threads: list[str] = []

    def predict(rt, parsed, with_proba, delay=0.0):
        threads.append(threading.current_thread().name)
        time.sleep(delay)
        return _prediction()

    assert ctl._try_candidate(act, predict, None, True, lambda rt: None, "fast") is not None
    assert threads[-1] == threading.current_thread().name
    slow = ctl._try_candidate(act, lambda rt, p, w: predict(rt, p, w, 0.05), None, True, lambda rt: None, "slow")
    assert slow is None
    c = act.figures.snapshot()["roles"]["candidate"]
    assert (c["requests"], c["errors"]) == (2, 1)
    act.stop()


def test_a_candidate_with_code_of_its_own_is_timed_out_on_the_pool_not_waited_for(tmp_path):
    """A direct-path model whose last step is not compiled (any estimator with a ``predict``) can
    run user code: it goes to the pool, and a slow one costs the request only the timeout."""
    ctl = _controller(tmp_path)
    act = _active(ctl, "2", timeout_ms=50, slots=2)
    act.candidate = SimpleNamespace(version="2", fast=True, native=SimpleNamespace(forest=None, ops=None,
                                                                                   transforms=[]))
    release = threading.Event()
    assert ctl._try_candidate(act, lambda rt, p, w: release.wait(30) and _prediction(), None, True,
                              lambda rt: None, "r") is None
    assert not release.is_set() and act.hung == 1  # answered while the candidate still runs on the pool
    assert act.figures.snapshot()["roles"]["candidate"]["errors"] == 1
    release.set()
    act.stop()


def test_a_candidate_that_changes_its_input_in_place_cannot_change_productions_answer(tmp_path):
    """With one parse shared by both versions, the candidate works on a copy of the array taken
    before anything ran (a ``copy=False`` scaler once rewrote the request Production then answered)."""
    from serving.schema import ParsedInput

    ctl = _controller(tmp_path)
    spec = object()
    production = SimpleNamespace(version="1", spec=spec, fast_path="native", native=None)
    candidate = SimpleNamespace(version="2", spec=spec, fast_path="native", native=None)
    ro = ro_mod.Rollout(mode="canary", version="2", production_version="1", percent=100.0, started=time.time())
    ctl.state = act = Active(ro, candidate, queue_size=4, slots=2)
    act.start(ctl._run_job)

    def predict_rows(rt, parsed, with_proba):
        if rt is candidate:
            parsed.array[:] = -1.0  # in place, then fails: Production must answer the original rows
            raise RuntimeError("candidate failed")
        return Prediction(parsed.array.sum(axis=1), None, None, parsed.rows)

    parsed = ParsedInput(np.array([[1.0, 2.0]]), None, None, 1, "json")
    who, result = ctl.predict(predict_rows, production, parsed, False, lambda rt: pytest.fail("reparsed"), None, "r")
    assert who is production and result.labels.tolist() == [3.0]
    act.stop()


def test_a_long_stop_reason_still_leaves_a_readable_tag(monkeypatch):
    class Client:
        def __init__(self):
            self.tags = {ro_mod.TAG: tag()}
            self.aliases = {"canary": "2"}

        def get_registered_model(self, name):
            return SimpleNamespace(tags=dict(self.tags), aliases=dict(self.aliases))

        def set_registered_model_tag(self, name, key, value):
            self.tags[key] = value

        def delete_registered_model_alias(self, name, alias):
            self.aliases.pop(alias, None)

    client = Client()
    monkeypatch.setattr(ro_mod.registry, "append_history", lambda *a, **k: None)  # not what is tested here
    ended = ro_mod.end(client, "m", None, ro_mod.STOPPED, "\u00e9" * 11000)
    assert ended is not None
    back = ro_mod.Rollout.from_json(client.tags[ro_mod.TAG])
    assert back.state == ro_mod.STOPPED and len(back.reason) == 2000


def test_a_float32_signature_keeps_scikit_learns_own_calls_where_float64_arithmetic_differs():
    """Requests of a float32 signature arrive as float32 arrays, which scikit-learn scales in
    float32: the compiled float64 operations must be checked on such rows (they were checked on
    float64 rows, passed, and then differed on the example: the whole native path was lost)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from serving.predictors import NativePredictor
    from serving.runtime import ModelRuntime

    X, y = load_diabetes(return_X_y=True)
    pipe = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    fake = SimpleNamespace(loaded=SimpleNamespace(sklearn_model=pipe), version="1", name="m",
                           spec=SimpleNamespace(all_required=True))
    native = NativePredictor(pipe, assume_finite=True)
    assert native.forest is not None
    ModelRuntime._check_compiled(fake, native, X[:5].astype(np.float32))
    assert native.forest is None and native.ops is None  # scikit-learn's own calls are kept
    native = NativePredictor(pipe, assume_finite=True)
    ModelRuntime._check_compiled(fake, native, X[:5])
    assert native.forest is not None  # float64 rows: the compiled arithmetic is exact
