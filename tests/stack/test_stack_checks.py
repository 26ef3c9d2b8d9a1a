"""`mlops stack up` refuses in one line before starting anything: a missing module, a taken port."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from mlops import stack
from tests.helpers import BIN, clean_env

BLOCKER = '''
import sys
class _Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "moto" or name.startswith("moto."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Hide())
'''


def _up(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "mlops"), "stack", "up", "--dir", str(tmp_path / "stack"), *args],
                          env=env or clean_env(), capture_output=True, text=True, timeout=120)


def test_default_ports_are_outside_the_ephemeral_range():
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert all(not low <= p <= high for p in stack.DEFAULT_PORTS.values()), (stack.DEFAULT_PORTS, low, high)
    assert len(set(stack.DEFAULT_PORTS.values())) == len(stack.DEFAULT_PORTS)


def test_without_moto_stack_up_says_what_to_install_in_one_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = clean_env(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    probe = subprocess.run([str(BIN / "python"), "-c", "import moto"], env=env, capture_output=True, text=True)
    assert "No module named 'moto'" in probe.stderr  # the blocker works
    proc = _up(tmp_path, "--pg-port", "0", "--s3-port", "0", "--mlflow-port", "0", "--serving-port", "0", env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "`moto`" in lines[0] and "pip install 'ml-devops-app[stack]'" in lines[0], lines
    assert not (tmp_path / "stack" / "postgres").exists()  # nothing was started


def test_a_taken_port_is_named_with_its_owner_before_anything_starts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = _up(tmp_path, "--pg-port", "0", "--s3-port", "0", "--mlflow-port", str(port), "--serving-port", "0")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert f"port {port} for mlflow is taken by pid {os.getpid()} (" in lines[0], lines
    assert not (tmp_path / "stack" / "postgres").exists()
