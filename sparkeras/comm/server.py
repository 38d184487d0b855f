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
"""

from __future__ import annotations

import secrets
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

from sparkeras.comm.wire import FrameError, read_frame, write_frame

Reply = tuple[dict[str, Any], bytes]
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
    """

    def __init__(self, host: str, handler: Handler, max_payload: int = 0, name: str = "sparkeras-server",
                 frame_timeout: float = 60.0) -> None:
        self._handler = handler
        self._max_payload = max_payload
        self._frame_timeout = frame_timeout
        self._sock = socket.create_server((host, 0))
        self._sock.settimeout(0.2)
        self.address = ServerAddress(host, self._sock.getsockname()[1], secrets.token_bytes(32))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.rejected = 0
        self.name = name
        self._accept = threading.Thread(target=self._serve, name=name, daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            t = threading.Thread(target=self._read, args=(conn,), name=f"{self.name}-connection", daemon=True)
            t.start()
            self._threads.append(t)

    def _read(self, conn: socket.socket) -> None:
        """Serve one connection: wait for a frame (polling for shutdown), then read it whole."""
        conn.settimeout(self._frame_timeout)
        with conn:
            while not self._stop.is_set():
                if not select.select([conn], [], [], 0.5)[0]:
                    continue
                try:
                    header, payload = read_frame(conn, self.address.secret, self._max_payload)
                except FrameError:
                    self.rejected += 1
                    return
                except (EOFError, OSError):
                    return
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
        self._stop.set()
        self._sock.close()
        self._accept.join(timeout=2)
        for t in self._threads:
            t.join(timeout=2)


class FrameClient:
    """Worker side: one connection to a :class:`FrameServer`, for request/reply calls."""

    def __init__(self, address: ServerAddress, max_payload: int, timeout: float = 60.0) -> None:
        self.address, self._max_payload = address, max_payload
        self._conn = socket.create_connection((address.host, address.port), timeout=timeout)

    def call(self, header: dict[str, Any], payload: bytes = b"", timeout: float | None = None) -> Reply:
        """Send a frame and wait (up to ``timeout`` seconds; ``None`` = the connect timeout) for the reply."""
        if timeout is not None:
            self._conn.settimeout(timeout)
        write_frame(self._conn, self.address.secret, header, payload)
        return read_frame(self._conn, self.address.secret, self._max_payload)

    def close(self) -> None:
        self._conn.close()
