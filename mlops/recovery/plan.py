"""The restore plan: what the archive holds, what the target has, what is to be done.

The options of a restore, its result and error, the state of each model in the target
(new, half-restored from this archive, restored from it, or someone else's), the runs, logged
models and sources the selected models need, and the dry run's description of it all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops import registry
from mlops.recovery import layout, safety
from mlops.recovery.safety import Limits
from mlops.util import first_line

if TYPE_CHECKING:
    from mlops.recovery.restore_api import _Restorer

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
PROV_RUN = "mlops.restore.source_run_id"
PROV_MODEL = "mlops.restore.source_model_id"
PARTIAL_PREFIX = "partial:"  # value of PROV_RUN until the run is complete
IN_PROGRESS_TAG = "mlops.restore.in_progress"
DONE_TAG = "mlops.restore.backup_id"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # written by the tracking server on create_model_version
RESTORE_TAG_PREFIX = "mlops.restore."


class RestoreError(registry.RegistryError):
    """The restore failed or is incomplete; ``failures`` lists every problem."""

    def __init__(self, message: str, failures: list[str] | None = None):
        super().__init__(message)
        self.failures = failures or []


@dataclass
class RestoreResult:
    """What a restore did (or, with ``dry_run``, would do)."""

    models: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    versions: int = 0
    placeholders: int = 0
    runs_created: int = 0
    runs_reused: int = 0
    logged_models_created: int = 0
    logged_models_reused: int = 0
    plan: list[str] = field(default_factory=list)
    dry_run: bool = False
    manifest: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreOptions:
    """How to restore: which models, into what, how fast (see :func:`mlops.recovery.restore.restore`)."""

    models: list[str] | None = None
    dry_run: bool = False
    if_exists: str = "fail"
    artifacts_destination: str | None = None
    backend_store_uri: str | None = None
    database: bool = True
    workers: int = 8
    on_progress: Progress | None = None
    limits: Limits | None = None


@dataclass
class Selection:
    """What one restore writes: the selected models, what they depend on, what an earlier run left."""

    models: list[dict]
    states: dict[str, str]
    run_ids: set[str] = field(default_factory=set)
    lm_ids: set[str] = field(default_factory=set)
    source_keys: dict[str, dict] = field(default_factory=dict)
    lm_recs: dict[str, dict] = field(default_factory=dict)
    existing_runs: dict = field(default_factory=dict)
    existing_lms: dict = field(default_factory=dict)

    @property
    def by_name(self) -> dict[str, dict]:
        return {m["name"]: m for m in self.models}


def not_found(exc: MlflowException) -> bool:
    """True when MLflow says the thing asked for does not exist."""
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower()


def own_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` without the provenance tags of an earlier restore (``mlops.restore.*``)."""
    return {k: v for k, v in tags.items() if not k.startswith(RESTORE_TAG_PREFIX)}


class ArchiveReader:
    """The records of an extracted archive, each refused unless its ids are safe and its own."""

    def __init__(self, folder: Path, reg: dict):
        self.folder = folder
        self.reg = reg

    def run_record(self, run_id: str) -> layout.RunRecord:
        """``runs/<run_id>/run.json``, refused unless its ids are safe and its own."""
        _safe_id(safety.RUN_ID, run_id, "run id")
        rec = _read_json(self.folder / layout.run_json(run_id))
        if rec.get("run_id") != run_id:
            raise RestoreError(f"archive: {layout.run_json(run_id)} names another run; refused as forged or damaged")
        _safe_id(safety.EXPERIMENT_ID, rec.get("experiment_id"), f"run {run_id}: experiment id")
        if rec["experiment_id"] not in self.reg.get("experiments", {}):
            raise RestoreError(f"archive: run {run_id} names experiment {rec['experiment_id']}, which it does not hold")
        return rec

    def lm_record(self, model_id: str) -> layout.LoggedModelRecord:
        """``logged_models/<model_id>/logged_model.json``, refused unless its ids are safe and its own."""
        _safe_id(safety.MODEL_ID, model_id, "logged model id")
        rec = _read_json(self.folder / layout.logged_model_json(model_id))
        if rec.get("model_id") != model_id:
            raise RestoreError(f"archive: logged model {model_id} names another id; refused as forged or damaged")
        if rec.get("source_run_id") is not None:
            _safe_id(safety.RUN_ID, rec["source_run_id"], f"logged model {model_id}: source run id")
        _safe_id(safety.EXPERIMENT_ID, rec.get("experiment_id"), f"logged model {model_id}: experiment id")
        if rec["experiment_id"] not in self.reg.get("experiments", {}):
            raise RestoreError(f"archive: logged model {model_id} names an experiment it does not hold")
        return rec

    def source_dir(self, key: str) -> Path:
        """The files of a plain-path source (older backups put them one folder too deep)."""
        _safe_id(safety.SOURCE_KEY, key, "source key")
        base = self.folder / layout.source_artifacts(key)
        if not (base / "MLmodel").is_file() and base.is_dir():
            subs = list(base.iterdir())
            if len(subs) == 1 and (subs[0] / "MLmodel").is_file():
                return subs[0]
        return base

    def has_run(self, run_id: str) -> bool:
        """True when the archive holds the run's record."""
        return (self.folder / layout.run_json(run_id)).is_file()


def _safe_id(pattern, value: object, what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise RestoreError(f"archive: {what} {str(value)[:80]!r} is not a valid id; refused as forged or damaged")
    return value


def _read_json(path: Path) -> dict:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RestoreError(f"archive: cannot read {path.parent.name}/{path.name}: {exc}") from None
    if not isinstance(rec, dict):
        raise RestoreError(f"archive: {path.parent.name}/{path.name} is not a JSON object")
    return rec


def target_state(client: MlflowClient, name: str, backup_id: str) -> str:
    """'new', 'resume' (half-restored from this archive), 'done' (restored from it) or 'exists'."""
    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if not_found(exc):
            return "new"
        raise RestoreError(f"cannot read registered model '{name}' in the target: {first_line(exc)}") from None
    tags = rm.tags or {}
    if tags.get(IN_PROGRESS_TAG) == backup_id:
        return "resume"
    if tags.get(DONE_TAG) == backup_id:
        return "done"
    return "exists"


def dependencies(r: ArchiveReader, selected: list[dict]) -> tuple[set[str], set[str], dict[str, dict]]:
    """The runs, logged models and plain sources the selected models' versions need."""
    run_ids, lm_ids, source_keys = set(), set(), {}
    for m in selected:
        for v in m["versions"]:
            src = v["source_info"]
            if v.get("run_id"):
                run_ids.add(v["run_id"])
            if src["kind"] == "logged_model":
                lm_ids.add(src["model_id"])
            elif src["kind"] == "files":
                source_keys.setdefault(src["key"], v)
    for mid in lm_ids:
        src_run = r.lm_record(mid).get("source_run_id")
        if src_run and r.has_run(src_run):
            run_ids.add(src_run)
    missing = [rid for rid in run_ids if not r.has_run(rid)]
    if missing:
        raise RestoreError(f"archive is missing run {missing[0]}")
    return run_ids, lm_ids, source_keys


def model_deps(m: dict) -> set[str]:
    """The runs, logged models and source keys one model's versions need."""
    deps = set()
    for v in m["versions"]:
        src = v["source_info"]
        if v.get("run_id"):
            deps.add(v["run_id"])
        if src["kind"] == "logged_model":
            deps.add(src["model_id"])
        elif src["kind"] == "files":
            deps.add(src["key"])
    return deps


def describe(r: _Restorer, result: RestoreResult, sel: Selection, clash: list[str], exp_ids: set[str]) -> None:
    """What a dry run prints: every model to create or skip, and what it depends on."""
    selected, states = sel.models, sel.states
    run_ids, lm_ids, source_keys = sel.run_ids, sel.lm_ids, sel.source_keys
    for name in clash:
        result.plan.append(f"skip model '{name}': already in the target registry")
    for name in result.already:
        result.plan.append(f"skip model '{name}': already restored from this archive")
    r.ensure_experiments(exp_ids, dry=result.plan)
    for m in selected:
        versions = sorted(m["versions"], key=lambda v: int(v["version"]))
        verb = "rebuild (interrupted restore)" if states[m["name"]] == "resume" else "create"
        stages = {}
        for v in versions:
            stages.setdefault(v["stage"], []).append(str(v["version"]))
        stage_txt = "; ".join(f"{s}: v{','.join(vs)}" for s, vs in sorted(stages.items()))
        alias_txt = ", ".join(f"{a}→v{v}" for a, v in sorted(m["aliases"].items())) or "none"
        deleted = m.get("deleted_versions", [])
        result.plan.append(
            f"{verb} model '{m['name']}': {len(versions)} versions, numbers 1..{m['max_version']}"
            + (f" with deleted {','.join(map(str, deleted))} recreated as deleted placeholders" if deleted else "")
            + f"; stages {stage_txt or '-'}; aliases {alias_txt}; {len(m['tags'])} tags"
        )
        result.models.append(m["name"])
        result.versions += len(versions)
        result.placeholders += len(deleted)
    files = sum(1 for p in r.folder.rglob("*") if p.is_file() and "/artifacts/" in p.as_posix())
    result.plan.append(
        f"runs to create or reuse: {len(run_ids)}; logged models: {len(lm_ids)}; other sources: {len(source_keys)}; "
        f"artifact files: {files}"
    )


def in_parallel(r: _Restorer, keys: list, fn: Callable, label: str, tick: bool = True) -> Iterator[tuple]:
    """Run ``fn(key)`` for every key in ``r``'s number of threads; yield (key, result, error message)."""
    if not keys:
        return
    with ThreadPoolExecutor(max_workers=r.workers, thread_name_prefix="mlops-restore") as pool:
        futures = {pool.submit(fn, k): k for k in keys}
        for fut in as_completed(futures):
            k = futures[fut]
            try:
                out, err = fut.result(), None
            except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                log.debug("restoring %s %s failed", label, k, exc_info=True)
                out, err = None, first_line(exc)
            if tick:
                r.tick(f"{label} {k}")
            yield k, out, err
