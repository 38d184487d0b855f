"""The driver's progress channel and the array codec refuse anything unsigned or malformed."""

from __future__ import annotations

import os
import socket
import time

import numpy as np
import pytest

from sparkeras.comm.wire import FrameError, encode_frame, read_frame
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


def test_truncated_frame_is_not_accepted():
    a, b = _pair()
    a.sendall(encode_frame(SECRET, {"epoch": 1}, b"abcdef")[:-2])
    a.close()
    with pytest.raises(FrameError, match="truncated"):
        read_frame(b, SECRET, 1024)


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
