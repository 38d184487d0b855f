"""A trial's epochs, reported to Optuna from the driver as ``SparkModel.fit`` ends each one.

Every epoch of a fit ends on the driver (the workers' states are merged
there and the validation data is scored exactly), so the pruner's verdict
is taken right there: a pruned trial stops after that epoch, and its Spark
tasks, which run one epoch at a time, free their slots at once.
"""

from __future__ import annotations

import math
from typing import Any

import keras


class TrialFailed(Exception):
    """The trial's model cannot be scored (a NaN loss, say); the search records why and goes on."""


class TrialReporter(keras.callbacks.Callback):
    """Reports ``metric`` to an Optuna trial after every epoch and stops the fit when the pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        super().__init__()
        self.trial = trial
        self.metric = metric
        self.pruned = False
        self.epochs = 0
        self.last: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        self.epochs = epoch + 1
        for name in ("loss", self.metric):
            value = logs.get(name)
            if value is not None and not math.isfinite(float(value)):
                raise TrialFailed(f"{name} is {float(value)} after epoch {epoch + 1}")
        value = logs.get(self.metric)
        if value is None:
            raise TrialFailed(f"the fit reported no {self.metric!r} (it reported {sorted(logs)})")
        self.last = float(value)
        self.trial.report(self.last, epoch)
        self.trial.set_user_attr("epochs", self.epochs)
        if self.trial.should_prune():
            self.pruned = True
            self.model.stop_training = True
