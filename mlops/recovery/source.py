"""Reading the registry a backup is taken from: models, versions, runs, metric histories, logged models.

Calls are batched where MLflow allows it (100 runs per search, the server's bulk metric-history
endpoint, logged models per experiment page) and fall back to one call per item where it does not.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops import config, registry
from mlops.recovery import layout
from mlops.registry import version_filter
from mlops.util import first_line, paged, pages

log = logging.getLogger(__name__)

SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql")
PROMPT_TAG = "mlflow.prompt.is_prompt"


class BackupError(registry.RegistryError):
    """The backup could not be completed; nothing was written at the destination."""


def is_sql(uri: str | None) -> bool:
    """True for a SQL store URI."""
    return bool(uri) and uri.split(":", 1)[0].split("+", 1)[0].lower() in SQL_SCHEMES


def db_max_versions(backend_uri: str | None) -> dict[str, int] | None:
    """Highest version number ever used per model, deleted ones included, read from the SQL store.

    MLflow keeps deleted versions as rows (stage ``Deleted_Internal``) and never reuses their
    numbers, but no API exposes them. Returns None when ``backend_uri`` is not a SQL store.
    """
    if not is_sql(backend_uri):
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


def search_versions(client: MlflowClient, name: str) -> list:
    """Every version of one model, by number."""
    found = paged(client.search_model_versions, filter_string=version_filter(name), max_results=10000)
    return sorted((v for v in found if v.name == name), key=lambda v: int(v.version))


def history_versions(tags: dict) -> set[int]:
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


def select_models(client: MlflowClient, models: list[str] | None) -> list[str]:
    """The names asked for (each checked to exist), else every registered model but prompts."""
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


def fetch_runs_or_fail(client: MlflowClient, run_ids: set[str]) -> dict:
    """Runs by id, or BackupError naming the one that cannot be read."""
    try:
        return fetch_runs(client, run_ids)
    except MlflowException as exc:
        raise BackupError(f"a source run cannot be read: {exc.message}") from None


def parallel_get(fn: Callable, keys: Iterable[str], workers: int, label: str) -> dict:
    """``fn(key)`` for every key in a thread pool; BackupError naming the first that fails."""
    out = {}
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="mlops-backup") as pool:
        futures = {pool.submit(fn, k): k for k in sorted(keys)}
        for fut in as_completed(futures):
            try:
                out[futures[fut]] = fut.result()
            except Exception as exc:  # noqa: BLE001 - one line naming what failed
                raise BackupError(f"cannot read {label} {futures[fut]}: {first_line(exc)}") from None
    return out


def experiments(client: MlflowClient, ids: set[str]) -> dict[str, layout.ExperimentRecord]:
    """The records of the experiments the backed-up runs and logged models belong to."""
    out = {}
    for eid in sorted(ids, key=str):
        exp = client.get_experiment(eid)
        out[eid] = layout.experiment_record(exp)
    return out
