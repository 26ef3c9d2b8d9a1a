"""The stack's four components, one class each: how it is launched, when it is ready, how it is checked.

* :class:`Postgres`: a PostgreSQL cluster of its own (``initdb``), with a ``mlflow`` role and database;
* :class:`S3`: the S3 endpoint (:mod:`mlops.stack.s3_endpoint`) with the artifact bucket;
* :class:`Mlflow`: ``mlflow server`` on PostgreSQL with proxied artifacts in the bucket
  (``docker/entrypoints/mlflow-server.sh``), optionally with MLflow's basic-auth app;
* :class:`Serving`: the prediction service following that registry (``docker/entrypoints/serving.sh``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from mlops import config
from mlops.env import (
    MLFLOW_FLASK_SERVER_SECRET_KEY,
    MLOPS_STACK_ALLOWED_HOSTS,
    MLOPS_STACK_AUTH_CACHE_TTL_SECONDS,
    inherited,
)
from mlops.stack.process import base_env, log_tail, spawn, wait_healthy
from mlops.stack.state import (
    DB_NAME,
    DB_USER,
    HOST,
    SERVING_USER,
    Settings,
    StackError,
    admin_auth,
    backend_store_uri,
    s3_client_env,
    tracking_uri,
)
from mlops.util import atomic_write, first_line

log = logging.getLogger(__name__)

ENTRYPOINTS = Path(__file__).resolve().parents[2] / "docker" / "entrypoints"
# Variables the serving service takes from the caller's environment (the rest is set here).
SERVING_PASSTHROUGH = ("MODEL_NAME", "MODEL_STAGE", "MODEL_ALIAS", "POLL_INTERVAL_S", "ADMIN_TOKEN",
                       "API_TOKEN", "MAX_BODY_BYTES", "KEEP_LOADED_VERSIONS")


def http_status(url: str, auth: tuple[str, str] | None = None, timeout: float = 3) -> int | None:
    """The HTTP status ``url`` answers with, or None when it does not answer."""
    import requests

    try:
        return requests.get(url, auth=auth, timeout=timeout).status_code
    except requests.RequestException:
        return None


def _health(port: int) -> tuple[bool, str] | None:
    """``(False, detail)`` unless ``/health`` on ``port`` answers 200."""
    code = http_status(f"http://{HOST}:{port}/health")
    return None if code == 200 else (False, f"/health: {code or 'no answer'}")


class Component:
    """One process of the stack: ``launch`` starts it, ``ready`` waits for it and sets it up,
    ``check`` asks its real interface whether it is healthy."""

    name: str = ""
    port_flag: str = ""  # the `mlops stack up` option that sets its port
    stop_signal: int = signal.SIGTERM

    def launch(self, s: Settings, secrets: dict, tag: str) -> dict:
        """Start the process (after any one-time preparation); its state entry."""
        raise NotImplementedError

    def ready(self, entry: dict, s: Settings, secrets: dict) -> str:
        """Wait until healthy and do the set-up that needs it running; the health detail."""
        return wait_healthy(self.name, entry, Path(entry["log"]), s.timeout,
                            lambda: self.check(s.ports, secrets, s.bucket))

    def check(self, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
              auth: tuple[str, str] | None = None) -> tuple[bool, str]:
        """(healthy, short detail) through the component's real interface."""
        raise NotImplementedError


class Postgres(Component):
    """PostgreSQL: its own cluster in the stack folder, run as the `postgres` user when we are root."""

    name, port_flag = "postgres", "--pg-port"
    stop_signal = signal.SIGINT  # PostgreSQL's fast shutdown

    def launch(self, s: Settings, secrets: dict, tag: str) -> dict:
        ids = _pg_user()
        _init_postgres(s, secrets, ids)
        cmd = [_pg_bin("postgres"), "-D", str(s.stack_dir / "postgres" / "data"), "-p", str(s.ports[self.name]),
               "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories=", "-c", "max_connections=60"]
        return spawn(self.name, cmd, base_env(tag), s, s.stack_dir / "postgres", ids)

    def ready(self, entry: dict, s: Settings, secrets: dict) -> str:
        port = s.ports[self.name]

        def probe() -> tuple[bool, str]:
            try:
                conn = _pg_connect(port, "postgres", secrets["postgres_superuser_password"], "postgres")
            except Exception as exc:  # noqa: BLE001 - not accepting connections yet
                return False, type(exc).__name__
            conn.close()
            return True, "accepting connections"

        wait_healthy(self.name, entry, Path(entry["log"]), s.timeout, probe)
        _setup_database(port, secrets)
        return self.check(s.ports, secrets)[1]

    def check(self, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
              auth: tuple[str, str] | None = None) -> tuple[bool, str]:
        try:
            conn = _pg_connect(ports[self.name], DB_USER, secrets["db_password"], DB_NAME)
        except Exception as exc:  # noqa: BLE001 - any failure means "not healthy yet"
            return False, first_line(str(exc)) if str(exc).strip() else type(exc).__name__
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version()")
                return True, cur.fetchone()[0].split(" on ")[0]
        finally:
            conn.close()


class S3(Component):
    """The S3 endpoint standing in for MinIO, with the artifact bucket."""

    name, port_flag = "s3", "--s3-port"

    def launch(self, s: Settings, secrets: dict, tag: str) -> dict:
        env = base_env(tag, AWS_ACCESS_KEY_ID=secrets["s3_access_key"], AWS_SECRET_ACCESS_KEY=secrets["s3_secret_key"])
        cmd = [sys.executable, "-m", "mlops.stack.s3_endpoint", "--host", HOST, "--port", str(s.ports[self.name]),
               "--data", str(s.stack_dir / "s3")]
        return spawn(self.name, cmd, env, s, s.stack_dir)

    def ready(self, entry: dict, s: Settings, secrets: dict) -> str:
        port = s.ports[self.name]
        wait_healthy(self.name, entry, Path(entry["log"]), s.timeout,
                     lambda: (http_status(f"http://{HOST}:{port}/_stack/ready") == 200, "loading its data"))
        client = _s3_client(s.ports, secrets)
        try:
            client.head_bucket(Bucket=s.bucket)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=s.bucket)
        return self.check(s.ports, secrets, s.bucket)[1]

    def check(self, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
              auth: tuple[str, str] | None = None) -> tuple[bool, str]:
        code = http_status(f"http://{HOST}:{ports[self.name]}/_stack/ready")
        if code != 200:
            return False, f"/_stack/ready: {code or 'no answer'}"
        try:
            keys = _s3_client(ports, secrets).list_objects_v2(Bucket=bucket).get("KeyCount", 0)
        except Exception as exc:  # noqa: BLE001
            return False, f"bucket {bucket}: {type(exc).__name__}"
        return True, f"bucket {bucket}: {keys}{'+' if keys >= 1000 else ''} object(s)"


class Mlflow(Component):
    """``mlflow server`` on the stack's database and bucket (proxied artifacts), optionally with basic auth."""

    name, port_flag = "mlflow", "--mlflow-port"

    def launch(self, s: Settings, secrets: dict, tag: str) -> dict:
        port = s.ports[self.name]
        env = base_env(
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
            admin = admin_auth()
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
        return spawn(self.name, ["sh", str(ENTRYPOINTS / "mlflow-server.sh")], env, s, s.stack_dir / "mlflow")

    def ready(self, entry: dict, s: Settings, secrets: dict) -> str:
        port = s.ports[self.name]
        admin = admin_auth() if s.auth else None

        def probe() -> tuple[bool, str]:
            if http_status(f"http://{HOST}:{port}/health") != 200:
                return False, "starting"
            return self.check(s.ports, secrets, auth=admin)

        try:
            detail = wait_healthy(self.name, entry, Path(entry["log"]), s.timeout, probe)
        except StackError as exc:
            if admin and "API: 401" in str(exc):
                raise StackError("mlflow: the admin credentials were refused: MLFLOW_AUTH_ADMIN_PASSWORD must be "
                                 "the password the admin user got at the first `--auth` start of this stack") from None
            raise
        if admin:
            _ensure_serving_user(port, admin, secrets["serving_password"])
        return detail

    def check(self, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
              auth: tuple[str, str] | None = None) -> tuple[bool, str]:
        port = ports[self.name]
        if unhealthy := _health(port):
            return unhealthy
        code = http_status(f"http://{HOST}:{port}/api/2.0/mlflow/experiments/search?max_results=1", auth=auth)
        if code == 401 and auth is None:
            return True, "/health 200, API needs credentials (basic auth)"
        if code != 200:
            return False, f"/health 200, API: {code or 'no answer'}"
        return True, "/health 200, API 200"


class Serving(Component):
    """The prediction service (gunicorn) following the stack's registry, its cache in the stack folder."""

    name, port_flag = "serving", "--serving-port"

    def launch(self, s: Settings, secrets: dict, tag: str) -> dict:
        env = base_env(
            tag,
            MLFLOW_TRACKING_URI=tracking_uri(s.ports),
            HOST=HOST,
            PORT=s.ports[self.name],
            WORKERS=s.serving_workers,
            MODEL_CACHE_DIR=s.stack_dir / "serving" / "models",
            LOG_DIR=s.stack_dir / "serving" / "logs",
        )
        env.update(inherited(only=SERVING_PASSTHROUGH))
        env.setdefault("ADMIN_TOKEN", secrets["admin_token"])
        if s.auth:
            env.update(MLFLOW_TRACKING_USERNAME=SERVING_USER, MLFLOW_TRACKING_PASSWORD=secrets["serving_password"])
        (s.stack_dir / "serving").mkdir(exist_ok=True)
        return spawn(self.name, ["sh", str(ENTRYPOINTS / "serving.sh")], env, s, config.project_home())

    def check(self, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
              auth: tuple[str, str] | None = None) -> tuple[bool, str]:
        port = ports[self.name]
        if unhealthy := _health(port):
            return unhealthy
        ready = http_status(f"http://{HOST}:{port}/ready")
        return True, "/health 200, " + ("ready" if ready == 200 else f"not ready yet (/ready {ready}: no model to serve)")


BY_NAME: dict[str, Component] = {c.name: c for c in (Postgres(), S3(), Mlflow(), Serving())}


def check(name: str, ports: dict[str, int], secrets: dict, bucket: str = "mlflow",
          auth: tuple[str, str] | None = None) -> tuple[bool, str]:
    """Health of one component through its real interface: (healthy, short detail)."""
    return BY_NAME[name].check(ports, secrets, bucket, auth)


# ---- PostgreSQL's preparation -----------------------------------------------------------------


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
    """A psycopg2 connection to the stack's PostgreSQL."""
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
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=pg_dir, env=base_env("initdb"),
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

def _s3_client(ports: dict[str, int], secrets: dict):
    """A boto3 client on the stack's S3 endpoint."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=f"http://{HOST}:{ports['s3']}", aws_access_key_id=secrets["s3_access_key"],
        aws_secret_access_key=secrets["s3_secret_key"], region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10),
    )

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
