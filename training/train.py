"""Train, log, gate, register and optionally promote one model (the MLproject `train` entry point).

Run it as ``mlflow run . -e train --env-manager local -P model=random_forest`` or directly as
``python -m training.train --model random_forest``. Exit codes: 0 registered (or gate passed with
``--no-register``), 2 bad input, 3 quality gate failed, 4 registry/promotion failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version as pkg_version
from pathlib import Path

from training.data import BUNDLED, DataError, load_dataset
from training.evaluate import METRIC_NAMES, evaluate, save_plots
from training.models import MODELS, SKOPS_TRUSTED_TYPES, build_model, hyperparameters

log = logging.getLogger("training")

PROMOTE_CHOICES = ("none", "staging", "production", "auto")
EXIT_BAD_INPUT, EXIT_GATE, EXIT_REGISTRY = 2, 3, 4


class GateFailed(RuntimeError):
    """The new model did not reach ``min_accuracy``."""


def _int(text: str) -> int:
    """An integer that may arrive as "100.0" (MLproject float parameters)."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text}")
    return int(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line parameters (the MLproject passes its parameters through here)."""
    p = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=BUNDLED, help="CSV/Parquet path (default: bundled breast-cancer set)")
    p.add_argument("--target", default="target", help="target column name")
    p.add_argument("--model", default="logistic_regression", choices=MODELS)
    p.add_argument("--C", type=float, default=1.0, help="logistic_regression: inverse regularisation")
    p.add_argument("--max-iter", dest="max_iter", type=_int, default=5000, help="logistic_regression")
    p.add_argument("--n-estimators", dest="n_estimators", type=_int, default=100, help="random_forest/gradient_boosting")
    p.add_argument("--max-depth", dest="max_depth", type=_int, default=0, help="trees: 0 = default")
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=0.1, help="gradient_boosting")
    p.add_argument("--test-size", dest="test_size", type=float, default=0.2)
    p.add_argument("--seed", type=_int, default=42)
    p.add_argument("--model-name", dest="model_name", default="breast-cancer-classifier")
    p.add_argument("--min-accuracy", dest="min_accuracy", type=float, default=0.9)
    p.add_argument("--promote", default="none", choices=PROMOTE_CHOICES)
    p.add_argument("--experiment", default=None, help="experiment name when not started by `mlflow run`")
    args = p.parse_args(argv)
    if not 0.0 < args.test_size < 1.0:
        p.error(f"--test-size must be between 0 and 1, got {args.test_size}")
    if not 0.0 <= args.min_accuracy <= 1.0:
        p.error(f"--min-accuracy must be between 0 and 1, got {args.min_accuracy}")
    return args


def _pip_requirements() -> list[str]:
    pkgs = ["mlflow", "scikit-learn", "skops", "numpy", "pandas", "scipy"]
    return [f"{p}=={pkg_version(p)}" for p in pkgs]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parents[1],
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _production_metrics(client, name: str, X_test, y_test):
    """Metrics of the current Production version on this holdout, or (None, None)."""
    import mlflow.pyfunc

    from mlops.registry import PRODUCTION, stage_version

    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - no model yet
        return None, None
    prod = stage_version(client, name, PRODUCTION)
    if prod is None:
        return None, None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{prod.version}", suppress_warnings=True)
        raw = model.get_raw_model()
        return prod, evaluate(raw, X_test, y_test)
    except Exception as exc:  # noqa: BLE001 - comparison is informative, not required
        log.warning("could not evaluate Production v%s on the holdout: %s", prod.version, exc)
        return prod, None


def _description(args, ds, digest, metrics, prod, prod_metrics, n_train, n_test) -> str:
    lines = [
        f"**{args.model}** trained on `{args.data if args.data == BUNDLED else ds.source}` "
        f"(target `{ds.target}`, data digest `{digest}`): "
        f"{n_train} training rows, {n_test} holdout rows (test_size={args.test_size}, seed={args.seed}).",
        "",
        "| metric | this version |" + (f" Production v{prod.version} |" if prod_metrics else ""),
        "|---|---|" + ("---|" if prod_metrics else ""),
    ]
    for m in METRIC_NAMES:
        if m in metrics:
            row = f"| {m} | {metrics[m]:.4f} |"
            if prod_metrics and m in prod_metrics:
                row += f" {prod_metrics[m]:.4f} |"
            lines.append(row)
    if prod is None:
        lines += ["", "No Production version existed when this version was trained."]
    elif prod_metrics is None:
        lines += ["", f"Production v{prod.version} could not be evaluated on this holdout."]
    return "\n".join(lines)


def beats(new: dict, old: dict | None) -> bool:
    """True if ``new`` is better than ``old`` (accuracy, then roc_auc, then log_loss)."""
    if old is None:
        return True
    for key, higher in (("accuracy", True), ("roc_auc", True), ("log_loss", False)):
        a, b = new.get(key), old.get(key)
        if a is None or b is None or abs(a - b) < 1e-12:
            continue
        return a > b if higher else a < b
    return False


def run(args: argparse.Namespace) -> int:
    """Train, log, gate, register and promote; return the exit code."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.model_selection import train_test_split

    from mlops import config, registry

    ds = load_dataset(args.data, args.target)
    uri = config.tracking_uri()
    config.ensure_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = registry.get_client(uri)
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_id=config.ensure_experiment(client, args.experiment or args.model_name))

    X, y = ds.X, ds.y
    stratify = y if y.value_counts().min() >= 2 else None
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=args.test_size, random_state=args.seed, stratify=stratify
    )
    hp = hyperparameters(args.model, args)

    with mlflow.start_run() as active:
        run_id = active.info.run_id
        params = {
            "data": args.data, "target": args.target, "model": args.model, "test_size": args.test_size,
            "seed": args.seed, "model_name": args.model_name, "min_accuracy": args.min_accuracy,
            "promote": args.promote, **hp,
        }
        already = client.get_run(run_id).data.params  # `mlflow run` logs -P values itself
        mlflow.log_params({k: v for k, v in params.items() if k not in already and k.replace("_", "-") not in already})
        mlflow.log_params({"n_train_rows": len(X_train), "n_test_rows": len(X_test), "n_features": X.shape[1]})
        dataset = mlflow.data.from_pandas(ds.frame, source=ds.source, targets=ds.target, name=ds.name)
        mlflow.log_input(dataset, context="training")

        model = build_model(args.model, hp, args.seed)
        t0 = time.perf_counter()
        model.fit(X_train, y_train)
        train_time = time.perf_counter() - t0
        metrics = evaluate(model, X_test, y_test)
        mlflow.log_metrics({**metrics, "training_time_s": train_time})
        log.info("holdout metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))

        with tempfile.TemporaryDirectory() as tmp:
            for path in save_plots(model, X_test, y_test, list(X.columns), Path(tmp)):
                mlflow.log_artifact(str(path), artifact_path="plots")

        signature = infer_signature(X_train, model.predict(X_train))
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=X_train.head(5),
            pip_requirements=_pip_requirements(),
            skops_trusted_types=SKOPS_TRUSTED_TYPES[args.model] or None,
        )

        gate_ok = metrics["accuracy"] >= args.min_accuracy
        mlflow.set_tags({"mlops.gate": "passed" if gate_ok else "failed", "mlops.model_type": args.model})
        if not gate_ok:
            raise GateFailed(
                f"quality gate failed: accuracy {metrics['accuracy']:.4f} < min_accuracy "
                f"{args.min_accuracy:.4f}; run {run_id} kept, nothing registered"
            )

        prod, prod_metrics = _production_metrics(client, args.model_name, X_test, y_test)
        try:
            client.get_registered_model(args.model_name)
        except Exception:  # noqa: BLE001 - first version of this model
            client.create_registered_model(
                args.model_name, description=f"Classifier trained by the `train` entry point on {ds.name}."
            )
        tags = {
            "data_digest": dataset.digest,
            "data_source": ds.source,
            "model_type": args.model,
            "gate": "passed",
            **{m: f"{metrics[m]:.4f}" for m in ("accuracy", "f1", "roc_auc") if m in metrics},
        }
        commit = _git_commit()
        if commit:
            tags["git_commit"] = commit
        mv = client.create_model_version(
            args.model_name,
            source=info.model_uri,
            run_id=run_id,
            model_id=info.model_id,
            tags=tags,
            description=_description(args, ds, dataset.digest, metrics, prod, prod_metrics, len(X_train), len(X_test)),
        )
        mlflow.set_tag("mlops.registered_version", mv.version)
        log.info("registered %s version %s", args.model_name, mv.version)

    promoted = None
    if args.promote in ("staging", "production"):
        stage = registry.STAGING if args.promote == "staging" else registry.PRODUCTION
        registry.promote(client, args.model_name, mv.version, stage, reason=f"train run {run_id}")
        promoted = stage
    elif args.promote == "auto":
        if beats(metrics, prod_metrics):
            registry.promote(
                client, args.model_name, mv.version, registry.PRODUCTION,
                reason=f"auto: beats Production v{prod.version}" if prod else "auto: first Production version",
            )
            promoted = registry.PRODUCTION
        else:
            log.info(
                "not promoted: v%s accuracy %.4f does not beat Production v%s (%.4f) on the same holdout",
                mv.version, metrics["accuracy"], prod.version, prod_metrics["accuracy"],
            )
    log.info(
        "done: %s v%s (accuracy %.4f)%s", args.model_name, mv.version, metrics["accuracy"],
        f", now in {promoted}" if promoted else "",
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line and a non-zero exit on any failure."""
    import warnings

    warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways.*")
    warnings.filterwarnings("ignore", message=".*Inferred schema contains integer column.*")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = parse_args(argv)
    from mlops.registry import RegistryError

    try:
        return run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except GateFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GATE
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REGISTRY


if __name__ == "__main__":
    sys.exit(main())
