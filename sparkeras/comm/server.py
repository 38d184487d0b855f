"""A small driver-side server for signed frames, and its worker-side client.

The driver runs one for the length of a fit: the progress bar listens on one,
and the all-reduce strategy's coordinator answers on one. It binds to the
driver's address (not ``0.0.0.0``) on a port the operating system picks at
bind time, so there is no race for ports. Every frame is signed with a
secret made for the fit (:mod:`sparkeras.comm.wire`); an unsigned or
malformed frame closes that connection and is counted in ``rejected``; the
server goes on serving everyone else. A handler may raise
``ConnectionAbortedError`` to drop its connection without a reply, or
``FrameError`` to reject a well-signed frame that makes no sense.

Why the limits. The server faces the cluster network, so a stranger must
not be able to exhaust it:

* a frame's header is authenticated before its payload is allocated, and
  the payload limit is per message type (``limit``);
* a connection that has not sent one valid frame is *pending*: it must
  complete its first header within ``handshake_timeout`` seconds, and when
  ``max_pending`` of them are open the oldest is dropped, so a flood of idle
  or trickling connections cannot lock the fit's workers out;
* at most ``max_connections`` connections are served at once; more are
  closed at accept.
"""

from __future__ import annotations

import collections
import secrets
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

from sparkeras.comm.wire import FrameError, Payload, PayloadLimit, read_frame, write_frame

Reply = tuple[dict[str, Any], Payload]
Handler = Callable[[dict[str, Any], bytes], "Reply | None"]


@dataclass(frozen=True)
class ServerAddress:
    """Where workers reach a driver-side server, and the secret that proves they belong to this fit."""

    host: str
    port: int
    secret: bytes


class FrameServer:
    """Accepts signed frames; ``handler(header, payload)`` may return a reply frame.

    Each connection is served by its own thread, so a handler may block (the
    coordinator waits for the driver's callbacks) without stalling others.

    Args:
        host: the address to bind (the driver's, as the workers reach it).
        handler: called with each authenticated frame.
        limit: the largest payload accepted, or a function of the header
            giving it per message type.
        frame_timeout: seconds an authenticated peer may pause inside a frame.
        handshake_timeout: seconds a new connection has to deliver its first
            authenticated header.
        max_pending: connections without a valid frame yet; beyond it the
            oldest is dropped.
        max_connections: connections served at once.
    """

    def __init__(self, host: str, handler: Handler, limit: PayloadLimit = 0, name: str = "sparkeras-server",
                 frame_timeout: float = 60.0, handshake_timeout: float = 5.0, max_pending: int = 64,
                 max_connections: int = 1024) -> None:
        self._handler = handler
        self._limit = limit
        self._frame_timeout = frame_timeout
        self._handshake_timeout = handshake_timeout
        self._max_pending = max_pending
        self._max_connections = max_connections
        self._sock = socket.create_server((host, 0), backlog=128)
        self._sock.settimeout(0.2)
        self.address = ServerAddress(host, self._sock.getsockname()[1], secrets.token_bytes(32))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: collections.OrderedDict[socket.socket, None] = collections.OrderedDict()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.rejected = 0
        self.dropped = 0  # connections closed for being idle, slow, or over a cap
        self.name = name
        self._accept = threading.Thread(target=self._serve, name=name, daemon=True)
        self._accept.start()

    @property
    def connections(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._open)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            if not self._admit(conn):
                continue
            t = threading.Thread(target=self._read, args=(conn,), name=f"{self.name}-connection", daemon=True)
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _admit(self, conn: socket.socket) -> bool:
        """Register a new connection as pending; drop it (or the oldest pending one) at the caps."""
        with self._lock:
            if len(self._open) >= self._max_connections:
                self.dropped += 1
                conn.close()
                return False
            while len(self._pending) >= self._max_pending:
                oldest, _ = self._pending.popitem(last=False)
                self.dropped += 1
                _shut(oldest)
            self._pending[conn] = None
            self._open.add(conn)
        return True

    def _read(self, conn: socket.socket) -> None:
        """Serve one connection: wait for a frame (polling for shutdown), then read it whole."""
        conn.settimeout(self._frame_timeout)
        try:
            with conn:
                self._serve_frames(conn)
        finally:
            with self._lock:
                self._pending.pop(conn, None)
                self._open.discard(conn)

    def _serve_frames(self, conn: socket.socket) -> None:
        waited = 0.0
        while not self._stop.is_set():
            with self._lock:
                pending = conn in self._pending
            if pending and waited >= self._handshake_timeout:
                self.dropped += 1
                return
            try:
                if not select.select([conn], [], [], 0.25)[0]:
                    waited += 0.25
                    continue
            except (OSError, ValueError):  # dropped by _admit
                return
            try:
                header, payload = read_frame(conn, self.address.secret, self._limit,
                                             self._handshake_timeout if pending else None)
            except FrameError:
                self.rejected += 1
                return
            except (EOFError, OSError):
                return
            if pending:
                with self._lock:
                    self._pending.pop(conn, None)
            try:
                reply = self._handler(header, payload)
            except FrameError:
                self.rejected += 1
                return
            except ConnectionAbortedError:
                return
            if reply is not None:
                try:
                    write_frame(conn, self.address.secret, *reply)
                except OSError:
                    return

    def close(self) -> None:
        """Stop serving and wait for the threads, woken at once rather than at their next poll.

        Closing a listening socket does not wake a thread blocked in its
        ``accept``, and a connection's thread sleeps in ``select`` for up to
        a quarter second: a fit's close used to wait about 140 ms for them.
        Shutting both down wakes them now.
        """
        self._stop.set()
        _shut(self._sock)
        self._sock.close()
        with self._lock:
            connections = list(self._open)
        for conn in connections:
            _shut(conn)
        self._accept.join(timeout=2)
        for t in self._threads:
            t.join(timeout=2)


def _shut(conn: socket.socket) -> None:
    """Wake the connection's thread (its ``select`` sees EOF) so it closes and forgets it."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class FrameClient:
    """Worker side: one connection to a :class:`FrameServer`, for request/reply calls.

    The connection opens at the first call, not when the client is made.
    The server drops a connection that has not sent its first frame within
    its ``handshake_timeout`` (5 s), as it would an idle stranger's, and a
    task may do slow work between the two: all-reduce's rank 0 once made its
    client, then imported torch and bound gloo's store, which on a loaded
    cluster took longer than that, and the rendezvous failed with
    "connection closed".
    """

    def __init__(self, address: ServerAddress, max_payload: int, timeout: float = 60.0) -> None:
        self.address, self._max_payload, self._timeout = address, max_payload, timeout
        self._conn: socket.socket | None = None

    def call(self, header: dict[str, Any], payload: bytes = b"", timeout: float | None = None) -> Reply:
        """Send a frame and wait (up to ``timeout`` seconds; ``None`` = the connect timeout) for the reply."""
        if self._conn is None:
            self._conn = socket.create_connection((self.address.host, self.address.port), timeout=self._timeout)
        if timeout is not None:
            self._conn.settimeout(timeout)
        write_frame(self._conn, self.address.secret, header, payload)
        return read_frame(self._conn, self.address.secret, self._max_payload)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
