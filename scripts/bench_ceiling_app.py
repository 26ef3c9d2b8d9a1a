"""The HTTP ceiling for the serving benchmark: a bare WSGI app that reads the request body and
answers a constant JSON body, no Flask, no model.

Run it as ``gunicorn scripts.bench_ceiling_app:app`` with the service's worker settings. Not part
of the product: only ``scripts/bench_batching.py`` starts it.
"""

from __future__ import annotations

BODY = b'{"predictions": [0]}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    """Read the whole body (as a server must), answer the constant."""
    if environ["PATH_INFO"] == "/ping":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    stream = environ["wsgi.input"]
    while length > 0:
        chunk = stream.read(min(length, 65536))
        if not chunk:
            break
        length -= len(chunk)
    start_response("200 OK", HEADERS)
    return [BODY]
