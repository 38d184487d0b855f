"""What a Spark task runs: train a window, evaluate, or predict on its partition.

Each function here is the body of one Spark task over the packed blocks of
its partition (:mod:`sparkeras.data.packing`). It takes a :class:`WorkerSpec`
(model config, columns, backend; small) and the model state from a
broadcast, and answers one tuple of ints and bytes: arrays encoded by
:func:`pack_arrays`, never pickled objects.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

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


_grouped = threading.local()  # in a thread of run_grouped: the partition it trains, and its model copy
_copy_locks: dict[int, threading.Lock] = {}


def _setup(spec: WorkerSpec) -> tuple[Any, int]:
    """This Python worker's model and the partition the task (or :func:`run_grouped`'s thread) trains."""
    from pyspark import TaskContext

    runtime.configure(spec.backend)
    partition = getattr(_grouped, "partition", None)
    if partition is not None:
        return runtime.model(spec.model, _grouped.copy), partition
    ctx = TaskContext.get()
    return runtime.model(spec.model), ctx.partitionId() if ctx else 0


def run_grouped(body: Callable[[Iterator[tuple]], Iterator[tuple]], tagged: Iterator[tuple[int, Any]],
                rows: Sequence[int], timeout: float) -> Iterator[tuple]:
    """Run ``body`` over each partition in this task's ``tagged`` blocks, side by side, one thread each.

    Why. A synchronous round needs every worker's commit, so its workers
    must all run at once. Where the cluster runs fewer tasks at once than
    there are workers, a task trains several of them: ``tagged`` holds
    ``(partition, None)`` for each of its partitions, then ``(partition,
    block)`` for their blocks (a ``coalesce`` of the tagged partitions, see
    :func:`sparkeras.training.run_partitions`). Each thread trains its
    partition with a model instance of its own, exactly as a task of its
    own would (the same partition index, seeds and exchanges), and waits at
    the rounds as such a task would; the threads take turns on the task's
    cores. Their answers are the task's. The blocks are held until their
    thread reads them, so a task holds its partitions' packed bytes beside
    their arrays while they are read.

    A thread's model copy is used by one thread at a time: a thread of a
    failed task (still waiting at the parameter server, which abandons its
    round) is waited for, at most ``timeout`` seconds.
    """
    from sparkeras.data.packing import CountedBlocks

    partitions: dict[int, deque] = {}
    for partition, block in tagged:
        queue = partitions.setdefault(partition, deque())
        if block is not None:
            queue.append(block)
    answers: dict[int, list[tuple]] = {}
    failures: list[BaseException] = []

    def train(partition: int, copy: int, blocks: deque) -> None:
        lock = _copy_locks.setdefault(copy, threading.Lock())
        if not lock.acquire(timeout=timeout):
            failures.append(TimeoutError(f"model copy {copy} of this Python worker was still in use after "
                                         f"{timeout:.0f}s"))
            return
        try:
            _grouped.partition, _grouped.copy = partition, copy
            answers[partition] = list(body(CountedBlocks(_draining(blocks), rows[partition])))
        except BaseException as exc:  # noqa: BLE001 - raised by the task
            failures.append(exc)
        finally:
            lock.release()

    threads = [threading.Thread(target=train, args=(p, copy, blocks), name=f"sparkeras-partition-{p}", daemon=True)
               for copy, (p, blocks) in enumerate(sorted(partitions.items()))]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads) and not failures:
        for thread in threads:
            thread.join(0.05)
    if failures:
        raise failures[0]
    for partition in sorted(answers):
        yield from answers[partition]


def _draining(blocks: deque) -> Iterator[tuple]:
    """``blocks`` in order, each let go as it is taken."""
    while blocks:
        yield blocks.popleft()


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
