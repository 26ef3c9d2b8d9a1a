"""`mlops score` on a real local[2] Spark: what ``mlflow.pyfunc.predict`` answers, row for row.

pyfunc is the oracle: the predictions Spark writes equal ``mlflow.pyfunc.load_model(...).predict``
on the same rows read the way a user reads them (pandas), for the breast-cancer model (Parquet in)
and for a penguins model (CSV in: strings, missing values, an island it never saw). The version is
resolved once and kept while Production moves during the job; the output appears complete or not
at all; each job is a tracking run. Bad input is refused with one line before any Spark job.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from mlops import registry
from tests.helpers import BIN, clean_env, run
from tests.scoring.conftest import BREAST_CANCER, PENGUINS, PENGUINS_CSV

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
pytest.importorskip("pyspark", reason="the spark extra (pip install -e '.[spark]') is not installed")


def pyfunc_predict(uri: str, name: str, version: str, frame: pd.DataFrame) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}", suppress_warnings=True)
    return np.asarray(model.predict(frame))


def score(uri: str, *args: str, progress=None, probabilities: bool = False):
    """The job as `mlops score` runs it, in this process (the session's Spark is reused)."""
    from mlops.scoring.batch import ScoreJob
    from mlops.scoring.batch import run as run_job

    opts = dict(zip(args[::2], args[1::2], strict=True))
    job = ScoreJob(input=opts.pop("--input"), output=opts.pop("--output"), model_name=opts.pop("--model"),
                   tracking_uri=uri, version=opts.pop("--version", None), overwrite=bool(opts.pop("--overwrite", "")),
                   id_columns=[c for c in opts.pop("--id-columns", "").split(",") if c], probabilities=probabilities)
    assert not opts, opts
    return run_job(job, progress=progress)


def cli(uri: str, *args: str):
    """In-process `mlops` (the console script's click group and error handling)."""
    from mlops.cli import _load_commands
    from mlops.cli import cli as group

    _load_commands()
    return CliRunner().invoke(group, ["score", "--tracking-uri", uri, *args], prog_name="mlops")


def jobs_run(spark) -> int:
    return len(spark.sparkContext.statusTracker().getJobIdsForGroup())


def breast_cancer_rows(n: int = 569) -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(n)
    frame.insert(0, "row_id", np.arange(len(frame), dtype="int64"))
    return frame


def penguin_rows() -> pd.DataFrame:
    """Every penguin without its label, plus rows a user's file has: an unseen island, all-missing numbers."""
    frame = pd.read_csv(PENGUINS_CSV).drop(columns=["species"])
    odd = frame.iloc[[0, 3, 100]].copy()
    odd.iloc[0, odd.columns.get_loc("island")] = "Anvers"
    odd.iloc[1, odd.columns.get_loc("sex")] = np.nan
    frame = pd.concat([frame, odd], ignore_index=True)
    frame.insert(0, "row_id", np.arange(len(frame), dtype="int64"))
    return frame


def parts(frame: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """``frame`` cut into ``n`` consecutive pieces."""
    bounds = np.linspace(0, len(frame), n + 1).astype(int)
    return [frame.iloc[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def read_output(folder) -> pd.DataFrame:
    return pd.read_parquet(folder).sort_values("row_id").reset_index(drop=True)


def footer_metadata(folder) -> dict:
    """The prediction column's metadata as Spark stored it in a Parquet footer."""
    import pyarrow.parquet as pq

    part = sorted(folder.glob("part-*.parquet"))[0]
    schema = json.loads(pq.read_metadata(part).metadata[b"org.apache.spark.sql.parquet.row.metadata"])
    return next(f["metadata"] for f in schema["fields"] if f["name"] == "prediction")


def test_breast_cancer_predictions_equal_pyfunc_and_the_job_is_a_tracking_run(spark, store, tmp_path):
    rows = breast_cancer_rows()
    src = tmp_path / "in"
    src.mkdir()
    for i, part in enumerate(parts(rows, 3)):  # a folder of Parquet files
        part.to_parquet(src / f"part-{i}.parquet", index=False)
    result = score(store["uri"], "--input", str(src), "--output", str(tmp_path / "out"), "--model", BREAST_CANCER,
                   "--id-columns", "row_id")
    out = read_output(tmp_path / "out")
    assert list(out.columns) == ["row_id", "prediction"]
    assert out["row_id"].tolist() == rows["row_id"].tolist()
    expected = pyfunc_predict(store["uri"], BREAST_CANCER, "1", rows.drop(columns=["row_id"]))
    np.testing.assert_array_equal(out["prediction"].to_numpy(), expected)
    assert len(set(expected.tolist())) == 2  # both classes occur: equality is not trivial

    meta = footer_metadata(tmp_path / "out")
    assert meta["mlops.model_name"] == BREAST_CANCER and meta["mlops.model_version"] == "1"
    manifest = json.loads((tmp_path / "out" / "_mlops_scoring.json").read_text())
    assert manifest["model_version"] == "1" and manifest["rows_in"] == manifest["rows_out"] == len(rows)

    client = registry.get_client(store["uri"])
    job_run = client.get_run(result.run_id)
    training_run = client.get_run(client.get_model_version(BREAST_CANCER, "1").run_id)
    assert job_run.info.status == "FINISHED"
    assert job_run.info.experiment_id == training_run.info.experiment_id  # reviewed next to training
    assert job_run.data.params["model_version"] == "1"
    assert job_run.data.params["input"] == str(src) and job_run.data.params["spark_master"] == "local[2]"
    assert job_run.data.metrics["rows_in"] == job_run.data.metrics["rows_out"] == len(rows)
    assert job_run.data.metrics["input_bytes"] == sum(f.stat().st_size for f in src.iterdir())
    assert job_run.data.metrics["duration_s"] > 0
    assert len(job_run.data.tags["mlops.input_digest"]) == 64


def test_mixed_types_csv_predictions_equal_pyfunc(spark, store, tmp_path):
    rows = penguin_rows()
    rows.to_csv(tmp_path / "penguins.csv", index=False)
    score(store["uri"], "--input", str(tmp_path / "penguins.csv"), "--output", str(tmp_path / "out"),
          "--model", PENGUINS, "--id-columns", "row_id", probabilities=True)
    out = read_output(tmp_path / "out")
    user_rows = pd.read_csv(tmp_path / "penguins.csv")  # the way a user reads the same file
    assert user_rows.isna().any(axis=1).sum() >= 10 and "Anvers" in set(user_rows["island"])
    features = user_rows.drop(columns=["row_id"])
    expected = pyfunc_predict(store["uri"], PENGUINS, "1", features)
    assert out["row_id"].tolist() == user_rows["row_id"].tolist()
    np.testing.assert_array_equal(out["prediction"].to_numpy(dtype=object), expected.astype(object))
    assert len(set(expected.tolist())) == 3

    # --probabilities: one column per class, named by label, as scikit-learn's predict_proba says.
    import mlflow

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = mlflow.pyfunc.load_model(f"models:/{PENGUINS}/1", suppress_warnings=True).get_raw_model()
    names = [f"probability_{c}" for c in raw.classes_]
    assert list(out.columns) == ["row_id", "prediction", *names]
    np.testing.assert_allclose(out[names].to_numpy(), raw.predict_proba(features), rtol=0, atol=1e-12)
    best = np.asarray(raw.classes_)[out[names].to_numpy().argmax(axis=1)]
    np.testing.assert_array_equal(best, expected.astype(object))


def _register_pair(uri: str, name: str) -> None:
    """v1: a logistic regression on breast cancer; v2: a constant model (always class 0)."""
    import mlflow
    from sklearn.datasets import load_breast_cancer
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from tests.lifecycle.registry_data import pip_requirements

    data = load_breast_cancer(as_frame=True)
    X, y = data.data, data.target
    first = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    constant = DummyClassifier(strategy="constant", constant=0).fit(X, y)
    mlflow.set_tracking_uri(uri)
    eid = registry.get_client(uri).create_experiment(f"{name}-notebook")
    with mlflow.start_run(experiment_id=eid), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model in (first, constant):
            mlflow.sklearn.log_model(model, name="model", registered_model_name=name, input_example=X.head(3),
                                     pip_requirements=pip_requirements())


def test_version_stays_pinned_while_production_moves_mid_job(spark, store, tmp_path):
    name = "scoring-pinned"
    uri = store["uri"]
    _register_pair(uri, name)
    client = registry.get_client(uri)
    registry.promote(client, name, "1", preflight=False, notify=False)
    rows = pd.concat([breast_cancer_rows()] * 8, ignore_index=True)
    rows["row_id"] = np.arange(len(rows))
    src = tmp_path / "in"
    src.mkdir()
    for i, part in enumerate(parts(rows, 16)):  # 16 tasks on 2 cores: several waves
        part.to_parquet(src / f"part-{i}.parquet", index=False)
    moved = []

    def promote_mid_job(done: int, total: int) -> None:
        if not moved:
            moved.append((done, total))
            registry.promote(client, name, "2", preflight=False, notify=False)

    result = score(uri, "--input", str(src), "--output", str(tmp_path / "out"), "--model", name,
                   "--id-columns", "row_id", progress=promote_mid_job)
    assert moved and moved[0][0] < moved[0][1], "the promotion did not happen while the job ran"
    assert str(registry.stage_version(client, name, registry.PRODUCTION).version) == "2"
    out = read_output(tmp_path / "out")
    features = rows.drop(columns=["row_id"])
    v1, v2 = (pyfunc_predict(uri, name, v, features) for v in ("1", "2"))
    assert (v1 != v2).sum() > 1000  # the two versions disagree on most rows
    np.testing.assert_array_equal(out["prediction"].to_numpy(), v1)
    assert result.version == "1" and footer_metadata(tmp_path / "out")["mlops.model_version"] == "1"
    assert client.get_run(result.run_id).data.params["model_version"] == "1"


def test_a_row_failing_inside_the_job_leaves_no_output_and_a_failed_run(spark, store, tmp_path):
    rows = pd.read_csv(PENGUINS_CSV)
    rows = pd.concat([rows] * 80, ignore_index=True).astype({"bill_length_mm": object})
    rows.loc[len(rows) - 3, "bill_length_mm"] = "12,5mm"  # beyond what is read before Spark starts
    rows.insert(0, "row_id", np.arange(len(rows)))
    rows.to_csv(tmp_path / "late.csv", index=False)
    assert (tmp_path / "late.csv").stat().st_size > 1 << 20
    before = {p.name for p in tmp_path.iterdir()}
    result = cli(store["uri"], "--input", str(tmp_path / "late.csv"), "--output", str(tmp_path / "out"),
                 "--model", PENGUINS, "--id-columns", "row_id")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: scoring job failed: column 'bill_length_mm' holds '12,5mm', which is not "
                                     f"a double (on the row with row_id={len(rows) - 3})")
    assert {p.name for p in tmp_path.iterdir()} == before  # no output, no partial folder left behind
    client = registry.get_client(store["uri"])
    training_exp = client.get_run(client.get_model_version(PENGUINS, "1").run_id).info.experiment_id
    failed = client.search_runs([training_exp], "tags.`mlops.job` = 'batch-scoring' and attributes.status = 'FAILED'")
    assert failed and "12,5mm" in failed[0].data.tags["mlops.error"]


def test_ctrl_c_mid_job_cancels_it_and_leaves_no_output(spark, store, tmp_path):
    import os
    import signal

    rows = pd.concat([breast_cancer_rows()] * 8, ignore_index=True)
    src = tmp_path / "in"
    src.mkdir()
    for i, part in enumerate(parts(rows, 16)):
        part.to_parquet(src / f"part-{i}.parquet", index=False)
    seen = []

    def ctrl_c(done: int, total: int) -> None:
        if not seen:
            seen.append((done, total))
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        score(store["uri"], "--input", str(src), "--output", str(tmp_path / "out"), "--model", BREAST_CANCER,
              "--id-columns", "row_id", progress=ctrl_c)
    assert seen and seen[0][0] < seen[0][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no output, no partial folder
    assert not spark.sparkContext.statusTracker().getActiveJobsIds()
    assert signal.getsignal(signal.SIGINT) is before  # the job's handler is gone again


def test_existing_output_is_kept_unless_overwrite(spark, store, tmp_path):
    rows = breast_cancer_rows(40)
    rows.to_parquet(tmp_path / "in.parquet", index=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("yesterday's result")
    result = cli(store["uri"], "--input", str(tmp_path / "in.parquet"), "--output", str(out), "--model",
                 BREAST_CANCER, "--id-columns", "row_id")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: output {out} already exists (pass --overwrite to replace it)"
    assert (out / "keep.txt").read_text() == "yesterday's result"
    result = cli(store["uri"], "--input", str(tmp_path / "in.parquet"), "--output", str(out), "--model",
                 BREAST_CANCER, "--id-columns", "row_id", "--overwrite")
    assert result.exit_code == 0, result.output
    assert f"scored 40 rows with {BREAST_CANCER} v1" in result.stdout
    assert not (out / "keep.txt").exists() and len(read_output(out)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "out"]  # nothing hidden left over


def _bad_inputs(tmp_path):
    rows = penguin_rows()
    cases = {}
    rows.drop(columns=["year"]).to_csv(tmp_path / "no-year.csv", index=False)
    cases["missing column"] = ("no-year.csv", "the input lacks column(s) 'year' that the model requires")
    wrong = rows.astype({"body_mass_g": object})
    wrong.loc[7, "body_mass_g"] = "heavy"
    wrong.to_csv(tmp_path / "wrong.csv", index=False)
    cases["wrong type"] = ("wrong.csv", "column 'body_mass_g' holds text ('heavy' on data row 8), but the model "
                                        "expects double")
    rows.head(0).to_csv(tmp_path / "header-only.csv", index=False)
    cases["empty input"] = ("header-only.csv", "the input is empty: no data rows after the header")
    rows.head(0).to_parquet(tmp_path / "empty.parquet", index=False)
    cases["empty parquet"] = ("empty.parquet", f"the input is empty: {tmp_path / 'empty.parquet'} has no rows")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really parquet")
    cases["unreadable file"] = ("broken.parquet", f"cannot read Parquet input {tmp_path / 'broken.parquet'}: ")
    cases["no such path"] = ("missing.csv", f"input {tmp_path / 'missing.csv'} does not exist")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("no table here")
    cases["folder without tables"] = ("notes", f"input folder {tmp_path / 'notes'} holds no CSV or Parquet file")
    return cases


def test_bad_input_is_one_line_before_any_spark_job(spark, store, tmp_path):
    cases = _bad_inputs(tmp_path)
    jobs = jobs_run(spark)
    for case, (name, message) in cases.items():
        result = cli(store["uri"], "--input", str(tmp_path / name), "--output", str(tmp_path / f"out-{name}"),
                     "--model", PENGUINS)
        lines = result.stderr.strip().splitlines()
        assert result.exit_code == 1, (case, result.output)
        assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), (case, result.stderr)
        assert not (tmp_path / f"out-{name}").exists()
    unknown = cli(store["uri"], "--input", str(tmp_path / "wrong.csv"), "--output", str(tmp_path / "o"),
                  "--model", PENGUINS, "--id-columns", "row_id,ticket")
    assert unknown.exit_code == 1 and "--id-columns: the input has no column 'ticket'" in unknown.stderr
    assert jobs_run(spark) == jobs, "a Spark job ran for an input that was refused"


def test_the_console_script_says_one_line_without_starting_spark(store, tmp_path):
    rows = penguin_rows().astype({"year": object})
    rows.loc[2, "year"] = "MMVII"
    rows.to_csv(tmp_path / "years.csv", index=False)
    proc = run([str(BIN / "mlops"), "score", "--input", str(tmp_path / "years.csv"), "--output",
                str(tmp_path / "out"), "--model", PENGUINS], env=clean_env(MLFLOW_TRACKING_URI=store["uri"]),
               check=False, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: column 'year' holds text ('MMVII' on data row 3), but the model expects long"]  # no JVM line
