"""The local production stack for real: PostgreSQL (initdb), the S3 endpoint, `mlflow server`
with proxied artifacts and the serving service, each a real process on an ephemeral port.

One stack (A, no auth) is shared by the module: train through the MLproject → files in the bucket
and rows in PostgreSQL → promote → the serving service (no S3 credentials) predicts. A second,
fresh stack (B, --auth) receives A's registry through `mlops backup` → `mlops restore` and must
answer identical predictions; it refuses anonymous calls and takes a training run with
credentials. Then A is stopped and started again on the same folder and still serves its version.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import BIN, ROOT, clean_env, live_processes, run

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

MODEL = "breast-cancer-classifier"
ADMIN_PASSWORD = "stack-test-admin-pw"


def _env(**extra) -> dict[str, str]:
    """A clean environment without any S3 credentials (clients must not need them), plus ``extra``."""
    env = clean_env()
    for key in list(env):
        if key.startswith(("AWS_", "MLOPS_STACK_")):
            env.pop(key)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def stack_cli(stack_dir: Path, *args: str, check: bool = True, **env):
    return run([str(BIN / "mlops"), "stack", *args, "--dir", str(stack_dir)], env=_env(**env), check=check, timeout=600)


def _state(stack_dir: Path) -> dict:
    return json.loads((stack_dir / "stack.json").read_text())


def _secrets(stack_dir: Path) -> dict:
    return json.loads((stack_dir / "secrets.json").read_text())


def _processes_under(folder: Path) -> list[int]:
    """Live processes whose command line or stack tag points into ``folder`` (zombies excluded)."""
    found = []
    for pid, _ in live_processes():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(folder) in cmdline:
            found.append(pid)
    return found


def _rows(n: int = 5) -> dict:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).iloc[::57].head(n)
    return {"dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}}


def _predict(serving_url: str) -> dict:
    r = requests.post(f"{serving_url}/api/predict", json=_rows(), timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["X-Model-Version"] == body["model_version"]
    return body


def _wait_serving(serving_url: str, version: str, timeout: float = 120) -> None:
    """Until /api/model/info reports ``version`` and /ready is 200 (the service polls the registry)."""
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        r = requests.get(f"{serving_url}/api/model/info", timeout=5)
        body = r.json()
        if r.status_code == 200 and str(body.get("model_version")) == version:
            assert requests.get(f"{serving_url}/ready", timeout=5).status_code == 200
            return
        time.sleep(0.3)
    raise AssertionError(f"{serving_url} does not serve v{version}: {body}")


def _up(stack_dir: Path, *extra: str, **env) -> dict:
    stack_cli(stack_dir, "up", *extra, **env)
    state = _state(stack_dir)
    ports = state["ports"]
    return {
        "dir": stack_dir,
        "uri": f"http://127.0.0.1:{ports['mlflow']}",
        "serving": f"http://127.0.0.1:{ports['serving']}",
        "ports": ports,
    }


def _stack_folder() -> Path:
    # Not under pytest's tmp dirs: those are private to root (0700) and PostgreSQL runs as
    # the `postgres` user when the tests run as root.
    return Path(tempfile.mkdtemp(prefix="mlops-stack-"))


@pytest.fixture(scope="module")
def stack_a():
    folder = _stack_folder()
    try:
        yield _up(folder, "--pg-port", "0", "--s3-port", "0", "--mlflow-port", "0", "--serving-port", "0",
                  "--serving-workers", "1")
    finally:
        stack_cli(folder, "down", "--purge", check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def trained(stack_a):
    """A training run through the MLproject (the trainer entry script) on stack A, promoted."""
    env = _env(MLFLOW_TRACKING_URI=stack_a["uri"])
    run(["sh", str(ROOT / "docker" / "entrypoints" / "trainer.sh"), "-P", "model=logistic_regression"], env=env)
    run([str(BIN / "mlops"), "promote", MODEL, "1", "--stage", "Production", "--reason", "stack test"], env=env)
    _wait_serving(stack_a["serving"], "1")
    return _predict(stack_a["serving"])


def test_training_lands_in_s3_and_postgres_and_serving_predicts(stack_a, trained):
    import boto3
    import psycopg2

    secrets = _secrets(stack_a["dir"])
    ports = stack_a["ports"]
    # Registry rows in PostgreSQL.
    conn = psycopg2.connect(host="127.0.0.1", port=ports["postgres"], user="mlflow", password=secrets["db_password"],
                            dbname="mlflow")
    with conn, conn.cursor() as cur:
        cur.execute("SELECT version, current_stage, source FROM model_versions WHERE name = %s", (MODEL,))
        versions = cur.fetchall()
        cur.execute("SELECT artifact_location FROM experiments WHERE name = %s", (MODEL,))
        (location,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
                    "WHERE e.name = %s AND r.status = 'FINISHED'", (MODEL,))
        (finished_runs,) = cur.fetchone()
    conn.close()
    assert [(v, stage) for v, stage, _ in versions] == [(1, "Production")]
    source = versions[0][2]
    assert source.startswith("models:/m-")
    assert location.startswith("mlflow-artifacts:"), location
    assert finished_runs == 1

    # The model's files in the bucket, listed with boto3 against the S3 endpoint.
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", region_name="us-east-1",
                      aws_access_key_id=secrets["s3_access_key"], aws_secret_access_key=secrets["s3_secret_key"])
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
            for o in page.get("Contents", [])]
    model_id = source.removeprefix("models:/")
    model_files = [k for k in keys if f"/models/{model_id}/artifacts/" in k]
    assert any(k.endswith("/MLmodel") for k in model_files), keys
    assert any(k.endswith((".skops", ".pkl")) for k in model_files), model_files

    # The S3 endpoint wants the stack's key, like MinIO: anonymous requests are refused.
    assert requests.get(f"http://127.0.0.1:{ports['s3']}/mlflow", timeout=5).status_code == 403

    # The serving service holds no S3 credentials and serves v1.
    serving = _state(stack_a["dir"])["components"]["serving"]
    environ = Path(f"/proc/{serving['pid']}/environ").read_bytes().decode(errors="replace")
    assert "AWS_ACCESS_KEY_ID" not in environ and "AWS_SECRET_ACCESS_KEY" not in environ
    assert "MLFLOW_S3_ENDPOINT_URL" not in environ
    assert f"MLFLOW_TRACKING_URI={stack_a['uri']}" in environ.split("\0")
    assert trained["model_version"] == "1"
    assert trained["predictions"] and set(trained["predictions"]) <= {0, 1}

    status = stack_cli(stack_a["dir"], "status", "--json")
    rows = json.loads(status.stdout)["components"]
    assert all(r["healthy"] for r in rows.values()), rows
    assert rows["serving"]["detail"].endswith("ready")


@pytest.fixture(scope="class")
def stack_b():
    """A second, fresh stack with MLflow basic auth."""
    folder = _stack_folder()
    try:
        yield _up(folder, "--auth", "--pg-port", "0", "--s3-port", "0", "--mlflow-port", "0", "--serving-port", "0",
                  "--serving-workers", "1", MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD)
    finally:
        stack_cli(folder, "down", "--purge", check=False)
        shutil.rmtree(folder, ignore_errors=True)


class TestFreshAuthStack:
    """Stack B lives only for these tests (class scope), so A and B overlap briefly."""

    def test_auth_stack_refuses_anonymous_calls(self, stack_b):
        _auth_refuses_anonymous(stack_b)

    def test_backup_restore_gives_identical_predictions(self, stack_a, trained, stack_b, tmp_path):
        _backup_restore_then_train_with_credentials(stack_a, trained, stack_b, tmp_path)


def _auth_refuses_anonymous(stack_b):
    uri = stack_b["uri"]
    for path in ("/api/2.0/mlflow/experiments/search?max_results=1",
                 f"/api/2.0/mlflow/registered-models/get?name={MODEL}",
                 "/api/2.0/mlflow-artifacts/artifacts"):
        assert requests.get(uri + path, timeout=10).status_code == 401, path
    wrong = requests.get(uri + "/api/2.0/mlflow/experiments/search?max_results=1", auth=("admin", "wrong"), timeout=10)
    assert wrong.status_code == 401
    ok = requests.get(uri + "/api/2.0/mlflow/experiments/search?max_results=1", auth=("admin", ADMIN_PASSWORD),
                      timeout=10)
    assert ok.status_code == 200
    assert requests.get(uri + "/health", timeout=10).status_code == 200
    # Without the admin password in the environment, --auth refuses to start at all.
    folder = _stack_folder()
    try:
        refused = stack_cli(folder, "up", "--auth", check=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert refused.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr


def _backup_restore_then_train_with_credentials(stack_a, trained, stack_b, tmp_path):
    """Backup from A and restore into B (basic auth), both with the storage credentials of
    `mlops stack env --with-storage`: the files go straight from A's bucket and into B's."""
    from mlops.stack import load_state, storage_env

    archive = tmp_path / "registry.tar.gz"
    storage_a = storage_env(stack_a["dir"], load_state(stack_a["dir"]))
    proc = run([str(BIN / "mlops"), "backup", "--out", str(archive)],
               env=_env(MLFLOW_TRACKING_URI=stack_a["uri"], **storage_a))
    assert "artifacts go directly to s3://" in proc.stderr, proc.stderr
    creds = {"MLFLOW_TRACKING_URI": stack_b["uri"], "MLFLOW_TRACKING_USERNAME": "admin",
             "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    storage_b = storage_env(stack_b["dir"], load_state(stack_b["dir"]))
    # A's bucket is not B's: refused before anything is created.
    wrong = {**storage_b, **{k: storage_a[k] for k in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                                      "AWS_SECRET_ACCESS_KEY")}}
    proc = run([str(BIN / "mlops"), "restore", str(archive)], env=_env(**creds, **wrong), check=False)
    assert proc.returncode != 0 and "does not serve files from" in proc.stderr, proc.stderr
    # A's database is not the one B's server uses: refused before anything is created.
    proc = run([str(BIN / "mlops"), "restore", str(archive)],
               env=_env(**creds, **{**storage_b, "MLOPS_BACKEND_STORE_URI": storage_a["MLOPS_BACKEND_STORE_URI"]}),
               check=False)
    assert proc.returncode != 0 and "is not the one the tracking server" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and storage_a["MLOPS_BACKEND_STORE_URI"] not in proc.stderr
    proc = run([str(BIN / "mlops"), "restore", str(archive)], env=_env(**creds, **storage_b))
    assert "artifacts go directly to s3://" in proc.stderr, proc.stderr
    assert "rows into the database in one transaction" in proc.stderr, proc.stderr  # B's PostgreSQL
    _wait_serving(stack_b["serving"], "1")
    restored = _predict(stack_b["serving"])
    assert restored["predictions"] == trained["predictions"]
    assert restored["probabilities"] == trained["probabilities"]

    # The same flow with credentials: a training run through the MLproject, promoted, served.
    run(["sh", str(ROOT / "docker" / "entrypoints" / "trainer.sh"), "-P", "model=logistic_regression",
         "-P", "promote=production", "-P", "seed=7"], env=_env(**creds))
    _wait_serving(stack_b["serving"], "2")
    assert _predict(stack_b["serving"])["model_version"] == "2"


def test_down_then_up_reuses_the_data(stack_a, trained):
    import mlflow

    folder = stack_a["dir"]
    before = stack_cli(folder, "status", "--json")
    pids = [p for row in json.loads(before.stdout)["components"].values() for p in row["pids"]]
    out = stack_cli(folder, "down")
    assert "stopped: serving, mlflow, s3, postgres" in out.stdout
    assert not _processes_under(folder)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    assert stack_cli(folder, "status", check=False).returncode != 0
    # The serving cache goes, so the model must come back from the bucket through the server.
    shutil.rmtree(folder / "serving" / "models", ignore_errors=True)

    again = _up(folder)
    assert again["ports"] == stack_a["ports"]
    _wait_serving(again["serving"], "1")
    assert _predict(again["serving"]) == trained
    client = mlflow.MlflowClient(again["uri"])
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == ["1"]
    assert client.get_model_version_by_alias(MODEL, "production").version == "1"


def test_a_component_that_fails_stops_what_up_started():
    """Taken ports (bound only, or listening) are refused in one line before anything starts."""
    folder = _stack_folder()
    held = socket.socket()  # bound, not listening: the component's own bind would fail
    held.bind(("127.0.0.1", 0))
    listening = socket.socket()  # another program answering on the port
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    try:
        failed = stack_cli(folder, "up", "--no-serving", "--pg-port", "0", "--s3-port", str(held.getsockname()[1]),
                           "--mlflow-port", "0", check=False)
        assert failed.returncode != 0
        assert failed.stderr.strip().splitlines()[-1].startswith(f"error: port {held.getsockname()[1]} for s3 is taken")
        assert not (folder / "stack.json").exists()  # nothing started, nothing recorded
        assert not _processes_under(folder)

        refused = stack_cli(folder, "up", "--no-serving", "--pg-port", "0", "--s3-port", "0",
                            "--mlflow-port", str(listening.getsockname()[1]), check=False)
        assert refused.returncode != 0
        assert f"port {listening.getsockname()[1]} for mlflow is taken by pid" in refused.stderr, refused.stderr
        assert not (folder / "stack.json").exists()  # nothing started, nothing recorded
        assert not _processes_under(folder)
    finally:
        held.close()
        listening.close()
        stack_cli(folder, "down", "--purge", check=False)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
