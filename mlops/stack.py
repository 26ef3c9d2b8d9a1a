"""The local production stack, as real processes on 127.0.0.1 (no Docker).

Components, started in this order and stopped in the reverse one:

* ``postgres``: a PostgreSQL cluster of its own (``initdb``), with a ``mlflow`` role and database;
* ``s3``: an S3 endpoint standing in for MinIO (moto's server, file-backed: mlops.s3_endpoint),
  with the artifact bucket;
* ``mlflow``: ``mlflow server`` on PostgreSQL with proxied artifacts in the bucket
  (``docker/entrypoints/mlflow-server.sh``, the script the compose ``mlflow`` service runs),
  optionally with MLflow's basic-auth app;
* ``serving``: the prediction service following that registry
  (``docker/entrypoints/serving.sh``, the script the compose ``serving`` service runs).

Everything lives in one folder (``.stack/`` in the project home by default): the PostgreSQL
cluster, the bucket mirror, logs, ``stack.json`` (ports, and the pid and process group of each
component) and ``secrets.json`` (generated passwords, mode 600). Every process the stack starts
carries ``MLOPS_STACK_TAG`` in its environment, so ``down`` stops exactly those processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets as _secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlops import config
from mlops.env import (
    MLFLOW_AUTH_ADMIN_PASSWORD,
    MLFLOW_AUTH_ADMIN_USERNAME,
    MLFLOW_FLASK_SERVER_SECRET_KEY,
    MLOPS_STACK_ALLOWED_HOSTS,
    MLOPS_STACK_AUTH_CACHE_TTL_SECONDS,
    MLOPS_STACK_DB_PASSWORD,
    MLOPS_STACK_DIR,
    MLOPS_STACK_MLFLOW_PORT,
    MLOPS_STACK_PG_PORT,
    MLOPS_STACK_S3_PORT,
    MLOPS_STACK_SERVING_PORT,
    inherited,
)
from mlops.errors import MlopsError
from mlops.util import atomic_write, first_line, free_port, wait_for

log = logging.getLogger(__name__)

COMPONENTS = ("postgres", "s3", "mlflow", "serving")
STARTUP_PHASES = (("postgres", "s3"), ("mlflow", "serving"))
# Below Linux's ephemeral range (32768-60999 by default): an outgoing connection never holds one.
DEFAULT_PORTS = {"postgres": 25432, "s3": 29000, "mlflow": 25000, "serving": 25001}
# Modules each component needs beyond the base install, and what installs them.
REQUIREMENTS = {"s3": ("moto", "flask", "flask_cors", "werkzeug")}
STACK_INSTALL = "pip install 'ml-devops-app[stack]' (or `make install`)"
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
ENTRYPOINTS = Path(__file__).resolve().parents[1] / "docker" / "entrypoints"
# Variables the serving service takes from the caller's environment (the rest is set here).
SERVING_PASSTHROUGH = ("MODEL_NAME", "MODEL_STAGE", "MODEL_ALIAS", "POLL_INTERVAL_S", "ADMIN_TOKEN",
                       "API_TOKEN", "MAX_BODY_BYTES", "KEEP_LOADED_VERSIONS")
# Folders and files of a stack folder that `down --purge` removes (nothing else is touched).
_PURGED = ("postgres", "s3", "mlflow", "serving", "logs", STATE_FILE, SECRETS_FILE, ".lock")


class StackError(MlopsError):
    """The stack could not do what was asked; the message says why (with a log tail if any)."""


def default_dir() -> Path:
    """``MLOPS_STACK_DIR``, else ``.stack/`` in the project home."""
    folder = MLOPS_STACK_DIR.get()
    return Path(folder).resolve() if folder else config.project_home() / ".stack"


# --------------------------------------------------------------------------- files


def load_state(stack_dir: Path) -> dict:
    """``stack.json`` of ``stack_dir`` ({} when there is none)."""
    path = stack_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_state(stack_dir: Path, state: dict) -> None:
    atomic_write(stack_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True) + "\n")


def load_secrets(stack_dir: Path) -> dict:
    """``secrets.json`` of ``stack_dir`` ({} when there is none)."""
    path = stack_dir / SECRETS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _ensure_secrets(stack_dir: Path) -> dict:
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
def _locked(stack_dir: Path) -> Iterator[None]:
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


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log file ('' if it can't be read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of ``pid`` from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[19])


def _has_tag(pid: int, tag: str) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"MLOPS_STACK_TAG={tag}".encode() in env.split(b"\0")


def _members(entry: dict) -> list[int]:
    """Live (non-zombie) processes of a component: its process group, carrying its tag."""
    pgid, tag = entry["pgid"], entry["tag"]
    if not Path("/proc/self/stat").exists():  # no /proc: trust the group if its leader is there
        try:
            return [entry["pid"]] if os.getpgid(entry["pid"]) == pgid else []
        except ProcessLookupError:
            return []
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _proc_stat(int(name))
        if stat and stat[1] == pgid and stat[0] != "Z" and _has_tag(int(name), tag):
            found.append(int(name))
    return found


def _stop_entry(name: str, entry: dict, timeout: float = 40) -> bool:
    """Stop one component's processes (SIGINT for PostgreSQL's fast shutdown, else SIGTERM)."""
    members = _members(entry)
    if not members:
        return False
    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
    began = time.monotonic()
    leader_alive = entry["pid"] in members
    for pid in [entry["pid"]] if leader_alive else members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if leader_alive else os.kill)(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _members(entry):
        time.sleep(0.1)
    left = _members(entry)
    if not left:
        log.info("%s stopped in %.1fs", name, time.monotonic() - began)
        return True
    for pid in left:
        log.warning("%s: pid %d still running after %.0fs, killing it", name, pid, timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _members(entry):
        time.sleep(0.1)
    if _members(entry):
        raise StackError(f"{name}: could not stop pid(s) {', '.join(map(str, _members(entry)))} "
                         "(started by another user?)")
    return True


def _port_in_use(port: int) -> bool:
    """True if something accepts connections on HOST:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


def _base_env(tag: str, **extra: str | int | Path) -> dict[str, str]:
    """The caller's environment without anything that would point a component elsewhere."""
    drop = ("MLFLOW_", "AWS_", "MODEL_", "SERVING_", "PGPASSWORD", "PGHOST", "PGPORT", "PGUSER")
    env = inherited(drop=drop)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MLOPS_STACK_TAG"] = tag
    env.update({k: str(v) for k, v in extra.items()})
    return env


# --------------------------------------------------------------------------- settings


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
    return f"http://{HOST}:{ports['mlflow']}"


def backend_store_uri(ports: dict[str, int], secrets: dict) -> str:
    """The tracking server's database URI, the password URL-encoded (it may hold ``@#/:``)."""
    return config.postgres_uri(DB_USER, secrets["db_password"], HOST, ports["postgres"], DB_NAME)


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str:
    """A PostgreSQL server binary: next to ``initdb`` on PATH, else the newest /usr/lib/postgresql."""
    found = shutil.which("initdb")
    if found:
        candidate = Path(found).resolve().parent / name
        if candidate.exists():
            return str(candidate)
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    for folder in reversed(versions):
        if (folder / name).exists():
            return str(folder / name)
    raise StackError(f"PostgreSQL's `{name}` not found (install Debian's `postgresql` package)")


def _pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as: the `postgres` user when we are root, else None."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise StackError("PostgreSQL refuses to run as root and there is no `postgres` user: "
                         "install Debian's `postgresql` package or run as a normal user") from None
    return pw.pw_uid, pw.pw_gid


def _check_traversable(folder: Path, uid: int, gid: int) -> None:
    """As root, the `postgres` user must reach ``folder``: make it traversable or explain why not."""
    for parent in [*reversed(folder.parents), folder]:
        st = parent.stat()
        ok = st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100) or (st.st_gid == gid and st.st_mode & 0o010)
        if ok:
            continue
        if parent == folder:
            os.chmod(parent, st.st_mode | 0o001)
            log.info("made %s traversable for the postgres user", parent)
            continue
        raise StackError(f"PostgreSQL runs as the `postgres` user, which cannot enter {parent}: "
                         f"`chmod o+x {parent}` or use --dir somewhere else")


def _pg_connect(port: int, user: str, password: str, dbname: str):
    import psycopg2

    return psycopg2.connect(host=HOST, port=port, user=user, password=password, dbname=dbname, connect_timeout=3)


def _init_postgres(s: Settings, secrets: dict, ids: tuple[int, int] | None) -> None:
    """Create the cluster once (scram-sha-256 over TCP only, superuser `postgres`)."""
    pg_dir = s.stack_dir / "postgres"
    data = pg_dir / "data"
    pg_dir.mkdir(mode=0o700, exist_ok=True)
    if ids:
        _check_traversable(s.stack_dir, *ids)
        os.chown(pg_dir, *ids)
    if (data / "PG_VERSION").exists():
        return
    pwfile = pg_dir / ".pwfile"
    atomic_write(pwfile, secrets["postgres_superuser_password"] + "\n", 0o600)
    if ids:
        os.chown(pwfile, *ids)
    cmd = [_pg_bin("initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}", "-A", "scram-sha-256",
           "-E", "UTF8", "--no-locale", "--no-instructions"]
    log_path = s.logs / "postgres-initdb.log"
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=pg_dir, env=_base_env("initdb"),
                                  user=ids[0] if ids else None, group=ids[1] if ids else None,
                                  extra_groups=[] if ids else None, timeout=300, check=False)
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise StackError(f"initdb failed (exit {proc.returncode}); last lines of {log_path}:\n{log_tail(log_path)}")


def _setup_database(port: int, secrets: dict) -> None:
    """Create (or update the password of) the `mlflow` role and its database."""
    from psycopg2 import sql

    conn = _pg_connect(port, "postgres", secrets["postgres_superuser_password"], "postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (DB_USER,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(DB_USER)),
                        (secrets["db_password"],))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DB_NAME), sql.Identifier(DB_USER)))
    finally:
        conn.close()


# --------------------------------------------------------------------------- health


def _http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3) -> int | None:
    import requests

    try:
        return requests.get(url, auth=auth, timeout=timeout).status_code
    except requests.RequestException:
        return None


def _s3_client(ports: dict[str, int], secrets: dict):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=f"http://{HOST}:{ports['s3']}", aws_access_key_id=secrets["s3_access_key"],
        aws_secret_access_key=secrets["s3_secret_key"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10),
    )


def _admin_auth() -> tuple[str, str] | None:
    password = MLFLOW_AUTH_ADMIN_PASSWORD.get()
    return (MLFLOW_AUTH_ADMIN_USERNAME.get(), password) if password else None


def check(name: str, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
          auth: tuple[str, str] | None = None) -> tuple[bool, str]:
    """Health of one component through its real interface: (healthy, short detail)."""
    port = ports[name]
    if name == "postgres":
        try:
            conn = _pg_connect(port, DB_USER, secrets["db_password"], DB_NAME)
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy yet"
            return False, first_line(str(exc)) if str(exc).strip() else type(exc).__name__
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version()")
                return True, cur.fetchone()[0].split(" on ")[0]
        finally:
            conn.close()
    if name == "s3":
        code = _http_status(f"http://{HOST}:{port}/_stack/ready")
        if code != 200:
            return False, f"/_stack/ready: {code or 'no answer'}"
        try:
            keys = _s3_client(ports, secrets).list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        except Exception as exc:  # noqa: BLE001
            return False, f"bucket {bucket}: {type(exc).__name__}"
        return True, f"bucket {bucket}: {keys}{'+' if keys >= 1000 else ''} object(s)"
    if name == "mlflow":
        code = _http_status(f"http://{HOST}:{port}/health")
        if code != 200:
            return False, f"/health: {code or 'no answer'}"
        code = _http_status(f"http://{HOST}:{port}/api/2.0/mlflow/experiments/search?max_results=1", auth=auth)
        if code == 401 and auth is None:
            return True, "/health 200, API needs credentials (basic auth)"
        if code != 200:
            return False, f"/health 200, API: {code or 'no answer'}"
        return True, "/health 200, API 200"
    if name == "serving":
        code = _http_status(f"http://{HOST}:{port}/health")
        if code != 200:
            return False, f"/health: {code or 'no answer'}"
        ready = _http_status(f"http://{HOST}:{port}/ready")
        return True, "/health 200, " + ("ready" if ready == 200 else f"not ready yet (/ready {ready}: no model to serve)")
    raise ValueError(name)


def _wait(name: str, entry: dict, log_path: Path, timeout: float, probe: Callable[[], tuple[bool, str]]) -> str:
    """Poll ``probe`` until healthy; fail with the log tail if the process exits or time runs out."""
    def alive_and_healthy() -> tuple[bool, str]:
        if not _members(entry):
            raise StackError(f"{name} exited during start-up; last lines of {log_path}:\n{log_tail(log_path)}")
        return probe()

    ok, last = wait_for(alive_and_healthy, timeout, interval=0.25)
    if not ok:
        raise StackError(f"{name} not healthy after {timeout:.0f}s ({last}); last lines of {log_path}:\n{log_tail(log_path)}")
    return last


# --------------------------------------------------------------------------- up / down / status


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


def _spawn(name: str, cmd: list[str], env: dict[str, str], s: Settings, cwd: Path,
           ids: tuple[int, int] | None = None) -> dict:
    """Start one component detached, in its own session/process group, logging to logs/NAME.log."""
    log_path = s.logs / f"{name}.log"
    with open(log_path, "ab") as out:
        out.write(f"\n==> {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                                env=env, start_new_session=True, user=ids[0] if ids else None,
                                group=ids[1] if ids else None, extra_groups=[] if ids else None)
    return {"pid": proc.pid, "pgid": proc.pid, "tag": env["MLOPS_STACK_TAG"], "port": s.ports[name],
            "log": str(log_path), "cmd": cmd, "started_at": time.time()}


def _launch(name: str, s: Settings, secrets: dict, stack_id: str) -> dict:
    """Start ``name``'s process (after its one-time preparation); return its state entry."""
    port = s.ports[name]
    if _port_in_use(port):
        raise StackError(f"{name}: port {port} on {HOST} is already in use by another program "
                         f"(choose another with --{'pg' if name == 'postgres' else name}-port or {PORT_ENV[name]})")
    tag = f"{stack_id}/{name}"
    if name == "postgres":
        ids = _pg_user()
        _init_postgres(s, secrets, ids)
        cmd = [_pg_bin("postgres"), "-D", str(s.stack_dir / "postgres" / "data"), "-p", str(port),
               "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=", "-c", "max_connections=60"]
        return _spawn(name, cmd, _base_env(tag), s, s.stack_dir / "postgres", ids)
    if name == "s3":
        env = _base_env(tag, AWS_ACCESS_KEY_ID=secrets["s3_access_key"], AWS_SECRET_ACCESS_KEY=secrets["s3_secret_key"])
        cmd = [sys.executable, "-m", "mlops.s3_endpoint", "--host", HOST, "--port", str(port),
               "--data", str(s.stack_dir / "s3")]
        return _spawn(name, cmd, env, s, s.stack_dir)
    if name == "mlflow":
        env = _base_env(
            tag,
            MLFLOW_BACKEND_STORE_URI=backend_store_uri(s.ports, secrets),
            MLFLOW_ARTIFACTS_DESTINATION=f"s3://{s.bucket}",
            **s3_client_env(s.ports, secrets),
            MLFLOW_HOST=HOST,
            MLFLOW_PORT=port,
            MLFLOW_WORKERS=s.mlflow_workers,
            MLFLOW_ALLOWED_HOSTS=",".join(filter(None, [
                f"localhost,localhost:{port},{HOST},{HOST}:{port}", MLOPS_STACK_ALLOWED_HOSTS.get()])),
            MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
            MLFLOW_AUTH="true" if s.auth else "false",
        )
        if s.auth:
            admin = _admin_auth()
            env.update(
                MLFLOW_FLASK_SERVER_SECRET_KEY=MLFLOW_FLASK_SERVER_SECRET_KEY.get() or secrets["flask_secret_key"],
                MLFLOW_AUTH_ADMIN_USERNAME=admin[0],
                MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
                MLFLOW_AUTH_DIR=str(s.stack_dir / "mlflow" / "auth"),
                # One worker by default: a cached credential check goes stale only for changes
                # made outside the server's API.
                MLFLOW_AUTH_CACHE_TTL_SECONDS=MLOPS_STACK_AUTH_CACHE_TTL_SECONDS.get(),
            )
        (s.stack_dir / "mlflow").mkdir(exist_ok=True)
        return _spawn(name, ["sh", str(ENTRYPOINTS / "mlflow-server.sh")], env, s, s.stack_dir / "mlflow")
    if name == "serving":
        env = _base_env(
            tag,
            MLFLOW_TRACKING_URI=tracking_uri(s.ports),
            HOST=HOST,
            PORT=port,
            WORKERS=s.serving_workers,
            MODEL_CACHE_DIR=s.stack_dir / "serving" / "models",
            LOG_DIR=s.stack_dir / "serving" / "logs",
        )
        env.update(inherited(only=SERVING_PASSTHROUGH))
        env.setdefault("ADMIN_TOKEN", secrets["admin_token"])
        if s.auth:
            env.update(MLFLOW_TRACKING_USERNAME=SERVING_USER, MLFLOW_TRACKING_PASSWORD=secrets["serving_password"])
        (s.stack_dir / "serving").mkdir(exist_ok=True)
        return _spawn(name, ["sh", str(ENTRYPOINTS / "serving.sh")], env, s, config.project_home())
    raise ValueError(name)


def _ready(name: str, entry: dict, s: Settings, secrets: dict) -> str:
    """Wait until ``name`` is healthy and do its set-up (role and database, bucket, serving user)."""
    port = s.ports[name]
    log_path = Path(entry["log"])
    if name == "postgres":
        def probe():
            try:
                conn = _pg_connect(port, "postgres", secrets["postgres_superuser_password"], "postgres")
            except Exception as exc:  # noqa: BLE001 - not accepting connections yet
                return False, type(exc).__name__
            conn.close()
            return True, "accepting connections"

        _wait(name, entry, log_path, s.timeout, probe)
        _setup_database(port, secrets)
        return check(name, s.ports, secrets)[1]
    if name == "s3":
        _wait(name, entry, log_path, s.timeout,
              lambda: (_http_status(f"http://{HOST}:{port}/_stack/ready") == 200, "loading its data"))
        client = _s3_client(s.ports, secrets)
        try:
            client.head_bucket(Bucket=s.bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=s.bucket)
        return check(name, s.ports, secrets, s.bucket)[1]
    if name == "mlflow":
        admin = _admin_auth() if s.auth else None

        def probe():
            if _http_status(f"http://{HOST}:{port}/health") != 200:
                return False, "starting"
            return check(name, s.ports, secrets, auth=admin)

        try:
            detail = _wait(name, entry, log_path, s.timeout, probe)
        except StackError as exc:
            if admin and "API: 401" in str(exc):
                raise StackError("mlflow: the admin credentials were refused: MLFLOW_AUTH_ADMIN_PASSWORD must be "
                                 "the password the admin user got at the first `--auth` start of this stack") from None
            raise
        if admin:
            _ensure_serving_user(port, admin, secrets["serving_password"])
        return detail
    if name == "serving":
        return _wait(name, entry, log_path, s.timeout, lambda: check(name, s.ports, secrets))
    raise ValueError(name)


def _ensure_serving_user(port: int, admin: tuple[str, str], password: str) -> None:
    """With basic auth, the serving service signs in as `serving` (READ, the default permission)."""
    import requests

    base = f"http://{HOST}:{port}/api/2.0/mlflow/users"
    r = requests.get(f"{base}/get", params={"username": SERVING_USER}, auth=admin, timeout=10)
    if r.status_code == 200:
        r = requests.patch(f"{base}/update-password", json={"username": SERVING_USER, "password": password},
                           auth=admin, timeout=10)
    else:
        r = requests.post(f"{base}/create", json={"username": SERVING_USER, "password": password}, auth=admin, timeout=10)
    if r.status_code != 200:
        raise StackError(f"mlflow: could not set up the `{SERVING_USER}` user: HTTP {r.status_code} {r.text[:200]}")


def check_requirements(names: Iterable[str]) -> None:
    """StackError in one line if a module a component needs is not installed."""
    import importlib.util

    for name in names:
        for module in REQUIREMENTS.get(name, ()):
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise StackError(f"the stack's {name} component needs the Python module `{module}`, which is "
                                 f"not installed: {STACK_INSTALL}")


def _port_owner(port: int) -> str | None:
    """Which process listens on ``port`` ("pid 123 (postgres)"), from /proc/net/tcp* and /proc/*/fd."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    comm = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({comm})"
        except OSError:
            continue
    return None


def check_ports(ports: dict[str, int], names: Iterable[str]) -> None:
    """StackError in one line naming the first port of ``names`` that is taken (and by what)."""
    for name in names:
        port = ports[name]
        taken = _port_in_use(port)
        if not taken:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
                try:
                    sock.bind((HOST, port))
                except OSError:
                    taken = True
        if taken:
            owner = _port_owner(port)
            by = f" by {owner}" if owner else ""
            raise StackError(f"port {port} for {name} is taken{by}: free it or choose another "
                             f"({PORT_ENV[name]}=PORT, or 0 for any free port)")


def up(s: Settings) -> Running:
    """Start what is not running yet, in order; on a failure stop what this call started."""
    check_requirements(n for n in COMPONENTS if n != "serving" or s.serving)
    if s.auth and not _admin_auth():
        raise StackError("--auth needs MLFLOW_AUTH_ADMIN_PASSWORD in the environment (there is no default password)")
    s.stack_dir.mkdir(parents=True, exist_ok=True)
    s.logs.mkdir(exist_ok=True)
    with _locked(s.stack_dir):
        state = load_state(s.stack_dir)
        running = {n: e for n, e in state.get("components", {}).items() if _members(e)}
        if running:
            if state.get("auth") != s.auth:
                raise StackError(f"the stack in {s.stack_dir} is running {'with' if state.get('auth') else 'without'} "
                                 "--auth; run `mlops stack down` first")
            s.ports = {**s.ports, **state["ports"]}
        secrets = _ensure_secrets(s.stack_dir)
        wanted = [n for n in COMPONENTS if n != "serving" or s.serving]
        check_ports(s.ports, [n for n in wanted if n not in running])
        stack_id = uuid.uuid4().hex[:12]
        state = {"version": 1, "ports": s.ports, "auth": s.auth, "bucket": s.bucket, "serving": s.serving,
                 "components": dict(running)}
        _save_state(s.stack_dir, state)
        started: list[str] = []
        details: dict[str, str] = {}
        try:
            # Two phases: the stores, then what uses them. Within a phase the processes start
            # together (the serving service retries the registry until the server answers) and
            # are waited on in order.
            for phase in STARTUP_PHASES:
                names = [n for n in phase if n in wanted]
                for name in names:
                    if name in running:
                        details[name] = "already running"
                        continue
                    log.info("starting %s on %s:%d", name, HOST, s.ports[name])
                    state["components"][name] = _launch(name, s, secrets, stack_id)
                    started.append(name)
                    _save_state(s.stack_dir, state)
                for name in names:
                    if name in started:
                        details[name] = _ready(name, state["components"][name], s, secrets)
        except BaseException:
            for name in reversed(started):
                _stop_entry(name, state["components"].pop(name))
            _save_state(s.stack_dir, state)
            raise
        return Running(s.stack_dir, s.ports, s.auth, started, list(running), details)


def stop_components(stack_dir: Path, names: list[str]) -> list[str]:
    """Stop the named components only (data kept); return those that were running."""
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise StackError(f"unknown component(s): {', '.join(unknown)} (use {', '.join(COMPONENTS)})")
    stopped = []
    with _locked(stack_dir):
        state = load_state(stack_dir)
        components = state.get("components", {})
        for name in reversed(COMPONENTS):
            if name in names and components.get(name):
                if _stop_entry(name, components[name]):
                    stopped.append(name)
                components.pop(name, None)
        if state:
            _save_state(stack_dir, state)
    return stopped


def restart(stack_dir: Path, names: list[str], timeout: float = 180.0) -> Running:
    """Stop the named components and start them again on the same ports with the same data."""
    state = load_state(stack_dir)
    if not state:
        raise StackError(f"no stack in {stack_dir} (start one: mlops stack up)")
    stop_components(stack_dir, names)
    return up(Settings(stack_dir=stack_dir, ports=dict(state["ports"]), auth=bool(state.get("auth")),
                       serving=state.get("serving", True), bucket=state.get("bucket", "mlflow"), timeout=timeout))


def down(stack_dir: Path, purge: bool = False) -> list[str]:
    """Stop the processes `up` started (reverse order); keep the data unless ``purge``."""
    if not stack_dir.is_dir():
        return []
    with _locked(stack_dir):
        state = load_state(stack_dir)
        components = state.get("components", {})
        stopped = []
        for name in reversed(COMPONENTS):
            entry = components.get(name)
            if entry and _stop_entry(name, entry):
                stopped.append(name)
            components.pop(name, None)
        if state:
            _save_state(stack_dir, state)
        if purge:
            for item in _PURGED:
                path = stack_dir / item
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
    if purge:
        with contextlib.suppress(OSError):
            stack_dir.rmdir()
    return stopped


def status(stack_dir: Path) -> dict[str, dict]:
    """Each component: running (its processes exist), healthy (its real interface answers), detail."""
    state = load_state(stack_dir)
    secrets = load_secrets(stack_dir)
    ports = state.get("ports", {})
    out = {}
    wanted = [n for n in COMPONENTS if n != "serving" or state.get("serving", True)]
    for name in wanted:
        entry = state.get("components", {}).get(name)
        pids = _members(entry) if entry else []
        row = {"port": ports.get(name), "running": bool(pids), "healthy": False, "pids": pids,
               "detail": "stopped", "log": entry["log"] if entry else str(stack_dir / "logs" / f"{name}.log")}
        if pids:
            auth = _admin_auth() if state.get("auth") else None
            row["healthy"], row["detail"] = check(name, ports, secrets, state.get("bucket", "mlflow"), auth)
        out[name] = row
    return out


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
