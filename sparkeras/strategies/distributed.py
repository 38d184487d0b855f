"""Asynchronous training through a parameter server, and the distributed optimizers.

The driver runs a :class:`~sparkeras.comm.parameter_server.ParameterServer`
holding the *center variable* for the length of a fit. When nothing
between epochs needs a Spark job (and, for asynchronous rules, the cluster
runs every worker at once) the whole fit is one job (:class:`OneJobFit`),
else each epoch is one: every task trains its partition with the
model's own optimizer and, every ``window`` batches, exchanges weights with
the server (see :mod:`sparkeras.worker.asynchronous`). What is exchanged,
and how the server folds it in, is the *distributed optimizer*: a
:class:`DistributedOptimizer` subclass with three small rules.

* worker: :meth:`~DistributedOptimizer.commit` (what to send, from the local
  weights and the latest center the worker knows) and
  :meth:`~DistributedOptimizer.fold` (the local weights after the exchange);
* server: :meth:`~DistributedOptimizer.apply` (fold one commit into the
  center, given its staleness in server updates).

The built-in ones (dist-keras' family, plus Elephas' modes):

=========  ===============================================================
async      Elephas' asynchronous mode: commit ``local - center`` (the
           window's accumulated update), the server adds it under a lock;
           the worker continues from the new center. With more than 2
           workers, DynSGD's damping by default (``staleness_damping``).
hogwild    The same without the lock (Recht et al., 2011, "Hogwild!").
downpour   Dean et al., 2012, "Large Scale Distributed Deep Networks":
           as ``async``, dist-keras' default window of 5.
adag       Hermans et al., 2017, "Accumulated Gradient Normalization":
           commit ``(local - center) / window``, the mean update of the
           window, so stale commits move the center less (window 8; the
           workers train at ``window`` times the rate, see :class:`ADAG`).
dynsgd     Jiang et al., 2017, "Heterogeneity-aware Distributed Parameter
           Servers": the server adds ``delta / (staleness + 1)``, where
           staleness counts the updates applied since the worker last saw
           the center (the workers train at N times the rate).
easgd      Zhang, Choromanska & LeCun, 2015, "Deep learning with Elastic
           Averaging SGD", synchronous: every window all workers send
           ``E = alpha * (local - center)`` and move ``local -= E``; when
           the round is complete the server adds every ``E`` (window
           ``64 / N`` batches, at least 8).
aeasgd     The asynchronous variant: pull the current center, then the same
           elastic step (the same window).
eamsgd     AEASGD whose local optimizer is SGD with Nesterov momentum
           (the paper's EAMSGD; dist-keras' window of 32).
=========  ===============================================================

``alpha = rho * learning_rate`` for the elastic family, as in the paper and in
dist-keras; ``easgd`` without a ``rho`` takes the paper's ``alpha = 0.9 / N``.
``easgd``, ``aeasgd``, ``adag`` and ``dynsgd`` (and ``async`` and ``hogwild`` with more
than 2 workers) train their workers at a multiple of the model's rate
(:meth:`DistributedOptimizer.rate_factor`), as model averaging does, reached
over a warmup (:meth:`DistributedOptimizer.rate_ramp`).

A worker keeps its own optimizer state (and, for the elastic rules, its own
weights) across epochs: they travel back to the driver with the task's
result and are handed back at the next join, with the driver's learning rate
put in (callbacks such as ``ReduceLROnPlateau`` set it there). The driver's
model receives the center's weights after every epoch
(:meth:`DistributedOptimizer.model_weights`; model averaging takes its
Nesterov look-ahead out of them); its optimizer state is left as it was.
Validation runs on those weights, the saved model's.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from sparkeras.comm.parameter_server import ParameterServer
from sparkeras.errors import ClusterCapacityError, InputError
from sparkeras.serialization import ModelSpec, pack_arrays, unpack_arrays
from sparkeras.session import driver_host
from sparkeras.strategies.base import Strategy
from sparkeras.strategies.epochs import EpochAttempts, check_restart_settings
from sparkeras.training import PartitionResult, TaskGroups, TrainingJob, run_partitions, sum_metric_states
from sparkeras.worker.asynchronous import ServerTaskSpec, is_shared, train_with_server
from sparkeras.worker.faults import Hold

Arrays = list[np.ndarray]


class DistributedOptimizer(Strategy):
    """Base class of parameter-server strategies: subclass it to write your own.

    Implement :meth:`commit`, :meth:`fold` and :meth:`apply` on lists of
    numpy arrays (one per float weight of the model). Class attributes tune
    the protocol:

    * ``lock`` (default ``True``): the server applies commits one at a time;
      ``False`` lets concurrent commits race (hogwild).
    * ``synchronous`` (default ``False``): a commit waits until every worker
      has sent its commit of the same round; the server then applies all of
      them and everyone continues from the same center.
    * ``pull_first`` (default ``False``): fetch the current center right
      before :meth:`commit`, for rules whose commit depends on it (elastic
      averaging); the commit is then acknowledged without sending the
      center back.
    * ``reports_center`` (default ``True``): the epoch's ``loss`` and
      metrics are the center's (the saved model's), measured exactly on the
      training data after the epoch (by the training tasks in a fit that is
      one Spark job, else by a job); the workers' running figures are
      ``worker_loss``, ``worker_accuracy``... Measured with the elastic
      rules, the two differ a lot: EAMSGD's workers showed 0.69 accuracy
      while the center scored 0.36.

    A failed epoch (a lost Python worker or executor) is run again from the
    center and worker states it started with, up to ``max_restarts`` times
    per fit (:mod:`sparkeras.strategies.epochs`); ``history.restarts`` lists
    each relaunch. Asynchronous rules trained one job per epoch also accept
    Spark's own task retries: the retried task joins again and goes on. In
    a whole-fit job a retry is a relaunch from its epoch, and with fewer
    task slots than workers the fit goes on one job per epoch.

    Args:
        window: batches between two exchanges with the server (the
            communication window), or ``"epoch"`` for one exchange at the end
            of each epoch.
        timeout: seconds a worker keeps retrying a lost connection, and a
            synchronous round waits for its slowest worker.
        max_restarts: how many failed epochs the fit runs again.
        slot_timeout: synchronous rules: seconds the fit waits with fewer
            task slots than workers (a lost executor or worker) before it
            stops with :class:`~sparkeras.errors.ClusterCapacityError`.
    """

    _ramp: tuple[float, float, int] = (1.0, 0.0, 1)  # the workers' rate factor, warmup epochs, batches per epoch
    _trainable: tuple[bool, ...] | None = None  # per shared weight, recorded by fit; None: all trainable
    _task_groups: TaskGroups | None = None  # a synchronous fit's workers in fewer tasks (run_partitions), or None

    name: ClassVar[str] = "distributed"
    default_window: ClassVar[int | str] = 5
    reports_center: ClassVar[bool] = True
    lock: ClassVar[bool] = True
    synchronous: ClassVar[bool] = False
    pull_first: ClassVar[bool] = False

    def __init__(self, window: int | str | None = None, timeout: float = 300.0, max_restarts: int = 2,
                 slot_timeout: float = 120.0) -> None:
        window = self.default_window if window is None else window
        if window != "epoch" and not (isinstance(window, int) and not isinstance(window, bool) and window > 0):
            raise InputError(f"window must be 'epoch' or a positive number of batches, got {window!r}.")
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        check_restart_settings(max_restarts, slot_timeout)
        self.window = window
        self.timeout = float(timeout)
        self.max_restarts, self.slot_timeout = max_restarts, float(slot_timeout)
        self._server: ParameterServer | None = None
        self._restored_local: dict[int, bytes] = {}  # workers' local states from a checkpoint
        self._restored_version: int | None = None
        self._finished: tuple[dict[int, bytes], int] | None = None  # the last completed fit's, see checkpoint_state
        self.cut_connection_after: int | None = None  # test hook, see ParameterServer
        self.fail_once: tuple[int, str] | None = None  # test hook: (epoch, marker file), see worker.asynchronous
        self.hold_once: Hold = None  # test hook, see sparkeras.worker.faults

    def get_config(self) -> dict[str, Any]:
        return {"window": self.window, "timeout": self.timeout, "max_restarts": self.max_restarts,
                "slot_timeout": self.slot_timeout}

    _DRIVER_ONLY = ("_server", "_restored_local", "_restored_version", "_restored_velocity", "_outer",
                    "_velocity_at_start", "_finished")

    def __getstate__(self) -> dict[str, Any]:
        """The rule travels to the workers in every task; the driver's server and checkpoint state stay behind."""
        return {k: v for k, v in self.__dict__.items() if k not in self._DRIVER_ONLY}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.update(dict.fromkeys(self._DRIVER_ONLY), _restored_local={})

    # -- the three rules ---------------------------------------------------

    @abc.abstractmethod
    def commit(self, local: Arrays, center: Arrays, steps: int) -> Arrays:
        """Worker: what to send after ``steps`` local batches, given the latest center it knows."""

    @abc.abstractmethod
    def fold(self, local: Arrays, center: Arrays, sent: Arrays | None) -> Arrays:
        """Worker: the local weights after an exchange (``sent`` is ``None`` when joining)."""

    @abc.abstractmethod
    def apply(self, center: Arrays, commit: Arrays, staleness: int) -> None:
        """Server: fold ``commit`` into ``center`` in place.

        ``staleness`` is the number of updates the server applied since the
        committing worker last received the center.
        """

    def apply_round(self, center: Arrays, commits: list[Arrays]) -> None:
        """Server, synchronous rules: fold one complete round of commits into ``center`` in place.

        The default applies them one after another with :meth:`apply`;
        a rule that needs the whole round at once (an outer optimizer step on
        the workers' mean, as in model averaging) overrides it.
        """
        for commit in commits:
            self.apply(center, commit, 0)

    def local_optimizer(self) -> Any | None:
        """A Keras optimizer the workers use instead of the model's own (``None``: the model's)."""
        return None

    def rate_factor(self, num_workers: int) -> float:
        """How many times the model's rate the workers train at with ``num_workers`` workers: its own by default."""
        return 1.0

    def warmup_for(self, num_workers: int) -> float:
        """The epochs over which the workers reach :meth:`rate_factor` (:meth:`rate_ramp`): none by default."""
        return 0.0

    def window_for(self, num_workers: int) -> int | str:
        """The window used with ``num_workers`` workers: the one given or the rule's default, by default."""
        return self.window

    def record_job(self, job: TrainingJob) -> None:
        """Driver: what the workers read of this fit, recorded before they start: the rate ramp
        (``_ramp``, :meth:`rate_ramp`) and which shared weights are trainable (``_trainable``)."""
        self._ramp = (self.rate_factor(job.num_workers), self.warmup_for(job.num_workers),
                      max(job.steps_per_worker))
        self._trainable = tuple(bool(v.trainable) for v in job.model.weights if is_shared(v))

    def rate_ramp(self, epoch: int, start: int) -> float:
        """Worker: the share of its scaled rate a worker trains the window from batch ``start`` of ``epoch`` at.

        A warmup (model averaging's ``warmup_epochs``) is linear in the
        batches trained, from ``1 / factor`` (the model's own rate) at the
        fit's first window to 1 after its epochs, the same for every worker
        of a round: the batches per epoch are the largest partition's, which
        the driver records in ``_ramp`` with the factor and the epochs
        before the workers start. 1 without a warmup.
        """
        factor, epochs, steps = self._ramp
        if factor <= 1.0 or epochs <= 0:
            return 1.0
        done = min(1.0, (epoch + start / max(1, steps)) / epochs)
        return (1.0 + (factor - 1.0) * done) / factor

    def model_weights(self, center: Arrays) -> Arrays:
        """Driver: the weights the model takes at an epoch's end (reported, validated, saved), given the center.

        The center itself by default; an outer optimizer whose center holds
        a look-ahead (Nesterov momentum) takes it back out here.
        """
        return center

    def server_weights(self, weights: Arrays) -> Arrays:
        """Driver: the center to train from, given the model's weights (the inverse of :meth:`model_weights`)."""
        return weights

    # -- driver ------------------------------------------------------------

    def task_groups(self, job: TrainingJob) -> TaskGroups | None:
        """A synchronous rule's workers in as many tasks as the cluster runs at once, when that is fewer.

        Its rounds need every worker's commit, so its workers must all be
        running: with fewer task slots than workers each task trains several
        of them side by side (:func:`~sparkeras.worker.tasks.run_grouped`),
        and the model is the one enough slots would give. The slots are
        counted once the executors have registered (a session just started
        on a cluster has none yet, :func:`~sparkeras.barrier.registered_slots`).
        """
        if not self.synchronous:
            return None
        from sparkeras.barrier import registered_slots

        slots = registered_slots(job.spark.sparkContext, job.num_workers)
        return TaskGroups(max(1, slots), self.timeout) if slots < job.num_workers else None

    def fit(self, job: TrainingJob) -> None:
        self._task_groups = self.task_groups(job)
        try:
            self._fit(job)
        finally:
            self._task_groups = None

    def _fit(self, job: TrainingJob) -> None:
        self.record_job(job)
        shared = [i for i, v in enumerate(job.model.weights) if is_shared(v)]
        model_spec, initial_local, steered = self._worker_model(job)
        server = ParameterServer(driver_host(job.spark), self, self.server_weights([job.state[i] for i in shared]),
                                 pack_arrays(initial_local), self.timeout, self.cut_connection_after)
        spec = ServerTaskSpec(
            worker=_replace_model(job.spec, model_spec), server=server.address, rule=self,
            batch_size=job.batch_size, shuffle=job.shuffle, timeout=self.timeout,
            max_payload=4 * sum(a.nbytes for a in initial_local) + (1 << 20))
        active = [p for p, n in enumerate(job.train.stats.rows_per_partition) if n]
        server.park(self._restored_local)
        if self._restored_version is not None:
            server.version = self._restored_version
        self._server, self._restored_local, self._restored_version = server, {}, None  # they serve one fit
        self._finished = None
        one_job = self._trains_in_one_job(job, len(active))
        groups = self._task_groups
        attempts = EpochAttempts(job, self.name, self.max_restarts, self.slot_timeout,
                                 (groups.count if groups else job.num_workers) if self.synchronous else None)
        try:
            first = job.initial_epoch
            if one_job:
                whole = OneJobFit(self, job, server, spec, active, steered, shared)
                try:
                    whole.run(attempts if self.synchronous else self._one_job_attempts(job, len(active)))
                    first = job.epochs
                except ClusterCapacityError as lost:
                    if self.synchronous:
                        raise
                    first = whole.fall_back(str(lost).split(" (", 1)[0])
            self._fit_per_epoch(job, server, spec, attempts, first, active, steered, shared)
            self._finished = server.parked(), server.version
        finally:
            self._server = None
            job.report["parameter_server"] = server.close()

    def _fit_per_epoch(self, job: TrainingJob, server: ParameterServer, spec: ServerTaskSpec,
                       attempts: EpochAttempts, first: int, active: list[int], steered: bool,
                       shared: list[int]) -> None:
        """Driver: one Spark job per epoch from epoch ``first``, the driver publishing each after its job."""
        for epoch in range(first, job.epochs):
            job.begin_epoch(epoch)
            start = server.snapshot()
            self._epoch_start()

            def rollback(start: Arrays = start) -> None:
                server.restore(start)
                self._epoch_rollback()

            def train_epoch(epoch: int = epoch) -> list[Any]:
                run = server.begin_epoch(active)
                given = self._worker_rate(job, steered)
                given = None if given is None else (job.learning_rate_position, given)
                return run_partitions(job.train, lambda it: train_with_server(spec, epoch, it, run, given),
                                      f"training epoch {epoch + 1}", self._task_groups)

            stale_before = server.stats.staleness.copy()
            results = attempts.run(epoch, train_epoch, rollback, server.abandoned)
            trained = [r for r in results if r.samples]
            server.park({r.partition: pack_arrays(r.state) for r in trained})
            if self.publish_epoch(job, epoch, trained, server, stale_before, shared):
                break

    def _one_job_attempts(self, job: TrainingJob, workers: int) -> EpochAttempts:
        """Relaunches of an asynchronous rule's whole-fit job: its tasks must run at once, so slots are watched.

        An asynchronous rule needs no particular number of slots, so a
        short slot watch (5 s at most) only decides when to go on with one
        job per epoch (:meth:`OneJobFit.fall_back`), where its tasks take
        turns on the slots that are left.
        """
        return EpochAttempts(job, self.name, self.max_restarts, min(self.slot_timeout, 5.0), workers)

    def publish_epoch(self, job: TrainingJob, epoch: int, trained: list[PartitionResult], server: ParameterServer,
                      stale_before: Any, shared: list[int], center_states: list[np.ndarray] | None = None) -> bool:
        """Driver: an epoch's figures, the center and the workers' states into the job, then its callbacks.

        Returns whether to stop (``EarlyStopping``, a callback's
        ``stop_training``). The workers' local states are parked already.
        ``center_states``: the center's metric states over the training
        data, when the tasks scored it (rules that report their center).
        """
        job.add_results(trained)
        job.add_staleness(server.stats.staleness - stale_before)
        set_shared(job.state, shared, self.model_weights(server.snapshot()))
        if trained:
            self.end_epoch_state(job, [r.state for r in trained], [r.samples for r in trained])
        return job.end_epoch(epoch, sum_metric_states(trained), evaluate_train=self.reports_center,
                             center_states=center_states)

    def _trains_in_one_job(self, job: TrainingJob, workers: int) -> bool:
        """Whether every epoch can run in one Spark job (:class:`OneJobFit`).

        Only when nothing between two epochs needs a Spark job of its own,
        since the training tasks hold their slots meanwhile: validation, if
        any, must be scored on the driver. A rule that reports its center
        has the tasks score it on their partitions instead of a job.

        An asynchronous rule's tasks may take turns on fewer slots than
        workers, one job per epoch; in one job they wait for each other at
        every epoch's end, so the cluster must run all ``workers`` at once.
        """
        if job.epochs - job.initial_epoch <= 1 or not job.validation_on_driver():
            return False
        if self.synchronous:
            return True
        from sparkeras.barrier import concurrent_slots

        return concurrent_slots(job.spark.sparkContext) >= workers

    def _worker_rate(self, job: TrainingJob, steered: bool) -> float | None:
        """The learning rate the workers train the next epoch with (``None``: they keep their optimizer's)."""
        rate = job.learning_rate if steered else None
        return None if rate is None else self.worker_learning_rate(rate, job.num_workers)

    def checkpoint_state(self) -> dict[str, Arrays]:
        """Every worker's local state (weights for the elastic rules, optimizer state), by partition,
        and the server's update count (the staleness of the next commits is measured against it).

        While a fit runs, the server's; after a completed fit, what its server
        held at the end, until :meth:`forget_finished_fit` (the next fit of
        the same model continues from it, :mod:`sparkeras.strategies.continuation`).
        """
        server = getattr(self, "_server", None)
        if server is not None:
            parked, version = server.parked(), server.version
        elif getattr(self, "_finished", None) is not None:
            parked, version = self._finished
        else:
            return {}
        state = {f"local/{p}": unpack_arrays(blob) for p, blob in parked.items()}
        state["server_version"] = [np.asarray(version, dtype=np.int64)]
        return state

    def forget_finished_fit(self) -> None:
        self._finished = None

    def restore_checkpoint_state(self, state: dict[str, Arrays]) -> None:
        self._restored_local = {int(k.split("/", 1)[1]): pack_arrays(v) for k, v in state.items()
                                if k.startswith("local/")}
        version = state.get("server_version")
        self._restored_version = int(np.asarray(version[0])) if version else None

    def _epoch_start(self) -> None:
        """Driver: keep what the rule's own server-side state was when an epoch began (a relaunch restores it)."""

    def _epoch_rollback(self) -> None:
        """Driver: put back what :meth:`_epoch_start` kept."""

    def worker_learning_rate(self, rate: float, num_workers: int) -> float:
        """The learning rate the workers train with, given the driver's (as callbacks left it): ``rate`` times
        :meth:`rate_factor`."""
        return rate * self.rate_factor(num_workers)

    def end_epoch_state(self, job: TrainingJob, local_states: list[Arrays], samples: list[int]) -> None:
        """Driver: fold the workers' local states (weights, optimizer) into ``job.state`` after an epoch.

        The center's weights are already in place; by default the driver's
        optimizer state is left as it was.
        """

    def _worker_model(self, job: TrainingJob) -> tuple[ModelSpec, Arrays, bool]:
        """The model the workers compile, their initial local state (weights, optimizer), and whether the
        model's own optimizer trains them, so that its learning rate, as callbacks set it, applies."""
        optimizer = self.local_optimizer()
        if optimizer is None:
            return job.spec.model, list(job.state), True
        optimizer.build(job.model.trainable_variables)
        weights = job.state[:len(job.model.weights)]
        local = list(weights) + [np.asarray(v) for v in optimizer.variables]
        return job.spec.model.with_optimizer(optimizer), local, False


class OneJobFit:
    """Every epoch of a parameter-server fit in one Spark job, the driver publishing each epoch between them.

    Why. One Spark job per epoch cost 40-50 ms of scheduling an epoch on
    ``local[2]`` and 100-120 ms on ``local-cluster[2,1,1024]``, beside
    tasks of 25-35 ms, on a 455-row DataFrame (``/tmp`` probe, 20
    epochs): on small data, most of a fit. That fit took 0.9 s warm this
    way, against 1.8-2.0 s on ``local[2]`` and 3.2-4.0 s on
    ``local-cluster``. Here the tasks live for the
    whole fit, as ``allreduce``'s do. At each epoch's end every task
    reports its local state, metric states and figures to the parameter
    server (``epoch_end``) and waits; once all have, the driver (this
    class, on the thread that called ``fit``) publishes the epoch exactly
    as the per-epoch path does (:meth:`DistributedOptimizer.publish_epoch`:
    callbacks, validation on the driver, checkpoints) and answers: stop,
    or the next epoch's run and learning rate. For rules that report their
    center (``reports_center``) the server first hands every task the
    epoch's final center, which each scores on its partition: the
    evaluation job the per-epoch path runs, without the job. On the
    1,437-row digits data, 6 epochs with validation, warm: ``easgd`` took
    0.58 s against 1.08 s. A failed job is launched
    again from the first epoch not completed, from the state that epoch
    started with (:class:`~sparkeras.strategies.epochs.EpochAttempts`).

    Asynchronous rules too, when all their tasks can run at once. Their
    tasks then start every epoch together, as the jobs of the per-epoch
    path do. A task Spark retries would start at the job's first epoch, so
    its join abandons the run and the job is relaunched from the epoch it
    was in; when the slots to run every task at once are gone for 5 s (a
    lost Worker), the fit goes on one job per epoch (:meth:`fall_back`).
    The Elephas README example (20 epochs of 630 rows a worker, validation
    on the driver) took 3.4-4.6 s warm against 4.9-5.6 s, and 8.4 s against
    13.9-17.3 s for the first fit: the per-epoch jobs landed on fresh Python
    workers, each tracing the model again.
    """

    def __init__(self, rule: DistributedOptimizer, job: TrainingJob, server: ParameterServer, spec: ServerTaskSpec,
                 active: list[int], steered: bool, shared: list[int]) -> None:
        self.rule, self.job, self.server, self.spec = rule, job, server, spec
        self.active, self.steered, self.shared = active, steered, shared
        self.epoch = job.initial_epoch  # the first epoch not completed
        self.finished = False
        self.error: BaseException | None = None  # a callback's, raised once the tasks have stopped
        self._start: Arrays = []
        self._stale_before: Any = None

    def run(self, attempts: EpochAttempts) -> None:
        self.job.begin_epoch(self.epoch)
        self._begin()
        if not self.rule.synchronous:
            self.server.retry_abandons = "a job that trains every epoch"
        attempts.run(lambda: self.epoch, self._launch, self._rollback, self.server.abandoned, self._serve)
        if self.error is not None:
            raise self.error
        if not self.finished:
            raise RuntimeError(f"the training job ended before epoch {self.epoch + 1} was reported")

    def fall_back(self, reason: str) -> int:
        """After too few slots for an asynchronous rule's tasks to run at once: the first epoch not completed,
        from the state it started with, to train one Spark job per epoch on the slots that are left."""
        self._rollback()
        self.server.retry_abandons = None
        self.job.relaunched(self.epoch, f"{reason}; continuing with one Spark job per epoch")
        return self.epoch

    def _begin(self) -> None:
        """Keep what the next epoch starts from: a relaunch puts it back."""
        self._start = self.server.snapshot()
        self.rule._epoch_start()
        self._stale_before = self.server.stats.staleness.copy()

    def _rollback(self) -> None:
        self.server.restore(self._start)
        self.rule._epoch_rollback()

    def _launch(self) -> list[Any]:
        """The job, from the first epoch not completed; a failure after the last epoch was published loses nothing."""
        spec, epoch, epochs = self.spec, self.epoch, self.job.epochs
        run = self.server.begin_epoch(self.active)
        rate = self.rule._worker_rate(self.job, self.steered)
        given = None if rate is None else (self.job.learning_rate_position, rate)
        try:
            return run_partitions(self.job.train, lambda it: train_with_server(spec, epoch, it, run, given, epochs),
                                  lambda: f"training epoch {self.epoch + 1}", self.rule._task_groups)
        except Exception:
            if self.finished:
                return []
            raise

    def _serve(self, wait: float) -> None:
        """Publish an epoch once every worker has reported its end, then answer them."""
        got = self.server.epoch_reports(wait)
        if got is None:
            return
        run, reports, scored = got
        epoch, last = self.epoch, self.epoch + 1 >= self.job.epochs
        if last:
            self.server.answer_epoch(run)  # the tasks may end while the driver publishes
        trained = [_reported(worker, header, payload) for worker, (header, payload) in sorted(reports.items())]
        self.server.park({w: memoryview(payload)[:int(header["state_bytes"])]
                          for w, (header, payload) in reports.items()}, run)
        try:
            center = [np.sum(column, axis=0) for column in zip(*(unpack_arrays(b) for b in scored.values()))] \
                if scored else None
            stop = self.rule.publish_epoch(self.job, epoch, trained, self.server, self._stale_before, self.shared,
                                           center)
        except BaseException as exc:  # noqa: BLE001 - raised by run() once the tasks have stopped
            self.error, stop = exc, True
        self.epoch, self.finished = epoch + 1, stop or last
        if last:
            return
        if stop:
            self.server.answer_epoch(run)
            return
        self.job.begin_epoch(self.epoch)  # on_epoch_begin may set the learning rate
        self._begin()
        self.server.answer_epoch(run, self.rule._worker_rate(self.job, self.steered), self.active)


def _reported(worker: int, header: dict[str, Any], payload: bytes) -> PartitionResult:
    """A task's ``epoch_end`` report as the result its one-epoch job would have returned."""
    cut, view = int(header["state_bytes"]), memoryview(payload)
    return PartitionResult(worker, int(header["samples"]), int(header["steps"]), unpack_arrays(view[:cut]),
                           unpack_arrays(view[cut:]), dict(header.get("figures") or {}))


def set_shared(state: list[np.ndarray], positions: list[int], values: Arrays) -> None:
    """Put ``values`` (the center's arrays) at ``positions`` of a job's full state."""
    for i, value in zip(positions, values):
        state[i] = value


def _replace_model(spec: Any, model: ModelSpec) -> Any:
    from dataclasses import replace

    return replace(spec, model=model)


class Downpour(DistributedOptimizer):
    """DOWNPOUR (Dean et al., 2012): commit the window's accumulated update; continue from the center."""

    name = "downpour"

    def commit(self, local: Arrays, center: Arrays, steps: int) -> Arrays:
        return [w - c for w, c in zip(local, center)]

    def fold(self, local: Arrays, center: Arrays, sent: Arrays | None) -> Arrays:
        return center

    def apply(self, center: Arrays, commit: Arrays, staleness: int) -> None:
        for c, d in zip(center, commit):
            c += d


ELASTIC_ADAPTIVE_MOST_UNWARMED = 3.0
"""The largest multiple of an adaptive optimizer's rate that elastic workers train at without a warmup
(``warmup_epochs=0``, where the factor is ``min(N, 1 + N / 2, 3)``): 4 times Adam's rate from the first step cost
the benchmark CNN 2 points with 4 workers."""

ELASTIC_PAIR_WARMUP_EPOCHS = 0.25
"""The epochs over which 2 elastic workers reach ``N + 1 = 3`` times an adaptive optimizer's rate
(more workers reach ``N + 1`` over a first epoch: see :data:`ELASTIC_FULL_PACE_MOST`).

In steady state the center moves ``N / (N + 1)`` of one worker's step per
round (see :class:`EASGD`), and each worker takes ``1 / N`` of an epoch's
steps, so at ``f`` times the rate the center covers ``f / (N + 1)`` of one
process' way per epoch: at twice the rate, the rule until the fifty-first
stop, two thirds. A new user's two-output model on 4,800 rows (75 steps a
worker an epoch) ended its fourth epoch at 0.857 held-out accuracy against
plain's 0.961, just where plain was after two and two thirds. At 3 times
the rate, reached over a quarter epoch, it ended at 0.955. Simulated
(``bench/convergence_study.py --ps``), 3 times the rate ended closer to one
process than twice it on all eight held-out problems with Adam or RMSprop
and level or ahead on the four benchmark tasks (the label-noise MLP 0.690
against 0.687, one process 0.681); BENCHMARKS.md, "Elastic averaging's two
workers at three times the rate".
"""

ELASTIC_FULL_PACE_MOST = 5.0
"""The largest multiple of an adaptive optimizer's rate that elastic workers, synchronous or not, train at
under ``"auto"``: ``N + 1``, for the center to keep one process' pace (:data:`ELASTIC_PAIR_WARMUP_EPOCHS`), at
most 5.

With more than 2 workers the rate is reached over a first epoch. Until
the fifty-second stop synchronous workers trained at ``min(N, 4)`` times it, ``N / (N +
1)`` of one process' pace with 3 and 4 workers. Simulated with seeded
models (``bench/convergence_study.py --ps``; BENCHMARKS.md, "Elastic
averaging's workers at N + 1 times the rate up to 4 workers, and 5 times with more"), ``N + 1``
ended closer to one process on 15 of 16 held-out runs with 4 workers (the
other level) and 6 of 7 with 3; the four benchmark tasks ended within 0.3
points of one process or above it. With 8 workers 5 times against 4 was
ahead on the benchmark CNN (0.860 against 0.856) and on 5 of 7 held-out
problems, and 13% behind on an autoencoder's loss; 9 times was not tried,
since 5 times the rate from the first step had cost 8 workers' CNN 13
points (forty-first stop).

Asynchronous workers (:class:`AEASGD`) took the same rule in the
fifty-third stop; before, twice the rate from the first step with 2
workers and ``min(N, 4)`` times it with more. Simulated with seeded models
(BENCHMARKS.md, "Asynchronous elastic averaging at N + 1 times the rate"),
``N + 1`` ended closer to one process on 26 of 28 held-out runs with 2 and
4 workers, the other two level, and on the benchmark tasks within 0.3
points of the rule before or above one process.
"""


def warmup_epochs_for(setting: float | None, scaling: str | None, num_workers: int) -> float:
    """The epochs over which the workers' scaled rate is reached: ``setting``, else one epoch for the ``"auto"``
    rule of adaptive optimizers (``scaling``) with more than
    :data:`~sparkeras.worker.learning_rate.ADAPTIVE_WARMUP_ABOVE` workers, else 0."""
    from sparkeras.worker.learning_rate import ADAPTIVE_AUTO, ADAPTIVE_WARMUP_ABOVE

    if setting is not None:
        return setting
    return 1.0 if scaling == ADAPTIVE_AUTO and num_workers > ADAPTIVE_WARMUP_ABOVE else 0.0


def check_warmup_epochs(value: Any, default: str | None = None) -> float | None:
    """``warmup_epochs``: ``None`` (the rule's default, which ``default`` describes) or a number of epochs >= 0,
    as a float."""
    from sparkeras.worker.learning_rate import ADAPTIVE_WARMUP_ABOVE

    if default is None:
        default = f"one epoch with more than {ADAPTIVE_WARMUP_ABOVE} workers, where their rate is scaled"
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 <= value < float("inf")):
        raise InputError(f"warmup_epochs must be a number of epochs >= 0 (0: no warmup) or None (the default: "
                         f"{default}), got {value!r}.")
    return None if value is None else float(value)


def elastic_rate_rule(optimizer: Any) -> str | None:
    """``learning_rate_scaling="auto"`` for the elastic rules: model averaging's rule, RMSprop and Adagrad included.

    Model averaging leaves optimizers without a first moment (RMSprop,
    Adagrad) at the user's rate, because its outer momentum makes the
    N-fold step for them. Elastic averaging has no outer momentum: its
    center moves ``f / (N + 1)`` of one process' way per epoch at ``f``
    times the rate, whatever the optimizer. With RMSprop at the user's
    rate it trailed ``model.fit`` by 9.1 points on the benchmark MLP with 2
    workers and 11.6 with 4, and ended a two-output regression 41% and 90%
    above plain's error; at the Adam family's factor (2 and 3) by +0.1 and
    -1.7 points, and 21% and 28% (``bench/convergence_study.py --ps``,
    BENCHMARKS.md). A schedule is still left alone: it is not in the state
    the workers are handed.
    """
    import keras

    from sparkeras.worker.learning_rate import ADAPTIVE_AUTO, local_rate_rule

    rule = local_rate_rule(optimizer)
    if rule is None and isinstance(getattr(optimizer, "learning_rate", None), keras.Variable):
        return ADAPTIVE_AUTO
    return rule


class ScaledWorkerRate:
    """The options of a rule whose workers train at a multiple of the model's rate, and the fit's choice.

    ``learning_rate_scaling`` is one of :attr:`RATE_SCALINGS`; ``"auto"``
    resolves per model (:func:`elastic_rate_rule`: ``"linear"`` for SGD,
    :data:`~sparkeras.worker.learning_rate.ADAPTIVE_AUTO` for adaptive
    optimizers, ``None`` for a schedule, which is not in the state the
    workers are handed). :meth:`check_model` keeps the result in
    ``_scaling``, which the rule's ``rate_factor`` reads; a rule with its
    own local optimizer (EAMSGD) keeps the model's rate.
    ``warmup_epochs`` (``None``: the rule's default) feeds ``warmup_for``.
    """

    RATE_SCALINGS: ClassVar[tuple[str | None, ...]] = ("auto", "linear", None)
    WARMUP_DEFAULT: ClassVar[str | None] = None  # what warmup_epochs=None does, for its error (None: model averaging's)

    def _set_rate_options(self, learning_rate_scaling: str | None, warmup_epochs: float | None) -> None:
        self.warmup_epochs = check_warmup_epochs(warmup_epochs, self.WARMUP_DEFAULT)
        if learning_rate_scaling not in self.RATE_SCALINGS:
            choices = ", ".join(repr(c) for c in self.RATE_SCALINGS[:-1]) + f" or {self.RATE_SCALINGS[-1]!r}"
            raise InputError(f"{self.name}'s learning_rate_scaling must be {choices}, got {learning_rate_scaling!r}.")
        self.learning_rate_scaling = learning_rate_scaling
        self._scaling: str | None = None  # this fit's rule, chosen by check_model

    def rate_config(self) -> dict[str, Any]:
        return {"learning_rate_scaling": self.learning_rate_scaling, "warmup_epochs": self.warmup_epochs}

    def check_model(self, model: Any) -> None:
        """Choose the workers' rate rule for this model's optimizer (none when the rule brings its own)."""
        from sparkeras.worker.learning_rate import check_constant_rate

        if self.local_optimizer() is not None:
            self._scaling = None
            return
        self._scaling = elastic_rate_rule(model.optimizer) if self.learning_rate_scaling == "auto" \
            else self.learning_rate_scaling
        if self._scaling:
            check_constant_rate(f"{self.name}(learning_rate_scaling={self.learning_rate_scaling!r})",
                                model.optimizer, ", or use learning_rate_scaling=None.")


class ScaledDownpour(ScaledWorkerRate, Downpour):
    """DOWNPOUR's exchange with the options of workers at a multiple of the rate: the base of ADAG and DynSGD,
    which each take a share of the window's move away and say how far the workers' rate makes it up."""

    def __init__(self, window: int | str | None = None, timeout: float = 300.0, max_restarts: int = 2,
                 slot_timeout: float = 120.0, learning_rate_scaling: str | None = "auto",
                 warmup_epochs: float | None = None) -> None:
        super().__init__(window, timeout, max_restarts, slot_timeout)
        self._set_rate_options(learning_rate_scaling, warmup_epochs)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.rate_config()}


ADAG_MOST_RATE_FACTOR = 8.0
"""The largest multiple of the model's rate ADAG's workers train at: its default window's (see :class:`ADAG`)."""

ADAG_WARMUP_EPOCHS = 0.25
"""The epochs over which ADAG's workers reach their scaled rate by default, as all-reduce's warmup."""


class ADAG(ScaledDownpour):
    """Accumulated Gradient Normalization (Hermans et al., 2017): commit the mean update of the window.

    Dividing each commit by the window keeps stale commits from a crowd of
    workers small, but at the model's own rate it moves the center
    ``1 / window`` as far per epoch as one process: with dist-keras'
    window of 12 and Adam's default rate, 2 workers ended the benchmark MLP
    12.7 points below ``model.fit`` at equal epochs, the CNN 6.5 and a
    Conv1D classifier 37. So under ``learning_rate_scaling="auto"`` the
    workers train at ``window`` times the model's rate (at most
    :data:`ADAG_MOST_RATE_FACTOR`), the normalised commit then moves the
    center as far per row as one process would, and each commit stays the
    mean of a window's steps. Reached over a quarter epoch from the model's
    rate (:data:`ADAG_WARMUP_EPOCHS`): without it, a window of 4 at 4
    times Adam's rate left the CNN 2.2 points behind one process, against
    0.5 with it. The window is 8 by default, not 12: at a window of 4, 4
    workers left the CNN 4 points behind; at 12 and 12 times the rate they
    did not settle; at 8 and 8 times the rate none of the four benchmark
    tasks ended more than 0.4 points below one process, with 2 or with 4
    workers (``bench/convergence_study.py --ps``; BENCHMARKS.md, "ADAG and
    DynSGD: the workers' rate scaled").

    A layer's moving statistics (BatchNormalization's) commit their whole
    window's move, as DOWNPOUR's: they are not a step of the optimizer,
    and divided by the window the center's statistics trailed its
    weights. A BatchNormalization classifier ended 4.0 points below
    ``model.fit`` with the scaled rate and 4.9 with the published rule,
    against +0.1 when they commit their whole move (simulated, 2 workers).

    Args:
        window: batches between two commits (default 8).
        learning_rate_scaling: ``"auto"`` (default): the workers train at
            ``min(window, 8)`` times a constant learning rate (any
            optimizer; a schedule is left alone); ``None``: at the model's
            own rate, the published rule.
        warmup_epochs: epochs over which the workers' scaled rate is
            reached, linearly, window by window, from the model's own.
            ``None`` (default): a quarter epoch where the rate is scaled;
            ``0``: none.
    """

    name = "adag"
    default_window = 8
    RATE_SCALINGS = ("auto", None)
    WARMUP_DEFAULT = "a quarter epoch, where the workers' rate is scaled"

    def commit(self, local: Arrays, center: Arrays, steps: int) -> Arrays:
        """The mean update of the window's ``steps``; moving statistics commit their whole move."""
        trainable = self._trainable or (True,) * len(local)
        return [(w - c) / np.asarray(steps, dtype=w.dtype) if t else w - c
                for w, c, t in zip(local, center, trainable)]

    def rate_factor(self, num_workers: int) -> float:
        """``min(window, 8)`` when the rate is scaled (an epoch's window counts as 8), else 1."""
        if not self._scaling:
            return 1.0
        window = ADAG_MOST_RATE_FACTOR if self.window == "epoch" else float(self.window)
        return min(window, ADAG_MOST_RATE_FACTOR)

    def warmup_for(self, num_workers: int) -> float:
        """``warmup_epochs`` if given, else :data:`ADAG_WARMUP_EPOCHS` where the workers' rate is scaled."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return ADAG_WARMUP_EPOCHS if self.rate_factor(num_workers) > 1.0 else 0.0


def add_damped(center: Arrays, commit: Arrays, staleness: int, share: float = 1.0) -> None:
    """DynSGD's server step: add ``share * commit / (staleness + 1)`` to ``center`` in place."""
    scale = share / (staleness + 1)
    for c, d in zip(center, commit):
        c += (scale * d).astype(c.dtype, copy=False)


class StalenessMean:
    """The running mean of DynSGD's damping, ``1 / (staleness + 1)``, over a fit's recent commits.

    DynSGD's workers at N times the rate move the center as far per row as
    one process only when every commit is ``N - 1`` updates stale, as with
    workers of equal speed taking turns. On Spark they do not take turns:
    4 workers on 2 cores committed with staleness 0 to 12 (mode 3), the
    mean damping was 0.315 rather than 0.25, so the center moved 1.26
    times as far per row as one process and its last epochs swung (the
    benchmark regression's r2 by up to a point from epoch to epoch).
    :meth:`share` scales every commit down by ``1 / (f * mean)`` where
    that exceeds 1, for workers at ``f`` times the rate (as the warmup has
    ramped it by the commits seen so far): a staler commit is still damped
    more than a fresher one, and the center moves at most as far per row
    as one process. It never scales up (a crowd staler than taking turns
    keeps DynSGD's damping, as do workers at the model's own rate) and
    leaves the simulation's round-robin, where every commit is ``N - 1``
    stale, exactly DynSGD's. With it, 4 workers on Spark ended the
    benchmark regression and MLP -0.7 to +0.7 points from ``model.fit``,
    against -1.5 to +0.1 without (BENCHMARKS.md, "DynSGD's damping
    measured against the commits' staleness"). What it costs: short fits
    gain less from the faster pace, and a held-out two-output regression
    (4 epochs) ended 14-20% above plain's error, against 10-12%. An
    exponential mean over about :attr:`HORIZON` commits follows workers
    whose speeds drift; it starts from ``1 / N``.
    """

    HORIZON = 64

    def __init__(self, num_workers: int, rate_factor: float, warmup_epochs: float = 0.0,
                 commits_per_epoch: int = 1, first_epoch: int = 0) -> None:
        self.rate_factor = rate_factor
        self.warmup_commits = warmup_epochs * max(1, commits_per_epoch)
        self.mean = 1.0 / max(1, num_workers)
        self.commits = first_epoch * max(1, commits_per_epoch)  # a resumed fit's warmup is behind it

    def share(self, staleness: int) -> float:
        """Record a commit's staleness; the share of its damped commit the center takes."""
        self.mean += (1.0 / (staleness + 1) - self.mean) / self.HORIZON
        self.commits += 1
        factor = self.rate_factor
        if self.commits < self.warmup_commits:  # the workers' rate ramps linearly, as rate_ramp does
            factor = 1.0 + (factor - 1.0) * self.commits / self.warmup_commits
        return min(1.0, 1.0 / (factor * self.mean))


class DynSGD(ScaledDownpour):
    """DynSGD (Jiang et al., 2017): the server scales each commit by ``1 / (staleness + 1)``.

    With N workers of equal speed every commit is about ``N - 1`` updates
    stale, so at the model's rate the center moves ``1 / N`` as far per
    epoch as one process: 2 workers ended the benchmark MLP 3.0 points
    below it, 4 workers 10.7 (``bench/convergence_study.py --ps``). Under
    ``learning_rate_scaling="auto"`` the workers train at N times a
    constant rate, as model averaging's do, reached over the first epoch
    for adaptive optimizers with more than 2 workers (``warmup_epochs``):
    the MLP then ended 1.1 points above one process with 2 workers and
    level with 4. A commit staler than its peers' is still damped more,
    and where the fit's commits are on the whole fresher than taking
    turns would make them, each takes a share that keeps the center at
    one process' pace (:class:`StalenessMean`). With 8 workers
    (simulated) the benchmark CNN trailed by 12 points at 8 times the
    rate, 12 at 4 times and 9 at the model's: for many workers ADAG's
    averaged commits do better (1.3).

    Args:
        window: batches between two commits (default 5, dist-keras').
        learning_rate_scaling: ``"auto"`` (default): N times SGD's rate and
            an adaptive optimizer's, the model's own for a schedule;
            ``"linear"``: N times (a constant rate only); ``None``: the
            model's rate, the published rule.
        warmup_epochs: epochs over which the scaled rate is reached (as
            model averaging's).
    """

    name = "dynsgd"
    _staleness: StalenessMean | None = None  # this fit's, from record_job; None: the published damping alone

    def record_job(self, job: TrainingJob) -> None:
        """Also a fresh running mean of the fit's damping, which scales the damped commits."""
        super().record_job(job)
        steps = job.steps_per_worker
        commits = len(steps) if self.window == "epoch" else sum(-(-n // int(self.window)) for n in steps)
        self._staleness = StalenessMean(job.num_workers, *self._ramp[:2], commits, job.initial_epoch)

    def apply(self, center: Arrays, commit: Arrays, staleness: int) -> None:
        add_damped(center, commit, staleness, self._staleness.share(staleness) if self._staleness else 1.0)

    def rate_factor(self, num_workers: int) -> float:
        """``num_workers`` when the rate is scaled, else 1."""
        return float(num_workers) if self._scaling else 1.0

    def warmup_for(self, num_workers: int) -> float:
        """:func:`warmup_epochs_for`: one epoch for adaptive optimizers with more than 2 workers, unless set."""
        return warmup_epochs_for(self.warmup_epochs, self._scaling, num_workers)


ASYNC_DAMPED_ABOVE = 2
"""The worker count above which ``async`` and ``hogwild`` damp stale commits by default (see :class:`Asynchronous`)."""


class Asynchronous(DynSGD):
    """Elephas' asynchronous mode: DOWNPOUR's rule with locked updates, window 4 by default; with more than 2
    workers, DynSGD's damping of stale commits.

    Elephas adds every commit whole, however stale. With 2 workers a
    commit is about one update stale and that lands: the benchmark tasks
    ended -0.2 to +1.9 points from ``model.fit`` at equal epochs. With 4
    it is about 3 updates (12 batches) stale, and the benchmark CNN ended
    3.6 points below ``model.fit`` on Spark, 14 in the round-robin
    simulation, where a window of 1 left it 7 points below, and a warmup
    of the workers' rate or half the rate 8 to 21
    (``bench/convergence_study.py --ps``; BENCHMARKS.md, "Elephas'
    asynchronous mode with more than 2 workers"). So by default
    (``staleness_damping=None``) more than :data:`ASYNC_DAMPED_ABOVE`
    workers get :class:`DynSGD`'s rule: the server adds ``commit /
    (staleness + 1)`` and the workers train at N times a constant rate
    (``learning_rate_scaling``, reached over ``warmup_epochs``, as DynSGD's).
    ``staleness_damping=False`` is Elephas' rule at any worker count,
    ``True`` DynSGD's at any.

    Args:
        window: batches between two commits (default 4).
        staleness_damping: ``None`` (default): damp with more than 2
            workers; ``True``: always; ``False``: never (Elephas' rule).
        learning_rate_scaling: the workers' rate where commits are damped,
            as :class:`DynSGD`'s (``"auto"``, ``"linear"`` or ``None``).
        warmup_epochs: epochs over which that rate is reached, as
            :class:`DynSGD`'s.
    """

    name = "async"
    default_window = 4

    def __init__(self, window: int | str | None = None, timeout: float = 300.0, max_restarts: int = 2,
                 slot_timeout: float = 120.0, staleness_damping: bool | None = None,
                 learning_rate_scaling: str | None = "auto", warmup_epochs: float | None = None) -> None:
        super().__init__(window, timeout, max_restarts, slot_timeout, learning_rate_scaling, warmup_epochs)
        if not isinstance(staleness_damping, (bool, type(None))):
            raise InputError(f"{self.name}'s staleness_damping must be None (the default: damp stale commits "
                             f"with more than {ASYNC_DAMPED_ABOVE} workers), True (always) or False (never: "
                             f"Elephas' rule), got {staleness_damping!r}.")
        self.staleness_damping = staleness_damping
        self._num_workers = 1  # this fit's, set by record_job before the server starts

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "staleness_damping": self.staleness_damping}

    def damps(self, num_workers: int) -> bool:
        """Whether the server damps stale commits with ``num_workers`` workers."""
        if self.staleness_damping is None:
            return num_workers > ASYNC_DAMPED_ABOVE
        return self.staleness_damping

    def record_job(self, job: TrainingJob) -> None:
        """Also the fit's worker count, which decides whether the server damps, with the rate ramp it decides."""
        super().record_job(job)
        self._num_workers = job.num_workers

    def apply(self, center: Arrays, commit: Arrays, staleness: int) -> None:
        if self.damps(self._num_workers):
            super().apply(center, commit, staleness)
        else:
            Downpour.apply(self, center, commit, staleness)

    def rate_factor(self, num_workers: int) -> float:
        """DynSGD's factor (``num_workers`` where the rate is scaled) where commits are damped, else 1."""
        return super().rate_factor(num_workers) if self.damps(num_workers) else 1.0

    def warmup_for(self, num_workers: int) -> float:
        """DynSGD's warmup (:func:`warmup_epochs_for`) where commits are damped, else none."""
        return super().warmup_for(num_workers) if self.damps(num_workers) else 0.0


class Hogwild(Asynchronous):
    """Elephas' hogwild mode (Recht et al., 2011): the same updates, applied without a lock."""

    name = "hogwild"
    lock = False


class EASGD(ScaledWorkerRate, DistributedOptimizer):
    """Elastic Averaging SGD (Zhang, Choromanska & LeCun, 2015), synchronous rounds.

    Every window each worker sends ``E = alpha * (local - center)`` and
    steps its local weights ``local -= E``; the server adds every worker's
    ``E`` once the round is complete. Workers keep their own weights: the
    elastic force, not a reset, holds them near the center.

    Why the workers train at a multiple of the rate. In steady state the
    elastic terms balance and every worker, and the center, moves
    ``N / (N + 1)`` of one worker's own step per round, while the round
    used N workers' rows: per epoch the center progresses about
    ``1 / (N + 1)`` as far as one process. With dist-keras' settings the
    benchmark MLP ended 8.7 points below ``model.fit`` at equal epochs with
    2 workers. ``learning_rate_scaling="auto"`` trains SGD's workers at N
    times the rate and those of adaptive optimizers (Adam, RMSprop...: see
    :func:`elastic_rate_rule`) at ``N + 1`` times it, which gives the center
    one process' pace, at most :data:`ELASTIC_FULL_PACE_MOST` (5 times from
    4 workers on); 2 workers reach it over a quarter epoch
    (:data:`ELASTIC_PAIR_WARMUP_EPOCHS`), more over the first epoch from the
    model's rate (``warmup_epochs``, as model averaging's); asynchronous
    workers (:class:`AEASGD`) too. The history, measured with
    ``bench/convergence_study.py --ps`` on the four benchmark tasks
    (BENCHMARKS.md, "Elastic averaging with 4 workers" and "Elastic
    averaging warmed up"): with 2 workers at twice the rate every task
    landed within 1 point of ``model.fit``, above it on most; with 4
    workers twice the rate left the MLP 6.6 points behind (Spark), 3 times
    it about 1 point, and 4 times it from the first step cost the CNN 2
    points; warmed up to 4 times it, the MLP ended 1.0 point above one
    process and the CNN 1.7 above. With 8 workers 5 times the rate from
    the first step cost the CNN 13 points; warmed up to 4 times, the CNN
    ended 0.8 points below one process and the MLP 7 (against 4.6 and 9
    at 3 times without the warmup): each worker sees an eighth of the rows.
    ``N + 1`` times, warmed up, replaced ``min(N, 4)`` for synchronous
    workers in the fifty-second stop, and for asynchronous ones in the
    fifty-third (:data:`ELASTIC_FULL_PACE_MOST`).
    Without a warmup the factor is at most
    :data:`ELASTIC_ADAPTIVE_MOST_UNWARMED`, ``min(N, 1 + N / 2, 3)``.

    Why the window shrinks with the worker count. The elastic pull is
    what shares the workers' progress, and each worker's share of an
    epoch shrinks as ``1 / N``; the default window is ``64 / N`` batches,
    at least 8 (:meth:`window_for`), so the cluster trains 64 batches
    between two pulls and an epoch has as many rounds whatever the worker
    count. With 4 workers at 3 times the rate, windows of 8 / 16 / 32
    ended the benchmark MLP at -0.8 / -1.0 / -2.0 points and the CNN at
    -0.4 / -0.2 / -0.8 (simulated; on Spark 16 gave -1.04 and -0.69). A
    shorter window costs time: a synchronous round costs about 10 ms, and
    with 2 workers, where windows of 8 and 32 gave the same models, a Spark
    epoch of the MLP took 1.1 s at 8 against 0.6 s at 32; with 4 workers
    0.9 s at 8 against 0.6 s at 16.

    Args:
        rho: the elastic coefficient; ``alpha = rho * learning_rate``.
            ``None`` (default): ``alpha = 0.9 / num_workers``, the paper's
            ``beta = N * alpha = 0.9``, so that any worker count is stable
            (dist-keras' ``rho=5`` gives ``beta = 2`` with 4 workers, which
            overshoots the center every round).
        learning_rate: the step size of the elastic term (with ``rho``).
        learning_rate_scaling: the workers' rate: ``"auto"`` (default)
            ``N`` times the model's for SGD, ``min(N + 1, 5)`` times it for
            adaptive optimizers (Adam, RMSprop, Adagrad...), and the
            model's own for a schedule;
            ``"linear"``: ``N`` times (a
            constant rate only); ``None``: the model's rate. The model's own
            optimizer keeps the user's rate.
        warmup_epochs: epochs over which the workers' scaled rate is
            reached, linearly, window by window, from the model's own.
            ``None`` (default): one epoch for adaptive optimizers with more
            than 2 workers under ``"auto"``, a quarter with 2, else none;
            ``0``: none (and adaptive optimizers then train at
            ``min(N, 1 + N / 2, 3)`` times the rate).
    """

    name = "easgd"
    default_window = 32  # window_for(2): what a rule not yet checked against a job holds
    default_rho: ClassVar[float | None] = None
    synchronous = True
    BETA = 0.9  # N * alpha with the default rho
    BATCHES_PER_ROUND: ClassVar[int | None] = 64  # window_for's cluster-wide batches between pulls; None: fixed

    def __init__(self, window: int | str | None = None, rho: float | None = None, learning_rate: float = 0.1,
                 timeout: float = 300.0, max_restarts: int = 2, slot_timeout: float = 120.0,
                 learning_rate_scaling: str | None = "auto", warmup_epochs: float | None = None) -> None:
        super().__init__(window, timeout, max_restarts, slot_timeout)
        self.window_setting = window  # None: chosen from the worker count at each fit (window_for)
        self._set_rate_options(learning_rate_scaling, warmup_epochs)
        rho = self.default_rho if rho is None else rho
        self.rho, self.learning_rate = None if rho is None else float(rho), float(learning_rate)
        self._num_workers = 1  # set by check, before the rule travels to the workers
        if self.rho is not None and not 0.0 < self.alpha < 1.0:
            raise InputError(
                f"{self.name} needs 0 < alpha < 1, where alpha = rho * learning_rate = "
                f"{self.rho} * {self.learning_rate} = {self.alpha}; lower rho or learning_rate.")

    @property
    def alpha(self) -> float:
        """The elastic step: ``rho * learning_rate``, or ``0.9 / num_workers`` when ``rho`` is left out."""
        if self.rho is None:
            return self.BETA / max(1, self._num_workers)
        return self.rho * self.learning_rate

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "window": self.window_setting, "rho": self.rho,
                "learning_rate": self.learning_rate, **self.rate_config()}

    def window_for(self, num_workers: int) -> int | str:
        """The window used with ``num_workers`` workers: the one given, else ``64 / num_workers`` batches, at least 8."""
        if self.window_setting is not None:
            return self.window_setting
        if self.BATCHES_PER_ROUND is None:
            return self.default_window
        return max(8, self.BATCHES_PER_ROUND // max(1, num_workers))

    def rate_factor(self, num_workers: int) -> float:
        """How many times the model's rate the workers train at with ``num_workers`` workers."""
        from sparkeras.worker.learning_rate import ADAPTIVE_AUTO

        if self._scaling == "linear":
            return float(num_workers)
        if self._scaling == ADAPTIVE_AUTO:
            if self._at_full_pace(num_workers):
                return float(min(num_workers + 1, ELASTIC_FULL_PACE_MOST))
            return float(min(num_workers, 1 + num_workers / 2, ELASTIC_ADAPTIVE_MOST_UNWARMED))
        return 1.0

    def warmup_for(self, num_workers: int) -> float:
        """The epochs over which the workers' scaled rate is reached (:func:`warmup_epochs_for`): one for
        adaptive optimizers with more than 2 workers under ``"auto"``, a quarter for 2 synchronous ones
        (:data:`ELASTIC_PAIR_WARMUP_EPOCHS`), unless set."""
        if self.warmup_epochs is None and num_workers == 2 and self._at_full_pace(num_workers):
            return ELASTIC_PAIR_WARMUP_EPOCHS
        return warmup_epochs_for(self.warmup_epochs, self._scaling, num_workers)

    def _at_full_pace(self, num_workers: int) -> bool:
        """Whether the workers train at ``N + 1`` times an adaptive rate (:data:`ELASTIC_FULL_PACE_MOST`):
        under ``"auto"``, synchronous or not, unless ``warmup_epochs=0``."""
        from sparkeras.worker.learning_rate import ADAPTIVE_AUTO

        return num_workers >= 2 and self._scaling == ADAPTIVE_AUTO and self.warmup_epochs != 0

    def check(self, job: TrainingJob) -> None:
        super().check(job)
        self._num_workers = job.num_workers
        self.window = self.window_for(job.num_workers)  # what the workers read
        if self.synchronous and self.alpha * job.num_workers > 1.0 + 1e-9:
            raise InputError(
                f"easgd with {job.num_workers} workers moves the center by num_workers * alpha = "
                f"{job.num_workers * self.alpha:.2f} of the workers' distance per round, which overshoots "
                f"(needs <= 1); use rho * learning_rate <= {1.0 / job.num_workers:.3f}, or leave rho out.")

    def commit(self, local: Arrays, center: Arrays, steps: int) -> Arrays:
        return [(self.alpha * (w - c)).astype(w.dtype, copy=False) for w, c in zip(local, center)]

    def fold(self, local: Arrays, center: Arrays, sent: Arrays | None) -> Arrays:
        return local if sent is None else [w - e for w, e in zip(local, sent)]

    def apply(self, center: Arrays, commit: Arrays, staleness: int) -> None:
        for c, e in zip(center, commit):
            c += e


class AEASGD(EASGD):
    """Asynchronous EASGD: each worker pulls the current center, then takes the elastic step."""

    name = "aeasgd"
    synchronous = False
    pull_first = True
    default_rho = 5.0  # dist-keras' (alpha 0.5); asynchronous commits cannot overshoot together


class EAMSGD(AEASGD):
    """Elastic Averaging Momentum SGD: AEASGD whose workers train with Nesterov-momentum SGD.

    Args:
        momentum: the local Nesterov momentum.
        learning_rate: the local SGD learning rate (also in ``alpha``).
    """

    name = "eamsgd"
    BATCHES_PER_ROUND = None  # dist-keras' 32 at any worker count: easgd's rule was measured with its rate rule, not this SGD

    def __init__(self, window: int | str | None = None, rho: float = 5.0, learning_rate: float = 0.01,
                 momentum: float = 0.9, timeout: float = 300.0, max_restarts: int = 2,
                 slot_timeout: float = 120.0) -> None:
        super().__init__(window, rho, learning_rate, timeout, max_restarts, slot_timeout)
        if not 0.0 <= momentum < 1.0:
            raise InputError(f"momentum must be in [0, 1), got {momentum!r}.")
        self.momentum = float(momentum)

    def get_config(self) -> dict[str, Any]:
        config = {**super().get_config(), "momentum": self.momentum}
        del config["learning_rate_scaling"]  # its workers train with its own SGD at learning_rate
        return config

    def local_optimizer(self) -> Any:
        import keras

        return keras.optimizers.SGD(learning_rate=self.learning_rate, momentum=self.momentum, nesterov=True)


DISTRIBUTED_OPTIMIZERS: dict[str, type[DistributedOptimizer]] = {
    cls.name: cls for cls in (Asynchronous, Hogwild, Downpour, ADAG, DynSGD, EASGD, AEASGD, EAMSGD)
}
