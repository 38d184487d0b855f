"""The driver's side of one fit, shared by every strategy.

A :class:`TrainingJob` owns what does not depend on *how* workers cooperate:
the packed training and validation data, the driver's copy of the model, the
callbacks and history, the progress bar, and the Spark jobs that evaluate or
run a function on every partition. A strategy only decides what the workers
do between two epoch ends and hands the epoch's results to :meth:`end_epoch`.
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from sparkeras.data.columns import ColumnMap
from sparkeras.data.packing import CountedBlocks, PreparedData
from sparkeras.errors import worker_error
from sparkeras.log import logger
from sparkeras.metric_values import MetricValue, metric_value
from sparkeras.progress import ProgressBar
from sparkeras.serialization import learning_rate_position, model_state, pack_arrays, set_model_state, unpack_arrays
from sparkeras.worker import tasks
from sparkeras.worker.runtime import HOLD_SECONDS, WarmUp
from sparkeras.worker.tasks import WorkerSpec, run_grouped


@dataclass
class PartitionResult:
    """What one task returned: its partition, sample count, state and metric states."""

    partition: int
    samples: int
    steps: int
    state: list[np.ndarray]
    metrics: list[np.ndarray]
    figures: dict[str, float] = field(default_factory=dict)  # the task's timings (tasks.task_figures)


def run_partitions(prepared: PreparedData, body: Callable[[Iterator[Any]], Iterator[tuple]],
                   doing: str | Callable[[], str], groups: TaskGroups | None = None) -> list[PartitionResult]:
    """Run ``body`` as one task per partition and decode the answers.

    Each task answers one tuple of plain ints and ``bytes`` (arrays encoded
    by :func:`pack_arrays`), so nothing but bytes crosses Spark's channel.
    Its blocks come with the partition's row count from the packing
    (:class:`~sparkeras.data.packing.CountedBlocks`). ``doing`` names the
    work in a failure's message (a function: what it was when it failed).
    ``groups``: run the partitions in ``groups.count`` tasks instead, each training
    its share side by side (:func:`~sparkeras.worker.tasks.run_grouped`).
    """
    counted = list(prepared.stats.rows_per_partition)

    def counted_body(index: int, blocks: Iterator[Any]) -> Iterator[tuple]:
        return body(CountedBlocks(blocks, counted[index] if index < len(counted) else None))

    try:
        if groups is not None and groups.count < prepared.num_partitions:
            timeout = groups.timeout
            rows = (prepared.blocks.mapPartitionsWithIndex(_tagged).coalesce(groups.count)
                    .mapPartitions(lambda tagged: run_grouped(body, tagged, counted, timeout)).collect())
        else:
            rows = prepared.blocks.mapPartitionsWithIndex(counted_body).collect()
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        raise worker_error(exc, doing() if callable(doing) else doing) from None
    results = [
        PartitionResult(p, n, steps, unpack_arrays(state) if state else [],
                        unpack_arrays(metrics) if metrics else [], figures)
        for p, n, steps, state, metrics, figures in rows
    ]
    return sorted(results, key=lambda r: r.partition)


@dataclass(frozen=True)
class TaskGroups:
    """Partitions run in ``count`` tasks, each training its share in threads (:func:`run_partitions`);
    ``timeout`` bounds a thread's wait for its model copy."""

    count: int
    timeout: float


def _tagged(index: int, blocks: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """A partition's blocks, each with its index, after one ``(index, None)`` that names even an empty one."""
    yield index, None
    for block in blocks:
        yield index, block


def sum_metric_states(results: Sequence[PartitionResult]) -> list[np.ndarray] | None:
    """Add up the workers' metric variables (totals, counts, confusion counts).

    Keras metrics keep additive state, so the sum over workers equals the state
    one process would reach on all the rows, and ``result()`` on the sum is
    exactly the global metric.
    """
    states = [r.metrics for r in results if r.samples and r.metrics]
    if not states:
        return None
    return [np.sum([s[i] for s in states], axis=0) for i in range(len(states[0]))]


def warm_up_plan(plan: WarmUp, workers: int) -> WarmUp:
    """``plan`` as the warm-up job's tasks get it: with several workers, each keeps its worker until the build."""
    return replace(plan, hold_seconds=HOLD_SECONDS) if workers > 1 else plan


def start_warm_up(spark: Any, spec: WorkerSpec, workers: int, plan: WarmUp = WarmUp()) -> threading.Thread:
    """Start the training workers' backend import and model build while the driver packs the data.

    A cold Python worker spends seconds importing TensorFlow and building and
    tracing the model before its first step. A job of one short task per
    worker starts that work in a background thread of each Python worker
    and returns once the model is built, freeing the slots for the packing
    pass; the packing and training tasks, which Spark gives the same
    (reused) Python workers (:mod:`sparkeras.data.arrow`), find it done or wait for it
    (:func:`sparkeras.worker.runtime.warm_up`). Returns the thread that
    submits the job; a failed warm-up costs nothing but the time it would
    have saved. ``plan`` names the loop the strategy's tasks run (and
    whether validation data makes them evaluate), so that is what is traced.
    With several workers each task keeps its Python worker until the model
    is built, at most :data:`sparkeras.worker.runtime.HOLD_SECONDS`, so that every task warms
    a worker of its own (:func:`sparkeras.worker.tasks.warm_up`).
    """
    sc = spark.sparkContext
    plan = warm_up_plan(plan, workers)

    def submit() -> None:
        try:
            sc.parallelize(range(workers), workers).mapPartitions(
                lambda it: tasks.warm_up(spec, plan, it)).collect()
        except Exception:  # noqa: BLE001 - the training tasks build the model themselves
            pass

    thread = threading.Thread(target=submit, name="sparkeras-warm-up", daemon=True)
    thread.start()
    return thread


class MetricReader:
    """Turns summed metric states into the ``{name: value}`` logs Keras reports."""

    def __init__(self, model: Any, columns: ColumnMap) -> None:
        self.model = model
        self._build(columns)

    def _build(self, columns: ColumnMap) -> None:
        zeros = [np.zeros((1, *[1 if d is None else d for d in b.shape]), dtype=b.dtype) for b in columns.bindings]
        x, y = columns.data(zeros)[:2]
        # Builds the loss tracker and compiled metrics without running a step.
        self.model._symbolic_build(data_batch=(x, y, None))

    def read(self, states: list[np.ndarray] | None) -> dict[str, MetricValue]:
        if states is None:
            return {}
        variables = self.model.metrics_variables
        if len(variables) != len(states):
            raise RuntimeError(f"workers returned {len(states)} metric variables, the driver has {len(variables)}")
        for var, value in zip(variables, states):
            var.assign(value)
        logs = {k: metric_value(v) for k, v in self.model.get_metrics_result().items()}
        self.model.reset_metrics()
        return logs


class DriverValidation:
    """Validation data small enough to score on the driver: fetched once, then scored every epoch without a job.

    Why. Strategies that validate after the epoch's training (model
    averaging and the parameter-server family) ran one Spark job per
    epoch for it. On ``local[2]`` that job took 40-95 ms whatever the
    rows: a 10-epoch ``averaging`` fit of a 569-row DataFrame with
    ``validation_split=0.1`` took 1.8-2.4 s against 1.1-1.3 s without
    validation. Rows this few score in a few milliseconds in one process,
    so the driver reads the packed validation partitions once (one job)
    and scores its own model, which :meth:`TrainingJob.end_epoch` has just
    set to the epoch's weights, with the loop the workers run
    (:func:`~sparkeras.worker.local_steps.evaluate_arrays`): the same
    loss and metric totals.

    What it costs instead: the read (50-100 ms) and the trace of the
    driver's evaluation loop for the user's model (120-200 ms, once per
    fit: the workers keep theirs from fit to fit), then 5-7 ms an epoch.
    Measured over 10 epochs of that fit: 1.4-1.6 s in all. On a CNN with
    1,300 validation images (4 MB) an epoch's scoring took 65-95 ms on the
    driver against 115-180 ms by the job.

    JAX and PyTorch too. The job per epoch cost them far more: the epochs
    could not run as one job (:class:`~sparkeras.strategies.distributed.OneJobFit`),
    and each epoch's tasks met Python workers that had compiled for other
    partitions' shapes. A 5-epoch JAX ``averaging`` fit of 1,797 digits
    with ``validation_split=0.2`` took 8.5 s cold and 1.4 s warm on
    ``local[2]`` (3.9 and 0.4 s without validation), 21.2 and 6.5 s on a
    standalone cluster of two 2-core hosts with 4 workers; scored on the
    driver (its first ``evaluate`` compiles once, 0.5 s, then 10-20 ms an
    epoch) 4.7 and 0.6 s, 14.6 and 5.8 s.

    Hence for fits that score at least :data:`MIN_EPOCHS` epochs (on JAX
    :data:`MIN_EPOCHS_JAX`: a 3-epoch fit of those digits took 3.1-3.5 s
    cold with a job per epoch, 2.4-2.8 s scored on the driver; on PyTorch the
    two were level), for fixed-shape numeric columns (the workers decode
    images), and up to :data:`MAX_BYTES`; larger validation data is scored
    by the workers, in parallel. ``SparkModel.evaluate`` scores
    driver-side rows with it too, once, where that is faster
    (:func:`~sparkeras.inference.batch.scored_on_driver`).
    """

    MAX_BYTES = 4 * 2**20
    MIN_EPOCHS = 4
    MIN_EPOCHS_JAX = 1

    def __init__(self, columns: Any, arrays: list[np.ndarray], backend: str) -> None:
        self.columns, self.arrays, self.backend = columns, arrays, backend

    @classmethod
    def suits(cls, prepared: PreparedData, epochs: int, backend: str) -> bool:
        """Whether ``prepared`` is small, plain data that the driver can score ``epochs`` times with ``backend``."""
        bindings = prepared.columns.bindings
        fewest = cls.MIN_EPOCHS_JAX if backend == "jax" else cls.MIN_EPOCHS
        if epochs < fewest or not prepared.stats.rows or any(
                b.size is None or b.image is not None for b in bindings):
            return False
        row_bytes = sum(b.size * np.dtype(b.dtype).itemsize for b in bindings)
        return prepared.stats.rows * row_bytes <= cls.MAX_BYTES

    @classmethod
    def of_rows(cls, prepared: PreparedData, rows: Any, backend: str) -> "DriverValidation":
        """The driver-side ``rows`` (a numpy or pandas :class:`~sparkeras.data.sources.Dataset`) that ``prepared``
        packed, converted again on the driver: :meth:`fetch`'s arrays without its job (50 ms warm on ``local[2]``)."""
        from sparkeras.data.packing import pack_on_driver

        return cls(prepared.columns, pack_on_driver(rows, prepared.columns, "validation data"), backend)

    @classmethod
    def fetch(cls, prepared: PreparedData, backend: str) -> "DriverValidation":
        """Read every packed partition onto the driver (one Spark job), in partition order, for ``backend``."""
        from sparkeras.data.packing import read_partition

        try:
            partitions = prepared.blocks.glom().collect()
        except Exception as exc:  # noqa: BLE001 - translated, never swallowed
            raise worker_error(exc, "reading the validation data") from None
        parts = [read_partition(prepared.columns, iter(blocks))[0] for blocks in partitions if blocks]
        return cls(prepared.columns, [np.concatenate(column) for column in zip(*parts)], backend)  # a copy

    def evaluate(self, model: Any, batch_size: int, reader: "MetricReader", scoring: bool) -> dict[str, float]:
        """``model``'s loss and metrics over the validation rows, as the workers' job would report them."""
        from sparkeras.worker.local_steps import evaluate_arrays

        evaluate_arrays(model, self.columns, self.arrays, self.backend, batch_size, scoring=scoring)
        return reader.read([np.asarray(v) for v in model.metrics_variables])


def evaluate(prepared: PreparedData, spec: WorkerSpec, state_blob: Any, batch_size: int,
             reader: MetricReader, scoring: bool = False) -> dict[str, float]:
    """Keras ``evaluate`` over every partition, merged exactly on the driver.

    The tasks read the partitions with ``prepared``'s own columns: validation
    data is packed without the training data's row weights. ``scoring``: a
    pass of the fit's own, whose batch may grow
    (:func:`~sparkeras.worker.local_steps.scoring_batch_size`).
    """
    spec = replace(spec, columns=prepared.columns)
    results = run_partitions(
        prepared, lambda it: tasks.evaluate_partition(spec, state_blob, batch_size, it, scoring), "evaluating")
    return reader.read(sum_metric_states(results))


class FullCollectionsDeferred:
    """Python's full garbage collections wait while fits run, and resume when the last one ends.

    Why. A full collection (generation 2) walks every object the driver
    holds, and holds the interpreter while it does: with TensorFlow, Keras,
    Spark and MLflow loaded that is about 600,000 objects and 0.29-0.34 s
    (0.44 s seen inside a fit). During a fit the driver's threads answer the
    workers (parameter-server rounds, the all-reduce coordinator, the
    epoch's end), so a collection there idles every worker for its length.
    Python starts one once enough objects have outlived two young
    collections, whatever allocated them: over 40 warm 1.6-s fits with
    ``MLflowLogger``, one had one inside it, of 0.88 s (BENCHMARKS.md,
    "Tracking over more rounds"). Rare, and then it costs most where the
    workers wait.

    While a fit runs, the third threshold (young collections between full
    ones) is set out of reach; young collections go on as usual, so cycles
    among new objects are still freed. When the last concurrent fit ends the
    thresholds are restored, and the full collection Python had due runs at
    its next chance, outside the fit. Not ``gc.freeze()``: frozen objects
    are never collected, so a model the user dropped later would never be
    freed.
    """

    _lock = threading.Lock()
    _depth = 0
    _saved: tuple[int, ...] | None = None
    OUT_OF_REACH = 1 << 30

    def __enter__(self) -> "FullCollectionsDeferred":
        with self._lock:
            cls = type(self)
            if cls._depth == 0:
                cls._saved = gc.get_threshold()
                young, middle = cls._saved[0], cls._saved[1]
                gc.set_threshold(young, middle, self.OUT_OF_REACH)
            cls._depth += 1
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            cls = type(self)
            cls._depth -= 1
            if cls._depth == 0 and cls._saved is not None:
                gc.set_threshold(*cls._saved)
                cls._saved = None


@dataclass
class EpochFigures:
    """What one epoch cost, worker by worker: what sparkeras' TensorBoard scalars and plots show.

    ``workers`` maps each worker (its partition) to ``samples``, ``steps``,
    ``seconds`` (its training time), ``wait_seconds`` (waiting on the
    others: a parameter server, an all-reduce, the slowest task of a
    synchronous round), ``bytes`` moved, and ``samples_per_second`` and
    ``step_seconds`` over the time it worked (``seconds`` less
    ``wait_seconds``). A straggler is the worker whose
    ``samples_per_second`` is low while the others' ``wait_seconds`` are
    high. ``staleness`` counts
    the epoch's parameter-server commits by staleness.
    """

    epoch: int
    seconds: float
    samples: int
    workers: dict[int, dict[str, float]] = field(default_factory=dict)
    staleness: dict[int, int] = field(default_factory=dict)


class TrainingJob:
    """One fit, seen from the driver."""

    def __init__(self, *, spark: Any, model: Any, spec: WorkerSpec, train: PreparedData,
                 validation: PreparedData | None, epochs: int, initial_epoch: int, batch_size: int,
                 shuffle: bool, num_workers: int, callbacks: Any, bar: ProgressBar,
                 validation_freq: int | tuple[int, ...] = 1, validation_batch_size: int | None = None,
                 validation_rows: Any = None) -> None:
        self.spark, self.model, self.spec = spark, model, spec
        self.validation_rows = validation_rows  # the validation Dataset when its rows are the driver's
        self.validation_freq = validation_freq  # see sparkeras.worker.tasks.validates
        self.validation_batch_size = validation_batch_size  # the user's, or None: see validation_batch
        self.validation_epochs: list[int] = []  # the epochs (from 1) whose logs have val_ figures
        self.train, self.validation = train, validation
        self.epochs, self.initial_epoch = epochs, initial_epoch
        self.batch_size, self.shuffle, self.num_workers = batch_size, shuffle, num_workers
        self.callbacks, self.bar = callbacks, bar
        self.state: list[np.ndarray] = model_state(model)
        self.learning_rate_position = learning_rate_position(model)
        self.metrics = MetricReader(model, train.columns)
        self.samples_per_second: list[float] = []
        self.restarts: list[dict[str, Any]] = []  # set by strategies that relaunch failed stages
        self.report: dict[str, Any] = {}  # strategy figures, set as attributes of the History
        self.checkpoint: Any = None  # an EpochCheckpoint, written after every completed epoch
        self.strategy_state: Callable[[], dict[str, list[np.ndarray]]] = dict
        self._began: int | None = None  # the last epoch callbacks saw begin
        self.attempt = 1  # how many times the fit's work was launched, relaunches included
        self.figures: list[EpochFigures] = []  # one per completed epoch
        self._workers: dict[int, dict[str, float]] = {}  # the running epoch's, by partition
        self._staleness: dict[int, int] = {}
        self._epoch_started = time.perf_counter()
        self._driver_validation: DriverValidation | bool | None = None  # decided at the first validation

    @property
    def steps_per_worker(self) -> list[int]:
        """Batches each worker runs per epoch (zero-row partitions run none)."""
        return [-(-n // self.batch_size) for n in self.train.stats.rows_per_partition]

    @property
    def learning_rate(self) -> float | None:
        """The learning rate the next work trains with (``None`` when the optimizer follows a schedule).

        Callbacks set it on the driver's model: ``ReduceLROnPlateau`` as an
        epoch ends, ``LearningRateScheduler`` as one begins. The job takes it
        into its state after they ran (:meth:`_take_learning_rate`), and every
        strategy hands it to its workers, whose optimizer states are their
        own otherwise: without that, the workers kept the first rate and the
        driver's was put back at every epoch's end.
        """
        i = self.learning_rate_position
        return None if i is None else float(self.state[i])

    def _take_learning_rate(self) -> None:
        """Carry the driver's learning rate, as callbacks left it, into the state."""
        i = self.learning_rate_position
        if i is not None:
            self.state[i] = np.array(self.model.optimizer.learning_rate, dtype=self.state[i].dtype)

    def validate(self) -> dict[str, float]:
        """The driver's model (set to the epoch's state) scored on the validation data: on the driver when
        it is small (:class:`DriverValidation`), else by a Spark job over its partitions."""
        size, grows = self.validation_batch
        if self.validation_on_driver() and self._driver_validation:
            return self._driver_validation.evaluate(self.model, size, self.metrics, scoring=grows)
        blob = self.broadcast_state()
        try:
            return evaluate(self.validation, self.spec, blob, size, self.metrics, scoring=grows)
        finally:
            blob.unpersist()

    @property
    def validation_batch(self) -> tuple[int, bool]:
        """The validation's batch size, and whether it may grow (``scoring`` of
        :func:`~sparkeras.worker.local_steps.evaluate_arrays`): a batch the user gave is kept, as their own
        ``evaluate`` keeps it; the fit's own ``batch_size`` grows where rows are small."""
        given = self.validation_batch_size
        return (self.batch_size, True) if given is None else (given, False)

    def validation_on_driver(self) -> bool:
        """Whether no validation needs a Spark job: there is none to score, or the driver scores it.

        Decided once, at the first call, for the epochs from the next one
        on; then the validation data is read onto the driver if it suits
        (:class:`DriverValidation`).
        """
        if self.validation is None:
            return True
        if self._driver_validation is None:
            first = self._began if self._began is not None else self.initial_epoch
            scored = sum(tasks.validates(e, self.validation_freq) for e in range(first, self.epochs))
            if not scored:
                return True
            suits = DriverValidation.suits(self.validation, scored, self.spec.backend)
            if not suits:
                self._driver_validation = False
            elif self.validation_rows is not None:
                self._driver_validation = DriverValidation.of_rows(self.validation, self.validation_rows,
                                                                   self.spec.backend)
            else:
                self._driver_validation = DriverValidation.fetch(self.validation, self.spec.backend)
        return bool(self._driver_validation)

    def broadcast_state(self) -> Any:
        """The current state, shipped to executors once per window."""
        return self.spark.sparkContext.broadcast(pack_arrays(self.state))

    def relaunched(self, epoch: int, reason: str) -> None:
        """Record that the fit runs again from ``epoch`` (0-based) after a failure, in ``history.restarts``."""
        self.attempt += 1
        self.restarts.append({"attempt": self.attempt, "resumed_at_epoch": epoch + 1, "reason": reason})
        logger.warning("epoch %d runs again (attempt %d): %s", epoch + 1, self.attempt, reason)

    def begin_epoch(self, epoch: int) -> None:
        """Start ``epoch``'s progress bar; callbacks hear of it once, however often it is relaunched."""
        if epoch != self._began:
            self.callbacks.on_epoch_begin(epoch)
            self._take_learning_rate()
            self._began = epoch
        self._workers, self._staleness = {}, {}
        self._epoch_started = time.perf_counter()
        self.bar.begin_epoch(epoch, self.train.stats.rows)

    def add_worker_figures(self, partition: int, samples: int, steps: int, figures: dict[str, float]) -> None:
        """Add what one task measured (``seconds``, ``wait_seconds``, ``bytes``) to the running epoch's figures.

        An epoch trained in several windows (one Spark job each) adds up its windows.
        """
        total = self._workers.setdefault(partition, dict.fromkeys(
            ("samples", "steps", "seconds", "wait_seconds", "bytes"), 0.0))
        total["samples"] += samples
        total["steps"] += steps
        for key in ("seconds", "wait_seconds", "bytes"):
            total[key] += float(figures.get(key, 0.0))

    def add_results(self, results: Sequence[PartitionResult]) -> None:
        """The figures of a Spark job's training tasks (those that trained rows)."""
        for r in results:
            if r.samples and r.figures:
                self.add_worker_figures(r.partition, r.samples, r.steps, r.figures)

    def add_staleness(self, counts: dict[int, int]) -> None:
        """The running epoch's parameter-server commits, by staleness."""
        for k, n in counts.items():
            self._staleness[int(k)] = self._staleness.get(int(k), 0) + int(n)

    def _close_figures(self, epoch: int) -> EpochFigures:
        workers = {}
        for partition, w in sorted(self._workers.items()):
            seconds = max(w["seconds"] - w["wait_seconds"], 1e-9)  # working, not waiting on the others
            workers[partition] = {**w, "samples_per_second": w["samples"] / seconds,
                                  "step_seconds": seconds / max(w["steps"], 1.0)}
        figures = EpochFigures(epoch, time.perf_counter() - self._epoch_started, self.train.stats.rows, workers,
                               dict(sorted(self._staleness.items())))
        self.figures.append(figures)
        return figures

    def end_epoch(self, epoch: int, metric_states: list[np.ndarray] | None,
                  validation_states: list[np.ndarray] | None = None, evaluate_train: bool = False,
                  center_states: list[np.ndarray] | None = None) -> bool:
        """Publish the epoch: driver weights, logs, validation, callbacks. True to stop.

        Validation runs as a Spark job unless the strategy already measured
        it (``validation_states``, summed metric states), as barrier training
        does inside its tasks, which hold every slot while they run.

        ``evaluate_train`` is for strategies whose saved model (a parameter
        server's center) is not the one the workers trained: the epoch's
        ``loss`` and metrics are then the saved model's, measured exactly on
        the training data by one more Spark job, and the workers' running
        figures are kept under ``worker_`` names. The user sees the figures
        of the model they will ship. ``center_states`` are those figures'
        metric states when the training tasks already measured them (a
        fit in one Spark job), and then no job runs.
        """
        set_model_state(self.model, self.state)
        logs = self.metrics.read(metric_states)
        if evaluate_train:
            workers = {f"worker_{k}": v for k, v in logs.items()}
            if center_states is not None:
                logs = self.metrics.read(center_states)
            else:
                blob = self.broadcast_state()
                try:
                    logs = evaluate(self.train, self.spec, blob, self.batch_size, self.metrics, scoring=True)
                finally:
                    blob.unpersist()
            logs.update(workers)
        if validation_states is not None:
            logs.update({f"val_{k}": v for k, v in self.metrics.read(validation_states).items()})
        elif self.validation is not None and tasks.validates(epoch, self.validation_freq):
            logs.update({f"val_{k}": v for k, v in self.validate().items()})
        if any(k.startswith("val_") for k in logs):
            self.validation_epochs.append(epoch + 1)
        self.samples_per_second.append(self.bar.end_epoch(logs))
        figures = self._close_figures(epoch)
        for callback in self.callbacks.callbacks:
            hook = getattr(callback, "on_epoch_figures", None)
            if hook is not None:
                hook(figures)
        self.callbacks.on_epoch_end(epoch, logs)
        self._take_learning_rate()
        user_model = getattr(self.callbacks, "model", None)  # the user's model: self.model may be its trunk
        user_model = self.model if user_model is None else user_model
        if self.checkpoint is not None:
            history = getattr(user_model, "history", None)
            self.checkpoint.save(epoch + 1, self.state, self.strategy_state(),
                                 dict(getattr(history, "history", {}) or {}))
        return bool(getattr(user_model, "stop_training", False))
