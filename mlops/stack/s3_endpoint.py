"""A file-backed S3 endpoint for the local production stack: moto's S3 server plus persistence.

moto keeps everything in memory, so on its own a restart loses every object. This process runs
moto's standalone server (the same WSGI app as ``moto_server``) and mirrors the buckets to a
folder:

* at start, before it reports ready, it loads the folder back (buckets, objects, content type,
  user metadata) through the S3 API;
* while it runs, every successful write (PUT/POST/DELETE) marks the state dirty and a background
  thread writes the changed objects within about a second (each file written to a temporary name
  and renamed, then the manifest the same way);
* on SIGTERM/SIGINT it stops serving and writes a last time.

Versions, ACLs, policies and unfinished multipart uploads are not kept: MLflow uses none of them.
Requests must be signed with the configured access key id (like MinIO, unknown keys and anonymous
requests get 403); the signature itself is not verified.

Run: ``python -m mlops.stack.s3_endpoint --host 127.0.0.1 --port 9000 --data DIR`` with
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` set. ``GET /_stack/ready`` answers 200 once the
data is loaded (503 before).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from mlops import env
from mlops.util import atomic_write

log = logging.getLogger("mlops.stack.s3_endpoint")

READY_PATH = "/_stack/ready"
MANIFEST = "manifest.json"
_WRITE_METHODS = {"PUT", "POST", "DELETE"}
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


def _object_file(bucket: str, key: str) -> str:
    """File name of an object in the mirror (a hash: S3 keys don't map safely onto paths)."""
    return hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()


class Mirror:
    """Keeps ``data_dir`` equal to the buckets of the S3 endpoint at ``endpoint``."""

    def __init__(self, data_dir: Path, endpoint: str, access_key: str, secret_key: str):
        self.data_dir = data_dir
        self.objects_dir = data_dir / "objects"
        self.endpoint = endpoint
        self._access_key = access_key
        self._secret_key = secret_key
        self._client = None
        self.manifest: dict[str, dict[str, dict]] = {}
        self._lock = threading.Lock()

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, aws_access_key_id=self._access_key,
                aws_secret_access_key=self._secret_key, region_name="us-east-1",
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            )
        return self._client

    def read_manifest(self) -> dict[str, dict[str, dict]]:
        path = self.data_dir / MANIFEST
        if not path.is_file():
            return {}
        return json.loads(path.read_text()).get("buckets", {})

    def _write_manifest(self) -> None:
        body = json.dumps({"format": 1, "buckets": self.manifest}, indent=1, sort_keys=True)
        atomic_write(self.data_dir / MANIFEST, body.encode(), mode=0o600)

    def load(self) -> int:
        """Put every bucket and object of the mirror into the (empty) endpoint; return the count."""
        saved = self.read_manifest()
        count = 0
        for bucket, objects in saved.items():
            self.client.create_bucket(Bucket=bucket)
            for key, meta in objects.items():
                body = (self.objects_dir / meta["file"]).read_bytes()
                kwargs = {"Metadata": meta.get("metadata") or {}}
                if meta.get("content_type"):
                    kwargs["ContentType"] = meta["content_type"]
                answer = self.client.put_object(Bucket=bucket, Key=key, Body=body, **kwargs)
                meta["etag"] = answer["ETag"]
                count += 1
        self.manifest = saved
        self._write_manifest()
        return count

    def _listing(self, bucket: str) -> Iterable[dict]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            yield from page.get("Contents", [])

    def sync(self) -> int:
        """Write what changed since the last sync; return how many objects were written."""
        with self._lock:
            written = 0
            current: dict[str, dict[str, dict]] = {}
            for b in self.client.list_buckets().get("Buckets", []):
                bucket = b["Name"]
                old = self.manifest.get(bucket, {})
                current[bucket] = {}
                for item in self._listing(bucket):
                    key = item["Key"]
                    known = old.get(key)
                    if known and known.get("etag") == item["ETag"] and known.get("size") == item["Size"]:
                        current[bucket][key] = known
                        continue
                    try:
                        got = self.client.get_object(Bucket=bucket, Key=key)
                    except self.client.exceptions.NoSuchKey:
                        continue  # deleted since the listing; that delete marks the state dirty again
                    body = got["Body"].read()
                    name = _object_file(bucket, key)
                    atomic_write(self.objects_dir / name, body, mode=0o600)
                    current[bucket][key] = {
                        "file": name, "etag": got["ETag"], "size": len(body),
                        "content_type": got.get("ContentType"), "metadata": got.get("Metadata") or {},
                    }
                    written += 1
            keep = {m["file"] for objs in current.values() for m in objs.values()}
            self.manifest = current
            self._write_manifest()
            if self.objects_dir.is_dir():
                for path in self.objects_dir.iterdir():
                    if path.name not in keep and not path.name.startswith("."):
                        path.unlink(missing_ok=True)
            return written


class PersistMiddleware:
    """WSGI middleware: readiness endpoint, access-key check, dirty flag on writes."""

    def __init__(self, app: Callable, access_key: str):
        self.app = app
        self.access_key = access_key
        self.ready = threading.Event()
        self.dirty = threading.Event()
        self.loader_ident: int | None = None

    def _key_of(self, environ: dict) -> str | None:
        match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        if match:
            return match.group(1)
        query = environ.get("QUERY_STRING", "")
        match = re.search(r"X-Amz-Credential=([^%/&]+)", query)
        return match.group(1) if match else None

    def __call__(self, environ: dict, start_response: Callable):
        path = environ.get("PATH_INFO", "")
        if path == READY_PATH:
            status = "200 OK" if self.ready.is_set() else "503 Service Unavailable"
            body = json.dumps({"ready": self.ready.is_set()}).encode()
            start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if not path.startswith("/moto-api") and self._key_of(environ) != self.access_key:
            body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
                    b"<Message>The access key id you provided does not exist in our records.</Message></Error>")
            start_response("403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
            return [body]
        method = environ.get("REQUEST_METHOD", "GET")

        def recording_start_response(status: str, headers, exc_info=None):
            if method in _WRITE_METHODS and status[:1] == "2":
                self.dirty.set()
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start_response)


def serve(host: str, port: int, data_dir: Path, access_key: str, secret_key: str, interval: float = 0.5) -> int:
    """Run the endpoint until SIGTERM/SIGINT; return the exit code."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    data_dir.mkdir(parents=True, exist_ok=True)
    middleware = PersistMiddleware(DomainDispatcherApplication(create_backend_app), access_key)
    server = make_server(host, port, middleware, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, name="s3-http", daemon=True)
    thread.start()
    mirror = Mirror(data_dir, f"http://{host}:{port}", access_key, secret_key)
    loaded = mirror.load()
    middleware.dirty.clear()
    middleware.ready.set()
    log.info("S3 endpoint on http://%s:%s, %d object(s) loaded from %s", host, port, loaded, data_dir)

    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("signal %s: writing the last changes and stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop.is_set():
        if middleware.dirty.wait(interval) and not stop.is_set():
            middleware.dirty.clear()
            try:
                n = mirror.sync()
                if n:
                    log.info("persisted %d object(s)", n)
            except Exception:  # noqa: BLE001 - keep serving; the next write retries
                middleware.dirty.set()
                log.exception("persisting the buckets failed; retrying")
                time.sleep(interval)
    mirror.sync()
    server.shutdown()
    log.info("stopped; data in %s", data_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="Folder that keeps the buckets.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    access = env.AWS_ACCESS_KEY_ID.get()
    secret = env.AWS_SECRET_ACCESS_KEY.get()
    if not access or not secret:
        parser.error("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set")
    return serve(args.host, args.port, args.data.resolve(), access, secret)


if __name__ == "__main__":
    sys.exit(main())
