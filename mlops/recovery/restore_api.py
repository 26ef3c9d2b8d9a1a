"""Restore through MLflow's API calls, resumable.

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

from mlops import config, registry
from mlops.recovery import artifacts, layout
from mlops.recovery.artifacts import ArtifactStoreError, DirectStore
from mlops.recovery.plan import (
    DONE_TAG,
    IN_PROGRESS_TAG,
    MODEL_VERSIONS_TAG,
    PARTIAL_PREFIX,
    PROV_MODEL,
    PROV_RUN,
    RESTORE_TAG_PREFIX,
    ArchiveReader,
    Progress,
    RestoreError,
    RestoreResult,
    Selection,
    in_parallel,
    model_deps,
    own_tags,
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


class _Restorer(ArchiveReader, ResumeState):
    """One restore through MLflow's API calls: what it has made so far, and how it makes the rest."""

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

    # ---- registered models -------------------------------------------------------------------
    def version_args(self, v: dict) -> dict:
        """Source, run id and logged model id of a restored version, pointing at what this restore made."""
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
        """Create a registered model with every version number in order; the placeholders made."""
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


def restore_through_api(r: _Restorer, result: RestoreResult, sel: Selection) -> None:
    """Runs, then logged models and sources, then registered models, each step in parallel;
    a failure is collected and everything that depends on it is left for the next run."""
    selected, states, by_name = sel.models, sel.states, sel.by_name
    run_ids, lm_ids, source_keys, lm_recs = sel.run_ids, sel.lm_ids, sel.source_keys, sel.lm_recs
    existing_runs, existing_lms = sel.existing_runs, sel.existing_lms
    failed_deps: set[str] = set()

    # Runs, in parallel.
    todo = r.reuse_runs(run_ids, existing_runs, result)
    for rid, out, err in in_parallel(r, todo, lambda rid: r.restore_run(r.run_record(rid)), "run"):
        if err:
            failed_deps.add(rid)
            r.failures.append(f"run {rid}: {err}")
        else:
            r.run_map[rid], r.run_uri[rid] = out
            result.runs_created += 1

    # Logged models and plain sources, in parallel (they name their restored runs).
    outputs, inputs = model_links(r, run_ids)
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
    for mid, out, err in in_parallel(r, todo, lambda mid: r.restore_logged_model(lm_recs[mid], outputs, inputs),
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

    for key, out, err in in_parallel(r, todo, _src, "source"):
        if err:
            failed_deps.add(key)
            r.failures.append(f"model source {key}: {err}")
        else:
            r.src_map[key] = out

    # Registered models: parallel across models, versions of one model in order.
    ready, blocked = [], []
    for m in selected:
        deps = model_deps(m)
        bad = sorted(deps & failed_deps)
        if bad:
            blocked.append(m["name"])
            r.failures.append(f"model {m['name']}: not restored because {bad[0]} failed")
        else:
            ready.append(m)
    for name, out, err in in_parallel(
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


def raise_failures(r: _Restorer) -> None:
    """RestoreError listing every failure collected, if there was one."""
    if r.failures:
        raise RestoreError(
            f"restore incomplete: {len(r.failures)} problem(s), first: {r.failures[0]}; "
            "fix the cause and re-run the same command to finish",
            r.failures,
        )


def model_links(r: _Restorer, run_ids: set[str]) -> tuple[dict[str, list[tuple[str, int]]], dict[str, list[str]]]:
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


def restored_outputs(outputs: list[tuple[str, int]], run_map: dict[str, str]) -> list[tuple[str, int]]:
    """(restored run id, step) for the source runs that were restored."""
    return [(run_map[s], step) for s, step in outputs if s in run_map]


def direct_store(r: _Restorer, destination: str) -> DirectStore | None:
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
