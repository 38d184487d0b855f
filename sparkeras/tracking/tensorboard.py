"""sparkeras' own TensorBoard scalars: how each worker and the cluster spent every epoch.

Keras' ``TensorBoard`` callback already writes the epoch's loss and
metrics on the driver. What it cannot see is the cluster: which worker is
slow, how long the others waited for it, what the parameter server's
staleness was, how many bytes moved. :class:`ClusterScalars` writes those,
with TensorBoard's own event-file writer (numpy only, so any Keras
backend), into runs next to Keras' ``train`` and ``validation``::

    <log_dir>/sparkeras/            cluster/samples_per_second, cluster/epoch_seconds,
                                    cluster/bytes, staleness/mean, staleness/max, staleness (histogram)
    <log_dir>/sparkeras/worker_<k>/ worker/samples_per_second, worker/step_seconds,
                                    worker/wait_seconds, worker/bytes

One run per worker puts every worker's line on the same chart, so a
straggler is the line below the others on ``worker/samples_per_second``
(and the others rise on ``worker/wait_seconds``).
"""

from __future__ import annotations

import importlib.util
import os
import time
from typing import Any

import keras
import numpy as np

from sparkeras.errors import InputError


class EventWriter:
    """Scalars and histograms into one TensorBoard run directory, through TensorBoard's ``EventFileWriter``."""

    def __init__(self, directory: str) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._writer = EventFileWriter(directory)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """A ``simple_value`` scalar: TensorBoard reads it as its scalar plugin's, and it is the cheapest to write."""
        self._emit(step, tag=tag, simple_value=float(value))

    def histogram(self, tag: str, counts: dict[int, int], step: int) -> None:
        """Counts of integer values (staleness), one bucket per value."""
        from tensorboard.plugins.histogram import metadata
        from tensorboard.util import tensor_util

        buckets = np.array([[k - 0.5, k + 0.5, n] for k, n in sorted(counts.items())], dtype=np.float64)
        self._emit(step, tag=tag, tensor=tensor_util.make_tensor_proto(buckets),
                   metadata=metadata.create_summary_metadata(None, None))

    def _emit(self, step: int, **value: Any) -> None:
        """One summary value as an event, with TensorBoard's own protos (its ``pb()`` helpers return
        TensorFlow's when TensorFlow is installed, which its writer refuses)."""
        from tensorboard.compat.proto import event_pb2

        event = event_pb2.Event(wall_time=time.time(), step=int(step))
        event.summary.value.add(**value)
        self._writer.add_event(event)

    def close(self) -> None:
        self._writer.close()


class ClusterScalars(keras.callbacks.Callback):
    """Write sparkeras' per-worker and cluster scalars for TensorBoard under ``<log_dir>/sparkeras``.

    Added by ``SparkModel.fit`` by itself next to any Keras ``TensorBoard``
    callback in ``callbacks=`` (same ``log_dir``); pass it alone to get the
    cluster's figures without Keras' own.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        if not isinstance(log_dir, (str, os.PathLike)) or not os.fspath(log_dir):
            raise InputError(f"ClusterScalars needs a log directory path, got {log_dir!r}.")
        if importlib.util.find_spec("tensorboard") is None:
            raise InputError("TensorBoard is not installed: pip install 'sparkeras[tracking]' "
                             "(or pip install tensorboard).")
        self.log_dir = os.path.join(os.path.normpath(os.fspath(log_dir)), "sparkeras")
        self._writers: dict[str, EventWriter] = {}

    def _writer(self, run: str) -> EventWriter:
        if run not in self._writers:
            self._writers[run] = EventWriter(os.path.join(self.log_dir, run) if run else self.log_dir)
        return self._writers[run]

    def on_epoch_figures(self, figures: Any) -> None:
        step = figures.epoch
        cluster = self._writer("")
        cluster.scalar("cluster/samples_per_second", figures.samples / max(figures.seconds, 1e-9), step)
        cluster.scalar("cluster/epoch_seconds", figures.seconds, step)
        cluster.scalar("cluster/bytes", sum(w["bytes"] for w in figures.workers.values()), step)
        if figures.staleness:
            commits = sum(figures.staleness.values())
            cluster.scalar("staleness/mean", sum(k * n for k, n in figures.staleness.items()) / commits, step)
            cluster.scalar("staleness/max", max(figures.staleness), step)
            cluster.histogram("staleness", figures.staleness, step)
        for worker, w in figures.workers.items():
            writer = self._writer(f"worker_{worker}")
            writer.scalar("worker/samples_per_second", w["samples_per_second"], step)
            writer.scalar("worker/step_seconds", w["step_seconds"], step)
            writer.scalar("worker/wait_seconds", w["wait_seconds"], step)
            writer.scalar("worker/bytes", w["bytes"], step)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.close()

    def on_fit_failed(self, error: BaseException) -> None:
        self.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def with_cluster_scalars(callbacks: list[Any]) -> list[Any]:
    """``callbacks``, plus a :class:`ClusterScalars` next to each Keras ``TensorBoard`` that has none."""
    if importlib.util.find_spec("tensorboard") is None:
        return list(callbacks)  # Keras' callback writes through tf.summary without the package
    have = {os.path.dirname(c.log_dir) for c in callbacks if isinstance(c, ClusterScalars)}
    added = [ClusterScalars(c.log_dir) for c in callbacks
             if isinstance(c, keras.callbacks.TensorBoard) and os.path.normpath(os.fspath(c.log_dir)) not in have]
    return list(callbacks) + added
