"""Process supervision: start a component detached, wait until it is healthy, find and stop it.

Every process the stack starts carries ``MLOPS_STACK_TAG`` in its environment and leads its own
process group; its members are found through /proc, so ``down`` stops exactly those processes.
:class:`Service` is the short-lived kind the tests and benchmarks start: a child in its own process
group, owned by the caller, stopped with its whole group.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from mlops.env import inherited
from mlops.stack.state import HOST, PORT_ENV, Settings, StackError
from mlops.util import wait_for

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent  # this environment's console scripts (mlops, mlflow, gunicorn)
CHECKOUT = Path(__file__).resolve().parents[2]  # where a Service runs unless told otherwise

# Modules each component needs beyond the base install, and what installs them.
REQUIREMENTS = {"s3": ("moto", "flask", "flask_cors", "werkzeug")}
STACK_INSTALL = "pip install 'ml-devops-app[stack]' (or `make install`)"


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

def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks) of ``pid`` from /proc, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[2]), int(fields[19])

def descendants(root: int) -> list[int]:
    """``root`` and every process below it (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_ppid(int(name))) is not None:
            children.setdefault(stat, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def proc_ppid(pid: int) -> int | None:
    """The parent of ``pid`` from /proc, or None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def status_kib(pid: int, key: str) -> int:
    """A KiB field of /proc/PID/status (``VmRSS``, ``VmHWM``); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def has_tag(pid: int, tag: str) -> bool:
    """True if ``pid`` carries the stack tag ``tag``."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return f"MLOPS_STACK_TAG={tag}".encode() in env.split(b"\0")

def members(entry: dict) -> list[int]:
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
        stat = proc_stat(int(name))
        if stat and stat[1] == pgid and stat[0] != "Z" and has_tag(int(name), tag):
            found.append(int(name))
    return found

def stop_entry(name: str, entry: dict, sig: int = signal.SIGTERM, timeout: float = 40) -> bool:
    """Stop one component's processes with ``sig`` (its own fast shutdown), SIGKILL what is left."""
    found = members(entry)
    if not found:
        return False
    began = time.monotonic()
    leader_alive = entry["pid"] in found
    for pid in [entry["pid"]] if leader_alive else found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            (os.killpg if leader_alive else os.kill)(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and members(entry):
        time.sleep(0.1)
    left = members(entry)
    if not left:
        log.info("%s stopped in %.1fs", name, time.monotonic() - began)
        return True
    for pid in left:
        log.warning("%s: pid %d still running after %.0fs, killing it", name, pid, timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and members(entry):
        time.sleep(0.1)
    if members(entry):
        raise StackError(f"{name}: could not stop pid(s) {', '.join(map(str, members(entry)))} "
                         "(started by another user?)")
    return True

def port_in_use(port: int) -> bool:
    """True if something accepts connections on HOST:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0

def base_env(tag: str, **extra: str | int | Path) -> dict[str, str]:
    """The caller's environment without anything that would point a component elsewhere."""
    drop = ("MLFLOW_", "AWS_", "MODEL_", "SERVING_", "PGPASSWORD", "PGHOST", "PGPORT", "PGUSER")
    env = inherited(drop=drop)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["MLOPS_STACK_TAG"] = tag
    env.update({k: str(v) for k, v in extra.items()})
    return env

def spawn(name: str, cmd: list[str], env: dict[str, str], s: Settings, cwd: Path,
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

def wait_healthy(name: str, entry: dict, log_path: Path, timeout: float, probe: Callable[[], tuple[bool, str]]) -> str:
    """Poll ``probe`` until healthy; fail with the log tail if the process exits or time runs out."""
    def alive_and_healthy() -> tuple[bool, str]:
        if not members(entry):
            raise StackError(f"{name} exited during start-up; last lines of {log_path}:\n{log_tail(log_path)}")
        return probe()

    ok, last = wait_for(alive_and_healthy, timeout, interval=0.25)
    if not ok:
        raise StackError(f"{name} not healthy after {timeout:.0f}s ({last}); last lines of {log_path}:\n{log_tail(log_path)}")
    return last

def check_requirements(names: Iterable[str]) -> None:
    """StackError in one line if a module a component needs is not installed."""
    for name in names:
        for module in REQUIREMENTS.get(name, ()):
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise StackError(f"the stack's {name} component needs the Python module `{module}`, which is "
                                 f"not installed: {STACK_INSTALL}")

def port_owner(port: int) -> str | None:
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
        taken = port_in_use(port)
        if not taken:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
                try:
                    sock.bind((HOST, port))
                except OSError:
                    taken = True
        if taken:
            owner = port_owner(port)
            by = f" by {owner}" if owner else ""
            raise StackError(f"port {port} for {name} is taken{by}: free it or choose another "
                             f"({PORT_ENV[name]}=PORT, or 0 for any free port)")


class Service:
    """A real background process in its own process group, with its log file."""

    def __init__(self, cmd: list[str], env: dict, log_path: Path, cwd: Path | None = None):
        self.cmd = cmd
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=cwd or CHECKOUT, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of the log ('' if it can't be read)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_http(self, url: str, timeout: float = 120, ok: Iterable[int] = (200,)) -> requests.Response:
        """Poll ``url`` until it answers one of ``ok``; StackError with the log tail on timeout or exit."""
        import requests

        wanted = tuple(ok)
        answered: list[requests.Response] = []

        def probe() -> tuple[bool, str]:
            if self.proc.poll() is not None:
                raise StackError(f"{self.cmd[0]} exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = requests.get(url, timeout=2)
            except requests.RequestException as exc:
                return False, type(exc).__name__
            answered[:] = [r]
            return r.status_code in wanted, f"HTTP {r.status_code}"

        healthy, last = wait_for(probe, timeout, interval=0.2)
        if healthy:
            return answered[0]
        raise StackError(f"{url} not healthy after {timeout}s (last: {last}):\n{self.log_tail()}")

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


@contextlib.contextmanager
def service(cmd: list[str], env: dict, log_path: Path, health_url: str | None = None,
            timeout: float = 120) -> Iterator[Service]:
    """Start a Service, wait for ``health_url``, and always stop its process group afterwards."""
    svc = Service(cmd, env, log_path)
    try:
        if health_url:
            svc.wait_http(health_url, timeout)
        yield svc
    finally:
        svc.stop()
