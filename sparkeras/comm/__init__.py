"""Authenticated, pickle-free messaging between the driver and workers."""

from sparkeras.comm.wire import FrameError, read_frame, write_frame

__all__ = ["FrameError", "read_frame", "write_frame"]
