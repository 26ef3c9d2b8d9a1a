"""Canary and shadow against a real `mlops serve` (gunicorn, 2 workers) and a real registry, load
generated here. The tests share one service and run in order; the last one promotes."""

from __future__ import annotations

import json
import math
import time

import pytest
import requests

from mlops import registry, util
from mlops import rollout as ro_mod
from tests.helpers import gauge, healths, start_serving
from tests.rollout.conftest import MODEL, ROWS, body, load, mlops

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rollout-serving")
    cm, port = start_serving(store.uri, tmp, workers=2, POLL_INTERVAL_S="0.3", SHADOW_QUEUE_SIZE="4")
    with cm:
        yield f"http://127.0.0.1:{port}", tmp


def wait_for(probe, timeout: float, what: str):
    """``probe()``'s first truthy answer within ``timeout`` seconds; fail naming ``what`` otherwise."""
    seen: list = []
    ok, _ = util.wait_for(lambda: (bool(seen.append(probe()) or seen[-1]), ""), timeout, interval=0.2)
    if not ok:
        pytest.fail(f"timed out after {timeout}s waiting for {what}")
    return seen[-1]


def client(store):
    return registry.get_client(store.uri)


def followed(url: str, version: str | None, timeout: float = 20) -> None:
    """Wait until every worker routes the rollout of ``version`` (None: routes none)."""
    def ok():
        hs = healths(url, 12)
        if len(hs) < 2:
            return False
        for h in hs.values():
            r = h.get("rollout") or {}
            routed = r.get("candidate_version") if r.get("routed_here") else None
            if routed != version:
                return False
        return True

    wait_for(ok, timeout=timeout, what=f"every worker to route v{version}")


def ended(store, state: str, timeout: float = 30) -> ro_mod.Rollout:
    def check():
        ro = ro_mod.read(client(store), MODEL)
        return ro if ro is not None and ro.state == state else None

    return wait_for(check, timeout=timeout, what=f"the rollout to be {state}")


def app_log(tmp) -> list[dict]:
    out = []
    for line in (tmp / "logs" / "app.log").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_cli_refuses_bad_starts_in_one_line(store):
    healthy = store.candidates["healthy"]
    cases = [
        (["canary", "start", MODEL, "99", "--percent", "10"], "has no version 99"),
        (["canary", "start", MODEL, healthy, "--percent", "0"], "--percent"),
        (["canary", "start", MODEL, healthy, "--percent", "101"], "--percent"),
        (["canary", "start", MODEL, "1", "--percent", "10"], "is the Production version already"),
        (["canary", "start", MODEL, healthy, "--percent", "10", "--duration", "soon"], "bad duration"),
        (["canary", "stop", MODEL], "no canary of"),
        (["canary", "start", MODEL, healthy, "--percent", "nan"], "--percent"),
        (["canary", "start", MODEL, healthy, "--percent", "10", "--timeout-ms", "nan"], "--timeout-ms"),
        (["canary", "start", MODEL, healthy, "--percent", "10", "--max-p99-ratio", "inf"], "--max-p99-ratio"),
        (["canary", "start", MODEL, healthy, "--percent", "10", "--duration", "9" * 400 + "h"], "366 days"),
    ]
    for args, text in cases:
        proc = mlops(store.uri, *args, check=False)
        assert proc.returncode != 0, args
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and text in lines[0], (args, proc.stderr)
    mlops(store.uri, "shadow", "start", MODEL, healthy, "--percent", "10")
    proc = mlops(store.uri, "canary", "start", MODEL, healthy, "--percent", "10", check=False)
    assert proc.returncode != 0 and "already running" in proc.stderr
    proc = mlops(store.uri, "canary", "status", MODEL, check=False)  # a shadow runs, not a canary
    assert proc.returncode != 0 and "no canary recorded" in proc.stderr
    assert "shadow of v" in mlops(store.uri, "shadow", "status", MODEL).stdout
    mlops(store.uri, "shadow", "stop", MODEL)


def test_healthy_canary_share_stable_keys_no_failures(store, served):
    url, _ = served
    healthy = store.candidates["healthy"]
    mlops(store.uri, "canary", "start", MODEL, healthy, "--percent", "20", "--duration", "10m")
    followed(url, healthy)
    n = 1000
    seen = load(url, n, seed=1)
    assert seen.failed == []
    share = seen.versions[healthy]
    assert set(seen.versions) == {"1", healthy}
    bound = 4.5 * math.sqrt(n * 0.2 * 0.8)  # binomial, 4.5 standard deviations
    assert abs(share - 0.2 * n) <= bound, seen.versions
    keyed = load(url, 600, keys=60, seed=2)
    assert keyed.failed == []
    assert all(len(v) == 1 for v in keyed.by_key.values()), keyed.by_key
    assert any(v == {healthy} for v in keyed.by_key.values()) and any(v == {"1"} for v in keyed.by_key.values())
    assert gauge(url, "serving_rollout_requests_total", model_version=healthy, role="canary") >= share
    assert gauge(url, "serving_rollout_active", mode="canary", model_version=healthy) == 1
    status = mlops(store.uri, "canary", "status", MODEL, "--serving-url", url).stdout
    assert "running" in status and "agreement" in status and "p99 ms" in status
    ro = ro_mod.read(client(store), MODEL)
    assert ro.state == ro_mod.RUNNING, ro.reason  # a healthy candidate is not withdrawn
    mlops(store.uri, "canary", "stop", MODEL, "--reason", "test done")
    followed(url, None)
    assert registry.history(client(store), MODEL)[-1].action == "canary-stopped"
    assert set(load(url, 50).versions) == {"1"}


def withdrawn_under_load(store, url: str, version: str, min_requests: int, n: int, seed: int) -> ro_mod.Rollout:
    """A 50 % canary of ``version`` under ``n`` requests: none fails, and it ends withdrawn."""
    mlops(store.uri, "canary", "start", MODEL, version, "--percent", "50", "--duration", "2m",
          "--min-requests", str(min_requests))
    followed(url, version)
    seen = load(url, n, seed=seed)
    assert seen.failed == []  # every request the candidate failed was answered by Production
    return ended(store, ro_mod.WITHDRAWN)


def test_raising_candidate_costs_clients_nothing_and_is_withdrawn(store, served):
    url, tmp = served
    bad = store.candidates["raising"]
    ro = withdrawn_under_load(store, url, bad, min_requests=40, n=400, seed=3)
    assert "error rate" in ro.reason
    last = registry.history(client(store), MODEL)[-1]
    assert (last.action, last.to_version, last.from_version) == ("canary-withdrawn", bad, "1")
    assert gauge(url, "serving_rollout_ended_total", mode="canary", outcome="withdrawn") >= 1
    assert gauge(url, "serving_rollout_errors_total", model_version=bad, role="canary") >= 1
    followed(url, None)
    assert set(load(url, 50).versions) == {"1"}
    events = [e.get("event") for e in app_log(tmp)]
    assert "rollout_withdrawn" in events and "canary_error" in events


def test_slower_candidate_is_withdrawn_on_latency(store, served):
    url, _ = served
    slow = store.candidates["slow"]
    ro = withdrawn_under_load(store, url, slow, min_requests=30, n=200, seed=4)
    assert "latency" in ro.reason, ro.reason
    assert registry.history(client(store), MODEL)[-1].action == "canary-withdrawn"
    followed(url, None)


def test_shadow_never_changes_answers_and_records_agreement(store, served):
    url, tmp = served
    healthy = store.candidates["healthy"]
    idx = list(range(0, len(ROWS), 7))
    headers = {"Content-Type": "application/json"}

    def answers():
        out = []
        for i in idx:
            r = requests.post(url + "/invocations", data=body([i]), headers=headers, timeout=10)
            out.append((r.status_code, r.headers.get("X-Model-Version"), r.text))
        return out

    alone = answers()
    mlops(store.uri, "shadow", "start", MODEL, healthy, "--percent", "100", "--duration", "10m")
    followed(url, healthy)
    assert answers() == alone
    wait_for(lambda: gauge(url, "serving_rollout_compared_rows_total", model_version=healthy) >= len(idx) / 2,
             timeout=20, what="shadow comparisons")
    assert gauge(url, "serving_rollout_agreeing_rows_total", model_version=healthy) == \
        gauge(url, "serving_rollout_compared_rows_total", model_version=healthy)
    shadowed = [e for e in app_log(tmp) if e.get("event") == "shadow_prediction"]
    assert shadowed and all(e["production_predictions"] == e["candidate_predictions"] for e in shadowed)
    assert {"request_id", "production_version", "candidate_version"} <= set(shadowed[-1])
    time.sleep(2.2)  # figures are published every second
    out = json.loads(mlops(store.uri, "shadow", "status", MODEL, "--serving-url", url, "--json").stdout)
    assert out["figures"]["agreement"] == 1.0 and out["figures"]["compared"] > 0
    mlops(store.uri, "shadow", "stop", MODEL)
    followed(url, None)


def test_full_shadow_queue_drops_and_counts(store, served):
    url, _ = served
    slow = store.candidates["slow"]
    before = gauge(url, "serving_shadow_dropped_total")
    mlops(store.uri, "shadow", "start", MODEL, slow, "--percent", "100", "--min-requests", "100000")
    followed(url, slow)
    seen = load(url, 200, seed=5)
    assert seen.failed == [] and set(seen.versions) == {"1"}
    assert gauge(url, "serving_shadow_dropped_total") > before
    mlops(store.uri, "shadow", "stop", MODEL)
    followed(url, None)


def test_backup_and_restore_carry_a_running_canary(store, served, tmp_path):
    healthy = store.candidates["healthy"]
    mlops(store.uri, "canary", "start", MODEL, healthy, "--percent", "20", "--duration", "10m")
    archive = tmp_path / "backup.tar.gz"
    mlops(store.uri, "backup", "--out", str(archive), "--models", MODEL)
    target = f"sqlite:///{tmp_path / 'restored' / 'mlflow.db'}"
    mlops(target, "restore", str(archive))
    restored = registry.get_client(target)
    ro = ro_mod.active(restored, MODEL)
    assert ro is not None and (ro.mode, ro.version, ro.percent) == ("canary", healthy, 20.0)
    assert ro.id == ro_mod.read(client(store), MODEL).id
    assert "running" in mlops(target, "canary", "status", MODEL).stdout
    mlops(store.uri, "canary", "stop", MODEL)


def test_auto_promote_after_the_window(store, served):
    url, _ = served
    healthy = store.candidates["healthy"]
    mlops(store.uri, "canary", "start", MODEL, healthy, "--percent", "50", "--duration", "6s", "--min-requests", "30",
          "--auto-promote")
    followed(url, healthy)
    deadline = time.time() + 60
    while time.time() < deadline:
        seen = load(url, 40, seed=6)
        assert seen.failed == []
        ro = ro_mod.read(client(store), MODEL)
        if ro.state != ro_mod.RUNNING:
            break
    assert ro.state == ro_mod.PROMOTED, ro.reason
    prod = registry.stage_version(client(store), MODEL, registry.PRODUCTION)
    assert str(prod.version) == healthy
    last = registry.history(client(store), MODEL)[-1]
    assert (last.action, last.to_version, last.from_version) == ("promote", healthy, "1")
    wait_for(lambda: all(h["model_version"] == healthy for h in healths(url, 12).values()), timeout=20,
             what="serving to follow the promotion")
    assert set(load(url, 40).versions) == {healthy}
