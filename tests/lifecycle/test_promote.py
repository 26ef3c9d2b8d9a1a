"""promote / rollback / history / status: pre-flight, stage + alias together, a history that alternates."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from mlops import registry
from mlops.recovery.backup import tracking_uri_set
from tests.lifecycle import registry_data
from tests.lifecycle.conftest import mlops

pytestmark = pytest.mark.slow


def _state(client, name: str) -> dict:
    rm = client.get_registered_model(name)
    versions = client.search_model_versions(f"name = '{name}'")
    return {
        "stages": {str(v.version): v.current_stage for v in versions},
        "aliases": {a: str(v) for a, v in rm.aliases.items()},
        "history": rm.tags.get(registry.HISTORY_TAG),
    }


@pytest.fixture(scope="module")
def promo_store(source_registry, new_store, tmp_path_factory):
    """A store with two logged models: a good copy of the trained model and a corrupted one."""
    folder = tmp_path_factory.mktemp("promo")
    uri = new_store(folder)
    client = registry.get_client(uri)
    src = registry.get_client(source_registry["uri"])
    v1 = src.get_model_version(registry_data.NAME, "1")
    ids = {}
    with tempfile.TemporaryDirectory() as tmp, tracking_uri_set(uri):
        good = registry_data.download_logged_model(src, v1.source.split("/")[-1], Path(tmp) / "good")
        broken = Path(tmp) / "broken"
        shutil.copytree(good, broken)
        (broken / "model.skops").write_bytes(b"not a model at all")
        exp = client.create_experiment("promo", artifact_location=(folder / "artifacts" / "promo").as_uri())
        for key, files in (("good", good), ("broken", broken)):
            lm = client.create_logged_model(exp, name="model")
            client.log_model_artifacts(lm.model_id, str(files))
            client.finalize_logged_model(lm.model_id, "READY")
            ids[key] = lm.model_id
    return uri, client, ids


@pytest.fixture()
def promo(promo_store, request):
    """A fresh registered model named after the test: v1, v2, v4 good, v3 broken."""
    uri, client, ids = promo_store
    name = "promo-" + request.node.name.removeprefix("test_")[:40].replace("_", "-")
    with tracking_uri_set(uri):
        client.create_registered_model(name)
        for key in ("good", "good", "broken", "good"):
            client.create_model_version(name, f"models:/{ids[key]}", model_id=ids[key])
    return uri, client, name


def test_promote_with_a_broken_version_is_refused_and_changes_nothing(promo):
    uri, client, name = promo
    registry.promote(client, name, 1, registry.PRODUCTION, "baseline", notify=False)
    before = _state(client, name)
    with pytest.raises(registry.RegistryError, match=f"pre-flight failed for {name} v3, nothing changed"):
        registry.promote(client, name, 3, registry.PRODUCTION, notify=False)
    assert _state(client, name) == before
    proc = mlops("promote", name, "3", "--stage", "staging", uri=uri, check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and lines[-1].startswith(f"error: pre-flight failed for {name} v3"), proc.stderr
    assert _state(client, name) == before


def test_promote_and_rollback_alternate_and_keep_stage_and_alias_together(promo, cli):
    uri, client, name = promo
    with pytest.raises(registry.RegistryError, match=f"no promotion history for '{name}'"):
        registry.rollback(client, name)
    registry.promote(client, name, 1, registry.PRODUCTION, "first", notify=False)
    with pytest.raises(registry.RegistryError, match="had no Production version before v1"):
        registry.rollback(client, name)
    registry.promote(client, name, 4, registry.STAGING, "candidate", notify=False)
    assert _state(client, name)["aliases"] == {"production": "1", "staging": "4"}
    registry.promote(client, name, 2, registry.PRODUCTION, "second", notify=False)
    state = _state(client, name)
    assert state["stages"] == {"1": "Archived", "2": "Production", "3": "None", "4": "Staging"}
    assert state["aliases"] == {"production": "2", "staging": "4"}

    proc = mlops("rollback", name, "--reason", "bad canary", uri=uri)
    assert f"rolled back: {name} v1 is now Production" in proc.stdout and "was v2" in proc.stdout
    assert _state(client, name)["aliases"]["production"] == "1"
    res = registry.rollback(client, name)  # again: alternates back
    assert (res.from_version, res.to_version) == ("1", "2")
    res = registry.rollback(client, name)
    assert (res.from_version, res.to_version) == ("2", "1")
    with pytest.raises(registry.RegistryError, match="already in Production"):
        registry.rollback(client, name, to=1)

    # The Staging version promoted to Production: stage and alias move, the staging alias goes.
    registry.promote(client, name, 4, registry.PRODUCTION, "ship the candidate", notify=False)
    state = _state(client, name)
    assert state["aliases"] == {"production": "4"} and state["stages"]["4"] == "Production"
    assert list(state["stages"].values()).count("Production") == 1

    res = cli("history", name, "--json", uri=uri)
    entries = json.loads(res.stdout)
    assert [(e["action"], e["stage"], e["from_version"], e["to_version"]) for e in entries] == [
        ("promote", "Production", None, "1"), ("promote", "Staging", None, "4"),
        ("promote", "Production", "1", "2"), ("rollback", "Production", "2", "1"),
        ("rollback", "Production", "1", "2"), ("rollback", "Production", "2", "1"),
        ("promote", "Production", "1", "4"),
    ]
    assert entries[3]["reason"] == "bad canary" and all(e["user"] and e["time"] for e in entries)
    table = cli("history", name, uri=uri).stdout
    assert "rollback" in table and "bad canary" in table
    status = json.loads(cli("status", name, "--json", uri=uri).stdout)
    rows = {v["version"]: v for v in status["models"][0]["versions"]}
    assert rows["4"]["aliases"] == ["production"] and rows["4"]["stage"] == "Production"


def test_history_is_bounded_and_reasons_are_clipped(promo):
    _, client, name = promo
    for i in range(20):
        registry.promote(client, name, 1 + (i % 2), registry.PRODUCTION, "x" * 1000, preflight=False, notify=False)
    entries = registry.history(client, name)
    assert 5 <= len(entries) < 20 and entries[-1].to_version == "2"
    assert len(client.get_registered_model(name).tags[registry.HISTORY_TAG]) <= registry.HISTORY_MAX_CHARS
    assert all(len(e.reason) <= registry.REASON_MAX_CHARS for e in entries)


def test_cli_errors_are_one_line(promo, cli, tmp_path):
    uri, _, name = promo
    for args, message in (
        (["promote", name, "99"], f"model '{name}' has no version 99"),
        (["promote", "no-such-model", "1"], "registered model 'no-such-model' does not exist"),
        (["rollback", name, "--to", "99"], f"model '{name}' has no version 99"),
        (["restore", "/nonexistent/backup.tar.gz"], "archive not found: /nonexistent/backup.tar.gz"),
        (["backup", "--models", "nope", "--out", tmp_path / "x.tar.gz"], "'nope' does not exist"),
    ):
        res = cli(*args, uri=uri)
        lines = res.stderr.strip().splitlines()
        assert res.exit_code != 0, args
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, res.stderr)
    assert not (tmp_path / "x.tar.gz").exists()


def test_promoting_the_production_version_again_changes_nothing_and_rollback_still_works(promo):
    uri, client, name = promo
    registry.promote(client, name, 1, registry.PRODUCTION, "first", notify=False)
    registry.promote(client, name, 2, registry.PRODUCTION, "second", notify=False)
    before = _state(client, name)
    proc = mlops("promote", name, "2", uri=uri)
    assert proc.returncode == 0
    assert f"nothing to do: {name} v2 is already in Production" in proc.stdout, proc.stdout
    assert _state(client, name) == before  # no 2 -> 2 history entry, stages and aliases as they were
    res = registry.rollback(client, name)
    assert (res.from_version, res.to_version) == ("2", "1")


def test_rollback_skips_no_op_entries_already_in_the_history(promo):
    """Registries written by older releases may hold a 2 -> 2 entry after the real 1 -> 2."""
    uri, client, name = promo
    registry.promote(client, name, 1, registry.PRODUCTION, "first", notify=False)
    registry.promote(client, name, 2, registry.PRODUCTION, "second", notify=False)
    entries = registry.history(client, name)
    entries.append(registry.HistoryEntry("2026-01-01T00:00:00Z", "old", "promote", registry.PRODUCTION,
                                         "2", "2", "re-promoted by an older release"))
    registry._write_history(client, name, entries)
    proc = mlops("rollback", name, uri=uri)
    assert f"rolled back: {name} v1 is now Production" in proc.stdout, proc.stdout + proc.stderr
    assert _state(client, name)["aliases"]["production"] == "1"
