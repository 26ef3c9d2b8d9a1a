"""Backup/restore defects: forged ids, every kind of version source, missing model files, hostile
sizes and counts, provenance tags left behind, odd model names, leftovers of interrupted backups.

A small registry of its own (``kinds``): one version per kind of source (logged model, run
artifact path, plain path, ``models:/`` of another version) and a model whose name holds both
quote characters. Hostile archives are built here, small on disk, with lowered limits.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlops.recovery import archive as archive_mod
from mlops.recovery import backup as backup_mod
from tests.archives import build_archive, tar_file
from tests.helpers import clean_env, sqlite_uri
from tests.lifecycle import registry_data
from tests.lifecycle.conftest import mlops

KINDS = "kinds"
ODD = "it's \"odd\""
RESTORE_PREFIX = "mlops.restore."


def _fit(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = registry_data.features(200)
    y = (X["mean radius"] > X["mean radius"].median()).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=500)).fit(X, y)


def _predict(uri: str, ref: str) -> list[float]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = mlflow.pyfunc.load_model(ref, dst_path=tmp, suppress_warnings=True)
            return [round(float(p), 9) for p in model.predict(registry_data.features(20))]
    finally:
        mlflow.set_tracking_uri(previous)


def _build_kinds(folder: Path) -> dict:
    """One version per kind of source, plus the oddly named model; returns the source's facts."""
    import mlflow

    uri = sqlite_uri(folder)
    from mlops import config

    config.ensure_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    reqs = registry_data.pip_requirements()
    try:
        exp = config.ensure_experiment(client, "kinds-exp")
        client.create_registered_model(KINDS, tags={"team": "a"})
        with mlflow.start_run(experiment_id=exp) as run1:
            mlflow.set_tag("purpose", "logged")
            info = mlflow.sklearn.log_model(_fit(0.1), name="model", pip_requirements=reqs)
        client.create_model_version(KINDS, info.model_uri, run_id=run1.info.run_id, model_id=info.model_id)
        with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=exp) as run2:
            mlflow.sklearn.save_model(_fit(0.5), f"{tmp}/m", pip_requirements=reqs)
            mlflow.log_artifacts(f"{tmp}/m", "model")
        client.create_model_version(KINDS, f"runs:/{run2.info.run_id}/model", run_id=run2.info.run_id)
        plain = folder / "plain_model"
        mlflow.sklearn.save_model(_fit(2.0), str(plain), pip_requirements=reqs)
        client.create_model_version(KINDS, str(plain))
        client.create_model_version(KINDS, f"models:/{KINDS}/1")
        client.create_registered_model(ODD, description="both quote characters")
        client.create_model_version(ODD, str(plain))
    finally:
        mlflow.set_tracking_uri(previous)
    refs = [f"models:/{KINDS}/{n}" for n in (1, 2, 3, 4)] + [f"models:/{ODD}/1"]
    return {"uri": uri, "folder": folder, "predictions": {ref: _predict(uri, ref) for ref in refs}}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return _build_kinds(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def kinds_archive(kinds, tmp_path_factory):
    """`mlops backup` of the kinds registry (all models, the odd name included)."""
    out = tmp_path_factory.mktemp("kinds-backup") / "kinds.tar.gz"
    proc = mlops("backup", "--out", out, uri=kinds["uri"], check=False)
    assert proc.returncode == 0 and out.is_file(), proc.stderr
    return out


def _unpack(path: Path, dest: Path) -> dict:
    """Our own archive's files under ``dest``; returns its manifest."""
    with tarfile.open(path, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    manifest = json.loads((dest / archive_mod.MANIFEST_NAME).read_text())
    (dest / archive_mod.MANIFEST_NAME).unlink()
    return manifest


def _repack(src: Path, out: Path, change) -> Path:
    """A consistent archive (fresh manifest) from ``src`` after ``change(folder, registry)``."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = _unpack(src, folder)
        reg = json.loads((folder / "registry.json").read_text())
        change(folder, reg)
        (folder / "registry.json").write_text(json.dumps(reg))
        meta = {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")}
        archive_mod.write_archive(folder, out, meta)
    return out


def _version(reg: dict, name: str, n: int) -> dict:
    model = next(m for m in reg["models"] if m["name"] == name)
    return next(v for v in model["versions"] if v["version"] == n)


def _all_tags(uri: str) -> dict:
    """Every tag of every registered model, version, run and logged model, by owner."""
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    out = {}
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    for rm in client.search_registered_models():
        out[f"model {rm.name}"] = dict(rm.tags)
        for mv in client.search_model_versions(backup_mod.version_filter(rm.name)):
            if mv.name == rm.name:
                out[f"version {rm.name} v{mv.version}"] = dict(mv.tags)
    for r in client.search_runs(exps, run_view_type=ViewType.ALL, max_results=1000):
        out[f"run {r.info.run_name}"] = {k: v for k, v in r.data.tags.items()}
    for lm in client.search_logged_models(exps, max_results=100):
        out[f"logged model {lm.name} {lm.model_id}"] = dict(lm.tags or {})
    return out


def _restore_tags(tags: dict) -> list[str]:
    return sorted(f"{owner}: {k}" for owner, t in tags.items() for k in t if k.startswith(RESTORE_PREFIX))


# ---- 3, 6, 7: every kind of source round-trips and loads; no tag the source lacked -------------

@pytest.mark.slow
@pytest.mark.parametrize("path", ["database", "api"])
def test_every_kind_of_source_restores_loadable_without_provenance_tags(kinds, kinds_archive, tmp_path, new_store,
                                                                       path):
    reg = json.loads(tarfile.open(kinds_archive, "r:gz").extractfile("registry.json").read())
    kinds_seen = {_version(reg, KINDS, n)["source_info"]["kind"] for n in (1, 2, 3, 4)}
    assert kinds_seen == {"logged_model", "run", "files"}
    assert ODD in [m["name"] for m in reg["models"]]

    uri = new_store(tmp_path)
    args = ["restore", kinds_archive] + (["--through-api"] if path == "api" else [])
    proc = mlops(*args, uri=uri, check=False)
    assert proc.returncode == 0, proc.stderr
    for ref, expected in kinds["predictions"].items():
        assert _predict(uri, ref) == expected, ref

    restored = _all_tags(uri)
    assert _restore_tags(restored) == []
    source = _all_tags(kinds["uri"])
    for owner in (f"model {KINDS}", f"model {ODD}"):
        assert restored[owner] == source[owner]
    src_runs = {k: v for k, v in source.items() if k.startswith("run ")}
    assert {k: v for k, v in restored.items() if k.startswith("run ")} == src_runs

    # A second run of the same restore finds the models in the target (nothing marks them).
    again = mlops(*args, uri=uri, check=False)
    assert again.returncode != 0 and "already in the target registry" in again.stderr


def test_backup_with_a_name_holding_both_quotes(kinds, kinds_archive):
    """One odd name must not break a scheduled backup (it did: Invalid clause(s) in filter string)."""
    reg = json.loads(tarfile.open(kinds_archive, "r:gz").extractfile("registry.json").read())
    odd = next(m for m in reg["models"] if m["name"] == ODD)
    assert [v["version"] for v in odd["versions"]] == [1]
    assert backup_mod.version_filter(ODD) == "name LIKE 'it_s _odd_'"


# ---- 2: ids and keys from registry.json that become paths --------------------------------------

def _forge_key(secret: Path):
    def change(_folder, reg):
        _version(reg, KINDS, 3)["source_info"]["key"] = str(secret)
    return change


FORGERIES = {
    "absolute source key": lambda secret: _forge_key(secret),
    "source key with ..": lambda secret: lambda f, reg: _version(reg, KINDS, 3)["source_info"].update(
        key="../../../" + secret.name),
    "run id with ..": lambda secret: lambda f, reg: _version(reg, KINDS, 2).update(run_id="../../etc"),
    "logged model id with /": lambda secret: lambda f, reg: _version(reg, KINDS, 1)["source_info"].update(
        model_id="m-0/../../x"),
    "run artifact path outside the run": lambda secret: lambda f, reg: _version(reg, KINDS, 2)["source_info"].update(
        path="../../../.."),
    "experiment id with /": lambda secret: lambda f, reg: reg["experiments"].update({"../1": {"name": "x"}}),
}


@pytest.mark.parametrize("case", list(FORGERIES))
def test_forged_ids_and_keys_are_refused_by_verify(case, kinds_archive, tmp_path):
    secret = tmp_path / "host-secrets"
    secret.mkdir()
    (secret / "MLmodel").write_text("flavors: {}\n")
    forged = _repack(kinds_archive, tmp_path / "forged.tar.gz", FORGERIES[case](secret))
    with pytest.raises(archive_mod.ArchiveError, match="not a valid id|unsafe|is not in the archive"):
        archive_mod.verify_archive(forged)


@pytest.mark.slow
def test_restore_refuses_an_archive_naming_a_host_folder(kinds_archive, tmp_path, new_store):
    """The report's case: a version's source key set to an absolute host path."""
    secret = tmp_path / "host-secrets"
    secret.mkdir()
    (secret / "MLmodel").write_text("flavors: {}\n")
    (secret / "id_rsa").write_text("PRIVATE\n")
    forged = _repack(kinds_archive, tmp_path / "forged.tar.gz", _forge_key(secret))
    uri = new_store(tmp_path / "target")
    for args in (["backup", "--verify", forged], ["restore", forged], ["restore", forged, "--dry-run"]):
        proc = mlops(*args, uri=uri, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and "not a valid id" in lines[0], (args, proc.stderr)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert client.search_registered_models() == []
    assert not [p for p in (tmp_path / "target").rglob("id_rsa")]


# ---- 4: every version's model files are checked against the manifest ---------------------------

def _drop_files(prefix_of):
    def change(folder, reg):
        prefix = prefix_of(reg)
        for p in sorted(folder.rglob("*"), reverse=True):
            rel = p.relative_to(folder).as_posix()
            if p.is_file() and rel.startswith(prefix):
                p.unlink()
    return change


MISSING = {
    "a logged model's files": lambda reg: f"logged_models/{_version(reg, KINDS, 1)['source_info']['model_id']}/artifacts/",
    "a run's model folder": lambda reg: f"runs/{_version(reg, KINDS, 2)['run_id']}/artifacts/model/",
    "one file of a plain-path source": lambda reg: f"sources/{_version(reg, KINDS, 3)['source_info']['key']}/artifacts/model.skops",
}


@pytest.mark.parametrize("case", list(MISSING))
def test_an_archive_lacking_a_versions_model_files_is_refused(case, kinds_archive, tmp_path):
    broken = _repack(kinds_archive, tmp_path / "broken.tar.gz", _drop_files(MISSING[case]))
    with pytest.raises(archive_mod.ArchiveError, match=r"v\d: .*(missing from the archive|not in the archive)"):
        archive_mod.verify_archive(broken)


@pytest.mark.slow
def test_restore_of_an_archive_lacking_model_files_changes_nothing(kinds_archive, tmp_path, new_store):
    broken = _repack(kinds_archive, tmp_path / "broken.tar.gz", _drop_files(MISSING["a logged model's files"]))
    uri = new_store(tmp_path / "target")
    for args in (["backup", "--verify", broken], ["restore", broken]):
        proc = mlops(*args, uri=uri, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and f"{KINDS} v1: " in lines[0], proc.stderr
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []


# ---- 5: bounds on what an archive unpacks ------------------------------------------------------

REGISTRY = json.dumps({"models": [], "experiments": {}}).encode()


def _zeros_archive(path: Path, size: int) -> Path:
    """registry.json plus one listed file of ``size`` zero bytes: a few KiB on disk."""
    zero_hash = hashlib.sha256()
    block = b"\0" * (1024 * 1024)
    for _ in range(size // len(block)):
        zero_hash.update(block)
    files = {"registry.json": {"sha256": hashlib.sha256(REGISTRY).hexdigest(), "size": len(REGISTRY)},
             "runs/r1/artifacts/zeros.bin": {"sha256": zero_hash.hexdigest(), "size": size}}
    manifest = json.dumps({"format": archive_mod.FORMAT, "format_version": archive_mod.FORMAT_VERSION,
                           "files": files}).encode()

    class Zeros:
        left = size

        def read(self, n: int = -1) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            self.left -= n
            return b"\0" * n

    with gzip.open(path, "wb", compresslevel=9) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in ((archive_mod.MANIFEST_NAME, manifest), ("registry.json", REGISTRY)):
            ti, _ = tar_file(name, data)
            tar.addfile(ti, io.BytesIO(data))
        ti = tarfile.TarInfo("runs/r1/artifacts/zeros.bin")
        ti.size = size
        tar.addfile(ti, Zeros())
    return path


def test_a_decompression_bomb_is_refused_before_anything_is_unpacked(tmp_path, cli, monkeypatch):
    bomb = _zeros_archive(tmp_path / "bomb.tar.gz", 32 * 1024 * 1024)
    assert bomb.stat().st_size < 64 * 1024
    low = archive_mod.Limits(ratio_floor_bytes=1024 * 1024)
    with pytest.raises(archive_mod.ArchiveError, match="decompression bomb"):
        archive_mod.verify_archive(bomb, limits=low)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(archive_mod.ArchiveError, match="decompression bomb"):
        archive_mod.extract_archive(bomb, parent=work, limits=low)
    assert list(work.iterdir()) == []
    with pytest.raises(archive_mod.ArchiveError, match="MLOPS_ARCHIVE_MAX_BYTES"):
        archive_mod.verify_archive(bomb, limits=archive_mod.Limits(max_bytes=1024 * 1024))
    # The CLI, with the limit lowered through the environment: one line, nothing unpacked.
    monkeypatch.setenv("MLOPS_ARCHIVE_RATIO_FLOOR_BYTES", str(1024 * 1024))
    monkeypatch.setenv("TMPDIR", str(work))
    for args in (["restore", bomb, "--dry-run"], ["backup", "--verify", bomb]):
        res = cli(*args, uri=sqlite_uri(tmp_path / "nowhere"))
        lines = res.stderr.strip().splitlines()
        assert res.exit_code != 0 and len(lines) == 1 and "decompression bomb" in lines[0], res.stderr
    assert list(work.iterdir()) == []


def test_directory_entries_and_file_counts_are_bounded(tmp_path):
    reg = tar_file("registry.json", REGISTRY)
    dirs = []
    for i in range(2000):
        ti = tarfile.TarInfo(f"runs/d{i}")
        ti.type = tarfile.DIRTYPE
        dirs.append((ti, None))
    many_dirs = build_archive(tmp_path / "dirs.tar.gz", [reg, *dirs])
    with pytest.raises(archive_mod.ArchiveError, match="directory that holds no listed file"):
        archive_mod.verify_archive(many_dirs)
    # A parent of a listed file may appear, once.
    ok_dir = tarfile.TarInfo("runs")
    ok_dir.type = tarfile.DIRTYPE
    f = tar_file("runs/a.txt", b"a")
    archive_mod.verify_archive(build_archive(tmp_path / "one.tar.gz", [reg, (ok_dir, None), f]))
    with pytest.raises(archive_mod.ArchiveError, match="appears twice"):
        archive_mod.verify_archive(build_archive(tmp_path / "twice.tar.gz", [reg, (ok_dir, None), (ok_dir, None), f]))

    files = [reg] + [tar_file(f"runs/f{i}.txt", b"x") for i in range(20)]
    many = build_archive(tmp_path / "files.tar.gz", files)
    archive_mod.verify_archive(many)
    with pytest.raises(archive_mod.ArchiveError, match="MLOPS_ARCHIVE_MAX_FILES"):
        archive_mod.verify_archive(many, limits=archive_mod.Limits(max_files=10))


def test_a_huge_version_counter_is_refused(tmp_path):
    """max_version: 100000 would have created 99,997 placeholder rows."""
    reg = {"models": [{"name": "m", "max_version": 100000, "versions": [], "aliases": {}, "tags": {}}],
           "experiments": {}}
    path = build_archive(tmp_path / "counter.tar.gz", [tar_file("registry.json", json.dumps(reg).encode())])
    with pytest.raises(archive_mod.ArchiveError, match="100000 deleted version numbers.*MAX_DELETED_VERSIONS"):
        archive_mod.verify_archive(path)
    reg["models"][0]["max_version"] = 50
    archive_mod.verify_archive(build_archive(tmp_path / "fifty.tar.gz", [tar_file("registry.json", json.dumps(reg).encode())]))
    with pytest.raises(archive_mod.ArchiveError, match="MAX_DELETED_VERSIONS"):
        archive_mod.verify_archive(tmp_path / "fifty.tar.gz", limits=archive_mod.Limits(max_deleted_versions=10))


# ---- 8: leftovers of interrupted backups ------------------------------------------------------

CHILD = """
import os, signal, sys
from pathlib import Path
from mlflow import MlflowClient
from mlops.recovery import backup
uri, out, sig = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
def die(done, total, item):
    os.kill(os.getpid(), sig)
try:
    backup.backup(MlflowClient(tracking_uri=uri, registry_uri=uri), out, on_progress=die)
except KeyboardInterrupt:
    sys.exit(130)
"""


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.slow
def test_interrupted_backups_clean_up_and_stale_leftovers_are_removed(kinds, tmp_path):
    out_dir = tmp_path / "backups"
    out_dir.mkdir()
    env = clean_env()

    def child(sig: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", CHILD, kinds["uri"], str(out_dir / "b.tar.gz"), str(sig)],
                              env=env, capture_output=True, text=True, timeout=300)

    # SIGTERM mid-backup: the staging folder is removed on the way out.
    proc = child(signal.SIGTERM)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert _leftovers(out_dir) == [] and not (out_dir / "b.tar.gz").exists()

    # SIGKILL cannot be caught: its staging folder stays, named by the dead process.
    proc = child(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    killed = _leftovers(out_dir)
    assert len(killed) == 1 and killed[0].startswith(".mlops-backup-"), killed
    # An old .partial of an older version (no pid in its name), and a fresh one of a live backup.
    old = out_dir / ".registry-20250101T000000Z.tar.gz.abcd_123.partial"
    old.write_bytes(b"partial")
    two_days = time.time() - 2 * 86400
    os.utime(old, (two_days, two_days))
    live = out_dir / f".registry-now.tar.gz.{os.getpid()}.efgh_456.partial"
    live.write_bytes(b"being written")
    unrelated = out_dir / ".keep-me"
    unrelated.write_text("not ours")

    proc = mlops("backup", "--out", out_dir / "c.tar.gz", uri=kinds["uri"], check=False)
    assert proc.returncode == 0, proc.stderr
    assert _leftovers(out_dir) == sorted([live.name, unrelated.name])
    assert f"removed leftover {out_dir / killed[0]}" in proc.stderr and "is gone" in proc.stderr
    assert f"removed leftover {old}" in proc.stderr
