"""Restore through MLflow's API calls, part one: experiments, runs (params, metrics, tags,
datasets, artifacts) and logged models, each made anew in the target and mapped from its archive
id. ``mlops.recovery.restore_api`` builds on it for registered models and drives the restore.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
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
)

from mlops import config
from mlops.recovery import artifacts, layout
from mlops.recovery.artifacts import DirectStore
from mlops.recovery.plan import (
    MODEL_VERSIONS_TAG,
    PARTIAL_PREFIX,
    PROV_MODEL,
    PROV_RUN,
    RESTORE_TAG_PREFIX,
    ArchiveReader,
    Progress,
    RestoreError,
)
from mlops.recovery.resume import ResumeState
from mlops.util import first_line

log = logging.getLogger(__name__)

MAX_METRICS, MAX_PARAMS, MAX_TAGS, MAX_ENTITIES = 1000, 100, 100, 1000
TERMINAL = ("FINISHED", "FAILED", "KILLED")


def metric_batches(metrics: list, params: list, tags: list):
    """Split into ``log_batch`` calls within MLflow's limits (1000 metrics, 100 params, 100 tags)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        p, params = params[:MAX_PARAMS], params[MAX_PARAMS:]
        t, tags = tags[:MAX_TAGS], tags[MAX_TAGS:]
        room = min(MAX_METRICS, MAX_ENTITIES - len(p) - len(t))
        m, metrics = metrics[:room], metrics[room:]
        yield m, p, t


class RunRestorer(ArchiveReader, ResumeState):
    """One restore through MLflow's API calls: what it has made so far, and how it makes experiments,
    runs and logged models."""

    def __init__(self, client: MlflowClient, folder: Path, reg: dict, backup_id: str, workers: int,
                 on_progress: Progress | None):
        super().__init__(folder, reg)
        self.client = client
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
        self.is_server = is_rest(client)
        self.versions_made: dict[str, list[tuple[str, int]]] = {}
        self.fresh_lms: set[str] = set()
        self.direct: DirectStore | None = None
        # What carries a provenance tag (resume state), to be removed once the restore completes.
        self.tagged_runs: set[str] = set()
        self.tagged_lms: set[str] = set()
        self.tagged_models: set[str] = set()

    # ---- helpers -------------------------------------------------------------------------
    def tick(self, label: str, n: int = 1) -> None:
        """Count ``n`` steps done and report progress."""
        self.done += n
        if self.on_progress:
            self.on_progress(self.done, self.total, label)

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
        """Map the archive's experiments to the target's (found by name, else created); with ``dry``, only say so."""
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

    # ---- runs ----------------------------------------------------------------------------
    def restore_run(self, rec: dict) -> tuple[str, str]:
        """Create one run with its datasets, artifacts, params, metrics and tags; (run id, artifact URI)."""
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
        self.upload(run.info.artifact_uri, self.folder / layout.run_artifacts(rec["run_id"]))
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
        self.upload(lm.artifact_location, self.folder / layout.logged_model_artifacts(rec["model_id"]))
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


def is_rest(client: MlflowClient) -> bool:
    from mlflow.store.tracking.rest_store import RestStore

    return isinstance(getattr(client._tracking_client, "store", None), RestStore)
