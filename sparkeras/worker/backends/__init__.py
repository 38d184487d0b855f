"""One synchronous training step for each Keras backend: local gradients, global sum, same update.

Keras' own ``train_step`` computes gradients and applies them in one traced
function, leaving no point to reduce across workers in between (and
``tf.distribute``'s multi-worker strategy, which would, fails under Keras 3:
keras-team/keras#20585). So each backend's step is split in two:

1. ``gradients``: forward, loss scaled by this task's share of the global
   batch, backward, metric updates; every gradient lands in one flat
   float32 buffer;
2. the buffer is summed in place over the tasks (:mod:`sparkeras.comm`);
3. ``apply`` hands the sum to the model's own optimizer.

Each backend computes gradients its own way (a ``tf.GradientTape`` in a
``tf.function``, ``jax.value_and_grad`` over Keras' stateless call, torch
autograd); everything else lives in :class:`GradientSteps`. With
``sync_batch_norm`` every BatchNormalization layer takes its moments over the
global batch through a differentiable global sum that each backend provides
(:mod:`sparkeras.worker.backends.batch_norm`).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sparkeras.serialization import ensure_optimizer_built
from sparkeras.worker.backends.batch_norm import batch_norm_layers, synchronize_batch_norm

BACKENDS = ("tensorflow", "jax", "torch")


def traced_per_model(function: Any) -> Any:
    """``function`` (a ``tf.function`` made for one model) without TensorFlow's "excessive retracing" warning.

    Why. sparkeras traces each model's window loop, evaluation loop and
    all-reduce step once and keeps it on the model, but TensorFlow counts
    traces by the Python function's code object, which every model's loop
    shares. A Python worker that trains its sixth model (tuning trials,
    fits in a notebook) printed "5 out of the last 45 calls to <function
    _traced_loop.<locals>.loop> triggered tf.function retracing" on the
    user's terminal, about retracing that is not happening. The flag is
    TensorFlow's own per-function switch for that warning; the user's own
    functions keep it.
    """
    function._omit_frequent_tracing_warning = True
    return function


class GradientSteps:
    """What every backend's split step shares: the flat buffer, the sum, and the epoch-end duties."""

    def __init__(self, model: Any, collective: Any, global_sum: Callable[[Any], Any] | None) -> None:
        """``global_sum``: the backend's differentiable sum over the tasks, to sync BatchNormalization
        with; ``None`` keeps each task's own moments."""
        ensure_optimizer_built(model)
        self.model, self.collective = model, collective
        self.variables = list(model.trainable_variables)
        self.shapes = [tuple(v.shape) for v in self.variables]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.buffer = np.zeros(sum(self.sizes), np.float32)
        self.synced_layers: list[Any] = synchronize_batch_norm(model, global_sum) if global_sum else []

    def step(self, x: Any, y: Any, rows: int, share: float, sample_weight: Any = None) -> None:
        """Train one step; ``share`` is this task's fraction of the step's global batch.

        ``sample_weight`` weighs each row's loss (``class_weight``), as in ``fit``.
        """
        if rows:
            self.local_gradients(x, y, share, sample_weight)
        elif self.synced_layers:
            self.empty_pass(x)  # the other tasks' BatchNorm sums wait for this one's zeros
        else:
            self.buffer.fill(0.0)
        self.collective.allreduce_(self.buffer)
        self.apply_sum()

    def local_gradients(self, x: Any, y: Any, share: float, sample_weight: Any = None) -> None:
        """Fill ``buffer`` with the gradients of ``share`` times the (weighted) loss on this task's rows."""
        raise NotImplementedError

    def empty_pass(self, x: Any) -> None:
        """No rows here this step: run the forward and backward for the synced layers' sums only."""
        raise NotImplementedError

    def apply_sum(self) -> None:
        """Apply the summed ``buffer`` with the model's optimizer."""
        raise NotImplementedError

    def sync(self) -> None:
        """Make the model's variables current (backends that keep the state outside them)."""

    def running_loss(self) -> float:
        self.sync()
        return float(self.model._loss_tracker.result())

    def average_non_trainable(self) -> None:
        """Average non-trainable float variables (e.g. BatchNorm moving statistics) over the tasks."""
        self.sync()
        variables = [v for v in self.model.non_trainable_variables if "float" in str(v.dtype)]
        if not variables:
            return
        values = [np.asarray(v) for v in variables]
        mean = self.collective.allreduce(np.concatenate([a.astype(np.float64).ravel() for a in values]), "mean")
        offset = 0
        for var, value in zip(variables, values):
            var.assign(mean[offset:offset + value.size].reshape(value.shape).astype(value.dtype))
            offset += value.size

    def close(self) -> None:
        """Put the model's BatchNormalization layers back as they were (the model is cached)."""
        self.sync()
        for layer in self.synced_layers:
            del layer._moments
        self.synced_layers = []


def kept_on_model(model: Any, name: str, sync_batch_norm: bool, make: Callable[[Any, bool], Any]) -> Any:
    """``make(model, sync)``, made once per model and sync setting and kept on the model under ``name``.

    A worker keeps one model per architecture, so a backend's traced or
    jitted step kept there serves every fit of it. ``sync`` holds only for
    a model with BatchNormalization layers and ``sync_batch_norm``; such a
    model keeps a step for each setting.
    """
    sync = bool(sync_batch_norm and batch_norm_layers(model))
    kept = model.__dict__.setdefault(name, {})
    if sync not in kept:
        kept[sync] = make(model, sync)
    return kept[sync]


class Alone:
    """The collective of a step rehearsed outside any fit: this task's sums are the sums."""

    def allreduce_(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        return buffer

    def allreduce(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        return np.array(array, copy=True)


def gradient_steps(model: Any, collective: Any, backend: str, sync_batch_norm: bool) -> GradientSteps:
    """The split step of ``backend`` for ``model``."""
    if backend == "tensorflow":
        from sparkeras.worker.backends.tensorflow_steps import TensorFlowSteps as steps
    elif backend == "jax":
        from sparkeras.worker.backends.jax_steps import JaxSteps as steps
    elif backend == "torch":
        from sparkeras.worker.backends.torch_steps import TorchSteps as steps
    else:
        raise RuntimeError(f"all-reduce training does not support the {backend!r} backend")
    return steps(model, collective, sync_batch_norm)


def trace_gradients(model: Any, columns: Any, backend: str, weighted: bool, sync_batch_norm: bool,
                    batch_size: int | None = None) -> None:
    """Trace ``backend``'s step for ``model`` ahead of a fit, and run it once on zeros of ``batch_size`` rows
    with every variable put back (TensorFlow), or compile it for batches of that size (JAX); PyTorch's step
    is not traced."""
    if backend == "tensorflow":
        from sparkeras.worker.backends.tensorflow_steps import trace_gradients as trace

        trace(model, columns, weighted, sync_batch_norm, batch_size)
    elif backend == "jax" and batch_size:
        from sparkeras.worker.backends.jax_steps import compile_gradients

        compile_gradients(model, columns, weighted, sync_batch_norm, batch_size)
