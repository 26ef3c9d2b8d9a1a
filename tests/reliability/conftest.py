"""Reliability suite: one local production stack shared by every test of this folder.

The stack (PostgreSQL, the S3 endpoint, ``mlflow server`` with proxied artifacts, the serving
service with 2 gunicorn workers) is started once with ``mlops stack up`` on ephemeral ports, in a
temp folder that also receives every other file the suite writes (so the secrets test can grep
every log at the end). Two logistic-regression versions are trained through the real entry point
while the serving service starts; the first is promoted with ``mlops promote``.

The tests run in the order of ``ORDER`` (faults last, the log grep at the very end) and record the
numbers they measure with the ``numbers`` fixture; ``pytest_terminal_summary`` prints them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.helpers import BIN, ROOT, clean_env, gauge, healths, live_processes, run

MODEL = "breast-cancer-classifier"
WORKERS = 2
# Tests run in this order (a module, or one test of it): the faults after the measurements they
# would disturb; the tracking-server outage leaves the stack without its serving process, so after
# it comes only the log grep, which must be last anyway.
ORDER = (
    "test_bad_input",
    "test_load",
    "test_worker_death",
    "test_secrets::test_admin_endpoint_refuses_without_or_with_a_wrong_token",
    "test_archives",
    "test_outage::test_s3_endpoint_outage",
    "test_outage::test_tracking_server_outage_and_a_restart_from_the_cache",
    "test_secrets",
)


# --------------------------------------------------------------------------- ordering and numbers


def pytest_collection_modifyitems(session, config, items):
    """Put this folder's tests in ``ORDER`` without moving anything else."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.parent == here]
    if not slots:
        return

    def key(item):
        stem = item.path.stem
        for name in (f"{stem}::{item.originalname}", stem):
            if name in ORDER:
                return ORDER.index(name)
        return len(ORDER)

    ordered = sorted((items[i] for i in slots), key=key)  # stable: file order kept within a module
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item


@pytest.fixture(scope="session")
def numbers(request):
    """``numbers(section, text)`` records one line for the terminal summary."""
    from tests.conftest import record_number

    return record_number


# --------------------------------------------------------------------------- small helpers


def wait_for(predicate, timeout: float = 60, what: str = "condition", interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except requests.RequestException as exc:
            value, last = None, exc
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")


def all_workers(url: str, predicate) -> bool:
    """True when ``WORKERS`` workers answered /health and ``predicate(health)`` holds for each."""
    seen = healths(url)
    return len(seen) == WORKERS and all(predicate(h) for h in seen.values())


def served_by_all(url: str, version: str, headers: dict | None = None) -> bool:
    """Every live worker serves ``version`` (the multiprocess gauge counts workers per version);
    ``headers`` carry the API token (/metrics needs it)."""
    return (gauge(url, "serving_model_version_info", headers, version=version) == WORKERS
            and gauge(url, "serving_model_version_info", headers) == WORKERS)


def _live(field: int, value: int) -> list[int]:
    """Live (non-zombie) pids whose /proc stat field ``field`` (1: parent, 2: group) is ``value``."""
    return sorted(pid for pid, fields in live_processes() if int(fields[field]) == value)


def group_alive(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    return _live(2, pgid)


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    return _live(1, pid)


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    """A running local stack and the folder every file of the suite goes to."""

    root: Path
    dir: Path
    admin_token: str
    api_token: str
    ports: dict[str, int] = field(default_factory=dict)
    models: Models | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def serving(self) -> str:
        return f"http://127.0.0.1:{self.ports['serving']}"

    @property
    def api_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_token}"}

    def secrets(self) -> dict:
        return json.loads((self.dir / "secrets.json").read_text())

    def state(self) -> dict:
        return json.loads((self.dir / "stack.json").read_text())

    def entry(self, component: str) -> dict:
        return self.state()["components"][component]

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment (no S3 keys, no other stack) with the service tokens."""
        env = clean_env(ADMIN_TOKEN=self.admin_token, API_TOKEN=self.api_token, **extra)
        for key in list(env):
            if key.startswith(("AWS_", "MLOPS_STACK_")):
                env.pop(key)
        return env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``mlops stack ARGS --dir DIR`` (the real console script)."""
        return run([str(BIN / "mlops"), "stack", *args, "--dir", str(self.dir)], env=self.env(), check=check,
                   timeout=600)

    def up(self, *args: str) -> subprocess.CompletedProcess:
        out = self.cli("up", *args)
        self.ports = self.state()["ports"]
        return out

    def signal(self, component: str, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
        """Send ``sig`` to a component's whole process group and wait until it is gone."""
        pgid = self.entry(component)["pgid"]
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
        wait_for(lambda: not group_alive(pgid), timeout, f"{component} (process group {pgid}) to exit")

    def mlops(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        """An ``mlops`` command against the stack's tracking server."""
        return run([str(BIN / "mlops"), *map(str, args)], env=self.env(MLFLOW_TRACKING_URI=self.uri, **env),
                   check=check, timeout=600)


def suite_folder() -> Path:
    """A temp folder PostgreSQL (running as the `postgres` user when we are root) can traverse."""
    root = Path(tempfile.mkdtemp(prefix="mlops-reliability-"))
    root.chmod(0o711)
    return root


@dataclass
class Models:
    """Two registered versions of MODEL; ``first`` was promoted to Production by the fixture."""

    first: str
    second: str


def _start_training(s: Stack) -> list[tuple[subprocess.Popen, Path]]:
    """Two logistic regressions (other seed and C) trained at once through ``training.train``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=s.uri, registry_uri=s.uri)
    # The model and one experiment per run are created up front: two runs racing to create them,
    # or to log the same dataset into one experiment, make the tracking server refuse one.
    client.create_registered_model(MODEL)
    procs = []
    for seed, c in (("1", "1.0"), ("2", "0.3")):
        experiment = f"{MODEL}-seed{seed}"
        client.create_experiment(experiment)
        log = s.root / f"train-seed{seed}.log"
        cmd = [sys.executable, "-m", "training.train", "--model", "logistic_regression", "--seed", seed, "--C", c,
               "--experiment", experiment, "--promote", "none"]
        with open(log, "wb") as out:
            procs.append((subprocess.Popen(cmd, env=s.env(MLFLOW_TRACKING_URI=s.uri), cwd=ROOT, stdout=out,
                                           stderr=subprocess.STDOUT), log))
    return procs


def _finish_training(s: Stack, procs: list[tuple[subprocess.Popen, Path]]) -> Models:
    """Wait for the runs, then promote v1 with the real `mlops promote` (serving notified)."""
    from mlflow import MlflowClient

    for proc, log in procs:
        code = proc.wait(timeout=600)
        assert code == 0, log.read_text()[-3000:]
    client = MlflowClient(tracking_uri=s.uri, registry_uri=s.uri)
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    assert versions == [1, 2], versions
    out = s.mlops("promote", MODEL, "1", "--reason", "reliability suite baseline", SERVING_URL=s.serving)
    assert "serving notified" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: served_by_all(s.serving, "1", s.api_headers), 120, "both workers to serve v1")
    return Models("1", "2")


@pytest.fixture(scope="package")
def stack():
    """The local stack on ephemeral ports, 2 serving workers, ADMIN_TOKEN and API_TOKEN set, with
    two trained versions (``stack.models``), the first in Production and served.

    The tracking side starts first; the training runs and the serving service's start-up then
    overlap. ``RELIABILITY_KEEP_STACK=1`` leaves the stack running with its folder (printed) for a
    post-mortem; stop it with ``mlops stack down --purge --dir FOLDER/stack``.
    """
    root = suite_folder()
    token = os.urandom(12).hex()
    s = Stack(root=root, dir=root / "stack", admin_token=f"adm-{token[:12]}", api_token=f"api-{token[12:]}")
    procs: list[tuple[subprocess.Popen, Path]] = []
    try:
        s.up("--no-serving", "--pg-port", "0", "--s3-port", "0", "--mlflow-port", "0", "--serving-port", "0")
        procs = _start_training(s)
        s.up("--serving-workers", str(WORKERS))
        s.models = _finish_training(s, procs)
        yield s
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if os.environ.get("RELIABILITY_KEEP_STACK") == "1":
            sys.stderr.write(f"\nreliability stack kept in {root}\n")
        else:
            s.cli("down", "--purge", check=False)
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def models(stack) -> Models:
    """The two trained versions (see ``stack``)."""
    return stack.models


def serving_version(stack: Stack) -> str:
    """The version every worker serves right now (asserts they agree)."""
    versions = {h["model_version"] for h in healths(stack.serving).values()}
    assert len(versions) == 1, versions
    return versions.pop()
