"""Rows written by mlops.recovery.sql_rows read back exactly as what MLflow's own SQL store writes.

The same run and logged model are logged through MLflow's API into one store and turned into rows
by RowBuilder in another; both are then read through MLflow and must be equal, including the
awkward cases (NaN and infinite values, repeated points, steps out of order, one dataset used by
two runs).
"""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient
from mlflow.entities import (
    Dataset,
    DatasetInput,
    InputTag,
    LoggedModelOutput,
    Metric,
    Param,
    RunTag,
)

from mlops import config
from mlops.recovery import sql_rows
from tests.helpers import sqlite_uri

T0 = 1_700_000_000_000
HISTORY = [  # (value, timestamp, step): the latest is chosen by (step, timestamp, value)
    ("loss", 0.9, T0, 0), ("loss", 0.5, T0 + 5, 2), ("loss", 0.7, T0 + 9, 1), ("loss", 0.5, T0 + 5, 2),
    ("loss", 0.4, T0 + 1, 2), ("nan_metric", float("nan"), T0, 0), ("nan_metric", 1.0, T0, 1),
    ("up", float("inf"), T0, 0), ("down", float("-inf"), T0, 3), ("down", -1.0, T0, 3),
]
DATASET = Dataset(name="breast_cancer", digest="7ff6fd89", source_type="local", source='{"uri": "x"}',
                  schema='{"mlflow_colspec": []}', profile='{"num_rows": 569}')


def _record(run_id: str) -> dict:
    metrics: dict[str, list] = {}
    for key, value, ts, step in HISTORY:
        metrics.setdefault(key, []).append([value, ts, step])
    return {
        "run_id": run_id, "run_name": "rn", "user_id": "ann", "status": "FINISHED", "start_time": T0,
        "end_time": T0 + 100, "params": {"C": "1.0", "model": "lr"}, "metrics": metrics,
        "dataset_inputs": [{"dataset": {"name": DATASET.name, "digest": DATASET.digest,
                                        "source_type": DATASET.source_type, "source": DATASET.source,
                                        "schema": DATASET.schema, "profile": DATASET.profile},
                            "tags": {"mlflow.data.context": "training"}}],
    }


def _read(uri: str, exp_id: str) -> list[dict]:
    client = MlflowClient(tracking_uri=uri)
    out = []
    for run in sorted(client.search_runs([exp_id]), key=lambda r: r.data.tags["n"]):
        rid = run.info.run_id
        full = client.get_run(rid)
        out.append({
            "info": (full.info.run_name, full.info.user_id, full.info.status, full.info.start_time,
                     full.info.end_time, full.info.lifecycle_stage),
            "params": full.data.params, "tags": full.data.tags,
            "latest": {k: ("nan" if math.isnan(v) else v) for k, v in full.data.metrics.items()},
            "history": {k: sorted((m.step, m.timestamp, repr(m.value))  # repr: nan == nan
                                  for m in client.get_metric_history(rid, k)) for k in full.data.metrics},
            "datasets": [(d.dataset.name, d.dataset.digest, d.dataset.schema, d.dataset.profile,
                          sorted((t.key, t.value) for t in d.tags)) for d in full.inputs.dataset_inputs],
            "outputs": [(o.step, client.get_logged_model(o.model_id).name) for o in full.outputs.model_outputs],
        })
    lms = client.search_logged_models([exp_id])
    out.append(sorted(
        (lm.name, str(lm.status), lm.params, lm.tags, lm.source_run_id is not None,
         sorted((m.key, m.value, m.step, m.timestamp) for m in lm.metrics or []))
        for lm in lms))
    return out


@pytest.fixture()
def stores(tmp_path):
    uris = []
    for name in ("api", "rows"):
        (tmp_path / name).mkdir()
        uri = sqlite_uri(tmp_path / name)
        config.ensure_store(uri)
        uris.append(uri)
    return uris


def test_rows_read_back_as_mlflow_wrote_them(stores):
    api_uri, rows_uri = stores

    # Through MLflow's API.
    client = MlflowClient(tracking_uri=api_uri)
    exp_a = client.create_experiment("e")
    for n in ("1", "2"):
        run = client.create_run(exp_a, start_time=T0, run_name="rn",
                                tags={"mlflow.user": "ann", "team": "x", "n": n})
        rid = run.info.run_id
        client.log_batch(rid, metrics=[Metric(k, v, ts, s) for k, v, ts, s in HISTORY],
                         params=[Param("C", "1.0"), Param("model", "lr")], tags=[RunTag("extra", "y")])
        client.log_inputs(rid, datasets=[DatasetInput(DATASET, [InputTag("mlflow.data.context", "training")])])
        client.set_terminated(rid, "FINISHED", end_time=T0 + 100)
        lm = client.create_logged_model(exp_a, name=f"model-{n}", source_run_id=rid, params={"a": "1"},
                                        tags={"k": "v"})
        client.log_batch(rid, metrics=[Metric("acc", 0.97, T0, 0, model_id=lm.model_id, run_id=rid)])
        client.log_outputs(rid, [LoggedModelOutput(lm.model_id, 3)])
        client.finalize_logged_model(lm.model_id, "READY")

    # As rows, in one transaction.
    import uuid

    rows_client = MlflowClient(tracking_uri=rows_uri)
    exp_b = rows_client.create_experiment("e")
    engine = rows_client._tracking_client.store.engine
    builder = sql_rows.RowBuilder(engine)
    builder.known_datasets([exp_b])
    for n in ("1", "2"):
        rid, mid = uuid.uuid4().hex, f"m-{uuid.uuid4().hex}"
        rec = _record(rid)
        rec["metrics"]["acc"] = [[0.97, T0, 0]]  # MLflow also logs a model's metric to its run
        tags = {"mlflow.user": "ann", "team": "x", "n": n, "extra": "y", "mlflow.runName": "rn"}
        builder.run(rec, exp_b, f"/tmp/none/{rid}", rid, tags, deleted=False)
        builder.logged_model(mid, exp_b, f"model-{n}", f"/tmp/none/{mid}", source_run_id=rid,
                             params={"a": "1"}, tags={"k": "v"},
                             metrics=[{"key": "acc", "value": 0.97, "timestamp": T0, "step": 0, "run_id": rid}],
                             outputs=[(rid, 3)])
    sql_rows.write(engine, builder.rows)

    api, rows = _read(api_uri, exp_a), _read(rows_uri, exp_b)
    assert rows == api
    assert _count(api_uri, "datasets") == _count(rows_uri, "datasets") == 1  # one dataset row, used by both runs
    assert _count(api_uri, "latest_metrics") == _count(rows_uri, "latest_metrics") == 2 * 5  # loss, nan_metric, up, down, acc
    assert api[0]["latest"]["loss"] == 0.5 and api[0]["latest"]["nan_metric"] == 1.0  # the cases are real
    assert api[0]["latest"]["up"] == sql_rows.MAX_FLOAT


def test_an_out_of_date_database_is_refused(tmp_path):
    import sqlite3

    uri = sqlite_uri(tmp_path)
    config.ensure_store(uri)
    db = tmp_path / "mlruns" / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = 'abc123'")
    with pytest.raises(sql_rows.DatabaseTargetError, match="schema revision abc123"):
        sql_rows.open_engine(uri)
    # A database that cannot be reached: one line, without the password.
    with pytest.raises(sql_rows.DatabaseTargetError, match=r"postgresql://mlflow:\*\*\*@") as err:
        sql_rows.open_engine("postgresql://mlflow:s3cret@127.0.0.1:1/mlflow")
    assert "s3cret" not in str(err.value) and "\n" not in str(err.value)


def _count(uri: str, table: str) -> int:
    import sqlite3

    with sqlite3.connect(uri.removeprefix("sqlite:///")) as con:
        return con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
