"""Registry restore: recreate what :mod:`mlops.backup` archived, with the exact version numbers.

Order: verify and extract the archive → check the target (``--if-exists``) → experiments → runs
(parallel) → logged models and other sources (parallel) → registered models (parallel across
models, versions of one model strictly in order, deleted numbers recreated as placeholder
versions that are deleted again) → aliases → runs that were deleted in the source are deleted.

Resumable: while a restore through the API is unfinished, a restored run carries
``mlops.restore.source_run_id`` (valued ``partial:<id>`` until its last call has gone through), a
restored logged model ``mlops.restore.source_model_id`` (READY once its files are uploaded), and a
registered model ``mlops.restore.in_progress`` until its versions, stages and aliases are all in
place, then ``mlops.restore.backup_id``. Re-running the same restore skips models already restored
from this archive, reuses complete runs and logged models, discards partial ones, and rebuilds a
half-restored registered model from scratch (the only way to reproduce its version counter
exactly). Once a restore completes without a problem these provenance tags are removed: the
restored registry has exactly the tags the source had (and a second run of the same restore finds
the models already in the target). The database path writes everything in one transaction and
never adds them.

The archive is treated as hostile: it is verified (:func:`mlops.archive.verify_archive`: checksums,
limits, ids and keys that become paths, every version's model files) before anything is read, and
every run and logged-model record is checked again when it is read.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelInput,
    LoggedModelOutput,
    Metric,
    Param,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException

from mlops import archive, artifacts, config, env, registry, restore_db
from mlops.artifacts import ArtifactStoreError, DirectStore
from mlops.backup import tracking_uri_set
from mlops.util import first_line, paged

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
PROV_RUN = "mlops.restore.source_run_id"
PROV_MODEL = "mlops.restore.source_model_id"
PARTIAL_PREFIX = "partial:"  # value of PROV_RUN until the run is complete
IN_PROGRESS_TAG = "mlops.restore.in_progress"
DONE_TAG = "mlops.restore.backup_id"
MODEL_VERSIONS_TAG = "mlflow.modelVersions"  # written by the tracking server on create_model_version
RESTORE_TAG_PREFIX = "mlops.restore."
MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
TERMINAL = ("FINISHED", "FAILED", "KILLED")


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


def _not_found(exc: MlflowException) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower()


def own_tags(tags: dict[str, str]) -> dict[str, str]:
    """``tags`` without the provenance tags of an earlier restore (``mlops.restore.*``)."""
    return {k: v for k, v in tags.items() if not k.startswith(RESTORE_TAG_PREFIX)}


def metric_batches(metrics: list, params: list, tags: list):
    """Split into ``log_batch`` calls within MLflow's limits (1000 metrics, 100 params, 100 tags)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        t, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
        room = min(MAX_METRICS, MAX_ENTITIES - len(p) - len(t))
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


class _Restorer:
    def __init__(self, client: MlflowClient, folder: Path, reg: dict, backup_id: str, workers: int,
                 on_progress: Progress | None):
        self.client = client
        self.folder = folder
        self.reg = reg
        self.backup_id = backup_id
        self.workers = max(1, workers)
        self.on_progress = on_progress
        self.done = 0
        self.total = 0
        self.failures: list[str] = []
        self.exp_map: dict[str, str] = {}
        self.run_map: dict[str, str] = {}
        self.run_uri: dict[str, str] = {}
        self.lm_map: dict[str, str] = {}
        self.src_map: dict[str, str] = {}
        self.file_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mlops-upload")
        self.dataset_lock = threading.Lock()
        self.dataset_locks: dict[tuple, threading.Lock] = {}
        self.datasets_seen: set[tuple] = set()
        self.is_server = _is_rest(client)
        self.versions_made: dict[str, list[tuple[str, int]]] = {}
        self.fresh_lms: set[str] = set()
        self.direct: DirectStore | None = None
        # What carries a provenance tag (resume state), to be removed once the restore completes.
        self.tagged_runs: set[str] = set()
        self.tagged_lms: set[str] = set()
        self.tagged_models: set[str] = set()

    # ---- helpers -------------------------------------------------------------------------
    def tick(self, label: str, n: int = 1) -> None:
        self.done += n
        if self.on_progress:
            self.on_progress(self.done, self.total, label)

    def run_record(self, run_id: str) -> dict:
        """``runs/<run_id>/run.json``, refused unless its ids are safe and its own."""
        _safe_id(archive.RUN_ID, run_id, "run id")
        rec = _read_json(self.folder / "runs" / run_id / "run.json")
        if rec.get("run_id") != run_id:
            raise RestoreError(f"archive: runs/{run_id}/run.json names another run; refused as forged or damaged")
        _safe_id(archive.EXPERIMENT_ID, rec.get("experiment_id"), f"run {run_id}: experiment id")
        if rec["experiment_id"] not in self.reg.get("experiments", {}):
            raise RestoreError(f"archive: run {run_id} names experiment {rec['experiment_id']}, which it does not hold")
        return rec

    def lm_record(self, model_id: str) -> dict:
        """``logged_models/<model_id>/logged_model.json``, refused unless its ids are safe and its own."""
        _safe_id(archive.MODEL_ID, model_id, "logged model id")
        rec = _read_json(self.folder / "logged_models" / model_id / "logged_model.json")
        if rec.get("model_id") != model_id:
            raise RestoreError(f"archive: logged model {model_id} names another id; refused as forged or damaged")
        if rec.get("source_run_id") is not None:
            _safe_id(archive.RUN_ID, rec["source_run_id"], f"logged model {model_id}: source run id")
        _safe_id(archive.EXPERIMENT_ID, rec.get("experiment_id"), f"logged model {model_id}: experiment id")
        if rec["experiment_id"] not in self.reg.get("experiments", {}):
            raise RestoreError(f"archive: logged model {model_id} names an experiment it does not hold")
        return rec

    def source_dir(self, key: str) -> Path:
        """The files of a plain-path source (older backups put them one folder too deep)."""
        _safe_id(archive.SOURCE_KEY, key, "source key")
        base = self.folder / "sources" / key / "artifacts"
        if not (base / "MLmodel").is_file() and base.is_dir():
            subs = list(base.iterdir())
            if len(subs) == 1 and (subs[0] / "MLmodel").is_file():
                return subs[0]
        return base

    def log_datasets(self, exp_id: str, run_id: str, datasets: list) -> None:
        """log_inputs, serialising the first use of each dataset in an experiment.

        MLflow's SQL store creates a dataset row on first use; two runs doing that at once hit
        its unique constraint, so the first use of a (experiment, name, digest) holds a lock.
        """
        keys = sorted({(exp_id, d.dataset.name, d.dataset.digest) for d in datasets})
        with self.dataset_lock:
            fresh = [k for k in keys if k not in self.datasets_seen]
            locks = [self.dataset_locks.setdefault(k, threading.Lock()) for k in fresh]
        for lock in locks:
            lock.acquire()
        try:
            self.client.log_inputs(run_id, datasets=datasets)
            with self.dataset_lock:
                self.datasets_seen.update(keys)
        finally:
            for lock in locks:
                lock.release()

    def submit_uploads(self, artifact_uri: str, local_dir: Path) -> list:
        """Queue every file under ``local_dir`` for upload to ``artifact_uri``; the futures."""
        if not local_dir.is_dir():
            return []
        repo = artifacts.repository(artifact_uri, self.client.tracking_uri, self.direct)
        jobs = []
        for root, dirs, files in os.walk(local_dir):  # the extracted archive holds no links
            dirs.sort()
            rel = Path(root).relative_to(local_dir).as_posix()
            for name in sorted(files):
                jobs.append(self.file_pool.submit(repo.log_artifact, os.path.join(root, name),
                                                  None if rel == "." else rel))
        return jobs

    def upload(self, artifact_uri: str, local_dir: Path) -> None:
        """Upload every file under ``local_dir`` to ``artifact_uri``, files in parallel."""
        for j in self.submit_uploads(artifact_uri, local_dir):
            j.result()

    def upload_all(self, jobs: list[tuple[str, Path, str]]) -> None:
        """Upload many folders at once: (artifact URI, local folder, label); one tick per folder."""
        queued = [(label, self.submit_uploads(uri, local)) for uri, local, label in jobs]
        errors = []
        for label, futures in queued:
            for f in futures:
                try:
                    f.result()
                except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                    errors.append(f"{label}: {first_line(exc)}")
                    break
            self.tick(label)
        if errors:
            raise RestoreError(f"uploading files failed ({errors[0]}); nothing was written to the registry", errors)

    # ---- experiments ---------------------------------------------------------------------
    def ensure_experiments(self, ids: set[str], dry: list[str] | None = None) -> None:
        for eid in sorted(ids):
            exp = self.reg["experiments"][eid]
            target = self.client.get_experiment_by_name(exp["name"])
            if dry is not None:
                dry.append(f"experiment '{exp['name']}': {'reuse existing' if target else 'create'}")
                continue
            if target is not None and target.lifecycle_stage == "deleted":
                log.warning("experiment %s is deleted in the target; restoring it", exp["name"])
                self.client.restore_experiment(target.experiment_id)
            new_id = target.experiment_id if target else config.ensure_experiment(self.client, exp["name"])
            have = dict(target.tags) if target else {}
            for k, v in exp["tags"].items():
                if have.get(k) != v:
                    self.client.set_experiment_tag(new_id, k, v)
            self.exp_map[eid] = new_id

    def existing_runs(self) -> dict[str, object]:
        """Complete runs restored earlier, by source run id (partial ones are deleted)."""
        found = {}
        ids = sorted(set(self.exp_map.values()))
        if not ids:
            return found
        runs = list(paged(
            self.client.search_runs, experiment_ids=ids, filter_string=f"tags.`{PROV_RUN}` LIKE '%'",
            run_view_type=ViewType.ALL, max_results=1000,
        ))
        for r in runs:
            src = r.data.tags.get(PROV_RUN) or ""
            if src.startswith(PARTIAL_PREFIX):
                # Discarded: deleted, and without the tag (a deleted run's tags cannot be changed).
                log.info("discarding partially restored run %s (source %s)", r.info.run_id, src)
                if r.info.lifecycle_stage != "active":
                    self.client.restore_run(r.info.run_id)
                self.client.delete_tag(r.info.run_id, PROV_RUN)
                self.client.delete_run(r.info.run_id)
                continue
            found.setdefault(src, r)
        return found

    def existing_logged_models(self) -> dict[str, object]:
        found = {}
        ids = sorted(set(self.exp_map.values()))
        if not ids:
            return found
        lms = list(paged(
            self.client.search_logged_models, experiment_ids=ids,
            filter_string=f"tags.`{PROV_MODEL}` LIKE '%'", max_results=100,
        ))
        for lm in lms:
            src = (lm.tags or {}).get(PROV_MODEL)
            status = getattr(lm.status, "value", None) or str(lm.status)
            if status != "READY":
                log.info("discarding partially restored logged model %s (source %s)", lm.model_id, src)
                self.client.delete_logged_model(lm.model_id)
                continue
            found.setdefault(src, lm)
        return found

    # ---- runs ----------------------------------------------------------------------------
    def reuse_runs(self, run_ids: set[str], existing: dict, result: RestoreResult) -> list[str]:
        """Map the runs an earlier restore completed; the source run ids still to restore."""
        todo = []
        for rid in sorted(run_ids):
            prior = existing.get(rid)
            if prior is None:
                todo.append(rid)
                continue
            self.run_map[rid], self.run_uri[rid] = prior.info.run_id, prior.info.artifact_uri
            self.tagged_runs.add(prior.info.run_id)
            result.runs_reused += 1
            self.tick(f"run {rid} (already restored)")
        return todo

    def restore_run(self, rec: dict) -> tuple[str, str]:
        c = self.client
        exp_id = self.exp_map[rec["experiment_id"]]
        tags = {PROV_RUN: PARTIAL_PREFIX + rec["run_id"]}
        user = rec["tags"].get("mlflow.user") or rec.get("user_id")
        if user:
            tags["mlflow.user"] = user
        run = c.create_run(exp_id, start_time=rec["start_time"], tags=tags, run_name=rec.get("run_name"))
        rid = run.info.run_id
        with self.dataset_lock:
            self.tagged_runs.add(rid)
        params = [Param(k, str(v)) for k, v in rec["params"].items()]
        rtags = [
            RunTag(k, v) for k, v in rec["tags"].items()
            if not k.startswith(RESTORE_TAG_PREFIX) and k not in tags and k != "mlflow.runName"
        ]
        metrics = [
            Metric(key, value, int(ts), int(step))
            for key, hist in rec["metrics"].items() for value, ts, step in hist
        ]
        datasets = [
            DatasetInput(
                Dataset(**{k: d["dataset"].get(k) for k in ("name", "digest", "source_type", "source", "schema", "profile")}),
                [InputTag(k, v) for k, v in d["tags"].items()],
            )
            for d in rec.get("dataset_inputs", [])
        ]
        if datasets:
            self.log_datasets(exp_id, rid, datasets)
        self.upload(run.info.artifact_uri, self.folder / "runs" / rec["run_id"] / "artifacts")
        if rec["status"] in TERMINAL:
            c.set_terminated(rid, rec["status"], end_time=rec.get("end_time"))
        # Params, metrics and tags last; the final call also marks the run complete.
        batches = list(metric_batches(metrics, params, rtags)) or [([], [], [])]
        done_tag = RunTag(PROV_RUN, rec["run_id"])
        last_m, last_p, last_t = batches[-1]
        if len(last_t) < MAX_TAGS and len(last_m) + len(last_p) + len(last_t) < MAX_ENTITIES:
            batches[-1] = (last_m, last_p, [*last_t, done_tag])
        else:
            batches.append(([], [], [done_tag]))
        for m, p, t in batches:
            c.log_batch(rid, metrics=m, params=p, tags=t)
        return rid, run.info.artifact_uri

    # ---- logged models and plain sources --------------------------------------------------
    def restore_logged_model(self, rec: dict, runs_by_output: dict[str, list[tuple[str, int]]],
                             runs_by_input: dict[str, list[str]]) -> str:
        c = self.client
        exp_id = self.exp_map[rec["experiment_id"]]
        tags = {k: v for k, v in rec["tags"].items()
                if not k.startswith(RESTORE_TAG_PREFIX) and k != MODEL_VERSIONS_TAG}
        tags[PROV_MODEL] = rec["model_id"]
        source_run = self.run_map.get(rec.get("source_run_id") or "")
        lm = c.create_logged_model(
            exp_id, name=rec["name"], source_run_id=source_run, tags=tags,
            params=rec["params"] or None, model_type=rec.get("model_type") or None,
        )
        with self.dataset_lock:
            self.tagged_lms.add(lm.model_id)
        self.upload(lm.artifact_location, self.folder / "logged_models" / rec["model_id"] / "artifacts")
        by_run: dict[str, list] = {}
        for m in rec.get("metrics", []):
            rid = self.run_map.get(m.get("run_id") or "")
            if rid:
                by_run.setdefault(rid, []).append(Metric(
                    m["key"], m["value"], int(m["timestamp"]), int(m["step"]), model_id=lm.model_id,
                    dataset_name=m.get("dataset_name"), dataset_digest=m.get("dataset_digest"), run_id=rid,
                ))
        for rid, ms in by_run.items():
            for i in range(0, len(ms), MAX_METRICS):
                c.log_batch(rid, metrics=ms[i:i + MAX_METRICS])
        for src_run, step in runs_by_output.get(rec["model_id"], []):
            if src_run in self.run_map:
                c.log_outputs(self.run_map[src_run], [LoggedModelOutput(lm.model_id, step)])
        for src_run in runs_by_input.get(rec["model_id"], []):
            if src_run in self.run_map:
                c.log_inputs(self.run_map[src_run], models=[LoggedModelInput(lm.model_id)])
        status = rec.get("status") if rec.get("status") in ("READY", "FAILED") else "READY"
        c.finalize_logged_model(lm.model_id, status)
        return lm.model_id

    def fix_model_versions_tag(self, rec: dict, model_id: str, fresh: bool) -> None:
        """Make the logged model's mlflow.modelVersions tag what it was in the source.

        A tracking server appends (name, version) for every version created from the model; when
        the model was created by this restore and that list already matches, nothing is sent.
        """
        want = rec["tags"].get(MODEL_VERSIONS_TAG)
        if not self.is_server:
            if want is not None:  # a direct store never writes it itself
                self.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: want})
            return
        if fresh:
            made = [{"name": n, "version": str(v)} for n, v in self.versions_made.get(model_id, [])]
            try:
                wanted = [{"name": e["name"], "version": str(e["version"])} for e in json.loads(want or "[]")]
            except (ValueError, TypeError, KeyError):
                wanted = None
            if made == wanted:
                return
        if want is None:
            try:
                self.client.delete_logged_model_tag(model_id, MODEL_VERSIONS_TAG)
            except MlflowException as exc:
                if not _not_found(exc):
                    raise
        else:
            self.client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: want})

    def put_right(self, lm_recs: dict, model_ids: list[str], run_ids: set[str]) -> None:
        """Last steps: the logged models' mlflow.modelVersions tag as in the source; then, if
        nothing failed, the provenance tags removed and runs deleted in the source deleted again
        (once everything refers to them). Failures are collected."""
        for mid in model_ids:
            new_id = self.lm_map[mid]
            try:
                self.fix_model_versions_tag(lm_recs[mid], new_id, new_id in self.fresh_lms)
            except MlflowException as exc:
                self.failures.append(f"logged model {mid}: cannot reset {MODEL_VERSIONS_TAG}: {first_line(exc)}")
        if self.failures:
            return  # keep the resume state: the next run of the same restore finishes the job
        self.remove_provenance()
        if self.failures:
            return
        for rid in sorted(run_ids):
            if rid in self.run_map and self.run_record(rid).get("lifecycle_stage") == "deleted":
                try:
                    if self.client.get_run(self.run_map[rid]).info.lifecycle_stage == "active":
                        self.client.delete_run(self.run_map[rid])
                except MlflowException as exc:
                    self.failures.append(f"run {rid}: cannot mark deleted: {first_line(exc)}")

    def remove_provenance(self) -> None:
        """Delete every ``mlops.restore.*`` tag this restore (or an interrupted earlier run of it)
        left on runs, logged models and registered models."""
        c = self.client
        jobs = ([(c.delete_tag, rid, PROV_RUN, f"run {rid}") for rid in sorted(self.tagged_runs)]
                + [(c.delete_logged_model_tag, mid, PROV_MODEL, f"logged model {mid}") for mid in sorted(self.tagged_lms)]
                + [(c.delete_registered_model_tag, n, DONE_TAG, f"model {n}") for n in sorted(self.tagged_models)])

        def drop(job) -> None:
            fn, ident, key, _label = job
            try:
                fn(ident, key)
            except MlflowException as exc:
                if not _not_found(exc) and "no tag" not in str(exc).lower():
                    raise

        for job, _out, err in _parallel(self, jobs, drop, "provenance tag", tick=False):
            if err:
                self.failures.append(f"{job[3]}: cannot remove the {job[2]} tag: {err}")
        log.info("removed the restore's provenance tags (%d runs, %d logged models, %d models)",
                 len(self.tagged_runs), len(self.tagged_lms), len(self.tagged_models))

    def restore_source(self, key: str, version: dict, exp_src_id: str | None) -> str:
        """A version whose source was a plain path becomes a logged model with the same files."""
        c = self.client
        exp_id = self.exp_map.get(exp_src_id or "") or config.ensure_experiment(c, "Default")
        lm = c.create_logged_model(
            exp_id, name="model", source_run_id=self.run_map.get(version.get("run_id") or ""),
            tags={PROV_MODEL: f"source:{key}"},
        )
        with self.dataset_lock:
            self.tagged_lms.add(lm.model_id)
        self.upload(lm.artifact_location, self.source_dir(key))
        c.finalize_logged_model(lm.model_id, "READY")
        return lm.model_id

    # ---- registered models -------------------------------------------------------------------
    def version_args(self, v: dict) -> dict:
        src = v["source_info"]
        run_id = self.run_map.get(v.get("run_id") or "")
        if src["kind"] == "logged_model":
            mid = self.lm_map[src["model_id"]]
            return {"source": f"models:/{mid}", "model_id": mid, "run_id": run_id}
        if src["kind"] == "run":
            base = self.run_uri[v["run_id"]].rstrip("/")
            return {"source": f"{base}/{src['path']}" if src["path"] else base, "run_id": run_id}
        mid = self.src_map[src["key"]]
        return {"source": f"models:/{mid}", "model_id": mid, "run_id": run_id}

    def restore_model(self, m: dict, resume: bool) -> int:
        c, name = self.client, m["name"]
        if resume:
            log.info("%s: finishing an interrupted restore (rebuilding the registered model)", name)
            c.delete_registered_model(name)
        tags = own_tags(m["tags"])
        c.create_registered_model(
            name, tags={**tags, IN_PROGRESS_TAG: self.backup_id}, description=m["description"] or None
        )
        versions = {int(v["version"]): v for v in m["versions"]}
        numbers = sorted(versions)
        placeholders = 0
        placeholder_lm = None
        # Writes on a model this restore just created skip MlflowClient's per-call prompt check
        # (one extra read each) by going to the registry client directly.
        reg = getattr(c, "_get_registry_client", lambda: c)()
        for n in range(1, int(m["max_version"]) + 1):
            v = versions.get(n)
            if v is not None:
                args = self.version_args(v)
                mv = c.create_model_version(
                    name, args["source"], run_id=args.get("run_id"), tags=v["tags"] or None,
                    run_link=v.get("run_link"), description=v["description"] or None,
                    model_id=args.get("model_id"), await_creation_for=0,
                )
                if args.get("model_id"):
                    with self.dataset_lock:
                        self.versions_made.setdefault(args["model_id"], []).append((name, n))
            else:
                args = self.placeholder_args(versions, numbers, n)
                if args is None:
                    placeholder_lm = placeholder_lm or self._placeholder_model()
                    args = {"source": f"models:/{placeholder_lm}", "model_id": placeholder_lm, "run_id": None}
                mv = c.create_model_version(name, args["source"], run_id=args.get("run_id"),
                                            model_id=args.get("model_id"), await_creation_for=0)
            if int(mv.version) != n:
                raise RestoreError(f"{name}: expected to create version {n} but MLflow created {mv.version}")
            if v is None:
                reg.delete_model_version(name, str(n))
                placeholders += 1
            elif v["stage"] not in ("None", "", None):
                with registry.stage_api():
                    reg.transition_model_version_stage(name, str(n), v["stage"], archive_existing_versions=False)
            self.tick(f"{name} v{n}")
        for alias, ver in sorted(m["aliases"].items()):
            reg.set_registered_model_alias(name, alias, str(ver))
        if placeholder_lm:
            c.delete_logged_model(placeholder_lm)
        reg.set_registered_model_tag(name, DONE_TAG, self.backup_id)
        with self.dataset_lock:
            self.tagged_models.add(name)
        reg.delete_registered_model_tag(name, IN_PROGRESS_TAG)
        return placeholders

    def placeholder_args(self, versions: dict, numbers: list[int], n: int) -> dict | None:
        """Source for a placeholder version: a path under a restored run's artifacts.

        The version is deleted right away; pointing it at a run (not at a logged model) keeps
        the logged models' version lists clean. None when no version of the model has a run.
        """
        order = [k for k in numbers if k > n] + [k for k in reversed(numbers) if k < n]
        for k in order:
            rid = versions[k].get("run_id")
            if rid in self.run_map:
                return {"source": f"{self.run_uri[rid].rstrip('/')}/mlops-placeholder", "run_id": self.run_map[rid]}
        for k in order:
            if versions[k]["source_info"]["kind"] in ("logged_model", "files"):
                return self.version_args(versions[k])
        return None

    def _placeholder_model(self) -> str:
        exp_id = config.ensure_experiment(self.client, "Default")
        lm = self.client.create_logged_model(exp_id, name="mlops-restore-placeholder")
        self.client.finalize_logged_model(lm.model_id, "READY")
        return lm.model_id

    def close(self) -> None:
        self.file_pool.shutdown(wait=True, cancel_futures=True)


def _is_rest(client: MlflowClient) -> bool:
    from mlflow.store.tracking.rest_store import RestStore

    return isinstance(getattr(client._tracking_client, "store", None), RestStore)


def _target_state(client: MlflowClient, name: str, backup_id: str) -> str:
    """'new', 'resume' (half-restored from this archive), 'done' (restored from it) or 'exists'."""
    try:
        rm = client.get_registered_model(name)
    except MlflowException as exc:
        if _not_found(exc):
            return "new"
        raise RestoreError(f"cannot read registered model '{name}' in the target: {first_line(exc)}") from None
    tags = rm.tags or {}
    if tags.get(IN_PROGRESS_TAG) == backup_id:
        return "resume"
    if tags.get(DONE_TAG) == backup_id:
        return "done"
    return "exists"


def restore(
    client: MlflowClient,
    archive_path: Path,
    models: list[str] | None = None,
    *,
    dry_run: bool = False,
    if_exists: str = "fail",
    artifacts_destination: str | None = None,
    backend_store_uri: str | None = None,
    database: bool = True,
    workers: int = 8,
    on_progress: Progress | None = None,
    limits: archive.Limits | None = None,
) -> RestoreResult:
    """Restore the selected (default: all) models of a backup archive into ``client``'s registry.

    Raises RestoreError (with every failure listed) if anything could not be restored; re-running
    the same command finishes an interrupted or failed restore. ``artifacts_destination`` (the
    server's ``--artifacts-destination``) writes proxied artifacts into that store directly (see
    :mod:`mlops.artifacts`). A SQL store, or a server together with its database
    (``backend_store_uri``), is written row by row in one transaction (:mod:`mlops.restore_db`);
    ``database=False`` goes through MLflow's API calls instead. ``limits`` bound what the
    archive may unpack (default: :meth:`mlops.archive.Limits.from_env`).
    """
    if if_exists not in ("fail", "skip"):
        raise RestoreError(f"--if-exists must be fail or skip, not {if_exists!r}")
    folder, manifest = archive.extract_archive(Path(archive_path), limits=limits)
    try:
        with tracking_uri_set(client.tracking_uri):
            return _restore(client, folder, manifest, models, dry_run, if_exists, workers, on_progress,
                            artifacts_destination, backend_store_uri, database)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restore(client, folder, manifest, models, dry_run, if_exists, workers, on_progress,
             artifacts_destination=None, backend_store_uri=None, database=True) -> RestoreResult:
    try:
        reg = json.loads((folder / "registry.json").read_text())
    except (OSError, ValueError) as exc:
        raise RestoreError(f"archive has no readable registry.json: {exc}") from None
    backup_id = manifest.get("backup_id") or reg.get("backup_id") or "unknown"
    by_name = {m["name"]: m for m in reg["models"]}
    wanted = list(dict.fromkeys(models)) if models else list(by_name)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise RestoreError(f"not in the archive: {', '.join(unknown)} (it holds {', '.join(by_name) or 'no models'})")
    result = RestoreResult(dry_run=dry_run, manifest=manifest)
    result.plan.append(
        f"archive verified: {len(manifest['files']) + 1} files, backup {backup_id} created {manifest.get('created')} "
        f"with MLflow {manifest.get('mlflow_version')} from {manifest.get('source_tracking_uri')}"
    )

    states = {n: _target_state(client, n, backup_id) for n in wanted}
    clash = [n for n, s in states.items() if s == "exists"]
    if clash and if_exists == "fail":
        raise RestoreError(
            f"already in the target registry: {', '.join(clash)} (use --if-exists skip, or restore into an "
            "empty server); nothing was changed"
        )
    selected = [by_name[n] for n in wanted if states[n] in ("new", "resume")]
    result.skipped = clash
    result.already = [n for n in wanted if states[n] == "done"]

    r = _Restorer(client, folder, reg, backup_id, workers, on_progress)
    r.tagged_models.update(result.already)
    try:
        run_ids, lm_ids, source_keys = _dependencies(r, selected)
        exp_ids = {r.run_record(rid)["experiment_id"] for rid in run_ids}
        lm_recs = {mid: r.lm_record(mid) for mid in lm_ids}
        exp_ids |= {rec["experiment_id"] for rec in lm_recs.values()}
        # Models an earlier, interrupted run of this restore completed still have provenance tags on
        # their runs and logged models: found (in their experiments) and removed with the others.
        done_runs, done_lms, done_keys = _dependencies(r, [by_name[n] for n in result.already])
        done_exps = ({r.run_record(rid)["experiment_id"] for rid in done_runs}
                     | {r.lm_record(mid)["experiment_id"] for mid in done_lms})
        engine = _database(r, backend_store_uri, database) if selected else None
        if dry_run:
            _plan(r, result, selected, states, clash, exp_ids, run_ids, lm_ids, source_keys)
            result.plan.append(
                "write: every row into the database in one transaction" if engine is not None
                else "write: through the tracking server's API, model by model")
            return result

        if artifacts_destination and selected:
            r.direct = _direct_store(r, artifacts_destination)
        r.ensure_experiments(exp_ids | done_exps)
        existing_runs = r.existing_runs()
        existing_lms = r.existing_logged_models()
        r.tagged_runs.update(existing_runs[rid].info.run_id for rid in done_runs if rid in existing_runs)
        r.tagged_lms.update(existing_lms[mid].model_id for mid in done_lms if mid in existing_lms)
        r.tagged_lms.update(existing_lms[f"source:{k}"].model_id for k in done_keys if f"source:{k}" in existing_lms)
        r.total = len(run_ids) + len(lm_ids) + len(source_keys) + sum(int(m["max_version"]) for m in selected)
        if engine is not None:
            _restore_rows(r, engine, result, selected, states, run_ids, lm_ids, dict(source_keys), lm_recs,
                          existing_runs, existing_lms)
            _raise_failures(r)
            return result
        failed_deps: set[str] = set()

        # Runs, in parallel.
        todo = r.reuse_runs(run_ids, existing_runs, result)
        for rid, out, err in _parallel(r, todo, lambda rid: r.restore_run(r.run_record(rid)), "run"):
            if err:
                failed_deps.add(rid)
                r.failures.append(f"run {rid}: {err}")
            else:
                r.run_map[rid], r.run_uri[rid] = out
                result.runs_created += 1

        # Logged models and plain sources, in parallel (they name their restored runs).
        outputs, inputs = _model_links(r, run_ids)
        todo = []
        for mid in sorted(lm_ids):
            prior = existing_lms.get(mid)
            src_run = lm_recs[mid].get("source_run_id")
            if prior is not None:
                r.lm_map[mid] = prior.model_id
                r.tagged_lms.add(prior.model_id)
                result.logged_models_reused += 1
                r.tick(f"logged model {mid} (already restored)")
            elif src_run in failed_deps:
                failed_deps.add(mid)  # it must point at its run: wait for the run to succeed
                r.failures.append(f"logged model {mid}: not restored because run {src_run} failed")
                r.tick(f"logged model {mid} (skipped)")
            else:
                todo.append(mid)
        for mid, out, err in _parallel(r, todo, lambda mid: r.restore_logged_model(lm_recs[mid], outputs, inputs),
                                       "logged model"):
            if err:
                failed_deps.add(mid)
                r.failures.append(f"logged model {mid}: {err}")
            else:
                r.lm_map[mid] = out
                r.fresh_lms.add(out)
                result.logged_models_created += 1
        src_versions = dict(source_keys)
        todo = []
        for key in sorted(src_versions):
            prior = existing_lms.get(f"source:{key}")
            if prior is not None:
                r.src_map[key] = prior.model_id
                r.tagged_lms.add(prior.model_id)
                r.tick(f"source {key} (already restored)")
            else:
                todo.append(key)

        def _src(key):
            v = src_versions[key]
            exp = r.run_record(v["run_id"])["experiment_id"] if v.get("run_id") in run_ids else None
            return r.restore_source(key, v, exp)

        for key, out, err in _parallel(r, todo, _src, "source"):
            if err:
                failed_deps.add(key)
                r.failures.append(f"model source {key}: {err}")
            else:
                r.src_map[key] = out

        # Registered models: parallel across models, versions of one model in order.
        ready, blocked = [], []
        for m in selected:
            deps = _model_deps(m)
            bad = sorted(deps & failed_deps)
            if bad:
                blocked.append(m["name"])
                r.failures.append(f"model {m['name']}: not restored because {bad[0]} failed")
            else:
                ready.append(m)
        for name, out, err in _parallel(
            r, [m["name"] for m in ready],
            lambda n: r.restore_model(by_name[n], states[n] == "resume"), "model", tick=False,
        ):
            if err:
                r.failures.append(f"model {name}: {err}")
            else:
                result.models.append(name)
                result.versions += len(by_name[name]["versions"])
                result.placeholders += out

        # A tracking server appends every version it creates (placeholders too) to the logged
        # model's mlflow.modelVersions tag: put the tag back to what the source had.
        r.put_right(lm_recs, sorted(r.lm_map), run_ids)
    finally:
        r.close()
    _raise_failures(r)
    return result


def _raise_failures(r: _Restorer) -> None:
    if r.failures:
        raise RestoreError(
            f"restore incomplete: {len(r.failures)} problem(s), first: {r.failures[0]}; "
            "fix the cause and re-run the same command to finish",
            r.failures,
        )


def _database(r: _Restorer, backend_store_uri: str | None, database: bool):
    """The SQLAlchemy engine to write rows into, or None for MLflow's API calls."""
    if not database:
        return None
    if r.is_server:
        if not backend_store_uri:
            return None
        try:
            engine = restore_db.open_engine(backend_store_uri)
            restore_db.check_server_database(engine, r.client)
        except restore_db.DatabaseTargetError as exc:
            raise RestoreError(str(exc)) from None
        return engine
    if backend_store_uri:
        log.info("the target is not a tracking server: --backend-store-uri is not used")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(r.client._tracking_client, "store", None)
    if isinstance(store, SqlAlchemyStore) and r.client._registry_uri == r.client.tracking_uri:
        return store.engine
    return None


def _restore_rows(r: _Restorer, engine, result: RestoreResult, selected: list[dict], states: dict,
                  run_ids: set[str], lm_ids: set[str], source_keys: dict, lm_recs: dict,
                  existing_runs: dict, existing_lms: dict) -> None:
    """Everything the API path creates, as rows in one transaction (after the files are uploaded)."""
    from mlflow.utils.name_utils import _generate_random_name
    from mlflow.utils.uri import append_to_uri_path

    c = r.client
    b = restore_db.RowBuilder(engine)
    locations: dict[str, str] = {}
    lm_location: dict[str, str] = {}
    uploads: list[tuple[str, Path, str]] = []

    def exp_location(eid: str) -> str:
        if eid not in locations:
            locations[eid] = c.get_experiment(eid).artifact_location
        return locations[eid]

    try:
        fresh_runs = {}
        for rid in r.reuse_runs(run_ids, existing_runs, result):
            rec = r.run_record(rid)
            new = uuid.uuid4().hex
            r.run_map[rid] = new
            r.run_uri[rid] = append_to_uri_path(exp_location(r.exp_map[rec["experiment_id"]]), new, "artifacts")
            fresh_runs[rid] = rec
        b.known_datasets(r.exp_map[rec["experiment_id"]] for rec in fresh_runs.values())
        for rid, rec in fresh_runs.items():
            tags = own_tags(rec["tags"])
            user = rec["tags"].get("mlflow.user") or rec.get("user_id")
            if user:
                tags.setdefault("mlflow.user", user)
            tags["mlflow.runName"] = rec.get("run_name") or tags.get("mlflow.runName") or _generate_random_name()
            b.run({**rec, "user_id": rec.get("user_id") or user}, r.exp_map[rec["experiment_id"]], r.run_uri[rid],
                  r.run_map[rid], tags, deleted=rec.get("lifecycle_stage") == "deleted")
            uploads.append((r.run_uri[rid], r.folder / "runs" / rid / "artifacts", f"run {rid}"))
            result.runs_created += 1

        outputs, inputs = _model_links(r, run_ids)
        reused_lms = []
        for mid in sorted(lm_ids):
            prior = existing_lms.get(mid)
            if prior is not None:
                r.lm_map[mid], lm_location[prior.model_id] = prior.model_id, prior.artifact_location
                r.tagged_lms.add(prior.model_id)
                reused_lms.append(mid)
                result.logged_models_reused += 1
                r.tick(f"logged model {mid} (already restored)")
                continue
            rec = lm_recs[mid]
            eid = r.exp_map[rec["experiment_id"]]
            new = f"m-{uuid.uuid4().hex}"
            loc = append_to_uri_path(exp_location(eid), "models", new, "artifacts")
            tags = own_tags(rec["tags"])
            b.logged_model(
                new, eid, rec["name"], loc, source_run_id=r.run_map.get(rec.get("source_run_id") or ""), tags=tags,
                params=rec["params"], model_type=rec.get("model_type") or None,
                status=rec.get("status") if rec.get("status") in ("READY", "FAILED") else "READY",
                status_message=rec.get("status_message"), created=rec.get("creation_timestamp"),
                metrics=[{**m, "run_id": r.run_map[m["run_id"]]} for m in rec.get("metrics", [])
                         if r.run_map.get(m.get("run_id") or "")],
                outputs=_restored(outputs.get(mid, []), r.run_map),
                inputs=[r.run_map[s] for s in inputs.get(mid, []) if s in r.run_map],
            )
            r.lm_map[mid], lm_location[new] = new, loc
            uploads.append((loc, r.folder / "logged_models" / mid / "artifacts", f"logged model {mid}"))
            result.logged_models_created += 1
        for key in sorted(source_keys):
            prior = existing_lms.get(f"source:{key}")
            if prior is not None:
                r.src_map[key], lm_location[prior.model_id] = prior.model_id, prior.artifact_location
                r.tagged_lms.add(prior.model_id)
                r.tick(f"source {key} (already restored)")
                continue
            v = source_keys[key]
            exp = r.run_record(v["run_id"])["experiment_id"] if v.get("run_id") in run_ids else None
            eid = r.exp_map.get(exp or "") or config.ensure_experiment(c, "Default")
            new = f"m-{uuid.uuid4().hex}"
            loc = append_to_uri_path(exp_location(eid), "models", new, "artifacts")
            b.logged_model(new, eid, "model", loc, source_run_id=r.run_map.get(v.get("run_id") or ""), tags={})
            r.src_map[key], lm_location[new] = new, loc
            uploads.append((loc, r.source_dir(key), f"source {key}"))

        def storage(args: dict) -> str:
            return lm_location[args["model_id"]] if args.get("model_id") else args["source"]

        for m in selected:
            tags = own_tags(m["tags"])
            live, deleted = b.registered_model(m, tags, r.version_args, storage)
            result.models.append(m["name"])
            result.versions += live
            result.placeholders += deleted
    except MlflowException as exc:
        raise RestoreError(f"the archive holds something MLflow does not accept: {first_line(exc)}; nothing was changed") from None

    r.upload_all(uploads)
    for m in selected:
        if states[m["name"]] == "resume":
            log.info("%s: finishing an interrupted restore (rebuilding the registered model)", m["name"])
            c.delete_registered_model(m["name"])
    try:
        restore_db.write(engine, b.rows)
    except Exception as exc:  # noqa: BLE001 - a database error of any kind is one line
        raise RestoreError(f"writing to the database failed, nothing was written to it: {first_line(exc)}") from None
    log.info("wrote %d rows into the database in one transaction", b.rows.count())
    r.tick("registered models", sum(int(m["max_version"]) for m in selected))

    # Logged models and runs an earlier (interrupted) restore made are put right as the API path does.
    r.put_right(lm_recs, reused_lms, run_ids - set(fresh_runs))


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


def _model_links(r: _Restorer, run_ids: set[str]) -> tuple[dict[str, list[tuple[str, int]]], dict[str, list[str]]]:
    """Per source logged model: the source runs that output it (with the step) and that took it as input."""
    outputs: dict[str, list[tuple[str, int]]] = {}
    inputs: dict[str, list[str]] = {}
    for rid in run_ids:
        rec = r.run_record(rid)
        for o in rec.get("model_outputs", []):
            outputs.setdefault(o["model_id"], []).append((rid, int(o.get("step") or 0)))
        for mid in rec.get("model_inputs", []):
            inputs.setdefault(mid, []).append(rid)
    return outputs, inputs


def _restored(outputs: list[tuple[str, int]], run_map: dict[str, str]) -> list[tuple[str, int]]:
    """(restored run id, step) for the source runs that were restored."""
    return [(run_map[s], step) for s, step in outputs if s in run_map]


def _direct_store(r: _Restorer, destination: str) -> DirectStore | None:
    """The checked direct artifact store for a restore into a tracking server (None otherwise)."""
    if not r.is_server:
        log.info("the target is not a tracking server: --artifacts-destination is not used")
        return None
    direct = DirectStore(destination)
    try:
        direct.check(r.client.tracking_uri)
    except ArtifactStoreError as exc:
        raise RestoreError(f"{exc}; nothing was changed") from None
    return direct


def _dependencies(r: _Restorer, selected: list[dict]):
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
        if src_run and (r.folder / "runs" / src_run / "run.json").is_file():
            run_ids.add(src_run)
    missing = [rid for rid in run_ids if not (r.folder / "runs" / rid / "run.json").is_file()]
    if missing:
        raise RestoreError(f"archive is missing run {missing[0]}")
    return run_ids, lm_ids, source_keys


def _model_deps(m: dict) -> set[str]:
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


def _parallel(r: _Restorer, keys: list, fn, label: str, tick: bool = True):
    """Run ``fn(key)`` for every key in a thread pool; yield (key, result, error message)."""
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


def _plan(r, result, selected, states, clash, exp_ids, run_ids, lm_ids, source_keys) -> None:
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


def default_workers() -> int:
    """Parallel transfers (``MLOPS_RESTORE_WORKERS``, default 8)."""
    try:
        return max(1, env.MLOPS_RESTORE_WORKERS.get())
    except env.EnvError:
        return env.MLOPS_RESTORE_WORKERS.default
