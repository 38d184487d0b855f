"""A compact framing for driver <-> worker messages over TCP.

A frame is ``MAGIC | header length (u32) | payload length (u64) | HMAC | header | payload``:
the header is a small JSON object, the payload raw bytes (typically arrays
encoded by :func:`sparkeras.serialization.pack_arrays`). The HMAC-SHA256 over
the lengths, header and payload is keyed with a secret made for one fit, so a
peer that does not hold the secret cannot inject anything, and nothing on the
wire is ever unpickled. Oversized or malformed frames raise
:class:`FrameError` before any large allocation.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import struct
from typing import Any

MAGIC = b"SKR1"
_PREFIX = struct.Struct("<4sIQ")
_MAC_SIZE = 32
MAX_HEADER = 64 * 1024


class FrameError(Exception):
    """A frame was malformed, too large, or not signed with the fit's secret."""


def _mac(secret: bytes, prefix: bytes, header: bytes, payload: bytes) -> bytes:
    mac = hmac.new(secret, prefix, hashlib.sha256)
    mac.update(header)
    mac.update(payload)
    return mac.digest()


def encode_frame(secret: bytes, header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER:
        raise FrameError(f"frame header of {len(head)} bytes exceeds {MAX_HEADER}")
    prefix = _PREFIX.pack(MAGIC, len(head), len(payload))
    return b"".join([prefix, _mac(secret, prefix, head, payload), head, payload])


def write_frame(sock: socket.socket, secret: bytes, header: dict[str, Any], payload: bytes = b"") -> None:
    sock.sendall(encode_frame(secret, header, payload))


def _read_exact(sock: socket.socket, n: int, started: bool = True) -> bytes:
    """``n`` bytes; a peer that hangs up inside a frame sent a truncated frame."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            if started or got:
                raise FrameError("truncated frame: the peer stopped sending mid-frame") from None
            raise
        if k == 0:
            if started or got:
                raise FrameError("truncated frame: the connection closed mid-frame")
            raise EOFError("connection closed")
        got += k
    return bytes(buf)


def read_frame(sock: socket.socket, secret: bytes, max_payload: int) -> tuple[dict[str, Any], bytes]:
    """Read one frame; raise :class:`FrameError` unless it is well formed and signed."""
    prefix = _read_exact(sock, _PREFIX.size, started=False)
    magic, head_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError("bad magic: not a sparkeras frame")
    if head_len > MAX_HEADER or payload_len > max_payload:
        raise FrameError(f"frame too large (header {head_len} bytes, payload {payload_len} bytes)")
    mac = _read_exact(sock, _MAC_SIZE)
    head = _read_exact(sock, head_len)
    payload = _read_exact(sock, payload_len)
    if not hmac.compare_digest(mac, _mac(secret, prefix, head, payload)):
        raise FrameError("frame signature does not match this fit's secret")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    return header, payload
