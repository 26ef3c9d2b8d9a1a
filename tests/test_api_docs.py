"""docs/api.md is generated from the service's OpenAPI document and must not drift from it."""

from __future__ import annotations

import importlib.util

from tests.helpers import ROOT


def _gen():
    spec = importlib.util.spec_from_file_location("gen_api_docs", ROOT / "scripts" / "gen_api_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_doc_matches_openapi_document():
    gen = _gen()
    assert (ROOT / "docs" / "api.md").read_text() == gen.render(gen.local_spec()), (
        "docs/api.md is out of date: run python scripts/gen_api_docs.py"
    )


def test_api_doc_lists_every_contract_endpoint():
    text = (ROOT / "docs" / "api.md").read_text()
    for method, path in [("GET", "/health"), ("GET", "/ready"), ("GET", "/api/model/info"),
                         ("POST", "/api/predict"), ("POST", "/invocations"), ("POST", "/api/model/reload"),
                         ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/ping"), ("GET", "/version")]:
        assert f"## `{method} {path}`" in text
