"""The local production stack, as real processes on 127.0.0.1 (no Docker).

Components, started in this order and stopped in the reverse one:

* ``postgres``: a PostgreSQL cluster of its own (``initdb``), with a ``mlflow`` role and database;
* ``s3``: an S3 endpoint standing in for MinIO (moto's server, file-backed: :mod:`mlops.stack.s3_endpoint`),
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

The package: :mod:`~mlops.stack.state` (settings, ports, the folder's state and secrets, how
clients reach the stack), :mod:`~mlops.stack.process` (starting, waiting on, finding and stopping
processes), :mod:`~mlops.stack.components` (one class per component: launch, ready, check),
:mod:`~mlops.stack.control` (up, down, restart, status), :mod:`~mlops.stack.s3_endpoint`, and
:mod:`~mlops.stack.harness` (throwaway services the tests and benchmarks start, not part of the stack).
"""

from mlops.stack.components import BY_NAME, check
from mlops.stack.control import down, restart, status, stop_components, up
from mlops.stack.process import check_ports, check_requirements, log_tail
from mlops.stack.state import (
    COMPONENTS,
    DB_NAME,
    DB_USER,
    DEFAULT_PORTS,
    HOST,
    PORT_ENV,
    SECRETS_FILE,
    STATE_FILE,
    Running,
    Settings,
    StackError,
    backend_store_uri,
    default_dir,
    export_lines,
    load_secrets,
    load_state,
    resolve_ports,
    s3_client_env,
    storage_env,
    tracking_uri,
)

__all__ = [
    "BY_NAME", "COMPONENTS", "DB_NAME", "DB_USER", "DEFAULT_PORTS", "HOST", "PORT_ENV", "SECRETS_FILE", "STATE_FILE",
    "Running", "Settings", "StackError", "backend_store_uri", "check", "check_ports", "check_requirements",
    "default_dir", "down", "export_lines", "load_secrets", "load_state", "log_tail", "resolve_ports", "restart",
    "s3_client_env", "status", "stop_components", "storage_env", "tracking_uri", "up",
]
