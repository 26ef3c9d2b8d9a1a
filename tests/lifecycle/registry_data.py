"""Build a registry worth backing up, and take a comparable snapshot of one.

The source registry: one model trained by the real entry point (experiment ``lc-exp-a``), a second
real fit logged in-process into ``lc-exp-b`` (metric history over steps, dataset input, extra
artifact), and a 2.x-style version whose model files live inside a run's artifacts. From these
three sources 18 version numbers are created; 4, 7, 8 (middle) and 17, 18 (top) are deleted;
stages None/Staging/Production/Archived, aliases production/staging/challenger, version tags and
descriptions, model tags and a promotion history made by ``registry.promote``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from mlops import config, registry
from mlops.recovery.compare import diff  # noqa: F401 - the tests compare snapshots with it
from mlops.recovery.compare import hash_dir as _hash_dir

NAME = "lc-model"
OTHER = "lc-other"
PENGUINS = "lc-penguins"  # mixed types (strings, missing values), three classes: trained by the entry point
DELETED = (4, 7, 8, 17, 18)
MAX_VERSION = 18
RESTORE_TAG = "mlops.restore."


def pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy")]


def features(n: int = 20):
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame.drop(columns=["target"]).head(n)


def penguin_rows():
    """Raw penguin rows as the user's file has them: strings, missing values, unseen categories."""
    import pandas as pd

    frame = pd.read_csv(Path(__file__).resolve().parents[2] / "training" / "datasets" / "penguins.csv")
    rows = frame.drop(columns=["species"]).iloc[[0, 3, 8, 9, 10, 47, 120, 178, 200, 218, 256, 271, 300, 343]]
    unseen = rows.iloc[[0, 5]].copy()
    unseen["island"] = ["Anvers", "Anvers"]
    unseen["sex"] = ["unknown", None]
    return pd.concat([rows, unseen], ignore_index=True)


def penguin_predictions(uri: str) -> dict:
    """``PENGUINS`` v1 on the raw rows: pyfunc's labels, and the pipeline's probabilities as exact reprs."""
    import mlflow.sklearn

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        rows = penguin_rows()
        with tempfile.TemporaryDirectory() as tmp:
            labels = mlflow.pyfunc.load_model(f"models:/{PENGUINS}/1", dst_path=tmp, suppress_warnings=True).predict(rows)
        with tempfile.TemporaryDirectory() as tmp:
            pipeline = mlflow.sklearn.load_model(f"models:/{PENGUINS}/1", dst_path=tmp)
            proba = pipeline.predict_proba(rows)
        return {"labels": [str(x) for x in labels], "classes": [str(c) for c in pipeline.classes_],
                "proba": [[repr(float(p)) for p in row] for row in proba]}
    finally:
        mlflow.set_tracking_uri(previous)


def download_logged_model(client: MlflowClient, model_id: str, dest: Path) -> Path:
    """The raw files of a logged model (no registered_model_meta added)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    lm = client.get_logged_model(model_id)
    dest.mkdir(parents=True, exist_ok=True)
    get_artifact_repository(lm.artifact_location, tracking_uri=client.tracking_uri).download_artifacts("", str(dest))
    return dest


def build(uri: str) -> dict:
    """Extend a store in which ``training.train`` registered ``NAME`` v1 into the full fixture."""
    from mlflow.models import infer_signature
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = registry.get_client(uri)
    try:
        v1 = client.get_model_version(NAME, "1")
        exp_a = client.get_run(v1.run_id).info.experiment_id
        client.set_experiment_tag(exp_a, "team", "credit-risk")
        exp_b = config.ensure_experiment(client, "lc-exp-b")
        client.set_experiment_tag(exp_b, "purpose", "refits")

        frame = load_breast_cancer(as_frame=True).frame
        X, y = frame.drop(columns=["target"]), frame["target"]
        with mlflow.start_run(experiment_id=exp_b, run_name="refit-c03") as run_b:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000)).fit(X, y)
            mlflow.log_params({"C": 0.3, "max_iter": 2000, "note": "second experiment"})
            for step in range(40):
                mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
            mlflow.log_metric("accuracy", float((model.predict(X) == y).mean()))
            mlflow.log_metric("accuracy", 0.5, step=1)
            mlflow.log_input(mlflow.data.from_pandas(frame, name="bc-full", targets="target"), context="eval")
            mlflow.log_text("refit with C=0.3\n", "notes/readme.txt")
            mlflow.set_tags({"purpose": "refit", "owner": "ana"})
            info_b = mlflow.sklearn.log_model(
                model, name="model", signature=infer_signature(X, model.predict(X)),
                input_example=X.head(3), pip_requirements=pip_requirements(),
            )
        with tempfile.TemporaryDirectory() as tmp:
            files = download_logged_model(client, v1.source.split("/")[-1], Path(tmp) / "model")
            with mlflow.start_run(experiment_id=exp_a, run_name="legacy-layout") as run_c:
                mlflow.log_param("layout", "2.x run artifacts")
                mlflow.log_artifacts(str(files), "model")
                mlflow.log_dict({"k": [1, 2, 3]}, "extra/data.json")
            client.set_terminated(run_c.info.run_id, "KILLED")
        run_c_uri = client.get_run(run_c.info.run_id).info.artifact_uri

        sources = [
            {"source": v1.source, "run_id": v1.run_id, "model_id": v1.source.split("/")[-1]},
            {"source": info_b.model_uri, "run_id": run_b.info.run_id, "model_id": info_b.model_id},
            {"source": f"{run_c_uri}/model", "run_id": run_c.info.run_id},
        ]
        for n in range(2, MAX_VERSION + 1):
            s = sources[n % 3]
            mv = client.create_model_version(
                NAME, s["source"], run_id=s["run_id"], model_id=s.get("model_id"),
                tags={"idx": str(n), "flavour": ["a", "b", "legacy"][n % 3], "accuracy": f"0.9{n:02d}"},
                description=f"Version **{n}** — made from source {n % 3}.\n\nSecond line.",
            )
            assert str(mv.version) == str(n)
        client.update_registered_model(NAME, description="Breast-cancer classifier (lifecycle fixture).")
        client.set_registered_model_tag(NAME, "owner", "risk-team")
        client.set_registered_model_tag(NAME, "tier", "gold")
        registry.promote(client, NAME, 9, registry.PRODUCTION, "first production", notify=False)
        registry.promote(client, NAME, 12, registry.PRODUCTION, "better recall", notify=False)
        registry.promote(client, NAME, 11, registry.STAGING, "candidate", preflight=False, notify=False)
        with registry.stage_api():
            for n in (2, 3, 10):
                client.transition_model_version_stage(NAME, str(n), registry.ARCHIVED)
        client.set_registered_model_alias(NAME, "challenger", "13")
        for n in DELETED:
            client.delete_model_version(NAME, str(n))

        client.create_registered_model(OTHER, tags={"kind": "small"}, description="A second model.")
        for _ in range(2):
            client.create_model_version(OTHER, info_b.model_uri, run_id=run_b.info.run_id, model_id=info_b.model_id)
        client.set_registered_model_alias(OTHER, "production", "2")
        return {"name": NAME, "other": OTHER}
    finally:
        mlflow.set_tracking_uri(previous)


def restore_tags(uri: str) -> list[str]:
    """Every ``mlops.restore.*`` tag left on a registered model, version, run or logged model."""
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = []
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    for rm in client.search_registered_models():
        found += [f"model {rm.name}: {k}" for k in rm.tags if k.startswith(RESTORE_TAG)]
        for mv in client.search_model_versions(f"name = '{rm.name}'"):
            found += [f"{rm.name} v{mv.version}: {k}" for k in mv.tags if k.startswith(RESTORE_TAG)]
    for r in client.search_runs(exps, run_view_type=ViewType.ALL, max_results=1000):
        found += [f"run {r.info.run_id}: {k}" for k in r.data.tags if k.startswith(RESTORE_TAG)]
    for lm in client.search_logged_models(exps, max_results=100):
        found += [f"logged model {lm.model_id}: {k}" for k in (lm.tags or {}) if k.startswith(RESTORE_TAG)]
    return sorted(found)


def _no_restore_tags(tags: dict) -> dict:
    return {k: v for k, v in (tags or {}).items() if not k.startswith(RESTORE_TAG)}


def _run_snapshot(client: MlflowClient, run_id: str) -> dict:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    run = client.get_run(run_id)
    exp = client.get_experiment(run.info.experiment_id)
    with tempfile.TemporaryDirectory() as tmp:
        get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri).download_artifacts("", tmp)
        artifacts = _hash_dir(Path(tmp))
    return {
        "experiment": exp.name,
        "experiment_tags": _no_restore_tags(exp.tags),
        "run_name": run.info.run_name,
        "user": run.info.user_id,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "lifecycle": run.info.lifecycle_stage,
        "params": dict(run.data.params),
        "tags": _no_restore_tags(run.data.tags),
        "metrics": {
            k: sorted((m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, k))
            for k in run.data.metrics
        },
        "datasets": sorted(
            (d.dataset.name, d.dataset.digest, d.dataset.source_type, d.dataset.source, d.dataset.schema,
             d.dataset.profile, tuple(sorted((t.key, t.value) for t in d.tags)))
            for d in run.inputs.dataset_inputs
        ),
        "outputs": len(run.outputs.model_outputs) if run.outputs else 0,
        "artifacts": artifacts,
    }


def snapshot(uri: str, name: str, counter_db: str | None = None) -> dict:
    """Everything a restore must reproduce for one model, without ids that legitimately change."""
    from mlops.recovery.source import db_max_versions

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    rm = client.get_registered_model(name)
    versions = {}
    for n in range(1, MAX_VERSION + 3):
        try:
            mv = client.get_model_version(name, str(n))
        except Exception:  # noqa: BLE001 - a deleted or never-created number
            versions[n] = None
            continue
        mlflow.set_tracking_uri(uri)
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{n}", dst_path=tmp)
            files = _hash_dir(Path(local))
            from mlflow.models import Model

            signature = Model.load(str(Path(local) / "MLmodel")).signature.to_dict()
        model_info = None
        if str(mv.source).startswith("models:/m-"):
            lm = client.get_logged_model(mv.source.split("/")[-1])
            model_info = {
                "name": lm.name, "params": dict(lm.params or {}), "tags": _no_restore_tags(lm.tags),
                "status": str(lm.status), "model_type": lm.model_type or None,
                "metrics": sorted((m.key, m.value, m.timestamp, m.step) for m in (lm.metrics or [])),
            }
        versions[n] = {
            "stage": mv.current_stage,
            "description": mv.description,
            "tags": dict(mv.tags or {}),
            "status": mv.status,
            "files": files,
            "signature": signature,
            "source_kind": "logged_model" if str(mv.source).startswith("models:/") else "run",
            "logged_model": model_info,
            "run": _run_snapshot(client, mv.run_id) if mv.run_id else None,
        }
    counters = db_max_versions(counter_db or uri) if (counter_db or uri.startswith("sqlite")) else None
    return {
        "name": rm.name,
        "description": rm.description,
        "tags": _no_restore_tags(rm.tags),
        "aliases": {a: str(v) for a, v in (rm.aliases or {}).items()},
        "versions": versions,
        "counter": (counters or {}).get(name),
    }


def predictions(uri: str, name: str) -> dict:
    """Predictions of models:/NAME/Production and models:/NAME@production on 20 rows."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        out = {}
        X = features()
        for ref in (f"models:/{name}/Production", f"models:/{name}@production"):
            with tempfile.TemporaryDirectory() as tmp:
                model = mlflow.pyfunc.load_model(ref, dst_path=tmp, suppress_warnings=True)
                out[ref.split(name)[1]] = [int(p) for p in model.predict(X)]
        return out
    finally:
        mlflow.set_tracking_uri(previous)
