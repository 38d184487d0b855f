"""Model averaging with an outer optimizer (local SGD with block momentum).

Every ``window`` batches, each worker sends how far its weights moved from
the last shared state (the *center*); the driver averages these moves and
takes one step of an *outer optimizer* on the center, and every worker
continues from the new center with its own inner optimizer (Adam moments
and step count stay with the worker, as in DiLoCo).

Why an outer step. Plain averaging of K workers moves the center by the
*mean* of their moves: each worker saw 1/K of the epoch's rows, so the
center progresses about as far per epoch as one worker alone on 1/K of
the data. Measured on an MLP with two workers that loses 2-6 accuracy points
at equal epochs against ``model.fit`` (Elephas' synchronous mode, which this
replaces, loses them too). Block momentum (BMUF, Chen & Huo 2016; SlowMo,
Wang et al. 2020) treats ``center - mean(local)`` as a gradient and applies
Nesterov momentum to it; with momentum ``1 - 1/K`` (BMUF's rule) the
steady-state step is K times the mean move, which restores the progress per
epoch while the averaging removes the workers' noise. DiLoCo (Douillard et
al. 2023) uses the same outer step with larger windows.

Why these defaults (measured, ``bench/time_to_accuracy.py`` and the
BENCHMARKS file): with 2 workers a window of 32 batches keeps the workers
close enough that the averaged move is a good direction (averaging once per
epoch lagged by 2.4 points after 10 epochs, and much more early on). The
window shrinks as ``128 / N**2`` with more workers, down to 8 batches
(:meth:`ModelAveraging.window_for`), and the momentum is ``1 - 1/N``: both
come from the worker count, not from a task. For SGD and for Adam and its
kin, the workers instead take the N-fold step themselves, at N times the
rate, with no outer momentum (Goyal et al.'s linear rule:
``learning_rate_scaling="auto"``; measured level with the momentum or
better on every SGD problem tried, and on Adam problems with 2 workers).
Adam with more than 2 workers reaches N times its rate over the first
epoch, window by window, from the model's own (Goyal et al.'s warmup,
``warmup_epochs``; :data:`~sparkeras.worker.learning_rate.ADAPTIVE_WARMUP_ABOVE`
says why). When an epoch has many rounds,
the model a fit reports and saves is the momentum's iterate, not the
look-ahead the workers train from (:meth:`ModelAveraging.reports_iterate`).
BatchNormalization's moving statistics are averaged, not stepped; the
workers update them with ``momentum ** N`` (``averages_moving_statistics``),
so that N workers' averaged statistics forget per row as one process's do.
With ``outer_momentum=0, learning_rate_scaling=None`` the rule is plain averaging, and with one worker
the center *is* the worker's state, so
``SparkModel(model, "averaging", num_workers=1)`` trains exactly as
``model.fit`` with the same batch order.

How the rounds run. When every worker has a task slot at the same time,
the rounds are synchronous commits to the driver's parameter server
(:mod:`sparkeras.comm.parameter_server`): no Spark job per window. One
Spark job trains every epoch, the driver publishing each as the tasks wait
(:class:`~sparkeras.strategies.distributed.OneJobFit`), unless validation
needs a Spark job between epochs; then each epoch is one job. When
the cluster runs fewer tasks at once than there are workers, each task
trains several workers side by side, one thread and model instance each
(:func:`~sparkeras.worker.tasks.run_grouped`), so that every worker still
meets the rounds and the model is the one enough slots would give. Before,
each window was a Spark job of its own there: a 5-epoch fit of 160,000
rows with 4 workers on ``local[2]`` took 12.3-15.6 s that way against
3.1-3.7 s now (2.3 s with 2 workers).

Under failure. A failed epoch runs again from the state it started with, up
to ``max_restarts`` times (:mod:`sparkeras.strategies.epochs`). When the
cluster loses task slots for ``slot_timeout`` seconds in the middle of a
fit (a Worker or executor lost and not replaced), the fit continues
elastically: the rest of the epochs run as one Spark job per window, on the
slots that are left, with the same data partitions, outer step and
momentum, so the model is the same as it would have been had the slots not
been lost; only the time per epoch changes. ``history.restarts`` records the
switch.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sparkeras.errors import ClusterCapacityError, InputError
from sparkeras.strategies.distributed import (Arrays, DistributedOptimizer, check_warmup_epochs, set_shared,
                                              warmup_epochs_for)
from sparkeras.strategies.epochs import EpochAttempts
from sparkeras.training import TrainingJob, run_partitions, sum_metric_states
from sparkeras.worker import tasks
from sparkeras.worker.asynchronous import is_shared
from sparkeras.worker.learning_rate import ADAPTIVE_AUTO, check_constant_rate, local_rate_rule
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
            term = np.empty_like(acc)  # one buffer for every part's weighted copy, not one each
            for w, a in zip(weights, parts):
                acc += np.multiply(a, w / total, out=term, dtype=np.float64)
            out.append(acc.astype(parts[0].dtype))
        else:
            out.append(np.max(np.stack(parts), axis=0))
    return out


def mean_of(parts: Sequence[np.ndarray]) -> np.ndarray:
    """``np.mean(parts, axis=0)``, bit for bit, without stacking the parts into one array first.

    NumPy's mean over the first axis adds the parts in order in their own
    dtype, then divides by their count; stacking copied every part once
    more (a model's weights per worker, each round). Half precision keeps
    NumPy's own path, which sums in single precision.
    """
    if parts[0].dtype not in (np.float32, np.float64):
        return np.mean(parts, axis=0)
    acc = np.array(parts[0], copy=True)
    for part in parts[1:]:
        np.add(acc, part, out=acc)
    return np.true_divide(acc, np.intp(len(parts)), out=acc, casting="unsafe")


class OuterStep:
    """Nesterov (or heavy-ball) momentum on the center, fed with ``center - mean(local)``.

    Trainable weights take the momentum step; other float variables (such
    as BatchNormalization's moving statistics) are plainly averaged.

    Args:
        momentum: the block momentum; 0 makes the step a plain average.
        learning_rate: the outer learning rate (1 keeps the mean move's scale).
        nesterov: use Nesterov's look-ahead, as BMUF's NBM and DiLoCo do.
        trainable: one flag per center array.
        bias_correction: divide the velocity by ``1 - momentum ** t`` in
            round ``t``, as Adam corrects its moments.

    Why the correction. Momentum started at zero takes several rounds to
    build up its ``1 / (1 - momentum)`` step (1.5, 1.75, 1.875... of the
    mean move for momentum 0.5), so the first rounds progress less per
    epoch than one process does. That is a few rounds of a long fit, but a
    fit with one or two rounds per epoch (small data) lost 3-5 accuracy
    points at equal epochs over its first 3 epochs. The velocity
    ``sum(momentum ** (t - k) * g_k)`` weighs its rounds by
    ``(1 - momentum ** t) / (1 - momentum)`` in all; divided by
    ``1 - momentum ** t`` it has the steady state's scale from the first
    round on, whatever the moves are. ``rounds`` counts the steps taken.
    """

    def __init__(self, momentum: float, learning_rate: float, nesterov: bool, trainable: Sequence[bool],
                 bias_correction: bool = False) -> None:
        self.momentum, self.learning_rate, self.nesterov = momentum, learning_rate, nesterov
        self.trainable = list(trainable)
        self.bias_correction = bias_correction
        self.velocity: list[np.ndarray] | None = None
        self.rounds = 0

    def __call__(self, center: Arrays, mean_move: Arrays) -> None:
        """Update ``center`` in place, given the workers' mean ``local - center``."""
        if self.velocity is None:
            self.velocity = [np.zeros_like(c) for c in center]
        self.rounds += 1
        scale = self._correction()
        for i, (c, move) in enumerate(zip(center, mean_move)):
            if not self.trainable[i]:
                c += move.astype(c.dtype, copy=False)
                continue
            grad = -move.astype(c.dtype, copy=False)
            v = self.velocity[i]
            v *= self.momentum
            v += grad
            v = v * np.asarray(scale, dtype=v.dtype) if scale != 1.0 else v
            step = grad + self.momentum * v if self.nesterov else v
            c -= self.learning_rate * step

    def iterate(self, center: Arrays) -> Arrays:
        """The momentum's own iterate: ``center`` less Nesterov's look-ahead.

        Nesterov momentum, written as above, keeps the look-ahead
        ``-learning_rate * momentum * velocity`` inside the center, where the
        workers must start. Taken back out, what is left is the average of
        the workers' models after the last round (the ``x`` sequence of
        Nesterov's method; Sutskever et al. 2013). Heavy-ball momentum, no
        momentum, or no step yet: the center itself (a copy).
        """
        return self._shift(center, +1.0)

    def look_ahead(self, iterate: Arrays) -> Arrays:
        """The center to train from, given the iterate (the inverse of :meth:`iterate`)."""
        return self._shift(iterate, -1.0)

    def _correction(self) -> float:
        """The factor ``1 / (1 - momentum ** rounds)`` on the velocity, or 1 without the correction."""
        if not self.bias_correction or not 0.0 < self.momentum < 1.0 or self.rounds < 1:
            return 1.0
        return 1.0 / (1.0 - self.momentum ** self.rounds)

    def _shift(self, arrays: Arrays, sign: float) -> Arrays:
        if not self.nesterov or not self.momentum or self.velocity is None:
            return [np.array(a, copy=True) for a in arrays]
        scale = sign * self.learning_rate * self.momentum * self._correction()
        return [np.asarray(a) + np.asarray(scale, dtype=v.dtype) * v if t else np.array(a, copy=True)
                for a, v, t in zip(arrays, self.velocity, self.trainable)]


class ModelAveraging(DistributedOptimizer):
    """Train locally for a window, average the moves, take an outer momentum step.

    Args:
        window: batches between two averagings, or ``"epoch"`` for once per
            epoch (the fewest exchanges; converges slower at equal epochs).
            ``None`` (default) chooses it from the worker count
            (:meth:`window_for`: 32 batches for 2 workers, 8 for 4).
        outer_momentum: the block momentum; ``None`` (default) uses BMUF's
            ``1 - 1/num_workers`` (0 for one worker). ``0`` gives plain
            model averaging.
        outer_learning_rate: scales the outer step.
        nesterov: Nesterov momentum for the outer step.
        learning_rate_scaling: how the N-fold step of N workers is made.
            ``"linear"``: each worker trains at ``num_workers`` times the
            learning rate (the driver's model keeps the user's), and the
            outer momentum defaults to 0, so the driver averages their
            moves: Goyal et al.'s linear scaling rule. ``None``: the workers
            keep the rate and the outer momentum ``1 - 1/N`` builds up the
            N-fold step (BMUF). ``"auto"`` (default): ``"linear"`` for
            optimizers that do not normalise their steps (SGD, with or
            without momentum) and for Adam and its kin with a first moment
            (Adam, AdamW, Nadam, Adamax, Lion), both with a constant rate,
            the latter warmed up with more than 2 workers
            (``warmup_epochs``); ``None`` for RMSprop and Adagrad, and for
            schedules. Measured (BENCHMARKS.md, "Averaging's two rules over
            seeds"): with SGD the linear rule was as close to one process as
            the momentum or closer on every problem, 2 to 8 workers; with
            Adam the linear rule followed models that must first leave a
            plateau (a noisy Conv1D classifier, an autoencoder), and once
            warmed up it kept the benchmark CNN with 4 workers, which lost
            7.6 points without the warmup (:data:`~sparkeras.worker.learning_rate.ADAPTIVE_WARMUP_ABOVE`).
            ``"linear"`` needs a constant learning rate (callbacks may change
            it), not a schedule.
        warmup_epochs: epochs over which the workers' scaled rate is
            reached, linearly, window by window, from the model's own
            (Goyal et al. 2017): the first window trains at the model's
            rate. ``None`` (default): one epoch for the Adam family with
            more than 2 workers under ``"auto"``, else none. It applies to
            a fit's first epochs (epoch 0 on), so a fit resumed later does
            not warm up again; where the workers keep the model's rate it
            does nothing.
        momentum_bias_correction: correct the outer momentum's start from
            zero, as Adam corrects its moments (:class:`OuterStep`'s
            ``bias_correction``), so the first rounds of a fit already take
            the ``1 / (1 - momentum)`` step. Off by default: the build-up
            acts as a warmup, and without it an LSTM that first sits on a
            plateau fell 4-6 points behind after 3-5 epochs, while small
            tabular fits with one or two rounds per epoch gained 2-3 points
            (BENCHMARKS.md). ``False`` is BMUF's and SlowMo's rule.
        timeout: seconds a round waits for its slowest worker, and a task at
            an epoch's end for the driver's callbacks.
        max_restarts: how many failed epochs (or windows) the fit runs again.
        slot_timeout: seconds with fewer task slots than workers before the
            fit continues on the slots that are left.
    """

    name = "averaging"
    averages_moving_statistics = True
    driver_holds_optimizer_state = True
    default_window = 32
    synchronous = True
    reports_center = False  # workers restart from the center every window, as Elephas' synchronous mode

    def __init__(self, window: int | str | None = None, outer_momentum: float | None = None,
                 outer_learning_rate: float = 1.0, nesterov: bool = True, timeout: float = 300.0,
                 max_restarts: int = 2, slot_timeout: float = 120.0, momentum_bias_correction: bool = False,
                 learning_rate_scaling: str | None = "auto", warmup_epochs: float | None = None) -> None:
        super().__init__(window, timeout, max_restarts, slot_timeout)
        self.momentum_bias_correction = bool(momentum_bias_correction)
        if learning_rate_scaling not in (None, "linear", "auto"):
            raise InputError(f"ModelAveraging's learning_rate_scaling must be 'auto' (linear for SGD, the outer "
                             f"momentum for the Adam family), None (the outer momentum makes the N-fold step) or "
                             f"'linear' (the workers train at N times the rate), got {learning_rate_scaling!r}.")
        self.learning_rate_scaling = learning_rate_scaling
        self._scaling = None if learning_rate_scaling == "auto" else learning_rate_scaling  # this fit's rule
        self.warmup_epochs = check_warmup_epochs(warmup_epochs)
        self.window_setting = window  # None: chosen from the worker count at each fit (window_for)
        if outer_momentum is not None and not (isinstance(outer_momentum, (int, float))
                                               and 0.0 <= outer_momentum < 1.0):
            raise InputError(f"outer_momentum must be in [0, 1) or None, got {outer_momentum!r}.")
        if not isinstance(outer_learning_rate, (int, float)) or outer_learning_rate <= 0:
            raise InputError(f"outer_learning_rate must be a positive number, got {outer_learning_rate!r}.")
        self.outer_momentum = None if outer_momentum is None else float(outer_momentum)
        self.outer_learning_rate = float(outer_learning_rate)
        self.nesterov = bool(nesterov)
        self._outer: OuterStep | None = None
        self._report_iterate = False
        self._restored_velocity: Arrays | None = None
        self._restored_rounds = 0
        self._rounds_at_start = 0
        self._velocity_at_start: Arrays | None = None

    def get_config(self) -> dict[str, Any]:
        return {"window": self.window_setting, "outer_momentum": self.outer_momentum,
                "outer_learning_rate": self.outer_learning_rate, "nesterov": self.nesterov,
                "timeout": self.timeout, "max_restarts": self.max_restarts, "slot_timeout": self.slot_timeout,
                "momentum_bias_correction": self.momentum_bias_correction,
                "learning_rate_scaling": self.learning_rate_scaling, "warmup_epochs": self.warmup_epochs}

    def momentum(self, num_workers: int) -> float:
        """The block momentum used with ``num_workers`` workers: ``1 - 1/N``, or 0 when the workers scale
        their own rate (the fit's :meth:`rule`), unless set."""
        if self.outer_momentum is not None:
            return self.outer_momentum
        return 0.0 if self.rule(num_workers) else 1.0 - 1.0 / num_workers

    def rate_factor(self, num_workers: int) -> float:
        """``num_workers`` under the linear rule, else 1."""
        return float(num_workers) if self.rule(num_workers) == "linear" else 1.0

    def rule(self, num_workers: int) -> str | None:
        """This fit's rule with ``num_workers`` workers: ``"linear"`` or ``None`` (the outer momentum).

        Under ``"auto"`` the Adam family's workers train at N times the
        rate, reached over a warmup with more than 2 workers
        (:meth:`warmup_for`).
        """
        if self._scaling == ADAPTIVE_AUTO:
            return "linear"
        return self._scaling

    def warmup_for(self, num_workers: int) -> float:
        """The epochs over which the workers' scaled rate is reached (:func:`warmup_epochs_for`): one for the
        Adam family with more than 2 workers under ``"auto"``, unless set."""
        return warmup_epochs_for(self.warmup_epochs, self._scaling, num_workers)

    def scaling_for(self, optimizer: Any) -> str | None:
        """The rule a fit of a model with ``optimizer`` uses: ``"auto"`` is :func:`local_rate_rule`'s
        (``"linear"`` for an optimizer that does not normalise its steps, :data:`ADAPTIVE_AUTO` for the
        Adam family, both with a constant rate; ``None`` otherwise)."""
        if self.learning_rate_scaling != "auto":
            return self.learning_rate_scaling
        return local_rate_rule(optimizer)

    def check_model(self, model: Any) -> None:
        """Choose the fit's rule; an explicit ``"linear"`` needs a constant rate, as a schedule is not in
        the state the workers are handed."""
        self._scaling = self.scaling_for(model.optimizer)
        if self._scaling:
            check_constant_rate(
                f"ModelAveraging(learning_rate_scaling={self.learning_rate_scaling!r})", model.optimizer,
                " (a LearningRateScheduler or ReduceLROnPlateau callback may still change it), or use "
                "learning_rate_scaling='auto' or None, where the outer momentum makes the N-fold step.")

    def window_for(self, num_workers: int) -> int | str:
        """The window used with ``num_workers`` workers: the one given, else ``128 / num_workers**2`` batches, at least 8.

        That is 32 batches for 2 workers and 8 from 4 on. The block
        momentum ``1 - 1/N`` takes about N rounds to build up its N-fold
        step, so with more workers the rounds must come more often, in
        proportion to N per epoch, while each worker's share of an epoch
        shrinks as 1/N: hence 1/N^2. Measured with ``bench/convergence_study.py``
        on mlp at epoch 10 (plain 0.6817): 4 workers at windows 8 / 16 / 32
        reached 0.6788 / 0.6723 / 0.6688. Below 8 batches, though, a worker's
        move is mostly its own optimizer's momentum (Adam averages about 10
        steps), which the outer momentum then compounds: with 8 workers at
        windows 2 / 4 / 8 the cnn benchmark reached 0.53 / 0.65 / 0.81 after
        5 epochs (plain 0.86), while mlp preferred the short window (0.6784 at
        2, 0.6617 at 8). In Spark runs with 8 workers, window 8 against 2
        ended cnn at -2.7 against -18.9 points and regression at +0.5
        against -22.4 points of plain, and mlp at -1.5 against -0.7.
        """
        if self.window_setting is not None:
            return self.window_setting
        return max(8, round(128 / num_workers ** 2))

    # -- the rules ------------------------------------------------------------

    def commit(self, local: Arrays, center: Arrays, steps: int) -> Arrays:
        return [w - c for w, c in zip(local, center)]

    def fold(self, local: Arrays, center: Arrays, sent: Arrays | None) -> Arrays:
        return center

    def apply(self, center: Arrays, commit: Arrays, staleness: int) -> None:
        self.apply_round(center, [commit])

    def apply_round(self, center: Arrays, commits: list[Arrays]) -> None:
        mean = commits[0] if len(commits) == 1 else [mean_of(parts) for parts in zip(*commits)]
        self._outer(center, mean)

    def reports_iterate(self, num_workers: int, rounds_per_epoch: int) -> bool:
        """Whether the model an epoch ends with is the outer momentum's iterate rather than the center.

        The center holds Nesterov's look-ahead, ``momentum / (1 - momentum)``
        mean moves (``N - 1``: 3 with 4 workers) ahead of the iterate. With
        many rounds per epoch that look-ahead made 4-worker models swing by
        1-3 points between epochs (cnn and sequence benchmarks), and the
        iterate does not: Spark gaps at E of -0.07 and -0.79 points against
        -1.94 and -3.22. With few rounds per epoch the iterate lags by a
        large part of the training instead: 2 epochs of 400 rows, one round
        per epoch, scored 0.63 against 0.93 for the center (plain
        ``model.fit``: 0.97). Hence the iterate only when an epoch has at
        least ``2 N`` rounds, twice the momentum's memory of about N rounds,
        which held for every case measured (BENCHMARKS.md).
        """
        return rounds_per_epoch >= 2 * num_workers

    def model_weights(self, center: Arrays) -> Arrays:
        return self._outer.iterate(center) if self._report_iterate else center

    def server_weights(self, weights: Arrays) -> Arrays:
        return self._outer.look_ahead(weights) if self._report_iterate else weights

    # -- driver ---------------------------------------------------------------

    def fit(self, job: TrainingJob) -> None:
        self.window = self.window_for(job.num_workers)  # what the workers read
        self.record_job(job)  # also without the parameter server (_fit_in_jobs)
        self._outer = OuterStep(self.momentum(job.num_workers), self.outer_learning_rate, self.nesterov,
                                list(self._trainable), bias_correction=self.momentum_bias_correction)
        rounds = 1 if self.window == "epoch" else -(-max(job.steps_per_worker) // int(self.window))
        self._report_iterate = self.reports_iterate(job.num_workers, rounds)
        if self._restored_velocity is not None:
            self._outer.velocity = [np.array(v) for v in self._restored_velocity]
            self._outer.rounds = self._restored_rounds
            self._restored_velocity = None
        try:
            super().fit(job)
        except ClusterCapacityError as lost:
            epoch = len(job.samples_per_second) + job.initial_epoch  # the first epoch not completed
            self._epoch_rollback()
            job.relaunched(epoch, str(lost).split(" (", 1)[0] + "; continuing with one Spark job per window "
                                                                 "on the slots that are left")
            self._fit_in_jobs(job, epoch)

    def _epoch_start(self) -> None:
        self._velocity_at_start = None if self._outer.velocity is None else [v.copy() for v in self._outer.velocity]
        self._rounds_at_start = self._outer.rounds

    def _epoch_rollback(self) -> None:
        saved = self._velocity_at_start
        self._outer.velocity = None if saved is None else [v.copy() for v in saved]
        self._outer.rounds = self._rounds_at_start

    def checkpoint_state(self) -> dict[str, Arrays]:
        """The workers' local states, and the outer step's momentum."""
        state = super().checkpoint_state()
        if self._outer is not None and self._outer.velocity is not None:
            state["outer_velocity"] = list(self._outer.velocity)
            state["outer_rounds"] = [np.array(self._outer.rounds, dtype=np.int64)]
        return state

    def restore_checkpoint_state(self, state: dict[str, Arrays]) -> None:
        super().restore_checkpoint_state(state)
        self._restored_velocity = state.get("outer_velocity")
        rounds = state.get("outer_rounds")  # absent in older checkpoints: a velocity long built up
        self._restored_rounds = int(np.asarray(rounds[0])) if rounds else 10**6

    def end_epoch_state(self, job: TrainingJob, local_states: list[Arrays], samples: list[int]) -> None:
        """The driver's optimizer state: the workers' inner states, averaged (step counts: the largest).

        The learning rate stays the driver's: the workers may have trained
        at a multiple of it (``learning_rate_scaling``).
        """
        k = len(job.model.weights)
        rate = job.learning_rate
        job.state[k:] = average_states([s[k:] for s in local_states], samples)
        self._keep_rate(job, rate)

    def _keep_rate(self, job: TrainingJob, rate: float | None, share: float = 0.0) -> None:
        """Put ``rate`` (the driver's), or with ``share`` that share of the workers' rate for it
        (:meth:`rate_ramp`), back at the state's learning-rate position."""
        position = job.learning_rate_position
        if rate is not None and position is not None:
            value = self.worker_learning_rate(rate, job.num_workers) * share if share else rate
            job.state[position] = np.asarray(value, dtype=job.state[position].dtype)

    def _fit_in_jobs(self, job: TrainingJob, first_epoch: int) -> None:
        """Each window is a Spark job; the driver averages the returned states and steps the center."""
        batches = None if self.window == "epoch" else int(self.window)
        windows = 1 if batches is None else max(1, -(-max(job.steps_per_worker) // batches))
        shared = [i for i, v in enumerate(job.model.weights) if is_shared(v)]
        spec = job.spec  # the closure must not capture the job (it holds the SparkContext)
        attempts = EpochAttempts(job, self.name, self.max_restarts, self.slot_timeout, None)
        for epoch in range(first_epoch, job.epochs):
            job.begin_epoch(epoch)
            epoch_metrics: list[np.ndarray] | None = None
            set_shared(job.state, shared, self.server_weights([job.state[i] for i in shared]))
            rate = job.learning_rate  # the driver's, as callbacks left it
            for index in range(windows):
                window = Window(epoch, index, job.batch_size, batches, job.shuffle)
                self._keep_rate(job, rate, share=self.rate_ramp(epoch, index * (batches or 0)))
                blob = job.broadcast_state()
                self._keep_rate(job, rate)
                try:
                    results = attempts.run(epoch, lambda w=window, b=blob: run_partitions(
                        job.train, lambda it: tasks.train_window(spec, w, b, it), f"training epoch {epoch + 1}"))
                finally:
                    blob.unpersist()
                trained = [r for r in results if r.samples]
                slowest = max((r.figures.get("seconds", 0.0) for r in trained), default=0.0)
                for r in trained:  # the round ends with its slowest task: the others wait that long
                    r.figures["wait_seconds"] = slowest - r.figures.get("seconds", 0.0)
                job.add_results(trained)
                if trained:
                    averaged = average_states([r.state for r in trained], [r.samples for r in trained])
                    center = [np.array(job.state[i], copy=True) for i in shared]
                    self._outer(center, [averaged[i] - c for i, c in zip(shared, center)])
                    for i, c in zip(shared, center):
                        averaged[i] = c
                    job.state = averaged
                    self._keep_rate(job, rate)
                window_metrics = sum_metric_states(trained)
                if window_metrics is not None:
                    epoch_metrics = window_metrics if epoch_metrics is None else [
                        a + b for a, b in zip(epoch_metrics, window_metrics)]
            set_shared(job.state, shared, self.model_weights([job.state[i] for i in shared]))
            if job.end_epoch(epoch, epoch_metrics):
                break
