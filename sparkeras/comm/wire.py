"""A compact framing for driver <-> worker messages over TCP.

A frame is ``MAGIC | header length (u32) | payload length (u64) | header MAC |
header | payload MAC | payload``. The header is a small JSON object, the
payload raw bytes (typically arrays encoded by
:func:`sparkeras.serialization.pack_arrays`). Both MACs are HMAC-SHA256 keyed
with a secret made for one fit, so a peer that does not hold the secret
cannot inject anything, and nothing on the wire is ever unpickled.

Why two MACs. The header MAC covers the lengths and the header, so a reader
checks who sent the frame, and what kind of message it is, *before* it
allocates anything for the payload: a stranger who claims a 4 GiB payload
costs the reader 64 KiB at most (the header limit), not 4 GiB. The payload
limit can then depend on the message type (``limit`` may be a function of
the authenticated header). Only then is the payload's buffer allocated,
whole: its size is within that limit and claimed by a holder of the
secret, and reading a model's state into one buffer saves joining chunks
(a copy of hundreds of MB per message for large models). The payload MAC
covers the header MAC and the payload.

Why no payload MAC between two loopback ends. Every frame's header is still
signed, so each frame still proves its sender holds the secret. What the
payload MAC adds is integrity against someone who alters bytes in flight
between two authenticated peers. On a TCP connection whose ends are both
this machine's loopback interface no one can: the bytes never leave the
kernel, and seeing or injecting loopback traffic needs root, which owns
the processes at both ends anyway (the same reasoning as Spark's own
Python workers over Unix sockets, and as the all-reduce ring, whose arrays
follow an authenticated handshake unsigned). The payload MAC was measured
to be most of a parameter-server round trip: HMAC-SHA256 costs 0.22 ms for
an MLP's 400 KB of weights, four times per exchange, and a round trip took
1.6-1.8 ms with it against 0.7-0.8 ms without (one process each side);
a local ``adag`` fit of that MLP, which exchanges every 8 batches, spent
10-13% of its epoch on it. So there the field is zeros and is not checked;
anywhere else (another host's address, a Unix socket) it is written and
checked.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import struct
import time
from typing import Any, Callable, Sequence, Union

MAGIC = b"SKR2"
_PREFIX = struct.Struct("<4sIQ")
_MAC_SIZE = 32
MAX_HEADER = 64 * 1024
CHUNK = 4 << 20  # payload bytes read per allocation

PayloadLimit = Union[int, Callable[[dict[str, Any]], int]]
Payload = Union[bytes, bytearray, memoryview, Sequence[Union[bytes, bytearray, memoryview]]]
"""A frame's payload: one bytes-like object, or several sent one after the other without being joined."""
JOIN_BELOW = 64 << 10  # smaller frames are joined and sent in one call; larger ones go out part by part


class FrameError(Exception):
    """A frame was malformed, too large, or not signed with the fit's secret."""


def _header_mac(secret: bytes, prefix: bytes, header: bytes) -> bytes:
    mac = hmac.new(secret, b"H", hashlib.sha256)
    mac.update(prefix)
    mac.update(header)
    return mac.digest()


def _payload_mac(secret: bytes, head_mac: bytes, payload: Payload) -> bytes:
    mac = hmac.new(secret, b"P", hashlib.sha256)
    mac.update(head_mac)
    for part in payload_parts(payload):
        mac.update(part)
    return mac.digest()


def payload_parts(payload: Payload) -> list[memoryview]:
    """The payload as flat byte views, in order, without copying."""
    parts = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else list(payload)
    return [_flat(p) for p in parts]


def _flat(part: Any) -> memoryview:
    view = memoryview(part)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


def payload_size(payload: Payload) -> int:
    return sum(p.nbytes for p in payload_parts(payload))


_UNSIGNED = bytes(_MAC_SIZE)  # the payload MAC field where none is computed


def encode_frame(secret: bytes, header: dict[str, Any], payload: Payload = b"", sign_payload: bool = True) -> bytes:
    """One frame; ``sign_payload=False`` leaves the payload MAC zeros (a loopback connection, see above)."""
    front, parts = _frame_parts(secret, header, payload, sign_payload)
    return b"".join([front, *parts])


def _frame_parts(secret: bytes, header: dict[str, Any], payload: Payload,
                 sign_payload: bool) -> tuple[bytes, list[memoryview]]:
    """Everything before the payload (prefix, MACs, header), and the payload's parts."""
    head = json.dumps(header, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER:
        raise FrameError(f"frame header of {len(head)} bytes exceeds {MAX_HEADER}")
    parts = payload_parts(payload)
    prefix = _PREFIX.pack(MAGIC, len(head), sum(p.nbytes for p in parts))
    head_mac = _header_mac(secret, prefix, head)
    payload_mac = _payload_mac(secret, head_mac, parts) if sign_payload else _UNSIGNED
    return b"".join([prefix, head_mac, head, payload_mac]), parts


def signs_payloads(sock: socket.socket) -> bool:
    """Whether frames on ``sock`` carry a payload MAC: all but a TCP connection between loopback ends."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return True
    try:
        host = sock.getpeername()[0]
    except OSError:
        return True
    if host.startswith("127.") or host == "::1":  # a local session's every frame: 1 us, not 4 us parsed
        return False
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return True
    mapped = getattr(address, "ipv4_mapped", None)
    return not (mapped or address).is_loopback


def write_frame(sock: socket.socket, secret: bytes, header: dict[str, Any], payload: Payload = b"") -> None:
    """Send one frame; a large payload goes out from its own buffers, in one ``sendmsg`` where it can.

    Why not one joined ``bytes``. A model's state is hundreds of MB for a
    model of tens of millions of weights with Adam's moments, and joining
    it behind the frame's header copied all of it once more per message,
    on the driver that serves every worker (with a 16.6M-weight MLP, a
    quarter of its CPU went to such copies; BENCHMARKS.md).
    """
    front, parts = _frame_parts(secret, header, payload, signs_payloads(sock))
    if sum(p.nbytes for p in parts) < JOIN_BELOW or not hasattr(sock, "sendmsg"):
        sock.sendall(b"".join([front, *parts]))
        return
    _send_parts(sock, [memoryview(front), *parts])


def _send_parts(sock: socket.socket, parts: list[memoryview]) -> None:
    """``sendall`` over several buffers: ``sendmsg`` until every byte is out, resuming inside a part."""
    parts = [p for p in parts if p.nbytes]
    while parts:
        sent = sock.sendmsg(parts[:512])  # IOV_MAX is 1024 on Linux
        while sent and parts:
            if sent >= parts[0].nbytes:
                sent -= parts[0].nbytes
                parts.pop(0)
            else:
                parts[0] = parts[0][sent:]
                sent = 0


def _read_exact(sock: socket.socket, n: int, started: bool = True, deadline: float | None = None) -> bytes:
    """``n`` bytes (one allocation of at most ``n``); a peer that hangs up inside a frame sent a truncated one.

    ``deadline`` (a ``time.monotonic()`` value) bounds the whole read, not
    each ``recv``: a peer that trickles one byte at a time cannot hold the
    reader longer than that.
    """
    return bytes(_read_into(sock, n, started, deadline))


def _read_into(sock: socket.socket, n: int, started: bool = True, deadline: float | None = None) -> bytearray:
    """:func:`_read_exact` into a new ``bytearray``, returned as it is (no copy into ``bytes``)."""
    buf = bytearray(n)
    _receive(sock, memoryview(buf), started, deadline)
    return buf


def _receive(sock: socket.socket, view: memoryview, started: bool, deadline: float | None) -> None:
    """Fill ``view`` from ``sock`` (see :func:`_read_exact`)."""
    n = len(view)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FrameError("slow frame: the peer did not send a whole frame header in time")
            sock.settimeout(left)
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


def _read_payload(sock: socket.socket, n: int) -> bytes | memoryview:
    """A payload of ``n`` bytes whose header was authenticated and found within its limit (see the module).

    A large payload is returned as a writable ``memoryview`` of the buffer
    it was read into (arrays decoded from it are writable views), and that
    buffer is left unfilled until the bytes arrive: ``bytearray(n)`` zeroes
    all of it first, 0.1-0.2 s for a 200 MB state on the driver, only for
    ``recv`` to write it again.
    """
    if n <= CHUNK:
        return _read_exact(sock, n)
    import numpy as np

    buf = memoryview(np.empty(n, dtype=np.uint8))
    _receive(sock, buf, started=True, deadline=None)
    return buf


def read_frame(sock: socket.socket, secret: bytes, limit: PayloadLimit,
               header_timeout: float | None = None) -> tuple[dict[str, Any], bytes | memoryview]:
    """Read one frame; raise :class:`FrameError` unless it is well formed, signed and within ``limit``.

    ``limit`` is the largest payload accepted, or a function of the
    (already authenticated) header giving it per message type.
    ``header_timeout`` bounds the time from this call to the authenticated
    header (call it once the socket is readable); the payload is read under
    the socket's own timeout.
    """
    previous_timeout = sock.gettimeout()
    deadline = None if header_timeout is None else time.monotonic() + header_timeout
    prefix = _read_exact(sock, _PREFIX.size, started=False, deadline=deadline)
    magic, head_len, payload_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise FrameError("bad magic: not a sparkeras frame")
    if head_len > MAX_HEADER:
        raise FrameError(f"frame too large (header {head_len} bytes, at most {MAX_HEADER})")
    head_mac = _read_exact(sock, _MAC_SIZE, deadline=deadline)
    head = _read_exact(sock, head_len, deadline=deadline)
    if not hmac.compare_digest(head_mac, _header_mac(secret, prefix, head)):
        raise FrameError("frame signature does not match this fit's secret")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise FrameError(f"frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("frame header must be a JSON object")
    allowed = limit(header) if callable(limit) else limit
    if payload_len > allowed:
        raise FrameError(f"frame too large: a {header.get('type', 'message')!r} payload of {payload_len} bytes "
                         f"exceeds its limit of {allowed}")
    if deadline is not None:
        sock.settimeout(previous_timeout)
    payload_mac = _read_exact(sock, _MAC_SIZE)
    payload = _read_payload(sock, payload_len)
    if signs_payloads(sock) and not hmac.compare_digest(payload_mac, _payload_mac(secret, head_mac, payload)):
        raise FrameError("frame payload signature does not match this fit's secret")
    return header, payload
