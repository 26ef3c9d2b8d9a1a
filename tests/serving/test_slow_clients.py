"""Slow, stalled and broken clients against the real service (gunicorn, 2 workers, raw sockets).

No proxy sits in front of `mlops serve`: a client that stops mid-request, or sends a broken
chunked body, must cost at most one thread for a bounded time and get a 4xx, never a worker, a
500 or a traceback in the log.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import start_serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

WORKERS = 2
THREADS = 4
READ_TIMEOUT_S = 5
ROW = {"dataframe_split": {"columns": ["mean radius"], "data": [[1.0]]}}


class Served:
    def __init__(self, port: int, tmp):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.tmp = tmp

    def logs(self) -> str:
        """The app's JSON log and gunicorn's own output."""
        return "".join(p.read_text(errors="replace") for p in (self.tmp / "logs").glob("app.log*")) + \
            (self.tmp / f"serving-{self.port}.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def served(trained_store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slow-clients")
    ctx, port = start_serving(trained_store.uri, tmp, workers=WORKERS, THREADS=THREADS,
                              READ_TIMEOUT_S=READ_TIMEOUT_S, LOG_LEVEL="DEBUG")
    with ctx:
        yield Served(port, tmp)


def example_body() -> bytes:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(2)
    return json.dumps({"dataframe_split": {"columns": list(frame.columns),
                                           "data": frame.to_numpy().tolist()}}).encode()


def stall(port: int, data: bytes) -> socket.socket:
    """A connection that sends ``data`` and then nothing."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if data:
        s.sendall(data)
    return s


def still_open(s: socket.socket) -> bool:
    """True while the server has neither answered, closed nor reset ``s`` (nothing to read yet)."""
    prior = s.gettimeout()
    s.setblocking(False)  # a socket with a timeout would wait for data first
    try:
        s.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(prior)
    return False  # an answer (a 408) or the end of the connection


def exchange(port: int, data: bytes, close_after_send: bool = False, timeout: float = 10) -> bytes:
    """Send raw bytes; everything the server answers until it closes (or ``timeout``)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if close_after_send:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except TimeoutError:
        return out
    finally:
        s.close()


def status_and_json(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def probe(url: str, body: bytes, n: int = 10, timeout: float = 4.0) -> tuple[int, int]:
    """(answered /health, answered /invocations) out of ``n`` fresh connections each."""
    def one(i: int) -> tuple[bool, bool]:
        try:
            h = requests.get(url + "/health", timeout=timeout, headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            h = False
        try:
            p = requests.post(url + "/invocations", data=body, timeout=timeout,
                              headers={"Content-Type": "application/json", "Connection": "close"}).status_code == 200
        except requests.RequestException:
            p = False
        return h, p

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(n)))
    return sum(h for h, _ in results), sum(p for _, p in results)


PARTIALS = [
    b"",  # connects and sends nothing
    b"POST /invocations HTTP/1.1\r\nHost: x\r\n",  # headers never end
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"da",
    b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n4\r\n{\"da",
    b"GET /health HTTP/1.1\r\nHo",
]


def test_stalled_clients_do_not_block_health_or_predictions(served):
    """Fewer stalled connections than threads: every other client is still answered at once,
    while the stalled ones are still open (the read deadline has not passed yet)."""
    body = example_body()
    stalled = [stall(served.port, PARTIALS[i % len(PARTIALS)]) for i in range(WORKERS * THREADS - 2)]
    try:
        time.sleep(0.5)
        health, predictions = probe(served.url, body)
        assert (health, predictions) == (10, 10), (health, predictions)
        assert all(still_open(s) for s in stalled), "answered only after the stalled clients were dropped"
    finally:
        for s in stalled:
            s.close()


def test_stalled_clients_are_dropped_after_the_read_deadline(served):
    """More stalled connections than threads: within the deadline they are all closed (a stalled
    body gets a 408 first) and the service answers everyone again; nothing is logged as an error."""
    stalled = [stall(served.port, PARTIALS[1 + i % (len(PARTIALS) - 1)]) for i in range(2 * WORKERS * THREADS)]
    t0 = time.monotonic()
    answers = []
    try:
        for s in stalled:
            s.settimeout(60)
            out = b""
            try:
                while chunk := s.recv(65536):
                    out += chunk
            except TimeoutError:
                pytest.fail(f"a stalled connection was still open after {time.monotonic() - t0:.1f} s")
            answers.append(out)
    finally:
        for s in stalled:
            s.close()
    for out in answers:
        if out:  # a stalled body is answered; stalled headers just see the connection closed
            status, payload = status_and_json(out)
            assert status == 408 and payload["error_code"] == "REQUEST_TIMEOUT", (status, payload)
    assert any(answers), "no stalled body was answered with a 408"
    assert probe(served.url, example_body(), n=4) == (4, 4)


HEAD_PARTIALS = [p for p in PARTIALS if b"\r\n\r\n" not in p]  # never a complete request head


def test_many_unfinished_request_heads_take_no_thread(served):
    """Five times as many connections as threads, each sending part of a request line or headers
    and then nothing (slowloris): every other client is still answered at once."""
    body = example_body()
    stalled = [stall(served.port, HEAD_PARTIALS[i % len(HEAD_PARTIALS)]) for i in range(5 * WORKERS * THREADS)]
    try:
        time.sleep(0.5)
        health, predictions = probe(served.url, body, n=16, timeout=3.0)
        assert (health, predictions) == (16, 16), (health, predictions)
        assert all(still_open(s) for s in stalled), "answered only after the stalled clients were dropped"
    finally:
        for s in stalled:
            s.close()


BAD_CHUNKED = {
    "invalid chunk size": b"zz\r\n{}\r\n0\r\n\r\n",
    "chunk size with a sign": b"-5\r\nhello\r\n0\r\n\r\n",
    "missing chunk terminator": b"5\r\nhelloXX5\r\nhello\r\n0\r\n\r\n",
    "missing last-chunk CRLF": b"2\r\n{}\r\n0\r\n",
    # trailers after the last chunk are parsed as headers: each broken kind is the client's mistake
    "trailer without a colon": b"2\r\n{}\r\n0\r\nbad header line\r\n\r\n",
    "trailer name with a space": b"2\r\n{}\r\n0\r\nX T: a\r\n\r\n",
    "trailer with a NUL": b"2\r\n{}\r\n0\r\nX-T: a\x00b\r\n\r\n",
    "folded trailer": b"2\r\n{}\r\n0\r\n folded\r\n\r\n",
    "too many trailers": b"2\r\n{}\r\n0\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(300)) + b"\r\n",
    "oversized trailer": b"2\r\n{}\r\n0\r\nX-T: " + b"a" * 9000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_CHUNKED))
def test_a_malformed_chunked_body_is_a_400(served, name):
    head = (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    raw = exchange(served.port, head + BAD_CHUNKED[name], close_after_send=name == "missing last-chunk CRLF")
    status, payload = status_and_json(raw)
    assert status == 400 and payload["error_code"] == "MALFORMED_BODY", (name, status, payload)
    assert "chunk" in payload["message"].lower() and "Traceback" not in raw.decode(errors="replace")


MALFORMED_HEADS = {
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
    "header too long": (b"GET /ping HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431, "HEADERS_TOO_LARGE"),
    "too many headers": (b"GET /ping HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(200)) + b"\r\n",
                         431, "HEADERS_TOO_LARGE"),
    "invalid method": (b"P@ST /invocations HTTP/1.1\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
    "invalid version": (b"GET /ping HTTP/9.9\r\nHost: x\r\n\r\n", 400, "BAD_REQUEST"),
    "negative length": (b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}", 400, "BAD_REQUEST"),
    "header name with a space": (b"GET /ping HTTP/1.1\r\nHost: x\r\nBad Name: a\r\n\r\n", 400, "BAD_REQUEST"),
}


@pytest.mark.parametrize("name", list(MALFORMED_HEADS))
def test_a_request_gunicorn_cannot_parse_is_answered_in_json(served, name):
    """Refused before the app sees it, still as {"error_code", "message"} (was an HTML page)."""
    data, want_status, want_code = MALFORMED_HEADS[name]
    raw = exchange(served.port, data)
    head = raw.partition(b"\r\n\r\n")[0]
    assert b"content-type: application/json" in head.lower(), raw[:300]
    status, payload = status_and_json(raw)
    assert (status, payload["error_code"]) == (want_status, want_code), (name, status, payload)
    assert payload["message"] and "<html" not in raw.decode(errors="replace")


def test_a_client_that_leaves_mid_body_is_a_quiet_debug_line(served):
    heads = {
        "content-length": b"Content-Length: 5000\r\n\r\n{\"dataframe_split\": ",
        "chunked": b"Transfer-Encoding: chunked\r\n\r\n10\r\n{\"dataframe_spli",
    }
    for extra in heads.values():
        s = socket.create_connection(("127.0.0.1", served.port), timeout=5)
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra)
        time.sleep(0.2)
        s.close()
    time.sleep(1.0)
    assert probe(served.url, example_body(), n=2) == (2, 2)


def test_the_log_has_no_error_and_no_traceback(served):
    """Runs after the tests above in this module: none of those clients left an error behind."""
    assert requests.get(served.url + "/health", timeout=10).status_code == 200
    text = served.logs()
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if '"level":"ERROR"' in line or "[ERROR]" in line]
    assert not errors, errors[:5]
    debug = text.count("client disconnected during the body") + text.count("malformed chunked body")
    assert debug >= 2, "the dropped bodies were not logged at debug level"
