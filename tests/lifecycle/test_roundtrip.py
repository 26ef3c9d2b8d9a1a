"""Backup → restore into an empty registry reproduces everything, field by field."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlops import registry
from mlops.recovery import archive as archive_mod
from mlops.recovery import backup as backup_mod
from mlops.recovery import restore as restore_mod
from mlops.recovery import sql_rows
from tests.helpers import start_mlflow_server
from tests.lifecycle import registry_data
from tests.lifecycle.conftest import mlops
from tests.lifecycle.registry_data import NAME, OTHER, PENGUINS

pytestmark = pytest.mark.slow


def _registry_json(path: Path) -> dict:
    with tarfile.open(path, "r:gz") as tar:
        return json.load(tar.extractfile("registry.json"))


def _assert_same(source: dict, restored: dict) -> None:
    problems = registry_data.diff(source, restored)
    assert not problems, "restored registry differs:\n" + "\n".join(problems[:30])


def _assert_penguins(source_registry: dict, uri: str, counter_db: str | None = None) -> None:
    """The mixed-type multiclass model came back whole, and predicts the raw rows (strings, nulls,
    unseen categories) with the same labels and bit-identical probabilities."""
    _assert_same(source_registry["penguins_snapshot"], registry_data.snapshot(uri, PENGUINS, counter_db))
    assert registry_data.penguin_predictions(uri) == source_registry["penguins"]


def _served(tmp_path: Path):
    """A real tracking server on SQLite with proxied artifacts: (context, URI, database URI, store folder)."""
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    store = tmp_path / "served"
    ctx, port = start_mlflow_server(backend, tmp_path, artifacts_destination=str(store))
    return ctx, f"http://127.0.0.1:{port}", backend, store


def _counts(uri: str) -> tuple[int, int]:
    client = MlflowClient(tracking_uri=uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, max_results=1000)
    lms = client.search_logged_models(exps, max_results=100)
    return len(runs), len(lms)


def test_fixture_has_what_the_round_trip_must_show(source_registry):
    snap = source_registry["snapshot"]
    live = [n for n, v in snap["versions"].items() if v]
    assert len(live) >= 12 and snap["counter"] == registry_data.MAX_VERSION
    assert [n for n, v in snap["versions"].items() if v is None][:5] == list(registry_data.DELETED)
    assert {v["stage"] for v in snap["versions"].values() if v} == {"None", "Staging", "Production", "Archived"}
    assert snap["aliases"] == {"production": "12", "staging": "11", "challenger": "13"}
    assert {v["run"]["experiment"] for v in snap["versions"].values() if v} == {"lc-exp-a", "lc-exp-b"}
    assert {v["source_kind"] for v in snap["versions"].values() if v} == {"logged_model", "run"}
    assert registry.HISTORY_TAG in snap["tags"]
    penguins = source_registry["penguins_snapshot"]["versions"][1]
    inputs = {c["name"]: c for c in json.loads(penguins["signature"]["inputs"])}
    assert inputs["island"]["type"] == "string" and inputs["sex"]["type"] == "string"
    assert not inputs["sex"]["required"] and not inputs["bill_length_mm"]["required"]
    assert source_registry["penguins"]["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    assert len(set(source_registry["penguins"]["labels"])) == 3
    rows = registry_data.penguin_rows()
    assert rows.isna().any(axis=1).sum() >= 5 and "Anvers" in set(rows["island"])


def test_backup_archive_records_numbers_as_integers_and_verifies(archive):
    proc = mlops("backup", "--verify", archive)
    assert proc.stdout.startswith("archive OK")
    manifest = archive_mod.verify_archive(archive)
    assert manifest["mlflow_version"] and manifest["source_tracking_uri"].startswith("sqlite:")
    model = next(m for m in _registry_json(archive)["models"] if m["name"] == NAME)
    assert [v["version"] for v in model["versions"]] == sorted(
        set(range(1, 19)) - set(registry_data.DELETED))
    assert model["deleted_versions"] == list(registry_data.DELETED) and model["max_version"] == 18
    v12 = next(v for v in model["versions"] if v["version"] == 12)
    assert v12["stage"] == "Production" and v12["aliases"] == ["production"]
    assert v12["signature"]["inputs"]


def test_verify_refuses_backup_options_on_the_command_line_but_not_from_the_environment(archive, tmp_path):
    """A backup job's environment (storage credentials) must not break `backup --verify`."""
    proc = mlops("backup", "--verify", archive, "--out", tmp_path / "x.tar.gz", check=False)
    assert proc.returncode != 0 and "takes no --out" in proc.stderr, proc.stderr
    proc = mlops("backup", "--verify", archive, MLOPS_BACKEND_STORE_URI="sqlite:///nowhere.db",
                 MLOPS_ARTIFACTS_DESTINATION=str(tmp_path))
    assert proc.stdout.startswith("archive OK"), proc.stdout + proc.stderr


def test_round_trip_into_empty_sqlite_store(source_registry, archive, tmp_path, new_store, cli):
    uri = new_store(tmp_path)
    dry = mlops("restore", archive, "--dry-run", uri=uri)
    assert "nothing was changed" in dry.stdout and "deleted 4,7,8,17,18" in dry.stdout
    assert MlflowClient(tracking_uri=uri).search_registered_models() == []

    proc = mlops("restore", archive, uri=uri)
    assert "3 models" in proc.stdout, proc.stdout
    _assert_same(source_registry["snapshot"], registry_data.snapshot(uri, NAME))
    assert registry_data.predictions(uri, NAME) == source_registry["predictions"]
    _assert_penguins(source_registry, uri)
    client = registry.get_client(uri)
    src = registry.get_client(source_registry["uri"])
    assert registry.history(client, NAME) == registry.history(src, NAME) and len(registry.history(client, NAME)) == 3
    assert {a: str(v) for a, v in client.get_registered_model(OTHER).aliases.items()} == {"production": "2"}

    # A completed restore leaves no mark: running it again finds the models in the target and
    # changes nothing.
    assert registry_data.restore_tags(uri) == []
    counts = _counts(uri)
    again = cli("restore", archive, uri=uri)
    assert again.exit_code != 0 and "already in the target registry" in again.stderr
    assert _counts(uri) == counts == (4, 3)
    # Into a registry that has these models from elsewhere: refused as a whole, one line.
    clash = cli("restore", archive, uri=source_registry["uri"])
    assert clash.exit_code != 0
    assert clash.stderr.strip().splitlines() == [
        f"error: already in the target registry: {NAME}, {OTHER}, {PENGUINS} (use --if-exists skip, or restore into "
        "an empty server); nothing was changed"]
    skip = cli("restore", archive, "--if-exists", "skip", uri=source_registry["uri"])
    assert "0 models" in skip.stdout and skip.stdout.count("skipped") == 3


def test_interrupted_restore_finishes_on_rerun_without_duplicates(source_registry, archive, tmp_path, monkeypatch,
                                                                  new_store):
    """Through MLflow's API calls (as into a server without its database): a restore interrupted
    anywhere is finished by running it again."""
    uri = new_store(tmp_path)
    client = registry.get_client(uri)

    # 1st attempt: uploading one run's artifacts breaks; the model using that run is not touched,
    # the other model is restored completely.
    real_upload, real_create = restore_mod._Restorer.upload, MlflowClient.create_model_version

    def flaky_upload(self, artifact_uri, local_dir):
        if local_dir.name == "artifacts" and (local_dir / "extra").is_dir():
            raise OSError("connection reset while uploading")
        return real_upload(self, artifact_uri, local_dir)

    monkeypatch.setattr(restore_mod._Restorer, "upload", flaky_upload)
    with pytest.raises(restore_mod.RestoreError) as err:
        restore_mod.restore(client, archive, workers=2, database=False)
    assert any("connection reset" in f for f in err.value.failures)
    assert any(f.startswith(f"model {NAME}: not restored") for f in err.value.failures)
    assert sorted(m.name for m in client.search_registered_models()) == [OTHER, PENGUINS]

    # 2nd attempt: the process "dies" after five versions of the big model.
    monkeypatch.setattr(restore_mod._Restorer, "upload", real_upload)
    calls = {"n": 0}

    def dying_create(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 5:
            raise ConnectionError("server went away")
        return real_create(self, *a, **kw)

    monkeypatch.setattr(MlflowClient, "create_model_version", dying_create)
    with pytest.raises(restore_mod.RestoreError, match="server went away"):
        restore_mod.restore(client, archive, workers=2, database=False)
    assert restore_mod.IN_PROGRESS_TAG in client.get_registered_model(NAME).tags

    # 3rd attempt without faults finishes the job; nothing is duplicated.
    monkeypatch.setattr(MlflowClient, "create_model_version", real_create)
    res = restore_mod.restore(client, archive, workers=2, database=False)
    assert res.models == [NAME] and sorted(res.already) == [OTHER, PENGUINS]
    assert res.runs_reused == 3 and res.logged_models_reused == 2  # the runs lc-model uses
    assert _counts(uri) == (4, 3)
    _assert_same(source_registry["snapshot"], registry_data.snapshot(uri, NAME))
    # The resume state is gone once the restore has completed: no tag the source did not have.
    assert registry_data.restore_tags(uri) == []


def test_restore_selected_models_only(archive, tmp_path, new_store, cli):
    uri = new_store(tmp_path)
    assert cli("restore", archive, "--models", OTHER, uri=uri).exit_code == 0
    client = MlflowClient(tracking_uri=uri)
    assert [m.name for m in client.search_registered_models()] == [OTHER]
    assert sorted(int(v.version) for v in client.search_model_versions(f"name = '{OTHER}'")) == [1, 2]
    bad = cli("restore", archive, "--models", "nope", uri=uri)
    assert bad.exit_code != 0 and bad.stderr.startswith("error: not in the archive: nope")


def test_round_trip_through_a_tracking_server_with_proxied_artifacts(source_registry, archive, tmp_path, new_store):
    """Restore into a server (mlflow-artifacts: storage), then back up through it and restore that."""
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    ctx, port = start_mlflow_server(backend, tmp_path, artifacts_destination=str(tmp_path / "served"))
    with ctx:
        uri = f"http://127.0.0.1:{port}"
        proc = mlops("restore", archive, uri=uri)
        assert "runs 4 created" in proc.stdout, proc.stdout
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("lc-exp-a")
        assert exp.artifact_location.startswith("mlflow-artifacts:")
        _assert_same(source_registry["snapshot"], registry_data.snapshot(uri, NAME, backend))
        assert registry_data.predictions(uri, NAME) == source_registry["predictions"]
        _assert_penguins(source_registry, uri, backend)

        second = tmp_path / "second.tar.gz"
        mlops("backup", "--out", second, "--backend-store-uri", backend, uri=uri)
        # Without the database, deleted numbers above the top live version are invisible: said so.
        res = backup_mod.backup(MlflowClient(tracking_uri=uri, registry_uri=uri), tmp_path / "other.tar.gz",
                                [OTHER])
        assert res.versions == 2 and any("--backend-store-uri" in w for w in res.warnings)
    target = new_store(tmp_path / "target")
    mlops("restore", second, uri=target)
    _assert_same(source_registry["snapshot"], registry_data.snapshot(target, NAME))
    assert registry_data.predictions(target, NAME) == source_registry["predictions"]
    _assert_penguins(source_registry, target)


def test_round_trip_with_the_artifact_store_read_and_written_directly(source_registry, archive, tmp_path, new_store,
                                                                       monkeypatch):
    """--artifacts-destination: files go straight to the server's store (no upload or download
    through its proxy), metadata through the server; a wrong destination is refused up front."""
    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository

    ctx, uri, backend, store = _served(tmp_path)
    with ctx:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)

        # A destination the server does not serve from: one line, nothing created.
        elsewhere = tmp_path / "elsewhere"
        proc = mlops("restore", archive, "--artifacts-destination", elsewhere, uri=uri, check=False)
        assert proc.returncode != 0 and "does not serve files from" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and client.search_registered_models() == []
        assert not any(p.is_file() for p in elsewhere.rglob("*")), "the probe file was left behind"

        def through_proxy(*_a, **_k):
            raise AssertionError("an artifact went through the server's proxy")

        with monkeypatch.context() as m:
            m.setattr(HttpArtifactRepository, "log_artifact", through_proxy)
            m.setattr(HttpArtifactRepository, "log_artifacts", through_proxy)
            res = restore_mod.restore(client, archive, artifacts_destination=str(store))
        assert res.runs_created == 4, res
        assert not (store / "mlops-probe").exists()
        _assert_same(source_registry["snapshot"], registry_data.snapshot(uri, NAME, backend))
        assert registry_data.predictions(uri, NAME) == source_registry["predictions"]
        _assert_penguins(source_registry, uri, backend)

        second = tmp_path / "second.tar.gz"
        with monkeypatch.context() as m:
            m.setattr(HttpArtifactRepository, "_download_file", through_proxy)
            backup_mod.backup(client, second, backend_store_uri=backend, artifacts_destination=str(store))
        proc = mlops("backup", "--out", tmp_path / "wrong.tar.gz", "--artifacts-destination", elsewhere,
                     uri=uri, check=False)
        assert proc.returncode != 0 and "does not serve files from" in proc.stderr, proc.stderr
        assert not (tmp_path / "wrong.tar.gz").exists()
    target = new_store(tmp_path / "target")
    mlops("restore", second, uri=target)
    _assert_same(source_registry["snapshot"], registry_data.snapshot(target, NAME))
    assert registry_data.predictions(target, NAME) == source_registry["predictions"]
    _assert_penguins(source_registry, target)


def _no_api_writes(monkeypatch) -> None:
    """Make every MLflow write call that a restore through the API would make fail loudly."""
    def through_api(*_a, **_k):
        raise AssertionError("a row went through MLflow's API instead of the database")

    for method in ("create_run", "log_batch", "set_terminated", "create_logged_model", "finalize_logged_model",
                   "create_model_version", "transition_model_version_stage", "set_registered_model_alias"):
        monkeypatch.setattr(MlflowClient, method, through_api)


def test_round_trip_into_a_server_through_its_database(source_registry, archive, tmp_path, new_store, monkeypatch):
    """--backend-store-uri: every row written into the server's own database in one transaction
    (files straight into its store); the wrong database, or one at another schema revision, is
    refused before anything changes; the server then serves the restored registry."""
    import sqlite3

    ctx, uri, backend, store = _served(tmp_path)
    with ctx:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)

        # Another store's database: one line, nothing created.
        other = new_store(tmp_path / "other")
        proc = mlops("restore", archive, "--backend-store-uri", other, "--artifacts-destination", store, uri=uri,
                     check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(
            "error: the database given with --backend-store-uri (MLOPS_BACKEND_STORE_URI) is not the one"), proc.stderr
        # A database at another schema revision (e.g. a server of another MLflow version): refused.
        old = tmp_path / "old" / "mlruns" / "mlflow.db"
        old.parent.mkdir(parents=True)
        old.write_bytes((tmp_path / "server.db").read_bytes())
        with sqlite3.connect(old) as con:
            con.execute("UPDATE alembic_version SET version_num = '0000aaaa0000'")
        proc = mlops("restore", archive, "--backend-store-uri", f"sqlite:///{old}", uri=uri, check=False)
        assert proc.returncode != 0 and "schema revision 0000aaaa0000" in proc.stderr, proc.stderr
        assert client.search_registered_models() == [] and _counts(uri) == (0, 0)

        with monkeypatch.context() as m:
            _no_api_writes(m)
            res = restore_mod.restore(client, archive, backend_store_uri=backend, artifacts_destination=str(store))
        assert (res.runs_created, res.logged_models_created, res.placeholders) == (4, 3, 5), res
        # The server serves what was written behind its back: numbers, gaps, counter, stages, runs, files.
        _assert_same(source_registry["snapshot"], registry_data.snapshot(uri, NAME, backend))
        assert registry_data.predictions(uri, NAME) == source_registry["predictions"]
        _assert_penguins(source_registry, uri, backend)
        assert registry.history(client, NAME) == registry.history(registry.get_client(source_registry["uri"]), NAME)
        # And the server goes on numbering after the restored counter.
        src = client.get_model_version(OTHER, "2").source
        mv = client.create_model_version(OTHER, src, model_id=src.split("/")[1], await_creation_for=0)
        assert int(mv.version) == 3

        assert registry_data.restore_tags(uri) == []
        again = mlops("restore", archive, "--backend-store-uri", backend, uri=uri, check=False)
        assert again.returncode != 0 and "already in the target registry" in again.stderr


def test_a_restore_into_the_database_is_all_or_nothing(source_registry, archive, tmp_path, new_store, monkeypatch):
    """One transaction: when a row cannot be written (here another user creates the same model
    between the check and the write), nothing of the restore is in the database; the next run
    does the whole job."""
    uri = new_store(tmp_path)
    client = registry.get_client(uri)
    real = sql_rows.RowBuilder.registered_model

    def racing(self, m, *a, **kw):
        if m["name"] == NAME and not client.search_registered_models(f"name = '{NAME}'"):
            client.create_registered_model(NAME, description="created meanwhile by someone else")
        return real(self, m, *a, **kw)

    monkeypatch.setattr(sql_rows.RowBuilder, "registered_model", racing)
    with pytest.raises(restore_mod.RestoreError, match="nothing was written to it") as err:
        restore_mod.restore(client, archive)
    assert "\n" not in str(err.value)
    assert [m.name for m in client.search_registered_models()] == [NAME]  # only the other user's model
    assert client.get_registered_model(NAME).description == "created meanwhile by someone else"
    assert _counts(uri) == (0, 0)  # no run, no logged model of the failed restore

    monkeypatch.setattr(sql_rows.RowBuilder, "registered_model", real)
    client.delete_registered_model(NAME)
    res = restore_mod.restore(client, archive)
    assert sorted(res.models) == [NAME, OTHER, PENGUINS]
    assert _counts(uri) == (4, 3)
    _assert_same(source_registry["snapshot"], registry_data.snapshot(uri, NAME))
