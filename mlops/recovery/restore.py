"""Registry restore: recreate what :mod:`mlops.recovery.backup` archived, with the exact version numbers.

Order: verify and extract the archive → check the target (``--if-exists``) → experiments → runs
(parallel) → logged models and other sources (parallel) → registered models (parallel across
models, versions of one model strictly in order, deleted numbers recreated as placeholder
versions that are deleted again) → aliases → runs that were deleted in the source are deleted.

Two ways to write: through MLflow's API calls, resumable after an interruption
(:mod:`mlops.recovery.restore_api`), or every row in one database transaction
(:mod:`mlops.recovery.restore_sql`); both follow the same plan (:mod:`mlops.recovery.plan`).

The archive is treated as hostile: it is verified (:func:`mlops.recovery.archive.verify_archive`:
checksums, limits, ids and keys that become paths, every version's model files) before anything is
read, and every run and logged-model record is checked again when it is read.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from mlflow import MlflowClient

from mlops import env
from mlops.recovery import archive, layout
from mlops.recovery.backup import tracking_uri_set
from mlops.recovery.plan import (  # noqa: F401 - the names callers use come from here
    DONE_TAG,
    IN_PROGRESS_TAG,
    PROV_MODEL,
    PROV_RUN,
    RestoreError,
    RestoreOptions,
    RestoreResult,
    Selection,
    dependencies,
    describe,
    target_state,
)
from mlops.recovery.restore_api import (
    _Restorer,
    direct_store,
    raise_failures,
    restore_through_api,
)
from mlops.recovery.restore_sql import database_engine, restore_rows

log = logging.getLogger(__name__)


def restore(client: MlflowClient, archive_path: Path, models: list[str] | None = None, *,
            options: RestoreOptions | None = None, **fields) -> RestoreResult:
    """Restore the selected (default: all) models of a backup archive into ``client``'s registry.

    Raises RestoreError (with every failure listed) if anything could not be restored; re-running
    the same command finishes an interrupted or failed restore. ``artifacts_destination`` (the
    server's ``--artifacts-destination``) writes proxied artifacts into that store directly (see
    :mod:`mlops.recovery.artifacts`). A SQL store, or a server together with its database
    (``backend_store_uri``), is written row by row in one transaction (:mod:`mlops.recovery.restore_sql`);
    ``database=False`` goes through MLflow's API calls instead. ``limits`` bound what the
    archive may unpack (default: :meth:`mlops.recovery.safety.Limits.from_env`). These are the fields of
    :class:`RestoreOptions`: give them as keywords, or one ``options``.
    """
    opts = options or RestoreOptions(models=models, **fields)
    if opts.if_exists not in ("fail", "skip"):
        raise RestoreError(f"--if-exists must be fail or skip, not {opts.if_exists!r}")
    folder, manifest = archive.extract_archive(Path(archive_path), limits=opts.limits)
    try:
        with tracking_uri_set(client.tracking_uri):
            return _restore(client, folder, manifest, opts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _restore(client: MlflowClient, folder: Path, manifest: dict, opts: RestoreOptions) -> RestoreResult:
    """Check the target, work out what to write, then write it through the API or into the database."""
    models, dry_run, if_exists = opts.models, opts.dry_run, opts.if_exists
    try:
        reg = json.loads((folder / layout.REGISTRY_NAME).read_text())
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

    states = {n: target_state(client, n, backup_id) for n in wanted}
    clash = [n for n, s in states.items() if s == "exists"]
    if clash and if_exists == "fail":
        raise RestoreError(
            f"already in the target registry: {', '.join(clash)} (use --if-exists skip, or restore into an "
            "empty server); nothing was changed"
        )
    selected = [by_name[n] for n in wanted if states[n] in ("new", "resume")]
    result.skipped = clash
    result.already = [n for n in wanted if states[n] == "done"]

    r = _Restorer(client, folder, reg, backup_id, opts.workers, opts.on_progress)
    r.tagged_models.update(result.already)
    try:
        run_ids, lm_ids, source_keys = dependencies(r, selected)
        exp_ids = {r.run_record(rid)["experiment_id"] for rid in run_ids}
        lm_recs = {mid: r.lm_record(mid) for mid in lm_ids}
        exp_ids |= {rec["experiment_id"] for rec in lm_recs.values()}
        # Models an earlier, interrupted run of this restore completed still have provenance tags on
        # their runs and logged models: found (in their experiments) and removed with the others.
        done_runs, done_lms, done_keys = dependencies(r, [by_name[n] for n in result.already])
        done_exps = ({r.run_record(rid)["experiment_id"] for rid in done_runs}
                     | {r.lm_record(mid)["experiment_id"] for mid in done_lms})
        engine = database_engine(r, opts.backend_store_uri, opts.database) if selected else None
        sel = Selection(selected, states, run_ids, lm_ids, source_keys, lm_recs)
        if dry_run:
            describe(r, result, sel, clash, exp_ids)
            result.plan.append(
                "write: every row into the database in one transaction" if engine is not None
                else "write: through the tracking server's API, model by model")
            return result

        if opts.artifacts_destination and selected:
            r.direct = direct_store(r, opts.artifacts_destination)
        r.ensure_experiments(exp_ids | done_exps)
        existing_runs = sel.existing_runs = r.existing_runs()
        existing_lms = sel.existing_lms = r.existing_logged_models()
        r.tagged_runs.update(existing_runs[rid].info.run_id for rid in done_runs if rid in existing_runs)
        r.tagged_lms.update(existing_lms[mid].model_id for mid in done_lms if mid in existing_lms)
        r.tagged_lms.update(existing_lms[f"source:{k}"].model_id for k in done_keys if f"source:{k}" in existing_lms)
        r.total = len(run_ids) + len(lm_ids) + len(source_keys) + sum(int(m["max_version"]) for m in selected)
        if engine is not None:
            restore_rows(r, engine, result, sel)
            raise_failures(r)
            return result
        restore_through_api(r, result, sel)
    finally:
        r.close()
    raise_failures(r)
    return result


def default_workers() -> int:
    """Parallel transfers (``MLOPS_RESTORE_WORKERS``, default 8)."""
    try:
        return max(1, env.MLOPS_RESTORE_WORKERS.get())
    except env.EnvError:
        return env.MLOPS_RESTORE_WORKERS.default
