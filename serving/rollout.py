"""Canary and shadow inside one worker: follow the rollout in the registry, route, compare, judge.

The registry holds the rollout (``mlops.rollout``: the tag and the ``canary``/``shadow`` alias).
After every registry check the model poller calls :meth:`RolloutController.follow`, which loads the
candidate next to Production (each worker keeps both versions in memory), publishes this worker's
figures to a file under the model cache (shared by the workers of one replica), merges every
worker's figures and judges them (``mlops.rollout.judge``): a breach withdraws the candidate, a
window held with ``--auto-promote`` promotes it, through ``mlops.rollout.end``.

Requests go through :meth:`RolloutController.predict` (always with ``Routes.predict_rows``, so
batching applies to both versions):

* **canary**: ``percent`` % of requests (stably per ``X-Routing-Key``) are answered by the
  candidate; one it fails (raises, or is slower than ``timeout_ms``) is answered by Production and
  counted as a candidate error;
* **shadow**: Production answers; a sample is queued (bounded: dropped and counted when full) for
  a background thread that predicts it on the candidate and records both predictions.

Canary requests are compared with Production off the request path through the same queue.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import random
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from mlops import rollout as kernel
from mlops.util import first_line

log = logging.getLogger("serving.rollout")

LATENCY_SAMPLES = 4000  # latencies kept per role and worker for p50/p99
CANDIDATE_THREADS = 4  # at least this many candidate predictions in flight per worker (else THREADS + 1)
MAX_QUEUED_BYTES = 64 * 1024 * 1024  # request bodies waiting for a comparison, per worker
FULL_CHECK_S = 30.0
RETRY_LOAD_S = 30.0
PUBLISH_EVERY_S = 1.0  # figures published, merged and judged at most this often per worker
LOGGED_LABELS = 20


class Figures:
    """This worker's counts for one rollout (thread-safe; merged across workers by the judge)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.roles = {r: {"requests": 0, "errors": 0, "latency_ms": deque(maxlen=LATENCY_SAMPLES)}
                      for r in ("production", "candidate")}
        self.compared = {"n": 0, "equal": 0, "rel_diff_sum": 0.0, "kind": None}
        self.dropped = 0

    def observe(self, role: str, ms: float | None) -> None:
        with self.lock:
            r = self.roles[role]
            r["requests"] += 1
            if ms is None:
                r["errors"] += 1
            else:
                r["latency_ms"].append(ms)

    def compare(self, kind: str, n: int, equal: int, rel_diff_sum: float) -> None:
        with self.lock:
            c = self.compared
            c["kind"] = kind
            c["n"] += n
            c["equal"] += equal
            c["rel_diff_sum"] += rel_diff_sum

    def drop(self) -> None:
        with self.lock:
            self.dropped += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"roles": {k: {"requests": v["requests"], "errors": v["errors"],
                                  "latency_ms": [round(x, 3) for x in v["latency_ms"]]} for k, v in self.roles.items()},
                    "compared": dict(self.compared), "dropped": self.dropped}


def merge(snapshots: list[dict]) -> dict:
    """Sum the figures of several workers (the input of ``mlops.rollout.table``)."""
    out = {"production": {"requests": 0, "errors": 0, "latency_ms": []},
           "candidate": {"requests": 0, "errors": 0, "latency_ms": []},
           "compared": {"n": 0, "equal": 0, "rel_diff_sum": 0.0, "kind": None}, "dropped": 0}
    for snap in snapshots:
        try:  # read the whole snapshot first: a malformed one adds nothing, not half of itself
            roles = {}
            for role in ("production", "candidate"):
                r = snap["roles"][role]
                latencies = [float(x) for x in r["latency_ms"]]
                if not all(np.isfinite(latencies)):
                    raise ValueError("non-finite latencies")
                roles[role] = (int(r["requests"]), int(r["errors"]), latencies)
            c = snap["compared"]
            n, equal, rel = int(c["n"]), int(c["equal"]), float(c["rel_diff_sum"])
            kind = c.get("kind")
            dropped = int(snap.get("dropped", 0))
            if not np.isfinite(rel) or min(n, equal, dropped, *(v[0] for v in roles.values())) < 0:
                raise ValueError("negative or non-finite figures")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            log.warning("ignoring a malformed rollout figures file: %s", exc)
            continue
        for role, (requests, errors, latencies) in roles.items():
            out[role]["requests"] += requests
            out[role]["errors"] += errors
            out[role]["latency_ms"].extend(latencies)
        out["compared"]["n"] += n
        out["compared"]["equal"] += equal
        out["compared"]["rel_diff_sum"] += rel
        out["compared"]["kind"] = kind if kind in ("classification", "regression") else out["compared"]["kind"]
        out["dropped"] += dropped
    return out


class Active:
    """What requests read (one reference, replaced whole): the running rollout, its candidate and
    the threads that serve it. Each rollout has its own candidate pool, slots and comparison queue,
    so a candidate that hung in one rollout takes nothing from the next."""

    def __init__(self, rollout: kernel.Rollout, candidate, queue_size: int, slots: int):
        self.rollout = rollout
        self.candidate = candidate  # serving.runtime.ModelRuntime
        self.figures = Figures()
        self.pid = os.getpid()
        self.timeout_s = min(rollout.thresholds.timeout_ms / 1000.0, threading.TIMEOUT_MAX)
        self.slots_total = slots
        self.slots = threading.BoundedSemaphore(slots)
        self.pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix=f"candidate-v{rollout.version}")
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self.queued_bytes = 0
        self.hung = 0  # candidate calls past the timeout that still hold a slot

    @property
    def threshold(self) -> int:
        return int(self.rollout.percent * 100)  # of 10 000 buckets

    def start(self, run_job: Callable) -> None:
        threading.Thread(target=self._loop, args=(run_job,), name=f"rollout-compare-v{self.rollout.version}",
                         daemon=True).start()

    def stop(self) -> None:
        """No more jobs: the comparison thread ends after the one it runs, the pool takes no more."""
        self.stopped.set()
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass  # the thread sees `stopped` after its current job
        self.pool.shutdown(wait=False, cancel_futures=True)

    def offer(self, job: Job, size: int) -> bool:
        """Queue ``job`` unless the queue (by count or by bytes) is full; False when dropped."""
        with self._lock:
            if self.stopped.is_set() or self.queued_bytes + size > MAX_QUEUED_BYTES:
                return False
            self.queued_bytes += size
        job.size = size
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            self._release(size)
            return False
        return True

    def _release(self, size: int) -> None:
        with self._lock:
            self.queued_bytes -= size

    def _loop(self, run_job: Callable) -> None:
        while not self.stopped.is_set():
            job = self.queue.get()
            if job is None:
                return
            try:
                run_job(job)
            except Exception:  # noqa: BLE001 - never let the thread die
                log.exception("rollout comparison failed")
            finally:
                self._release(job.size)

    def call_candidate(self, fn: Callable, *args):
        """``fn(*args)`` on the candidate's pool within the timeout: the result, or raises
        ``TimeoutError`` / the call's own exception / ``Saturated``."""
        if not self.slots.acquire(blocking=False):
            raise Saturated(self.hung)
        state = {"timed_out": False, "finished": False}

        def run():
            try:
                return fn(*args)
            finally:
                with self._lock:
                    state["finished"] = True
                    if state["timed_out"]:
                        self.hung -= 1
                self.slots.release()

        try:
            future = self.pool.submit(run)
        except RuntimeError:  # the pool was shut down: this rollout just ended
            self.slots.release()
            raise Saturated(0) from None
        try:
            return future.result(timeout=self.timeout_s)
        except FutureTimeout:
            with self._lock:
                if not state["finished"]:  # still running: it holds its slot past the timeout
                    state["timed_out"] = True
                    self.hung += 1
            raise TimeoutError(f"timed out after {self.rollout.thresholds.timeout_ms:g} ms") from None


class Saturated(Exception):
    """Every candidate slot of this worker is taken (``hung``: by calls past their timeout)."""

    def __init__(self, hung: int):
        super().__init__(f"all candidate slots busy ({hung} held by calls past the timeout)")
        self.hung = hung


@dataclass
class Job:
    """A prediction to run off the request path and compare: ``other`` predicts the same rows."""

    active: Active
    other: object  # the runtime to predict on (the candidate for shadow, Production for canary)
    reparse: Callable
    answered_labels: object
    answered_version: str
    rid: str
    shadow: bool
    size: int = 0


def _routing_bucket(key: str) -> int:
    return zlib.crc32(key.encode("utf-8", "replace")) % 10000


def _kind(labels: np.ndarray, classes) -> str:
    if classes is not None:
        return "classification"
    return "regression" if labels.dtype.kind == "f" else "classification"


def _compare(a, b, classes) -> tuple[str, int, int, float]:
    """(kind, rows, equal rows, sum of relative differences) of two label arrays."""
    x, y = np.asarray(a), np.asarray(b)
    n = min(len(x), len(y)) if x.ndim and y.ndim else 0
    if n == 0:
        return "classification", 0, 0, 0.0
    x, y = x[:n], y[:n]
    kind = _kind(y, classes)
    if kind == "regression":
        xf, yf = x.astype(float).reshape(n, -1), y.astype(float).reshape(n, -1)
        with np.errstate(all="ignore"):
            rel = np.abs(xf - yf) / np.maximum(np.abs(yf), 1e-9)
        # a row off by 100 % or more, or not finite on either side, counts 1 (one wild row must not
        # outweigh the window, nor a NaN silence it)
        same = (xf == yf) | (np.isnan(xf) & np.isnan(yf))
        rel = np.where(same, 0.0, np.where(np.isfinite(rel), np.minimum(rel, 1.0), 1.0))
        return kind, n, int(same.all(axis=1).sum()), float(rel.mean(axis=1).sum())
    eq = (x.reshape(n, -1) == y.reshape(n, -1)).all(axis=1)
    return kind, n, int(eq.sum()), 0.0


def _publish(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` whole (a temp file renamed; no fsync: the figures are
    transient, rewritten every second, and readers only ever see a complete file)."""
    tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _same_input(a, b) -> bool:
    """True when runtimes ``a`` and ``b`` turn a body into the same checked array (same signature,
    both on the native array path), so one parse (and a copy of its array) serves both."""
    spec = getattr(a, "spec", None)
    return spec is not None and spec == getattr(b, "spec", None) and \
        getattr(a, "fast_path", None) == getattr(b, "fast_path", None) == "native"


def _copy_input(parsed):
    """``parsed`` with its own copy of the array (a transform may work on its input in place)."""
    from serving.schema import ParsedInput

    return ParsedInput(parsed.array.copy(), None, parsed.params, parsed.rows, parsed.fmt)


def _inline_ok(runtime) -> bool:
    """True when ``runtime`` predicts with this project's compiled arithmetic only (a forest or a
    linear model whose transforms are float operations): nothing in it can hang."""
    native = getattr(runtime, "native", None)
    return native is not None and getattr(native, "forest", None) is not None and \
        (native.ops is not None or not native.transforms)


def _size_of(parsed) -> int:
    """Bytes a queued comparison keeps alive for ``parsed`` (an estimate when the body is not known)."""
    array = getattr(parsed, "array", None)
    if isinstance(array, np.ndarray):
        return int(array.nbytes) * 2
    return int(getattr(parsed, "rows", 1) or 1) * 512


def _labels_for_log(labels) -> list:
    arr = np.asarray(labels)
    return arr[:LOGGED_LABELS].tolist() if arr.ndim else [arr.tolist()]


class RolloutController:
    """One worker's view of the model's canary or shadow; ``state`` is what requests read."""

    def __init__(self, manager, settings, metrics) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics.rollout
        self.state: Active | None = None
        self.last: kernel.Rollout | None = None  # the rollout the registry holds (running or ended)
        self.error: str | None = None
        self.figures_dir = Path(manager.cache.dir) / ".rollout"
        self._seen_stamp: tuple | None = None
        self._seen_at = 0.0
        self._failed: dict[str, float] = {}
        self._published_at = 0.0
        self._gauge: tuple | None = None
        self.slots = max(CANDIDATE_THREADS, int(getattr(settings, "threads", 1) or 1) + 1)
        self.queue_size = int(getattr(settings, "shadow_queue_size", 256))

    # -- following the registry (poller thread) -------------------------------------------------

    def follow(self, force: bool = False) -> None:
        """After a registry check: refresh the rollout, publish and judge this worker's figures."""
        try:
            if force or self._registry_changed():
                self._refresh()
            if self.state is not None:
                self._publish_and_judge()
        except Exception as exc:  # noqa: BLE001 - the poller must survive anything, requests go on
            log.exception("rollout follow failed: %s", first_line(str(exc)))

    def _registry_changed(self) -> bool:
        uri = self.settings.tracking_uri
        now = time.monotonic()
        if not uri.startswith("sqlite:///"):
            return True
        from serving.manager import sqlite_stamp

        stamp = sqlite_stamp(uri)
        if stamp == self._seen_stamp and now - self._seen_at < FULL_CHECK_S:
            return False
        self._seen_stamp, self._seen_at = stamp, now
        return True

    def _refresh(self) -> None:
        client = self.manager.client()
        name = self.settings.model_name
        try:
            rm = client.get_registered_model(name)
        except Exception as exc:  # noqa: BLE001 - unreachable: keep what we have
            log.debug("rollout: registry not readable: %s", first_line(str(exc)))
            self._seen_stamp = None
            return
        self.last = kernel.read(client, name, rm)
        ro = kernel.active(client, name, rm)
        cur = self.state
        if ro is None:
            if cur is not None:
                self._set(None)
            return
        if cur is not None and cur.rollout.id == ro.id:
            return
        failed_at = self._failed.get(ro.id)
        if failed_at is not None and time.monotonic() - failed_at < RETRY_LOAD_S:
            return
        candidate = self._load(ro.version)
        if candidate is None:
            self._failed[ro.id] = time.monotonic()
            return
        self.error = None
        self._set(Active(ro, candidate, self.queue_size, self.slots))

    def _load(self, version: str):
        """The candidate runtime (downloaded once into the shared cache, loaded, smoke-tested)."""
        from mlops import registry
        from serving.manager import _identity
        from serving.runtime import ModelRuntime

        kept = self.manager.loaded.get(version)
        if kept is not None:
            return kept
        try:
            mv = registry.get_version(self.manager.client(), self.settings.model_name, version)
            fetched = self.manager.cache.fetch(version, self.settings.tracking_uri, _identity(mv))
            t0 = time.perf_counter()
            runtime = ModelRuntime.load(fetched.path, self.manager._meta(mv), loaded_from="registry")
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot load is not routed to
            self.error = f"candidate v{version} cannot be loaded: {first_line(str(exc))}"
            log.error("rollout: %s; requests stay on Production", self.error,
                      extra={"fields": {"event": "rollout_load_failed", "candidate_version": version}})
            return None
        log.info("rollout: candidate v%s loaded next to Production in %.2fs (path %s)", version,
                 time.perf_counter() - t0, runtime.fast_path,
                 extra={"fields": {"event": "rollout_candidate_loaded", "candidate_version": version}})
        return runtime

    def _set(self, active: Active | None) -> None:
        old = self.state
        if active is not None:
            active.start(self._run_job)
        self.state = active
        if old is not None:
            old.stop()
        if active is None:
            self.metrics.set_state(None, None, 0, self._gauge)
            self._gauge = None
            if old is not None:
                log.info("rollout: %s of v%s no longer routed here", old.rollout.mode, old.rollout.version,
                         extra={"fields": {"event": "rollout_ended", "candidate_version": old.rollout.version}})
            return
        ro = active.rollout
        self.metrics.set_state(ro.mode, ro.version, ro.percent, self._gauge)
        self._gauge = (ro.mode, ro.version)
        log.info("rollout: %s of v%s at %s%% routed here", ro.mode, ro.version, ro.percent,
                 extra={"fields": {"event": "rollout_started", "mode": ro.mode, "candidate_version": ro.version,
                                   "percent": ro.percent}})

    # -- figures and judgement --------------------------------------------------------------------

    def _dir(self, ro: kernel.Rollout) -> Path:
        return self.figures_dir / ro.id

    def _publish_and_judge(self) -> None:
        act = self.state
        now = time.monotonic()
        if act is None or now - self._published_at < PUBLISH_EVERY_S:
            return
        self._published_at = now
        folder = self._dir(act.rollout)
        folder.mkdir(parents=True, exist_ok=True)
        _publish(folder / f"{os.getpid()}.json", orjson.dumps(act.figures.snapshot()))
        figures = kernel.table(self.merged(act.rollout))
        verdict, why = kernel.judge(act.rollout, figures)
        if verdict == "breach":
            self._end(act, kernel.WITHDRAWN, why, figures)
        elif verdict == "hold" and act.rollout.auto_promote and act.rollout.mode == "canary":
            self._end(act, kernel.PROMOTED, why, figures)

    def merged(self, ro: kernel.Rollout) -> dict:
        """Every worker's figures for ``ro`` (this replica), merged."""
        snaps = []
        folder = self._dir(ro)
        for path in folder.glob("*.json") if folder.is_dir() else ():
            try:
                snaps.append(orjson.loads(path.read_bytes()))
            except (OSError, ValueError) as exc:
                log.warning("ignoring rollout figures %s: %s", path.name, exc)
        return merge(snaps)

    def _end(self, act: Active, state: str, why: str, figures: dict) -> None:
        ro = act.rollout
        self.figures_dir.mkdir(parents=True, exist_ok=True)
        with open(self.figures_dir / "judge.lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return  # another worker of this replica is ending it
            try:
                ended = kernel.end(self.manager.client(), self.settings.model_name, ro.id, state, why,
                                   {"figures": figures})
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        if ended is not None:
            self.metrics.ended.labels(ro.mode, state).inc()
            level = logging.ERROR if state == kernel.WITHDRAWN else logging.WARNING
            log.log(level, "rollout: %s of v%s %s: %s", ro.mode, ro.version, state, why,
                    extra={"fields": {"event": f"rollout_{state}", "mode": ro.mode, "candidate_version": ro.version,
                                      "production_version": ro.production_version, "reason": why}})
        self._set(None)
        self._seen_stamp = None

    def report(self) -> dict | None:
        """The ``rollout`` section of /health: state, candidate and this replica's figures."""
        act, last = self.state, self.last
        ro = act.rollout if act is not None else last
        if ro is None and self.error is None:
            return None
        out: dict = {"error": self.error}
        if ro is not None:
            out.update({"id": ro.id, "mode": ro.mode, "candidate_version": ro.version, "state": ro.state,
                        "routed_here": act is not None, "percent": ro.percent, "reason": ro.reason,
                        "production_version": ro.production_version, "queue_size": self.queue_size})
            out["figures"] = kernel.table(self.merged(ro)) if act is not None else (ro.verdict or {}).get("figures")
        return out

    # -- requests ---------------------------------------------------------------------------------

    def predict(self, predict_rows: Callable, production, parsed, with_proba: bool, reparse: Callable,
                routing_key: str | None, rid: str, size: int = 0):
        """Answer one request: ``(runtime that answered, prediction)``; see the module docstring.
        ``size``: the request body's bytes (what a queued comparison keeps alive)."""
        act = self.state
        if act is None or act.pid != os.getpid():
            return production, predict_rows(production, parsed, with_proba)
        ro = act.rollout
        size = max(size, _size_of(parsed))
        if _same_input(production, act.candidate):  # the candidate would parse the body the same way:
            # it gets a copy, taken now, before either version's transforms could change the array
            copy = _copy_input(parsed)
            reparse = lambda _rt: copy  # noqa: E731
        if ro.mode == "canary":
            bucket = _routing_bucket(routing_key) if routing_key else random.randrange(10000)
            if bucket < act.threshold:
                answered = self._try_candidate(act, predict_rows, parsed, with_proba, reparse, rid)
                if answered is not None:
                    self._offer(act, Job(act, production, lambda _rt, p=parsed: p, answered.labels,
                                         act.candidate.version, rid, shadow=False), size)
                    return act.candidate, answered
        t0 = time.perf_counter()
        try:
            result = predict_rows(production, parsed, with_proba)
        except Exception:
            act.figures.observe("production", None)
            self.metrics.observe(production.version, "production", None)
            raise
        seconds = time.perf_counter() - t0
        act.figures.observe("production", seconds * 1000)
        self.metrics.observe(production.version, "production", seconds)
        if ro.mode == "shadow" and random.randrange(10000) < act.threshold:
            self._offer(act, Job(act, act.candidate, reparse, result.labels, production.version, rid, shadow=True), size)
        return production, result

    def _try_candidate(self, act: Active, predict_rows: Callable, parsed, with_proba: bool, reparse: Callable,
                       rid: str):
        """The candidate's prediction, or None: it raised or timed out (counted as a candidate
        error), or cannot answer this request as asked (Production answers, nothing counted)."""
        cand = act.candidate
        t0 = time.perf_counter()
        try:
            if _inline_ok(cand) and act.hung == 0:
                # the compiled arithmetic of a forest or linear model, no user code: called on this
                # thread (no hand-off); one slower than the timeout still counts as an error
                result = predict_rows(cand, reparse(cand), with_proba)
                if time.perf_counter() - t0 > act.timeout_s:
                    raise TimeoutError(f"took {(time.perf_counter() - t0) * 1000:.0f} ms, over the "
                                       f"{act.rollout.thresholds.timeout_ms:g} ms timeout")
            else:
                result = act.call_candidate(lambda: predict_rows(cand, reparse(cand), with_proba))
        except Saturated as exc:
            if exc.hung == 0:  # busy with calls still within their time: not the candidate's fault
                log.debug("canary v%s saturated; Production answered request %s", cand.version, rid)
                return None
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 - any candidate failure: Production answers
            why = f"{type(exc).__name__}: {first_line(getattr(exc, 'message', None) or str(exc))}"
        else:
            if with_proba and result.proba is None:
                # asked for probabilities the candidate has none of: Production answers as asked
                log.debug("canary v%s has no probabilities; Production answered request %s", cand.version, rid)
                return None
            seconds = time.perf_counter() - t0
            act.figures.observe("candidate", seconds * 1000)
            self.metrics.observe(cand.version, "canary", seconds)
            return result
        act.figures.observe("candidate", None)
        self.metrics.observe(cand.version, "canary", None)
        log.warning("canary v%s failed (%s); Production answered", cand.version, why,
                    extra={"fields": {"event": "canary_error", "request_id": rid, "candidate_version": cand.version,
                                      "error": why}})
        return None

    def _offer(self, act: Active, job: Job, size: int) -> None:
        if not act.offer(job, size):
            act.figures.drop()
            self.metrics.dropped.inc()

    def _run_job(self, job: Job) -> None:
        act, other = job.active, job.other
        t0 = time.perf_counter()
        try:
            if job.shadow:  # the candidate, within its timeout (a hung one is counted, not waited on)
                labels = act.call_candidate(lambda: other.predict(job.reparse(other), with_proba=False)).labels
            else:
                labels = other.predict(job.reparse(other), with_proba=False).labels
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, Saturated) and exc.hung == 0:  # not the candidate's fault: dropped
                act.figures.drop()
                self.metrics.dropped.inc()
                return
            if job.shadow:
                act.figures.observe("candidate", None)
                self.metrics.observe(other.version, "shadow", None)
            log.warning("%s v%s failed on request %s: %s", "shadow" if job.shadow else "comparison", other.version,
                        job.rid, first_line(getattr(exc, "message", None) or str(exc)),
                        extra={"fields": {"event": "shadow_error", "request_id": job.rid,
                                          "candidate_version": act.candidate.version}})
            return
        seconds = time.perf_counter() - t0
        if job.shadow:
            act.figures.observe("candidate", seconds * 1000)
            self.metrics.observe(other.version, "shadow", seconds)
            cand_labels, prod_labels = labels, job.answered_labels
            prod_version = job.answered_version
        else:
            cand_labels, prod_labels = job.answered_labels, labels
            prod_version = other.version
        kind, n, equal, rel = _compare(cand_labels, prod_labels, getattr(other, "classes", None))
        act.figures.compare(kind, n, equal, rel)
        self.metrics.compared.labels(act.candidate.version).inc(n)
        self.metrics.agreeing.labels(act.candidate.version).inc(equal)
        fields = {"event": "shadow_prediction" if job.shadow else "canary_comparison", "request_id": job.rid,
                  "production_version": prod_version, "candidate_version": act.candidate.version,
                  "rows": n, "agreeing_rows": equal}
        if job.shadow:
            fields.update({"production_predictions": _labels_for_log(prod_labels),
                           "candidate_predictions": _labels_for_log(cand_labels),
                           "candidate_ms": round(seconds * 1000, 3)})
        log.info("%s v%s vs Production v%s: %d of %d rows agree", "shadow" if job.shadow else "canary",
                 act.candidate.version, prod_version, equal, n, extra={"fields": fields})


def route_hook(routes) -> Callable:
    """``(runtime, parsed, with_proba, reparse) -> (runtime that answered, prediction)`` for the V2
    routes: the canary/shadow routing of ``routes`` (a ``serving.routes.Routes``) for one request."""
    from flask import g, request

    def route(runtime, parsed, with_proba: bool, reparse: Callable):
        return routes.rollout.predict(routes.predict_rows, runtime, parsed, with_proba, reparse,
                                      request.headers.get("X-Routing-Key"), g.rid,
                                      8 * (request.content_length or 0))  # the decoded V2 document it keeps

    return route


__all__ = ["Active", "Figures", "RolloutController", "merge", "route_hook"]
