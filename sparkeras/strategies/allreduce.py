"""Synchronous per-step gradient all-reduce in one Spark barrier stage (Horovod-style).

``num_workers`` barrier tasks live for the whole fit. Every step each sums its
gradients with the others' (through shared memory on one machine, and an
authenticated TCP ring between machines: :mod:`sparkeras.comm.collective`)
and applies the same update, so N workers train exactly like one process with an N-times larger
batch (see :mod:`sparkeras.worker.allreduce` for unequal partitions and
BatchNormalization). Keras' ``fit`` under ``MultiWorkerMirroredStrategy`` is
not used: it fails under Keras 3 (keras-team/keras#20585).

The driver side here runs a small coordinator while the stage runs. Tasks
ask it where to start (epoch and state), and rank 0 reports every finished
epoch to it; the driver then publishes the epoch (weights, History,
callbacks such as EarlyStopping and ModelCheckpoint) and answers whether to
stop. The driver therefore always holds the state of the last completed
epoch (and writes it to ``checkpoint_dir`` if given,
see :mod:`sparkeras.storage.checkpoint`). If the stage fails (a
worker dies, an executor is lost), it is launched again, up to
``max_restarts`` times, and resumes from that epoch; ``history.restarts``
lists each restart and the epoch it re-ran from.
"""

from __future__ import annotations

import queue
from dataclasses import replace
from typing import Any

import numpy as np

from sparkeras.barrier import DEFAULT_TIMEOUT, CollectiveSettings, check_barrier
from sparkeras.comm.collective import Rendezvous
from sparkeras.comm.server import FrameServer
from sparkeras.errors import (ClusterCapacityError, ExecutorEnvironmentError, FitCancelled, InputError,
                              failure_reason, worker_error)
from sparkeras.log import logger
from sparkeras.serialization import pack_arrays, unpack_arrays
from sparkeras.session import driver_host
from sparkeras.strategies.base import Strategy
from sparkeras.strategies.epochs import TaggedJob, SlotWatch, check_restart_settings, wait_for_slots
from sparkeras.worker.learning_rate import allreduce_warmup_epochs, check_rule, scale_factor
from sparkeras.training import TrainingJob
from sparkeras.worker.backends import BACKENDS
from sparkeras.worker.allreduce import TRAIN, VALIDATION, BarrierSpec, train_barrier
from sparkeras.worker.faults import Hold
from sparkeras.worker.runtime import WarmUp


class AllReduce(Strategy):
    """Every step, sum gradients over all workers; every worker applies the same update.

    Args:
        timeout: seconds to wait for all tasks at the rendezvous, for any
            collective, and for the driver's answer at an epoch end.
        max_restarts: how many times a failed stage is launched again,
            resuming from the last completed epoch.
        checkpoint_dir: where the state of each completed epoch is written;
            the same as ``fit(checkpoint_dir=...)``, which works for every
            strategy.
        sync_batch_norm: compute BatchNormalization statistics over the global
            batch (every backend), so training equals one process with
            the global batch. ``False`` keeps per-worker statistics and
            averages the moving statistics at each epoch end.
        learning_rate_scaling: how the learning rate grows with the global
            batch (``num_workers`` times the ``batch_size`` of ``fit``):
            ``"auto"`` (default) scales by ``num_workers`` for SGD, and for
            the Adam family up to 4 workers, and by ``sqrt(num_workers)``
            for other adaptive optimizers (RMSprop...) and more workers;
            ``"linear"``, ``"sqrt"``, or ``None`` to keep the model's rate
            (then training equals one process with the global batch). See
            :mod:`sparkeras.worker.learning_rate`.
        warmup_epochs: epochs over which the rate rises linearly from the
            model's rate to the scaled one. ``None`` (default): one epoch
            for the Adam family's linear rule above 2 workers, as model
            averaging's (:data:`~sparkeras.worker.learning_rate.ADAM_FAMILY_WARMUP_EPOCHS`),
            else a quarter epoch:
            against a whole one, on eight tasks with 2 and 4 workers (Adam,
            RMSprop, and momentum SGD, whose rate doubles or quadruples),
            the first epochs were ahead, the model at the last epoch stayed
            as close to ``model.fit``'s, and a small CNN reached its
            accuracy an epoch sooner (BENCHMARKS.md, "The learning-rate
            warmup").
        slot_timeout: seconds the fit waits, while it runs or before a
            relaunch, when the cluster has fewer task slots than
            ``num_workers`` (a lost executor or worker); then it stops with
            :class:`~sparkeras.errors.ClusterCapacityError` naming the
            missing slots, instead of waiting for Spark's own barrier
            retries (ten minutes at a time).
        shared_memory: workers on the same machine sum their gradients
            through shared memory, and only one worker per machine talks to
            the other machines, over TCP (see :mod:`sparkeras.comm.collective`).
            ``False`` makes every worker a member of the TCP ring.
        min_workers: continue elastically, as Horovod's ``run_elastic``:
            when the cluster has had fewer slots than workers for
            ``slot_timeout`` seconds, the fit goes on from its last completed
            epoch with as many workers as there are slots, if at least
            ``min_workers``; each takes over the partitions of the lost ones
            (worker ``r`` trains partitions ``r``, ``r + M``, ...), and the
            learning rate is scaled for the new global batch. ``None``
            (default) stops with the capacity error instead, since the
            global batch, and so the model, would change.
    """

    name = "allreduce"
    driver_holds_optimizer_state = True

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, max_restarts: int = 2,
                 checkpoint_dir: str | None = None, sync_batch_norm: bool = True,
                 shared_memory: bool = True, learning_rate_scaling: str | None = "auto",
                 warmup_epochs: float | None = None, slot_timeout: float = 120.0, min_workers: int | None = None) -> None:
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        if min_workers is not None and (isinstance(min_workers, bool) or not isinstance(min_workers, int)
                                        or min_workers < 1):
            raise InputError(f"min_workers must be a positive number of workers or None (stop when slots are "
                             f"lost), got {min_workers!r}.")
        self.min_workers = min_workers
        check_restart_settings(max_restarts, slot_timeout)
        try:
            self.learning_rate_scaling = check_rule(learning_rate_scaling)
        except ValueError as exc:
            raise InputError(f"{exc}.") from None
        if warmup_epochs is not None and (not isinstance(warmup_epochs, (int, float)) or warmup_epochs < 0):
            raise InputError(f"warmup_epochs must be a non-negative number or None (the rule's own), "
                             f"got {warmup_epochs!r}.")
        self.warmup_epochs = None if warmup_epochs is None else float(warmup_epochs)
        self.slot_timeout = float(slot_timeout)
        self.timeout = float(timeout)
        self.max_restarts = max_restarts
        self.checkpoint_dir = checkpoint_dir
        self.sync_batch_norm = bool(sync_batch_norm)
        self.shared_memory = bool(shared_memory)
        self.fail_once: tuple[int, int, str] | None = None  # test hook, see BarrierSpec
        self.hold_once: Hold = None  # test hook, see sparkeras.worker.faults

    @property
    def averages_moving_statistics(self) -> bool:  # type: ignore[override]
        """With the learning rate scaled, N workers stand for one process at the per-worker batch, and
        BatchNormalization's moving statistics forget per row as there; ``learning_rate_scaling=None``
        keeps the exact equivalence with one process at the global batch, moving statistics included."""
        return self.learning_rate_scaling != "none"

    def check_model(self, model: Any) -> None:
        """The all-reduce splits Keras' own step around the global sum, so an overridden ``train_step``
        would be skipped without a word; model averaging and the parameter-server rules run it as written."""
        import keras

        own = keras.Model.train_step
        for cls in type(model).__mro__:
            if "train_step" in vars(cls):
                if vars(cls)["train_step"] is not own and cls.__module__.split(".")[0] != "keras":
                    raise InputError(
                        f"strategy='allreduce' cannot train {type(model).__name__}: its train_step "
                        f"({cls.__qualname__}.train_step) is its own, and the all-reduce computes and sums the "
                        "gradients itself, between the backward pass and the update, so it would not run. Use "
                        "strategy='averaging', which runs the model's train_step as written, or move the custom "
                        "logic into compute_loss, which the all-reduce calls.")
                return

    def worker_warm_up(self, spark: Any, num_workers: int) -> WarmUp:
        """The split gradient step: traced by a cold worker while the data is packed, not in its first step."""
        return WarmUp(loop="gradients", sync_batch_norm=self.sync_batch_norm)

    def _collective_settings(self, spark: Any, rendezvous: Any) -> CollectiveSettings:
        return CollectiveSettings.for_cluster(spark.sparkContext, rendezvous, self.timeout, self.shared_memory)

    def get_config(self) -> dict[str, Any]:
        return {"timeout": self.timeout, "max_restarts": self.max_restarts,
                "checkpoint_dir": self.checkpoint_dir, "sync_batch_norm": self.sync_batch_norm,
                "shared_memory": self.shared_memory, "learning_rate_scaling": self.learning_rate_scaling,
                "warmup_epochs": self.warmup_epochs, "slot_timeout": self.slot_timeout,
                "min_workers": self.min_workers}

    def check_cluster(self, spark: Any, num_workers: int) -> None:
        import keras

        backend = keras.config.backend()
        if backend not in BACKENDS:
            raise InputError(
                f"strategy='allreduce' supports the Keras backends {', '.join(BACKENDS)}, not "
                f"{backend!r}; set KERAS_BACKEND to one of them or use strategy='averaging'.")
        check_barrier(spark.sparkContext, num_workers)

    def fit(self, job: TrainingJob) -> None:
        coordinator = _Coordinator(job, Rendezvous(self.timeout))
        epoch_limit = sum(a.nbytes for a in job.state) + (16 << 20)  # the state, metric states, codec header
        server = FrameServer(driver_host(job.spark), coordinator.handle,
                             lambda h: epoch_limit if h.get("type") == "epoch" else 0, "sparkeras-allreduce")
        settings = self._collective_settings(job.spark, server.address)
        start_step = int(np.asarray(job.model.optimizer.iterations))
        try:
            workers, attempt = job.num_workers, 1
            spec, tagged = self._stage(job, settings, workers, start_step)
            coordinator.arrange(spec)
            while not coordinator.finished:
                error = None
                try:
                    error = coordinator.run_stage(
                        lambda: tagged.barrier().mapPartitions(lambda it: train_barrier(spec, it)).collect(),
                        self.slot_timeout)
                    if error is None:
                        break
                    failure = worker_error(error, f"training epoch {coordinator.next_epoch + 1}")
                    if isinstance(failure, (InputError, FitCancelled, ExecutorEnvironmentError)) \
                            or attempt > self.max_restarts:
                        raise failure
                    wait_for_slots(job, self.name, workers, self.slot_timeout, coordinator.next_epoch)
                    attempt += 1
                    coordinator.restarted(attempt, error)
                except ClusterCapacityError as lost:  # one relaunch, one entry: the failure, then the shrink
                    workers = self._workers_left(job, lost)
                    attempt += 1
                    coordinator.restarted(attempt, lost, f"continuing with {workers} worker(s)", error)
                    spec, tagged = self._stage(job, settings, workers, start_step)
                    coordinator.arrange(spec)
        finally:
            server.close()
            coordinator.rendezvous.close()
        job.restarts = coordinator.restarts

    def _stage(self, job: TrainingJob, settings: CollectiveSettings, workers: int,
               start_step: int) -> tuple[BarrierSpec, Any]:
        """The barrier stage's spec and input for ``workers`` workers; fewer than the fit's partitions
        (an elastic fit that lost slots) each train several: worker ``r`` those ``p`` with ``p % workers == r``."""
        rows = rows_per_rank(job.train.stats.rows_per_partition, workers)
        spec = BarrierSpec(
            worker=job.spec, collective=settings, epochs=job.epochs, batch_size=job.batch_size,
            shuffle=job.shuffle, rows=rows, validation=job.validation is not None,
            validation_freq=job.validation_freq, validation_batch_size=job.validation_batch_size,
            sync_batch_norm=self.sync_batch_norm,
            fail_once=self.fail_once, hold_once=self.hold_once)
        optimizer = job.model.optimizer
        warmup = allreduce_warmup_epochs(self.warmup_epochs, self.learning_rate_scaling, optimizer, workers)
        spec = replace(spec, learning_rate_scale=scale_factor(self.learning_rate_scaling, optimizer, workers),
                       warmup_steps=round(warmup * spec.steps), start_step=start_step)
        return spec, _barrier_input(job.train, job.validation, workers)

    def _workers_left(self, job: TrainingJob, lost: ClusterCapacityError) -> int:
        """How many workers an elastic fit continues with, or ``lost`` raised again when it may not."""
        from sparkeras.barrier import concurrent_slots

        slots = min(concurrent_slots(job.spark.sparkContext), job.num_workers)
        if self.min_workers is None or slots < self.min_workers:
            raise lost
        return slots


def rows_per_rank(partitions: list[int], workers: int) -> tuple[int, ...]:
    """The rows each of ``workers`` ranks trains: rank ``r`` takes partitions ``r``, ``r + workers``, ..."""
    return tuple(sum(partitions[p] for p in range(rank, len(partitions), workers)) for rank in range(workers))


def _barrier_input(train: Any, validation: Any, num_workers: int) -> Any:
    """The packed blocks, keyed by (partition, role, position), that barrier task i reads: partition i's.

    Without validation data, and when Spark accepts a barrier stage over the
    packed blocks' own lineage, the stage reads the cached blocks where they
    are. Otherwise a shuffle brings training *and* validation partition i to
    task i (:func:`_copartition`).

    Why not always shuffle. On a cluster the blocks are the packed data, and
    the shuffle took it through Python twice more on every fit: on
    ``local-cluster[2,1,3072]``, 60,000 x 784 floats reached the tasks 1.2 s
    later, and they took 0.9 s longer to read it. A relaunched stage reads
    the cache again; Spark recomputes a lost executor's blocks from their
    lineage.
    """
    if validation is None and _one_barrier_stage(train.blocks, num_workers):
        return train.blocks.mapPartitionsWithIndex(_tag(TRAIN), preservesPartitioning=True)
    return _copartition(train, validation, num_workers)


def _tag(role: int, first: int = 0) -> Any:
    """Key each block of partition ``index`` by ``(index - first, role, position)``."""
    return lambda index, blocks: (((index - first, role, k), b) for k, b in enumerate(blocks))


def _copartition(train: Any, validation: Any, num_workers: int) -> Any:
    """Key every block by (partition, role, position), so task i gets training *and* validation partition i.

    The shuffle also starts the barrier stage afresh: Spark refuses a barrier
    stage whose own lineage changes the number of partitions (a ``union`` or
    ``coalesce`` upstream, common in user DataFrames). In local mode the
    blocks are file paths, so this moves a few bytes; on a cluster it moves
    the packed data once per fit, and a relaunched stage reuses the shuffle.

    The two sides are joined before the one Python function that keys them
    (by the union's partition index) and the shuffle's own keying, which
    pyspark runs together in one Python worker. Keyed each on its own side,
    then joined, every map task ran two Python workers at once, one inside
    the other: an executor of 2 cores kept 4, Spark hands tasks its idle
    workers in turn, and every other fit's training tasks met workers
    without the model. On a two-host cluster with 4 workers, three refits
    took 2.9, 1.7 and 1.4 s with TensorFlow (now 1.9, 1.6, 1.4), and 3.2,
    5.4 and 1.4 s with PyTorch, whose fresh workers import it (now 1.7,
    1.6, 1.5).
    """
    first = train.blocks.getNumPartitions()
    blocks = train.blocks if validation is None else train.blocks.union(validation.blocks)

    def tag(index: int, rows: Any) -> Any:  # the union's partitions: the training side's, then the validation's
        return _tag(TRAIN)(index, rows) if index < first else _tag(VALIDATION, first)(index, rows)

    return blocks.mapPartitionsWithIndex(tag).partitionBy(num_workers, lambda key: key[0])


def _one_barrier_stage(rdd: Any, num_workers: int) -> bool:
    """Whether Spark runs a barrier stage over ``rdd`` itself, by the rule its scheduler checks.

    ``DAGScheduler.checkBarrierStageWithRDDChainPattern`` refuses a barrier
    stage in which an RDD reached through narrow dependencies has another
    number of partitions, or more than one shuffle dependency. The walk
    stops at shuffles, as stages do. Anything it cannot read (another Spark
    build's classes) answers False, and the shuffle is used.
    """
    try:
        pending, seen = [rdd._jrdd.rdd()], set()
        while pending:
            current = pending.pop()
            if current.id() in seen:
                continue
            seen.add(current.id())
            if current.getNumPartitions() != num_workers:
                return False
            dependencies, shuffles = current.dependencies(), 0
            for i in range(dependencies.size()):
                dependency = dependencies.apply(i)
                if dependency.getClass().getSimpleName() == "ShuffleDependency":
                    shuffles += 1
                else:
                    pending.append(dependency.rdd())
            if shuffles > 1:
                return False
        return True
    except Exception:  # noqa: BLE001 - unknown lineage: the shuffle always works
        return False


class _Coordinator:
    """The driver's side of a barrier fit: start states out, epoch reports in.

    It also serves the tasks' rendezvous (:class:`~sparkeras.comm.collective.Rendezvous`).
    Frames arrive on server threads; the epoch reports are handed to the
    thread that called :meth:`run_stage`, so callbacks run where ``fit`` was
    called, one epoch at a time, while the tasks wait for the answer.
    """

    def __init__(self, job: TrainingJob, rendezvous: Rendezvous) -> None:
        self.job = job
        self.rendezvous = rendezvous
        self.next_epoch = job.initial_epoch
        self.finished = False
        self.restarts: list[dict[str, Any]] = job.restarts
        self._reports: queue.Queue = queue.Queue()
        self._began: int | None = None
        self.rows: tuple[int, ...] = tuple(job.train.stats.rows_per_partition)  # per rank, see arrange
        self.steps = max(job.steps_per_worker)

    def arrange(self, spec: BarrierSpec) -> None:
        """The next stage's ranks: their rows and steps, for the epoch figures."""
        self.rows, self.steps = spec.rows, spec.steps

    def handle(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes] | None:
        kind = header.get("type")
        if kind == "start":
            return {"epoch": self.next_epoch}, pack_arrays(self.job.state)
        if kind == "epoch":
            answer: queue.Queue = queue.Queue(maxsize=1)
            self._reports.put((header, payload, answer))
            return answer.get(), b""
        return self.rendezvous.handle(header, payload)

    def run_stage(self, launch: Any, slot_timeout: float) -> BaseException | None:
        """Run the barrier stage, serving epoch reports until it ends; return its error, if any.

        While it runs, the cluster's task slots are watched: when fewer
        than ``num_workers`` remain for ``slot_timeout`` seconds (an
        executor or a whole worker was lost and nothing replaced it), Spark
        would wait for them, relaunching the barrier stage for up to ten
        minutes at a time. The stage's jobs are cancelled instead, and
        :class:`ClusterCapacityError` says what is missing.
        """
        sc = self.job.spark.sparkContext
        self._begin()  # before the tasks ask for the state: a callback may set the epoch's learning rate

        def launch_then_wake() -> Any:
            try:
                return launch()
            finally:
                self._reports.put(None)  # the loop below sees the end now, not at its next poll

        stage = TaggedJob(sc, "allreduce", "sparkeras allreduce", launch_then_wake)
        watch = SlotWatch(sc, "allreduce", len(self.rows), slot_timeout)
        callback_error: BaseException | None = None
        capacity: BaseException | None = None
        while not stage.finished.is_set() or not self._reports.empty():
            if capacity is None:
                capacity = watch.lost(self.next_epoch)
                if capacity is not None:
                    stage.cancel()
            try:
                report = self._reports.get(timeout=0.1)
            except queue.Empty:
                continue
            if report is None:
                continue
            header, payload, answer = report
            try:
                answer.put(self._end_epoch(header, payload))
            except BaseException as exc:  # a callback failed: stop the tasks, then raise it
                answer.put({"stop": True})
                callback_error = exc
        stage.finished.wait()
        if callback_error is not None:
            raise callback_error
        if capacity is not None:
            raise capacity
        if stage.error is None:
            self.finished = True
        return stage.error

    def restarted(self, attempt: int, failure: BaseException, then: str = "",
                  after: BaseException | None = None) -> None:
        """Record a relaunch; callbacks saw ``on_epoch_begin`` for the epoch already, so only the bar restarts.

        ``then`` says how the fit goes on (the capacity ``failure``'s details
        left out), ``after`` what failed the stage before the slots were lost.
        """
        reason = failure_reason(failure)
        if then:
            reason = f"{reason.split(' (', 1)[0]}; {then}"
        if after is not None:
            reason = f"{failure_reason(after)}; then {reason}"
        self.restarts.append({"attempt": attempt, "resumed_at_epoch": self.next_epoch + 1, "reason": reason})
        logger.warning("epoch %d runs again (attempt %d): %s", self.next_epoch + 1, attempt,
                       self.restarts[-1]["reason"])
        if self._began == self.next_epoch:
            self.job.bar.begin_epoch(self.next_epoch, self.job.train.stats.rows)

    def _begin(self) -> None:
        if self.next_epoch < self.job.epochs and self._began != self.next_epoch:
            self.job.begin_epoch(self.next_epoch)
            self._began = self.next_epoch

    def _end_epoch(self, header: dict[str, Any], payload: bytes) -> dict[str, Any]:
        """Publish a reported epoch; the answer says whether to stop and the next epoch's learning rate."""
        arrays = unpack_arrays(payload)
        epoch, k, m = int(header["epoch"]), int(header["state"]), int(header["train_metrics"])
        self.job.state = arrays[:k]
        rows, steps = self.rows, self.steps
        for rank, figures in enumerate(header.get("workers") or []):
            self.job.add_worker_figures(rank, rows[rank] if rank < len(rows) else 0, steps, dict(figures))
        stop = self.job.end_epoch(epoch, arrays[k:k + m], arrays[k + m:] if header.get("validation") else None)
        self.next_epoch = epoch + 1
        if stop or self.next_epoch >= self.job.epochs:
            self.finished = True
        else:
            self._begin()
        return {"stop": stop, "learning_rate": self.job.learning_rate}
