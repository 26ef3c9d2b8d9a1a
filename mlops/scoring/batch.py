"""One scoring job, in order: output refused or prepared, input inspected, version pinned, input
checked against the signature (all without Spark), then the Spark job, the atomic rename and the
tracking run."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops import registry
from mlops.scoring import BadInput, JobFailed, inputs, model, output, probabilities, spark, tracking

log = logging.getLogger(__name__)

ENV_MANAGERS = ("local", "virtualenv", "uv")
#: Keys of the prediction column's metadata, stored in every Parquet file's footer by Spark.
META_NAME, META_VERSION, META_URI = "mlops.model_name", "mlops.model_version", "mlops.model_uri"


@dataclass
class ScoreJob:
    """What `mlops score` was asked to do."""

    input: str
    output: str
    model_name: str
    tracking_uri: str
    stage: str | None = None
    alias: str | None = None
    version: str | None = None
    master: str | None = None
    id_columns: list[str] = field(default_factory=list)
    keep_columns: bool = False
    probabilities: bool = False
    overwrite: bool = False
    env_manager: str = "local"
    conf: dict[str, str] = field(default_factory=dict)
    verbose: bool = False


@dataclass
class ScoreResult:
    """What a finished job did."""

    output: Path
    model_name: str
    version: str
    rows_in: int | None
    rows_out: int
    seconds: float
    run_id: str
    master: str


def _manifest(job: ScoreJob, pinned: model.PinnedModel, info: inputs.InputInfo, rows_out: int,
              run_id: str, master: str, seconds: float) -> dict[str, Any]:
    return {"model_name": pinned.name, "model_version": pinned.version, "model_uri": pinned.uri,
            "selected_by": pinned.selector, "input": str(info.path), "input_format": info.format,
            "input_bytes": info.bytes, "input_digest": info.digest, "rows_in": info.rows, "rows_out": rows_out,
            "tracking_run_id": run_id, "spark_master": master, "seconds": round(seconds, 3),
            "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _scored(df: Any, udf: Any, plan: inputs.Plan, pinned: model.PinnedModel, proba: Any = None,
            proba_names: list[str] | None = None) -> Any:
    from pyspark.sql import functions as F

    meta = {META_NAME: pinned.name, META_VERSION: pinned.version, META_URI: pinned.uri}
    features = F.struct(*[F.col(f"`{c}`") for c in plan.features])
    keep = [F.col(f"`{c}`") for c in plan.keep]
    prediction = udf(features).alias(inputs.PREDICTION, metadata=meta)
    if proba is None:
        return df.select(*keep, prediction)
    # The struct once, then its fields: the UDF runs once per row, not once per class.
    scored = df.select(*keep, prediction, proba(features).alias("__mlops_probabilities"))
    fields = [F.col(f"`__mlops_probabilities`.`{n}`").alias(n) for n in proba_names or []]
    return scored.select(*[F.col(f"`{c}`") for c in plan.keep], F.col(inputs.PREDICTION), *fields)


def run(job: ScoreJob, progress: Callable[[int, int], None] | None = None) -> ScoreResult:
    """Score ``job.input`` into ``job.output``; BadInput before Spark, JobFailed if the job fails."""
    if job.env_manager not in ENV_MANAGERS:
        raise BadInput(f"--env-manager must be one of {', '.join(ENV_MANAGERS)}")
    out = output.prepare(job.output, job.overwrite)
    info = inputs.inspect(job.input)
    client = registry.get_client(job.tracking_uri)
    workdir = Path(tempfile.mkdtemp(prefix="mlops-score-"))
    session = started = None
    try:
        pinned = model.pin(client, job.model_name, workdir / "model", job.stage, job.alias, job.version)
        plan = inputs.check(info, pinned.signature, job.id_columns, job.keep_columns)
        kind = model.result_type(pinned)
        classes = probabilities.labels(pinned) if job.probabilities else None
        if classes is not None:
            clash = sorted(set(probabilities.column_names(classes)) & set(plan.keep))
            if clash:
                raise BadInput(f"--probabilities: the input already has column(s) {', '.join(map(repr, clash))}")
        log.info("scoring %s (%s, %d file(s), %d bytes%s) with %s v%s (%s), pinned for the whole job", info.path,
                 info.format, len(info.files), info.bytes, f", {info.rows} rows" if info.rows is not None else "",
                 pinned.name, pinned.version, pinned.selector)
        if plan.missing_optional:
            log.info("optional column(s) absent, the model sees them as missing: %s", ", ".join(plan.missing_optional))
        session, started = spark.start_session(job.master, f"mlops score {pinned.name} v{pinned.version}",
                                               job.conf, job.verbose)
        master = session.sparkContext.master
        jr = tracking.start(client, pinned, info, str(out.target), master, job.env_manager,
                            {"id_columns": ",".join(job.id_columns) or "-", "keep_columns": job.keep_columns,
                             "probabilities": job.probabilities})
        error: BaseException | None = None
        rows_out = 0
        try:
            rows_out = _write(session, job, pinned, info, plan, kind, out, progress, classes)
            if info.rows is not None and rows_out != info.rows:
                raise JobFailed(f"wrote {rows_out} rows for {info.rows} input rows; output discarded")
            seconds = time.monotonic() - jr.started
            out.commit(_manifest(job, pinned, info, rows_out, jr.run_id, master, seconds))
        except BaseException as exc:
            error = exc
            if not spark.wait_idle(session):
                log.warning("Spark tasks still running after the job ended; removing the partial output anyway")
            out.discard()
            raise
        finally:
            metrics = {"rows_out": rows_out, "input_bytes": info.bytes, "input_files": len(info.files)}
            if info.rows is not None:
                metrics["rows_in"] = info.rows
            elif error is None:
                metrics["rows_in"] = rows_out  # CSV: every input row gives one output row
            elapsed = time.monotonic() - jr.started
            if error is None and elapsed > 0:
                metrics["rows_per_s"] = round(rows_out / elapsed, 1)
            jr.finish(metrics, error)
        log.info("scored %d rows with %s v%s in %.1f s -> %s", rows_out, pinned.name, pinned.version, seconds,
                 out.target)
        return ScoreResult(output=out.target, model_name=pinned.name, version=pinned.version, rows_in=info.rows,
                           rows_out=rows_out, seconds=seconds, run_id=jr.run_id, master=master)
    finally:
        if started and session is not None:
            session.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _write(session: Any, job: ScoreJob, pinned: model.PinnedModel, info: inputs.InputInfo, plan: inputs.Plan,
           kind: str, out: output.Output, progress: Callable[[int, int], None] | None,
           classes: list[Any] | None = None) -> int:
    import mlflow.pyfunc

    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)  # its env_manager="local" advice is the operator's choice, logged below
    try:
        udf = mlflow.pyfunc.spark_udf(session, str(pinned.path), result_type=kind, env_manager=job.env_manager)
    finally:
        pyfunc_log.setLevel(level)
    log.info("spark_udf: %s v%s, env manager %s, prediction type %s, %d feature column(s)", pinned.name,
             pinned.version, job.env_manager, kind, len(plan.features))
    proba = probabilities.udf(session, pinned, classes) if classes is not None else None
    names = probabilities.column_names(classes) if classes is not None else None
    scored = _scored(inputs.read(session, info, plan), udf, plan, pinned, proba, names)
    with spark.cancel_on_interrupt(session) as interrupted:
        try:
            with spark.Progress(session, progress):
                scored.write.mode("errorifexists").parquet(str(out.partial))
        except Exception as exc:
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            raise JobFailed(f"scoring job failed: {spark.job_error(exc)}") from None
        if interrupted.is_set():
            raise KeyboardInterrupt
    return output.rows_in(out.partial)


__all__ = ["ENV_MANAGERS", "META_NAME", "META_URI", "META_VERSION", "ScoreJob", "ScoreResult", "run"]
