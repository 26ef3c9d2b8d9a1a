#!/usr/bin/env python3
"""Render docs/api.md from the service's OpenAPI document (serving/openapi.py).

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 if docs/api.md is out of date
    python scripts/gen_api_docs.py --from-url http://127.0.0.1:5000 --check   # against a live /openapi.json

The endpoint part (paths, methods, content types, status codes, headers, auth) does not depend on
the model being served, so the document rendered from a live service must equal the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "api.md"

HEADER = """# HTTP API of the prediction service

Generated from the service's OpenAPI 3 document (`GET /openapi.json`) by
`python scripts/gen_api_docs.py`; `tests/test_api_docs.py` fails when this file and the document
drift apart. The live document also carries the column schema of the model being served.

Errors always have the shape `{"error_code": "...", "message": "..."}`. Prediction responses carry
the header `X-Model-Version`. When `API_TOKEN` is set, every endpoint except `/health`, `/ready`
(`/ping`) and `/` needs `Authorization: Bearer $API_TOKEN`: the prediction endpoints,
`/api/model/info` (tracking URI, paths, run id), `/openapi.json` and `/metrics` (Prometheus sends it
with `authorization: {credentials: ...}` in its scrape config); `/api/model/reload` always needs
`Authorization: Bearer $ADMIN_TOKEN`. Bad requests are 4xx with a JSON body: too many columns
(`TOO_MANY_COLUMNS`, above `MAX_COLUMNS`), a malformed chunked body (`MALFORMED_BODY`), a body
that ends early (`INCOMPLETE_BODY`) or does not arrive within `READ_TIMEOUT_S` (408
`REQUEST_TIMEOUT`).
"""


COMPATIBILITY = """
## Compatibility with `mlflow models serve`

By default `POST /invocations`, `GET /ping` and `GET /version` answer as `mlflow models serve`
3.17.2 does, request for request: the same status, the same `error_code` (`BAD_REQUEST`,
`INVALID_PARAMETER_VALUE`) and the same predictions. Extra columns are ignored, an extra top-level key
next to the format key is dropped, numeric strings such as `"17.99"` are converted, Parquet bodies
(`application/vnd.apache.parquet`) are scored, a `dataframe_split` whose `index` length differs from
`data` is refused unless pandas can broadcast the rows over it (MLflow then scores one row per index
entry, and so does this service; `/api/predict` always refuses it), CSV is read exactly as MLflow reads it (UTF-8 BOM, a row with one value more than
the header, `True` in a double column). Clean requests take the fast paths; anything else is answered
by MLflow's own scoring function on the loaded model. Where this service explains a refusal better,
the status and `error_code` stay MLflow's, the clearer explanation is in `message` and MLflow's own
in `mlflow_message`. `tests/serving/test_mlflow_parity.py` sends every HTTP-level case of MLflow's
`tests/pyfunc/test_scoring_server.py` and `tests/pyfunc/test_pyfunc_schema_enforcement.py` to both
servers serving the same registered version and compares the answers.

`STRICT_INPUT=true` keeps the stricter validation of earlier releases on `/invocations`: unknown
columns (`UNKNOWN_COLUMNS`) and top-level keys are refused, and errors carry this service's own codes
(`MISSING_COLUMNS`, `INVALID_VALUE_TYPE`, `MISSING_VALUE`, ...). `POST /api/predict` (this service's
own endpoint) always validates that way.

### Differences from `mlflow models serve`

| difference | why | parity case |
|---|---|---|
| no `stack_trace` in any error body | a traceback helps an attacker more than a client; the message names the field and the service log has the rest | every error case |
| a missing `Content-Type` is 415 `UNSUPPORTED_MEDIA_TYPE` (MLflow: 500) | it is a client mistake, never a server error | `issue14_missing_content_type` |
| `charset=utf8` is accepted (MLflow accepts only the spelling `utf-8`: 415) | it names the same encoding | `issue14_charset_utf8_without_dash` |
| media types are case-insensitive: `Application/JSON` is scored (MLflow: 415) | RFC 9110 says media types are case-insensitive | `issue14_uppercase_media_type` |
| an optional column of the signature left out is a missing value, as a `null` is (MLflow passes the frame without it and the pipeline fails: 400 `BAD_REQUEST`) | the signature says the column is optional | `issue14_optional_column_left_out` |
| more columns than `MAX_COLUMNS` (default 2048) are 400 `TOO_MANY_COLUMNS` (MLflow ignores any number of extra columns) | a huge header must not cost the service its time | `issue14_too_many_columns` |
| bodies above `MAX_BODY_BYTES` are 413 `PAYLOAD_TOO_LARGE` (MLflow has no limit) | memory and time per request stay bounded | `tests/serving/test_service.py` |
| a Parquet body whose footer promises more values than a JSON body of `MAX_BODY_BYTES` holds (`MAX_BODY_BYTES / 2`) is 413 `PAYLOAD_TOO_LARGE`, more columns than `MAX_COLUMNS` 400 `TOO_MANY_COLUMNS`; both checked before it is decoded | compressed columns decode to millions of rows: a 150 KB body had held 5M rows (2 GB in the worker) | `tests/serving/test_mixed_types.py` |
| where MLflow answers 5xx to input it cannot use, 400 `BAD_REQUEST` | bad input is never a server error | - |
| `GET /ping` is 503 (with a JSON reason) until a model is loaded; MLflow's server does not listen before its model is loaded | a load balancer can start the service before the registry answers | - |
"""


def local_spec() -> dict:
    """The OpenAPI document as the service builds it with no model loaded."""
    from serving.openapi import build
    from serving.settings import Settings

    return build(None, Settings(tracking_uri="sqlite:///unused.db"))


def render(spec: dict) -> str:
    """Markdown for the endpoint part of an OpenAPI document."""
    out = [HEADER]
    out.append("| method | path | summary |\n|---|---|---|")
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f"| `{method.upper()}` | `{path}` | {op.get('summary', '')} |")
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            out.append(f"\n## `{method.upper()} {path}`\n\n{op.get('summary', '')}")
            body = op.get("requestBody", {}).get("content", {})
            if body:
                out.append("\nRequest content types: " + ", ".join(f"`{c}`" for c in body))
            if "security" in op:
                names = sorted({k for req in op["security"] for k in req})
                out.append("\nAuth: " + (", ".join(f"`{n}`" for n in names) if names else "none unless `API_TOKEN` is set"))
            out.append("\n| status | meaning | body |\n|---|---|---|")
            for status, resp in op.get("responses", {}).items():
                types = ", ".join(f"`{c}`" for c in resp.get("content", {})) or "-"
                headers = resp.get("headers", {})
                extra = f" (headers: {', '.join(f'`{h}`' for h in headers)})" if headers else ""
                out.append(f"| {status} | {resp.get('description', '')}{extra} | {types} |")
    return "\n".join(out) + "\n" + COMPATIBILITY


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    ap.add_argument("--from-url", help="render from a live service's /openapi.json")
    args = ap.parse_args()
    if args.from_url:
        import requests

        spec = requests.get(args.from_url.rstrip("/") + "/openapi.json", timeout=10).json()
    else:
        spec = local_spec()
    text = render(spec)
    if args.check:
        if DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        print(f"{DOC.relative_to(ROOT)} matches the OpenAPI document")
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
