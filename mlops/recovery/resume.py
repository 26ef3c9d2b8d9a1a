"""Resuming a restore through the API: what an earlier, interrupted run of it left, and the last steps.

While a restore is unfinished its runs, logged models and registered models carry provenance
tags (``mlops.restore.*``, see :mod:`mlops.recovery.restore_api`). A new run of the same restore
finds them, reuses what is complete and discards what is not; once everything is in place the
tags are removed and runs deleted in the source are deleted again.
"""

from __future__ import annotations

import json
import logging

from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from mlops.recovery.plan import (
    DONE_TAG,
    MODEL_VERSIONS_TAG,
    PARTIAL_PREFIX,
    PROV_MODEL,
    PROV_RUN,
    RestoreResult,
    in_parallel,
    not_found,
)
from mlops.util import first_line, paged

log = logging.getLogger(__name__)


class ResumeState:
    """The resume half of :class:`~mlops.recovery.restore_api._Restorer` (its attributes are set there)."""

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
                if not not_found(exc):
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
                if not not_found(exc) and "no tag" not in str(exc).lower():
                    raise

        for job, _out, err in in_parallel(self, jobs, drop, "provenance tag", tick=False):
            if err:
                self.failures.append(f"{job[3]}: cannot remove the {job[2]} tag: {err}")
        log.info("removed the restore's provenance tags (%d runs, %d logged models, %d models)",
                 len(self.tagged_runs), len(self.tagged_lms), len(self.tagged_models))
