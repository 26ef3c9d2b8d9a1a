"""Restore written straight into MLflow's database: every row of a restore in one transaction.

Used when the target is a SQL store (the embedded SQLite default, PostgreSQL without a server), or
a tracking server whose database the operator can reach (``mlops restore --backend-store-uri``).
Through the API a restore costs about eight requests per version, each a few milliseconds of the
server's CPU; here the same rows are inserted in a handful of statements.

The rows are MLflow's own: built with the table definitions of the pinned MLflow version (refused
unless the database is at exactly that version's schema revision), checked with MLflow's own
validators, and shaped as MLflow's SQL store shapes them (latest metrics, dataset rows shared per
experiment, deleted version numbers kept as ``Deleted_Internal`` rows, as ``delete_model_version``
leaves them). Creation times of registered models, versions and logged models are kept, which the
API cannot do. One transaction: an interrupted restore leaves the database as it was (files
already uploaded stay behind unreferenced); re-running the command does the whole job.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException

from mlops import errors, registry
from mlops.config import password_problem, redact_uri
from mlops.util import first_line, paged

log = logging.getLogger(__name__)

MAX_FLOAT = 1.7976931348623157e308
DELETED_STAGE = "Deleted_Internal"  # what MLflow's SQL store leaves for a deleted version number
REDACTED = {"source": "REDACTED-SOURCE-PATH", "run_id": "REDACTED-RUN-ID", "run_link": "REDACTED-RUN-LINK"}


class DatabaseTargetError(registry.RegistryError, errors.Refused):
    """The database cannot be written (wrong schema revision, not the server's database, ...)."""


def now_ms() -> int:
    return int(time.time() * 1000)


def open_engine(uri: str):
    """A SQLAlchemy engine on ``uri``, refused unless its schema is this MLflow's head revision."""
    from mlflow.store.db.utils import (
        _get_latest_schema_revision,
        _get_schema_version,
        create_sqlalchemy_engine,
    )

    problem = password_problem(uri)
    if problem:
        raise DatabaseTargetError(problem)
    try:
        engine = create_sqlalchemy_engine(uri)
        current = _get_schema_version(engine)
    except Exception as exc:  # noqa: BLE001 - any driver or URL error becomes one line
        raise DatabaseTargetError(f"cannot open the database {redact_uri(uri)}: {first_line(str(exc))}") from None
    head = _get_latest_schema_revision()
    if current != head:
        raise DatabaseTargetError(
            f"the database {redact_uri(uri)} is at schema revision {current or 'none'}, this MLflow writes {head}: "
            "restore through the tracking server instead (drop --backend-store-uri)"
        )
    return engine


def check_server_database(engine, client) -> None:
    """Refuse unless the tracking server behind ``client`` keeps its experiments in ``engine``'s database.

    Every experiment the server lists (the Default one at least) must be in the database with the
    same id, name and creation time (milliseconds: two stores created apart never agree on it).
    """
    from mlflow.entities import ViewType
    from mlflow.store.tracking.dbmodels.models import SqlExperiment
    from sqlalchemy import select

    listed = {str(e.experiment_id): (e.name, e.creation_time)
              for e in paged(client.search_experiments, view_type=ViewType.ALL, max_results=1000)}
    with engine.connect() as conn:
        rows = conn.execute(select(SqlExperiment.experiment_id, SqlExperiment.name, SqlExperiment.creation_time))
        found = {str(i): (n, t) for i, n, t in rows}
    differ = sorted(k for k in listed if found.get(k) != listed[k])
    if not listed or differ or len(found) != len(listed):
        what = f"experiment {differ[0]} differs" if differ else f"{len(found)} experiments there, {len(listed)} on the server"
        raise DatabaseTargetError(
            f"the database given with --backend-store-uri (MLOPS_BACKEND_STORE_URI) is not the one the tracking server at "
            f"{client.tracking_uri} uses ({what}); nothing was changed"
        )


def sanitize(value: float) -> tuple[bool, float]:
    """(is_nan, stored value) as MLflow's SQL store stores a metric value."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, MAX_FLOAT if value > 0 else -MAX_FLOAT
    return False, value


@dataclass
class Rows:
    """Rows to insert, per table, in an order that satisfies every foreign key."""

    tables: dict = field(default_factory=dict)

    def add(self, model, **row) -> None:
        self.tables.setdefault(model, []).append(row)

    def count(self) -> int:
        return sum(len(v) for v in self.tables.values())


def insert_order():
    from mlflow.store.model_registry.dbmodels import models as reg
    from mlflow.store.tracking.dbmodels import models as trk

    return [
        trk.SqlRun, trk.SqlTag, trk.SqlParam, trk.SqlMetric, trk.SqlLatestMetric,
        trk.SqlDataset, trk.SqlInput, trk.SqlInputTag,
        trk.SqlLoggedModel, trk.SqlLoggedModelParam, trk.SqlLoggedModelTag, trk.SqlLoggedModelMetric,
        reg.SqlRegisteredModel, reg.SqlRegisteredModelTag, reg.SqlModelVersion, reg.SqlModelVersionTag,
        reg.SqlRegisteredModelAlias,
    ]


def write(engine, rows: Rows) -> None:
    """Insert every row in one transaction (executemany per table)."""
    from sqlalchemy import insert

    with engine.begin() as conn:
        for model in insert_order():
            batch = rows.tables.get(model)
            if batch:
                conn.execute(insert(model.__table__), batch)


class RowBuilder:
    """Turns archive records into rows; ids are made here, before anything is written."""

    def __init__(self, engine, workspace: str | None = None):
        from mlflow.utils.workspace_utils import DEFAULT_WORKSPACE_NAME

        self.engine = engine
        self.rows = Rows()
        self.workspace = workspace or DEFAULT_WORKSPACE_NAME
        self.datasets: dict[tuple[int, str, str], str] = {}
        self.now = now_ms()

    # ---- runs ----------------------------------------------------------------------------
    def known_datasets(self, experiment_ids: Iterable[str]) -> None:
        """Datasets already in the target experiments are reused, as MLflow's store does."""
        from mlflow.store.tracking.dbmodels.models import SqlDataset
        from sqlalchemy import select

        ids = sorted({int(e) for e in experiment_ids})
        if not ids:
            return
        with self.engine.connect() as conn:
            for eid, name, digest, duuid in conn.execute(
                select(SqlDataset.experiment_id, SqlDataset.name, SqlDataset.digest, SqlDataset.dataset_uuid)
                .where(SqlDataset.experiment_id.in_(ids))
            ):
                self.datasets[(int(eid), name, digest)] = duuid

    def run(self, rec: dict, experiment_id: str, artifact_uri: str, run_id: str, tags: dict[str, str],
            deleted: bool) -> None:
        """One run with its tags, params, metric histories, latest metrics and dataset inputs."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.store.tracking.dbmodels import models as m
        from mlflow.utils.validation import _validate_batch_log_data, _validate_param_keys_unique

        params = [Param(k, str(v)) for k, v in rec["params"].items()]
        metrics = [Metric(key, value, int(ts), int(step))
                   for key, hist in rec["metrics"].items() for value, ts, step in hist]
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        _validate_batch_log_data(metrics, params, tag_list)
        _validate_param_keys_unique(params)
        terminal = rec["status"] in ("FINISHED", "FAILED", "KILLED")
        eid = int(experiment_id)
        self.rows.add(
            m.SqlRun, run_uuid=run_id, name=tags.get("mlflow.runName") or rec.get("run_name"),
            source_type="UNKNOWN", source_name="", entry_point_name="", user_id=rec.get("user_id"),
            status=rec["status"] if terminal else "RUNNING", start_time=rec.get("start_time") or self.now,
            end_time=(rec.get("end_time") or self.now) if terminal else None,
            deleted_time=self.now if deleted else None, source_version="",
            lifecycle_stage="deleted" if deleted else "active", artifact_uri=artifact_uri, experiment_id=eid,
        )
        for k, v in tags.items():
            self.rows.add(m.SqlTag, key=k, value=v, run_uuid=run_id)
        for p in params:
            self.rows.add(m.SqlParam, key=p.key, value=p.value, run_uuid=run_id)
        seen, latest = set(), {}
        for metric in metrics:
            is_nan, value = sanitize(metric.value)
            ident = (metric.key, metric.timestamp, metric.step, value, is_nan)
            if ident in seen:
                continue
            seen.add(ident)
            row = {"key": metric.key, "value": value, "timestamp": metric.timestamp, "step": metric.step,
                   "is_nan": is_nan, "run_uuid": run_id}
            self.rows.add(m.SqlMetric, **row)
            best = latest.get(metric.key)
            if best is None or (row["step"], row["timestamp"], row["value"]) > (best["step"], best["timestamp"], best["value"]):
                latest[metric.key] = row
        for row in latest.values():
            self.rows.add(m.SqlLatestMetric, **row)
        self.dataset_inputs(eid, run_id, rec.get("dataset_inputs", []))

    def dataset_inputs(self, experiment_id: int, run_id: str, inputs: list[dict]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.store.tracking.dbmodels import models as m
        from mlflow.utils.validation import _validate_dataset_inputs

        seen = set()
        for d in inputs:
            ds = d["dataset"]
            key = (experiment_id, ds["name"], ds["digest"])
            if key in seen:  # MLflow keeps the first input of a (name, digest) per run
                continue
            seen.add(key)
            _validate_dataset_inputs([DatasetInput(
                Dataset(**{k: ds.get(k) for k in ("name", "digest", "source_type", "source", "schema", "profile")}),
                [InputTag(k, v) for k, v in d["tags"].items()])])
            duuid = self.datasets.get(key)
            if duuid is None:
                duuid = self.datasets[key] = uuid.uuid4().hex
                self.rows.add(m.SqlDataset, dataset_uuid=duuid, experiment_id=experiment_id, name=ds["name"],
                              digest=ds["digest"], dataset_source_type=ds["source_type"], dataset_source=ds["source"],
                              dataset_schema=ds.get("schema"), dataset_profile=ds.get("profile"))
            iuuid = uuid.uuid4().hex
            self.rows.add(m.SqlInput, input_uuid=iuuid, source_type="DATASET", source_id=duuid,
                          destination_type="RUN", destination_id=run_id, step=0)
            for k, v in d["tags"].items():
                self.rows.add(m.SqlInputTag, input_uuid=iuuid, name=k, value=v)

    # ---- logged models -------------------------------------------------------------------
    def logged_model(self, model_id: str, experiment_id: str, name: str, artifact_location: str, *,
                     source_run_id: str | None, tags: dict[str, str], params: dict[str, str] | None = None,
                     model_type: str | None = None, status: str = "READY", status_message: str | None = None,
                     created: int | None = None, metrics: list[dict] | None = None,
                     outputs: list[tuple[str, int]] = (), inputs: list[str] = ()) -> None:
        """One logged model with params, tags, metrics and its links from runs (outputs, inputs)."""
        from mlflow.entities.logged_model_status import LoggedModelStatus
        from mlflow.store.tracking.dbmodels import models as m
        from mlflow.utils.validation import _validate_logged_model_name, _validate_tag

        _validate_logged_model_name(name)
        for k, v in tags.items():
            _validate_tag(k, v)
        eid = int(experiment_id)
        self.rows.add(
            m.SqlLoggedModel, model_id=model_id, experiment_id=eid, name=name, artifact_location=artifact_location,
            creation_timestamp_ms=created or self.now, last_updated_timestamp_ms=self.now,
            status=LoggedModelStatus(status).to_int(), lifecycle_stage="active", model_type=model_type,
            source_run_id=source_run_id, status_message=status_message,
        )
        for k, v in (params or {}).items():
            self.rows.add(m.SqlLoggedModelParam, model_id=model_id, experiment_id=eid, param_key=k, param_value=str(v))
        for k, v in tags.items():
            self.rows.add(m.SqlLoggedModelTag, model_id=model_id, experiment_id=eid, tag_key=k, tag_value=v)
        seen = set()
        for met in metrics or []:
            ident = (met["key"], int(met["timestamp"]), int(met["step"]), met["run_id"])  # the table's primary key
            if ident in seen:
                continue
            seen.add(ident)
            _, value = sanitize(float(met["value"]))
            self.rows.add(m.SqlLoggedModelMetric, model_id=model_id, metric_name=met["key"],
                          metric_timestamp_ms=int(met["timestamp"]), metric_step=int(met["step"]), metric_value=value,
                          experiment_id=eid, run_id=met["run_id"], dataset_uuid=None,
                          dataset_name=met.get("dataset_name"), dataset_digest=met.get("dataset_digest"))
        for run_id, step in outputs:
            self.rows.add(m.SqlInput, input_uuid=uuid.uuid4().hex, source_type="RUN_OUTPUT", source_id=run_id,
                          destination_type="MODEL_OUTPUT", destination_id=model_id, step=int(step))
        for run_id in inputs:
            self.rows.add(m.SqlInput, input_uuid=uuid.uuid4().hex, source_type="RUN_INPUT", source_id=run_id,
                          destination_type="MODEL_INPUT", destination_id=model_id, step=0)

    # ---- registered models ---------------------------------------------------------------
    def registered_model(self, m: dict, tags: dict[str, str], version_args: Callable[[dict], dict],
                         storage_location: Callable[[dict], str]) -> tuple[int, int]:
        """The registered model, every version number up to its counter, stages, tags, aliases.

        Returns (live versions, deleted numbers).
        """
        from mlflow.entities.model_registry.model_version_stages import get_canonical_stage
        from mlflow.store.model_registry.dbmodels import models as reg
        from mlflow.utils.validation import (
            _validate_model_name,
            _validate_model_version_tag,
            _validate_registered_model_tag,
        )

        name, ws = m["name"], self.workspace
        _validate_model_name(name)
        for k, v in tags.items():
            _validate_registered_model_tag(k, v)
        self.rows.add(reg.SqlRegisteredModel, workspace=ws, name=name,
                      creation_time=m.get("creation_timestamp") or self.now,
                      last_updated_time=m.get("last_updated_timestamp") or self.now,
                      description=m.get("description") or None)
        for k, v in tags.items():
            self.rows.add(reg.SqlRegisteredModelTag, workspace=ws, name=name, key=k, value=v)
        versions = {int(v["version"]): v for v in m["versions"]}
        live = deleted = 0
        for n in range(1, int(m["max_version"]) + 1):
            v = versions.get(n)
            if v is None:
                self.rows.add(reg.SqlModelVersion, workspace=ws, name=name, version=n, creation_time=self.now,
                              last_updated_time=self.now, description=None, user_id=None, current_stage=DELETED_STAGE,
                              source=REDACTED["source"], storage_location=None, run_id=REDACTED["run_id"],
                              run_link=REDACTED["run_link"], status="READY", status_message=None)
                deleted += 1
                continue
            args = version_args(v)
            stage = v["stage"] if v["stage"] not in ("", None) else "None"
            for k, val in (v["tags"] or {}).items():
                _validate_model_version_tag(k, val)
            self.rows.add(reg.SqlModelVersion, workspace=ws, name=name, version=n,
                          creation_time=v.get("creation_timestamp") or self.now,
                          last_updated_time=v.get("last_updated_timestamp") or self.now,
                          description=v["description"] or None, user_id=v.get("user_id") or None,
                          current_stage=get_canonical_stage(stage), source=args["source"],
                          storage_location=storage_location(args), run_id=args.get("run_id"),
                          run_link=v.get("run_link"), status=v.get("status") or "READY",
                          status_message=v.get("status_message"))
            for k, val in (v["tags"] or {}).items():
                self.rows.add(reg.SqlModelVersionTag, workspace=ws, name=name, version=n, key=k, value=val)
            live += 1
        for alias, ver in sorted(m["aliases"].items()):
            if int(ver) not in versions:
                raise MlflowException(f"{name}: alias '{alias}' points at v{ver}, which the archive does not hold")
            self.rows.add(reg.SqlRegisteredModelAlias, workspace=ws, name=name, alias=alias, version=int(ver))
        return live, deleted
