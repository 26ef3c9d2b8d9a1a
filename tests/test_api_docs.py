"""docs/api.md is generated from the service's OpenAPI document and must not drift from it."""

from __future__ import annotations

import sys

from tests.helpers import ROOT, run


def test_api_doc_matches_openapi_document():
    # The script as operators run it (tests never import scripts/): --check renders the document
    # and compares it with docs/api.md.
    proc = run([sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"], check=False, timeout=120)
    assert proc.returncode == 0, (
        f"docs/api.md is out of date: run python scripts/gen_api_docs.py\n{proc.stdout}{proc.stderr[-2000:]}"
    )


def test_api_doc_lists_every_contract_endpoint():
    text = (ROOT / "docs" / "api.md").read_text()
    for method, path in [("GET", "/health"), ("GET", "/ready"), ("GET", "/api/model/info"),
                         ("POST", "/api/predict"), ("POST", "/invocations"), ("POST", "/api/model/reload"),
                         ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/ping"), ("GET", "/version")]:
        assert f"## `{method} {path}`" in text
