"""`make drill` as part of `make test`: the disaster-recovery drill must report no differences."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.stack]


@pytest.mark.timeout(1200)
def test_dr_drill_restores_the_registry_and_serving_without_differences():
    """Backup, destroy, rebuild, restore, compare: exit 0 and `RESULT: no differences`."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "dr_drill")], env=clean_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=1100)
    out = proc.stdout + proc.stderr
    print(f"drill took {time.monotonic() - t0:.0f} s")
    assert "RESULT: no differences" in proc.stdout.splitlines(), out[-6000:]
    assert proc.returncode == 0, out[-6000:]
