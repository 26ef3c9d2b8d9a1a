"""Serving benchmark: this service vs `mlflow models serve` vs a bare Flask+gunicorn floor.

    .venv/bin/python scripts/bench_serving.py [--workers 2] [--duration 10] [--keep]

Trains the default model into a temporary store, then measures with `wrk` (Debian package
`wrk`) 1-row and 100-row `POST /invocations` at 1 and 8 connections against

  (a) this service (`mlops serve`, full validation, metrics, logging),
  (b) `mlflow models serve` with the same number of workers,
  (c) the floor: scripts/bench_floor_app.py (JSON straight into numpy, sklearn predict,
      nothing else) under gunicorn with this service's worker settings,

one server at a time, and prints requests/s, p50, p99 and the ratios. The same rows also go to
(a) as Open Inference Protocol (V2) requests, `POST /v2/models/{name}/infer`, in the same run. Then it measures a swap
under load: with wrk and a probing client running against this service, a new version is
promoted; it reports the time until every response carries it and the failed requests.

Not a test: nothing is asserted. Servers listen on 127.0.0.1 ephemeral ports and are stopped at
the end (their whole process group).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlops.stack.harness import BIN, Service, clean_env, free_port, sqlite_uri, train  # noqa: E402

MODEL = "breast-cancer-classifier"

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p99_us\": %d, " ..
    "\"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, \"timeout\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def have_wrk() -> bool:
    """True if wrk is on PATH; otherwise says how to install it (one line on stderr)."""
    if shutil.which("wrk"):
        return True
    print("error: wrk is not installed. Install it with: sudo apt-get update && sudo apt-get install -y wrk",
          file=sys.stderr)
    return False


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def wrk(url: str, body: Path, connections: int, duration: float, lua: Path) -> dict:
    threads = 1 if connections == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", str(lua), url]
    out = subprocess.run(cmd, env=dict(os.environ, BENCH_BODY=str(body)), capture_output=True, text=True,
                         timeout=duration + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            r = json.loads(line[len("BENCH_RESULT "):])
            r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
            r["errors"] = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
            return r
    raise RuntimeError(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")


def measure(targets: dict[str, str], bodies: dict[int, Path], duration: float, rounds: int, lua: Path,
            target_bodies: dict[str, dict[int, Path]] | None = None) -> dict:
    """Every cell (rows x connections) for every target, interleaved round by round
    (``target_bodies``: a target's own bodies, e.g. the V2 tensors of the same rows).

    The machine is shared, so its load drifts: running the targets one after the other within each
    round, and keeping the median of the rounds, keeps that drift out of the ratios.
    """
    runs: dict = {name: {} for name in targets}
    own = target_bodies or {}
    for rows in bodies:
        for name, url in targets.items():
            wrk(url, own.get(name, bodies)[rows], 8, 2, lua)  # warm-up
        for conns in (1, 8):
            for rnd in range(rounds):
                for name, url in targets.items():
                    r = wrk(url, own.get(name, bodies)[rows], conns, duration, lua)
                    runs[name].setdefault((rows, conns), []).append(r)
                    log(f"round {rnd + 1}/{rounds} {name:<7} rows={rows:<3} c={conns}: {r['rps']:8.1f} req/s  "
                        f"p50 {r['p50_us'] / 1000:7.2f} ms  p99 {r['p99_us'] / 1000:7.2f} ms  errors {r['errors']}")
    results: dict = {name: {} for name in targets}
    for name, cells in runs.items():
        for cell, rs in cells.items():
            med = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
            results[name][cell] = {**med, "errors": sum(r["errors"] for r in rs)}
    return results


def bodies_for(tmp: Path) -> dict[int, Path]:
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    out = {}
    for n in (1, 100):
        path = tmp / f"body-{n}.json"
        df = frame.head(n)
        path.write_text(json.dumps({"dataframe_split": {"columns": list(df.columns), "data": df.to_numpy().tolist()}}))
        out[n] = path
    return out


def v2_bodies_for(tmp: Path) -> dict[int, Path]:
    """The rows of bodies_for as V2 inference requests: one FP64 tensor per column, asking for the
    predictions only (what /invocations answers)."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame.drop(columns=["target"])
    out = {}
    for n in (1, 100):
        path = tmp / f"v2-body-{n}.json"
        df = frame.head(n)
        path.write_text(json.dumps({
            "inputs": [{"name": c, "shape": [n], "datatype": "FP64", "data": df[c].tolist()} for c in df.columns],
            "outputs": [{"name": "predictions"}]}))
        out[n] = path
    return out


PENGUINS_CSV = ROOT / "training" / "datasets" / "penguins.csv"


def penguin_bodies(tmp: Path) -> dict[int, Path]:
    """Raw penguins rows as a user sends them: strings, nulls (rows with missing values first)."""
    import pandas as pd

    frame = pd.read_csv(PENGUINS_CSV).drop(columns=["species"])
    frame = pd.concat([frame[frame.isna().any(axis=1)], frame[~frame.isna().any(axis=1)]])
    out = {}
    for n in (1, 100):
        path = tmp / f"penguins-{n}.json"
        df = frame.head(n).astype(object).where(frame.head(n).notna(), None)
        path.write_text(json.dumps({"dataframe_split": {"columns": list(df.columns), "data": df.to_numpy().tolist()}}))
        out[n] = path
    return out


def bench_penguins(tmp: Path, workers: int, duration: float, rounds: int, lua: Path) -> dict:
    """This service vs `mlflow models serve` on the penguins pipeline (mixed types, HGB)."""
    uri = sqlite_uri(tmp / "penguins-store")
    log("training penguins (histogram gradient boosting) for the mixed-type comparison")
    train(uri, "--data", str(PENGUINS_CSV), "--target", "species", "--model-name", "penguins",
          "--model", "hist_gradient_boosting", "--promote", "production", "--experiment", "bench")
    bodies = penguin_bodies(tmp)
    services: list[Service] = []
    try:
        port = free_port()
        env = clean_env(MLFLOW_TRACKING_URI=uri, PORT=port, HOST="127.0.0.1", WORKERS=workers, MODEL_NAME="penguins",
                        MODEL_CACHE_DIR=tmp / "penguins-models", LOG_DIR=tmp / "penguins-logs")
        services.append(start([str(BIN / "mlops"), "serve"], env, tmp / "penguins-serving.log",
                              f"http://127.0.0.1:{port}/ready"))
        info = json.loads(subprocess.run(["curl", "-fsS", f"http://127.0.0.1:{port}/api/model/info"],
                                         capture_output=True, text=True, timeout=30).stdout or "{}")
        log(f"penguins served on the {info.get('prediction_path')} path ({info.get('fast_path_reason')})")
        targets = {"service": f"http://127.0.0.1:{port}/invocations"}
        port = free_port()
        services.append(start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/penguins/Production",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                              clean_env(MLFLOW_TRACKING_URI=uri), tmp / "penguins-mlflow.log",
                              f"http://127.0.0.1:{port}/ping"))
        targets["mlflow"] = f"http://127.0.0.1:{port}/invocations"
        return measure(targets, bodies, duration, rounds, lua)
    finally:
        for svc in services:
            svc.stop()


def start(cmd: list[str], env: dict, log_path: Path, health: str, timeout: float = 240) -> Service:
    svc = Service(cmd, env, log_path)
    try:
        svc.wait_http(health, timeout)
    except BaseException:
        svc.stop()
        raise
    return svc


def swap_under_load(uri: str, tmp: Path, workers: int, bodies: dict[int, Path], lua: Path) -> dict:
    """Promote a new version while wrk (8 connections) and a probing client hit the service."""
    import requests

    from mlops import registry
    from mlops.model_io import preflight

    log("training version 2 for the swap (not promoted yet)")
    train(uri, "--promote", "none", "--seed", "7")
    port = free_port()
    env = clean_env(MLFLOW_TRACKING_URI=uri, PORT=port, HOST="127.0.0.1", WORKERS=workers,
                    MODEL_CACHE_DIR=tmp / "swap-models", LOG_DIR=tmp / "swap-logs")
    url = f"http://127.0.0.1:{port}"
    svc = start([str(BIN / "mlops"), "serve"], env, tmp / "swap-serving.log", url + "/ready")
    seen: list[tuple[float, str | None, bool]] = []
    stop = threading.Event()
    payload = bodies[1].read_bytes()

    def probe() -> None:
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.post(url + "/invocations", data=payload, headers={"Content-Type": "application/json"}, timeout=10)
                seen.append((time.monotonic(), r.headers.get("X-Model-Version"), r.status_code == 200))
            except requests.RequestException:
                seen.append((time.monotonic(), None, False))
            time.sleep(0.002)

    result: dict = {}
    try:
        os.environ["MLFLOW_TRACKING_URI"] = uri
        client = registry.get_client(uri)
        preflight(MODEL, "2", uri)  # what `mlops promote` does first, outside the timed window
        wrk_out: dict = {}
        load = threading.Thread(target=lambda: wrk_out.update(wrk(url + "/invocations", bodies[1], 8, 8, lua)))
        prober = threading.Thread(target=probe)
        load.start()
        prober.start()
        time.sleep(2.0)
        t0 = time.monotonic()
        registry.promote(client, MODEL, "2", registry.PRODUCTION, reason="benchmark swap", preflight=False, notify=False)
        t_promoted = time.monotonic()
        load.join()
        stop.set()
        prober.join()
        after = [(t, v) for t, v, _ in seen if t >= t_promoted]
        last_old = max((t for t, v in after if v != "2"), default=t_promoted)
        first_new = min((t for t, v in after if v == "2"), default=None)
        metrics = requests.get(url + "/metrics", timeout=10).text
        on_new = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith("serving_model_version_info{") and 'version="2"' in line)
        result = {
            "time_to_all_new_s": last_old - t0,
            "first_new_s": (first_new - t0) if first_new else None,
            "probe_requests": len(seen),
            "probe_failed": sum(1 for _, _, ok in seen if not ok),
            "wrk_requests": wrk_out.get("requests", 0),
            "wrk_failed": wrk_out.get("errors", 0),
            "workers_on_new": on_new,
            "workers": workers,
        }
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        svc.stop()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="workers for every server (default 2)")
    p.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell; the median is kept (default 3)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--skip-swap", action="store_true", help="skip the swap-under-load measurement")
    p.add_argument("--dataset", choices=("all", "breast-cancer", "penguins"), default="all",
                   help="breast-cancer (numeric, vs mlflow and the floor), penguins (mixed types, vs mlflow), "
                        "or both (default)")
    args = p.parse_args()
    if not have_wrk():
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    uri = sqlite_uri(tmp)
    services: list[Service] = []
    try:
        penguins = None
        if args.dataset in ("all", "penguins"):
            penguins = bench_penguins(tmp, args.workers, args.duration, args.rounds, lua)
        if args.dataset == "penguins":
            report_penguins(penguins, None, args.workers, args.duration, args.rounds)
            return 0
        log(f"training the default model into {uri}")
        train(uri, "--promote", "production")
        bodies = bodies_for(tmp)
        from mlops.model_io import download_version

        model_dir = download_version(MODEL, "1", tmp / "floor-model", uri)
        w = args.workers
        targets = {}

        # (a) this service
        port = free_port()
        env = clean_env(MLFLOW_TRACKING_URI=uri, PORT=port, HOST="127.0.0.1", WORKERS=w,
                        MODEL_CACHE_DIR=tmp / "models", LOG_DIR=tmp / "logs")
        services.append(start([str(BIN / "mlops"), "serve"], env, tmp / "serving.log", f"http://127.0.0.1:{port}/ready"))
        targets["service"] = f"http://127.0.0.1:{port}/invocations"
        targets["v2"] = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"  # same service, same rows

        # (b) mlflow models serve, same worker count
        port = free_port()
        env = clean_env(MLFLOW_TRACKING_URI=uri)
        services.append(start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/Production",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(w)],
                              env, tmp / "mlflow.log", f"http://127.0.0.1:{port}/ping"))
        targets["mlflow"] = f"http://127.0.0.1:{port}/invocations"

        # (c) the floor: same gunicorn worker settings as the service
        port = free_port()
        env = clean_env(FLOOR_MODEL_PATH=model_dir)
        services.append(start([str(BIN / "gunicorn"), "--no-control-socket", "-w", str(w), "-k", "gthread",
                               "--threads", "1", "--keep-alive", "5", "-b", f"127.0.0.1:{port}",
                               "--chdir", str(ROOT / "scripts"), "bench_floor_app:app"],
                              env, tmp / "floor.log", f"http://127.0.0.1:{port}/ping"))
        targets["floor"] = f"http://127.0.0.1:{port}/invocations"

        log(f"all three up; {args.rounds} interleaved rounds of {args.duration:.0f} s per cell")
        results = measure(targets, bodies, args.duration, args.rounds, lua, {"v2": v2_bodies_for(tmp)})
        for svc in services:
            svc.stop()
        services.clear()

        swap = None if args.skip_swap else swap_under_load(uri, tmp, w, bodies, lua)
        report(results, swap, w, args.duration, args.rounds)
        report_v2(results)
        if penguins is not None:
            report_penguins(penguins, results, w, args.duration, args.rounds)
    finally:
        for svc in services:
            svc.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def report(results: dict, swap: dict | None, workers: int, duration: float, rounds: int) -> None:
    print()
    print(f"Serving benchmark: POST /invocations (dataframe_split), {workers} worker(s) each, "
          f"median of {rounds} interleaved {duration:.0f} s wrk runs per cell, {os.cpu_count()} cores shared by servers and wrk")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"machine load average at the end (1, 5, 15 min): {load}  (above {os.cpu_count()} the servers were starved of CPU)")
    head = (f"{'rows':>4} {'conns':>5} | {'service req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'mlflow req/s':>12} "
            f"{'p50 ms':>7} {'p99 ms':>7} | {'floor req/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'vs mlflow':>9} {'vs floor':>8}")
    print(head)
    print("-" * len(head))
    for rows in (1, 100):
        for conns in (1, 8):
            s, m, f = (results[k][(rows, conns)] for k in ("service", "mlflow", "floor"))
            print(f"{rows:>4} {conns:>5} | {s['rps']:>13.1f} {s['p50_us'] / 1e3:>7.2f} {s['p99_us'] / 1e3:>7.2f} | "
                  f"{m['rps']:>12.1f} {m['p50_us'] / 1e3:>7.2f} {m['p99_us'] / 1e3:>7.2f} | "
                  f"{f['rps']:>11.1f} {f['p50_us'] / 1e3:>7.2f} {f['p99_us'] / 1e3:>7.2f} | "
                  f"{s['rps'] / m['rps']:>8.1f}x {s['rps'] / f['rps']:>7.2f}x")
    errors = {k: sum(r["errors"] for r in v.values()) for k, v in results.items()}
    print(f"errors (socket + non-2xx): service {errors['service']}, mlflow {errors['mlflow']}, floor {errors['floor']}")
    print("targets: >= 10x mlflow models serve, >= 0.8x the floor")
    if swap:
        print()
        print(f"Swap under load (wrk 8 connections + 1 probing client, {swap['workers']} workers, registry polled, no push):")
        print(f"  every response on the new version {swap['time_to_all_new_s']:.2f} s after the promotion "
              f"(first new answer after {swap['first_new_s'] or 0:.2f} s); workers on the new version: "
              f"{swap['workers_on_new']:.0f}/{swap['workers']}")
        print(f"  failed requests: {swap['wrk_failed'] + swap['probe_failed']} "
              f"of {swap['wrk_requests'] + swap['probe_requests']} (target: <= 2 s, 0 failed)")


def report_v2(results: dict) -> None:
    """V2 infer (a tensor per column) vs /invocations (dataframe_split) of the same service, same rows."""
    print()
    print("Open Inference Protocol: POST /v2/models/{name}/infer (one FP64 tensor per column, outputs: predictions) "
          "vs POST /invocations, same service, same rows, same run")
    head = (f"{'rows':>4} {'conns':>5} | {'v2 req/s':>9} {'p50 ms':>7} {'p99 ms':>7} | {'invocations req/s':>17} "
            f"{'p50 ms':>7} {'p99 ms':>7} | {'v2 / invocations':>16}")
    print(head)
    print("-" * len(head))
    for rows in (1, 100):
        for conns in (1, 8):
            v, s = results["v2"][(rows, conns)], results["service"][(rows, conns)]
            print(f"{rows:>4} {conns:>5} | {v['rps']:>9.1f} {v['p50_us'] / 1e3:>7.2f} {v['p99_us'] / 1e3:>7.2f} | "
                  f"{s['rps']:>17.1f} {s['p50_us'] / 1e3:>7.2f} {s['p99_us'] / 1e3:>7.2f} | {v['rps'] / s['rps']:>15.2f}x")
    print(f"errors (socket + non-2xx): v2 {sum(r['errors'] for r in results['v2'].values())}")
    print("target: v2 >= 0.9x /invocations in every cell")


def report_penguins(results: dict, numeric: dict | None, workers: int, duration: float, rounds: int) -> None:
    print()
    print(f"Mixed types: penguins (strings, nulls, histogram gradient boosting), {workers} worker(s) each, "
          f"median of {rounds} interleaved {duration:.0f} s wrk runs per cell")
    head = (f"{'rows':>4} {'conns':>5} | {'service req/s':>13} {'p50 ms':>7} {'p99 ms':>7} | {'mlflow req/s':>12} "
            f"{'p50 ms':>7} {'p99 ms':>7} | {'vs mlflow':>9}" + (f" | {'vs numeric path':>15}" if numeric else ""))
    print(head)
    print("-" * len(head))
    for rows in (1, 100):
        for conns in (1, 8):
            s, m = results["service"][(rows, conns)], results["mlflow"][(rows, conns)]
            line = (f"{rows:>4} {conns:>5} | {s['rps']:>13.1f} {s['p50_us'] / 1e3:>7.2f} {s['p99_us'] / 1e3:>7.2f} | "
                    f"{m['rps']:>12.1f} {m['p50_us'] / 1e3:>7.2f} {m['p99_us'] / 1e3:>7.2f} | {s['rps'] / m['rps']:>8.1f}x")
            if numeric:
                line += f" | {s['rps'] / numeric['service'][(rows, conns)]['rps']:>14.2f}x"
            print(line)
    errors = {k: sum(r["errors"] for r in v.values()) for k, v in results.items()}
    print(f"errors (socket + non-2xx): service {errors['service']}, mlflow {errors['mlflow']}")
    print("target: >= 10x mlflow models serve at 1 and 8 connections; 'vs numeric path' = penguins req/s over "
          "breast-cancer req/s of this service in the same run")


if __name__ == "__main__":
    sys.exit(main())
