"""The Spark side of a job: the session, progress from Spark's status tracker, one-line errors.

A session that is already running (``spark-submit``, a notebook, the tests' fixture) is used as is
and left running; otherwise one is started for ``--master`` (default ``local[*]``) and stopped at
the end. Executor task failures are not logged by the JVM (their stack traces would bury the one
line the job fails with); ``-v`` shows Spark's warnings again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlops.util import first_line

log = logging.getLogger(__name__)

_LOG4J = """\
status = error
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yyyy-MM-dd HH:mm:ss,SSS}} %p spark.%c{{1}}: %m%n
rootLogger.level = {level}
rootLogger.appenderRef.console.ref = console
logger.spark.name = org.apache.spark
logger.spark.level = {level}
logger.hadoop.name = org.apache.hadoop
logger.hadoop.level = {level}
{quiet}
"""
# Loggers that print a task's failure with its JVM stack trace (the job's error says it in one line).
_QUIET = ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager",
          "org.apache.spark.scheduler.TaskSchedulerImpl", "org.apache.spark.api.python.PythonRunner",
          "org.apache.spark.sql.execution.datasources.FileFormatWriter", "org.apache.hadoop.util.NativeCodeLoader",
          "org.apache.spark.util.Utils", "org.apache.spark.sql.execution.python.ArrowPythonRunner")

#: Settings of a session started here; ``--conf`` overrides them.
DEFAULTS = {
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.enabled": "false",
    "spark.sql.files.maxPartitionBytes": "32m",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
    "spark.sql.parquet.compression.codec": "snappy",
}
#: Local masters fork Python workers from :mod:`mlops.scoring.daemon` (MLflow imported once); a
#: cluster does too when its workers have the project installed: ``--conf`` it there.
DAEMON = {"spark.python.daemon.module": "mlops.scoring.daemon"}


def active_session() -> Any | None:
    """The SparkSession already running in this process, or None."""
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def _log4j_file(verbose: bool) -> Path:
    quiet = "" if verbose else "\n".join(
        f"logger.q{i}.name = {name}\nlogger.q{i}.level = off" for i, name in enumerate(_QUIET))
    text = _LOG4J.format(level="warn" if verbose else "error", quiet=quiet)
    fd, path = tempfile.mkstemp(prefix="mlops-score-log4j2-", suffix=".properties")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return Path(path)


def start_session(master: str | None, app_name: str, conf: dict[str, str], verbose: bool = False) -> tuple[Any, bool]:
    """(session, started here): the running session, else a new one for ``master``."""
    import warnings

    from pyspark.sql import SparkSession

    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas", category=FutureWarning)
    for name in ("py4j", "mlflow"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    running = active_session()
    if running is not None:
        log.info("using the running Spark session (master %s)", running.sparkContext.master)
        return running, False
    # Executors in local mode (and on a cluster whose workers share this venv path) run this Python.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master:
        builder = builder.master(master)
    log4j = _log4j_file(verbose)
    local = bool(master) and master.startswith("local")
    settings = {**DEFAULTS, **(DAEMON if local else {}), "spark.driver.extraJavaOptions": f"-Dlog4j2.configurationFile=file:{log4j}", **conf}
    for key, value in settings.items():
        builder = builder.config(key, value)
    t0 = time.monotonic()
    session = builder.getOrCreate()
    log4j.unlink(missing_ok=True)
    log.info("Spark %s session started in %.1f s (master %s, %s cores by default)", session.version,
             time.monotonic() - t0, session.sparkContext.master, session.sparkContext.defaultParallelism)
    return session, True


class Progress:
    """Polls Spark's status tracker and reports (tasks done, tasks in all, stage id) of running stages."""

    def __init__(self, spark: Any, report: Callable[[int, int], None] | None, interval: float = 0.25,
                 log_every: float = 15.0):
        self.tracker = spark.sparkContext.statusTracker()
        self.report = report
        self.interval = interval
        self.log_every = log_every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mlops-score-progress", daemon=True)
        self.seen_total = 0

    def __enter__(self) -> Progress:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _poll(self) -> tuple[int, int] | None:
        done = total = 0
        for sid in self.tracker.getActiveStageIds():
            info = self.tracker.getStageInfo(sid)
            if info is not None:
                done += info.numCompletedTasks
                total += info.numTasks
        return (done, total) if total else None

    def _run(self) -> None:
        last, last_log = None, time.monotonic()
        while not self.stop.wait(self.interval):
            try:
                state = self._poll()
            except Exception:  # noqa: BLE001 - the session is stopping; progress is best effort
                return
            if state is None or state == last:
                continue
            last = state
            self.seen_total = max(self.seen_total, state[1])
            if self.report is not None:
                self.report(*state)
            if time.monotonic() - last_log >= self.log_every:
                last_log = time.monotonic()
                log.info("partitions done: %d/%d", *state)


@contextlib.contextmanager
def cancel_on_interrupt(spark: Any) -> Iterator[threading.Event]:
    """Ctrl-C cancels the running Spark jobs (from another thread) and sets the event it yields.

    PySpark's own SIGINT handler cancels from inside the interrupted Py4J call, which re-enters its
    connection and prints stack traces; here the blocked call returns because its job was
    cancelled, and the caller raises KeyboardInterrupt. Only in the main thread (signals).
    """
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum: int, frame: Any) -> None:
        if not interrupted.is_set():
            interrupted.set()
            log.info("interrupted: cancelling the Spark job")
            threading.Thread(target=spark.sparkContext.cancelAllJobs, name="mlops-score-cancel", daemon=True).start()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def wait_idle(spark: Any, timeout: float = 60.0) -> bool:
    """Wait until no job is active and no executor runs a task (a cancelled job's tasks may still
    be writing for a moment); False if that did not happen within ``timeout`` seconds."""
    sc = spark.sparkContext
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            busy = bool(sc.statusTracker().getActiveJobsIds()) or any(
                e.numRunningTasks() for e in sc._jsc.sc().statusTracker().getExecutorInfos())
        except Exception:  # noqa: BLE001 - a stopped context runs nothing
            return True
        if not busy:
            return True
        time.sleep(0.1)
    return False


_ERROR_CLASS = re.compile(r"^\[[A-Z_.]+\]\s*")
_SQLSTATE = re.compile(r"\s*SQLSTATE: \w+\.?\s*$")
_PY_LAST = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Warning)): (.+)$")


def job_error(exc: BaseException) -> str:
    """One line for a failed Spark job: the Python worker's own error, or Spark's message, no trace."""
    text = str(getattr(exc, "desc", None) or exc)
    if "Failed to enforce schema" in text and "Error: " in text:  # pyfunc dumps the whole batch first
        reason = text.rsplit("Error: ", 1)[1].strip().splitlines()[0]
        return f"the model refused a batch of rows: {reason}"
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    # A Python worker's traceback: its last "SomeError: message" line says what went wrong.
    if "Traceback (most recent call last)" in text:
        for line in reversed(lines):
            m = _PY_LAST.match(line.strip())
            if m:
                kind = m.group(1).rsplit(".", 1)[-1]
                return f"{kind}: {m.group(2)}" if kind not in ("MlflowException",) else m.group(2)
    for line in lines:
        line = line.strip()
        if line.startswith(("at ", "==", "Caused by")) or not line:
            continue
        line = _SQLSTATE.sub("", _ERROR_CLASS.sub("", line))
        return first_line(line)
    return first_line(exc)


__all__ = ["DEFAULTS", "Progress", "active_session", "cancel_on_interrupt", "job_error", "start_session", "wait_idle"]
