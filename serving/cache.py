"""The local model cache: ``MODEL_CACHE_DIR/<name>/<version>/`` plus a ``current`` pointer.

Every write is a temp file renamed into place, and downloads of one model are serialised across
the gunicorn workers with an advisory file lock, so one worker downloads and the others reuse it.
The ``current`` pointer maps each selector (``stage:Production``, ``alias:champion``) to the last
version that loaded and passed its smoke test there, with its registry metadata: it is what the
service starts from when the registry is unreachable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from pathlib import Path

from mlops.model_io import download_version

POINTER = "current"
RELOAD_MARKER = ".reload-requested"


class ModelCache:
    """Cached versions of one registered model."""

    def __init__(self, root: Path, name: str):
        self.root = Path(root)
        self.name = name
        self.dir = self.root / _safe(name)

    def version_dir(self, version: str) -> Path:
        return self.dir / _safe(str(version))

    def has(self, version: str) -> bool:
        return (self.version_dir(version) / "MLmodel").is_file()

    @contextlib.contextmanager
    def lock(self):
        """Exclusive advisory lock on this model's cache folder (blocks other workers)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def ensure(self, version: str, tracking_uri: str) -> Path:
        """The local folder of ``version``, downloaded (once, atomically) if missing."""
        dest = self.version_dir(version)
        if self.has(version):
            return dest
        with self.lock():
            if self.has(version):
                return dest
            return download_version(self.name, version, dest, tracking_uri)

    def read_pointer(self, selector: str) -> dict | None:
        """The pointer entry for ``selector`` (version + metadata), or None."""
        data = self._read_all()
        entry = data.get(selector)
        return entry if isinstance(entry, dict) and entry.get("version") else None

    def write_pointer(self, selector: str, version: str, meta: dict) -> None:
        """Point ``selector`` at ``version`` (read-modify-write under the lock, atomic rename)."""
        with self.lock():
            data = self._read_all()
            data[selector] = {"version": str(version), "updated_at": time.time(), "meta": meta}
            _atomic_write(self.dir / POINTER, json.dumps(data, indent=2, sort_keys=True))

    def request_reload(self) -> None:
        """Tell the other workers (via the marker's mtime) that an operator asked for a reload."""
        self.dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / RELOAD_MARKER, str(time.time()))

    def reload_marker_mtime(self) -> float:
        try:
            return (self.dir / RELOAD_MARKER).stat().st_mtime
        except OSError:
            return 0.0

    def _read_all(self) -> dict:
        try:
            data = json.loads((self.dir / POINTER).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _safe(part: str) -> str:
    """A path component that cannot escape the cache folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]+", "_", part).strip(".")
    return cleaned or "_"
