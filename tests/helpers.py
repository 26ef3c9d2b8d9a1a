"""Shared test helpers: free ports, real processes in their own process group, waiting on health."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import requests

from mlops.util import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def sqlite_uri(folder: Path) -> str:
    """A direct SQLite store under ``folder`` (like the embedded default)."""
    return f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without anything that would point a child at another store or service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_", "SERVING_"))
           and k not in ("MLOPS_BACKEND_STORE_URI", "MLOPS_ARTIFACTS_DESTINATION")}
    env.update({k: str(v) for k, v in extra.items()})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(cmd: list[str], env: dict | None = None, cwd: Path | None = None, timeout: float = 600, check: bool = True):
    """Run a command to completion; on an unexpected exit code show its output."""
    proc = subprocess.run(cmd, env=env, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def train(uri: str, *args: str, check: bool = True, cwd: Path | None = None):
    """Run the training entry point directly (``python -m training.train``) against ``uri``."""
    return run([sys.executable, "-m", "training.train", *args], env=clean_env(MLFLOW_TRACKING_URI=uri), cwd=cwd, check=check)


class Service:
    """A real background process in its own process group, with its log file."""

    def __init__(self, cmd: list[str], env: dict, log_path: Path, cwd: Path | None = None):
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd or ROOT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 120, ok=(200,)) -> requests.Response:
        """Poll ``url`` until it answers one of ``ok``; fail with the log tail on timeout or exit."""
        answered: list[requests.Response] = []

        def probe() -> tuple[bool, str]:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.cmd[0]} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(url, timeout=2)
            except requests.RequestException as exc:
                return False, type(exc).__name__
            answered[:] = [r]
            return r.status_code in ok, f"HTTP {r.status_code}"

        healthy, last = wait_for(probe, timeout, interval=0.2)
        if healthy:
            return answered[0]
        raise AssertionError(f"{url} not healthy after {timeout}s (last: {last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout``."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self._log.close()


@contextmanager
def service(cmd: list[str], env: dict, log_path: Path, health_url: str | None = None, timeout: float = 120):
    """Start a Service, wait for ``health_url``, and always stop its process group afterwards."""
    svc = Service(cmd, env, log_path)
    try:
        if health_url:
            svc.wait_http(health_url, timeout)
        yield svc
    finally:
        svc.stop()


def start_serving(uri: str, tmp: Path, port: int | None = None, workers: int = 2, **env_extra: str):
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
):
    """Context manager: a real ``mlflow server`` (lean: 1 worker, no job runner) on a free port."""
    port = port or free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", backend_uri]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(extra_env or {}))
    return service(cmd, env, tmp / f"mlflow-{port}.log", f"http://127.0.0.1:{port}/health", timeout=180), port


def healths(url: str, n: int = 20) -> dict[int, dict]:
    """/health of each worker that answered ``n`` fresh connections (they land on every worker)."""
    seen: dict[int, dict] = {}
    for _ in range(n):
        h = requests.get(url + "/health", headers={"Connection": "close"}, timeout=10).json()
        seen[h["pid"]] = h
    return seen


def gauge(url: str, name: str, headers: dict | None = None, **labels) -> float:
    """Sum of the samples of metric ``name`` matching ``labels`` in /metrics (``headers``: the
    bearer token when the service has API_TOKEN set)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(url + "/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    total = 0.0
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == str(v) for k, v in labels.items()):
                total += s.value
    return total


def live_processes():
    """(pid, /proc stat fields after the command name) of every live, non-zombie process."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if fields[0] != "Z":
            yield int(name), fields
