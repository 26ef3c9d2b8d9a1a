"""Batch scoring on Spark with ``mlflow.pyfunc.spark_udf`` (`mlops score`).

One job scores a CSV or Parquet input with exactly one registered version, resolved once and
pinned (its files are downloaded before Spark starts, so a promotion during the job changes
nothing), writes a Parquet folder atomically and records a tracking run. The parts:

- :mod:`mlops.scoring.model`: resolve and pin the version, the UDF's result type;
- :mod:`mlops.scoring.inputs`: look at the input without Spark, check it against the signature,
  read it into Spark with the signature's types;
- :mod:`mlops.scoring.output`: the atomic Parquet folder;
- :mod:`mlops.scoring.probabilities`: ``--probabilities``, one column per class;
- :mod:`mlops.scoring.spark`: the Spark session, progress, Ctrl-C, one-line job errors;
- :mod:`mlops.scoring.daemon`: PySpark's worker daemon with MLflow imported before it forks;
- :mod:`mlops.scoring.tracking`: the tracking run of a job;
- :mod:`mlops.scoring.batch`: the job itself, in that order.

Bad input is refused with one line (:class:`BadInput`) before any Spark job, before the JVM even
starts. Nothing here imports pyspark at module level: the CLI stays cheap without the extra.
"""

from __future__ import annotations

from mlops.errors import MlopsError, Refused


class ScoringError(MlopsError):
    """A scoring job that cannot proceed or failed; the message is one readable line."""


class BadInput(ScoringError, Refused):
    """The input, the output path or the options cannot be scored as asked (checked before Spark)."""


class JobFailed(ScoringError):
    """The Spark job started and failed (a row the model could not score, an executor lost ...)."""


__all__ = ["BadInput", "JobFailed", "ScoringError"]
