"""Registry backup: every selected registered model, its versions, source runs and artifacts.

The archive (see :mod:`mlops.archive`) holds ``registry.json`` (models, versions including the
deleted numbers, aliases, experiments), one ``runs/<run_id>/run.json`` per source run (params,
full metric histories, tags, times, status, dataset inputs) with the run's artifacts under
``runs/<run_id>/artifacts/``, and one ``logged_models/<model_id>/`` folder per MLflow 3 logged
model a version points at. Sources that are neither (a plain path) go under ``sources/<key>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import signal
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

from mlops import archive, artifacts, config, env, registry
from mlops.artifacts import ArtifactStoreError, DirectStore
from mlops.registry import version_filter
from mlops.util import first_line, paged, pages

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql")
LOGGED_MODEL_SOURCE = re.compile(r"^models:/(m-[0-9a-f]+)/?$")
PROMPT_TAG = "mlflow.prompt.is_prompt"
QUIET_RUN_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
STAGING_PREFIX = ".mlops-backup-"
STAGING_NAME = re.compile(r"^\.mlops-backup-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")
PARTIAL_NAME = re.compile(r"^\..+?(?:\.(?P<pid>\d+))?\.[A-Za-z0-9_]+\.partial$")
STALE_HOURS = env.MLOPS_BACKUP_STALE_HOURS.default


class BackupError(registry.RegistryError):
    """The backup could not be completed; nothing was written at the destination."""


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_hours() -> float:
    """Age after which an earlier backup's leftovers are removed whoever owns them
    (``MLOPS_BACKUP_STALE_HOURS``, default 24)."""
    try:
        return env.MLOPS_BACKUP_STALE_HOURS.get()
    except env.EnvError:
        return STALE_HOURS


def clean_stale(folder: Path, max_age_hours: float | None = None) -> list[Path]:
    """Remove staging folders and ``.partial`` files that earlier, interrupted backups left in
    ``folder``: those whose process is gone, and any older than ``max_age_hours`` (also those
    of versions that did not name their process). Each removal is logged; returns them."""
    max_age = (stale_hours() if max_age_hours is None else max_age_hours) * 3600
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for e in entries:
        m = STAGING_NAME.match(e.name) if e.is_dir(follow_symlinks=False) else None
        if m is None and e.is_file(follow_symlinks=False):
            m = PARTIAL_NAME.match(e.name)
        if m is None:
            continue
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(m.group("pid")) if m.group("pid") else None
        if age <= max_age and (pid is None or pid == os.getpid() or _pid_alive(pid)):
            continue
        why = f"its backup process {pid} is gone" if pid and age <= max_age else f"{age / 3600:.1f} h old"
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError as exc:
            log.warning("cannot remove leftover %s of an earlier backup: %s", e.path, exc)
            continue
        log.warning("removed leftover %s of an interrupted backup (%s)", e.path, why)
        removed.append(Path(e.path))
    return removed


@contextlib.contextmanager
def interrupt_on_signals():
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, so the backup's cleanup
    (staging folder, ``.partial`` file) runs as it does on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        saved[sig] = signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _is_sql(uri: str | None) -> bool:
    return bool(uri) and uri.split(":", 1)[0].split("+", 1)[0].lower() in SQL_SCHEMES


def db_max_versions(backend_uri: str | None) -> dict[str, int] | None:
    """Highest version number ever used per model, deleted ones included, read from the SQL store.

    MLflow keeps deleted versions as rows (stage ``Deleted_Internal``) and never reuses their
    numbers, but no API exposes them. Returns None when ``backend_uri`` is not a SQL store.
    """
    if not _is_sql(backend_uri):
        return None
    import sqlalchemy as sa

    problem = config.password_problem(backend_uri)
    if problem:
        raise BackupError(problem)
    engine = None
    try:
        engine = sa.create_engine(backend_uri)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT name, MAX(version) FROM model_versions GROUP BY name")).all()
    except (sa.exc.SQLAlchemyError, ValueError, ImportError) as exc:
        raise BackupError(f"cannot read version counters from {config.redact_uri(backend_uri)}: "
                          f"{exc.__class__.__name__}") from None
    finally:
        if engine is not None:
            engine.dispose()
    return {str(name): int(v) for name, v in rows if v is not None}


def _search_versions(client: MlflowClient, name: str) -> list:
    found = paged(client.search_model_versions, filter_string=version_filter(name), max_results=10000)
    return sorted((v for v in found if v.name == name), key=lambda v: int(v.version))


def _history_versions(tags: dict) -> set[int]:
    """Version numbers mentioned in the promotion history (hints for deleted top versions)."""
    raw = (tags or {}).get(registry.HISTORY_TAG)
    nums: set[int] = set()
    try:
        for e in json.loads(raw) if raw else []:
            for k in ("from_version", "to_version"):
                if isinstance(e, dict) and str(e.get(k) or "").isdigit():
                    nums.add(int(e[k]))
    except ValueError:
        pass
    return nums


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


def _run_record(run, metrics: dict[str, list]) -> dict:
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


def _export_run(client: MlflowClient, run, metrics: dict[str, list] | None, dest: Path,
                direct: DirectStore | None = None) -> dict:
    """run.json (params, tags, metric histories, inputs, outputs) and the run's artifacts."""
    run_id = run.info.run_id
    if metrics is None:
        metrics = {
            key: [[m.value, m.timestamp, m.step] for m in client.get_metric_history(run_id, key)]
            for key in sorted(run.data.metrics)
        }
    _download(run.info.artifact_uri, client.tracking_uri, dest / "artifacts", direct)
    record = _run_record(run, metrics)
    _write_json(dest / "run.json", record)
    return record


def fetch_runs(client: MlflowClient, run_ids: set[str]) -> dict:
    """Runs by id, 100 per ``search_runs`` call (``get_run`` for any the search did not return)."""
    from mlflow.entities import ViewType

    found: dict = {}
    ids = sorted(run_ids)
    try:
        exps = [e.experiment_id for e in paged(client.search_experiments, view_type=ViewType.ALL,
                                               max_results=1000)] if ids else []
        for i in range(0, len(ids), 100):
            chunk = ids[i:i + 100]
            filt = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in chunk) + ")"
            found.update((r.info.run_id, r) for r in paged(
                client.search_runs, experiment_ids=exps, filter_string=filt, run_view_type=ViewType.ALL,
                max_results=1000) if r.info.run_id in run_ids)
    except MlflowException as exc:
        log.debug("batched run lookup failed (%s); reading runs one by one", exc)
    for rid in ids:
        if rid not in found:
            found[rid] = client.get_run(rid)
    return found


BULK_HISTORY = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
BULK_MAX = 25000


def bulk_histories(client: MlflowClient, runs: dict) -> dict[str, dict[str, list]] | None:
    """Metric histories of many runs with one request per metric key and 100 runs, through a server.

    Uses the tracking server's bulk endpoint (the one its UI uses). Returns None when the store is
    not a server or the endpoint is unavailable; callers then ask per run and key.
    """
    from mlflow.store.tracking.rest_store import RestStore
    from mlflow.utils.rest_utils import http_request

    store = getattr(client._tracking_client, "store", None)
    if not isinstance(store, RestStore):
        return None
    creds = store.get_host_creds()
    by_key: dict[str, list[str]] = {}
    for rid, run in runs.items():
        for key in run.data.metrics:
            by_key.setdefault(key, []).append(rid)
    out: dict[str, dict[str, list]] = {rid: {} for rid in runs}

    def one(key: str, chunk: list[str]) -> None:
        resp = http_request(creds, BULK_HISTORY, "GET", params={"run_id": chunk, "metric_key": key,
                                                                "max_results": BULK_MAX})
        if resp.status_code != 200:
            raise BackupError(f"bulk metric history answered HTTP {resp.status_code}")
        metrics = resp.json().get("metrics", [])
        if len(metrics) >= BULK_MAX:  # possibly cut off: ask per run
            for rid in chunk:
                out[rid][key] = [[m.value, m.timestamp, m.step] for m in client.get_metric_history(rid, key)]
            return
        for rid in chunk:
            out[rid][key] = []
        for m in metrics:
            out[m["run_id"]][key].append([m["value"], int(m["timestamp"]), int(m.get("step") or 0)])

    jobs = [(k, rids[i:i + 100]) for k, rids in by_key.items() for i in range(0, len(rids), 100)]
    try:
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="mlops-metrics") as pool:
            for f in [pool.submit(one, k, c) for k, c in jobs]:
                f.result()
    except Exception as exc:  # noqa: BLE001 - an older or locked-down server: fall back
        log.debug("bulk metric history unavailable (%s); asking per run", exc)
        return None
    return out


def _export_logged_model(client: MlflowClient, lm, dest: Path, direct: DirectStore | None = None) -> dict:
    model_id = lm.model_id
    _download(lm.artifact_location, client.tracking_uri, dest / "artifacts", direct)
    if not any((dest / "artifacts").iterdir()):
        raise BackupError(f"logged model {model_id} has no artifacts")
    status = getattr(lm.status, "value", None) or str(lm.status)
    record = {
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
    _write_json(dest / "logged_model.json", record)
    return record


def _export_source(client: MlflowClient, source: str, dest: Path) -> dict:
    """A plain-path or ``models:/`` source: its files directly under ``dest/artifacts``.

    MLflow's ``download_artifacts`` puts a folder named by a path *inside* the destination
    (``dst/plain_model/MLmodel``), a ``models:/`` URI's files directly into it: the folder it
    returns becomes ``artifacts``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "download"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp)))
    target = dest / "artifacts"
    if local.is_dir():
        os.replace(local, target)
    else:
        target.mkdir()
        os.replace(local, target / local.name)
    shutil.rmtree(tmp, ignore_errors=True)
    record = {"source": source}
    _write_json(dest / "source.json", record)
    return record


def _classify(mv, run_artifact_uri: str | None) -> dict:
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


def _model_record(rm, versions: list, max_used: int, exact: bool) -> dict:
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


def backup(
    client: MlflowClient,
    out: Path | None = None,
    models: list[str] | None = None,
    *,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    workers: int = 8,
    on_progress: Progress | None = None,
) -> BackupResult:
    """Write a backup of the selected (default: all) registered models to ``out``.

    ``backend_store_uri`` (a SQL URI) lets a backup taken through a tracking server also record
    deleted version numbers above the highest live one; on a direct SQL store it is read itself.
    ``artifacts_destination`` (the server's ``--artifacts-destination``) reads proxied artifacts
    from that store directly (see :mod:`mlops.artifacts`).
    """
    with tracking_uri_set(client.tracking_uri), interrupt_on_signals():
        try:
            return _backup(client, out, models, backend_store_uri, artifacts_destination, workers, on_progress)
        except ArtifactStoreError as exc:
            raise BackupError(str(exc)) from None


def _backup(client, out, models, backend_store_uri, artifacts_destination, workers, on_progress) -> BackupResult:
    out = Path(out) if out else default_path()
    if out.exists() and out.is_dir():
        raise BackupError(f"--out is a directory: {out}")
    uri = client.tracking_uri
    warnings_: list[str] = []
    names = _select(client, models)
    db_uri = backend_store_uri or (uri if _is_sql(uri) else None)
    counters = db_max_versions(db_uri) if db_uri else None

    listed = []
    for name in names:
        rm = registry.get_model(client, name)
        listed.append((rm, _search_versions(client, name)))
    run_ids = {mv.run_id for _, versions in listed for mv in versions if mv.run_id}
    runs = _fetch_runs_or_fail(client, run_ids)

    model_records, lm_ids, sources = [], set(), {}
    for rm, versions in listed:
        name = rm.name
        live_max = max((int(v.version) for v in versions), default=0)
        hinted = max(_history_versions(rm.tags), default=0)
        db_max = (counters or {}).get(name, 0)
        max_used = max(live_max, hinted, db_max)
        rec = _model_record(rm, versions, max_used, counters is not None)
        if counters is None and live_max and max_used == live_max:
            warnings_.append(
                f"{name}: deleted versions above v{live_max} cannot be seen through a tracking server; "
                "pass --backend-store-uri to record them"
            )
        for mv in versions:
            src = _classify(mv, runs[mv.run_id].info.artifact_uri if mv.run_id else None)
            if src["kind"] == "logged_model":
                lm_ids.add(src["model_id"])
            elif src["kind"] == "files":
                sources[src["key"]] = mv.source
            elif src["kind"] == "none":
                raise BackupError(f"{name} v{mv.version} has no source to back up")
            rec["versions"].append({
                "version": int(mv.version), "stage": mv.current_stage or "None",
                "description": mv.description or "", "tags": dict(mv.tags or {}),
                "status": mv.status, "status_message": mv.status_message, "run_id": mv.run_id,
                "run_link": mv.run_link, "source": mv.source, "source_info": src,
                "user_id": mv.user_id, "creation_timestamp": mv.creation_timestamp,
                "last_updated_timestamp": mv.last_updated_timestamp,
                "aliases": sorted(a for a, v in rec["aliases"].items() if v == str(mv.version)),
            })
        model_records.append(rec)

    # Logged models name their source run: back those runs up too.
    lm_objs = fetch_logged_models(client, lm_ids, {r.info.experiment_id for r in runs.values()})
    lm_objs.update(_parallel_get(client.get_logged_model, lm_ids - set(lm_objs), workers, "logged model"))
    extra = {lm.source_run_id for lm in lm_objs.values() if lm.source_run_id} - set(runs)
    if extra:
        try:
            runs.update(fetch_runs(client, extra))
        except MlflowException as exc:
            log.warning("source run of a logged model cannot be read (%s); it is left out", exc.message)
    histories = bulk_histories(client, runs)
    direct = None
    if artifacts_destination:
        direct = DirectStore(artifacts_destination)
        samples = [lm.artifact_location for lm in lm_objs.values()] + [r.info.artifact_uri for r in runs.values()]
        if not direct.check(uri, [s for s in samples if direct.uri_for(s) is not None]):
            log.warning("no proxied artifacts to compare with %s: reading artifacts through the server",
                        direct.destination)
            direct = None

    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(parent)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=parent))
    try:
        runs, lms = _collect(client, staging, runs, histories, lm_objs, sources, workers, on_progress, direct)
        hashed: dict[Path, dict[str, str]] = {}
        for rec in model_records:
            for v in rec["versions"]:
                v["signature"] = _signature(_model_dir(staging, v))
                v["model_files"] = _model_files(staging, v, hashed)
                if "MLmodel" not in v["model_files"]:
                    warnings_.append(f"{rec['name']} v{v['version']}: its source {v['source']} holds no MLmodel; "
                                     "it cannot be loaded here nor after a restore")
        experiments = _experiments(client, {r["experiment_id"] for r in runs.values()} | {
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
        _write_json(staging / "registry.json", {
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


def _model_dir(staging: Path, v: dict) -> Path:
    return staging / archive.model_dir(v)


def _model_files(staging: Path, v: dict, cache: dict[Path, dict[str, str]]) -> dict[str, str]:
    """sha256 of every file of a version's model, by path inside its model folder."""
    d = _model_dir(staging, v)
    if d not in cache:
        cache[d] = {
            Path(root, n).relative_to(d).as_posix(): archive.sha256_file(Path(root, n))
            for root, _dirs, names in os.walk(d) for n in names
        }
    return cache[d]


def _select(client: MlflowClient, models: list[str] | None) -> list[str]:
    if models:
        for name in models:
            registry.get_model(client, name)
        return list(dict.fromkeys(models))
    return sorted(
        rm.name for rm in registry._all_models(client) if (rm.tags or {}).get(PROMPT_TAG, "").lower() != "true"
    )


def fetch_logged_models(client: MlflowClient, model_ids: set[str], experiment_ids: set[str]) -> dict:
    """Logged models by id, read 100 per page from their runs' experiments (what is not found
    there, or beyond a few pages more than needed, is left to the caller)."""
    found: dict = {}
    if not model_ids or not experiment_ids:
        return found
    budget = 3 * (len(model_ids) // 100 + 1)
    try:
        listing = pages(client.search_logged_models, experiment_ids=sorted(experiment_ids), max_results=100)
        for page in itertools.islice(listing, budget):
            found.update((lm.model_id, lm) for lm in page if lm.model_id in model_ids)
            if len(found) == len(model_ids):
                break
    except MlflowException as exc:
        log.debug("batched logged-model lookup failed (%s); reading them one by one", exc)
    return found


def _fetch_runs_or_fail(client: MlflowClient, run_ids: set[str]) -> dict:
    try:
        return fetch_runs(client, run_ids)
    except MlflowException as exc:
        raise BackupError(f"a source run cannot be read: {exc.message}") from None


def _parallel_get(fn, keys, workers: int, label: str) -> dict:
    out = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mlops-backup") as pool:
        futures = {pool.submit(fn, k): k for k in sorted(keys)}
        for fut in as_completed(futures):
            try:
                out[futures[fut]] = fut.result()
            except Exception as exc:  # noqa: BLE001 - one line naming what failed
                raise BackupError(f"cannot read {label} {futures[fut]}: {first_line(exc)}") from None
    return out


def _collect(client, staging, runs, histories, lm_objs, sources, workers, on_progress, direct=None):
    """Download runs, logged models and plain sources in parallel; any failure aborts the backup."""
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
                fut = pool.submit(_export_run, client, runs[key], metrics, staging / "runs" / key, direct)
            elif kind == "logged_model":
                fut = pool.submit(_export_logged_model, client, lm_objs[key], staging / "logged_models" / key, direct)
            else:
                fut = pool.submit(_export_source, client, sources[key], staging / "sources" / key)
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


def _experiments(client: MlflowClient, ids: set[str]) -> dict:
    out = {}
    for eid in sorted(ids, key=str):
        exp = client.get_experiment(eid)
        out[eid] = {"name": exp.name, "tags": dict(exp.tags or {}), "lifecycle_stage": exp.lifecycle_stage,
                    "artifact_location": exp.artifact_location}
    return out
