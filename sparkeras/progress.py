"""Live training progress, from the workers to a bar on the driver.

Workers report, a few times a second, how many samples of the current epoch
they have trained on and their running loss. They send signed frames
(:mod:`sparkeras.comm.wire`) to a small server the driver runs for the
length of a fit. Progress is best-effort: a worker that cannot reach the
server keeps training, and the epoch's final figures come from the metric
states the workers return, not from these reports.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any, Callable, TextIO

from sparkeras.comm.server import FrameServer, ServerAddress
from sparkeras.comm.wire import write_frame


class ProgressServer(FrameServer):
    """Accepts signed progress reports from workers for the length of one fit."""

    def __init__(self, host: str, on_report: Callable[[dict[str, Any]], None]) -> None:
        def handle(header: dict[str, Any], _: bytes) -> None:
            on_report(header)

        super().__init__(host, handle, limit=0, name="sparkeras-progress")


class ProgressBar:
    """One line per epoch: samples done, samples/s and the running loss.

    On a terminal the line is redrawn in place; elsewhere (CI logs, files) only
    the epoch's closing line is printed.
    """

    def __init__(self, epochs: int, verbose: int, stream: TextIO | None = None) -> None:
        self.epochs = epochs
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.interactive = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()
        self._lock = threading.Lock()
        self._ranks: dict[int, tuple[int, float]] = {}
        self._epoch = 0
        self._total = 0
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def begin_epoch(self, epoch: int, total_samples: int) -> None:
        with self._lock:
            self._epoch, self._total = epoch, total_samples
            self._ranks.clear()
            self._start = time.perf_counter()

    def report(self, msg: dict[str, Any]) -> None:
        """Called by the progress server for each worker report."""
        try:
            epoch, rank = int(msg["epoch"]), int(msg["rank"])
            done, loss = int(msg["samples"]), float(msg["loss"])
        except (KeyError, TypeError, ValueError):
            return
        with self._lock:
            if epoch != self._epoch:
                return
            self._ranks[rank] = (done, loss)
            now = time.perf_counter()
            if self.interactive and now - self._last_draw > 0.1:
                self._last_draw = now
                self._draw(self._line())

    @property
    def samples_done(self) -> int:
        return sum(d for d, _ in self._ranks.values())

    def _line(self, logs: dict[str, float] | None = None) -> str:
        done = self._total if logs is not None else min(self.samples_done, self._total)
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        width = 24
        filled = int(width * done / self._total) if self._total else width
        bar = "=" * filled + (">" if filled < width else "") + "." * max(0, width - filled - 1)
        parts = [f"Epoch {self._epoch + 1}/{self.epochs} [{bar}] {done}/{self._total}",
                 f"{done / elapsed:,.0f} samples/s"]
        if logs is None:
            weighted = [(d, l) for d, l in self._ranks.values() if d]
            if weighted:
                loss = sum(d * l for d, l in weighted) / sum(d for d, _ in weighted)
                parts.append(f"loss: {loss:.4f}")
        else:
            parts.append(f"{elapsed:.1f}s")
            parts += [f"{k}: {v:.4f}" for k, v in logs.items() if isinstance(v, (int, float))]
        return " - ".join(parts)

    def _draw(self, line: str, end: str = "") -> None:
        self.stream.write("\r" + line.ljust(100) + end if self.interactive else line + end)
        self.stream.flush()

    def end_epoch(self, logs: dict[str, float]) -> float:
        """Print the epoch's closing line; return the epoch's samples/s."""
        with self._lock:
            elapsed = max(time.perf_counter() - self._start, 1e-9)
            if self.verbose:
                self._draw(self._line(logs), end="\n")
            return self._total / elapsed


class ProgressReporter:
    """Worker side: a Keras callback that sends progress to the driver.

    The connection is kept per Python worker and reused across tasks. A
    report never raises: failing to reach the driver only costs the bar.
    """

    _connections: dict[tuple[str, int], socket.socket] = {}

    def __init__(self, address: ServerAddress, rank: int, epoch: int, offset: int,
                 batch_size: int, samples: int, interval: float = 0.25) -> None:
        self.address, self.rank, self.epoch = address, rank, epoch
        self.offset, self.batch_size, self.samples = offset, batch_size, samples
        self.interval = interval
        self._last = 0.0

    def callback(self) -> Any:
        import keras

        reporter = self

        class _Report(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                reporter.tick(min((batch + 1) * reporter.batch_size, reporter.samples), logs)

            def on_train_end(self, logs=None):
                reporter.send(reporter.samples, logs)

        return _Report()

    def tick(self, done: int, logs: dict[str, Any] | None) -> None:
        """Report ``done`` samples, at most once per ``interval`` seconds."""
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self.send(done, logs)

    def send(self, done: int, logs: dict[str, Any] | None) -> None:
        loss = float((logs or {}).get("loss", float("nan")))
        msg = {"rank": self.rank, "epoch": self.epoch, "samples": self.offset + done, "loss": loss}
        key = (self.address.host, self.address.port)
        for _ in range(2):
            conn = self._connections.get(key)
            try:
                if conn is None:
                    self._drop_stale(key)
                    conn = socket.create_connection(key, timeout=2)
                    self._connections[key] = conn
                write_frame(conn, self.address.secret, msg)
                return
            except OSError:
                self._connections.pop(key, None)
                if conn is not None:
                    conn.close()

    @classmethod
    def _drop_stale(cls, current: tuple[str, int]) -> None:
        """Close connections to earlier fits' servers, which are gone."""
        for key in [k for k in cls._connections if k != current]:
            cls._connections.pop(key).close()
