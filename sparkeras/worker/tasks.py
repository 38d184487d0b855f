"""What a Spark task runs: train a window, evaluate, or predict on its partition.

Each function here is the body of one Spark task over the packed blocks of
its partition (:mod:`sparkeras.data.packing`). It takes a :class:`WorkerSpec`
(model config, columns, backend; small) and the model state from a
broadcast, and answers one tuple of ints and bytes: arrays encoded by
:func:`pack_arrays`, never pickled objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from sparkeras.data.columns import ColumnMap
from sparkeras.data.packing import read_partition
from sparkeras.data.weights import ClassWeights, row_weights
from sparkeras.comm.server import ServerAddress
from sparkeras.inference.batch import predict_arrays
from sparkeras.progress import ProgressReporter
from sparkeras.serialization import ModelSpec, model_state, pack_arrays, set_model_state, unpack_arrays
from sparkeras.worker import runtime
from sparkeras.worker.local_steps import evaluate_arrays

@dataclass(frozen=True)
class WorkerSpec:
    """What every task of a fit needs, shipped once in the task closure."""

    model: ModelSpec
    columns: ColumnMap
    backend: str
    seed: int = 0
    progress: ServerAddress | None = None
    class_weight: ClassWeights | None = None  # see sparkeras.data.weights

    def __post_init__(self) -> None:
        # Tasks read packed blocks and never turn strings into numbers: the string layers' files stay behind.
        object.__setattr__(self, "columns", self.columns.without_string_layers())

    @property
    def weighted(self) -> bool:
        """Whether training batches carry row weights (a weight column, or ``class_weight``)."""
        return bool(self.columns.weights) or (self.class_weight is not None and bool(self.columns.labels))

    def training_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A partition's arrays for training: with ``class_weight``, each row's weight after its labels.

        A weight column is one of the arrays already; ``fit`` refuses it with ``class_weight``, as Keras does.
        """
        if self.class_weight is None or not self.columns.labels or self.columns.weights:
            return arrays
        labels = arrays[len(self.columns.features)]
        return [*arrays, row_weights(labels, self.class_weight)]


@dataclass(frozen=True)
class Window:
    """A slice of one epoch that every worker trains before the next sync.

    ``batches`` is the window length in batches; ``None`` means the whole epoch.
    """

    epoch: int
    index: int
    batch_size: int
    batches: int | None = None
    shuffle: bool = True

    def rows(self, n: int) -> tuple[int, int]:
        if self.batches is None:
            return 0, n
        span = self.batches * self.batch_size
        return min(n, self.index * span), min(n, (self.index + 1) * span)


def validates(epoch: int, freq: int | tuple[int, ...]) -> bool:
    """Whether epoch ``epoch`` (0-based) is scored on the validation data, as Keras' ``validation_freq`` says.

    An int ``n``: every ``n``-th epoch (the ``n``-th, ``2n``-th, ...); a
    tuple: the epochs it lists, counted from 1.
    """
    if isinstance(freq, int):
        return (epoch + 1) % freq == 0
    return epoch + 1 in freq


def check_validation_freq(freq: Any) -> int | tuple[int, ...]:
    """``validation_freq`` as :func:`validates` takes it; an :class:`InputError` names a bad value."""
    from sparkeras.errors import InputError

    if isinstance(freq, int) and not isinstance(freq, bool) and freq > 0:
        return freq
    if isinstance(freq, (list, tuple)) and freq and all(
            isinstance(e, int) and not isinstance(e, bool) and e > 0 for e in freq):
        return tuple(freq)
    raise InputError(f"validation_freq must be a positive number of epochs, or a list of epoch numbers counted "
                     f"from 1 (as in Keras), got {freq!r}.")


def _setup(spec: WorkerSpec) -> tuple[Any, int]:
    from pyspark import TaskContext

    runtime.configure(spec.backend)
    ctx = TaskContext.get()
    return runtime.model(spec.model), ctx.partitionId() if ctx else 0


def warm_up(spec: WorkerSpec, plan: runtime.WarmUp, _: Iterator[Any]) -> Iterator[tuple]:
    """Start this Python worker's backend import and model build in the background, and return once it is built.

    Why wait for the build. The tasks of the warm-up job start together, but
    an executor hands out its Python workers one at a time, and reuses an
    idle one first. A task that returned at once gave its worker back before
    the next task asked for one, so both warm-ups ran in the same worker and
    the other worker built and traced the model in its first epoch, while
    every other worker waited for it at the first exchange: in 4 of 8 cold
    ``local[2]`` fits. Holding the worker until the model is built (about
    0.1-0.3 s once the backend is imported, at most ``plan.hold_seconds``)
    makes the next task take a worker of its own.
    """
    built = runtime.warm_up(spec.model, spec.backend, spec.columns, spec.weighted, plan)
    if plan.hold_seconds > 0:
        built.wait(plan.hold_seconds)
    return iter(())


def _result(partition: int, samples: int, steps: int, state: bytes, metrics: bytes,
            figures: dict[str, float] | None = None) -> tuple:
    """A task's answer; ``figures`` are its timings (:func:`task_figures`)."""
    return partition, samples, steps, state, metrics, figures or {}


def task_figures(started: float, wait_seconds: float = 0.0, moved: int = 0) -> dict[str, float]:
    """What a training task measured of itself, for the driver's per-worker scalars.

    ``seconds``: the task's training time since ``started`` (a
    ``perf_counter`` reading taken once its data was decoded);
    ``wait_seconds``: the part of it spent waiting on others (a parameter
    server, an all-reduce); ``bytes``: what it sent and received.
    """
    return {"seconds": time.perf_counter() - started, "wait_seconds": float(wait_seconds), "bytes": float(moved)}




def split_xy(spec: WorkerSpec, arrays: list[np.ndarray]) -> tuple[Any, Any]:
    """Keras' ``x`` and ``y`` (``None`` without labels) of a partition's arrays, row weights left out."""
    if not spec.columns.labels:
        return spec.columns.x(arrays[:len(spec.columns.features)]), None
    return spec.columns.data(arrays)[:2]


def train_window(spec: WorkerSpec, window: Window, state: Any, blocks: Iterator[tuple]) -> Iterator[tuple]:
    """Train this partition's share of ``window`` from the broadcast ``state``."""
    from sparkeras.worker.local_steps import LocalSteps

    model, partition = _setup(spec)
    arrays, n = read_partition(spec.columns, blocks)
    lo, hi = window.rows(n)
    if hi <= lo:
        yield _result(partition, 0, 0, b"", b"")
        return
    set_model_state(model, unpack_arrays(state.value))
    arrays = spec.training_arrays(arrays)
    order = (np.random.default_rng([spec.seed, window.epoch, partition]).permutation(n) if window.shuffle
             else np.arange(n))
    reporter = None
    if spec.progress is not None:
        reporter = ProgressReporter(spec.progress, partition, window.epoch, lo, window.batch_size, hi - lo)
    started = time.perf_counter()
    steps = LocalSteps(model, arrays, spec.columns, spec.backend)
    model.reset_metrics()
    first = lo // window.batch_size
    count = -(-(hi - lo) // window.batch_size)
    steps.train(order, window.batch_size, first, count)
    if reporter is not None:
        reporter.send(hi - lo, {"loss": steps.running_loss()})
    yield _result(partition, hi - lo, count, pack_arrays(model_state(model)),
                  pack_arrays([np.asarray(v) for v in model.metrics_variables]), task_figures(started))


def _partition_with_state(spec: WorkerSpec, state: Any, blocks: Iterator[tuple]) -> tuple[Any, int, list[np.ndarray], int]:
    """The cached model set to the broadcast state, and this task's decoded partition."""
    model, partition = _setup(spec)
    arrays, n = read_partition(spec.columns, blocks)
    if n:
        set_model_state(model, unpack_arrays(state.value))
    return model, partition, arrays, n


def evaluate_partition(spec: WorkerSpec, state: Any, batch_size: int, blocks: Iterator[tuple],
                       scoring: bool = False) -> Iterator[tuple]:
    """Metric states (totals and counts) of the model on this partition (``scoring``: see ``evaluate_arrays``)."""
    model, partition, arrays, n = _partition_with_state(spec, state, blocks)
    if n == 0:
        yield _result(partition, 0, 0, b"", b"")
        return
    evaluate_arrays(model, spec.columns, arrays, spec.backend, batch_size, scoring)  # a weight column weighs them too
    yield _result(partition, n, 0, b"", pack_arrays([np.asarray(v) for v in model.metrics_variables]))


def predict_packed(spec: WorkerSpec, state: Any, batch_size: int, blocks: Iterator[tuple]) -> Iterator[tuple]:
    """Predictions for a packed partition, in row order, as encoded arrays."""
    model, partition, arrays, n = _partition_with_state(spec, state, blocks)
    if n == 0:
        yield _result(partition, 0, 0, b"", b"")
        return
    yield _result(partition, n, 0, pack_arrays(predict_arrays(model, spec.columns, arrays, batch_size)), b"")
