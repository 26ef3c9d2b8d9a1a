"""The file-backed S3 endpoint of the local stack (mlops.stack.s3_endpoint): objects survive a stop and
a crash, multipart uploads included; unknown access keys are refused like MinIO does."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from tests.helpers import Service, clean_env, free_port

pytestmark = [pytest.mark.slow, pytest.mark.stack]

KEY, SECRET = "stack-test-key", "stack-test-secret"


def _start(data: Path, port: int, log: Path) -> Service:
    env = clean_env(AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    svc = Service([sys.executable, "-m", "mlops.stack.s3_endpoint", "--port", str(port), "--data", str(data)], env, log)
    svc.wait_http(f"http://127.0.0.1:{port}/_stack/ready", timeout=60)
    return svc


def _client(port: int, key: str = KEY):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=key,
                        aws_secret_access_key=SECRET, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def _keys(s3, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def _wait_persisted(data: Path, key: str, present: bool = True, timeout: float = 15) -> None:
    """Until the mirror's manifest lists (or no longer lists) ``key``."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        manifest = data / "manifest.json"
        if manifest.is_file():
            keys = {k for objs in json.loads(manifest.read_text())["buckets"].values() for k in objs}
            if (key in keys) == present:
                return
        time.sleep(0.1)
    raise AssertionError(f"{key} {'not written to' if present else 'still in'} {data}")


def test_objects_survive_stop_and_crash(tmp_path):
    data, port = tmp_path / "s3", free_port()
    big = os.urandom(6 * 1024 * 1024 + 123)
    (tmp_path / "big.bin").write_bytes(big)

    svc = _start(data, port, tmp_path / "s3-1.log")
    try:
        s3 = _client(port)
        s3.create_bucket(Bucket="mlflow")
        s3.create_bucket(Bucket="empty")
        s3.put_object(Bucket="mlflow", Key="a/b c+d.txt", Body=b"hello", ContentType="text/plain", Metadata={"k": "v"})
        s3.upload_file(str(tmp_path / "big.bin"), "mlflow", "x/big.bin",
                       Config=TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024))
        s3.put_object(Bucket="mlflow", Key="gone", Body=b"x")
        s3.delete_object(Bucket="mlflow", Key="gone")
        # Like MinIO: other keys and anonymous requests are refused.
        with pytest.raises(s3.exceptions.ClientError, match="InvalidAccessKeyId"):
            _client(port, "someone-else").list_objects_v2(Bucket="mlflow")
        assert requests.get(f"http://127.0.0.1:{port}/mlflow", timeout=5).status_code == 403
    finally:
        svc.stop()  # SIGTERM: writes the last changes

    svc = _start(data, port, tmp_path / "s3-2.log")
    try:
        s3 = _client(port)
        assert sorted(b["Name"] for b in s3.list_buckets()["Buckets"]) == ["empty", "mlflow"]
        assert _keys(s3, "mlflow") == ["a/b c+d.txt", "x/big.bin"]
        got = s3.get_object(Bucket="mlflow", Key="a/b c+d.txt")
        assert got["Body"].read() == b"hello"
        assert got["ContentType"] == "text/plain" and got["Metadata"] == {"k": "v"}
        body = s3.get_object(Bucket="mlflow", Key="x/big.bin")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
        s3.put_object(Bucket="mlflow", Key="after-restart", Body=b"late")
        s3.delete_object(Bucket="mlflow", Key="a/b c+d.txt")
        _wait_persisted(data, "after-restart")
        _wait_persisted(data, "a/b c+d.txt", present=False)
    finally:
        os.killpg(svc.proc.pid, 9)  # a crash: no last write
        svc.stop()

    svc = _start(data, port, tmp_path / "s3-3.log")
    try:
        s3 = _client(port)
        assert _keys(s3, "mlflow") == ["after-restart", "x/big.bin"]
        assert s3.get_object(Bucket="mlflow", Key="after-restart")["Body"].read() == b"late"
    finally:
        svc.stop()
    # Only current objects stay in the mirror.
    assert len(list((data / "objects").iterdir())) == 2
