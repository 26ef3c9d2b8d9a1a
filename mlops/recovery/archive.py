"""The backup archive format: one ``.tar.gz`` whose first member is ``manifest.json``.

The manifest lists every other file with its sha256 and size; :mod:`mlops.recovery.layout` says
where each record lives and :mod:`mlops.recovery.safety` what an archive may hold. Reading is
defensive: every member is checked against the manifest and the limits before anything is
unpacked, extraction happens only into a fresh temporary folder, with ``tarfile``'s ``data``
filter on top of these checks, and every file is hashed again afterwards. Writing goes to a
temporary file renamed only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from mlops.recovery.layout import MANIFEST_NAME, REGISTRY_NAME
from mlops.recovery.safety import (  # noqa: F401 - ArchiveError, Limits, safe_name are read from here too
    _UNSAFE,
    ArchiveError,
    Limits,
    _check_bounds,
    _check_member,
    _parents,
    check_registry,
    safe_name,
)
from mlops.util import atomic_writer

log = logging.getLogger(__name__)

FORMAT = "mlops-registry-backup"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _parse_manifest(raw: bytes) -> dict:
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ArchiveError(f"manifest.json is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"not a registry backup (manifest format is not {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArchiveError(
            f"unsupported backup format version {manifest.get('format_version')!r} (this tool reads {FORMAT_VERSION})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ArchiveError("manifest.json has no 'files' table")
    for name, meta in files.items():
        if not safe_name(name) or name == MANIFEST_NAME:
            raise ArchiveError(f"unsafe path in manifest: {str(name)[:300]!r} ({_UNSAFE})")
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("size"), int)
            or meta["size"] < 0
            or not isinstance(meta.get("sha256"), str)
            or isinstance(meta["size"], bool)
            or not _HEX64.fullmatch(meta["sha256"])
        ):
            raise ArchiveError(f"manifest entry for {name!r} needs an integer size and a sha256")
    return manifest


def _open_error(path: Path, exc: BaseException) -> ArchiveError:
    return ArchiveError(f"{path}: cannot read the archive (truncated or not a .tar.gz): {exc or type(exc).__name__}")


def _check_path(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise ArchiveError(f"archive not found: {path}")
    if not path.is_file():
        raise ArchiveError(f"not a file: {path}")
    return path


def parse_registry(raw: bytes) -> object:
    """``registry.json`` as restore reads it: UTF-8 text (no byte-order mark) holding JSON."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise ArchiveError(f"{REGISTRY_NAME} starts with a byte-order mark; backup never writes one")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ArchiveError(f"{REGISTRY_NAME} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except RecursionError:
        raise ArchiveError(f"{REGISTRY_NAME} is nested too deeply to be a registry backup") from None
    except ValueError as exc:
        raise ArchiveError(f"{REGISTRY_NAME} is not valid JSON: {exc}") from None


def verify_archive(path: Path, on_file: Callable[[str], None] | None = None, limits: Limits | None = None) -> dict:
    """Check every member of the archive against its manifest, the limits and ``registry.json``
    without writing anything.

    Returns the manifest. Raises ArchiveError naming the first problem found.
    """
    path = _check_path(path)
    limits = limits or Limits.from_env()
    seen: set[str] = set()
    dirs_seen: set[str] = set()
    registry_raw = None
    try:
        with tarfile.open(path, mode="r|gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST_NAME:
                raise ArchiveError(f"{path}: the first member must be {MANIFEST_NAME}")
            if not first.isreg() or first.size > MAX_MANIFEST_BYTES:
                raise ArchiveError(f"{path}: {MANIFEST_NAME} is not a regular file of sane size")
            manifest = _parse_manifest(tar.extractfile(first).read())
            files = manifest["files"]
            _check_bounds(path, files, limits)
            if REGISTRY_NAME not in files:
                raise ArchiveError(f"{path}: the manifest does not list {REGISTRY_NAME}")
            parents = _parents(files)
            while (member := tar.next()) is not None:
                tar.members.clear()  # stream mode would keep every header in memory
                _check_member(member, files)
                if member.isdir():
                    d = member.name.rstrip("/")
                    if d not in parents or d in dirs_seen:
                        raise ArchiveError(
                            f"archive member {member.name!r} is a directory that holds no listed file or appears twice")
                    dirs_seen.add(d)
                    continue
                if member.name in seen:
                    raise ArchiveError(f"archive member {member.name!r} appears twice")
                seen.add(member.name)
                h = hashlib.sha256()
                stream = tar.extractfile(member)
                n = 0
                keep = member.name == REGISTRY_NAME
                chunks = []
                while chunk := stream.read(_CHUNK):
                    h.update(chunk)
                    n += len(chunk)
                    if keep:
                        chunks.append(chunk)
                if n != files[member.name]["size"] or h.hexdigest() != files[member.name]["sha256"]:
                    raise ArchiveError(f"checksum mismatch for {member.name!r}: the archive was modified or damaged")
                if keep:
                    registry_raw = b"".join(chunks)
                if on_file:
                    on_file(member.name)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise _open_error(path, exc) from None
    missing = sorted(set(files) - seen)
    if missing:
        raise ArchiveError(f"{len(missing)} file(s) listed in the manifest are missing from the archive, e.g. {missing[0]!r}")
    reg = parse_registry(registry_raw)
    check_registry(reg, files, limits)
    return manifest


def extract_archive(path: Path, parent: Path | None = None, limits: Limits | None = None) -> tuple[Path, dict]:
    """Verify, then extract into a fresh temporary folder; returns (folder, manifest).

    The caller owns the folder (remove it with ``shutil.rmtree``). On any problem the folder is
    removed and ArchiveError raised. Refused when the temp folder's disk has no room for it.
    """
    manifest = verify_archive(path, limits=limits)
    files = manifest["files"]
    dest = Path(tempfile.mkdtemp(prefix="mlops-restore-", dir=parent))
    try:
        need = sum(meta["size"] for meta in files.values())
        free = shutil.disk_usage(dest).free
        if need > free:
            raise ArchiveError(f"{path}: unpacking needs {need} bytes, {free} are free under {dest.parent}")
        try:
            with tarfile.open(path, mode="r:gz") as tar:
                members = []
                for member in tar.getmembers():
                    if member.name == MANIFEST_NAME:
                        continue
                    _check_member(member, files)
                    members.append(member)
                tar.extractall(dest, members=members, filter="data")
        except ArchiveError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise _open_error(path, exc) from None
        # The file may have changed between the two reads: hash what actually landed on disk.
        found = set()
        for root, dirs, names in os.walk(dest):
            for d in dirs:
                if (Path(root) / d).is_symlink():
                    raise ArchiveError(f"symlink in extracted archive: {d}")
            for n in names:
                p = Path(root) / n
                rel = p.relative_to(dest).as_posix()
                if p.is_symlink() or not p.is_file() or rel not in files:
                    raise ArchiveError(f"unexpected file after extraction: {rel!r}")
                if sha256_file(p) != files[rel]["sha256"]:
                    raise ArchiveError(f"checksum mismatch for {rel!r} after extraction")
                found.add(rel)
        if found != set(files):
            raise ArchiveError("extracted files do not match the manifest")
        return dest, manifest
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _tarinfo(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = int(mtime)
    ti.mode = 0o644
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_archive(
    staging: Path, out: Path, meta: dict, on_file: Callable[[str], None] | None = None, compresslevel: int = 6
) -> dict:
    """Pack every regular file under ``staging`` into ``out`` with a manifest first.

    Written to a temporary file next to ``out`` and renamed at the end, so an interrupted backup
    never leaves a complete-looking archive. Returns the manifest.
    """
    staging, out = Path(staging), Path(out)
    names = sorted(
        p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file() and not p.is_symlink()
    )
    files = {}
    for name in names:
        if not safe_name(name) or name == MANIFEST_NAME:
            raise ArchiveError(f"refusing to archive unsafe file name {name!r}")
        p = staging / name
        files[name] = {"sha256": sha256_file(p), "size": p.stat().st_size}
    manifest = {**meta, "format": FORMAT, "format_version": FORMAT_VERSION, "files": files}
    raw_manifest = json.dumps(manifest, indent=1, sort_keys=True).encode()
    now = time.time()
    with atomic_writer(out, prefix=f".{out.name}.{os.getpid()}.", suffix=".partial") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=compresslevel, format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_tarinfo(MANIFEST_NAME, len(raw_manifest), now), io.BytesIO(raw_manifest))
            for name in names:
                p = staging / name
                with open(p, "rb") as f:
                    tar.addfile(_tarinfo(name, files[name]["size"], p.stat().st_mtime), f)
                if on_file:
                    on_file(name)
    return manifest
