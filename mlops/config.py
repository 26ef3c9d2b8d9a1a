"""Where things live: the embedded default store and the tracking URI every part uses."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import quote

from mlops import env

DEFAULT_MODEL_NAME = "breast-cancer-classifier"


# scheme://user:password@host[:port] inside any text. The password runs to the last `@` that is
# followed by a host, so `#`, `@`, `/` and `:` inside an unencoded password are covered too.
_URI_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@'\"]*):(?P<password>\S*)"
    r"@(?P<host>[A-Za-z0-9._\-]+|\[[0-9A-Fa-f:.]+\])(?P<port>:\d+)?(?=[/?\s'\")\],;]|$)"
)


def redact_uri(uri: str) -> str:
    """``uri`` (or any text holding URIs) with each password replaced by ``***``.

    The one redaction helper of the project: CLI errors, logs and archives go through it.
    """
    return _URI_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@{m['host']}{m['port'] or ''}", uri)


def password_problem(uri: str) -> str | None:
    """Why the password in ``uri`` would be misread by a URI parser, or None.

    ``@``, ``/``, ``?`` and ``#`` inside a password must be URL-encoded: unencoded, drivers split
    the URI at them and may echo a piece of the password back as a host name in their error.
    """
    m = _URI_CREDENTIALS.search(uri)
    if m is None or not any(c in m["password"] for c in "@/?#"):
        return None
    return (f"the password in {redact_uri(uri)} holds characters a URI must encode (@ / ? #): URL-encode it, "
            "e.g. python -c \"import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=''))\" 'PASSWORD'")


def postgres_uri(user: str, password: str, host: str, port: int, dbname: str,
                 driver: str = "postgresql+psycopg2") -> str:
    """A PostgreSQL URI with user and password URL-encoded (``@#/:%`` and friends are safe)."""
    return f"{driver}://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(dbname, safe='')}"


def project_home() -> Path:
    """The folder holding `mlruns/`, `models/`, `logs/` (``MLOPS_HOME``, else the checkout, else cwd)."""
    home = env.MLOPS_HOME.get()
    if home:
        return Path(home).resolve()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "MLproject").is_file():
        return checkout
    return Path.cwd().resolve()


def embedded_tracking_uri(home: Path | None = None) -> str:
    """SQLite store under ``mlruns/`` (the embedded default)."""
    home = home or project_home()
    return f"sqlite:///{home / 'mlruns' / 'mlflow.db'}"


def embedded_artifact_root(home: Path | None = None) -> str:
    """Artifact folder of the embedded default, as a ``file://`` URI."""
    home = home or project_home()
    return (home / "mlruns" / "artifacts").as_uri()


def tracking_uri(explicit: str | None = None) -> str:
    """The tracking URI to use: explicit value, else ``MLFLOW_TRACKING_URI``, else the embedded store."""
    return explicit or env.MLFLOW_TRACKING_URI.get() or embedded_tracking_uri()


def is_local_sqlite(uri: str) -> bool:
    """True for a direct SQLite store (no tracking server in between)."""
    return uri.startswith("sqlite:")


def artifact_root_for(uri: str) -> str | None:
    """Explicit artifact root for experiments created on a direct SQLite store.

    MLflow would otherwise put them under ``./mlruns`` relative to the creating process's cwd.
    A tracking server decides for itself (``None``).
    """
    if not is_local_sqlite(uri):
        return None
    db_path = Path(uri[len("sqlite:///"):])
    return (db_path.parent / "artifacts").resolve().as_uri()


def ensure_store(uri: str) -> None:
    """Create a direct SQLite store with its artifact root (no-op for servers and existing stores).

    Creating the database through ``SqlAlchemyStore`` with an explicit default artifact root gives
    the ``Default`` experiment a location under the store's folder instead of the process's cwd.
    """
    if not is_local_sqlite(uri):
        return
    db_path = Path(uri[len("sqlite:///"):])
    if db_path.is_file() and db_path.stat().st_size > 0:
        return  # MLflow's own store checks the schema when a client opens it (≈ 1.5 s saved per call)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    (db_path.parent / "artifacts").mkdir(exist_ok=True)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(uri, artifact_root_for(uri))


def ensure_experiment(client, name: str) -> str:
    """Return the id of experiment ``name``, creating it (with an explicit artifact root) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root_for(client.tracking_uri)
    location = f"{root}/{experiment_folder(name)}" if root else None
    return client.create_experiment(name, artifact_location=location)


def experiment_folder(name: str) -> str:
    """A folder name for experiment ``name`` that stays inside the artifact root: letters, digits,
    ``._-`` only, no leading dot (so never ``.`` or ``..``), at most 200 characters."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    folder = re.sub(r"^\.+", lambda m: "_" * len(m.group()), folder) or "_"
    if len(folder) > 200:
        folder = f"{folder[:187]}_{hashlib.sha256(name.encode()).hexdigest()[:12]}"
    return folder
