"""Small helpers shared by the operator side: one error line, atomic writes, paging, waits, ports.

Nothing here imports MLflow or any other heavy dependency: the kernel (``config``, ``registry``,
``model_io``) and the CLI's cheap commands use it too.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

FIRST_LINE_CHARS = 500  # where an error's first line is cut, everywhere
LOCALHOST = "127.0.0.1"


def first_line(error: BaseException | str, limit: int = FIRST_LINE_CHARS) -> str:
    """The first non-blank line of an error (MLflow's ``message`` if it has one), cut at ``limit``.

    An exception without any text gives its type's name.
    """
    if isinstance(error, BaseException):
        text = str(getattr(error, "message", None) or error or "").strip()
        fallback = type(error).__name__
    else:
        text, fallback = str(error).strip(), "unknown error"
    return text.splitlines()[0][:limit] if text else fallback


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = 0o644, prefix: str | None = None, suffix: str = "") -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only when the block completes.

    Written to a temporary file in the same folder (``prefix``/``suffix`` name it; default
    ``.<name>.``), flushed and fsynced, then renamed over ``path``; on any error, or an interrupt,
    the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix or f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically, with permissions ``mode``."""
    with atomic_writer(path, mode=mode) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def pages(search: Callable[..., Any], /, **kwargs: Any) -> Iterator[Any]:
    """Every page of an MLflow ``search_*`` call (``page_token`` followed until it is empty)."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield page
        token = page.token
        if not token:
            return


def paged(search: Callable[..., Any], /, **kwargs: Any) -> Iterator[Any]:
    """Every item of every page of an MLflow ``search_*`` call."""
    for page in pages(search, **kwargs):
        yield from page


def wait_for(probe: Callable[[], tuple[bool, str]], timeout: float, interval: float = 0.25) -> tuple[bool, str]:
    """Call ``probe`` until it answers ``(True, detail)`` or ``timeout`` seconds have passed.

    The probe is asked at least once; it may raise to stop the wait early. Returns
    ``(ok, last detail)``.
    """
    deadline = time.monotonic() + timeout
    while True:
        ok, last = probe()
        if ok or time.monotonic() >= deadline:
            return ok, last
        time.sleep(interval)


def http_probe(url: str, ok: Iterable[int] = (200,), timeout: float = 2) -> Callable[[], tuple[bool, str]]:
    """A probe for :func:`wait_for`: GET ``url``; healthy on one of the ``ok`` statuses."""
    import requests

    wanted = tuple(ok)

    def probe() -> tuple[bool, str]:
        try:
            r = requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            return False, type(exc).__name__
        return r.status_code in wanted, f"HTTP {r.status_code} {r.text[:200]}"

    return probe


#: where free_port looks: below the kernel's ephemeral range (32768-60999 on Linux), so the source
#: port of an outgoing connection can never take a port between free_port() and the server's bind
FREE_PORTS = range(20000, 32768)
_RESERVED = {25000, 25001, 25432, 29000}  # the local stack's default ports
_handed_out: set[int] = set()


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free right now on ``host``, never the same twice in one process.

    The kernel's own choice (bind to port 0) comes from its ephemeral range, which it also uses
    for the source port of every outgoing connection: between this call and the server's bind,
    a client connection could take it ("address already in use"). So the port is picked at random
    below that range, from a start that differs per process, and checked by binding it.
    """
    import random

    rng = random.Random(os.getpid() * 7919 + time.monotonic_ns())
    for _ in range(200):
        port = rng.choice(FREE_PORTS)
        if port in _RESERVED or port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # that range is crowded: the kernel's choice
        s.bind((host, 0))
        return s.getsockname()[1]


__all__ = ["FIRST_LINE_CHARS", "atomic_write", "atomic_writer", "first_line", "free_port", "http_probe",
           "pages", "paged", "wait_for"]
