"""Builders of hostile and damaged backup archives, shared by the archive-safety tests
(tests/lifecycle) and the restore-against-the-stack tests (tests/reliability)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

from mlops.recovery import archive as archive_mod


def tar_file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    """A regular file member (mode 644) holding ``data``."""
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    return ti, data


def build_archive(path: Path, members: list, manifest_files: dict | None = None, manifest_first: bool = True) -> Path:
    """A gzip tar with a valid-looking manifest (listing ``manifest_files`` or every regular file)."""
    if manifest_files is None:
        manifest_files = {
            ti.name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for ti, data in members if ti.isreg()
        }
    manifest = json.dumps({"format": archive_mod.FORMAT, "format_version": archive_mod.FORMAT_VERSION,
                           "files": manifest_files}).encode()
    mti, _ = tar_file(archive_mod.MANIFEST_NAME, manifest)
    with tarfile.open(path, "w:gz") as tar:
        entries = [(mti, manifest), *members] if manifest_first else [*members, (mti, manifest)]
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    """A symbolic (or, with ``kind=tarfile.LNKTYPE``, hard) link member pointing at ``target``."""
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti, None


def tar_device(name: str) -> tuple[tarfile.TarInfo, None]:
    """A character device member (/dev/null's numbers)."""
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.CHRTYPE
    ti.devmajor, ti.devminor = 1, 3
    return ti, None


def hostile_cases(tmp: Path) -> dict:
    """Case name -> (members, manifest files or None for a correct manifest, expected refusal)."""
    ok = tar_file("registry.json", b"{}")
    outside = tmp / "outside.txt"
    bad_hash = {"registry.json": {"sha256": "0" * 64, "size": 2}}
    return {
        "traversal": ([ok, tar_file("../outside.txt", b"pwned")], None, "unsafe path"),
        "nested traversal": ([ok, tar_file("runs/../../outside.txt", b"pwned")], None, "unsafe path"),
        "absolute path": ([ok, tar_file(str(outside), b"pwned")], None, "unsafe path"),
        "symlink": ([ok, tar_link("runs/link", str(outside))], None, "link"),
        "hardlink": ([ok, tar_link("runs/hard", "registry.json", tarfile.LNKTYPE)], None, "link"),
        "device file": ([ok, tar_device("runs/null")], None, "not a regular file"),
        "tampered file": ([ok], bad_hash, "checksum mismatch"),
        "unlisted file": ([ok, tar_file("runs/extra.txt", b"x")], {"registry.json": {
            "sha256": hashlib.sha256(b"{}").hexdigest(), "size": 2}}, "not listed in the manifest"),
        "missing file": ([ok], {"registry.json": {"sha256": hashlib.sha256(b"{}").hexdigest(), "size": 2},
                                "runs/gone.txt": {"sha256": "1" * 64, "size": 1}}, "missing from the archive"),
        "unsafe manifest entry": ([ok], {"../x": {"sha256": "1" * 64, "size": 1}}, "unsafe path in manifest"),
        "duplicate member": ([ok, ok], None, "appears twice"),
    }


def repack(src: Path, dest: Path, mutate: Callable[[str, bytes], bytes]) -> Path:
    """Copy a real archive member by member, letting ``mutate(name, data)`` change file contents."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            data = mutate(m.name, data)
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return dest
