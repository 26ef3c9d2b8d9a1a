"""Database URIs for real: PostgreSQL (initdb) through `mlops stack`, a real `mlflow server`.

The documented plain ``postgresql://`` form works (psycopg 3 is installed), a stack password with
``@#/:`` is URL-encoded into the tracking server's URI, and no password reaches an error or a log.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

from mlops import config
from tests.helpers import BIN, clean_env, run, sqlite_uri, start_mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(600)]

DB_PASSWORD = "Pw7@k#q/9:zR5@x"  # every character a URI treats specially


def _pieces(password: str) -> list[str]:
    """Fragments of the password between special characters, long enough to grep for."""
    import re

    return [p for p in re.split(r"[@#/:]", password) if len(p) >= 3] + [password]


def test_redact_uri_handles_passwords_with_special_characters():
    for uri, expected in (
        ("postgresql://u:S3cret#PW5@db.example.com:5432/mlflow", "postgresql://u:***@db.example.com:5432/mlflow"),
        ("postgresql+psycopg2://u:a@b/c:d#e@127.0.0.1/mlflow", "postgresql+psycopg2://u:***@127.0.0.1/mlflow"),
        ("see 'mysql://root:p%40ss@[::1]:3306/x' now", "see 'mysql://root:***@[::1]:3306/x' now"),
        ("http://127.0.0.1:5000/api", "http://127.0.0.1:5000/api"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
    ):
        assert config.redact_uri(uri) == expected
    built = config.postgres_uri("mlflow", DB_PASSWORD, "127.0.0.1", 5432, "mlflow")
    assert "@" not in built.split("://", 1)[1].rsplit("@", 1)[0] and "#" not in built
    from sqlalchemy.engine import make_url

    assert make_url(built).password == DB_PASSWORD


@pytest.fixture(scope="module")
def stack_dir():
    folder = Path(tempfile.mkdtemp(prefix="mlops-dburi-"))
    env = clean_env(MLOPS_STACK_DB_PASSWORD=DB_PASSWORD)
    try:
        proc = run([str(BIN / "mlops"), "stack", "up", "--dir", str(folder), "--no-serving", "--pg-port", "0",
                    "--s3-port", "0", "--mlflow-port", "0"], env=env, check=False)
        yield folder, proc
    finally:
        run([str(BIN / "mlops"), "stack", "down", "--dir", str(folder), "--purge"], env=env, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def test_stack_password_with_special_characters_is_encoded_and_never_logged(stack_dir):
    folder, proc = stack_dir
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in (folder / "logs").rglob("*.log"))
    leaked = [piece for piece in _pieces(DB_PASSWORD) if piece in out or piece in logs]
    assert not leaked, leaked


def test_plain_postgresql_uri_works_with_mlflow(stack_dir):
    """The documented `postgresql://` form (SQLAlchemy 2.1 picks psycopg 3 for it)."""
    import json

    folder, proc = stack_dir
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = json.loads((folder / "stack.json").read_text())["ports"]["postgres"]
    uri = f"postgresql://mlflow:{quote(DB_PASSWORD, safe='')}@127.0.0.1:{port}/mlflow"
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(uri, "file:///tmp/unused-artifacts")
    assert [e.name for e in store.search_experiments()] == ["Default"]


def test_restore_error_never_shows_the_database_password(tmp_path):
    """A wrong --backend-store-uri whose password holds `#` is refused without the password."""
    store = sqlite_uri(tmp_path / "src")
    config.ensure_store(store)
    from mlflow import MlflowClient

    MlflowClient(store, store).create_registered_model("m")
    archive = tmp_path / "reg.tar.gz"
    run([str(BIN / "mlops"), "backup", "--out", str(archive)], env=clean_env(MLFLOW_TRACKING_URI=store))
    (tmp_path / "dst").mkdir()
    ctx, port = start_mlflow_server(sqlite_uri(tmp_path / "dst"), tmp_path)
    secret = "S3cret#PW5"
    with ctx:
        proc = run([str(BIN / "mlops"), "restore", str(archive), "--backend-store-uri",
                    f"postgresql://u:{secret}@127.0.0.1:1/mlflow"],
                   env=clean_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and out.strip().splitlines()[-1].startswith("error: "), out
    assert "postgresql://u:***@127.0.0.1:1" in out, out
    assert not [p for p in _pieces(secret) if p in out], out
