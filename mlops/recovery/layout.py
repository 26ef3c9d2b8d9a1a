"""The backup archive's layout: where each record and file lives, and what each record holds.

Backup writes these records (the builders below are the only place they are shaped); both restore
paths (:mod:`mlops.recovery.restore_api`, :mod:`mlops.recovery.restore_sql`) and the archive's
checks (:mod:`mlops.recovery.safety`) read them. Paths are POSIX paths relative to the archive's
root::

    manifest.json                                  sha256 and size of every other file (first member)
    registry.json                                  RegistryRecord: models, versions, experiments
    runs/<run_id>/run.json                         RunRecord
    runs/<run_id>/artifacts/...                    the run's artifacts
    logged_models/<model_id>/logged_model.json     LoggedModelRecord
    logged_models/<model_id>/artifacts/...         the logged model's files
    sources/<key>/source.json                      SourceRecord (a plain-path source)
    sources/<key>/artifacts/...                    its files
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any, TypedDict

MANIFEST_NAME = "manifest.json"
REGISTRY_NAME = "registry.json"
RUNS, LOGGED_MODELS, SOURCES, ARTIFACTS = "runs", "logged_models", "sources", "artifacts"
LOGGED_MODEL_SOURCE = re.compile(r"^models:/(m-[0-9a-f]+)/?$")


# ---- paths -------------------------------------------------------------------------------------
def run_dir(run_id: str) -> str:
    """Folder of one source run."""
    return f"{RUNS}/{run_id}"


def run_json(run_id: str) -> str:
    """The run's record."""
    return f"{run_dir(run_id)}/run.json"


def run_artifacts(run_id: str) -> str:
    """The run's artifacts."""
    return f"{run_dir(run_id)}/{ARTIFACTS}"


def logged_model_dir(model_id: str) -> str:
    """Folder of one logged model."""
    return f"{LOGGED_MODELS}/{model_id}"


def logged_model_json(model_id: str) -> str:
    """The logged model's record."""
    return f"{logged_model_dir(model_id)}/logged_model.json"


def logged_model_artifacts(model_id: str) -> str:
    """The logged model's files."""
    return f"{logged_model_dir(model_id)}/{ARTIFACTS}"


def source_dir(key: str) -> str:
    """Folder of one plain-path source."""
    return f"{SOURCES}/{key}"


def source_json(key: str) -> str:
    """The plain-path source's record."""
    return f"{source_dir(key)}/source.json"


def source_artifacts(key: str) -> str:
    """The plain-path source's files."""
    return f"{source_dir(key)}/{ARTIFACTS}"


# ---- records -----------------------------------------------------------------------------------
class SourceInfo(TypedDict, total=False):
    """Where a version's model files come from: ``kind`` is logged_model, run, files or none."""

    kind: str
    model_id: str  # logged_model
    path: str  # run: the artifact path inside the run
    key: str  # files: sources/<key>/


class VersionRecord(TypedDict, total=False):
    """One model version in ``registry.json``."""

    version: int
    stage: str
    description: str
    tags: dict[str, str]
    status: str
    status_message: str | None
    run_id: str | None
    run_link: str | None
    source: str
    source_info: SourceInfo
    user_id: str | None
    creation_timestamp: int
    last_updated_timestamp: int
    aliases: list[str]
    signature: dict | None
    model_files: dict[str, str]


class ModelRecord(TypedDict):
    """One registered model in ``registry.json``; ``max_version`` counts deleted numbers too."""

    name: str
    description: str
    tags: dict[str, str]
    aliases: dict[str, str]
    creation_timestamp: int
    last_updated_timestamp: int
    max_version: int
    max_version_exact: bool
    deleted_versions: list[int]
    versions: list[VersionRecord]


class ExperimentRecord(TypedDict):
    """One experiment a backed-up run or logged model belongs to."""

    name: str
    tags: dict[str, str]
    lifecycle_stage: str
    artifact_location: str


class RegistryRecord(TypedDict):
    """``registry.json``."""

    backup_id: str
    created: str
    mlflow_version: str
    source_tracking_uri: str
    models: list[ModelRecord]
    experiments: dict[str, ExperimentRecord]


class RunRecord(TypedDict):
    """``runs/<run_id>/run.json``: metric histories are ``[value, timestamp, step]`` lists."""

    run_id: str
    experiment_id: str
    run_name: str | None
    user_id: str | None
    status: str
    start_time: int | None
    end_time: int | None
    lifecycle_stage: str
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, list[list]]
    dataset_inputs: list[dict]
    model_inputs: list[str]
    model_outputs: list[dict]


class LoggedModelRecord(TypedDict):
    """``logged_models/<model_id>/logged_model.json``."""

    model_id: str
    name: str
    experiment_id: str
    source_run_id: str | None
    model_type: str | None
    status: str
    status_message: str | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: list[dict]
    artifact_location: str
    creation_timestamp: int | None


class SourceRecord(TypedDict):
    """``sources/<key>/source.json``."""

    source: str


# ---- builders (backup) -------------------------------------------------------------------------
def run_record(run: Any, metrics: dict[str, list]) -> RunRecord:
    """The record of an MLflow run, with its metric histories."""
    info, data = run.info, run.data
    datasets = [
        {
            "dataset": {
                "name": di.dataset.name, "digest": di.dataset.digest, "source_type": di.dataset.source_type,
                "source": di.dataset.source, "schema": di.dataset.schema, "profile": di.dataset.profile,
            },
            "tags": {t.key: t.value for t in di.tags},
        }
        for di in (run.inputs.dataset_inputs if run.inputs else [])
    ]
    model_inputs = [m.model_id for m in (getattr(run.inputs, "model_inputs", None) or [])]
    model_outputs = [
        {"model_id": m.model_id, "step": m.step} for m in (getattr(run.outputs, "model_outputs", None) or [])
    ] if run.outputs else []
    return {
        "run_id": info.run_id, "experiment_id": info.experiment_id, "run_name": info.run_name,
        "user_id": info.user_id, "status": info.status, "start_time": info.start_time,
        "end_time": info.end_time, "lifecycle_stage": info.lifecycle_stage,
        "artifact_uri": info.artifact_uri, "params": dict(data.params), "tags": dict(data.tags),
        "metrics": {k: metrics.get(k, []) for k in sorted(data.metrics)}, "dataset_inputs": datasets,
        "model_inputs": model_inputs, "model_outputs": model_outputs,
    }


def logged_model_record(lm: Any) -> LoggedModelRecord:
    """The record of an MLflow 3 logged model."""
    status = getattr(lm.status, "value", None) or str(lm.status)
    return {
        "model_id": lm.model_id, "name": lm.name, "experiment_id": lm.experiment_id,
        "source_run_id": lm.source_run_id, "model_type": lm.model_type, "status": status,
        "status_message": lm.status_message, "tags": dict(lm.tags or {}), "params": dict(lm.params or {}),
        "metrics": [
            {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step, "run_id": m.run_id,
             "dataset_name": m.dataset_name, "dataset_digest": m.dataset_digest}
            for m in (lm.metrics or [])
        ],
        "artifact_location": lm.artifact_location, "creation_timestamp": lm.creation_timestamp,
    }


def source_info(mv: Any, run_artifact_uri: str | None) -> SourceInfo:
    """How a version's source will be restored: logged model, run artifact path, or plain files."""
    source = mv.source or ""
    m = LOGGED_MODEL_SOURCE.match(source)
    if m:
        return {"kind": "logged_model", "model_id": m.group(1)}
    if mv.run_id and source.startswith(f"runs:/{mv.run_id}"):
        return {"kind": "run", "path": source[len(f"runs:/{mv.run_id}"):].strip("/")}
    if mv.run_id and run_artifact_uri and (source == run_artifact_uri or source.startswith(run_artifact_uri.rstrip("/") + "/")):
        return {"kind": "run", "path": source[len(run_artifact_uri):].strip("/")}
    if not source:
        return {"kind": "none"}
    return {"kind": "files", "key": hashlib.sha256(source.encode()).hexdigest()[:16]}


def model_record(rm: Any, versions: Iterable[Any], max_used: int, exact: bool) -> ModelRecord:
    """A registered model's record, without its versions yet (``deleted_versions`` from ``max_used``)."""
    live = {int(v.version) for v in versions}
    return {
        "name": rm.name,
        "description": rm.description or "",
        "tags": dict(rm.tags or {}),
        "aliases": {a: str(v) for a, v in sorted((rm.aliases or {}).items())},
        "creation_timestamp": rm.creation_timestamp,
        "last_updated_timestamp": rm.last_updated_timestamp,
        "max_version": max_used,
        "max_version_exact": exact,
        "deleted_versions": [n for n in range(1, max_used + 1) if n not in live],
        "versions": [],
    }


def version_record(mv: Any, src: SourceInfo, model_aliases: dict[str, str]) -> VersionRecord:
    """A model version's record (``signature`` and ``model_files`` are added once its files are in)."""
    return {
        "version": int(mv.version), "stage": mv.current_stage or "None",
        "description": mv.description or "", "tags": dict(mv.tags or {}),
        "status": mv.status, "status_message": mv.status_message, "run_id": mv.run_id,
        "run_link": mv.run_link, "source": mv.source, "source_info": src,
        "user_id": mv.user_id, "creation_timestamp": mv.creation_timestamp,
        "last_updated_timestamp": mv.last_updated_timestamp,
        "aliases": sorted(a for a, v in model_aliases.items() if v == str(mv.version)),
    }


def experiment_record(exp: Any) -> ExperimentRecord:
    """An experiment's record."""
    return {"name": exp.name, "tags": dict(exp.tags or {}), "lifecycle_stage": exp.lifecycle_stage,
            "artifact_location": exp.artifact_location}


# ---- readers (both restore paths, the checks) -----------------------------------------------------
def model_dir(v: VersionRecord) -> str:
    """The folder inside the archive that holds a version's model files (``MLmodel`` on top)."""
    src = v["source_info"]
    if src["kind"] == "logged_model":
        return logged_model_artifacts(src["model_id"])
    if src["kind"] == "run":
        base = run_artifacts(v["run_id"])
        return f"{base}/{src['path']}" if src.get("path") else base
    return source_artifacts(src["key"])


def legacy_source_dir(files: Iterable[str], base: str) -> str | None:
    """``base/<one folder>`` when an older backup put a plain-path source one folder too deep."""
    tops = {n[len(base) + 1:].split("/", 1)[0] for n in files if n.startswith(base + "/")}
    if len(tops) == 1:
        return f"{base}/{tops.pop()}"
    return None
