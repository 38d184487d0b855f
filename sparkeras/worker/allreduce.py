"""The task body of all-reduce training: one barrier task per worker, for the whole fit.

Each task reads its partition once, joins the collective, asks the driver
where to start (epoch and state: a relaunched stage resumes from the last
completed epoch) and then, every step, computes gradients on its local batch,
sums them with every other task's and applies the same update, so replicas
never diverge.

Steps and unequal partitions. Every task runs the same number of steps per
epoch, ``S = ceil(largest partition / batch_size)``; a task with ``n`` rows
uses batches of ``ceil(n / S)`` rows, so it runs out of rows no earlier than
the others and every collective is matched. Each task scales its loss by its
share of the step's global batch (``rows here / rows on all tasks``, which
every task computes from the partition sizes without talking), so the summed
gradient is exactly the gradient of the mean loss over the global batch, as
one process training on the concatenated batch would compute. A task with no
rows left in a step contributes zeros.

BatchNormalization. With ``sync_batch_norm`` (the default) every
BatchNormalization layer computes its batch mean and variance over the global
batch (sums all-reduced inside the forward pass, and their gradients inside
the backward pass), so training matches one process with the global batch,
and the moving statistics, computed from global moments, stay identical on
every task. Any other non-trainable float variable is averaged at the end
of each epoch. Unless ``learning_rate_scaling=None``, the layers' momentum
is ``momentum ** N`` here, so the statistics forget per row as in one process
at the per-worker batch (:meth:`ModelSpec.with_moving_statistics_for`). Each Keras backend (TensorFlow, JAX, PyTorch) computes the
step its own way: :mod:`sparkeras.worker.backends`.

Epoch end: the tasks sum their Keras metric states (training, and validation
on the validation partition co-located with each task), rank 0 sends the
state and the sums to the driver, which runs the callbacks and answers
whether to stop; rank 0 broadcasts that answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from sparkeras.barrier import CollectiveSettings
from sparkeras.comm.server import FrameClient, ServerAddress
from sparkeras.data.packing import read_partition
from sparkeras.progress import ProgressReporter
from sparkeras.serialization import model_state, pack_arrays, set_model_state, unpack_arrays
from sparkeras.worker.learning_rate import scale_learning_rate
from sparkeras.worker import runtime
from sparkeras.worker.backends import gradient_steps
from sparkeras.worker.faults import Hold, hold_once
from sparkeras.worker.local_steps import evaluate_arrays, shared_tensor
from sparkeras.worker.tasks import WorkerSpec, validates

TRAIN, VALIDATION = 0, 1
MAX_STATE_BYTES = 1 << 34


@dataclass(frozen=True)
class BarrierSpec:
    """Everything a barrier task needs; shipped once in the stage's closure."""

    worker: WorkerSpec
    collective: CollectiveSettings  # its rendezvous server is also the driver's coordinator
    epochs: int
    batch_size: int
    shuffle: bool
    rows: tuple[int, ...]
    validation: bool = False
    validation_freq: int | tuple[int, ...] = 1  # see sparkeras.worker.tasks.validates
    validation_batch_size: int | None = None  # the user's, kept as given; else the fit's, grown for scoring
    sync_batch_norm: bool = True
    fail_once: tuple[int, int, str] | None = None  # test hook: (epoch, rank, marker file)
    hold_once: Hold = None  # test hook, see sparkeras.worker.faults
    learning_rate_scale: float = 1.0  # see sparkeras.worker.learning_rate
    warmup_steps: int = 0
    start_step: int = 0  # the optimizer's step count when the fit began: warmup counts from there

    @property
    def coordinator(self) -> ServerAddress:
        return self.collective.rendezvous

    @property
    def timeout(self) -> float:
        return self.collective.timeout

    @property
    def steps(self) -> int:
        return max(1, -(-max(self.rows) // self.batch_size))

    def local_batch(self, rows: int) -> int:
        return -(-rows // self.steps) if rows else 0

    def global_rows(self, step: int) -> int:
        total = 0
        for n in self.rows:
            b = self.local_batch(n)
            total += max(0, min(n, (step + 1) * b) - step * b)
        return total


def train_barrier(spec: BarrierSpec, tagged: Iterator[tuple]) -> Iterator[tuple[int, int]]:
    """Train from the driver's latest state to the last epoch, or until told to stop."""
    runtime.configure(spec.worker.backend)
    model = runtime.model(spec.worker.model)
    train, validation = _split(spec.worker, tagged)
    collective = spec.collective.join()
    client = FrameClient(spec.coordinator, MAX_STATE_BYTES, timeout=spec.timeout)
    last, loop = -1, None
    try:
        header, payload = client.call({"type": "start", "rank": collective.rank})
        set_model_state(model, unpack_arrays(payload))
        loop = _EpochLoop(spec, model, collective, train, validation)
        for epoch in range(int(header["epoch"]), spec.epochs):
            loop.train_epoch(epoch)
            last = epoch
            if loop.end_epoch(epoch, client):
                break
    finally:
        if loop is not None:
            loop.close()
        client.close()
        collective.close()
    yield collective.rank, last


# Steps per traced run: the first run of an epoch is short, later ones last about _RUN_SECONDS, so the
# progress bar and the running loss still move a few times a second.
_FIRST_CHUNK, _RUN_SECONDS = 16, 0.2


def _next_chunk(steps: int, seconds: float) -> int:
    return int(min(4096, max(1, steps * _RUN_SECONDS / max(seconds, 1e-6))))


def _split(spec: WorkerSpec, tagged: Iterator[tuple]) -> tuple[tuple[list[np.ndarray], int], tuple[list[np.ndarray], int]]:
    """This task's training and validation partitions, in their original block order."""
    ordered = sorted(tagged, key=lambda kv: kv[0])
    train = read_partition(spec.columns, (b for (_, role, _), b in ordered if role == TRAIN))
    val = read_partition(spec.columns.without_weights(),  # validation is packed unweighted, as in fit
                         (b for (_, role, _), b in ordered if role == VALIDATION))
    return train, val


class _EpochLoop:
    """One task's epochs: shuffled local batches, summed gradients, epoch-end reports."""

    def __init__(self, spec: BarrierSpec, model: Any, collective: Any, train: tuple, validation: tuple) -> None:
        self.spec, self.model, self.collective = spec, model, collective
        self.rank = collective.rank
        (self.arrays, self.n), (self.val_arrays, self.val_n) = train, validation
        self.arrays = spec.worker.training_arrays(self.arrays)
        self.steps = gradient_steps(model, collective, spec.worker.backend, spec.sync_batch_norm)
        # Steps with rows run in one traced loop over the partition where the backend has one (TensorFlow).
        self._tensors = ([shared_tensor(a) for a in self.arrays]
                         if self.n and hasattr(self.steps, "run_steps") else None)
        import keras  # the worker's backend is configured by now

        rate = model.optimizer.learning_rate
        self._rate = rate if isinstance(rate, keras.Variable) else None  # the user's rate, before any scaling
        self._restore_learning_rate = scale_learning_rate(
            model.optimizer, spec.learning_rate_scale, spec.warmup_steps, spec.start_step)

    def close(self) -> None:
        """Give the cached model back as it was: its learning rate and BatchNormalization layers."""
        self._restore_learning_rate()
        self.steps.close()

    def train_epoch(self, epoch: int) -> None:
        spec, n = self.spec, self.n
        order = (np.random.default_rng([spec.worker.seed, epoch, self.rank]).permutation(n)
                 if spec.shuffle else np.arange(n))
        b = spec.local_batch(n)
        reporter = None
        if spec.worker.progress is not None:
            reporter = ProgressReporter(spec.worker.progress, self.rank, epoch, 0, max(b, 1), n)
        self.model.reset_metrics()
        self._epoch_began = (time.perf_counter(), self.collective.seconds, self.collective.bytes)
        last_report = time.perf_counter()
        step, chunk = 0, _FIRST_CHUNK
        while step < spec.steps:
            self._maybe_fail(epoch, step)
            end = self._chunk_end(step, chunk, b, n)
            idx = order[min(n, step * b):min(n, end * b)]
            if self._tensors is not None and len(idx):
                began = time.perf_counter()
                shares = [min(b, n - s * b) / max(1, spec.global_rows(s)) for s in range(step, end)]
                self.steps.run_steps(spec.worker.columns, self._tensors, idx.reshape(end - step, -1).astype(np.int32),
                                     np.asarray(shares, np.float32))
                chunk = _next_chunk(end - step, time.perf_counter() - began)
            else:
                x, y, *weights = spec.worker.columns.data([a[idx] for a in self.arrays])
                self.steps.step(x, y, len(idx), len(idx) / max(1, spec.global_rows(step)), *weights)
            step = end
            if reporter is not None and time.perf_counter() - last_report > reporter.interval:
                last_report = time.perf_counter()
                reporter.send(min(n, step * b), {"loss": self.steps.running_loss()})
        if reporter is not None:
            reporter.send(n, {"loss": self.steps.running_loss()})

    def _chunk_end(self, step: int, chunk: int, b: int, n: int) -> int:
        """The step after the run of steps that starts at ``step``: one step, or up to ``chunk`` whole batches.

        A traced run holds whole local batches only; the last, shorter batch
        runs alone, and a step without rows here (unequal partitions) takes
        the backend's Python path. Runs end at the middle step, where the
        test hooks act (:meth:`_maybe_fail`).
        """
        whole = n // b if (self._tensors is not None and b) else 0
        if step >= whole:
            return step + 1
        middle = self.spec.steps // 2
        return min(whole, step + chunk, middle if step < middle else whole)

    def end_epoch(self, epoch: int, client: FrameClient) -> bool:
        """Average the non-trainable state, sum metric states, report; True to stop.

        The driver's answer also carries the learning rate callbacks left on
        its model, which every rank takes for the next epoch.
        """
        self.steps.average_non_trainable()
        train_metrics = [np.asarray(v) for v in self.model.metrics_variables]
        val_metrics: list[np.ndarray] = []
        if self.spec.validation and validates(epoch, self.spec.validation_freq):
            val_metrics = self._validation_metrics()
        figures = np.zeros((self.collective.world_size, 3))  # every rank fills its own row: a gather
        began, waited, moved = self._epoch_began
        figures[self.rank] = (time.perf_counter() - began, self.collective.seconds - waited,
                              self.collective.bytes - moved)
        flat = np.concatenate([m.astype(np.float64).ravel() for m in train_metrics + val_metrics]
                              + [figures.ravel()])
        summed = self.collective.allreduce(flat, "sum")
        answer = np.array([0.0, np.nan])  # stop, learning rate
        if self.rank == 0:
            parts, offset = [], 0
            for m in train_metrics + val_metrics:
                parts.append(summed[offset:offset + m.size].reshape(m.shape).astype(m.dtype))
                offset += m.size
            state = model_state(self.model)
            workers = [dict(zip(("seconds", "wait_seconds", "bytes"), map(float, row)))
                       for row in summed[offset:].reshape(-1, 3)]
            header = {"type": "epoch", "epoch": epoch, "state": len(state), "train_metrics": len(train_metrics),
                      "validation": bool(val_metrics), "workers": workers}
            reply, _ = client.call(header, pack_arrays(state + parts), timeout=self.spec.timeout)
            given = reply.get("learning_rate")
            answer[:] = float(bool(reply.get("stop"))), np.nan if given is None else float(given)
        stop, rate = self.collective.broadcast(answer, root=0)
        if self._rate is not None and np.isfinite(rate):
            self._rate.assign(np.asarray(rate, dtype=self._rate.dtype))
        return bool(stop)

    def _validation_metrics(self) -> list[np.ndarray]:
        self.model.reset_metrics()
        if self.val_n:
            evaluate_arrays(self.model, self.spec.worker.columns, self.val_arrays, self.spec.worker.backend,
                            self.spec.validation_batch_size or self.spec.batch_size,
                            scoring=self.spec.validation_batch_size is None)
        return [np.asarray(v) for v in self.model.metrics_variables]

    def _maybe_fail(self, epoch: int, step: int) -> None:
        """Test hooks: the chosen rank's Python worker dies once, or holds once, mid-epoch."""
        if step == self.spec.steps // 2:
            hold_once(self.spec.hold_once, epoch, self.rank)
        hook = self.spec.fail_once
        if hook is None or (hook[0], hook[1]) != (epoch, self.rank) or step != self.spec.steps // 2:
            return
        if not os.path.exists(hook[2]):
            with open(hook[2], "w") as marker:
                marker.write(f"killed rank {self.rank} in epoch {epoch + 1}, step {step}\n")
            os._exit(17)
