"""The stack's folder: settings, ports, ``stack.json`` (what runs where), ``secrets.json``.

Also how clients reach the stack (tracking URI, database URI, S3 endpoint): everything here is
cheap to import, so ``mlops stack status`` and ``env`` never pay for MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets as _secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlops import config
from mlops.env import (
    MLFLOW_AUTH_ADMIN_PASSWORD,
    MLFLOW_AUTH_ADMIN_USERNAME,
    MLOPS_STACK_DB_PASSWORD,
    MLOPS_STACK_DIR,
    MLOPS_STACK_MLFLOW_PORT,
    MLOPS_STACK_PG_PORT,
    MLOPS_STACK_S3_PORT,
    MLOPS_STACK_SERVING_PORT,
)
from mlops.errors import MlopsError
from mlops.util import atomic_write, free_port

COMPONENTS = ("postgres", "s3", "mlflow", "serving")
STARTUP_PHASES = (("postgres", "s3"), ("mlflow", "serving"))
# Below Linux's ephemeral range (32768-60999 by default): an outgoing connection never holds one.
DEFAULT_PORTS = {"postgres": 25432, "s3": 29000, "mlflow": 25000, "serving": 25001}
PORT_VARS = {
    "postgres": MLOPS_STACK_PG_PORT,
    "s3": MLOPS_STACK_S3_PORT,
    "mlflow": MLOPS_STACK_MLFLOW_PORT,
    "serving": MLOPS_STACK_SERVING_PORT,
}
PORT_ENV = {name: var.name for name, var in PORT_VARS.items()}
HOST = "127.0.0.1"
DB_NAME = "mlflow"
DB_USER = "mlflow"
SERVING_USER = "serving"
STATE_FILE = "stack.json"
SECRETS_FILE = "secrets.json"
# Folders and files of a stack folder that `down --purge` removes (nothing else is touched).
PURGED = ("postgres", "s3", "mlflow", "serving", "logs", STATE_FILE, SECRETS_FILE, ".lock")


class StackError(MlopsError):
    """The stack could not do what was asked; the message says why (with a log tail if any)."""

def default_dir() -> Path:
    """``MLOPS_STACK_DIR``, else ``.stack/`` in the project home."""
    folder = MLOPS_STACK_DIR.get()
    return Path(folder).resolve() if folder else config.project_home() / ".stack"

def load_state(stack_dir: Path) -> dict:
    """``stack.json`` of ``stack_dir`` ({} when there is none)."""
    path = stack_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

def save_state(stack_dir: Path, state: dict) -> None:
    """Write ``stack.json`` atomically."""
    atomic_write(stack_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")

def load_secrets(stack_dir: Path) -> dict:
    """``secrets.json`` of ``stack_dir`` ({} when there is none)."""
    path = stack_dir / SECRETS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}

def ensure_secrets(stack_dir: Path) -> dict:
    """Generated secrets, kept in ``secrets.json`` (mode 600); ``MLOPS_STACK_DB_PASSWORD`` wins."""
    data = load_secrets(stack_dir)
    before = dict(data)
    for key in ("postgres_superuser_password", "db_password", "s3_access_key", "s3_secret_key",
                "flask_secret_key", "serving_password", "admin_token"):
        if not data.get(key):
            data[key] = _secrets.token_hex(10) if key == "s3_access_key" else _secrets.token_urlsafe(24)
    if MLOPS_STACK_DB_PASSWORD.is_set():
        data["db_password"] = MLOPS_STACK_DB_PASSWORD.get()
    path = stack_dir / SECRETS_FILE
    if data != before or not path.exists() or path.stat().st_mode & 0o077:
        atomic_write(stack_dir / SECRETS_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)
    return data

@contextlib.contextmanager
def locked(stack_dir: Path) -> Iterator[None]:
    """One `up`/`down` at a time per stack folder."""
    with open(stack_dir / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `mlops stack` command is working on {stack_dir}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

@dataclass
class Settings:
    """What `up` starts and where."""

    stack_dir: Path
    ports: dict[str, int] = field(default_factory=dict)
    auth: bool = False
    serving: bool = True
    bucket: str = "mlflow"
    mlflow_workers: int = 1
    serving_workers: int = 2
    timeout: float = 180.0

    @property
    def logs(self) -> Path:
        return self.stack_dir / "logs"

def resolve_ports(stack_dir: Path, given: dict[str, int | None]) -> dict[str, int]:
    """Ports: option, else environment, else the ones this folder used last, else the defaults.

    0 picks a free ephemeral port.
    """
    previous = load_state(stack_dir).get("ports", {})
    ports = {}
    for name in COMPONENTS:
        value = given.get(name)
        if value is None:
            value = PORT_VARS[name].get()
        if value is None:
            value = previous.get(name, DEFAULT_PORTS[name])
        ports[name] = value
    taken = set()
    for name in COMPONENTS:
        if ports[name] == 0:
            port = free_port()
            while port in taken or port in ports.values():
                port = free_port()
            ports[name] = port
        taken.add(ports[name])
    if len(set(ports.values())) != len(ports):
        raise StackError(f"two components on the same port: {ports}")
    return ports

def tracking_uri(ports: dict[str, int]) -> str:
    """The stack's tracking server."""
    return f"http://{HOST}:{ports['mlflow']}"

def backend_store_uri(ports: dict[str, int], secrets: dict) -> str:
    """The tracking server's database URI, the password URL-encoded (it may hold ``@#/:``)."""
    return config.postgres_uri(DB_USER, secrets["db_password"], HOST, ports["postgres"], DB_NAME)

def admin_auth() -> tuple[str, str] | None:
    """(user, password) of the MLflow admin of `--auth`, or None without a password."""
    password = MLFLOW_AUTH_ADMIN_PASSWORD.get()
    return (MLFLOW_AUTH_ADMIN_USERNAME.get(), password) if password else None

@dataclass
class Running:
    """Result of `up`: where everything is."""

    stack_dir: Path
    ports: dict[str, int]
    auth: bool
    started: list[str]
    already: list[str]
    details: dict[str, str]

    @property
    def tracking_uri(self) -> str:
        return tracking_uri(self.ports)

    @property
    def serving_url(self) -> str:
        return f"http://{HOST}:{self.ports['serving']}"

def storage_env(stack_dir: Path, state: dict) -> dict[str, str]:
    """The stack's storage credentials, for an operator's `mlops backup` / `mlops restore` that
    reads and writes the database and the artifact bucket directly (secrets: shell use only)."""
    secrets = load_secrets(stack_dir)
    ports = state["ports"]
    return {
        "MLOPS_BACKEND_STORE_URI": backend_store_uri(ports, secrets),
        "MLOPS_ARTIFACTS_DESTINATION": f"s3://{state.get('bucket', 'mlflow')}",
        **s3_client_env(ports, secrets),
    }

def s3_client_env(ports: dict[str, int], secrets: dict) -> dict[str, str]:
    """How an S3 client (boto3, as MLflow uses it) reaches the stack's endpoint."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": secrets["s3_access_key"],
        "AWS_SECRET_ACCESS_KEY": secrets["s3_secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }

def export_lines(r: Running | dict) -> list[str]:
    """Shell lines pointing clients at the stack."""
    ports = r.ports if isinstance(r, Running) else r["ports"]
    auth = r.auth if isinstance(r, Running) else r.get("auth")
    lines = [f"export MLFLOW_TRACKING_URI={tracking_uri(ports)}"]
    if auth:
        user = MLFLOW_AUTH_ADMIN_USERNAME.get()
        lines += [f"export MLFLOW_TRACKING_USERNAME={user}", 'export MLFLOW_TRACKING_PASSWORD="$MLFLOW_AUTH_ADMIN_PASSWORD"']
    return lines
