"""Train, log, gate, register and optionally promote one model (the MLproject `train` entry point).

Run it as ``mlflow run . -e train --env-manager local -P data=PATH -P target=COL`` or directly as
``python -m training.train --data PATH --target COL``. The task (classification or regression) is
detected from the target unless ``--task`` is given. Exit codes: 0 registered, 2 bad input,
3 quality gate failed, 4 registry/promotion failure.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
import threading
import time
from importlib.metadata import version as pkg_version
from pathlib import Path
from typing import NoReturn

from training.data import BUNDLED, DataError, load_dataset, mlflow_dataset
from training.evaluate import (
    PRIMARY,
    beats,
    evaluate,
    plot_sample,
    predictions,
    save_plots,
)
from training.models import (
    AUTO,
    MODELS,
    build_model,
    hyperparameters,
    resolve_family,
    skops_trusted_types,
)
from training.preprocess import (
    CLASSIFICATION,
    TASKS,
    check_finite_features,
    detect_task,
    plan_columns,
    prepare_frame,
    warn_plan,
)
from training.registration import gate, gate_failure, production_metrics, promote, register
from training.split import MIN_CLASS_ROWS, split, stratify_codes  # noqa: F401 - re-exported

log = logging.getLogger("training")

PROMOTE_CHOICES = ("none", "staging", "production", "auto")
EXIT_BAD_INPUT, EXIT_GATE, EXIT_REGISTRY = 2, 3, 4

__all__ = ["beats", "main", "parse_args", "run"]


class GateFailed(RuntimeError):
    """The new model did not pass the quality gate."""


class Stopwatch:
    """Wall and CPU seconds of each stage of a run, logged as one ``timing`` line at the end."""

    def __init__(self) -> None:
        self.start = self.last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, tuple[float, float]] = {}

    def lap(self, stage: str) -> None:
        """Close ``stage``: the wall and CPU time since the previous lap."""
        now = (time.perf_counter(), time.process_time())
        self.laps[stage] = (now[0] - self.last[0], now[1] - self.last[1])
        self.last = now

    def summary(self) -> str:
        """``stage wall/cpu, ...; total wall/cpu s``."""
        laps = ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in self.laps.items())
        return (f"{laps}; total {time.perf_counter() - self.start[0]:.1f}/"
                f"{time.process_time() - self.start[1]:.1f} s")


#: Below this many training rows the fit, the holdout predictions and the plots run on one thread.
SINGLE_THREAD_ROWS = 50_000


def _threads_for(n_rows: int):
    """One OpenMP/BLAS thread for a small table, the library defaults otherwise.

    On a small table the threads of histogram gradient boosting spin waiting for each other
    (measured here on the 275-row penguins table with the other core busy: 4.96 s on all threads,
    0.29 s on one); from tens of thousands of rows on, they pay for themselves."""
    if n_rows >= SINGLE_THREAD_ROWS:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _preload() -> threading.Thread:
    """Import what the steps after the fit need (skops, matplotlib, permutation importance) in a
    background thread while the fit runs: seconds of imports off the run's critical path."""

    def load() -> None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot  # noqa: F401
            import sklearn.inspection  # noqa: F401
            import skops.io  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - the step itself imports again and reports
            log.debug("preload failed: %s", exc)

    thread = threading.Thread(target=load, name="preload", daemon=True)
    thread.start()
    return thread


def _int(text: str) -> int:
    """An integer that may arrive as "100.0" (MLproject float parameters)."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text}")
    return int(value)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``error: ...``, exit code 2 (bad input)."""

    def error(self, message: str) -> NoReturn:
        """Print one line (no usage block) and exit with EXIT_BAD_INPUT."""
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line parameters (the MLproject passes its parameters through here)."""
    p = Parser(prog="python -m training.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=BUNDLED,
                   help="CSV/Parquet path, 'penguins' for the bundled penguins CSV (default: bundled breast-cancer set)")
    p.add_argument("--target", default="target", help="target column name")
    p.add_argument("--task", default=AUTO, choices=(AUTO, *TASKS), help="default: detected from the target")
    p.add_argument("--model", default=AUTO, choices=(AUTO, *MODELS),
                   help="auto: logistic_regression for classification, ridge for regression")
    p.add_argument("--C", type=float, default=1.0, help="logistic_regression: inverse regularisation")
    p.add_argument("--alpha", type=float, default=1.0, help="ridge: regularisation strength")
    p.add_argument("--max-iter", dest="max_iter", type=_int, default=5000, help="logistic_regression")
    p.add_argument("--n-estimators", dest="n_estimators", type=_int, default=100,
                   help="random_forest/gradient_boosting trees, hist_gradient_boosting iterations")
    p.add_argument("--max-depth", dest="max_depth", type=_int, default=0, help="trees: 0 = default")
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=0.1, help="boosting")
    p.add_argument("--test-size", dest="test_size", type=float, default=0.2)
    p.add_argument("--seed", type=_int, default=42)
    p.add_argument("--model-name", dest="model_name", default="breast-cancer-classifier")
    p.add_argument("--min-accuracy", dest="min_accuracy", type=float, default=0.9,
                   help="classification gate: accuracy >= this (0 turns it off)")
    p.add_argument("--gate", default="",
                   help="extra gate, comma-separated METRIC>=X conditions, e.g. r2>=0.5 (regression default: r2>=0)")
    p.add_argument("--promote", default="none", choices=PROMOTE_CHOICES)
    p.add_argument("--experiment", default=None, help="experiment name when not started by `mlflow run`")
    args = p.parse_args(argv)
    if not 0.0 < args.test_size < 1.0:
        p.error(f"--test-size must be between 0 and 1, got {args.test_size}")
    if not 0.0 <= args.min_accuracy <= 1.0:
        p.error(f"--min-accuracy must be between 0 and 1, got {args.min_accuracy}")
    for flag, value, low, inclusive in _hyperparameter_bounds(args):
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            p.error(f"{flag} must be {'>=' if inclusive else '>'} {low:g}, got {value:g}")
    return args


def _hyperparameter_bounds(args: argparse.Namespace) -> list[tuple[str, float, float, bool]]:
    """(flag, value, lowest allowed, lowest included) of each hyperparameter scikit-learn checks."""
    return [("--C", args.C, 0.0, False), ("--alpha", args.alpha, 0.0, True), ("--max-iter", args.max_iter, 1, True),
            ("--n-estimators", args.n_estimators, 1, True), ("--max-depth", args.max_depth, 0, True),
            ("--learning-rate", args.learning_rate, 0.0, False)]


def _pip_requirements() -> list[str]:
    pkgs = ["mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"]
    return [f"{p}=={pkg_version(p)}" for p in pkgs]


def _input_schema(X, plan):
    """Raw input columns with their real types, optional where the training data had gaps."""
    import pandas as pd
    from mlflow.types import ColSpec, Schema

    cols = []
    for col in X.columns:
        s = X[col]
        if col in plan.boolean:
            kind = "boolean"
        elif col in plan.categorical:
            kind = "string"
        elif pd.api.types.is_integer_dtype(s):
            kind = "long"
        else:
            kind = "double"
        cols.append(ColSpec(kind, str(col), required=not bool(s.isna().any())))
    return Schema(cols)


def _signature(inputs, X_head, y_pred):
    """The model signature: ``inputs`` (:func:`_input_schema`), outputs inferred from ``y_pred``."""
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature

    return ModelSignature(inputs=inputs, outputs=infer_signature(X_head, y_pred).outputs)


def _import_mlflow() -> threading.Thread:
    """Import MLflow and the registry kernel in a background thread while the file is read and
    screened (which needs only pandas); ``run`` imports them again, waiting if still loading."""

    def load() -> None:
        try:
            import mlflow.sklearn  # noqa: F401
            import sklearn.model_selection  # noqa: F401

            import mlops.registry  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - run() imports again and fails with the real error
            log.debug("background import failed: %s", exc)

    thread = threading.Thread(target=load, name="import-mlflow", daemon=True)
    thread.start()
    return thread


def run(args: argparse.Namespace) -> int:
    """Train, log, gate, register and promote; return the exit code."""
    watch = Stopwatch()
    ds, task, why, family, conditions, plan, X, y = _screen(args, watch)
    watch.lap("screen")

    import mlflow
    import mlflow.sklearn

    from mlops import config, registry

    uri = config.tracking_uri()
    config.ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = registry.get_client(uri)
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_id=config.ensure_experiment(client, args.experiment or args.model_name))

    X_train, X_test, y_train, y_test = split(X, y, task, args.test_size, args.seed)
    # What later steps need from the whole table; then only the split copies stay in memory.
    inputs, columns, n_features = _input_schema(X, plan), list(X.columns), X.shape[1]
    del X, y
    hp = hyperparameters(family, args)
    primary = PRIMARY[task]
    n_plot = len(plot_sample(X_test, y_test, args.seed)[0])
    watch.lap("store+split")

    with mlflow.start_run() as active:
        run_id = active.info.run_id
        params = {
            "data": args.data, "target": args.target, "model": args.model, "task": args.task,
            "test_size": args.test_size, "seed": args.seed, "model_name": args.model_name,
            "min_accuracy": args.min_accuracy, "gate": args.gate, "promote": args.promote, **hp,
        }
        already = client.get_run(run_id).data.params  # `mlflow run` logs -P values itself
        mlflow.log_params({k: v for k, v in params.items() if k not in already and k.replace("_", "-") not in already})
        mlflow.log_params({
            "n_train_rows": len(X_train), "n_test_rows": len(X_test), "n_features": n_features,
            "family": family, "detected_task": task, "dropped_target_rows": ds.dropped_rows,
            "dropped_columns": ",".join(plan.dropped)[:500] or "-",
            # Permutation importance and regression scatter plots use this many holdout rows.
            "plot_sample_rows": n_plot,
        })
        if n_plot < len(X_test):
            log.info("plots: permutation importance%s on a sample of %d of %d holdout rows (seed %d)",
                     " and scatter plots" if task != CLASSIFICATION else "", n_plot, len(X_test), args.seed)
        dataset = mlflow_dataset(ds)
        mlflow.log_input(dataset, context="training")
        digest = dataset.digest
        del dataset
        ds.frame = ds.frame.head(0).copy()  # logged; the model trains on the split copies (rows freed)
        watch.lap("dataset")

        model = build_model(family, hp, args.seed, task, plan)
        _preload()
        metrics = _fit_and_evaluate(model, X_train, y_train, X_test, y_test, task, columns, args.seed, watch)

        classes = [c.item() if hasattr(c, "item") else c for c in model.classes_] if task == CLASSIFICATION else None
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=_signature(inputs, X_train.head(2), model.predict(X_train.head(5))),
            input_example=X_train.head(5),
            pip_requirements=_pip_requirements(),
            skops_trusted_types=skops_trusted_types(model) or None,
        )
        watch.lap("log_model")

        failure = gate_failure(conditions, metrics, args, run_id)
        mlflow.set_tags({"mlops.gate": "failed" if failure else "passed", "mlops.model_type": family,
                         "mlops.task": task, "mlops.gate_conditions": ",".join(map(str, conditions)) or "-"})
        if failure:
            raise GateFailed(failure)

        prod, prod_metrics = production_metrics(client, args.model_name, task, X_test, y_test)
        mv = register(client, args, ds, info, run_id, digest, task, family, plan, classes, metrics, prod,
                       prod_metrics, (len(X_train), len(X_test)))
        mlflow.set_tag("mlops.registered_version", mv.version)
        watch.lap("register")
        log.info("registered %s version %s", args.model_name, mv.version)

    promoted = promote(client, args, mv.version, run_id, metrics, prod, prod_metrics, task)
    watch.lap("promote")
    log.info("timing (wall/cpu s): %s", watch.summary())
    log.info(
        "done: %s v%s (%s %.4f)%s", args.model_name, mv.version, primary, metrics[primary],
        f", now in {promoted}" if promoted else "",
    )
    return 0


def _screen(args: argparse.Namespace, watch: Stopwatch):
    """Read the table, detect the task, pick the family and the gate, plan and prepare the columns."""
    ds = load_dataset(args.data, args.target)
    watch.lap("read")
    task, why = detect_task(ds.y, None if args.task == AUTO else args.task)
    family = resolve_family(args.model, task)
    conditions = gate(args, task)
    log.info("task: %s (%s); model family: %s", task, why, family)
    plan = plan_columns(ds.X)
    check_finite_features(ds.frame, plan)  # before the plan's warnings: one error line
    warn_plan(plan)
    if not plan.used:
        raise DataError("no usable feature column: " + "; ".join(f"{c}: {w}" for c, w in plan.dropped.items()))
    X, y = prepare_frame(ds.X, plan), ds.y
    if task != CLASSIFICATION:
        y = y.astype(float)
    return ds, task, why, family, conditions, plan, X, y


def _fit_and_evaluate(model, X_train, y_train, X_test, y_test, task: str, columns: list[str], seed: int,
                      watch: Stopwatch) -> dict[str, float]:
    """Fit, score the holdout, log the metrics and plots (one thread for small tables); the metrics."""
    import mlflow

    with _threads_for(len(X_train)):
        t0 = time.perf_counter()
        model.fit(X_train, y_train)
        train_time = time.perf_counter() - t0
        watch.lap("fit")
        preds = predictions(model, X_test, task)
        metrics = evaluate(model, X_test, y_test, task, preds)
        watch.lap("metrics")
        mlflow.log_metrics({**metrics, "training_time_s": train_time})
        log.info("holdout metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        with tempfile.TemporaryDirectory() as tmp:
            for path in save_plots(model, X_test, y_test, columns, Path(tmp), task, seed,
                                   preds=preds):
                mlflow.log_artifact(str(path), artifact_path="plots")
        watch.lap("plots")

    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line and a non-zero exit on any failure."""
    import warnings

    warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
    warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    _import_mlflow()

    try:
        return run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except GateFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GATE
    except Exception as exc:
        from mlops.registry import RegistryError

        if not isinstance(exc, RegistryError):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REGISTRY


if __name__ == "__main__":
    sys.exit(main())
