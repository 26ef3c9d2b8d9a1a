"""score: batch scoring on Spark with ``mlflow.pyfunc.spark_udf`` (needs the ``spark`` extra)."""

from __future__ import annotations

import importlib.util
import sys

import click

from mlops import config
from mlops.cli import tracking_option
from mlops.errors import MlopsError

INSTALL_HINT = ("pyspark is not installed: pip install -e '.[spark]' (make install does it; "
                "Java 17 or later must be on PATH)")


class SparkMissing(MlopsError):
    """The ``spark`` extra is not installed."""


def _conf(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--conf")
        out[key.strip()] = value
    return out


def _progress_printer():
    """Progress on a terminal (stderr, one rewritten line); nothing otherwise (the log has it)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        click.echo(f"\rscoring: {done}/{total} partitions done", err=True, nl=False)

    return show


@click.command()
@click.option("--input", "input_path", required=True, metavar="PATH",
              help="CSV or Parquet file, or a folder of them (Hive-partitioned folders too).")
@click.option("--output", "output_path", required=True, metavar="PATH",
              help="Parquet folder to create (written beside it, renamed when complete).")
@click.option("--model", "model_name", default=config.DEFAULT_MODEL_NAME, show_default=True,
              help="Registered model name.")
@click.option("--stage", default=None, help="Stage to score with (default: Production).")
@click.option("--alias", default=None, help="Alias to score with, e.g. champion.")
@click.option("--version", "version", default=None, help="Version number to score with.")
@click.option("--master", default=None, metavar="URL",
              help="Spark master: local[N], spark://HOST:7077, yarn, k8s://... (default: the running "
                   "session's, else spark-submit's, else local[*]).")
@click.option("--id-columns", default="", metavar="COLS",
              help="Comma-separated input columns copied to the output next to the prediction "
                   "(default: every input column).")
@click.option("--keep-columns", is_flag=True, help="Copy every input column, also with --id-columns.")
@click.option("--probabilities", is_flag=True,
              help="Add one probability_<label> column per class (scikit-learn classifiers).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (only once the new one is complete).")
@click.option("--env-manager", default="local", show_default=True, type=click.Choice(["local", "virtualenv", "uv"]),
              help="Python environment of the executors (virtualenv/uv rebuild the model's own).")
@click.option("--conf", "conf", multiple=True, metavar="KEY=VALUE",
              help="Spark setting for a session started here (repeatable).")
@tracking_option
@click.pass_context
def score(ctx: click.Context, input_path: str, output_path: str, model_name: str, stage: str | None,
          alias: str | None, version: str | None, master: str | None, id_columns: str, keep_columns: bool,
          probabilities: bool, overwrite: bool, env_manager: str, conf: tuple[str, ...], tracking_uri: str) -> None:
    """Score a table with the registry's version of a model on Spark (mlflow.pyfunc.spark_udf).

    The version (default: Production) is resolved once and pinned for the whole job. The input is
    checked against the model's signature before Spark starts: missing columns, wrong types, an
    empty or unreadable input and an existing output are refused with one line. The output is a
    Parquet folder (ids or every input column, then `prediction`, whose column metadata names the
    model and version; with --probabilities one probability_<label> column per class), written
    under a hidden name and renamed when complete, with a manifest `_mlops_scoring.json`. Each job
    is a tracking run in the experiment of the version's training run.
    """
    if importlib.util.find_spec("pyspark") is None:
        raise SparkMissing(INSTALL_HINT)
    from mlops.scoring.batch import ScoreJob, run

    verbose = bool(ctx.find_root().params.get("verbose"))
    job = ScoreJob(input=input_path, output=output_path, model_name=model_name, tracking_uri=tracking_uri,
                   stage=stage, alias=alias, version=version, master=master,
                   id_columns=[c.strip() for c in id_columns.split(",") if c.strip()], keep_columns=keep_columns,
                   probabilities=probabilities, overwrite=overwrite, env_manager=env_manager, conf=_conf(conf), verbose=verbose)
    show = _progress_printer()
    result = run(job, progress=show)
    if show is not None:
        click.echo("", err=True)
    click.echo(f"scored {result.rows_out} rows with {result.model_name} v{result.version} in {result.seconds:.1f} s "
               f"({result.master}) -> {result.output}  (tracking run {result.run_id})")


def register(cli) -> None:
    """Attach this module's commands."""
    cli.add_command(score)


__all__ = ["register", "score"]
