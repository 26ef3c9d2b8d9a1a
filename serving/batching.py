"""Adaptive micro-batching: concurrent predictions on one model version merged into one call.

Each worker keeps one :class:`Batcher` per loaded version (so a batch never mixes versions). A
request whose rows were validated calls :meth:`Batcher.predict`:

* nothing is running: it predicts at once, alone, on its own thread (no wait is added);
* a prediction is running: it queues. When the running call returns, the first queued request
  leads the next call: it takes every queued request *compatible* with its own (same prediction
  path, same columns and dtypes, same outputs asked, no params) up to ``BATCH_MAX_ROWS`` rows,
  merges their rows into one input, predicts once and hands every request its own rows' results
  (split by row offsets). Requests it could not take lead the calls after it.

``BATCH_MAX_WAIT_MS`` > 0 lets a leader wait up to that long for more requests before it predicts
(default 0: never). Only the direct scikit-learn paths are merged (native array, compiled
pipeline, typed DataFrame): their predictions are computed row by row, so a merged call gives
every row the same bits as a call of its own (``tests/serving/test_batching.py`` checks this on
every path). Custom pyfunc models, requests with params and columns without one numpy dtype are
predicted alone. If a merged call fails, each of its requests is predicted alone, so one request
the model rejects fails only itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from serving.schema import ParsedInput, TypedColumns

log = logging.getLogger("serving.batching")

#: (parsed, with_proba) -> Prediction: one call of the model runtime
PredictFn = Callable[[ParsedInput, bool], Any]
#: (requests in the call, rows in the call, queue waits of its requests in seconds) -> None
ObserveFn = Callable[[int, int, list[float]], None]


class _Job:
    """One request's rows waiting for (or holding) a turn."""

    __slots__ = ("parsed", "with_proba", "key", "queued_at", "done", "lead", "result", "error")

    def __init__(self, parsed: ParsedInput, with_proba: bool, key: tuple):
        self.parsed = parsed
        self.with_proba = with_proba
        self.key = key
        self.queued_at = time.perf_counter()
        self.done = threading.Event()
        self.lead = False
        self.result: Any = None
        self.error: BaseException | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class Batcher:
    """Merges concurrent compatible predictions of one model version (see the module doc)."""

    def __init__(self, predict: PredictFn, path: str, max_rows: int, max_wait_s: float,
                 observe: ObserveFn | None = None):
        self._predict = predict
        self._path = path  # the runtime's prediction path: native, compiled, frame or pyfunc
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._observe = observe
        self._cond = threading.Condition(threading.Lock())
        self._busy = False
        self._queue: deque[_Job] = deque()

    def predict(self, parsed: ParsedInput, with_proba: bool) -> Any:
        """The prediction of ``parsed`` (its own rows only), merged with concurrent requests."""
        key = merge_key(parsed, with_proba, self._path)
        if key is None or parsed.rows > self.max_rows:
            return self._predict(parsed, with_proba)
        job = _Job(parsed, with_proba, key)
        with self._cond:
            if self._busy:
                self._queue.append(job)
                self._cond.notify()
                lead = False
            else:
                self._busy = True
                lead = True
        if not lead:
            job.done.wait()
            if not job.lead:
                return job.outcome()
        self._lead(job)
        return job.outcome()

    def _lead(self, job: _Job) -> None:
        """Run one call with ``job`` and the compatible queued requests, then pass the turn on."""
        batch = [job]
        try:
            with self._cond:
                if self.max_wait_s > 0:
                    self._wait_for_more(job)
                rows = job.parsed.rows
                kept: deque[_Job] = deque()
                for other in self._queue:
                    if other.key == job.key and rows + other.parsed.rows <= self.max_rows:
                        batch.append(other)
                        rows += other.parsed.rows
                    else:
                        kept.append(other)
                self._queue = kept
            self._run(batch)
        finally:
            for other in batch[1:]:
                if other.result is None and other.error is None:  # the call was cut short (BaseException)
                    other.error = RuntimeError("the merged model call was interrupted")
                other.done.set()
            with self._cond:
                if self._queue:
                    nxt = self._queue.popleft()
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._busy = False

    def _wait_for_more(self, job: _Job) -> None:
        """Up to BATCH_MAX_WAIT_MS after ``job`` queued, until the queue holds max_rows rows."""
        deadline = job.queued_at + self.max_wait_s
        while True:
            queued = job.parsed.rows + sum(o.parsed.rows for o in self._queue if o.key == job.key)
            left = deadline - time.perf_counter()
            if queued >= self.max_rows or left <= 0:
                return
            self._cond.wait(left)

    def _run(self, batch: list[_Job]) -> None:
        started = time.perf_counter()
        waits = [started - j.queued_at for j in batch]
        rows = sum(j.parsed.rows for j in batch)
        if len(batch) == 1:
            _alone(self._predict, batch[0])
        else:
            try:
                merged = merge([j.parsed for j in batch])
                result = self._predict(merged, batch[0].with_proba)
                parts = split(result, [j.parsed.rows for j in batch])
            except Exception as exc:  # noqa: BLE001 - any failure: each request on its own
                log.info("a merged call of %d requests failed (%s): predicting them one by one",
                         len(batch), type(exc).__name__)
                for j in batch:
                    _alone(self._predict, j)
            else:
                for j, part in zip(batch, parts, strict=True):
                    j.result = part
        if self._observe is not None:
            try:
                self._observe(len(batch), rows, waits)
            except Exception:  # noqa: BLE001 - metrics never fail a prediction
                log.exception("batch metrics failed")


def _alone(predict: PredictFn, job: _Job) -> None:
    try:
        job.result = predict(job.parsed, job.with_proba)
    except Exception as exc:  # noqa: BLE001 - raised again in the request's own thread
        job.error = exc


def merge_key(parsed: ParsedInput, with_proba: bool, path: str) -> tuple | None:
    """What two requests must share to be predicted in one call (None: never merged).

    The key names the prediction path the runtime will take for these rows and their exact
    layout (dtypes per column), so a merged input takes the same path, with the same types, as
    each of its parts would alone.
    """
    if parsed.params:
        return None
    if parsed.array is not None:
        if path != "native" or parsed.array.ndim != 2:
            return None
        return ("array", with_proba, parsed.array.dtype.str, parsed.array.shape[1])
    if path not in ("compiled", "frame"):
        return None
    # The compiled pipeline reads the typed arrays as they are; a DataFrame built from them infers
    # text columns per call (pandas' string inference), so the frame path merges numbers only.
    kinds = "biufcUSOM" if path == "compiled" else "biuf"
    if parsed.columns is not None and parsed._frame is None:
        cols = parsed.columns
        dtypes = []
        for name in cols.names:
            values = cols.data.get(name)
            if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype.kind not in kinds:
                return None
            dtypes.append(values.dtype.str)
        return ("columns", with_proba, tuple(cols.names), tuple(dtypes))
    frame = parsed._frame
    if frame is None or not hasattr(frame, "dtypes"):
        return None
    dtypes = []
    for dtype in frame.dtypes:
        kind = getattr(dtype, "kind", None)
        if not isinstance(dtype, np.dtype) or kind not in "biuf":
            return None  # categoricals, nullable and extension dtypes: predicted alone
        dtypes.append(dtype.str)
    return ("frame", with_proba, tuple(map(str, frame.columns)), tuple(dtypes))


def merge(parts: list[ParsedInput]) -> ParsedInput:
    """The rows of ``parts`` (all with one merge key), in order, as one input."""
    first = parts[0]
    rows = sum(p.rows for p in parts)
    if first.array is not None:
        return ParsedInput(np.concatenate([p.array for p in parts]), None, None, rows, first.fmt)
    if first.columns is not None and first._frame is None:
        names = first.columns.names
        data = {n: np.concatenate([p.columns.data[n] for p in parts]) for n in names}
        return ParsedInput(None, None, None, rows, first.fmt, TypedColumns(names, data, rows))
    import pandas as pd

    frame = pd.concat([p._frame for p in parts], ignore_index=True)
    return ParsedInput(None, frame, None, rows, first.fmt)


def split(result: Any, sizes: list[int]) -> list[Any]:
    """One Prediction per part: its own rows of the labels and probabilities."""
    labels, proba = np.asarray(result.labels), result.proba
    total = sum(sizes)
    if labels.shape[:1] != (total,) or (proba is not None and np.shape(proba)[:1] != (total,)):
        raise ValueError(f"the merged call answered {labels.shape[:1]} rows for {total}")
    out = []
    at = 0
    for n in sizes:
        part_proba = None if proba is None else proba[at:at + n]
        out.append(type(result)(labels[at:at + n], part_proba, result.classes, n))
        at += n
    return out


def exactness(parts: list[ParsedInput], predict: PredictFn, path: str) -> str | None:
    """Why merging would change bits for these requests (None: every merged row equals its own call).

    ``parts`` are requests of one row or a few, each validated alone as a client's would be. They
    are merged as the batcher would merge them (all, and a short run of them) with probabilities
    asked for, and each request's rows of the merged call are compared with its own call, bit for
    bit. Linear models fail this on most machines: the BLAS routine behind their matrix product
    sums in an order that depends on the number of rows.
    """
    from serving.predictors import same_bits

    groups: dict[tuple, list[ParsedInput]] = {}
    for p in parts:
        key = merge_key(p, True, path)
        if key is not None:
            groups.setdefault(key, []).append(p)
    group = max(groups.values(), key=len, default=[])
    if len(group) < 2:
        return "no rows to check merging on"
    alone = [predict(p, True) for p in group]
    for start, stop in ((0, len(group)), (1, min(6, len(group)))):
        members = group[start:stop]
        merged = split(predict(merge(members), True), [p.rows for p in members])
        for own, got in zip(alone[start:stop], merged, strict=True):
            if not same_bits(np.asarray(own.labels), np.asarray(got.labels)):
                return f"predictions of a merged call differ from one request's own ({len(members)} requests)"
            if (own.proba is None) != (got.proba is None) or (
                    own.proba is not None and not same_bits(own.proba, got.proba)):
                return (f"probabilities of a merged call differ in the last bits from one request's own "
                        f"({len(members)} requests; the model's matrix product depends on the row count)")
    return None
