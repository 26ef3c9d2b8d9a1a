"""Restore into a SQL store: the rows of :mod:`mlops.recovery.sql_rows` written in one transaction.

Used for the embedded SQLite default and any direct SQL store, and for a tracking server whose
database the operator names (``--backend-store-uri``, checked to be that server's). Files are
uploaded first; an interrupted restore leaves the database as it was.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from mlflow.exceptions import MlflowException

from mlops import config
from mlops.recovery import layout, sql_rows
from mlops.recovery.plan import RestoreError, RestoreResult, Selection, own_tags
from mlops.recovery.restore_api import _Restorer, model_links, restored_outputs
from mlops.util import first_line

log = logging.getLogger(__name__)


def database_engine(r: _Restorer, backend_store_uri: str | None, database: bool):
    """The SQLAlchemy engine to write rows into, or None for MLflow's API calls."""
    if not database:
        return None
    if r.is_server:
        if not backend_store_uri:
            return None
        try:
            engine = sql_rows.open_engine(backend_store_uri)
            sql_rows.check_server_database(engine, r.client)
        except sql_rows.DatabaseTargetError as exc:
            raise RestoreError(str(exc)) from None
        return engine
    if backend_store_uri:
        log.info("the target is not a tracking server: --backend-store-uri is not used")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(r.client._tracking_client, "store", None)
    if isinstance(store, SqlAlchemyStore) and r.client._registry_uri == r.client.tracking_uri:
        return store.engine
    return None


def restore_rows(r: _Restorer, engine, result: RestoreResult, sel: Selection) -> None:
    """Everything the API path creates, as rows in one transaction (after the files are uploaded)."""
    rows = _Rows(r, sql_rows.RowBuilder(engine), result, sel)
    try:
        fresh_runs = rows.runs()
        reused_lms = rows.logged_models()
        rows.sources()
        rows.registered_models()
    except MlflowException as exc:
        raise RestoreError(f"the archive holds something MLflow does not accept: {first_line(exc)}; nothing was changed") from None

    c = r.client
    r.upload_all(rows.uploads)
    for m in sel.models:
        if sel.states[m["name"]] == "resume":
            log.info("%s: finishing an interrupted restore (rebuilding the registered model)", m["name"])
            c.delete_registered_model(m["name"])
    try:
        sql_rows.write(engine, rows.b.rows)
    except Exception as exc:  # noqa: BLE001 - a database error of any kind is one line
        raise RestoreError(f"writing to the database failed, nothing was written to it: {first_line(exc)}") from None
    log.info("wrote %d rows into the database in one transaction", rows.b.rows.count())
    r.tick("registered models", sum(int(m["max_version"]) for m in sel.models))

    # Logged models and runs an earlier (interrupted) restore made are put right as the API path does.
    r.put_right(sel.lm_recs, reused_lms, sel.run_ids - set(fresh_runs))


class _Rows:
    """The rows of one restore, built step by step, and the file uploads they need."""

    def __init__(self, r: _Restorer, b: sql_rows.RowBuilder, result: RestoreResult, sel: Selection):
        self.r, self.b, self.result, self.sel = r, b, result, sel
        self.locations: dict[str, str] = {}
        self.lm_location: dict[str, str] = {}
        self.uploads: list[tuple[str, Path, str]] = []

    def exp_location(self, eid: str) -> str:
        if eid not in self.locations:
            self.locations[eid] = self.r.client.get_experiment(eid).artifact_location
        return self.locations[eid]

    def runs(self) -> dict[str, dict]:
        """A row per run to create (complete ones from an earlier attempt reused); those created."""
        from mlflow.utils.name_utils import _generate_random_name
        from mlflow.utils.uri import append_to_uri_path

        r, b = self.r, self.b
        fresh_runs = {}
        for rid in r.reuse_runs(self.sel.run_ids, self.sel.existing_runs, self.result):
            rec = r.run_record(rid)
            new = uuid.uuid4().hex
            r.run_map[rid] = new
            r.run_uri[rid] = append_to_uri_path(self.exp_location(r.exp_map[rec["experiment_id"]]), new, "artifacts")
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
            self.uploads.append((r.run_uri[rid], r.folder / layout.run_artifacts(rid), f"run {rid}"))
            self.result.runs_created += 1
        return fresh_runs

    def logged_models(self) -> list[str]:
        """A row per logged model to create; the archive ids of those an earlier attempt made."""
        from mlflow.utils.uri import append_to_uri_path

        r, b, result = self.r, self.b, self.result
        outputs, inputs = model_links(r, self.sel.run_ids)
        reused_lms = []
        for mid in sorted(self.sel.lm_ids):
            prior = self.sel.existing_lms.get(mid)
            if prior is not None:
                r.lm_map[mid], self.lm_location[prior.model_id] = prior.model_id, prior.artifact_location
                r.tagged_lms.add(prior.model_id)
                reused_lms.append(mid)
                result.logged_models_reused += 1
                r.tick(f"logged model {mid} (already restored)")
                continue
            rec = self.sel.lm_recs[mid]
            eid = r.exp_map[rec["experiment_id"]]
            new = f"m-{uuid.uuid4().hex}"
            loc = append_to_uri_path(self.exp_location(eid), "models", new, "artifacts")
            b.logged_model(
                new, eid, rec["name"], loc, source_run_id=r.run_map.get(rec.get("source_run_id") or ""),
                tags=own_tags(rec["tags"]), params=rec["params"], model_type=rec.get("model_type") or None,
                status=rec.get("status") if rec.get("status") in ("READY", "FAILED") else "READY",
                status_message=rec.get("status_message"), created=rec.get("creation_timestamp"),
                metrics=[{**m, "run_id": r.run_map[m["run_id"]]} for m in rec.get("metrics", [])
                         if r.run_map.get(m.get("run_id") or "")],
                outputs=restored_outputs(outputs.get(mid, []), r.run_map),
                inputs=[r.run_map[s] for s in inputs.get(mid, []) if s in r.run_map],
            )
            r.lm_map[mid], self.lm_location[new] = new, loc
            self.uploads.append((loc, r.folder / layout.logged_model_artifacts(mid), f"logged model {mid}"))
            result.logged_models_created += 1
        return reused_lms

    def sources(self) -> None:
        """Versions whose source was a plain path: a logged model row each."""
        from mlflow.utils.uri import append_to_uri_path

        r = self.r
        source_keys = dict(self.sel.source_keys)
        for key in sorted(source_keys):
            prior = self.sel.existing_lms.get(f"source:{key}")
            if prior is not None:
                r.src_map[key], self.lm_location[prior.model_id] = prior.model_id, prior.artifact_location
                r.tagged_lms.add(prior.model_id)
                r.tick(f"source {key} (already restored)")
                continue
            v = source_keys[key]
            exp = r.run_record(v["run_id"])["experiment_id"] if v.get("run_id") in self.sel.run_ids else None
            eid = r.exp_map.get(exp or "") or config.ensure_experiment(r.client, "Default")
            new = f"m-{uuid.uuid4().hex}"
            loc = append_to_uri_path(self.exp_location(eid), "models", new, "artifacts")
            self.b.logged_model(new, eid, "model", loc, source_run_id=r.run_map.get(v.get("run_id") or ""), tags={})
            r.src_map[key], self.lm_location[new] = new, loc
            self.uploads.append((loc, r.source_dir(key), f"source {key}"))

    def registered_models(self) -> None:
        """The registered models with every version number, in order."""
        def storage(args: dict) -> str:
            return self.lm_location[args["model_id"]] if args.get("model_id") else args["source"]

        for m in self.sel.models:
            live, deleted = self.b.registered_model(m, own_tags(m["tags"]), self.r.version_args, storage)
            self.result.models.append(m["name"])
            self.result.versions += live
            self.result.placeholders += deleted
