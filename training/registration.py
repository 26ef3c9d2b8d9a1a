"""After the fit: the quality gate, the comparison with Production on the same holdout, the new
registered version (tags and description) and its promotion."""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

from training.data import BUNDLED
from training.evaluate import (
    DEFAULT_GATE,
    HIGHER_IS_BETTER,
    PRIMARY,
    Condition,
    beats,
    evaluate,
    metric_names,
    parse_gate,
)
from training.preprocess import (
    CLASSIFICATION,
)

log = logging.getLogger("training")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parents[1],
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def production_metrics(client, name: str, task: str, X_test, y_test):
    """Metrics of the current Production version on this holdout, or (version or None, None)."""
    import mlflow.pyfunc

    from mlops.registry import PRODUCTION, stage_version

    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - no model yet
        return None, None
    prod = stage_version(client, name, PRODUCTION)
    if prod is None:
        return None, None
    prod_task = (prod.tags or {}).get("task", CLASSIFICATION)
    if prod_task != task:
        log.warning("Production v%s is a %s model and this is %s: not compared", prod.version, prod_task, task)
        return prod, None
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{prod.version}", suppress_warnings=True)
        raw = model.get_raw_model()
        return prod, evaluate(raw, X_test, y_test, task)
    except Exception as exc:  # noqa: BLE001 - comparison is informative, not required
        log.warning("could not evaluate Production v%s on the holdout: %s", prod.version, str(exc).splitlines()[0])
        return prod, None


def description(args, ds, digest, task, family, plan, classes, metrics, prod, prod_metrics,
                 n_train, n_test) -> str:
    """The version's Markdown description: data, task, columns, metrics (vs Production)."""
    lines = [
        f"**{family}** ({task}) trained on `{args.data if args.data == BUNDLED else ds.source}` "
        f"(target `{ds.target}`, data digest `{digest}`): "
        f"{n_train} training rows, {n_test} holdout rows (test_size={args.test_size}, seed={args.seed}).",
    ]
    if classes is not None:
        lines.append(f"Classes: {', '.join(f'`{c}`' for c in classes)}.")
    if ds.dropped_rows:
        lines.append(f"{ds.dropped_rows} rows without a target were left out.")
    if plan.dropped:
        lines.append("Columns not used: " + "; ".join(f"`{c}` ({why})" for c, why in plan.dropped.items()) + ".")
    lines += [
        "",
        "| metric | this version |" + (f" Production v{prod.version} |" if prod_metrics else ""),
        "|---|---|" + ("---|" if prod_metrics else ""),
    ]
    for m in metric_names(task):
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


def gate(args, task: str) -> list[Condition]:
    """The quality gate: accuracy >= min_accuracy for classification, plus ``--gate`` (or its default)."""
    conditions = []
    if task == CLASSIFICATION and args.min_accuracy > 0:
        conditions.append(Condition("accuracy", ">=", args.min_accuracy))
    conditions += parse_gate(args.gate or DEFAULT_GATE.get(task), task)
    return conditions


def gate_failure(conditions: list[Condition], metrics: dict, args, run_id: str) -> str | None:
    """The one-line reason the gate fails, or None when it passes."""
    for c in conditions:
        if c.holds(metrics):
            continue
        got = metrics.get(c.metric)
        shown = "missing" if got is None else f"{got:.4f}"
        if c.metric == "accuracy" and c.op == ">=" and c.value == args.min_accuracy:
            why = f"accuracy {shown} < min_accuracy {args.min_accuracy:.4f}"
        else:
            why = f"{c.metric} {shown} does not satisfy {c}"
        return f"quality gate failed: {why}; run {run_id} kept, nothing registered"
    return None


def register(client, args: argparse.Namespace, ds, info, run_id: str, digest: str, task: str, family: str, plan,
              classes: list | None, metrics: dict, prod, prod_metrics: dict | None, sizes: tuple[int, int]):
    """The next version of the registered model (created on first use), tagged and described."""
    try:
        client.get_registered_model(args.model_name)
    except Exception:  # noqa: BLE001 - first version of this model
        kind = "Classifier" if task == CLASSIFICATION else "Regressor"
        client.create_registered_model(
            args.model_name, description=f"{kind} trained by the `train` entry point on {ds.name}."
        )
    shown = ("accuracy", "f1", "roc_auc") if task == CLASSIFICATION else ("rmse", "mae", "r2")
    tags = {
        "data_digest": digest,
        "data_source": ds.source,
        "model_type": family,
        "task": task,
        "target": ds.target,
        "gate": "passed",
        **{m: f"{metrics[m]:.4f}" for m in shown if m in metrics},
    }
    if classes is not None:
        tags["classes"] = ",".join(map(str, classes))[:5000]
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    mv = client.create_model_version(
        args.model_name,
        source=info.model_uri,
        run_id=run_id,
        model_id=info.model_id,
        tags=tags,
        description=description(args, ds, digest, task, family, plan, classes, metrics, prod,
                                 prod_metrics, *sizes),
    )
    return mv


def promote(client, args: argparse.Namespace, version: str, run_id: str, metrics: dict, prod,
             prod_metrics: dict | None, task: str) -> str | None:
    """Promote as ``--promote`` says (``auto``: only a version that beats Production); the stage."""
    from mlops import registry

    primary = PRIMARY[task]
    promoted = None
    if args.promote in ("staging", "production"):
        stage = registry.STAGING if args.promote == "staging" else registry.PRODUCTION
        registry.promote(client, args.model_name, version, stage, reason=f"train run {run_id}")
        promoted = stage
    elif args.promote == "auto":
        if beats(metrics, prod_metrics, task):
            registry.promote(
                client, args.model_name, version, registry.PRODUCTION,
                reason=f"auto: beats Production v{prod.version}" if prod else "auto: first Production version",
            )
            promoted = registry.PRODUCTION
        else:
            direction = "higher" if HIGHER_IS_BETTER[primary] else "lower"
            log.info(
                "not promoted: v%s %s %.4f does not beat Production v%s (%.4f, %s is better) on the same holdout",
                version, primary, metrics[primary], prod.version, prod_metrics[primary], direction,
            )
    return promoted
