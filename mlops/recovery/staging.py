"""What an interrupted backup leaves behind, and how it is cleaned up.

A backup stages its files in ``.mlops-backup-<pid>-*`` next to the archive and writes the archive
as ``.<name>.<pid>.*.partial`` before renaming it. SIGTERM and SIGHUP interrupt it like Ctrl-C, so
both are removed on the way out; what a killed process left is removed by the next backup once
its process is gone or it is older than ``MLOPS_BACKUP_STALE_HOURS``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

from mlops import env

log = logging.getLogger(__name__)

STAGING_PREFIX = ".mlops-backup-"
STAGING_NAME = re.compile(r"^\.mlops-backup-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")
PARTIAL_NAME = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.[A-Za-z0-9_]+\.partial$")
STALE_HOURS = env.MLOPS_BACKUP_STALE_HOURS.default


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_hours() -> float:
    """Age after which an earlier backup's leftovers are removed whoever owns them
    (``MLOPS_BACKUP_STALE_HOURS``, default 24)."""
    try:
        return env.MLOPS_BACKUP_STALE_HOURS.get()
    except env.EnvError:
        return STALE_HOURS


def clean_stale(folder: Path, max_age_hours: float | None = None) -> list[Path]:
    """Remove staging folders and ``.partial`` files that earlier, interrupted backups left in
    ``folder``: those whose process is gone, and any older than ``max_age_hours`` (also those
    of versions that did not name their process). Each removal is logged; returns them."""
    max_age = (stale_hours() if max_age_hours is None else max_age_hours) * 3600
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = STAGING_NAME.match(e.name) if e.is_dir(follow_symlinks=False) else None
        if m is None and e.is_file(follow_symlinks=False):
            m = PARTIAL_NAME.match(e.name)
        if m is None:
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(m.group("pid")) if m.group("pid") else None
        if age <= max_age and (pid is None or pid == os.getpid() or _pid_alive(pid)):
            continue
        why = f"its backup process {pid} is gone" if pid and age <= max_age else f"{age / 3600:.1f} h old"
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError as exc:
            log.warning("cannot remove leftover %s of an earlier backup: %s", e.path, exc)
            continue
        log.warning("removed leftover %s of an interrupted backup (%s)", e.path, why)
        removed.append(Path(e.path))
    return removed


@contextlib.contextmanager
def interrupt_on_signals():
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, so the backup's cleanup
    (staging folder, ``.partial`` file) runs as it does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        saved[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
