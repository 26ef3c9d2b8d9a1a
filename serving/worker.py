"""The gunicorn worker of the prediction service: ``gthread`` with request heads read by the main
loop and a deadline on reading a request.

gunicorn's ``gthread`` worker hands a new connection to a thread once its first bytes arrive; the
thread then reads the request line and headers with blocking reads, so a client that sends
``POST /invocations HTTP/1.1`` and stops holds that thread (slowloris: as many such clients as
threads stop the service). Here the worker's main loop reads each request head without blocking
(new connections and keep-alive ones alike) and hands the connection to a thread only once the
head is complete: an unfinished head costs no thread, and is dropped once ``READ_TIMEOUT_S`` has
passed since the connection was taken.

The thread then gives the rest of the request (the body, through the app) a read deadline
(``READ_TIMEOUT_S`` again, counted from the moment it takes the connection): each read waits at
most for what is left of it, and once it has passed the connection reads as closed. A client that
stalls in its body costs one thread for at most the deadline; the app answers 400/408. Writes
are not bounded by the deadline (predictions may take longer than a read). Closing a connection
never waits on the client either (see ``DeadlineConn.close``). Requests gunicorn refuses itself
(an unparsable request line or headers) answer JSON like every error of the service.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import time
from functools import partial

from gunicorn import util as gunicorn_util
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from serving.settings import DEFAULT_READ_TIMEOUT_S


class DeadlineUnreader(SocketUnreader):
    """A socket reader that reads EOF once ``deadline`` (``time.monotonic()``) has passed.

    ``expired`` says the deadline cut a read short; ``abandoned`` that the app gave up on the
    body (malformed or cut short): either way the connection is closed after the response.
    """

    deadline: float | None = None
    expired: bool = False
    abandoned: bool = False

    def chunk(self) -> bytes:
        """The next bytes from the socket, or ``b""`` when the deadline is over."""
        if self.deadline is None or self.abandoned:
            return b"" if self.abandoned else super().chunk()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.expired = True
            return b""
        prior = self.sock.gettimeout()
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(self.mxchunk)
        except TimeoutError:
            self.expired = True
            return b""
        finally:
            self.sock.settimeout(prior)


class DeadlineConn(TConn):
    """A connection whose every request must be read within ``read_timeout_s``."""

    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    #: the bytes of the request head read by the main loop, handed to the parser in ``init``
    head: bytes = b""
    head_deadline: float = 0.0

    def init(self) -> None:
        """Called by the worker thread each time it takes the connection (new or keep-alive)."""
        super().init()
        unreader = getattr(self.parser, "unreader", None)
        if type(unreader) is SocketUnreader:
            unreader.__class__ = DeadlineUnreader
        if isinstance(unreader, DeadlineUnreader):
            unreader.deadline = time.monotonic() + self.read_timeout_s
            unreader.expired = unreader.abandoned = False
        if self.head and unreader is not None:
            unreader.unread(self.head)
        self.head = b""

    def close(self, graceful: bool = False) -> None:
        """Close without waiting on the client.

        gunicorn's graceful close half-closes, then waits up to 2 s for the client to close its
        side, on the worker's main loop: a client that never does (every stalled one) would
        stop that worker from accepting or dispatching anything for 2 s per connection. Here the
        unread bytes already received are drained without blocking (so the kernel does not reset
        the connection over them and cut the response short), then the socket is closed.
        """
        if graceful:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                drained = 0
                while drained < 65536:
                    data = self.sock.recv(4096, socket.MSG_DONTWAIT)
                    if not data:
                        break
                    drained += len(data)
            except OSError:  # BlockingIOError: nothing more buffered; or the peer is gone
                pass
        super().close(graceful=False)


class ServingWorker(ThreadWorker):
    """``gthread`` whose connections have a read deadline (set ``read_timeout_s`` before forking),
    and that accepts a new connection only while one of its threads is free.

    gunicorn's ``gthread`` keeps accepting until ``worker_connections`` (1000): a worker whose
    threads are all held by stalled clients still takes new connections off the shared listening
    socket, and they wait in its thread pool behind the stalled ones, while another worker sits
    idle. Here a worker with every thread busy stops polling the listening socket, so the kernel
    hands the next connection to a worker that can serve it at once; it starts again as soon as
    a thread is done. Keep-alive connections that wake up are still queued in the worker that
    holds them.
    """

    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    _busy: int = 0
    _heads: list[DeadlineConn]

    def init_process(self) -> None:
        """In the worker, after the fork (then gunicorn runs the worker's loop): no request head
        is being read yet; gunicorn's own refusals (a request line or headers it cannot parse)
        answer JSON like every other error of the service, not an HTML page."""
        self._heads = []
        gunicorn_util.write_error = write_json_error
        super().init_process()

    # -- the request head is read by the main loop, not by a thread --------------------------------

    def accept(self, listener) -> None:
        """A new connection waits on the poller until its request head is complete."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = DeadlineConn(self.cfg, client_sock, client_addr, listener.getsockname())
        conn.read_timeout_s = self.read_timeout_s
        self._collect_head(conn)

    def on_client_socket_readable(self, conn: TConn, client) -> None:
        """A keep-alive connection woke up: read its next request head on the poller too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._collect_head(conn)

    def _collect_head(self, conn: DeadlineConn) -> None:
        conn.head = b""
        conn.head_deadline = time.monotonic() + self.read_timeout_s
        conn.sock.setblocking(False)
        self._heads.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_bytes, conn))

    def _on_head_bytes(self, conn: DeadlineConn, sock: socket.socket) -> None:
        """Bytes of a request head arrived: once it is complete (or large), hand it to a thread."""
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete
            self._drop_head(conn)
            return
        conn.head += data
        if b"\r\n\r\n" in conn.head or b"\n\n" in conn.head or len(conn.head) >= HEAD_HANDOFF_BYTES:
            self.poller.unregister(sock)
            self._heads.remove(conn)
            conn.data_ready = True
            self.enqueue_req(conn)

    def _drop_head(self, conn: DeadlineConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        self._heads.remove(conn)
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Each turn of the main loop: also drop connections whose head did not arrive in time."""
        super().murder_pending()
        now = time.monotonic()
        for conn in [c for c in self._heads if c.head_deadline <= now]:
            self.log.debug("request head not complete within READ_TIMEOUT_S: connection dropped")
            self._drop_head(conn)

    def enqueue_req(self, conn: TConn) -> None:
        """Submit the connection to a thread, as a DeadlineConn."""
        if type(conn) is TConn:
            conn.__class__ = DeadlineConn
            conn.read_timeout_s = self.read_timeout_s
        self._busy += 1
        super().enqueue_req(conn)
        if self._busy >= self.cfg.threads:
            self.set_accept_enabled(False)

    def finish_request(self, conn: TConn, fs) -> None:
        """A thread is done with ``conn`` (main loop): one more free thread."""
        self._busy -= 1
        super().finish_request(conn, fs)

    def set_accept_enabled(self, enabled: bool) -> None:
        """Poll the listening socket only while a thread is free (and gunicorn allows it)."""
        super().set_accept_enabled(enabled and self._busy < self.cfg.threads)

    def handle_request(self, req, conn: TConn) -> bool:
        """Serve one request; keep the connection only if its body was read cleanly."""
        keepalive = super().handle_request(req, conn)
        unreader = getattr(conn.parser, "unreader", None)
        if getattr(unreader, "expired", False) or getattr(unreader, "abandoned", False):
            return False
        return keepalive


def _unreader(environ: dict) -> DeadlineUnreader | None:
    reader = getattr(environ.get("wsgi.input"), "reader", None)  # gunicorn's Body
    unreader = getattr(reader, "unreader", None) or getattr(getattr(reader, "req", None), "unreader", None)
    return unreader if isinstance(unreader, DeadlineUnreader) else None


def read_expired(environ: dict) -> bool:
    """True when the request's body stopped because its read deadline passed (this worker only)."""
    unreader = _unreader(environ)
    return bool(unreader is not None and unreader.expired)


def abandon_body(environ: dict) -> None:
    """Give up on the rest of the body: nothing more is read, the connection closes after the
    response (under this worker; elsewhere a no-op)."""
    unreader = _unreader(environ)
    if unreader is not None:
        unreader.abandoned = True


#: a request head this large goes to a thread even before it ends (the parser then applies
#: gunicorn's own limits on the request line and headers)
HEAD_HANDOFF_BYTES = 64 * 1024

#: error codes of the refusals gunicorn makes before the app sees a request
GUNICORN_CODES = {400: "BAD_REQUEST", 403: "FORBIDDEN", 417: "EXPECTATION_FAILED", 431: "HEADERS_TOO_LARGE",
                  500: "INTERNAL_ERROR", 501: "NOT_IMPLEMENTED"}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with the service's JSON body ``{"error_code", "message"}``."""
    message = (mesg or reason).strip()[:500] or reason
    body = json.dumps({"error_code": GUNICORN_CODES.get(status_int, "BAD_REQUEST"), "message": message}).encode()
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
    gunicorn_util.write_nonblock(sock, head + body)
