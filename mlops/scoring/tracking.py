"""The tracking run of a scoring job, in the experiment of the scored version's training run.

Batch jobs are then reviewed next to the training that produced the model: input (path, size,
listing digest), rows in and out, the version scored, duration and Spark master.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient

from mlops import config
from mlops.scoring.inputs import InputInfo
from mlops.scoring.model import PinnedModel
from mlops.util import first_line

log = logging.getLogger(__name__)

JOB_TAG = "mlops.job"
JOB = "batch-scoring"


def experiment_for(client: MlflowClient, pinned: PinnedModel) -> str:
    """The experiment of the version's training run, else one named after the model."""
    if pinned.run_id:
        try:
            return client.get_run(pinned.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a deleted or foreign run: fall back to the model's own
            log.info("training run %s of %s v%s not readable; logging in experiment %s", pinned.run_id,
                     pinned.name, pinned.version, pinned.name)
    return config.ensure_experiment(client, pinned.name)


@dataclass
class JobRun:
    """An open tracking run; :meth:`finish` closes it."""

    client: MlflowClient
    run_id: str
    started: float

    def finish(self, metrics: dict[str, float], error: BaseException | None = None) -> None:
        """Log the metrics and end the run (FAILED with the error's line, else FINISHED)."""
        now = int(time.time() * 1000)
        try:
            from mlflow.entities import Metric

            metrics = {**metrics, "duration_s": round(time.monotonic() - self.started, 3)}
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
            if error is not None:
                self.client.set_tag(self.run_id, "mlops.error", first_line(error)[:250])
            self.client.set_terminated(self.run_id, "FAILED" if error is not None else "FINISHED")
        except Exception as exc:  # noqa: BLE001 - the job's own outcome matters more than its record
            log.warning("could not close tracking run %s: %s", self.run_id, first_line(exc))


def start(client: MlflowClient, pinned: PinnedModel, info: InputInfo, output: str, master: str,
          env_manager: str, extra: dict[str, Any]) -> JobRun:
    """Open the job's run with its parameters and tags."""
    from mlflow.entities import Param, RunTag

    experiment_id = experiment_for(client, pinned)
    run = client.create_run(experiment_id, run_name=f"score {pinned.name} v{pinned.version}",
                            tags={JOB_TAG: JOB, "mlops.model_name": pinned.name,
                                  "mlops.model_version": pinned.version})
    params = {"model_name": pinned.name, "model_version": pinned.version, "model_uri": pinned.uri,
              "selected_by": pinned.selector, "input": str(info.path), "input_format": info.format,
              "output": output, "spark_master": master, "env_manager": env_manager,
              **{k: str(v) for k, v in extra.items()}}
    tags = {"mlops.input_digest": info.digest, "mlops.model_run_id": pinned.run_id or "-"}
    client.log_batch(run.info.run_id,
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    log.info("tracking run %s (experiment %s)", run.info.run_id, experiment_id)
    return JobRun(client=client, run_id=run.info.run_id, started=time.monotonic())


__all__ = ["JOB", "JOB_TAG", "JobRun", "experiment_for", "start"]
