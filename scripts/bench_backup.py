#!/usr/bin/env python
"""Benchmark `mlops backup` + `mlops restore` against mlflow-export-import (not a test).

Builds 10 registered models x 20 live versions (23 numbers each: 5, 12 and 23 deleted; stages
None/Staging/Production/Archived; aliases production/staging/champion; one run and one logged
model per version with params, a metric history, a dataset input and three plots) on a local
`mlflow server` with proxied artifacts, then times

  * `mlops backup` from that server and `mlops restore` into a fresh server, checking the result,
    three ways: everything through the server's API; files straight from/to the server's artifact
    store (--artifacts-destination); and also the restore's rows straight into the server's
    database (--backend-store-uri);
  * mlflow-export-import (export-models + import-models) on the same data into another fresh
    server, if it can be installed (``pip install --target`` into a throwaway folder, never into
    the project's environment) and run.

Run with ``make bench-backup`` or ``.venv/bin/python scripts/bench_backup.py [--models N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.stack.harness import BIN, clean_env, free_port, service  # noqa: E402

ANCHOR = "mlflow-export-import"
ANCHOR_PIN = "mlflow-export-import==1.2.0"
QUOTED_EXPORT_S, QUOTED_IMPORT_S = 78.5, 98.1  # the figures for this registry on this machine
DELETED = (5, 12, 23)
NUMBERS = 23
STAGES = {19: "Production", 21: "Staging", 1: "Archived", 2: "Archived", 3: "Archived", 10: "Archived"}
ALIASES = {"production": 19, "staging": 21, "champion": 18}


def say(msg: str) -> None:
    print(msg, flush=True)


def model_files(folder: Path) -> tuple[Path, Path, dict]:
    """One real trained model (MLflow model folder) and its plots, reused for every version."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.model_selection import train_test_split

    from training.data import load_dataset
    from training.evaluate import evaluate, save_plots
    from training.models import build_model
    from training.train import _pip_requirements

    ds = load_dataset(None)
    X_train, X_test, y_train, y_test = train_test_split(ds.X, ds.y, test_size=0.2, random_state=42, stratify=ds.y)
    model = build_model("logistic_regression", {"C": 1.0, "max_iter": 5000}, 42).fit(X_train, y_train)
    metrics = evaluate(model, X_test, y_test)
    mdir, pdir = folder / "model", folder / "plots"
    mlflow.sklearn.save_model(model, str(mdir), signature=infer_signature(X_train, model.predict(X_train)),
                              input_example=X_train.head(5), pip_requirements=_pip_requirements())
    pdir.mkdir()
    save_plots(model, X_test, y_test, list(ds.X.columns), pdir)
    return mdir, pdir, metrics


def build_registry(uri: str, mdir: Path, pdir: Path, metrics: dict, n_models: int) -> None:
    """The benchmark registry, built through the tracking server (models in parallel)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param

    from mlops import registry

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exps = [client.create_experiment(f"bench-exp-{i}") for i in range(3)]
    inputs_lock = threading.Lock()
    dataset = Dataset(name="breast_cancer", digest="7ff6fd89", source_type="local",
                      source='{"uri": "sklearn:breast_cancer"}', schema=None, profile='{"num_rows": 569}')

    def one_model(m: int) -> None:
        name = f"bench-model-{m:02d}"
        exp = exps[m % len(exps)]
        client.create_registered_model(name, tags={"team": f"t{m % 4}", "tier": "gold"},
                                       description=f"Benchmark model {m}.")
        for n in range(1, NUMBERS + 1):
            t0 = int(time.time() * 1000)
            run = client.create_run(exp, start_time=t0, run_name=f"{name}-v{n}",
                                    tags={"mlflow.user": "bench", "mlflow.source.name": "bench_backup.py"})
            rid = run.info.run_id
            params = [Param(k, str(v)) for k, v in {
                "model": "logistic_regression", "C": 1.0, "max_iter": 5000, "seed": n, "test_size": 0.2,
                "data": "sklearn:breast_cancer", "target": "target", "model_name": name, "n_features": 30,
                "n_train_rows": 455, "n_test_rows": 114, "min_accuracy": 0.9, "promote": "none"}.items()]
            ms = [Metric(k, v, t0, 0) for k, v in metrics.items()]
            ms += [Metric("loss", 1.0 / (s + 1), t0 + s, s) for s in range(20)]
            client.log_batch(rid, metrics=ms, params=params)
            with inputs_lock:  # concurrent first use of a dataset trips MLflow's unique constraint
                client.log_inputs(rid, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
            client.log_artifacts(rid, str(pdir), "plots")
            client.set_terminated(rid, "FINISHED", end_time=t0 + 1500)
            lm = client.create_logged_model(exp, name="model", source_run_id=rid,
                                            params={p.key: p.value for p in params})
            client.log_model_artifacts(lm.model_id, str(mdir))
            client.finalize_logged_model(lm.model_id, "READY")
            client.log_outputs(rid, [LoggedModelOutput(lm.model_id, 0)])
            client.create_model_version(
                name, f"models:/{lm.model_id}", run_id=rid, model_id=lm.model_id,
                tags={"accuracy": f"{metrics['accuracy']:.4f}", "n": str(n)},
                description=f"Version {n} of {name}.", await_creation_for=0,
            )
        with registry.stage_api():
            for n, stage in STAGES.items():
                client.transition_model_version_stage(name, str(n), stage)
        for alias, n in ALIASES.items():
            client.set_registered_model_alias(name, alias, str(n))
        client.set_registered_model_tag(name, registry.HISTORY_TAG, json.dumps([
            {"time": "2026-01-01T00:00:00Z", "user": "bench", "action": "promote", "stage": "Production",
             "from_version": "17", "to_version": "19", "reason": "benchmark"}]))
        for n in DELETED:
            client.delete_model_version(name, str(n))

    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(one_model, range(n_models)))


def registry_shape(uri: str) -> dict:
    """Per model: version numbers, stages, aliases (what a correct restore must reproduce)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    out = {}
    for rm in client.search_registered_models(max_results=1000):
        versions = client.search_model_versions(f"name = '{rm.name}'", max_results=10000)
        out[rm.name] = {
            "versions": sorted((int(v.version), v.current_stage) for v in versions),
            "aliases": {a: str(v) for a, v in (rm.aliases or {}).items()},
        }
    return out


def timed(cmd: list[str], env: dict, log: Path, timeout: float = 1800) -> tuple[float, int]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
    return time.perf_counter() - t0, proc.returncode


def last_line(log: Path) -> str:
    lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


def install_anchor(folder: Path) -> tuple[Path | None, str]:
    """pip install the anchor into a throwaway --target folder; (site dir or None, note)."""
    site = folder / "anchor-site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--target", str(site), ANCHOR_PIN, "shortuuid", "tabulate"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return None, f"pip install {ANCHOR_PIN} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    return site, (f"{ANCHOR_PIN} (+ shortuuid, tabulate, which it imports) installed with --no-deps into a "
                  f"throwaway folder; it runs on this venv's MLflow {mlflow_version()}")


def mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=10, help="registered models (20 live versions each)")
    p.add_argument("--skip-anchor", action="store_true", help="do not try mlflow-export-import")
    p.add_argument("--server-workers", type=int, default=4,
                   help="uvicorn workers of every tracking server, the same for both tools (default: 4, "
                        "what `mlflow server` runs without --workers)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp, ExitStack() as stack:
        tmp = Path(tmp)

        def server(label: str, owner: ExitStack | None = None):
            """A fresh tracking server, stopped with ``owner`` (default: at the end of the benchmark)."""
            folder = tmp / label
            folder.mkdir()
            backend = f"sqlite:///{folder / 'mlflow.db'}"
            port = free_port()
            cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", str(args.server_workers), "--backend-store-uri", backend,
                   "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts"]
            env = clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
            (owner or stack).enter_context(
                service(cmd, env, folder / "server.log", f"http://127.0.0.1:{port}/health", timeout=300))
            return f"http://127.0.0.1:{port}", backend, folder / "artifacts"

        say(f"MLflow {mlflow_version()}; every server: `mlflow server --workers {args.server_workers}` "
            f"(SQLite backend, proxied artifacts in a local folder); {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f} at start")
        src, src_db, src_store = server("source")
        t0 = time.perf_counter()
        mdir, pdir, metrics = model_files(tmp)
        build_registry(src, mdir, pdir, metrics, args.models)
        shape = registry_shape(src)
        n_versions = sum(len(m["versions"]) for m in shape.values())
        say(f"registry: {len(shape)} models x {n_versions // max(1, len(shape))} versions "
            f"({len(shape) * NUMBERS} numbers, {len(shape) * len(DELETED)} deleted incl. the top one), "
            f"one run + one logged model per version; built in {time.perf_counter() - t0:.1f} s")

        # --- mlops ---------------------------------------------------------------------------
        def ours(label: str, direct: bool, database: bool) -> tuple[float, float] | None:
            """mlops backup from the source + restore into a fresh server; (backup s, restore s)."""
            archive = tmp / f"registry-{label}.tar.gz"
            extra = ["--artifacts-destination", str(src_store)] if direct else []
            b_s, b_rc = timed([str(BIN / "mlops"), "backup", "--out", str(archive), "--backend-store-uri", src_db,
                               *extra], clean_env(MLFLOW_TRACKING_URI=src), tmp / f"mlops-backup-{label}.log")
            if b_rc != 0:
                say(f"mlops backup ({label}) FAILED (exit {b_rc}): {last_line(tmp / f'mlops-backup-{label}.log')}")
                return None
            with ExitStack() as target:  # each target server is stopped once its result is checked
                tgt, tgt_db, tgt_store = server(f"target-{label}", target)
                extra = ["--artifacts-destination", str(tgt_store)] if direct else []
                extra += ["--backend-store-uri", tgt_db] if database else []
                r_s, r_rc = timed([str(BIN / "mlops"), "restore", str(archive), *extra],
                                  clean_env(MLFLOW_TRACKING_URI=tgt), tmp / f"mlops-restore-{label}.log")
                if r_rc != 0:
                    say(f"mlops restore ({label}) FAILED (exit {r_rc}): {last_line(tmp / f'mlops-restore-{label}.log')}")
                    return None
                same = registry_shape(tgt) == shape
            say(f"mlops, {label}:")
            say(f"  backup : {b_s:6.1f} s  ({archive.stat().st_size / 2**20:.1f} MiB archive)")
            say(f"  restore: {r_s:6.1f} s  (numbers, gaps, stages, aliases identical: {'yes' if same else 'NO'})")
            say(f"  total  : {b_s + r_s:6.1f} s")
            return (b_s, r_s) if same else None

        modes = {  # label: (short name, files straight to/from the store, restore rows into the database)
            "everything through the server's API and artifact proxy (the anchor's path)": ("proxy", False, False),
            "artifacts read/written in the server's store directly (--artifacts-destination)": ("direct", True, False),
            "artifacts in the store and the restore's rows in the server's database directly "
            "(--artifacts-destination --backend-store-uri)": ("database", True, True),
        }
        timings = {}
        for label, (short, direct, database) in modes.items():
            got = ours(short, direct, database)
            if got is None:
                return 1
            timings[label] = got

        # --- anchor --------------------------------------------------------------------------
        measured = floor = None
        if args.skip_anchor:
            note = "not run (--skip-anchor)"
        else:
            site, note = install_anchor(tmp)
            say(f"anchor: {note}")
            if site is not None:
                env_src = clean_env(MLFLOW_TRACKING_URI=src, PYTHONPATH=str(site))
                out = tmp / "anchor-export"
                e_s, e_rc = timed([sys.executable, "-m", "mlflow_export_import.bulk.export_models", "--models", "all",
                                   "--output-dir", str(out)], env_src, tmp / "anchor-export.log")
                say(f"export-import export: {e_s:6.1f} s  exit {e_rc}  last line: {last_line(tmp / 'anchor-export.log')}")
                if e_rc == 0:
                    atgt, _, _ = server("anchor-target")
                    i_s, i_rc = timed([sys.executable, "-m", "mlflow_export_import.bulk.import_models",
                                       "--input-dir", str(out)],
                                      clean_env(MLFLOW_TRACKING_URI=atgt, PYTHONPATH=str(site)), tmp / "anchor-import.log")
                    got = registry_shape(atgt)
                    restored = sum(len(m["versions"]) for m in got.values())
                    say(f"export-import import: {i_s:6.1f} s  exit {i_rc}  last line: {last_line(tmp / 'anchor-import.log')}")
                    say(f"export-import result: {len(got)} models, {restored}/{n_versions} versions, "
                        f"identical numbers/stages/aliases: {'yes' if got == shape else 'NO'}")
                    if i_rc == 0:
                        measured = (e_s, i_s)
                    else:
                        note = f"its import failed after {i_s:.1f} s"
                        floor = (e_s, i_s, restored)
                        for label, (b_s, _r) in timings.items():
                            say(f"export leg, measured in this run, {label}: export-import {e_s:.1f} s / "
                                f"mlops backup {b_s:.1f} s = {e_s / b_s:.1f}x")
                        say(f"import leg: export-import stopped after {i_s:.1f} s with {restored}/{n_versions} "
                            f"versions; mlops restore finished in "
                            + " / ".join(f"{r_s:.1f} s" for _, r_s in timings.values())
                            + " (" + " / ".join(v[0] for v in modes.values()) + ")")
                else:
                    note = "its export failed (see above)"
        say(f"load average at the end: {os.getloadavg()[0]:.1f} (other work on the machine slows both tools)")
        for label, (b_s, r_s) in timings.items():
            total_ours = b_s + r_s
            if measured:
                total = sum(measured)
                say(f"ratio (measured in this run), {label}: export-import {total:.1f} s / mlops {total_ours:.1f} s "
                    f"= {total / total_ours:.1f}x")
            else:
                quoted = QUOTED_EXPORT_S + QUOTED_IMPORT_S
                say(f"{label}: quoted anchor figures from the issue (same machine, NOT this run): {QUOTED_EXPORT_S} s "
                    f"export + {QUOTED_IMPORT_S} s import = {quoted:.1f} s; mlops here {total_ours:.1f} s -> "
                    f"{quoted / total_ours:.1f}x (not a same-run comparison)")
        if not measured:
            say(f"anchor's full round trip NOT measured in this run ({note}).")
        if floor and floor[2] == 0:
            # It failed before creating any version, after importing the runs: a complete import
            # would take at least as long, so export + time-to-failure bounds its round trip from below.
            low = floor[0] + floor[1]
            for label, (b_s, r_s) in timings.items():
                say(f"same-run lower bound, {label}: export-import >= {floor[0]:.1f} s export + {floor[1]:.1f} s "
                    f"import until it failed (0 versions created) = {low:.1f} s; mlops {b_s + r_s:.1f} s -> "
                    f">= {low / (b_s + r_s):.1f}x")
    return 0


if __name__ == "__main__":
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.WARNING)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    sys.exit(main())
