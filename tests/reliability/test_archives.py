"""Malicious and damaged backups given to `mlops restore` against the stack's live tracking server
(PostgreSQL + S3): every one is refused with one line naming the problem, nothing is written
outside the test's temp folder, and the target registry (models, versions, stages, aliases, tags,
experiments, runs, logged models and the bucket's objects) is exactly what it was before.

The hostile archives are built with tests/archives.py (shared with the archive-safety tests); a real
`mlops backup` of the stack supplies the tampered and truncated ones.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.archives import build_archive, hostile_cases, repack, tar_file
from tests.reliability.conftest import MODEL

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(600)]


def registry_snapshot(stack) -> dict:
    """Everything a restore could change on the stack's tracking server and in its bucket."""
    import boto3
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=stack.uri, registry_uri=stack.uri)
    models = {}
    for rm in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{rm.name}'")
        models[rm.name] = {
            "description": rm.description, "tags": dict(rm.tags), "aliases": dict(rm.aliases),
            "versions": sorted((str(v.version), v.current_stage, v.status, v.source, v.run_id, v.description,
                                tuple(sorted(v.tags.items()))) for v in versions),
        }
    experiments = client.search_experiments(view_type=ViewType.ALL)
    exp_ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(exp_ids, run_view_type=ViewType.ALL, max_results=1000)
    logged = client.search_logged_models(experiment_ids=exp_ids, max_results=1000)
    secrets = stack.secrets()
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.ports['s3']}", region_name="us-east-1",
                      aws_access_key_id=secrets["s3_access_key"], aws_secret_access_key=secrets["s3_secret_key"])
    objects = sorted((o["Key"], o["Size"], o["ETag"]) for page in s3.get_paginator("list_objects_v2").paginate(Bucket="mlflow")
                     for o in page.get("Contents", []))
    return {
        "models": models,
        "experiments": sorted((e.experiment_id, e.name, e.lifecycle_stage, tuple(sorted(e.tags.items())))
                              for e in experiments),
        "runs": sorted((r.info.run_id, r.info.status, r.info.lifecycle_stage, len(r.data.params), len(r.data.metrics))
                       for r in runs),
        "logged_models": sorted((m.model_id, str(m.status)) for m in logged),
        "objects": objects,
    }


def _tree(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_malicious_archives_are_refused_and_the_live_registry_is_unchanged(stack, models, numbers, monkeypatch):
    from mlops.cli import _load_commands
    from mlops.cli import cli as group

    tmp = stack.root / "archives"
    built, work, cwd = tmp / "built", tmp / "work", tmp / "cwd"
    for d in (built, work, cwd):
        d.mkdir(parents=True)

    # A real backup of the live registry, then damaged copies of it.
    real = built / "registry.tar.gz"
    stack.mlops("backup", "--out", real)
    stack.mlops("backup", "--verify", real)
    cases = {name: (build_archive(built / f"{re.sub(r'[^a-z]+', '-', name)}.tar.gz", members, manifest), message)
             for name, (members, manifest, message) in hostile_cases(tmp).items()}

    def flip(name: str, data: bytes) -> bytes:
        return data[:-1] + bytes([data[-1] ^ 1]) if name.endswith("model.skops") else data

    cases["real backup, one model byte flipped"] = (repack(real, built / "tampered.tar.gz", flip),
                                                    r"checksum mismatch for '.*model\.skops'")
    truncated = built / "truncated.tar.gz"
    truncated.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    cases["real backup, truncated"] = (truncated, "truncated")
    elsewhere = Path(tempfile.gettempdir()) / f"mlops-evil-{os.urandom(6).hex()}.txt"  # outside our folder
    cases["absolute path elsewhere"] = (build_archive(built / "absolute-elsewhere.tar.gz",
                                               [tar_file("registry.json", b"{}"), tar_file(str(elsewhere), b"x")]),
                                        "unsafe path")
    listing = _tree(built)

    before = registry_snapshot(stack)
    assert MODEL in before["models"] and before["objects"]

    # The console script once, with its temp dir and working dir under our eyes ...
    evil, message = cases["traversal"]
    proc = stack.mlops("restore", evil, check=False, TMPDIR=str(work))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and re.search(message, lines[0]) and lines[0].startswith("error: "), \
        proc.stderr

    # ... and every case in-process through the same click command (no interpreter start-up each).
    _load_commands()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.uri)
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    monkeypatch.chdir(cwd)
    for name, (path, message) in cases.items():
        for args in (["restore", str(path)], ["restore", str(path), "--dry-run"]):
            res = CliRunner().invoke(group, args, prog_name="mlops")
            lines = res.stderr.strip().splitlines()
            assert res.exit_code != 0, (name, args, res.output)
            assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(message, lines[0]), (name, res.stderr)

    after = registry_snapshot(stack)
    assert after == before
    # Nothing was written anywhere: no extraction folder left, no file escaped.
    assert _tree(work) == [] and _tree(cwd) == []
    assert _tree(built) == listing
    assert not list(tmp.rglob("outside.txt")) and not elsewhere.exists()
    numbers("malicious archives", f"{len(cases)} refused by `mlops restore` (+ --dry-run), live registry unchanged "
                                  f"({sum(len(m['versions']) for m in before['models'].values())} versions, "
                                  f"{len(before['runs'])} runs, {len(before['objects'])} bucket objects compared)")
