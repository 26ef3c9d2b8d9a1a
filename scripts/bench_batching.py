"""Batching benchmark: this service with and without BATCHING vs the floor, the HTTP ceiling and
`mlflow models serve`, for a logistic pipeline and a 100-tree random forest.

    .venv/bin/python scripts/bench_batching.py [--workers 2] [--duration 5] [--rounds 3]

For each model (the default breast-cancer training, ``--model logistic_regression`` and
``--model random_forest --n-estimators 100``) it starts, one after the other within each round:

  service   `mlops serve` (BATCHING on, the defaults)
  off       `mlops serve` with BATCHING=off (every request predicted alone)
  floor     scripts/bench_floor_app.py: Flask, JSON straight into numpy, one predict per request
  ceiling   scripts/bench_ceiling_app.py: a bare WSGI app under the service's gunicorn worker
            settings that reads the body and answers a constant (the HTTP path alone)
  mlflow    `mlflow models serve`, same number of workers

and measures with `wrk` 1-row requests at 1, 8 and 32 connections and 100-row requests at 8,
interleaved round by round (the median of the rounds is kept). It prints requests/s, p50, p99,
the ratios, and the mean batch size the service saw per cell (from its /metrics). Not a test:
nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serving import LUA, bodies_for, have_wrk, log, start, wrk  # noqa: E402

from mlops.stack.harness import BIN, Service, clean_env, free_port, sqlite_uri, train  # noqa: E402

CELLS = ((1, 1), (1, 8), (1, 32), (100, 8))
MODELS = {
    "logistic": ("bc-logistic", ["--model", "logistic_regression"]),
    "forest": ("bc-forest", ["--model", "random_forest", "--n-estimators", "100"]),
}


def batch_counts(base: str) -> tuple[float, float]:
    """(model calls, requests in them) from the service's /metrics, summed over its workers."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    calls = requests = 0.0
    for line in text.splitlines():
        if line.startswith("serving_batch_size_count"):
            calls += float(line.rsplit(" ", 1)[1])
        elif line.startswith("serving_batch_size_sum"):
            requests += float(line.rsplit(" ", 1)[1])
    return calls, requests


def servers(uri: str, name: str, tmp: Path, workers: int, threads: int | None) -> tuple[list[Service], dict[str, str]]:
    from mlops.model_io import download_version

    services: list[Service] = []
    urls: dict[str, str] = {}
    extra = {"THREADS": threads} if threads else {}
    for target, batching in (("service", "on"), ("off", "off")):
        port = free_port()
        env = clean_env(MLFLOW_TRACKING_URI=uri, PORT=port, HOST="127.0.0.1", WORKERS=workers, MODEL_NAME=name,
                        BATCHING=batching, MODEL_CACHE_DIR=tmp / f"{name}-{target}-models",
                        LOG_DIR=tmp / f"{name}-{target}-logs", **extra)
        services.append(start([str(BIN / "mlops"), "serve"], env, tmp / f"{name}-{target}.log",
                              f"http://127.0.0.1:{port}/ready"))
        urls[target] = f"http://127.0.0.1:{port}"
    model_dir = download_version(name, "1", tmp / f"{name}-floor-model", uri)
    port = free_port()
    services.append(start([str(BIN / "gunicorn"), "--no-control-socket", "-w", str(workers), "-k", "gthread",
                           "--threads", "1", "--keep-alive", "5", "-b", f"127.0.0.1:{port}",
                           "--chdir", str(ROOT / "scripts"), "bench_floor_app:app"],
                          clean_env(FLOOR_MODEL_PATH=model_dir), tmp / f"{name}-floor.log",
                          f"http://127.0.0.1:{port}/ping"))
    urls["floor"] = f"http://127.0.0.1:{port}"
    port = free_port()
    services.append(start([str(BIN / "gunicorn"), "--no-control-socket", "-w", str(workers), "-k", "gthread",
                           "--threads", str(threads or 4), "--keep-alive", "5", "-b", f"127.0.0.1:{port}",
                           "--chdir", str(ROOT / "scripts"), "bench_ceiling_app:app"],
                          clean_env(), tmp / f"{name}-ceiling.log", f"http://127.0.0.1:{port}/ping"))
    urls["ceiling"] = f"http://127.0.0.1:{port}"
    port = free_port()
    services.append(start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}/1", "--env-manager", "local",
                           "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                          clean_env(MLFLOW_TRACKING_URI=uri), tmp / f"{name}-mlflow.log",
                          f"http://127.0.0.1:{port}/ping"))
    urls["mlflow"] = f"http://127.0.0.1:{port}"
    return services, urls


def bench_model(uri: str, label: str, tmp: Path, args, bodies: dict[int, Path], lua: Path) -> dict:
    name, train_args = MODELS[label]
    log(f"training {label} ({' '.join(train_args)})")
    train(uri, "--model-name", name, "--promote", "production", "--experiment", "bench-batching", *train_args)
    services, urls = servers(uri, name, tmp, args.workers, args.threads)
    try:
        info = json.loads(urllib.request.urlopen(urls["service"] + "/api/model/info", timeout=10).read())
        log(f"{label}: prediction path {info.get('prediction_path')}, batching "
            f"{info.get('batching') or info.get('service', {}).get('batching')}")
        runs: dict = {}
        batches: dict = {}
        targets = [t for t in ("service", "off", "floor", "ceiling", "mlflow") if t in urls]
        for rows, conns in CELLS:
            for target in targets:
                wrk(urls[target] + "/invocations", bodies[rows], conns, 1, lua)  # warm-up
            for rnd in range(args.rounds):
                for target in targets:
                    before = batch_counts(urls[target]) if target == "service" else None
                    r = wrk(urls[target] + "/invocations", bodies[rows], conns, args.duration, lua)
                    if before is not None:
                        after = batch_counts(urls[target])
                        calls = after[0] - before[0]
                        batches.setdefault((rows, conns), []).append((after[1] - before[1]) / calls if calls else None)
                    runs.setdefault(target, {}).setdefault((rows, conns), []).append(r)
                    log(f"{label} round {rnd + 1}/{args.rounds} {target:<7} rows={rows:<3} c={conns:<2}: "
                        f"{r['rps']:8.1f} req/s  p50 {r['p50_us'] / 1000:6.2f} ms  p99 {r['p99_us'] / 1000:6.2f} ms  "
                        f"errors {r['errors']}")
        results: dict = {"batch": {cell: (sum(x for x in v if x is not None) / len([x for x in v if x is not None])
                                          if any(x is not None for x in v) else None)
                                   for cell, v in batches.items()}, "info": info}
        for target, cells in runs.items():
            results[target] = {}
            for cell, rs in cells.items():
                med = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
                results[target][cell] = {**med, "errors": sum(r["errors"] for r in rs)}
        return results
    finally:
        for svc in services:
            svc.stop()


def report(label: str, res: dict, args) -> None:
    print()
    print(f"{label}: POST /invocations, {args.workers} workers each, median of {args.rounds} interleaved "
          f"{args.duration:.0f} s wrk runs per cell, {os.cpu_count()} cores shared by servers and wrk; "
          f"prediction path {res['info'].get('prediction_path')}")
    head = (f"{'rows':>4} {'conns':>5} | {'service':>8} {'p99 ms':>6} {'batch':>5} | {'off':>8} {'p99 ms':>6} | "
            f"{'floor':>8} {'p99 ms':>6} | {'ceiling':>8} | {'mlflow':>7} | {'svc/floor':>9} {'off/floor':>9} "
            f"{'svc/off':>7} {'svc/ceil':>8} {'svc/mlflow':>10} {'p99 svc/floor':>13}")
    print(head)
    print("-" * len(head))
    for cell in CELLS:
        s, o, f, c, m = (res[t][cell] for t in ("service", "off", "floor", "ceiling", "mlflow"))
        batch = res["batch"].get(cell)
        batch = "-" if batch is None else f"{batch:.2f}"
        print(f"{cell[0]:>4} {cell[1]:>5} | {s['rps']:>8.0f} {s['p99_us'] / 1e3:>6.2f} {batch:>5} | "
              f"{o['rps']:>8.0f} {o['p99_us'] / 1e3:>6.2f} | {f['rps']:>8.0f} {f['p99_us'] / 1e3:>6.2f} | "
              f"{c['rps']:>8.0f} | {m['rps']:>7.0f} | {s['rps'] / f['rps']:>8.2f}x {o['rps'] / f['rps']:>8.2f}x "
              f"{s['rps'] / o['rps']:>6.2f}x {s['rps'] / c['rps']:>7.2f}x {s['rps'] / m['rps']:>9.1f}x "
              f"{s['p99_us'] / max(f['p99_us'], 1):>12.2f}x")
    errors = {t: sum(r["errors"] for r in res[t].values()) for t in ("service", "off", "floor", "ceiling", "mlflow")}
    print("errors (socket + non-2xx): " + ", ".join(f"{t} {n}" for t, n in errors.items()))
    print("batch = mean requests per model call of the service in that cell (1.00: nothing merged; "
          "-: this version is never merged, see /api/model/info batching.reason)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="workers for every server (default 2)")
    p.add_argument("--threads", type=int, default=None, help="THREADS for the service (default: its own default)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell; the median is kept (default 3)")
    p.add_argument("--models", default="forest,logistic", help="comma-separated: forest, logistic (default both)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    if not have_wrk():
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    uri = sqlite_uri(tmp)
    bodies = bodies_for(tmp)
    results = {}
    try:
        for label in [m.strip() for m in args.models.split(",") if m.strip()]:
            if label not in MODELS:
                print(f"error: unknown model {label!r} (choose from {', '.join(MODELS)})", file=sys.stderr)
                return 2
            results[label] = bench_model(uri, label, tmp, args, bodies, lua)
        for label, res in results.items():
            report(label, res, args)
        print()
        print("targets: forest 1 row: service >= 3x floor at 8 connections, >= 4x at 32; logistic 1 row 8 connections: "
              ">= 1.3x floor and >= 0.4x ceiling; 1 connection: service >= 0.95x off; p99 at 8 connections <= 1.5x "
              "the floor's; >= 10x mlflow in every cell")
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
