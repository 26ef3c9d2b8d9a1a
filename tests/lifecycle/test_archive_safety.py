"""Malicious or damaged archives are refused before anything is written or restored."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from mlops.recovery import archive as archive_mod
from tests.lifecycle.conftest import mlops


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    return ti, data


def _write(path: Path, members: list, manifest_files: dict | None = None, manifest_first: bool = True) -> Path:
    """A gzip tar with a valid-looking manifest (listing ``manifest_files`` or every regular file)."""
    if manifest_files is None:
        manifest_files = {
            ti.name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
            for ti, data in members if ti.isreg()
        }
    manifest = json.dumps({"format": archive_mod.FORMAT, "format_version": archive_mod.FORMAT_VERSION,
                           "files": manifest_files}).encode()
    mti, _ = _file(archive_mod.MANIFEST_NAME, manifest)
    with tarfile.open(path, "w:gz") as tar:
        entries = [(mti, manifest), *members] if manifest_first else [*members, (mti, manifest)]
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.linkname = target
    return ti, None


def _device(name: str) -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.CHRTYPE
    ti.devmajor, ti.devminor = 1, 3
    return ti, None


def _cases(tmp: Path) -> dict:
    ok = _file("registry.json", b"{}")
    outside = tmp / "outside.txt"
    bad_hash = {"registry.json": {"sha256": "0" * 64, "size": 2}}
    return {
        "traversal": ([ok, _file("../outside.txt", b"pwned")], None, "unsafe path"),
        "nested traversal": ([ok, _file("runs/../../outside.txt", b"pwned")], None, "unsafe path"),
        "absolute path": ([ok, _file(str(outside), b"pwned")], None, "unsafe path"),
        "symlink": ([ok, _link("runs/link", str(outside))], None, "link"),
        "hardlink": ([ok, _link("runs/hard", "registry.json", tarfile.LNKTYPE)], None, "link"),
        "device file": ([ok, _device("runs/null")], None, "not a regular file"),
        "tampered file": ([ok], bad_hash, "checksum mismatch"),
        "unlisted file": ([ok, _file("runs/extra.txt", b"x")], {"registry.json": {
            "sha256": hashlib.sha256(b"{}").hexdigest(), "size": 2}}, "not listed in the manifest"),
        "missing file": ([ok], {"registry.json": {"sha256": hashlib.sha256(b"{}").hexdigest(), "size": 2},
                                "runs/gone.txt": {"sha256": "1" * 64, "size": 1}}, "missing from the archive"),
        "unsafe manifest entry": ([ok], {"../x": {"sha256": "1" * 64, "size": 1}}, "unsafe path in manifest"),
        "duplicate member": ([ok, ok], None, "appears twice"),
    }


@pytest.mark.parametrize("case", list(_cases(Path("/x"))))
def test_malicious_archive_is_refused_and_nothing_escapes(case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    members, manifest_files, message = _cases(tmp_path)[case]
    path = _write(tmp_path / "evil.tar.gz", members, manifest_files)
    with pytest.raises(archive_mod.ArchiveError, match=message):
        archive_mod.verify_archive(path)
    with pytest.raises(archive_mod.ArchiveError, match=message):
        archive_mod.extract_archive(path, parent=work)
    assert list(work.iterdir()) == []  # the temp folder was removed
    assert not (tmp_path / "outside.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "work"]


def test_manifest_must_come_first(tmp_path):
    path = _write(tmp_path / "late.tar.gz", [_file("registry.json", b"{}")], manifest_first=False)
    with pytest.raises(archive_mod.ArchiveError, match="first member must be manifest.json"):
        archive_mod.verify_archive(path)


def _repack(src: Path, dest: Path, mutate) -> Path:
    """Copy a real archive member by member, letting ``mutate(name, data)`` change file contents."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            data = mutate(m.name, data)
            m.size = len(data)
            tout.addfile(m, io.BytesIO(data))
    return dest


def test_real_archive_tampered_or_truncated_is_refused(archive, tmp_path):
    archive_mod.verify_archive(archive)  # the untouched one is fine

    def flip(name, data):
        if name.endswith("model.skops"):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    tampered = _repack(archive, tmp_path / "tampered.tar.gz", flip)
    with pytest.raises(archive_mod.ArchiveError, match=r"checksum mismatch for '.*model.skops'"):
        archive_mod.verify_archive(tampered)

    truncated = tmp_path / "truncated.tar.gz"
    raw = archive.read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(archive_mod.ArchiveError, match="truncated"):
        archive_mod.verify_archive(truncated)

    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(archive_mod.ArchiveError):
        archive_mod.verify_archive(garbage)


@pytest.mark.slow
def test_cli_refuses_bad_archives_with_one_line_and_leaves_the_registry_alone(archive, tmp_path, new_store, cli):
    uri = new_store(tmp_path / "target")
    evil = _write(tmp_path / "evil.tar.gz", [_file("registry.json", b"{}"), _file("../outside.txt", b"pwned")])
    tampered = _repack(archive, tmp_path / "tampered.tar.gz",
                       lambda n, d: d.replace(b"lc-exp-a", b"lc-exp-x") if n.endswith("run.json") else d)
    # The console script, once, with its temp dir under our eyes.
    proc = mlops("restore", tampered, uri=uri, check=False, TMPDIR=str(tmp_path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: checksum mismatch for 'runs/")
    for path, message in ((evil, "unsafe path in manifest: '../outside.txt'"),
                          (tmp_path / "missing.tar.gz", "archive not found")):
        for args in (["restore", path], ["restore", path, "--dry-run"], ["backup", "--verify", path]):
            res = cli(*args, uri=uri)
            lines = res.stderr.strip().splitlines()
            assert res.exit_code != 0 and len(lines) == 1 and message in lines[0], (args, res.stderr)
    assert not (tmp_path / "outside.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("mlops-restore-")]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert client.search_registered_models() == []
    assert [e.name for e in client.search_experiments()] == ["Default"]
