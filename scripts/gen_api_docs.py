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
    return "\n".join(out) + "\n"


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
