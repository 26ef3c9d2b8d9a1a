#!/usr/bin/env python
"""Benchmark batch scoring: `mlops score --master local[2]` against the plain loop a user would write.

Trains the breast-cancer classifier into a throwaway SQLite store (Production), generates a Parquet
input with a fixed seed (default 1,000,000 rows: the 30 features of breast-cancer rows drawn with
replacement plus 1 % noise, and a ``row_id``; row groups of 100,000 rows), then measures in the
same run on the same file:

  * plain — a fresh Python process (this script with ``--plain``): pyarrow reads the file in
    chunks of 100,000 rows, each chunk becomes a pandas DataFrame for ``pyfunc.predict`` of the
    same version, ids and predictions are appended to one Parquet file.
  * score — ``mlops score --input ... --output ... --id-columns row_id --master local[2]``.

Both wall times are whole commands (interpreter start, imports, model load; for score also the
JVM). Every 50 ms the process tree's memory is read from /proc: the driver's peak (``VmHWM`` of
the command's own Python process), the JVM's peak (in local mode it holds the executors too) and
the largest sum over the Python workers. Goals (issue 18): driver memory flat as rows grow 10x;
score rows/s >= 0.7 x plain rows/s. Printed, never asserted.

Run with ``make bench-score`` or ``.venv/bin/python scripts/bench_score.py [--rows N] [--master M]``.
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

from mlops.stack.process import descendants, status_kib

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODEL = "bench-breast-cancer"
CHUNK = 100_000
GOAL = 0.7


def say(msg: str) -> None:
    print(msg, flush=True)


def generate(path: Path, rows: int, seed: int) -> None:
    """``rows`` noisy breast-cancer rows plus ``row_id``, written chunk by chunk (constant memory)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_breast_cancer

    base = load_breast_cancer(as_frame=True).data
    values, scale = base.to_numpy(), base.std().to_numpy() * 0.01
    rng = np.random.default_rng(seed)
    writer = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        block = values[rng.integers(0, len(values), n)] + rng.normal(0, 1, (n, values.shape[1])) * scale
        cols = {"row_id": pa.array(np.arange(start, start + n, dtype="int64"))}
        cols.update({name: pa.array(block[:, i]) for i, name in enumerate(base.columns)})
        table = pa.table(cols)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=CHUNK)
    writer.close()


def plain(model_uri: str, src: str, dest: str) -> None:
    """The loop a user writes: pandas chunks -> pyfunc.predict -> one Parquet file."""
    import mlflow.pyfunc
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)
    writer = None
    for batch in pq.ParquetFile(src).iter_batches(batch_size=CHUNK):
        frame = batch.to_pandas()
        preds = model.predict(frame.drop(columns=["row_id"]))
        out = pa.table({"row_id": pa.array(frame["row_id"].to_numpy()), "prediction": pa.array(preds)})
        writer = writer or pq.ParquetWriter(dest, out.schema)
        writer.write_table(out)
    writer.close()


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """Run ``cmd``; wall seconds and memory peaks (MiB) of its driver, JVM and Python workers."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = {"driver": 0, "jvm": 0, "workers": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            workers = 0
            for pid in descendants(proc.pid):
                try:
                    exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
                except OSError:
                    continue
                if pid == proc.pid:
                    peaks["driver"] = max(peaks["driver"], status_kib(pid, "VmHWM"))
                elif exe.endswith(b"java"):
                    peaks["jvm"] = max(peaks["jvm"], status_kib(pid, "VmHWM"))
                elif b"python" in exe:
                    workers += status_kib(pid, "VmRSS")
            peaks["workers"] = max(peaks["workers"], workers)

    t0 = time.perf_counter()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    thread.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{out[-3000:]}")
    return {"wall_s": round(wall, 2), **{k: round(v / 1024, 1) for k, v in peaks.items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--master", default="local[2]")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--plain", nargs=3, metavar=("MODEL_URI", "INPUT", "OUTPUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain:
        plain(*args.plain)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-score-"))
    try:
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MODEL_"))}
        env.update(MLFLOW_TRACKING_URI=uri, PYSPARK_PYTHON=sys.executable)
        say(f"==> training {MODEL} into {uri}")
        subprocess.run([sys.executable, "-m", "training.train", "--model-name", MODEL, "--promote", "production",
                        "--experiment", "bench"], env=env, cwd=ROOT, check=True, capture_output=True)
        data = tmp / "input.parquet"
        t0 = time.perf_counter()
        generate(data, args.rows, args.seed)
        say(f"==> {args.rows:,} rows, {data.stat().st_size / 2**20:.0f} MiB Parquet in {time.perf_counter() - t0:.1f} s")
        results = {}
        say("==> plain loop (pandas chunks -> pyfunc.predict)")
        results["plain"] = measure([sys.executable, __file__, "--plain", f"models:/{MODEL}/1", str(data),
                                    str(tmp / "plain.parquet")], env)
        say(f"==> mlops score --master {args.master}")
        results["score"] = measure([str(BIN / "mlops"), "score", "--input", str(data), "--output", str(tmp / "out"),
                                    "--model", MODEL, "--id-columns", "row_id", "--master", args.master], env)
        manifest = json.loads((tmp / "out" / "_mlops_scoring.json").read_text())
        results["score"]["job_s"] = manifest["seconds"]  # from the tracking run's start: no JVM start, no imports
        say("")
        say(f"score's job alone (after the JVM started): {manifest['seconds']:.1f} s, "
            f"{args.rows / manifest['seconds']:,.0f} rows/s")
        say(f"{'path':8} {'wall s':>8} {'rows/s':>10} {'driver MiB':>11} {'JVM MiB':>8} {'workers MiB':>12}")
        for name, r in results.items():
            r["rows_per_s"] = round(args.rows / r["wall_s"])
            say(f"{name:8} {r['wall_s']:>8.1f} {r['rows_per_s']:>10,} {r['driver']:>11.0f} {r['jvm']:>8.0f} "
                f"{r['workers']:>12.0f}")
        ratio = results["score"]["rows_per_s"] / results["plain"]["rows_per_s"]
        say(f"score / plain throughput: {ratio:.2f} (goal >= {GOAL})")
        say(json.dumps({"rows": args.rows, "master": args.master, "cores": os.cpu_count(), **results,
                        "ratio": round(ratio, 2)}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
