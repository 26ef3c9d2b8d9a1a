"""Rollout benchmark: the service's throughput while a canary or a shadow runs, against the same
service with none, in the same run.

    .venv/bin/python scripts/bench_rollout.py [--workers 2] [--duration 5] [--rounds 3] [--percent 10]

It trains the default model (v1, Production) into a temporary store, registers v2 with the same
model files (a healthy candidate: what is measured is the cost of routing, comparing and judging,
not of a slower model), starts one `mlops serve` and measures with `wrk` 1-row `/invocations`
requests at 8 connections in three states, interleaved round by round (the median of the rounds
is kept):

  none     no rollout
  canary   `mlops canary start ... --percent P` (P % answered by v2, compared with v1 off the path)
  shadow   `mlops shadow start ... --percent P` (v1 answers; P % also predicted by v2 off the path)

Each state is started and stopped with the real CLI and measured once every worker routes it
(`/health`). ``--min-requests`` is set high so that no judgement ends the rollout mid-measure.
Targets: canary >= 0.9x none, shadow >= 0.8x none. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serving import LUA, MODEL, bodies_for, have_wrk, log, start, wrk  # noqa: E402

from mlops.stack.harness import BIN, clean_env, free_port, sqlite_uri, train  # noqa: E402

STATES = ("none", "canary", "shadow")


def register_same_files(uri: str) -> str:
    """v(N+1) of MODEL with v1's own model files; its number."""
    import os

    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_URI"] = uri  # MLflow's SQLite registry reads it
    client = MlflowClient(uri, uri)
    src = client.get_model_version(MODEL, "1")
    model_id = src.source.split("/")[-1] if src.source.startswith("models:/m-") else None
    return str(client.create_model_version(MODEL, source=src.source, run_id=src.run_id, model_id=model_id).version)


def mlops(uri: str, *args: str) -> None:
    subprocess.run([str(BIN / "mlops"), *args, "--tracking-uri", uri], env=clean_env(MLFLOW_TRACKING_URI=uri),
                   check=True, capture_output=True, text=True)


def routed(url: str, version: str | None, workers: int, timeout: float = 60) -> None:
    """Until /health, asked repeatedly, shows every worker routing ``version`` (None: nothing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen: dict[int, str | None] = {}
        for _ in range(6 * workers):
            h = json.loads(urllib.request.urlopen(url + "/health", timeout=10).read())
            r = h.get("rollout") or {}
            seen[h.get("pid", len(seen))] = r.get("candidate_version") if r.get("routed_here") else None
        if len(seen) >= workers and all(v == version for v in seen.values()):
            return
        time.sleep(0.3)
    raise RuntimeError(f"serving did not follow the rollout of v{version} within {timeout}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="serving workers (default 2)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is kept (default 3)")
    p.add_argument("--percent", type=float, default=10, help="canary / shadow share (default 10)")
    p.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    args = p.parse_args()
    if not have_wrk():
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    uri = sqlite_uri(tmp)
    body = bodies_for(tmp)[1]
    svc = None
    try:
        log("training v1 and registering v2 with the same files")
        train(uri, "--promote", "production")
        candidate = register_same_files(uri)
        port = free_port()
        env = clean_env(MLFLOW_TRACKING_URI=uri, PORT=port, HOST="127.0.0.1", WORKERS=args.workers,
                        MODEL_CACHE_DIR=tmp / "models", LOG_DIR=tmp / "logs", POLL_INTERVAL_S="0.5")
        url = f"http://127.0.0.1:{port}"
        svc = start([str(BIN / "mlops"), "serve"], env, tmp / "serve.log", url + "/ready")
        wrk(url + "/invocations", body, args.connections, 2, lua)  # warm-up
        runs: dict[str, list[dict]] = {s: [] for s in STATES}
        for rnd in range(args.rounds):
            for state in STATES:
                if state != "none":
                    mlops(uri, state, "start", MODEL, candidate, "--percent", f"{args.percent:g}", "--duration", "1h",
                          "--min-requests", "100000000")
                    routed(url, candidate, args.workers)
                r = wrk(url + "/invocations", body, args.connections, args.duration, lua)
                runs[state].append(r)
                log(f"round {rnd + 1}/{args.rounds} {state:<6}: {r['rps']:8.1f} req/s  p50 {r['p50_us'] / 1e3:6.2f} ms  "
                    f"p99 {r['p99_us'] / 1e3:6.2f} ms  errors {r['errors']}")
                if state != "none":
                    mlops(uri, state, "stop", MODEL, "--reason", "benchmark")
                    routed(url, None, args.workers)
        med = {s: sorted(rs, key=lambda r: r["rps"])[len(rs) // 2] for s, rs in runs.items()}
        print()
        print(f"POST /invocations, 1 row, {args.connections} connections, {args.workers} workers, median of "
              f"{args.rounds} interleaved {args.duration:g} s wrk runs; {args.percent:g} % to v{candidate} (same files "
              f"as Production v1)")
        print(f"{'state':<7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'vs none':>8}")
        for s in STATES:
            r = med[s]
            print(f"{s:<7} {r['rps']:>8.0f} {r['p50_us'] / 1e3:>7.2f} {r['p99_us'] / 1e3:>7.2f} "
                  f"{sum(x['errors'] for x in runs[s]):>6} {r['rps'] / med['none']['rps']:>7.2f}x")
        print("targets: canary >= 0.90x none, shadow >= 0.80x none")
    finally:
        if svc is not None:
            svc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
