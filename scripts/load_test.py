#!/usr/bin/env python3
"""Operator load test: N concurrent clients for S seconds against the prediction service.

    python scripts/load_test.py --url http://127.0.0.1:5000 --clients 8 --seconds 30
    API_TOKEN=... python scripts/load_test.py --url ... --path /api/predict --body rows.json

Each client is a thread with its own keep-alive HTTP session that posts the same body in a loop
(default: one row of the bundled breast-cancer data in ``dataframe_split`` format). At the end it
prints the requests sent, the failed ones (a status other than 200, or no answer), req/s,
p50/p99 latency and how many answers each model version gave (``X-Model-Version``). The exit
code is 1 when any request failed.

The load itself is :class:`mlops.loadgen.LoadGenerator`, which the reliability tests apply too, so
the load they assert on and the one operators run are the same code.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import requests

from mlops import env
from mlops.loadgen import DEFAULT_BODY, LoadGenerator


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=env.SERVING_URL.get() or "http://127.0.0.1:5000",
                   help="serving base URL (default: $SERVING_URL, else http://127.0.0.1:5000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--seconds", type=float, default=30.0, help="duration (default 30)")
    p.add_argument("--path", default="/invocations", help="endpoint (default /invocations)")
    p.add_argument("--body", type=Path, default=None, help="JSON request body file (default: one bundled row)")
    p.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds (default 30)")
    p.add_argument("--pause", type=float, default=0.0, help="seconds each client waits between requests (default 0)")
    args = p.parse_args(argv)
    if args.clients < 1 or args.seconds <= 0 or args.pause < 0:
        p.error("--clients must be >= 1, --seconds > 0 and --pause >= 0")
    if args.body and not args.body.is_file():
        p.error(f"--body {args.body}: no such file")
    body = args.body.read_bytes() if args.body else DEFAULT_BODY
    token = env.API_TOKEN.get()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        requests.get(args.url.rstrip("/") + "/health", timeout=5)
    except requests.RequestException as exc:
        print(f"error: {args.url} does not answer ({type(exc).__name__})", file=sys.stderr)
        return 2
    load = LoadGenerator(args.url, args.clients, args.path, body, headers, args.timeout,
                         pause_s=args.pause).run(args.seconds)
    s = load.summary()
    print(f"url          {args.url}{args.path}")
    print(f"clients      {s['clients']} for {s['seconds']} s")
    print(f"requests     {s['sent']} sent, {s['failed']} failed")
    print(f"throughput   {s['req_per_s']} req/s")
    print(f"latency      p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms")
    print("versions     " + (", ".join(f"v{v}: {n}" for v, n in s["versions"].items()) or "none"))
    errors = Counter(r.error.split(":")[0] for r in load.failed())
    for error, n in errors.most_common(5):
        print(f"failure      {n} x {error}")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
