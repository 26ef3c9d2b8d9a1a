"""Field-by-field snapshots of a registry, to prove a restore (or a DR drill) lost nothing.

A snapshot holds, per registered model: description, tags, aliases, and per version number (gaps
included, as ``None``): stage, description, tags, status, signature, sha256 of every model file,
the logged model, and the source run (experiment, name, user, status, times, params, full metric
histories, tags, dataset inputs, sha256 of every run artifact). Ids that a restore legitimately
changes (run ids, model ids, the ``mlops.restore.*`` provenance tags) are left out.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from mlops import registry
from mlops.registry import version_filter

IGNORED_TAG_PREFIXES = ("mlops.restore.",)
IGNORED_TAGS = ("mlflow.modelVersions",)


def _tags(tags: dict | None) -> dict:
    return {k: v for k, v in (tags or {}).items() if not k.startswith(IGNORED_TAG_PREFIXES) and k not in IGNORED_TAGS}


def hash_dir(path: Path) -> dict[str, str]:
    """sha256 of every file below ``path``, by relative path."""
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file()
    }


def _run(client: MlflowClient, run_id: str, artifacts: bool) -> dict:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    out = {
        "experiment": exp.name,
        "run_name": run.info.run_name,
        "user": run.info.user_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(run.data.params),
        "tags": _tags(run.data.tags),
        "metrics": {
            k: sorted((m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, k))
            for k in run.data.metrics
        },
        "datasets": sorted(
            (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source)
            for d in run.inputs.dataset_inputs
        ),
    }
    if artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri).download_artifacts("", tmp)
            out["artifacts"] = hash_dir(Path(tmp))
    return out


def _version(client: MlflowClient, name: str, mv, artifacts: bool) -> dict:
    from mlflow.models import Model

    out = {
        "stage": mv.current_stage,
        "description": mv.description or "",
        "tags": _tags(mv.tags),
        "status": mv.status,
        "source_kind": "logged_model" if str(mv.source).startswith("models:/m-") else "run",
    }
    if artifacts:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{mv.version}", dst_path=tmp))
            files = hash_dir(local)
            # MLmodel carries ids a restore rewrites (run_id, model_id); compare its meaning instead.
            files.pop("MLmodel", None)
            out["files"] = files
            sig = Model.load(str(local / "MLmodel")).signature
            out["signature"] = sig.to_dict() if sig else None
    out["run"] = _run(client, mv.run_id, artifacts) if mv.run_id else None
    return out


def snapshot(tracking_uri: str, names: list[str] | None = None, artifacts: bool = True) -> dict:
    """Comparable snapshot of the given (default: all) registered models."""
    client = registry.get_client(tracking_uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        models = [registry.get_model(client, n) for n in names] if names else list(registry._all_models(client))
        out = {}
        for rm in sorted(models, key=lambda m: m.name):
            found = {int(mv.version): mv for mv in client.search_model_versions(version_filter(rm.name))
                     if mv.name == rm.name}
            top = max(found, default=0)
            out[rm.name] = {
                "description": rm.description or "",
                "tags": _tags(rm.tags),
                "aliases": {a: str(v) for a, v in (rm.aliases or {}).items()},
                "versions": {
                    n: (_version(client, rm.name, found[n], artifacts) if n in found else None)
                    for n in range(1, top + 1)
                },
            }
        return out
    finally:
        mlflow.set_tracking_uri(previous)


def predictions(tracking_uri: str, name: str, rows) -> dict[str, list]:
    """Predictions of ``models:/NAME/Production`` and ``models:/NAME@production`` on ``rows``."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        out = {}
        for ref in (f"models:/{name}/Production", f"models:/{name}@production"):
            with tempfile.TemporaryDirectory() as tmp:
                model = mlflow.pyfunc.load_model(ref, dst_path=tmp, suppress_warnings=True)
                out[ref] = [p.item() if hasattr(p, "item") else p for p in model.predict(rows)]
        return out
    finally:
        mlflow.set_tracking_uri(previous)


def diff(a, b, path: str = "") -> list[str]:
    """Human-readable differences between two nested structures (empty if equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'second' if k not in a else 'first'}")
            else:
                out.extend(diff(a[k], b[k], f"{path}/{k}"))
        return out
    return [] if a == b else [f"{path}: {str(a)[:200]!r} != {str(b)[:200]!r}"]
