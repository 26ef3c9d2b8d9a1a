"""Throwaway services for the tests and the benchmarks: a SQLite store in a folder, the trainer
run against it, and ``mlops serve`` or ``mlflow server`` on a free port, each a :class:`Service`
that is stopped with its whole process group.

Children get a clean environment (:func:`clean_env`): nothing inherited points them at another
store or service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

from mlops.env import inherited
from mlops.errors import MlopsError
from mlops.stack.process import BIN, CHECKOUT, Service, service
from mlops.util import free_port

# Variables that would point a child at another store or service (names, or prefixes of names).
FOREIGN = ("MLFLOW_", "MODEL_", "SERVING_", "MLOPS_BACKEND_STORE_URI", "MLOPS_ARTIFACTS_DESTINATION")


class CommandFailed(MlopsError):
    """A command run to completion exited with an unexpected code; the message holds its output."""


def sqlite_uri(folder: Path) -> str:
    """A direct SQLite store under ``folder`` (like the embedded default)."""
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def clean_env(**extra: str | int | Path) -> dict[str, str]:
    """os.environ without anything that would point a child at another store or service."""
    env = inherited(drop=FOREIGN)
    env.update({k: str(v) for k, v in extra.items()})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; on an unexpected exit code raise CommandFailed with its output."""
    proc = subprocess.run(cmd, env=env, cwd=cwd or CHECKOUT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def train(uri: str, *args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the training entry point directly (``python -m training.train``) against ``uri``."""
    return run([sys.executable, "-m", "training.train", *args], env=clean_env(MLFLOW_TRACKING_URI=uri), cwd=cwd, check=check)


def start_serving(uri: str, tmp: Path, port: int | None = None, workers: int = 2,
                  **env_extra: str) -> tuple[AbstractContextManager[Service], int]:
    """Context manager: the serving service under gunicorn on a free port, ready to answer."""
    port = port or free_port()
    env = clean_env(
        MLFLOW_TRACKING_URI=uri,
        PORT=port,
        HOST="127.0.0.1",
        WORKERS=workers,
        MODEL_CACHE_DIR=tmp / "models",
        LOG_DIR=tmp / "logs",
        **env_extra,
    )
    cmd = [str(BIN / "mlops"), "serve"]
    return service(cmd, env, tmp / f"serving-{port}.log", f"http://127.0.0.1:{port}/ready", timeout=180), port


def start_mlflow_server(
    backend_uri: str, tmp: Path, port: int | None = None, artifacts_destination: str | None = None,
    extra_env: dict | None = None,
) -> tuple[AbstractContextManager[Service], int]:
    """Context manager: a real ``mlflow server`` (lean: 1 worker, no job runner) on a free port."""
    port = port or free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(extra_env or {}))
    return service(cmd, env, tmp / f"mlflow-{port}.log", f"http://127.0.0.1:{port}/health", timeout=180), port


__all__ = ["BIN", "CHECKOUT", "CommandFailed", "Service", "clean_env", "free_port", "run", "service", "sqlite_uri",
           "start_mlflow_server", "start_serving", "train"]
