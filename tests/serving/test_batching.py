"""Batching (serving.batching): concurrent requests merged into one model call answer exactly what
each would alone, never across versions, and a bad or stalled request costs only itself.

Real gunicorn (one worker with 16 threads, so concurrent requests meet in one batcher), real
registry, load generated here. The batcher itself is also driven directly with real numpy
predictions to check the failure path (a merged call that fails is retried request by request).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from serving.batching import Batcher, merge, merge_key, split
from serving.runtime import Prediction
from serving.schema import ParsedInput, TypedColumns
from tests.helpers import gauge, sqlite_uri, start_serving, train, wait_for
from tests.serving.conftest import MODEL, promote

pytestmark = pytest.mark.slow


# -- the batcher alone ------------------------------------------------------------------------------


def _slow_predict(calls: list[int]):
    """A real computation (row sums), slow enough that concurrent requests queue; refuses any
    input holding a negative value, as a model refuses an input."""

    def predict(parsed: ParsedInput, with_proba: bool) -> Prediction:
        calls.append(parsed.rows)
        time.sleep(0.05)
        if (parsed.array < 0).any():
            raise ValueError("negative value")
        sums = parsed.array.sum(axis=1)
        return Prediction(sums, np.stack([sums, -sums], axis=1) if with_proba else None, None, parsed.rows)

    return predict


def _arr(rows: list[list[float]]) -> ParsedInput:
    a = np.asarray(rows, dtype=np.float64)
    return ParsedInput(a, None, None, len(a), "json")


def _concurrently(batcher: Batcher, inputs: list[ParsedInput], with_proba: bool = False):
    """Submit the first input, then the rest while it predicts; every outcome (result or error)."""
    outcomes: list = [None] * len(inputs)

    def one(i: int) -> None:
        try:
            outcomes[i] = batcher.predict(inputs[i], with_proba)
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcomes[i] = exc

    first = threading.Thread(target=one, args=(0,))
    first.start()
    time.sleep(0.01)  # the first call runs; the others queue behind it
    rest = [threading.Thread(target=one, args=(i,)) for i in range(1, len(inputs))]
    for t in rest:
        t.start()
    for t in [first, *rest]:
        t.join(10)
    return outcomes


def test_queued_requests_go_together_and_each_gets_its_own_rows():
    calls: list[int] = []
    batcher = Batcher(_slow_predict(calls), "native", max_rows=100, max_wait_s=0)
    inputs = [_arr([[i, i]] * (1 + i % 3)) for i in range(7)]
    outcomes = _concurrently(batcher, inputs, with_proba=True)
    assert calls[0] == inputs[0].rows  # the first request alone, at once
    assert len(calls) == 2 and calls[1] == sum(p.rows for p in inputs[1:])  # the six queued ones in one call
    for p, got in zip(inputs, outcomes, strict=True):
        assert got.rows == p.rows
        assert np.array_equal(got.labels, p.array.sum(axis=1))
        assert np.array_equal(got.proba[:, 1], -p.array.sum(axis=1))


def test_a_failing_merged_call_is_retried_one_by_one():
    calls: list[int] = []
    batcher = Batcher(_slow_predict(calls), "native", max_rows=100, max_wait_s=0)
    inputs = [_arr([[1, 2]]), _arr([[3, 4]]), _arr([[-1, 0]]), _arr([[5, 6], [7, 8]])]
    outcomes = _concurrently(batcher, inputs)
    assert isinstance(outcomes[2], ValueError)
    assert [list(o.labels) for i, o in enumerate(outcomes) if i != 2] == [[3.0], [7.0], [11.0, 15.0]]
    assert calls == [1, 4, 1, 1, 2]  # alone; the merged call (fails); then each queued request alone


class _Abort(BaseException):
    """What a thread sees when it is torn down mid-call (no Exception: not retried one by one)."""


def test_requests_merged_into_an_interrupted_call_get_an_error_not_an_empty_answer():
    calls: list[int] = []
    slow = _slow_predict(calls)

    def predict(parsed: ParsedInput, with_proba: bool) -> Prediction:
        if len(calls) >= 1:  # the first (lone) call answers; the merged one is cut short
            calls.append(parsed.rows)
            raise _Abort()
        return slow(parsed, with_proba)

    batcher = Batcher(predict, "native", max_rows=100, max_wait_s=0)
    inputs = [_arr([[i, i]]) for i in range(4)]
    outcomes = _concurrently(batcher, inputs)
    assert outcomes[0] is not None and not isinstance(outcomes[0], BaseException)
    led = [o for o in outcomes[1:] if o is None]  # the leader of the merged call died with _Abort
    assert len(led) == 1, outcomes
    for o in outcomes[1:]:
        assert o is None or isinstance(o, RuntimeError), outcomes  # never a result of None
    assert sum(isinstance(o, RuntimeError) for o in outcomes) == 2


def test_limits_and_incompatible_requests():
    calls: list[int] = []
    batcher = Batcher(_slow_predict(calls), "native", max_rows=3, max_wait_s=0)
    inputs = [_arr([[1.0]]), _arr([[2.0], [3.0]]), _arr([[4.0], [5.0]]), _arr([[6.0, 7.0]])]
    outcomes = _concurrently(batcher, inputs)
    assert [list(o.labels) for o in outcomes] == [[1.0], [2.0, 3.0], [4.0, 5.0], [13.0]]
    assert max(calls) <= 3 and sum(calls) == 6
    # other columns, params or another path never share a call
    assert merge_key(_arr([[1.0, 2.0]]), False, "native") != merge_key(_arr([[1.0]]), False, "native")
    assert merge_key(_arr([[1.0]]), False, "native") != merge_key(_arr([[1.0]]), True, "native")
    assert merge_key(ParsedInput(np.ones((1, 1)), None, {"k": 1}, 1, "json"), False, "native") is None
    assert merge_key(_arr([[1.0]]), False, "pyfunc") is None


def test_a_lone_request_waits_for_nothing_and_max_wait_collects():
    calls: list[int] = []
    batcher = Batcher(_slow_predict(calls), "native", max_rows=8, max_wait_s=0)
    t0 = time.perf_counter()
    batcher.predict(_arr([[1.0]]), False)
    alone = time.perf_counter() - t0
    waiting = Batcher(_slow_predict(calls), "native", max_rows=8, max_wait_s=0.3)
    t0 = time.perf_counter()
    waiting.predict(_arr([[1.0]]), False)
    assert time.perf_counter() - t0 >= 0.3 > alone  # BATCH_MAX_WAIT_MS: the leader waits for company
    calls.clear()
    results: list = []
    threads = [threading.Thread(target=lambda i=i: results.append(waiting.predict(_arr([[float(i)]]), False)))
               for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(10)
    assert calls == [4]  # all four in one call: they arrived within the wait


def test_typed_columns_merge_in_order():
    a = ParsedInput(None, None, None, 2, "json", TypedColumns(["x", "s"], {"x": np.array([1.0, 2.0]),
                                                                         "s": np.array(["a", None], dtype=object)}, 2))
    b = ParsedInput(None, None, None, 1, "csv", TypedColumns(["x", "s"], {"x": np.array([3.0]),
                                                                         "s": np.array(["c"], dtype=object)}, 1))
    assert merge_key(a, False, "compiled") == merge_key(b, False, "compiled")
    assert merge_key(a, False, "frame") is None  # text columns: pandas would infer them per call
    m = merge([a, b])
    assert m.rows == 3 and list(m.columns.data["x"]) == [1.0, 2.0, 3.0] and list(m.columns.data["s"]) == ["a", None, "c"]
    parts = split(Prediction(np.array([10, 20, 30]), None, None, 3), [2, 1])
    assert [list(p.labels) for p in parts] == [[10, 20], [30]]


# -- a real service ---------------------------------------------------------------------------------


def _rows():
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    return list(frame.columns), frame.to_numpy()


def _requests(n: int = 60) -> list[tuple[str, str, bytes]]:
    """``n`` distinct requests: (path, content type, body), 1-4 rows, every input format."""
    columns, data = _rows()
    rng = random.Random(7)
    out = []
    for i in range(n):
        rows = data[rng.sample(range(len(data)), 1 + i % 4)] * rng.uniform(0.8, 1.2)
        records = [dict(zip(columns, map(float, r), strict=True)) for r in rows]
        kind = i % 6
        if kind == 0:
            out.append(("/invocations", "application/json",
                        json.dumps({"dataframe_split": {"columns": columns, "data": rows.tolist()}}).encode()))
        elif kind == 1:
            out.append(("/api/predict", "application/json", json.dumps({"dataframe_records": records}).encode()))
        elif kind == 2:
            out.append(("/invocations", "application/json", json.dumps({"instances": records}).encode()))
        elif kind == 3:
            csv = ",".join(columns) + "\n" + "\n".join(",".join(repr(float(v)) for v in r) for r in rows) + "\n"
            out.append(("/api/predict", "text/csv", csv.encode()))
        elif kind == 4:
            out.append(("/api/predict", "application/json",
                        json.dumps({"dataframe_split": {"columns": columns, "data": rows.tolist()}}).encode()))
        else:
            v2 = {"inputs": [{"name": c, "shape": [len(rows)], "datatype": "FP64", "data": rows[:, j].tolist()}
                             for j, c in enumerate(columns)],
                  "outputs": [{"name": "predictions"}, {"name": "probabilities"}]}
            out.append((f"/v2/models/{MODEL}/infer", "application/json", json.dumps(v2).encode()))
    return out


@pytest.fixture(scope="module")
def forest_service(tmp_path_factory):
    """A 30-tree random forest (v1 in Production, v2 another seed, registered), served by one
    worker with 16 threads."""
    tmp = tmp_path_factory.mktemp("batching")
    uri = sqlite_uri(tmp)
    train(uri, "--model", "random_forest", "--n-estimators", "30", "--promote", "production")
    train(uri, "--model", "random_forest", "--n-estimators", "30", "--seed", "7", "--promote", "none")
    ctx, port = start_serving(uri, tmp, workers=1, THREADS="16", POLL_INTERVAL_S="0.2", READ_TIMEOUT_S="30")
    with ctx:
        yield uri, f"http://127.0.0.1:{port}"


def _send(session: requests.Session, url: str, req: tuple[str, str, bytes]) -> tuple[int, str | None, bytes]:
    path, ctype, body = req
    r = session.post(url + path, data=body, headers={"Content-Type": ctype}, timeout=30)
    return r.status_code, r.headers.get("X-Model-Version"), r.content


def _alone(url: str, reqs) -> list[bytes]:
    """Each request sent alone (nothing else in flight): the unbatched answers."""
    s = requests.Session()
    out = []
    for req in reqs:
        status, _, body = _send(s, url, req)
        assert status == 200, body[:300]
        out.append(body)
    return out


def _hammer(url: str, reqs, passes: int, clients: int = 16,
            stop: threading.Event | None = None) -> list[tuple[int, int, str | None, bytes]]:
    """Every request ``passes`` times from ``clients`` concurrent clients, in random order
    (with ``stop``: over and over until it is set)."""
    order = [i for _ in range(passes) for i in range(len(reqs))]
    random.Random(3).shuffle(order)
    answers: list = []
    lock = threading.Lock()
    position = [0]

    def client() -> None:
        s = requests.Session()
        while True:
            with lock:
                k = position[0]
                position[0] += 1
            if stop is None and k >= len(order):
                return
            if stop is not None and stop.is_set():
                return
            i = order[k % len(order)]
            answers.append((i, *_send(s, url, reqs[i])))

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    return answers


def test_merged_answers_equal_unbatched_ones_bit_for_bit(forest_service):
    uri, url = forest_service
    info = requests.get(url + "/api/model/info", timeout=10).json()
    assert info["batching"]["merges"] is True, info["batching"]
    assert info["prediction_path"] == "native"
    reqs = _requests()
    reference = _alone(url, reqs)
    merged_before = gauge(url, "serving_batched_requests_total")
    answers = _hammer(url, reqs, passes=6)
    assert gauge(url, "serving_batched_requests_total") - merged_before > 50  # merging really happened
    for i, status, version, body in answers:
        assert status == 200 and version == "1", body[:300]
        assert body == reference[i], f"request {i} ({reqs[i][0]}, {reqs[i][1]}) answered differently under load"
    health = requests.get(url + "/health", timeout=10).json()
    assert health["batching"] == {"enabled": True, "max_rows": 256, "max_wait_ms": 0.0, "merges": True}


def _wait_for_version(url: str, version: str, timeout: float = 30) -> None:
    """Until every worker of the service answers with ``version`` (one worker here)."""
    ok, seen = wait_for(lambda: ((v := requests.get(url + "/health", timeout=10).json()["model_version"]) == version,
                                 f"serving v{v}"), timeout, interval=0.2)
    assert ok, f"the service did not follow the promotion of v{version} ({seen})"


def test_a_swap_in_the_middle_of_traffic_fails_nothing_and_never_mixes_versions(forest_service):
    uri, url = forest_service
    reqs = _requests(30)
    before = _alone(url, reqs)

    stop = threading.Event()
    result: list = []
    load = threading.Thread(target=lambda: result.extend(_hammer(url, reqs, passes=1, stop=stop)))
    load.start()
    try:
        time.sleep(0.5)
        promote(uri, "2")
        _wait_for_version(url, "2")
        time.sleep(0.5)
    finally:
        stop.set()
        load.join(60)
    answers = result
    after = _alone(url, reqs)
    assert sum(1 for a, b in zip(before, after, strict=True) if a != b) > 5  # the versions answer differently
    versions = {v for _, _, v, _ in answers}
    assert versions == {"1", "2"}, versions
    for i, status, version, body in answers:
        assert status == 200, body[:300]
        expected = before[i] if version == "1" else after[i]
        assert body == expected, f"request {i} on v{version}: not that version's own answer"
    promote(uri, "1")
    _wait_for_version(url, "1")  # the next tests compare answers with v1's: serving must be back on it


def test_a_stalled_client_does_not_hold_up_the_requests_queued_behind_it(forest_service):
    _, url = forest_service
    host, port = url.removeprefix("http://").split(":")
    reqs = _requests(20)
    reference = _alone(url, reqs)
    stalled = []
    for _ in range(4):  # headers sent, body promised and never finished
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n{\"dataframe_split\": ")
        stalled.append(s)
    try:
        time.sleep(0.3)
        answers = _hammer(url, reqs, passes=5)
        for i, status, _, body in answers:
            assert status == 200 and body == reference[i]
        for s in stalled:  # still waiting on their bodies (READ_TIMEOUT_S is 30 s): they held no one up
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)
    finally:
        for s in stalled:
            s.close()


def test_a_bad_request_among_concurrent_ones_fails_only_itself(forest_service):
    _, url = forest_service
    reqs = _requests(12)
    reference = _alone(url, reqs)
    columns, data = _rows()
    bad = ("/invocations", "application/json",
           json.dumps({"dataframe_split": {"columns": columns, "data": [[*data[0][:-1].tolist(), "x"]]}}).encode())
    answers = _hammer(url, [*reqs, bad], passes=8)
    for i, status, _, body in answers:
        if i == len(reqs):
            assert status == 400 and b"error_code" in body
        else:
            assert status == 200 and body == reference[i]


def test_batching_off_predicts_alone_and_linear_models_are_never_merged(tmp_path):
    """BATCHING=off: no merged call; a logistic model (BLAS sums depend on the row count) is
    predicted request by request even with batching on, and says why."""
    from mlops.model_io import download_version
    from serving.runtime import ModelRuntime, VersionMeta

    uri = sqlite_uri(tmp_path)
    train(uri, "--promote", "production")
    path = download_version(MODEL, "1", tmp_path / "m", uri)
    rt = ModelRuntime.load(path, VersionMeta(name=MODEL, version="1", selector="stage:Production"))
    assert rt.batch_reason is not None and "differ" in rt.batch_reason
    ctx, port = start_serving(uri, tmp_path, workers=1, THREADS="8", BATCHING="off")
    with ctx:
        url = f"http://127.0.0.1:{port}"
        info = requests.get(url + "/api/model/info", timeout=10).json()
        assert info["batching"]["enabled"] is False and info["batching"]["merges"] is False
        answers = _hammer(url, _requests(12), passes=4, clients=8)
        assert all(status == 200 for _, status, _, _ in answers)
        assert gauge(url, "serving_batched_requests_total") == 0
        assert gauge(url, "serving_batch_size_count") == 0
