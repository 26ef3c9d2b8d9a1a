"""Every environment variable the operator side (``mlops``, ``scripts/``) reads, declared once.

Each is a :class:`Var` with its name, type, default and a one-line doc; ``var.get()`` is the one
way to read it (an unset or blank value gives the default; a value of the wrong type raises
:class:`EnvError`). ``VARIABLES`` lists them all; the table in docs/operations.md is checked
against it. The serving service reads its own variables through ``serving.settings.Settings``;
the stack passes those on to it untouched (:func:`inherited`).

Writing the environment (for MLflow in this process, or for a child process) stays where it
happens; reading it happens here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mlops.errors import Refused


class EnvError(Refused, ValueError):
    """An environment variable holds a value of the wrong type."""


_TYPE_WORDS = {str: "text", int: "a whole number", float: "a number", bool: "a boolean (1/0, true/false)"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Var:
    """One environment variable: name, type, default (``None``: no default) and what it does."""

    name: str
    type: type
    default: Any
    doc: str

    def raw(self) -> str | None:
        """The value as set, or None when unset or blank."""
        value = os.environ.get(self.name)
        return value if value is not None and value.strip() else None

    def is_set(self) -> bool:
        """True when the variable holds a non-blank value."""
        return self.raw() is not None

    def get(self) -> Any:
        """The typed value, else the default; EnvError naming the variable on a malformed value."""
        raw = self.raw()
        if raw is None:
            return self.default
        if self.type is str:
            return raw
        if self.type is bool:
            return raw.strip().lower() not in _FALSE
        try:
            return self.type(raw)
        except ValueError:
            raise EnvError(f"{self.name} must be {_TYPE_WORDS[self.type]}, not {raw!r}") from None


VARIABLES: dict[str, Var] = {}


def _var(name: str, type_: type, default: Any, doc: str) -> Var:
    if name in VARIABLES:
        raise ValueError(f"{name} declared twice")
    VARIABLES[name] = var = Var(name, type_, default, doc)
    return var


# ---- where things are ----------------------------------------------------------------------
MLOPS_HOME = _var("MLOPS_HOME", str, None,
                  "project home holding mlruns/, models/, logs/, backups/ (default: the checkout, else cwd)")
MLFLOW_TRACKING_URI = _var("MLFLOW_TRACKING_URI", str, None,
                           "tracking server or store of every command (default: the embedded mlruns/ store)")
MLOPS_DEBUG = _var("MLOPS_DEBUG", bool, False, "show the traceback of an unexpected CLI error")
MLOPS_USER = _var("MLOPS_USER", str, None, "user recorded in the promotion history (default: the login name)")
SERVING_URL = _var("SERVING_URL", str, None,
                   "serving service that `mlops promote` / `rollback` tell to reload (unset: none)")
ADMIN_TOKEN = _var("ADMIN_TOKEN", str, "", "serving's admin token, sent with that reload request")
API_TOKEN = _var("API_TOKEN", str, None, "serving's API token, sent by `mlops sample` and the load test")
LOG_DIR = _var("LOG_DIR", str, "logs", "folder `mlops logs` reads the service's log from")

# ---- backup and restore --------------------------------------------------------------------
MLOPS_BACKEND_STORE_URI = _var("MLOPS_BACKEND_STORE_URI", str, None,
                               "the tracking server's database (`--backend-store-uri` of backup and restore)")
MLOPS_ARTIFACTS_DESTINATION = _var("MLOPS_ARTIFACTS_DESTINATION", str, None,
                                   "the tracking server's artifact store (`--artifacts-destination`)")
MLOPS_BACKUP_STALE_HOURS = _var("MLOPS_BACKUP_STALE_HOURS", float, 24.0,
                                "age after which leftovers of an interrupted backup are removed")
MLOPS_RESTORE_WORKERS = _var("MLOPS_RESTORE_WORKERS", int, 8, "parallel transfers of a restore")
MLOPS_ARCHIVE_MAX_FILES = _var("MLOPS_ARCHIVE_MAX_FILES", int, 50_000,
                               "files and folders an archive may unpack")
MLOPS_ARCHIVE_MAX_BYTES = _var("MLOPS_ARCHIVE_MAX_BYTES", int, 512 * 1024**3, "bytes an archive may unpack")
MLOPS_ARCHIVE_MAX_RATIO = _var("MLOPS_ARCHIVE_MAX_RATIO", float, 200.0,
                               "unpacked bytes per archive byte, above the floor below")
MLOPS_ARCHIVE_RATIO_FLOOR_BYTES = _var("MLOPS_ARCHIVE_RATIO_FLOOR_BYTES", int, 64 * 1024**2,
                                       "unpacked size under which the ratio is not checked")
MLOPS_ARCHIVE_MAX_DELETED_VERSIONS = _var("MLOPS_ARCHIVE_MAX_DELETED_VERSIONS", int, 10_000,
                                          "deleted version numbers a restore recreates per model")

# ---- the local stack ---------------------------------------------------------------------------
MLOPS_STACK_DIR = _var("MLOPS_STACK_DIR", str, None, "stack folder (default: .stack/ in the project home)")
MLOPS_STACK_PG_PORT = _var("MLOPS_STACK_PG_PORT", int, None, "PostgreSQL port (default: the last used, else 25432)")
MLOPS_STACK_S3_PORT = _var("MLOPS_STACK_S3_PORT", int, None, "S3 endpoint port (default: the last used, else 29000)")
MLOPS_STACK_MLFLOW_PORT = _var("MLOPS_STACK_MLFLOW_PORT", int, None,
                               "tracking server port (default: the last used, else 25000)")
MLOPS_STACK_SERVING_PORT = _var("MLOPS_STACK_SERVING_PORT", int, None,
                                "serving port (default: the last used, else 25001)")
MLOPS_STACK_BUCKET = _var("MLOPS_STACK_BUCKET", str, "mlflow", "artifact bucket of the stack")
MLOPS_STACK_MLFLOW_WORKERS = _var("MLOPS_STACK_MLFLOW_WORKERS", int, 1, "uvicorn workers of the tracking server")
MLOPS_STACK_SERVING_WORKERS = _var("MLOPS_STACK_SERVING_WORKERS", int, 2, "gunicorn workers of the serving service")
MLOPS_STACK_TIMEOUT = _var("MLOPS_STACK_TIMEOUT", float, 180.0, "seconds each component gets to become healthy")
MLOPS_STACK_DB_PASSWORD = _var("MLOPS_STACK_DB_PASSWORD", str, None,
                               "password of the stack's database user (default: generated once)")
MLOPS_STACK_ALLOWED_HOSTS = _var("MLOPS_STACK_ALLOWED_HOSTS", str, None,
                                 "more Host headers the tracking server accepts (comma-separated)")
MLOPS_STACK_AUTH_CACHE_TTL_SECONDS = _var("MLOPS_STACK_AUTH_CACHE_TTL_SECONDS", str, "60",
                                          "seconds a password check stays cached per tracking-server worker")
MLFLOW_AUTH_ADMIN_USERNAME = _var("MLFLOW_AUTH_ADMIN_USERNAME", str, "admin", "MLflow admin user of `stack up --auth`")
MLFLOW_AUTH_ADMIN_PASSWORD = _var("MLFLOW_AUTH_ADMIN_PASSWORD", str, None,
                                  "MLflow admin password of `stack up --auth` (required there; no default)")
MLFLOW_FLASK_SERVER_SECRET_KEY = _var("MLFLOW_FLASK_SERVER_SECRET_KEY", str, None,
                                      "Flask secret key of the auth app (default: generated once)")
AWS_ACCESS_KEY_ID = _var("AWS_ACCESS_KEY_ID", str, None, "access key the stack's S3 endpoint accepts")
AWS_SECRET_ACCESS_KEY = _var("AWS_SECRET_ACCESS_KEY", str, None, "secret key the stack's S3 endpoint accepts")


def inherited(drop: Iterable[str] = (), only: Iterable[str] | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a child process: without the variables whose names start
    with one of ``drop``, or just the non-blank ones named in ``only``; ``extra`` on top."""
    prefixes = tuple(drop)
    if only is not None:
        names = set(only)
        env = {k: v for k, v in os.environ.items() if k in names and v}
    else:
        env = {k: v for k, v in os.environ.items() if not (prefixes and k.startswith(prefixes))}
    env.update(extra)
    return env


@contextlib.contextmanager
def preserved(*names: str) -> Iterator[None]:
    """Put ``names`` back as they were (set or unset) when the block ends."""
    saved = {k: os.environ.get(k) for k in names}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def markdown_table() -> str:
    """The variables as the Markdown table of docs/operations.md."""
    rows = ["| variable | type | default | what |", "|---|---|---|---|"]
    for var in VARIABLES.values():
        default = "—" if var.default in (None, "") else f"`{var.default}`"
        rows.append(f"| `{var.name}` | {var.type.__name__} | {default} | {var.doc} |")
    return "\n".join(rows)


__all__ = ["VARIABLES", "EnvError", "Var", "inherited", "markdown_table", "preserved"]
