"""Structured logs: one JSON object per line to ``LOG_DIR/app.log`` (size-rotated) and stdout.

Several gunicorn workers append to the same file. Rotation is made safe for that: the size is
read from the file itself, the rename happens under an advisory lock after re-checking, and a
worker whose file was rotated away by another reopens the new one before its next line.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path

import orjson


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "pid", "msg", ...fields}``; fields come from ``extra={"fields": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        cached = record.__dict__.get("_json_line")
        if cached is not None:  # the file and stdout handlers share one formatting
            return cached
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        fields = record.__dict__.get("fields")
        if fields:
            out.update(fields)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        line = orjson.dumps(out, default=str).decode()
        record._json_line = line
        return line


class SharedRotatingFileHandler(logging.Handler):
    """Size-rotated log file that several processes append to."""

    def __init__(self, path: Path, max_bytes: int, backups: int):
        super().__init__()
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        self._fh = None
        self._open()

    def _open(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
        self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open, closed in close()
        self._ino = os.fstat(self._fh.fileno()).st_ino

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
            try:
                st = os.stat(self.path)
                if st.st_ino != self._ino:
                    self._open()
                    st = os.fstat(self._fh.fileno())
            except FileNotFoundError:
                self._open()
                st = os.fstat(self._fh.fileno())
            if self.max_bytes and st.st_size + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)  # O_APPEND: one write per line, lines never interleave
        except Exception:  # noqa: BLE001 - logging must never break a request
            self.handleError(record)

    def _rotate(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                st = os.stat(self.path)
                if st.st_ino == self._ino:  # not already rotated by another worker
                    if self.backups > 0:
                        for i in range(self.backups - 1, 0, -1):
                            src = self.path.with_name(f"{self.path.name}.{i}")
                            if src.exists():
                                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
                        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
                    else:
                        os.truncate(self.path, 0)
            except FileNotFoundError:
                pass
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._open()

    def close(self) -> None:
        try:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
        finally:
            super().close()


class StdoutHandler(logging.StreamHandler):
    """JSON lines to the current ``sys.stdout`` (looked up per line: gunicorn may replace it)."""

    def __init__(self):
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


_CONFIGURED: dict[str, tuple] = {}


def setup(log_dir: Path, level: str = "INFO", max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> Path:
    """Send the ``serving`` and ``mlops`` loggers to ``log_dir/app.log`` and stdout (idempotent)."""
    path = Path(log_dir) / "app.log"
    key = str(path.resolve())
    handlers = _CONFIGURED.get(key)
    if handlers is None:
        fmt = JsonFormatter()
        file_handler = SharedRotatingFileHandler(path, max_bytes, backups)
        stdout_handler = StdoutHandler()
        for h in (file_handler, stdout_handler):
            h.setFormatter(fmt)
        handlers = (file_handler, stdout_handler)
        _CONFIGURED.clear()
        _CONFIGURED[key] = handlers
    for name, lvl in (("serving", level), ("mlops", "WARNING" if level != "DEBUG" else "DEBUG")):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, (SharedRotatingFileHandler, StdoutHandler)):
                logger.removeHandler(h)
        for h in handlers:
            logger.addHandler(h)
        logger.setLevel(lvl)
        logger.propagate = False
    for noisy in ("mlflow", "alembic", "urllib3", "botocore", "skops"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
    return path
