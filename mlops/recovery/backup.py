"""Registry backup: every selected registered model, its versions, source runs and artifacts.

The archive (:mod:`mlops.recovery.archive`, laid out as :mod:`mlops.recovery.layout`) holds
``registry.json`` (models, versions including the deleted numbers, aliases, experiments), one
``runs/<run_id>/run.json`` per source run (params, full metric histories, tags, times, status,
dataset inputs) with the run's artifacts under ``runs/<run_id>/artifacts/``, and one
``logged_models/<model_id>/`` folder per MLflow 3 logged model a version points at. Sources that
are neither (a plain path) go under ``sources/<key>/``. What is read from the source registry is
in :mod:`mlops.recovery.source`; the leftovers of an interrupted backup in
:mod:`mlops.recovery.staging`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops import config, env, registry
from mlops.recovery import archive, artifacts, layout, source
from mlops.recovery import staging as staging_mod
from mlops.recovery.artifacts import ArtifactStoreError, DirectStore
from mlops.recovery.source import BackupError
from mlops.registry import version_filter  # noqa: F401 - callers build the same filter
from mlops.util import first_line

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
QUIET_RUN_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


@dataclass(frozen=True)
class BackupOptions:
    """How to back up (see :func:`backup`): the server's database and artifact store, parallelism."""

    backend_store_uri: str | None = None
    artifacts_destination: str | None = None
    workers: int = 8
    on_progress: Progress | None = None


@dataclass
class BackupResult:
    """What a backup wrote."""

    path: Path
    models: list[str]
    versions: int
    deleted_versions: int
    runs: int
    logged_models: int
    files: int
    size: int
    sha256: str
    warnings: list[str] = field(default_factory=list)


def default_path(home: Path | None = None) -> Path:
    """``backups/registry-<UTC timestamp>.tar.gz`` under the project home."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return (home or config.project_home()) / "backups" / f"registry-{stamp}.tar.gz"


_FILE_POOL: ThreadPoolExecutor | None = None
_FILE_POOL_LOCK = threading.Lock()


def _file_pool() -> ThreadPoolExecutor:
    global _FILE_POOL
    with _FILE_POOL_LOCK:
        if _FILE_POOL is None:
            _FILE_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlops-download")
        return _FILE_POOL


def _download(uri: str, tracking_uri: str, dest: Path, direct: DirectStore | None = None) -> None:
    """Copy every file under an artifact URI into ``dest``: one listing per folder, files in parallel.

    (MLflow's own ``download_artifacts`` lists the top folder twice; at thousands of folders
    through a tracking server that is a fifth of all requests.) With a direct artifact store,
    proxied URIs are read from the store itself.
    """
    dest.mkdir(parents=True, exist_ok=True)
    repo = artifacts.repository(uri, tracking_uri, direct)
    files: list[str] = []
    pending = [None]
    while pending:
        path = pending.pop()
        for fi in repo.list_artifacts(path):
            if path is not None and fi.path.rstrip("/") == path.rstrip("/"):
                continue  # a listing of a file returns the file itself on some stores
            (pending if fi.is_dir else files).append(fi.path)
    for f in files:
        if not archive.safe_name(f):
            raise BackupError(f"artifact store returned an unsafe path {f!r} under {uri}")
    download = getattr(repo, "_download_file", None)
    if download is None:  # an artifact repository without the per-file hook
        repo.download_artifacts("", dst_path=str(dest))
        return

    def one(f: str) -> None:
        local = dest / f
        local.parent.mkdir(parents=True, exist_ok=True)
        download(f, str(local))

    for fut in [_file_pool().submit(one, f) for f in files]:
        fut.result()


def _signature(model_dir: Path) -> dict | None:
    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return None
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster, same result
    try:
        return (yaml.load(mlmodel.read_text(), Loader=loader) or {}).get("signature")  # noqa: S506 - a safe loader
    except (yaml.YAMLError, OSError, AttributeError):
        return None


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def _export_run(client: MlflowClient, run, metrics: dict[str, list] | None, staging: Path,
                direct: DirectStore | None = None) -> layout.RunRecord:
    """run.json (params, tags, metric histories, inputs, outputs) and the run's artifacts."""
    run_id = run.info.run_id
    if metrics is None:
        metrics = {
            key: [[m.value, m.timestamp, m.step] for m in client.get_metric_history(run_id, key)]
            for key in sorted(run.data.metrics)
        }
    _download(run.info.artifact_uri, client.tracking_uri, staging / layout.run_artifacts(run_id), direct)
    record = layout.run_record(run, metrics)
    _write_json(staging / layout.run_json(run_id), record)
    return record


def _export_logged_model(client: MlflowClient, lm, staging: Path,
                         direct: DirectStore | None = None) -> layout.LoggedModelRecord:
    """logged_model.json and the logged model's files."""
    model_id = lm.model_id
    files = staging / layout.logged_model_artifacts(model_id)
    _download(lm.artifact_location, client.tracking_uri, files, direct)
    if not any(files.iterdir()):
        raise BackupError(f"logged model {model_id} has no artifacts")
    record = layout.logged_model_record(lm)
    _write_json(staging / layout.logged_model_json(model_id), record)
    return record


def _export_source(client: MlflowClient, source: str, staging: Path, key: str) -> layout.SourceRecord:
    """A plain-path or ``models:/`` source: its files directly under ``dest/artifacts``.

    MLflow's ``download_artifacts`` puts a folder named by a path *inside* the destination
    (``dst/plain_model/MLmodel``), a ``models:/`` URI's files directly into it: the folder it
    returns becomes ``artifacts``.
    """
    dest = staging / layout.source_dir(key)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "download"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
    target = staging / layout.source_artifacts(key)
    if local.is_dir():
        os.replace(local, target)
    else:
        target.mkdir()
        os.replace(local, target / local.name)
    shutil.rmtree(tmp, ignore_errors=True)
    record: layout.SourceRecord = {"source": source}
    _write_json(staging / layout.source_json(key), record)
    return record


@contextlib.contextmanager
def tracking_uri_set(uri: str):
    """Point MLflow's global tracking URI at ``uri`` (and silence run links) for the block.

    Some registry calls resolve ``models:/m-…`` through the global URI rather than the client's.
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils

    previous = tracking_utils._tracking_uri
    with env.preserved(env.MLFLOW_TRACKING_URI.name, QUIET_RUN_URLS):
        mlflow.set_tracking_uri(uri)
        os.environ[QUIET_RUN_URLS] = "true"  # else every set_terminated prints a link (and reads the run)
        try:
            yield
        finally:
            tracking_utils._tracking_uri = previous


def backup(client: MlflowClient, out: Path | None = None, models: list[str] | None = None, *,
           options: BackupOptions | None = None, **fields) -> BackupResult:
    """Write a backup of the selected (default: all) registered models to ``out``.

    ``backend_store_uri`` (a SQL URI) lets a backup taken through a tracking server also record
    deleted version numbers above the highest live one; on a direct SQL store it is read itself.
    ``artifacts_destination`` (the server's ``--artifacts-destination``) reads proxied artifacts
    from that store directly (see :mod:`mlops.recovery.artifacts`). These are the fields of
    :class:`BackupOptions`: give them as keywords, or one ``options``.
    """
    opts = options or BackupOptions(**fields)
    with tracking_uri_set(client.tracking_uri), staging_mod.interrupt_on_signals():
        try:
            return _backup(client, out, models, opts)
        except ArtifactStoreError as exc:
            raise BackupError(str(exc)) from None


def _backup(client: MlflowClient, out: Path | None, models: list[str] | None, opts: BackupOptions) -> BackupResult:
    """List what to back up, download it into a staging folder, pack the archive."""
    out = Path(out) if out else default_path()
    if out.exists() and out.is_dir():
        raise BackupError(f"--out is a directory: {out}")
    uri = client.tracking_uri
    warnings_: list[str] = []
    names = source.select_models(client, models)
    db_uri = opts.backend_store_uri or (uri if source.is_sql(uri) else None)
    counters = source.db_max_versions(db_uri) if db_uri else None
    model_records, lm_ids, sources, runs = _list_models(client, names, counters, warnings_)
    lm_objs = _logged_models(client, lm_ids, runs, opts.workers)
    histories = source.bulk_histories(client, runs)
    direct = _direct_store(opts.artifacts_destination, uri, lm_objs, runs)

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging_mod.clean_stale(parent)
    staging = Path(tempfile.mkdtemp(prefix=f"{staging_mod.STAGING_PREFIX}{os.getpid()}-", dir=parent))
    try:
        runs, lms = _collect(client, staging, runs, histories, lm_objs, sources, opts, direct)
        _describe_model_files(staging, model_records, warnings_)
        experiments = source.experiments(client, {r["experiment_id"] for r in runs.values()} | {
            lm["experiment_id"] for lm in lms.values()})
        meta = {
            "backup_id": uuid.uuid4().hex,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mlflow_version": mlflow.__version__,
            "source_tracking_uri": config.redact_uri(uri),
            "models": [r["name"] for r in model_records],
            "counts": {
                "models": len(model_records), "versions": sum(len(r["versions"]) for r in model_records),
                "runs": len(runs), "logged_models": len(lms), "sources": len(sources),
            },
        }
        _write_json(staging / layout.REGISTRY_NAME, {
            **{k: meta[k] for k in ("backup_id", "created", "mlflow_version", "source_tracking_uri")},
            "models": model_records, "experiments": experiments,
        })
        manifest = archive.write_archive(staging, out, meta)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(
        path=out, models=[r["name"] for r in model_records],
        versions=meta["counts"]["versions"],
        deleted_versions=sum(len(r["deleted_versions"]) for r in model_records),
        runs=len(runs), logged_models=len(lms), files=len(manifest["files"]) + 1,
        size=out.stat().st_size, sha256=archive.sha256_file(out), warnings=warnings_,
    )


def _list_models(client: MlflowClient, names: list[str], counters: dict | None,
                 warnings_: list[str]) -> tuple[list[dict], set[str], dict[str, str], dict]:
    """The model records with their versions; the logged model ids, plain sources and runs they name."""
    listed = []
    for name in names:
        rm = registry.get_model(client, name)
        listed.append((rm, source.search_versions(client, name)))
    run_ids = {mv.run_id for _, versions in listed for mv in versions if mv.run_id}
    runs = source.fetch_runs_or_fail(client, run_ids)

    model_records, lm_ids, sources = [], set(), {}
    for rm, versions in listed:
        name = rm.name
        live_max = max((int(v.version) for v in versions), default=0)
        hinted = max(source.history_versions(rm.tags), default=0)
        db_max = (counters or {}).get(name, 0)
        max_used = max(live_max, hinted, db_max)
        rec = layout.model_record(rm, versions, max_used, counters is not None)
        if counters is None and live_max and max_used == live_max:
            warnings_.append(
                f"{name}: deleted versions above v{live_max} cannot be seen through a tracking server; "
                "pass --backend-store-uri to record them"
            )
        for mv in versions:
            src = layout.source_info(mv, runs[mv.run_id].info.artifact_uri if mv.run_id else None)
            if src["kind"] == "logged_model":
                lm_ids.add(src["model_id"])
            elif src["kind"] == "files":
                sources[src["key"]] = mv.source
            elif src["kind"] == "none":
                raise BackupError(f"{name} v{mv.version} has no source to back up")
            rec["versions"].append(layout.version_record(mv, src, rec["aliases"]))
        model_records.append(rec)
    return model_records, lm_ids, sources, runs


def _logged_models(client: MlflowClient, lm_ids: set[str], runs: dict, workers: int) -> dict:
    """The logged models by id; their source runs are added to ``runs`` (backed up too)."""
    lm_objs = source.fetch_logged_models(client, lm_ids, {r.info.experiment_id for r in runs.values()})
    lm_objs.update(source.parallel_get(client.get_logged_model, lm_ids - set(lm_objs), workers, "logged model"))
    extra = {lm.source_run_id for lm in lm_objs.values() if lm.source_run_id} - set(runs)
    if extra:
        try:
            runs.update(source.fetch_runs(client, extra))
        except MlflowException as exc:
            log.warning("source run of a logged model cannot be read (%s); it is left out", exc.message)
    return lm_objs


def _direct_store(destination: str | None, uri: str, lm_objs: dict, runs: dict) -> DirectStore | None:
    """The artifact store read directly, when the server's proxied artifacts are found there."""
    if not destination:
        return None
    direct = DirectStore(destination)
    samples = [lm.artifact_location for lm in lm_objs.values()] + [r.info.artifact_uri for r in runs.values()]
    if not direct.check(uri, [s for s in samples if direct.uri_for(s) is not None]):
        log.warning("no proxied artifacts to compare with %s: reading artifacts through the server",
                    direct.destination)
        return None
    return direct


def _describe_model_files(staging: Path, model_records: list[dict], warnings_: list[str]) -> None:
    """Each version's signature and file digests, read from what was staged."""
    hashed: dict[Path, dict[str, str]] = {}
    for rec in model_records:
        for v in rec["versions"]:
            v["signature"] = _signature(staging / layout.model_dir(v))
            v["model_files"] = _model_files(staging, v, hashed)
            if "MLmodel" not in v["model_files"]:
                warnings_.append(f"{rec['name']} v{v['version']}: its source {v['source']} holds no MLmodel; "
                                 "it cannot be loaded here nor after a restore")


def _model_files(staging: Path, v: dict, cache: dict[Path, dict[str, str]]) -> dict[str, str]:
    """sha256 of every file of a version's model, by path inside its model folder."""
    d = staging / layout.model_dir(v)
    if d not in cache:
        cache[d] = {
            Path(root, n).relative_to(d).as_posix(): archive.sha256_file(Path(root, n))
            for root, _dirs, names in os.walk(d) for n in names
        }
    return cache[d]


def _collect(client: MlflowClient, staging: Path, runs: dict, histories: dict | None, lm_objs: dict,
             sources: dict[str, str], opts: BackupOptions, direct: DirectStore | None = None) -> tuple[dict, dict]:
    """Download runs, logged models and plain sources in parallel; any failure aborts the backup."""
    workers, on_progress = opts.workers, opts.on_progress
    tasks = (
        [("run", r) for r in sorted(runs)]
        + [("logged_model", m) for m in sorted(lm_objs)]
        + [("source", k) for k in sorted(sources)]
    )
    out_runs, lms = {}, {}
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mlops-backup") as pool:
        futures = {}
        for kind, key in tasks:
            if kind == "run":
                metrics = histories.get(key) if histories is not None else None
                fut = pool.submit(_export_run, client, runs[key], metrics, staging, direct)
            elif kind == "logged_model":
                fut = pool.submit(_export_logged_model, client, lm_objs[key], staging, direct)
            else:
                fut = pool.submit(_export_source, client, sources[key], staging, key)
            futures[fut] = (kind, key)
        try:
            for fut in as_completed(futures):
                kind, key = futures[fut]
                try:
                    rec = fut.result()
                except BackupError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one line naming what failed
                    raise BackupError(f"cannot back up {kind.replace('_', ' ')} {key}: {first_line(exc)}") from exc
                if kind == "run":
                    out_runs[key] = rec
                elif kind == "logged_model":
                    lms[key] = rec
                done += 1
                if on_progress:
                    on_progress(done, len(tasks), f"{kind} {key}")
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return out_runs, lms
