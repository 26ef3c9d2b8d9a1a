"""Hostile archives found by an adversarial review: small decompression and file-count bombs,
registry.json values MLflow itself refuses, ids with a trailing newline, names verify and restore
disagreed on; and odd names outside backups (status of ``it's``, an experiment named ``..``)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlops import config, registry
from mlops.recovery import archive as archive_mod


def _manifest(files: dict) -> bytes:
    return json.dumps({"format": archive_mod.FORMAT, "format_version": archive_mod.FORMAT_VERSION,
                       "files": files}).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = 0o644
    tar.addfile(ti, io.BytesIO(data))


def _manifest_only(path: Path, files: dict) -> Path:
    """An archive holding only a manifest that lists ``files`` (the bounds are checked first)."""
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, archive_mod.MANIFEST_NAME, _manifest(files))
    return path


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = b"\0" * k
        self.n -= k
        return k


def _zeros_archive(path: Path, size: int) -> Path:
    """A valid-looking archive whose one model file is ``size`` zero bytes (compresses ~1000x)."""
    h = hashlib.sha256()
    chunk = b"\0" * (1 << 20)
    left = size
    while left:
        h.update(chunk[:min(left, len(chunk))])
        left -= min(left, len(chunk))
    reg = b'{"models": []}'
    files = {"registry.json": {"sha256": hashlib.sha256(reg).hexdigest(), "size": len(reg)},
             "runs/r1/artifacts/zeros.bin": {"sha256": h.hexdigest(), "size": size}}
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        _add(tar, archive_mod.MANIFEST_NAME, _manifest(files))
        _add(tar, "registry.json", reg)
        ti = tarfile.TarInfo("runs/r1/artifacts/zeros.bin")
        ti.size = size
        tar.addfile(ti, io.BufferedReader(_Zeros(size)))
    return path


def _forge(src: Path, dest: Path, mutate=None, raw=None) -> Path:
    """A copy of a real archive whose registry.json is changed (``mutate(reg)`` in place, or replaced
    by the bytes ``raw``) with the manifest updated to match, as a careful forger would."""
    with tarfile.open(src, "r:gz") as tin:
        members = [(m, tin.extractfile(m).read()) for m in tin.getmembers() if m.isreg()]
    data = dict((m.name, d) for m, d in members)
    if raw is None:
        reg = json.loads(data["registry.json"])
        mutate(reg)
        raw = json.dumps(reg).encode()
    data["registry.json"] = raw
    manifest = json.loads(data[archive_mod.MANIFEST_NAME])
    manifest["files"]["registry.json"] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    data[archive_mod.MANIFEST_NAME] = json.dumps(manifest).encode()
    with tarfile.open(dest, "w:gz") as tout:
        for m, _ in members:
            _add(tout, m.name, data[m.name])
    return dest


def _one_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert res.exit_code != 0 and len(lines) == 1, res.stderr
    return lines[0]


# 1. A decompression bomb under 1 GiB.

def test_small_decompression_bomb_is_refused_before_anything_is_unpacked(tmp_path, monkeypatch):
    bomb = _zeros_archive(tmp_path / "bomb.tar.gz", 80 * 1024**2)
    assert bomb.stat().st_size < 1024**2  # 80 MiB listed from well under 1 MiB
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(archive_mod.ArchiveError, match="decompression bomb"):
        archive_mod.verify_archive(bomb)
    with pytest.raises(archive_mod.ArchiveError, match="decompression bomb"):
        archive_mod.extract_archive(bomb, parent=work)
    assert list(work.iterdir()) == []
    # The operator's override still lets it through.
    monkeypatch.setenv("MLOPS_ARCHIVE_RATIO_FLOOR_BYTES", str(1024**3))
    assert "runs/r1/artifacts/zeros.bin" in archive_mod.verify_archive(bomb)["files"]


# 2. A file-count bomb: empty files, each in its own folder.

def test_files_each_in_their_own_folder_count_with_their_folders(tmp_path, monkeypatch):
    empty = {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0}
    files = {f"runs/r1/artifacts/d{i}/f": empty for i in range(26_000)}
    files["registry.json"] = {"sha256": "1" * 64, "size": 2}
    path = _manifest_only(tmp_path / "inodes.tar.gz", files)
    with pytest.raises(archive_mod.ArchiveError, match=r"26001 files in 26003 folders.*MLOPS_ARCHIVE_MAX_FILES"):
        archive_mod.verify_archive(path)
    monkeypatch.setenv("MLOPS_ARCHIVE_MAX_FILES", "100000")
    with pytest.raises(archive_mod.ArchiveError, match="missing from the archive"):
        archive_mod.verify_archive(path)


def test_default_limits_fit_a_real_backup(archive):
    manifest = archive_mod.verify_archive(archive)
    limits = archive_mod.Limits()
    files = manifest["files"]
    assert len(files) + len(archive_mod._parents(files)) < limits.max_files / 100


# 3-4. registry.json values MLflow would refuse, checked by --verify and both restore paths.

def _version(reg, i=1):
    return reg["models"][0]["versions"][i]


HOSTILE = {
    "alias with a path and a space": (lambda r: r["models"][0]["aliases"].update({"../x y": "1"}),
                                      r"alias '\.\./x y' is refused by MLflow"),
    "reserved alias latest": (lambda r: r["models"][0]["aliases"].update({"latest": "1"}),
                              "alias 'latest' is refused by MLflow"),
    "reserved version alias": (lambda r: r["models"][0]["aliases"].update({"v7": "1"}),
                               "alias 'v7' is refused by MLflow"),
    "aliases as a list": (lambda r: r["models"][0].update(aliases=["production"]), "aliases is not a table"),
    "aliases as text": (lambda r: r["models"][0].update(aliases="production"), "aliases is not a table"),
    "timestamp as text": (lambda r: _version(r).update(creation_timestamp="abc"),
                          r"v2: creation_timestamp 'abc' is not a timestamp"),
    "model timestamp as a float": (lambda r: r["models"][0].update(last_updated_timestamp=1.5),
                                   "last_updated_timestamp 1.5 is not a timestamp"),
    "unknown status": (lambda r: _version(r).update(status="BOGUS"), "v2: status 'BOGUS' is not one of MLflow's"),
    "unknown stage": (lambda r: _version(r).update(stage="Deleted_Internal"), "v2: stage 'Deleted_Internal'"),
    "huge description": (lambda r: r["models"][0].update(description="x" * 20_000),
                         "description has 20000 characters, more than MLflow's 5000"),
    "description as a number": (lambda r: _version(r).update(description=5), "v2: description is not text"),
    "model tags null": (lambda r: r["models"][0].update(tags=None), "tags is not a table"),
    "version tags as a list": (lambda r: _version(r).update(tags=["a"]), "v2: tags is not a table"),
    "tag value not text": (lambda r: _version(r).update(tags={"k": {"a": 1}}), "tag 'k' has a value that is not text"),
    "user as an object": (lambda r: _version(r).update(user_id={"a": 1}), "v2: user_id .* is not text"),
    "experiment tags null": (lambda r: next(iter(r["experiments"].values())).update(tags=None),
                             "experiment .*: tags is not a table"),
    "model name with a slash": (lambda r: r["models"][0].update(name="a/b"), "model 'a/b' is refused by MLflow"),
    "model name with a NUL": (lambda r: r["models"][0].update(name="a\x00b"), "control characters"),
}


@pytest.fixture(scope="module")
def hostile(archive, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    out = {}
    for i, (case, (mutate, message)) in enumerate(HOSTILE.items()):
        out[case] = (_forge(archive, folder / f"{i}.tar.gz", mutate), message)
    return out


@pytest.mark.parametrize("case", list(HOSTILE))
def test_registry_values_mlflow_refuses_are_refused_by_verify(case, hostile):
    path, message = hostile[case]
    with pytest.raises(archive_mod.ArchiveError, match=message) as exc:
        archive_mod.verify_archive(path)
    text = str(exc.value)
    assert "\n" not in text and "registry.json" in text
    assert not any(word in text for word in ("AttributeError", "TypeError", "RecursionError", "KeyError"))


RESTORED = {"alias with a path and a space": "alias '../x y' is refused by MLflow",
            "reserved alias latest": "alias 'latest' is refused by MLflow", "user as an object": "user_id",
            "version tags as a list": "tags is not a table", "unknown status": "status 'BOGUS'"}


@pytest.mark.parametrize("case", list(RESTORED))
def test_restore_refuses_them_with_one_line_and_writes_nothing(case, hostile, tmp_path, new_store, cli):
    path, _ = hostile[case]
    uri = new_store(tmp_path / "target")
    for args in (["backup", "--verify", path], ["restore", path, "--dry-run"], ["restore", path]):
        line = _one_line(cli(*args, uri=uri))
        assert line.startswith("error: registry.json") and RESTORED[case] in line, (args, line)
    client = MlflowClient(tracking_uri=uri)
    assert client.search_registered_models() == []
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert not any((tmp_path / "target" / "mlruns" / "artifacts").iterdir())


def test_deeply_nested_registry_is_one_clear_line(archive, tmp_path, cli):
    path = _forge(archive, tmp_path / "deep.tar.gz", raw=b"[" * 100_000 + b"]" * 100_000)
    line = _one_line(cli("backup", "--verify", path))
    assert line == "error: registry.json is nested too deeply to be a registry backup"


# 5. Ids matched whole; member names without control characters.

@pytest.mark.parametrize("where", ["run_id", "key"])
def test_an_id_with_a_trailing_newline_is_not_an_id(where, archive, tmp_path):
    def mutate(reg):
        v = _version(reg)
        if where == "run_id":
            v["run_id"] = v["run_id"] + "\n"
        else:
            v["source_info"] = {"kind": "files", "key": "0123456789abcdef\n"}

    path = _forge(archive, tmp_path / "nl.tar.gz", mutate)
    with pytest.raises(archive_mod.ArchiveError, match=r"\\n' is not a valid id"):
        archive_mod.verify_archive(path)


@pytest.mark.parametrize("name", ["runs/a\nb/f", "runs/a\rb", "runs/\x1b[31mred", "runs/a\x7f", "runs/a\tb"])
def test_member_names_with_control_characters_are_unsafe(name, tmp_path):
    assert not archive_mod.safe_name(name)
    path = _manifest_only(tmp_path / "ctl.tar.gz", {name: {"sha256": "1" * 64, "size": 1}})
    with pytest.raises(archive_mod.ArchiveError, match="unsafe path in manifest.*control character"):
        archive_mod.verify_archive(path)


def test_a_sha256_with_a_trailing_newline_is_refused(tmp_path):
    path = _manifest_only(tmp_path / "sha.tar.gz", {"registry.json": {"sha256": "1" * 64 + "\n", "size": 2}})
    with pytest.raises(archive_mod.ArchiveError, match="needs an integer size and a sha256"):
        archive_mod.verify_archive(path)


# 6. --verify and restore agree.

def test_registry_with_a_byte_order_mark_is_refused_by_verify_as_by_restore(archive, tmp_path, new_store, cli):
    with tarfile.open(archive, "r:gz") as tar:
        raw = b"\xef\xbb\xbf" + tar.extractfile("registry.json").read()
    path = _forge(archive, tmp_path / "bom.tar.gz", raw=raw)
    uri = new_store(tmp_path / "target")
    for args in (["backup", "--verify", path], ["restore", path, "--dry-run"], ["restore", path]):
        line = _one_line(cli(*args, uri=uri))
        assert line == "error: registry.json starts with a byte-order mark; backup never writes one", (args, line)
    assert MlflowClient(tracking_uri=uri).search_registered_models() == []


def test_a_path_part_over_255_bytes_is_refused_by_verify_with_a_clear_line(tmp_path, cli):
    name = "runs/r1/artifacts/" + "a" * 300
    assert not archive_mod.safe_name(name)
    assert archive_mod.safe_name("runs/r1/artifacts/" + "a" * 255)
    assert not archive_mod.safe_name("runs/r1/artifacts/" + "é" * 128)  # 256 bytes
    path = _manifest_only(tmp_path / "long.tar.gz", {name: {"sha256": "1" * 64, "size": 1}})
    line = _one_line(cli("backup", "--verify", path))
    assert line.startswith("error: unsafe path in manifest") and "a part over 255 bytes" in line
    assert "Errno" not in line


# 7. `mlops status` with quotes in a model name.

@pytest.mark.parametrize("name", ["it's", 'say "hi"', "both ' and \""])
def test_status_of_a_model_with_quotes_in_its_name(name, tmp_path, new_store):
    uri = new_store(tmp_path / "store")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(name)
    client.create_registered_model(name + "x")  # a LIKE match that is not this model
    out = registry.status(client, name)
    assert [m["name"] for m in out["models"]] == [name]
    assert out["models"][0]["versions"] == []
    everything = registry.status(client)
    assert sorted(m["name"] for m in everything["models"]) == sorted([name, name + "x"])


# 8. An experiment named `..` stays inside the artifact root.

@pytest.mark.parametrize("name", ["..", ".", ".hidden", "../../etc", "x" * 400])
def test_experiment_folder_stays_inside_the_artifact_root(name, tmp_path, new_store):
    uri = new_store(tmp_path / "store")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment(config.ensure_experiment(client, name))
    root = Path(config.artifact_root_for(uri).removeprefix("file://"))
    location = Path(exp.artifact_location.removeprefix("file://"))
    assert location.parent == root, (location, root)
    assert location.name not in ("", ".", "..") and not location.name.startswith(".")
    assert len(location.name) <= 200
