"""The local model cache: ``MODEL_CACHE_DIR/<name>/<version>/`` plus a ``current`` pointer.

Every write is a temp file or folder renamed into place, and downloads of one model are
serialised across the gunicorn workers with an advisory file lock, so one worker downloads and
the others reuse it. Each version folder holds ``.cache-entry.json``: which registry version it
was downloaded from (run id, source, creation time) and a SHA-256 digest of its files. An entry
is used only when that record matches the registry's version and the files still match the
digest; otherwise it is downloaded again (another registry or a re-created model sharing the
folder, a damaged file). The ``current`` pointer maps each selector (``stage:Production``,
``alias:champion``) to the last version that loaded and passed its smoke test there, with its
registry metadata: it is what the service starts from when the registry cannot give a version.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlops.model_io import ModelLoadError, download_version

log = logging.getLogger("serving.cache")

POINTER = "current"
RELOAD_MARKER = ".reload-requested"
ENTRY = ".cache-entry.json"
IDENTITY_KEYS = ("run_id", "source", "created")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class CacheFull(ModelLoadError):
    """The cache's file system has no space left (ENOSPC / EDQUOT); the message names the path."""

    phase = "download"


@dataclass
class Fetched:
    """A usable cache entry, and whether this call downloaded it."""

    path: Path
    downloaded: bool


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

    def problem(self, version: str, identity: dict | None, strict: bool = True) -> str | None:
        """Why the entry of ``version`` cannot be used for ``identity`` (None: it can).

        ``identity`` holds the registry's ``run_id``/``source``/``created`` (only the keys given
        are compared). ``strict=False`` accepts an entry without a record (caches written before
        records existed), for starting from the cache when the registry cannot be compared.
        """
        dest = self.version_dir(version)
        if not (dest / "MLmodel").is_file():
            return "not cached"
        record = self.record(version)
        if record is None:
            return None if not strict else "no record of which registry version it holds"
        for key in IDENTITY_KEYS:
            if identity and key in identity and identity[key] is not None and record.get(key) != identity[key]:
                return (f"it holds another registered version ({key} {record.get(key)!r}, "
                        f"the registry has {identity[key]!r})")
        digest = record.get("digest")
        if not digest:
            return "its record has no digest"
        if _digest(dest) != digest:
            return "its files changed since they were downloaded (digest mismatch)"
        return None

    def record(self, version: str) -> dict | None:
        """The entry's record (registry identity and digest), or None."""
        try:
            data = json.loads((self.version_dir(version) / ENTRY).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def fetch(self, version: str, tracking_uri: str, identity: dict) -> Fetched:
        """A verified local copy of ``version``: the cached one, or downloaded (once, atomically)."""
        dest = self.version_dir(version)
        if self.problem(version, identity) is None:
            return Fetched(dest, False)
        with self.lock():
            why = self.problem(version, identity)
            if why is None:  # another worker fetched it while we waited
                return Fetched(dest, False)
            if why != "not cached":
                log.warning("cached %s v%s cannot be used (%s): downloading it again", self.name, version, why)
            self._download(version, tracking_uri, identity)
        return Fetched(dest, True)

    def drop(self, version: str, why: str) -> None:
        """Remove the entry of ``version`` (moved aside first, so nothing reads half of it)."""
        with self.lock():
            if self.version_dir(version).exists():
                log.warning("dropping cached %s v%s: %s", self.name, version, why)
                self._remove(self.version_dir(version))

    def _download(self, version: str, tracking_uri: str, identity: dict) -> None:
        dest = self.version_dir(version)
        tmp: Path | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=self.dir))
            files = download_version(self.name, version, tmp / "model", tracking_uri)
            record = {**identity, "name": self.name, "version": str(version), "digest": _digest(files),
                      "downloaded_at": time.time()}
            _atomic_write(files / ENTRY, json.dumps(record, indent=2, sort_keys=True))
            if dest.exists():
                self._remove(dest)
            os.replace(files, dest)
        except Exception as exc:
            if no_space(exc):
                raise CacheFull(self.no_space_message(f"downloading {self.name} v{version}")) from exc
            raise
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)

    def _remove(self, path: Path) -> None:
        aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
        os.replace(path, aside)
        shutil.rmtree(aside, ignore_errors=True)

    def no_space_message(self, doing: str) -> str:
        """One line naming ENOSPC and the cache path, for logs, /health and HTTP answers."""
        try:
            st = os.statvfs(self.root)
            free = f" (now {st.f_bavail * st.f_frsize} of {st.f_blocks * st.f_frsize} bytes free)"
        except OSError:
            free = ""
        return (f"no space left on device in the model cache {self.root} (MODEL_CACHE_DIR) while {doing}{free}: "
                f"free space there or point MODEL_CACHE_DIR at a larger disk")

    def read_pointer(self, selector: str) -> dict | None:
        """The pointer entry for ``selector`` (version + metadata), or None."""
        data = self._read_all()
        entry = data.get(selector)
        return entry if isinstance(entry, dict) and entry.get("version") else None

    def write_pointer(self, selector: str, version: str, meta: dict, registry: str | None = None) -> None:
        """Point ``selector`` at ``version`` (read-modify-write under the lock, atomic rename).

        ``registry`` (the tracking URI without secrets) is kept so that a service of another
        registry sharing this folder never starts from this entry.
        """
        with self.lock():
            data = self._read_all()
            record = self.record(version) or {}
            data[selector] = {"version": str(version), "updated_at": time.time(), "meta": meta, "registry": registry,
                              "identity": {k: record[k] for k in IDENTITY_KEYS if k in record}}
            _atomic_write(self.dir / POINTER, json.dumps(data, indent=2, sort_keys=True))

    def request_reload(self) -> str | None:
        """Tell the other workers (via the marker's mtime) that an operator asked for a reload.

        Never raises: a cache that cannot be written (full disk) is logged and returned as a
        message; this worker's own reload goes ahead and reports its own result.
        """
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.dir / RELOAD_MARKER, str(time.time()))
        except OSError as exc:
            msg = (self.no_space_message("telling the other workers to reload") if no_space(exc)
                   else f"cannot write the reload marker in {self.dir}: {exc.strerror or exc}")
            log.warning("%s; they reload at their next poll instead", msg)
            return msg
        return None

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


def no_space(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it wraps) is a full disk or quota."""
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        text = str(e)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _digest(folder: Path) -> str:
    """SHA-256 over every file's relative path and bytes (the entry's own record left out)."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ENTRY):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def _safe(part: str) -> str:
    """A path component that cannot escape the cache folder."""
    cleaned = re.sub(r"[^A-Za-z0-9._@+-]+", "_", part).strip(".")
    return cleaned or "_"
