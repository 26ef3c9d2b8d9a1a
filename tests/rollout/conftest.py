"""Fixtures of the canary/shadow tests: one trained store, candidate versions built from real
registered models (healthy, raising on some real inputs, slower), load generated here."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.helpers import BIN, clean_env, run, sqlite_uri, train
from tests.serving.conftest import register_same_as, tracking

MODEL = "breast-cancer-classifier"
HERE = Path(__file__).resolve().parent


@dataclass
class Store:
    root: Path
    uri: str
    candidates: dict[str, str] = field(default_factory=dict)


def register_candidate(uri: str, **config) -> str:
    """Register a pyfunc candidate (tests/rollout/candidate_model.py) wrapping Production v1."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import Model

    previous = mlflow.get_tracking_uri()
    with tracking(uri):
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri, uri)
        base = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL}/1")
        meta = Model.load(base)
        example = meta.load_input_example(base)
        if config.get("raise_column"):  # an example it scores: the serving smoke test passes
            example = example[example[config["raise_column"]] <= config["raise_above"]]
        exp = client.get_experiment_by_name(MODEL)
        mlflow.set_experiment(experiment_id=exp.experiment_id)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(HERE / "candidate_model.py"), artifacts={"base": base},
                model_config=config, signature=meta.signature, input_example=example,
                pip_requirements=["mlflow", "scikit-learn"], registered_model_name=MODEL,
            )
    mlflow.set_tracking_uri(previous)
    return str(info.registered_model_version)


def rows() -> tuple[list[str], list[list[float]]]:
    """The breast-cancer rows (real inputs), columns as the model's signature names them."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    return list(frame.columns), frame.to_numpy().tolist()


COLUMNS, ROWS = rows()


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Store:
    """v1 (logistic regression) in Production; v2 the same model files (healthy); v3 a pyfunc of
    the same pipeline that raises on rows with a large mean radius (a fifth of the data); v4 one
    that sleeps 60 ms per call."""
    root = tmp_path_factory.mktemp("rollout-store")
    uri = sqlite_uri(root)
    train(uri, "--promote", "production")
    s = Store(root, uri)
    s.candidates["healthy"] = register_same_as(uri)  # v1's own model files: a healthy candidate
    s.candidates["raising"] = register_candidate(uri, raise_column="mean radius", raise_above=17.0)
    s.candidates["slow"] = register_candidate(uri, sleep_ms=60)
    return s


def mlops(uri: str, *args: str, check: bool = True):
    """Run the real `mlops` CLI against ``uri``."""
    return run([str(BIN / "mlops"), *args, "--tracking-uri", uri], env=clean_env(MLFLOW_TRACKING_URI=uri), check=check)


def body(row_indexes: list[int]) -> str:
    return json.dumps({"dataframe_split": {"columns": COLUMNS, "data": [ROWS[i] for i in row_indexes]}})


@dataclass
class Load:
    """What a load run saw: answers per version, failures, and versions per routing key."""

    versions: Counter = field(default_factory=Counter)
    failed: list = field(default_factory=list)
    by_key: dict = field(default_factory=dict)
    bodies: list = field(default_factory=list)


def load(url: str, n: int, threads: int = 4, keys: int = 0, seed: int = 0, path: str = "/invocations",
         keep_bodies: bool = False) -> Load:
    """``n`` prediction requests on ``threads`` connections; with ``keys`` routing keys, each request
    carries one of them (X-Routing-Key)."""
    out = Load()
    lock = threading.Lock()
    per = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]

    def worker(i: int) -> None:
        rnd = random.Random(seed * 1000 + i)
        sess = requests.Session()
        for _ in range(per[i]):
            idx = [rnd.randrange(len(ROWS))]
            headers = {"Content-Type": "application/json"}
            key = f"user-{rnd.randrange(keys)}" if keys else None
            if key:
                headers["X-Routing-Key"] = key
            try:
                r = sess.post(url + path, data=body(idx), headers=headers, timeout=30)
            except requests.RequestException as exc:
                with lock:
                    out.failed.append(repr(exc))
                continue
            with lock:
                if r.status_code != 200:
                    out.failed.append((r.status_code, r.text[:200]))
                    continue
                v = r.headers.get("X-Model-Version")
                out.versions[v] += 1
                if key:
                    out.by_key.setdefault(key, set()).add(v)
                if keep_bodies:
                    out.bodies.append((idx[0], r.text))

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out
