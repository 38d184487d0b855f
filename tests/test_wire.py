"""The driver's progress channel and the array codec refuse anything unsigned or malformed."""

from __future__ import annotations

import os
import socket
import struct
import time

import numpy as np
import pytest

from sparkeras.comm.wire import FrameError, encode_frame, read_frame, signs_payloads, write_frame
from sparkeras.progress import ProgressReporter, ProgressServer
from sparkeras.serialization import pack_arrays, unpack_arrays

SECRET = b"k" * 32


def _pair():
    a, b = socket.socketpair()
    b.settimeout(2)
    return a, b


def test_frame_round_trip():
    a, b = _pair()
    a.sendall(encode_frame(SECRET, {"epoch": 3}, b"\x00\x01payload"))
    assert read_frame(b, SECRET, 1024) == ({"epoch": 3}, b"\x00\x01payload")


@pytest.mark.parametrize("mangle,message", [
    (lambda f: encode_frame(b"x" * 32, {"epoch": 1}), "signature does not match"),
    (lambda f: b"EVIL" + f[4:], "bad magic"),
    (lambda f: f[:4] + (10**6).to_bytes(4, "little") + f[8:], "too large"),
    (lambda f: f[:-3] + bytes(3), "signature does not match"),
])
def test_bad_frames_are_rejected(mangle, message):
    a, b = _pair()
    a.sendall(mangle(encode_frame(SECRET, {"epoch": 1})))
    with pytest.raises(FrameError, match=message):
        read_frame(b, SECRET, 1024)



@pytest.mark.parametrize("pair", ["unix", "loopback"])
def test_a_payload_of_several_buffers_arrives_as_their_bytes_in_order_and_signed(pair):
    """A model's state goes out from its arrays' own buffers (``sendmsg``), tens of MB past the socket's buffer."""
    import threading

    from sparkeras.serialization import packed_parts

    a, b = _pair() if pair == "unix" else _loopback_pair()
    weights = [np.arange(3_000_000, dtype=np.float32).reshape(1000, 3000), np.float64(2.5), np.ones(7, np.int8)]
    parts = [b"head", *packed_parts(weights), bytearray(b"tail")]
    sender = threading.Thread(target=write_frame, args=(a, SECRET, {"type": "state"}, parts))
    sender.start()
    b.settimeout(10)
    header, payload = read_frame(b, SECRET, 64 << 20)
    sender.join()
    assert header == {"type": "state"} and payload == b"head" + pack_arrays(weights) + b"tail"
    got = unpack_arrays(memoryview(payload)[4:-4])
    assert np.array_equal(got[0], weights[0]) and got[1] == 2.5 and got[2].tolist() == [1] * 7
    # the payload MAC covers the parts in order, as one joined payload's would (the unix pair signs it)
    assert encode_frame(SECRET, {"type": "state"}, parts) == encode_frame(SECRET, {"type": "state"}, bytes(payload))


def test_truncated_frame_is_not_accepted():
    a, b = _pair()
    a.sendall(encode_frame(SECRET, {"epoch": 1}, b"abcdef")[:-2])
    a.close()
    with pytest.raises(FrameError, match="truncated"):
        read_frame(b, SECRET, 1024)


def _loopback_pair():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname()[:2])
        b, _ = listener.accept()
    b.settimeout(2)
    return a, b


def test_between_loopback_ends_a_frame_skips_only_its_payload_mac():
    """The payload MAC is zeros and unchecked between two loopback ends (no one can alter those bytes); the
    header MAC still proves every frame's sender, and anywhere else the payload MAC is written and checked."""
    a, b = _loopback_pair()
    assert not signs_payloads(a) and not signs_payloads(b)
    write_frame(a, SECRET, {"epoch": 2}, b"weights")
    raw = b.recv(4096)
    assert raw.endswith(bytes(32) + b"weights")  # no payload MAC computed
    sender, reader = _loopback_pair()
    sender.sendall(raw)
    assert read_frame(reader, SECRET, 1024) == ({"epoch": 2}, b"weights")
    a.sendall(encode_frame(b"x" * 32, {"epoch": 3}, b"weights", sign_payload=False))
    with pytest.raises(FrameError, match="frame signature does not match"):  # a stranger's header
        read_frame(b, SECRET, 1024)

    u, v = _pair()  # a Unix socket: signed and checked
    assert signs_payloads(u)
    u.sendall(encode_frame(SECRET, {"epoch": 4}, b"weights", sign_payload=False))
    with pytest.raises(FrameError, match="payload signature does not match"):
        read_frame(v, SECRET, 1024)
    for host, signed in (("10.1.2.3", True), ("192.168.0.7", True), ("127.0.0.5", False), ("::1", False),
                         ("::ffff:127.0.0.1", False), ("::ffff:10.1.2.3", True)):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as peer:  # connect() of UDP sends nothing
            try:
                peer.connect((host, 9))
            except OSError:
                if family == socket.AF_INET6:  # no IPv6 on this machine
                    continue
                raise
            assert signs_payloads(peer) is signed, host


def test_array_codec_round_trip_and_refusals():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array(7, dtype=np.int64), np.zeros((0, 4))]
    back = unpack_arrays(pack_arrays(arrays))
    assert [a.shape for a in back] == [(2, 3), (), (0, 4)]
    np.testing.assert_array_equal(back[0], arrays[0])
    assert back[1] == 7
    blob = pack_arrays(arrays)
    with pytest.raises(ValueError, match="truncated"):
        unpack_arrays(blob[:-8])
    with pytest.raises(ValueError, match="trailing bytes"):
        unpack_arrays(blob + b"x")
    evil = pack_arrays([np.zeros(1)]).replace(b"float64", b"object\x20")
    with pytest.raises(ValueError, match="unsupported dtype"):
        unpack_arrays(evil)
    with pytest.raises(ValueError, match="array blob header is malformed"):
        unpack_arrays(blob.replace(b'"align": 16', b'"align": -1'))
    (length,) = struct.unpack_from("<I", blob)  # one more space in the header: every array one byte late
    with pytest.raises(ValueError, match="misaligned"):
        unpack_arrays(struct.pack("<I", length + 1) + blob[4:4 + length] + b" " + blob[4 + length:])


def test_packed_arrays_decode_aligned_even_at_another_blobs_end_and_the_first_format_still_decodes():
    """NumPy runs unaligned arrays through per-element loops (6 times slower to add); the driver adds every
    worker's commit each round, and a worker's report is its state's blob followed by its metrics'."""
    import json

    arrays = [np.arange(3, dtype=np.int8), np.arange(5, dtype=np.float32), np.float64(1.5), np.ones((2, 3))]
    state, metrics = pack_arrays(arrays), pack_arrays(arrays[::-1])
    received = bytearray(state + metrics)  # as read_frame hands a large payload over
    for got in (unpack_arrays(memoryview(received)[:len(state)]), unpack_arrays(memoryview(received)[len(state):])):
        assert all(a.flags.aligned and a.flags.writeable for a in got)
    assert len(state) % 16 == 0
    first = [np.asarray(a) for a in arrays]  # blobs written by earlier versions (checkpoints): back to back
    header = json.dumps([[a.dtype.name, list(a.shape)] for a in first]).encode()
    old = struct.pack("<I", len(header)) + header + b"".join(a.tobytes() for a in first)
    for a, b in zip(unpack_arrays(old), first):
        np.testing.assert_array_equal(a, b)


def test_progress_server_ignores_strangers_and_keeps_serving():
    reports = []
    server = ProgressServer("127.0.0.1", reports.append)
    try:
        host, port = server.address.host, server.address.port
        for junk in (os.urandom(200), encode_frame(b"wrong" * 8, {"rank": 0, "epoch": 0, "samples": 1, "loss": 1.0})):
            with socket.create_connection((host, port)) as s:
                s.sendall(junk)
        reporter = ProgressReporter(server.address, rank=1, epoch=0, offset=0, batch_size=10, samples=100)
        reporter.send(40, {"loss": 0.5})
        deadline = time.time() + 5
        while not reports and time.time() < deadline:
            time.sleep(0.05)
        assert reports == [{"rank": 1, "epoch": 0, "samples": 40, "loss": 0.5}]
        assert server.rejected == 2
    finally:
        server.close()
    assert server.address.host == "127.0.0.1"


# -- servers that cannot be exhausted ------------------------------------------------------------

def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _echo_server(data_limit=1024, **kwargs):
    from sparkeras.comm.server import FrameServer

    return FrameServer("127.0.0.1", lambda h, p: ({"echo": h.get("n")}, p),
                       lambda h: data_limit if h.get("type") == "data" else 0, **kwargs)


def _claim(payload_len: int, secret: bytes, kind: str = "data") -> bytes:
    """A frame prefix and header claiming ``payload_len`` bytes, followed by nothing."""
    import struct

    from sparkeras.comm import wire

    head = b'{"type":"%s"}' % kind.encode()
    prefix = struct.pack("<4sIQ", wire.MAGIC, len(head), payload_len)
    return prefix + wire._header_mac(secret, prefix, head) + head


def _wait_for(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def test_a_stranger_claiming_4_gib_costs_the_server_nothing():
    """Even where a message type may carry 16 GiB (a huge model's state), a stranger's claim allocates nothing."""
    server = _echo_server(data_limit=1 << 34)
    try:
        addr = (server.address.host, server.address.port)
        before = _rss_bytes()
        socks = []
        for secret in (b"stranger" * 4, b"stranger" * 4):
            s = socket.create_connection(addr)
            s.sendall(_claim(4 << 30, secret))
            socks.append(s)
        signed = socket.create_connection(addr)  # the fit's secret, a type that carries no payload
        signed.sendall(_claim(4 << 30, server.address.secret, "other"))
        socks.append(signed)
        assert _wait_for(lambda: server.rejected == 3)
        grown = _rss_bytes() - before
        assert grown < 16 << 20, f"the server grew by {grown / 2**20:.1f} MiB"
        for s in socks:  # every one was hung up on
            s.settimeout(5)
            assert s.recv(1) == b""
            s.close()
    finally:
        server.close()


def test_a_signed_payload_over_its_types_limit_is_refused_before_it_is_read():
    from sparkeras.comm.server import FrameClient

    server = _echo_server()
    try:
        client = FrameClient(server.address, 4096, timeout=5)
        assert client.call({"type": "data", "n": 1}, b"x" * 1024) == ({"echo": 1}, b"x" * 1024)
        with pytest.raises((EOFError, OSError, FrameError)):
            client.call({"type": "data", "n": 2}, b"x" * 1025)
        client2 = FrameClient(server.address, 4096, timeout=5)
        with pytest.raises((EOFError, OSError, FrameError)):
            client2.call({"type": "other"}, b"y")  # a type whose messages carry no payload
        assert server.rejected == 2
    finally:
        server.close()


def test_idle_and_trickling_connections_are_dropped_and_signed_clients_stay_fast():
    from sparkeras.comm.server import FrameClient

    server = _echo_server(handshake_timeout=2.0, max_pending=64)
    idle = []
    try:
        addr = (server.address.host, server.address.port)
        idle = [socket.create_connection(addr) for _ in range(200)]
        trickler = socket.create_connection(addr)
        trickler.sendall(_claim(10, server.address.secret)[:5])  # a header that never completes
        time.sleep(0.5)
        assert server.connections <= 65  # the oldest pending ones were dropped at once
        client = FrameClient(server.address, 4096, timeout=5)
        trips = []
        for n in range(20):
            t0 = time.perf_counter()
            assert client.call({"type": "data", "n": n}, b"abc") == ({"echo": n}, b"abc")
            trips.append(time.perf_counter() - t0)
        assert sorted(trips)[len(trips) // 2] < 0.05, trips
        # Within the handshake timeout every connection without a valid frame is gone; the signed one stays.
        assert _wait_for(lambda: server.connections == 1, 8.0), server.connections
        trickler.settimeout(5)
        assert trickler.recv(1) == b""
        assert client.call({"type": "data", "n": 99}) == ({"echo": 99}, b"")
        assert server.dropped >= 200
    finally:
        for s in idle:
            s.close()
        server.close()


def test_connections_over_the_cap_are_closed_at_accept():
    from sparkeras.comm.server import FrameClient

    server = _echo_server(max_connections=2)
    try:
        a = FrameClient(server.address, 4096, timeout=5)
        b = FrameClient(server.address, 4096, timeout=5)
        assert a.call({"type": "data", "n": 1}) == ({"echo": 1}, b"")
        assert b.call({"type": "data", "n": 2}) == ({"echo": 2}, b"")
        c = FrameClient(server.address, 4096, timeout=5)
        with pytest.raises((EOFError, OSError, FrameError)):
            c.call({"type": "data", "n": 3})
        assert a.call({"type": "data", "n": 4}) == ({"echo": 4}, b"")
    finally:
        server.close()


def test_a_client_that_works_before_its_first_call_is_not_taken_for_an_idle_stranger():
    """All-reduce's rank 0 makes its client, then imports torch and binds a store before it publishes; on a
    loaded cluster that outlasted the server's handshake timeout, and the rendezvous failed with
    "connection closed". The client connects at its first call."""
    from sparkeras.comm.server import FrameClient

    server = _echo_server(handshake_timeout=0.5)
    try:
        client = FrameClient(server.address, 4096, timeout=5)
        time.sleep(1.5)  # three handshake timeouts of slow work
        assert client.call({"type": "data", "n": 7}, b"x") == ({"echo": 7}, b"x")
        assert server.dropped == 0
        client.close()
        client.close()  # closing twice is harmless
    finally:
        server.close()
