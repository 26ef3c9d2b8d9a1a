"""Malicious or damaged archives are refused before anything is written or restored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops.recovery import archive as archive_mod
from tests.archives import build_archive, hostile_cases, repack, tar_file
from tests.lifecycle.conftest import mlops


@pytest.mark.parametrize("case", list(hostile_cases(Path("/x"))))
def test_malicious_archive_is_refused_and_nothing_escapes(case, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    members, manifest_files, message = hostile_cases(tmp_path)[case]
    path = build_archive(tmp_path / "evil.tar.gz", members, manifest_files)
    with pytest.raises(archive_mod.ArchiveError, match=message):
        archive_mod.verify_archive(path)
    with pytest.raises(archive_mod.ArchiveError, match=message):
        archive_mod.extract_archive(path, parent=work)
    assert list(work.iterdir()) == []  # the temp folder was removed
    assert not (tmp_path / "outside.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "work"]


def test_manifest_must_come_first(tmp_path):
    path = build_archive(tmp_path / "late.tar.gz", [tar_file("registry.json", b"{}")], manifest_first=False)
    with pytest.raises(archive_mod.ArchiveError, match="first member must be manifest.json"):
        archive_mod.verify_archive(path)


def test_real_archive_tampered_or_truncated_is_refused(archive, tmp_path):
    archive_mod.verify_archive(archive)  # the untouched one is fine

    def flip(name, data):
        if name.endswith("model.skops"):
            return data[:-1] + bytes([data[-1] ^ 1])
        return data

    tampered = repack(archive, tmp_path / "tampered.tar.gz", flip)
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
    evil = build_archive(tmp_path / "evil.tar.gz", [tar_file("registry.json", b"{}"), tar_file("../outside.txt", b"pwned")])
    tampered = repack(archive, tmp_path / "tampered.tar.gz",
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
