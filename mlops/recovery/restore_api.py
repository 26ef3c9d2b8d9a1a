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

from mlops import config, registry
from mlops.recovery.artifacts import ArtifactStoreError, DirectStore
from mlops.recovery.plan import (
    DONE_TAG,
    IN_PROGRESS_TAG,
    RestoreError,
    RestoreResult,
    Selection,
    in_parallel,
    model_deps,
    own_tags,
)
from mlops.recovery.restore_runs import RunRestorer

log = logging.getLogger(__name__)

class _Restorer(RunRestorer):
    """One restore through MLflow's API calls: registered models on top of the runs it made."""

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


def restore_through_api(r: _Restorer, result: RestoreResult, sel: Selection) -> None:
    """Runs, then logged models and sources, then registered models, each step in parallel;
    a failure is collected and everything that depends on it is left for the next run."""
    failed_deps: set[str] = set()
    _runs(r, result, sel, failed_deps)
    _logged_models(r, result, sel, failed_deps)
    _sources(r, sel, failed_deps)
    _registered_models(r, result, sel, failed_deps)
    # A tracking server appends every version it creates (placeholders too) to the logged
    # model's mlflow.modelVersions tag: put the tag back to what the source had.
    r.put_right(sel.lm_recs, sorted(r.lm_map), sel.run_ids)


def _runs(r: _Restorer, result: RestoreResult, sel: Selection, failed_deps: set[str]) -> None:
    """The selected runs, in parallel (complete ones from an earlier attempt reused)."""
    todo = r.reuse_runs(sel.run_ids, sel.existing_runs, result)
    for rid, out, err in in_parallel(r, todo, lambda rid: r.restore_run(r.run_record(rid)), "run"):
        if err:
            failed_deps.add(rid)
            r.failures.append(f"run {rid}: {err}")
        else:
            r.run_map[rid], r.run_uri[rid] = out
            result.runs_created += 1


def _logged_models(r: _Restorer, result: RestoreResult, sel: Selection, failed_deps: set[str]) -> None:
    """The logged models, in parallel (they name their restored runs)."""
    lm_recs = sel.lm_recs
    outputs, inputs = model_links(r, sel.run_ids)
    todo = []
    for mid in sorted(sel.lm_ids):
        prior = sel.existing_lms.get(mid)
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


def _sources(r: _Restorer, sel: Selection, failed_deps: set[str]) -> None:
    """Versions whose source was a plain path: a logged model each, in parallel."""
    src_versions = dict(sel.source_keys)
    todo = []
    for key in sorted(src_versions):
        prior = sel.existing_lms.get(f"source:{key}")
        if prior is not None:
            r.src_map[key] = prior.model_id
            r.tagged_lms.add(prior.model_id)
            r.tick(f"source {key} (already restored)")
        else:
            todo.append(key)

    def one(key):
        v = src_versions[key]
        exp = r.run_record(v["run_id"])["experiment_id"] if v.get("run_id") in sel.run_ids else None
        return r.restore_source(key, v, exp)

    for key, out, err in in_parallel(r, todo, one, "source"):
        if err:
            failed_deps.add(key)
            r.failures.append(f"model source {key}: {err}")
        else:
            r.src_map[key] = out


def _registered_models(r: _Restorer, result: RestoreResult, sel: Selection, failed_deps: set[str]) -> None:
    """Registered models: parallel across models, versions of one model in order."""
    ready = []
    for m in sel.models:
        bad = sorted(model_deps(m) & failed_deps)
        if bad:
            r.failures.append(f"model {m['name']}: not restored because {bad[0]} failed")
        else:
            ready.append(m)
    for name, out, err in in_parallel(
        r, [m["name"] for m in ready],
        lambda n: r.restore_model(sel.by_name[n], sel.states[n] == "resume"), "model", tick=False,
    ):
        if err:
            r.failures.append(f"model {name}: {err}")
        else:
            result.models.append(name)
            result.versions += len(sel.by_name[name]["versions"])
            result.placeholders += out


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
