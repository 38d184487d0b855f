"""Synchronous model averaging (Elephas' synchronous mode, dist-keras' AveragingTrainer).

Every window, each worker starts from the same state, trains on its own
partition for the window (a whole epoch by default, or ``window`` batches),
and returns its state; the driver averages the states, weighted by the
samples each worker saw, and the next window starts from the average.

Optimizer state is part of the averaged state. Elephas rebuilds the optimizer
every epoch, which resets Adam's moments and step counter and visibly slows
convergence; here the moments are averaged like the weights (sample-weighted)
and integer counters such as the step count take the largest value. With one
worker this makes averaging exactly equal to ``model.fit``; with several, every
window resumes from averaged weights *and* averaged moments.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sparkeras.errors import InputError
from sparkeras.strategies.base import Strategy
from sparkeras.training import TrainingJob, run_partitions, sum_metric_states
from sparkeras.worker import tasks
from sparkeras.worker.tasks import Window


def average_states(states: Sequence[Sequence[np.ndarray]], weights: Sequence[float]) -> list[np.ndarray]:
    """Sample-weighted mean of float arrays; the maximum of integer arrays."""
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("cannot average states with zero total weight")
    if len(states) == 1:
        return [np.array(a, copy=True) for a in states[0]]
    out = []
    for parts in zip(*states):
        if np.issubdtype(parts[0].dtype, np.floating):
            acc = np.zeros(parts[0].shape, dtype=np.float64)
            for w, a in zip(weights, parts):
                acc += (w / total) * a.astype(np.float64)
            out.append(acc.astype(parts[0].dtype))
        else:
            out.append(np.max(np.stack(parts), axis=0))
    return out


class ModelAveraging(Strategy):
    """Train independently for a window, then average, synchronously.

    Args:
        window: ``"epoch"`` to average once per epoch (the fewest Spark jobs),
            or a number of batches to average more often, which keeps replicas
            closer together on heterogeneous partitions at the cost of one
            Spark job per window.
    """

    name = "averaging"

    def __init__(self, window: int | str = "epoch") -> None:
        if window != "epoch" and not (isinstance(window, int) and window > 0):
            raise InputError(f"window must be 'epoch' or a positive number of batches, got {window!r}.")
        self.window = window

    def get_config(self) -> dict[str, Any]:
        return {"window": self.window}

    def windows_per_epoch(self, job: TrainingJob) -> int:
        if self.window == "epoch":
            return 1
        return max(1, -(-max(job.steps_per_worker) // int(self.window)))

    def fit(self, job: TrainingJob) -> None:
        batches = None if self.window == "epoch" else int(self.window)
        spec = job.spec  # the closure must not capture the job (it holds the SparkContext)
        for epoch in range(job.initial_epoch, job.epochs):
            job.begin_epoch(epoch)
            epoch_metrics: list[np.ndarray] | None = None
            for index in range(self.windows_per_epoch(job)):
                window = Window(epoch, index, job.batch_size, batches, job.shuffle)
                blob = job.broadcast_state()
                try:
                    results = run_partitions(
                        job.train,
                        lambda it, w=window, b=blob: tasks.train_window(spec, w, b, it),
                        f"training epoch {epoch + 1}",
                    )
                finally:
                    blob.unpersist()
                trained = [r for r in results if r.samples]
                if trained:
                    job.state = average_states([r.state for r in trained], [r.samples for r in trained])
                window_metrics = sum_metric_states(trained)
                if window_metrics is not None:
                    epoch_metrics = window_metrics if epoch_metrics is None else [
                        a + b for a, b in zip(epoch_metrics, window_metrics)]
            if job.end_epoch(epoch, epoch_metrics):
                break
