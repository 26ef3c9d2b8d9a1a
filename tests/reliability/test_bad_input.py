"""Bad input against the stack's serving service: schemathesis generated from the live
/openapi.json (no 5xx in well over 1000 cases), then the hand-written classes of
tests/serving/test_service.py plus what only the production limits show (infinity, a body over
the default 10 MiB limit, plain or chunked).
"""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest
import requests

from tests.helpers import BIN, run
from tests.serving.test_service import BAD, MLFLOW_ANSWER, split_body

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(900)]

MIN_CASES = 1000
SEED = "20261129"
DEFAULT_LIMIT = 10 * 1024 * 1024  # MAX_BODY_BYTES default; the stack does not change it


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(as_frame=True).frame.drop(columns=["target"])


def test_schemathesis_finds_no_server_error(stack, models, numbers):
    """`st run` on the live document: coverage phase (boundary and invalid values of every field)
    plus random fuzzing; every request it made is read back from its NDJSON report."""
    work = stack.root / "schemathesis"
    work.mkdir()
    cmd = [
        str(BIN / "st"), "run", f"{stack.serving}/openapi.json",
        "--checks", "not_a_server_error",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", "30",
        "--seed", SEED,
        "--request-timeout", "30",
        "--header", f"Authorization: Bearer {stack.api_token}",
        "--report", "ndjson,json", "--report-dir", str(work / "report"),
    ]
    proc = run(cmd, env=stack.env(), cwd=work, check=False, timeout=600)
    summary = json.loads(next((work / "report").glob("json-*.json")).read_text())
    statuses: Counter = Counter()
    operations: Counter = Counter()
    for line in next((work / "report").glob("ndjson-*.ndjson")).read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if not event:
            continue
        for interaction in (event.get("recorder") or {}).get("interactions", {}).values():
            response = interaction.get("response") or {}
            statuses[response.get("status_code")] += 1
            request = interaction["request"]
            operations[f"{request['method']} {request['uri'].split('?')[0].removeprefix(stack.serving)}"] += 1
    sent = sum(statuses.values())
    server_errors = sum(n for status, n in statuses.items() if status is None or status >= 500)
    numbers("schemathesis", f"{sent} requests ({summary['test_cases']['generated']} generated cases, "
                            f"{summary['running_time']:.0f} s, seed {SEED}); statuses "
                            + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=lambda kv: str(kv[0]))))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert summary["test_cases"]["with_failures"] == 0 and not summary["errors"], summary
    assert server_errors == 0, statuses
    assert sent >= MIN_CASES, (sent, operations)
    # The prediction endpoints got most of them, and both valid (200) and invalid (400) bodies.
    assert operations["POST /invocations"] > 300 and operations["POST /api/predict"] > 300, operations
    assert statuses[200] > 50 and statuses[400] > 500, statuses


# Everything tests/serving checks, except its small MAX_BODY_BYTES case (the stack keeps the
# 10 MiB default, tested below).
HAND_WRITTEN = [case for case in BAD if case[0] != "too large"] + [
    ("Infinity literal", lambda f: split_body(f.head(2)).replace("17.99", "Infinity"), "application/json", 400,
     "INVALID_VALUE"),
    ("-inf in csv", lambda f: f.head(1).assign(**{"mean area": float("-inf")}).to_csv(index=False), "text/csv", 400,
     "INVALID_VALUE"),
    ("boolean value", lambda f: split_body(f.head(1).astype(object).assign(**{"mean radius": True})),
     "application/json", 400, "INVALID_VALUE_TYPE"),
    ("columns not a list", lambda f: json.dumps({"dataframe_split": {"columns": "mean radius", "data": [[1.0]]}}),
     "application/json", 400, "INVALID_INPUT_FORMAT"),
]


#: /invocations answers as `mlflow models serve` 3.17.2 (STRICT_INPUT off): its status and error_code.
MLFLOW_ANSWER_HERE = {
    **MLFLOW_ANSWER, "no content type": (415, "UNSUPPORTED_MEDIA_TYPE"),  # MLflow: 500 (see docs/api.md)
    "Infinity literal": (400, "BAD_REQUEST"), "-inf in csv": (400, "BAD_REQUEST"),
    "boolean value": (200, None), "columns not a list": (400, "BAD_REQUEST"),
}


@pytest.mark.parametrize("path", ["/invocations", "/api/predict"])
@pytest.mark.parametrize(("name", "build", "ctype", "status", "code"), HAND_WRITTEN, ids=[c[0] for c in HAND_WRITTEN])
def test_hand_written_bad_input_gets_the_right_4xx(stack, models, frame, path, name, build, ctype, status, code):
    """/api/predict: this service's own codes; /invocations: MLflow's status and error_code."""
    headers = dict(stack.api_headers)
    if ctype:
        headers["Content-Type"] = ctype
    if path == "/invocations":
        status, code = MLFLOW_ANSWER_HERE[name]
    r = requests.post(stack.serving + path, data=build(frame).encode(), headers=headers, timeout=30)
    assert r.status_code == status, (name, r.status_code, r.text[:300])
    if status == 200:
        assert r.json()["predictions"], r.text[:300]
        return
    body = r.json()
    if code is not None:
        assert body["error_code"] == code, body
    assert body["message"] and "Traceback" not in r.text and "stack_trace" not in body


def _over_the_limit(frame: pd.DataFrame) -> bytes:
    """A valid dataframe_split body just over the default limit."""
    one = split_body(frame)
    copies = DEFAULT_LIMIT // len(one) + 1
    body = split_body(pd.concat([frame] * copies)).encode()
    assert len(body) > DEFAULT_LIMIT
    return body


def test_a_body_over_10_mib_is_413_plain_or_chunked(stack, models, frame):
    body = _over_the_limit(frame)
    headers = {"Content-Type": "application/json", **stack.api_headers}
    for path in ("/invocations", "/api/predict"):
        r = requests.post(stack.serving + path, data=body, headers=headers, timeout=60)
        assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE", (path, r.status_code, r.text[:200])
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))
    r = requests.post(stack.serving + "/invocations", data=chunks, headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE", r.text[:200]
    # A valid request right after still works: the service did not choke on them.
    ok = requests.post(stack.serving + "/invocations", data=split_body(frame.head(3)), headers=headers, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 3
