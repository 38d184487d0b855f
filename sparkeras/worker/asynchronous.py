"""The task body of parameter-server training: one task per partition and epoch.

A task joins the server (the center, and its own local state from its
previous epoch), then trains its partition window by window with the
model's own optimizer. Every ``window`` batches, and once more after the
last batch so that no work is dropped, it talks to the server: the
distributed optimizer's worker rule decides what to commit (a delta, a
normalised delta, an elastic difference) and how to fold the center it gets
back into the local weights. Only the model's float weights are shared;
integer state (seed generators) stays local.

The windows run on :class:`~sparkeras.worker.local_steps.LocalSteps`, one
call of a traced loop per window on TensorFlow and JAX. Asynchronous rules
used to call it once per batch: a call per window had seemed to cost the
Elephas README example 1.5-2 points. Measured again over 12 seeds each
(``bench/elephas_example.py --seeds 0-11``, twice per way), per window gave
gaps of -0.29 and -0.21 points against -0.38 and -0.71 per batch, and the
call per batch cost ADAG's CNN epochs 11% (2.43 s against 2.15 s). Keras
metrics add up over the epoch's batches as in ``fit``, so the task returns
their states with its local state (weights and optimizer), which the driver
hands back at the next epoch's join.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from sparkeras.comm.parameter_server import ParameterClient
from sparkeras.comm.server import ServerAddress
from sparkeras.data.packing import read_partition
from sparkeras.progress import ProgressReporter
from sparkeras.serialization import model_state, pack_arrays, set_model_state, state_variables
from sparkeras.worker.faults import fail_once, hold_once
from sparkeras.worker.local_steps import LocalSteps
from sparkeras.worker.tasks import WorkerSpec, _result, _setup, task_figures


@dataclass(frozen=True)
class ServerTaskSpec:
    """What every task of a parameter-server fit needs; shipped in the job's closure."""

    worker: WorkerSpec
    server: ServerAddress
    rule: Any  # a sparkeras.strategies.DistributedOptimizer
    batch_size: int
    shuffle: bool
    timeout: float
    max_payload: int


def is_shared(variable: Any) -> bool:
    """Whether the center holds this model variable: every float weight, trainable or not."""
    return "float" in str(variable.dtype)


def train_with_server(spec: ServerTaskSpec, epoch: int, blocks: Iterator[tuple], run: int | None = None,
                      learning_rate: tuple[int, float] | None = None,
                      epochs: int | None = None) -> Iterator[tuple]:
    """Train this partition against the parameter server (``run``: the server's run of the epoch).

    ``learning_rate`` is ``(position in the state, value)``: the driver's
    rate for this epoch, which replaces the one in the worker's own local
    state (callbacks change it on the driver).

    With ``epochs`` (the fit's last epoch, exclusive) the task trains every
    epoch from ``epoch`` on, in one Spark job: at each epoch's end it reports
    its state, metric states and figures to the server and waits for the
    driver's answer (stop, or the next epoch's run and learning rate), and
    it answers the job with an empty result. Without it, the task trains one
    epoch and answers the job with that report.
    """
    from pyspark import TaskContext

    model, partition = _setup(spec.worker)
    arrays, n = read_partition(spec.worker.columns, blocks)
    if n == 0:
        yield _result(partition, 0, 0, b"", b"")
        return
    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx else 0
    holds = None  # the epoch run whose reported local state this task's model still holds
    while True:
        client = ParameterClient(spec.server, partition, attempt, spec.max_payload, spec.timeout, run)
        report = _train_epoch(spec, model, partition, epoch, arrays, n, client, learning_rate, holds)
        if epochs is None:
            client.done()
            yield report
            return
        scoring = _center_scorer(spec, model, arrays) if spec.rule.reports_center else None
        answer = client.end_epoch(*report[1:], score_center=scoring)
        if answer.get("stop") or epoch + 1 >= epochs:
            yield _result(partition, 0, 0, b"", b"")
            return
        holds = run  # the model holds the state it reported (scoring the center puts its own weights back)
        epoch, run = epoch + 1, int(answer["run"])
        if learning_rate is not None and answer.get("learning_rate") is not None:
            learning_rate = (learning_rate[0], float(answer["learning_rate"]))


def _train_epoch(spec: ServerTaskSpec, model: Any, partition: int, epoch: int, arrays: Any, n: int,
                 client: ParameterClient, learning_rate: tuple[int, float] | None, holds: int | None = None) -> tuple:
    """One epoch of this partition's windows; the task's report of it (:func:`~sparkeras.worker.tasks._result`).

    ``holds``: the epoch run whose reported state the model still holds;
    the server then sends the center alone (:meth:`ParameterClient.join`).
    """
    started = time.perf_counter()
    rule = spec.rule
    center, version, local_state = client.join(holds)
    if local_state is not None:  # else the model holds the state the server parked
        set_model_state(model, local_state)
    if learning_rate is not None:
        position, value = learning_rate
        state_variables(model)[position].assign(value)
    variables = [v for v in model.weights if is_shared(v)]
    _assign(variables, rule.fold(_read(variables), center, None))

    order = (np.random.default_rng([spec.worker.seed, epoch, partition]).permutation(n) if spec.shuffle
             else np.arange(n))
    steps = -(-n // spec.batch_size)
    window = steps if rule.window == "epoch" else int(rule.window)
    reporter = None
    if spec.worker.progress is not None:
        reporter = ProgressReporter(spec.worker.progress, partition, epoch, 0, spec.batch_size, n)
    local_steps = LocalSteps(model, spec.worker.training_arrays(arrays), spec.worker.columns, spec.worker.backend)
    model.reset_metrics()  # they add up over the epoch's windows, as in fit
    ramped = False
    for start in range(0, steps, window):
        share = rule.rate_ramp(epoch, start) if learning_rate is not None else 1.0
        if share != 1.0 or ramped:  # the learning rate variable, which every backend's loop reads per call
            model.optimizer.learning_rate.assign(learning_rate[1] * share)
            ramped = share != 1.0
        local_steps.train(order, spec.batch_size, start, window)
        local = _read(variables)
        if rule.pull_first:
            center, version = client.pull()
        sent = rule.commit(local, center, min(window, steps - start))
        fresh, version = client.commit(sent, version, want_center=not rule.pull_first)
        center = fresh if fresh is not None else center
        _assign(variables, rule.fold(local, center, sent))
        fail_once(getattr(rule, "fail_once", None), epoch, partition)
        hold_once(getattr(rule, "hold_once", None), epoch, partition)
        if reporter is not None:
            reporter.tick(min(n, (start + window) * spec.batch_size), {"loss": local_steps.running_loss()})
    if ramped:
        model.optimizer.learning_rate.assign(learning_rate[1])
    if reporter is not None:
        reporter.send(n, {"loss": local_steps.running_loss()})
    return _result(partition, n, steps, pack_arrays(model_state(model)),
                   pack_arrays([np.asarray(v) for v in model.metrics_variables]),
                   task_figures(started, client.seconds, client.bytes))


def _center_scorer(spec: ServerTaskSpec, model: Any, arrays: Any) -> Any:
    """For rules that report their center: a function scoring the epoch's center on this partition.

    It does in the task what the driver's evaluation job over the training
    data did (:meth:`~sparkeras.training.TrainingJob.end_epoch`): the
    model's loss and metric totals with the center's weights. The worker's
    own weights are put back after, so the model still holds the state it
    reported, and the next epoch's join need not send it
    (:meth:`~sparkeras.comm.parameter_server.ParameterClient.join`).
    """
    from sparkeras.worker.local_steps import evaluate_arrays

    def score(center: list[np.ndarray]) -> bytes:
        shared = [v for v in model.weights if is_shared(v)]
        own = _read(shared)
        _assign(shared, center)
        evaluate_arrays(model, spec.worker.columns, arrays, spec.worker.backend, spec.batch_size, scoring=True)
        _assign(shared, own)
        return pack_arrays([np.asarray(v) for v in model.metrics_variables])

    return score


def _read(variables: list[Any]) -> list[np.ndarray]:
    return [np.array(v) for v in variables]


def _assign(variables: list[Any], values: list[np.ndarray]) -> None:
    for var, value in zip(variables, values):
        var.assign(value)
