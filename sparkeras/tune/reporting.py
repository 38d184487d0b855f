"""A trial's epochs, reported to Optuna on the driver, and the pruner's verdict.

Two paths lead here. A one-worker trial trains inside a single Spark task
and sends each epoch's logs to the search's :class:`TrialServer`, waiting
for the verdict (:mod:`sparkeras.worker.trial`); a trial that is itself a
distributed fit ends each epoch on the driver, where :class:`TrialReporter`
asks the same question. Either way, :func:`judge` decides: a non-finite loss
or metric fails the trial, and the pruner may stop it after any epoch but
the last (a trial that has trained every epoch is complete, not pruned).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

from sparkeras.metric_values import from_json

CONTINUE, PRUNE = "continue", "prune"


class TrialFailed(Exception):
    """The trial's model cannot be scored (a NaN loss, say); the search records why and goes on."""


@dataclass
class TrialRecord:
    """What the driver learnt of one running trial from its epochs."""

    trial: Any
    metric: str
    epochs: int
    reported: int = 0
    last: float | None = None
    pruned: bool = False
    failure: str | None = None
    run: Any = None  # the trial's MLflow run (sparkeras.tracking.mlflow.RunHandle), when the search is tracked


def judge(record: TrialRecord, epoch: int, logs: dict[str, Any], lock: Any) -> str:
    """Report epoch ``epoch``'s ``logs`` to the trial; ``PRUNE`` or ``CONTINUE``. Raises :class:`TrialFailed`."""
    if record.run is not None:
        try:
            record.run.log(metrics=logs, step=epoch)
        except Exception as exc:  # noqa: BLE001 - tracking trouble must not fail the trial
            from sparkeras.log import logger

            logger.warning("could not log trial %d's epoch %d to MLflow: %s", record.trial.number, epoch + 1, exc)
    for name in ("loss", record.metric):
        value = logs.get(name)
        if value is not None and not math.isfinite(float(value)):
            raise TrialFailed(f"{name} is {float(value)} after epoch {epoch + 1}")
    value = logs.get(record.metric)
    if value is None:
        raise TrialFailed(f"the fit reported no {record.metric!r} (it reported {sorted(logs)})")
    record.last = float(value)
    record.reported = epoch + 1
    with lock:
        record.trial.report(record.last, epoch)
        record.trial.set_user_attr("epochs", record.reported)
        if epoch + 1 < record.epochs and record.trial.should_prune():
            record.pruned = True
            return PRUNE
    return CONTINUE


class TrialServer:
    """The search's driver-side server: one-worker trials send their epochs here and get the verdict back.

    A :class:`~sparkeras.comm.server.FrameServer` on the driver's address:
    frames are signed with the search's secret, and nothing is unpickled.
    """

    def __init__(self, host: str, lock: Any) -> None:
        from sparkeras.comm.server import FrameServer

        self._lock = lock
        self._records: dict[int, TrialRecord] = {}
        self._records_lock = threading.Lock()
        self._server = FrameServer(host, self._handle, limit=0, name="sparkeras-trials")
        self.address = self._server.address

    def track(self, record: TrialRecord) -> None:
        with self._records_lock:
            self._records[record.trial.number] = record

    def forget(self, record: TrialRecord) -> None:
        with self._records_lock:
            self._records.pop(record.trial.number, None)

    def _handle(self, header: dict[str, Any], _: bytes) -> tuple[dict[str, Any], bytes]:
        from sparkeras.comm.wire import FrameError

        with self._records_lock:
            record = self._records.get(int(header.get("trial", -1)))
        if record is None or header.get("type") != "epoch":
            raise FrameError(f"no running trial {header.get('trial')!r}")
        logs = {k: from_json(v) for k, v in dict(header["logs"]).items()}
        try:
            return {"action": judge(record, int(header["epoch"]), logs, self._lock)}, b""
        except TrialFailed as failed:
            record.failure = str(failed)
            return {"action": "stop"}, b""

    def close(self) -> None:
        self._server.close()


def _keras_reporter() -> type:
    import keras

    class TrialReporter(keras.callbacks.Callback):
        """Driver side, for a trial that is a distributed fit: the verdict after each epoch the fit ends."""

        def __init__(self, record: TrialRecord, lock: Any) -> None:
            super().__init__()
            self.record, self.lock = record, lock

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if judge(self.record, epoch, dict(logs or {}), self.lock) == PRUNE:
                self.model.stop_training = True

    return TrialReporter


def trial_reporter(record: TrialRecord, lock: Any) -> Any:
    """A Keras callback that judges each epoch of a distributed trial's fit on the driver."""
    return _keras_reporter()(record, lock)
