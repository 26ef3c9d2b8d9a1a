"""Secrets: the admin endpoint refuses a missing or wrong token, and no token or password of the
suite ever reached a log. Runs last (see ORDER in conftest.py) so the grep covers every log the
suite wrote: the stack's component logs, the service's app.log and stdout, the restarted
service's log, the training runs' output and the schemathesis reports.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

pytestmark = [pytest.mark.slow, pytest.mark.stack, pytest.mark.timeout(300)]

WRONG = "wrong-token-7f3c9a1e5b"
LOG_NAME = re.compile(r"(\.log(\.\d+)?|\.ndjson|\.json)$")
NOT_LOGS = {"secrets.json", "stack.json"}  # where the secrets are kept, on purpose


def test_admin_endpoint_refuses_without_or_with_a_wrong_token(stack, models):
    url = stack.serving + "/api/model/reload"
    refused = [
        {},
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": "Bearer "},
        {"Authorization": stack.admin_token},  # no scheme
        {"Authorization": f"Basic {stack.admin_token}"},
        {"Authorization": f"Bearer {stack.api_token}"},  # the prediction token is not an admin token
        {"Authorization": f"Bearer {stack.admin_token}x"},
    ]
    for headers in refused:
        r = requests.post(url, headers=headers, timeout=30)
        assert r.status_code == 401 and r.json()["error_code"] == "UNAUTHORIZED", (headers, r.status_code, r.text)
        assert r.headers.get("WWW-Authenticate") == "Bearer"
    ok = requests.post(url, headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=60)
    assert ok.status_code == 200, ok.text
    # Predictions want the API token, and only it.
    for headers in ({}, {"Authorization": f"Bearer {WRONG}"}, {"Authorization": f"Bearer {stack.admin_token}"}):
        r = requests.post(stack.serving + "/invocations", json={"instances": []}, headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.status_code)


def test_no_token_or_password_in_any_log(stack, models, numbers):
    secrets = {
        "ADMIN_TOKEN": stack.admin_token,
        "API_TOKEN": stack.api_token,
        "wrong token": WRONG,
        **{f"secrets.json:{k}": v for k, v in stack.secrets().items()},
    }
    assert all(len(v) >= 10 for v in secrets.values()), "a secret too short to grep for"
    logs = sorted(p for p in stack.root.rglob("*")
                  if p.is_file() and LOG_NAME.search(p.name) and p.name not in NOT_LOGS and "postgres" not in p.parts)
    names = {p.name for p in logs}
    for expected in ("postgres.log", "s3.log", "mlflow.log", "serving.log", "app.log"):
        assert expected in names, (expected, sorted(names))
    assert any(n.startswith("serving-") for n in names), "the restarted service's log is missing"
    leaks = []
    size = 0
    for path in logs:
        data = path.read_bytes()
        size += len(data)
        leaks += [f"{label} in {path.relative_to(stack.root)}" for label, value in secrets.items() if value.encode() in data]
    # Nor on any process's command line (`ps` shows those to every user of the machine).
    procs = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            data = cmdline.read_bytes()
        except OSError:
            continue  # the process has gone
        procs += 1
        leaks += [f"{label} on the command line of pid {cmdline.parent.name}" for label, value in secrets.items()
                  if value.encode() in data]
    numbers("secrets", f"{len(secrets)} tokens/passwords grepped in {len(logs)} log files ({size / 1e6:.1f} MB) "
                       f"and {procs} process command lines: {len(leaks)} found")
    assert not leaks, leaks
