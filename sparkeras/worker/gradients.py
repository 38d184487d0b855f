"""One synchronous training step, for a Keras backend: local gradients, global sum, same update.

Keras' own ``train_step`` computes gradients and applies them in one traced
function, leaving no point to reduce across workers in between, and
``tf.distribute``'s multi-worker strategy, which would, fails under Keras 3
(keras-team/keras#20585). So the step is split in two traced functions with
the all-reduce between them: ``gradients`` (forward, loss scaled by this
task's share of the global batch, backward, metric updates) returns every
gradient in one flat float32 buffer, which is summed in place over the
tasks, and ``apply`` hands the sum to the model's own optimizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparkeras.serialization import ensure_optimizer_built


class TensorFlowSteps:
    """The TensorFlow backend's split train step."""

    def __init__(self, model: Any, collective: Any, sync_batch_norm: bool) -> None:
        import tensorflow as tf

        ensure_optimizer_built(model)
        self.model, self.collective = model, collective
        variables = list(model.trainable_variables)
        self._sizes = [int(np.prod(v.shape)) for v in variables]
        self._buffer = np.zeros(sum(self._sizes), np.float32)
        self._restore = synchronize_batch_norm(model, collective) if sync_batch_norm else []

        def flat(grads: list[Any]) -> Any:
            return tf.concat([tf.reshape(tf.cast(tf.zeros(v.shape) if g is None else tf.convert_to_tensor(g),
                                                 tf.float32), [-1]) for g, v in zip(grads, variables)], 0)

        @tf.function(reduce_retracing=True)
        def gradients(x: Any, y: Any, share: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model._compute_loss(x=x, y=y, y_pred=y_pred, training=True)
                model._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
                scaled = model.optimizer.scale_loss(loss * share)
            grads = tape.gradient(scaled, variables)
            model.compute_metrics(x, y, y_pred)
            return flat(grads)

        @tf.function(reduce_retracing=True)
        def empty_pass(x: Any) -> Any:
            """No rows here this step: still run the synced BatchNorm collectives, contributing zero."""
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                zero = tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(y_pred)]) * 0.0
            return flat(tape.gradient(zero, variables))

        @tf.function
        def apply(buffer: Any) -> None:
            parts = tf.split(buffer, self._sizes)
            model.optimizer.apply([tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(parts, variables)],
                                  variables)

        self._gradients, self._empty_pass, self._apply = gradients, empty_pass, apply

    def step(self, x: Any, y: Any, rows: int, share: float) -> None:
        """Train one step; ``share`` is this task's fraction of the step's global batch."""
        import tensorflow as tf

        if rows:
            self._buffer[:] = self._gradients(x, y, tf.constant(share, tf.float32)).numpy()
        elif self._restore:
            self._buffer[:] = self._empty_pass(x).numpy()
        else:
            self._buffer.fill(0.0)
        self.collective.allreduce_(self._buffer)
        self._apply(tf.convert_to_tensor(self._buffer))

    def running_loss(self) -> float:
        return float(self.model._loss_tracker.result())

    def average_non_trainable(self) -> None:
        """Average non-trainable float variables (e.g. BatchNorm moving statistics) over the tasks."""
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
        for layer in self._restore:
            del layer._moments
        self._restore = []


def batch_norm_layers(model: Any) -> list[Any]:
    import keras

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def synchronize_batch_norm(model: Any, collective: Any) -> list[Any]:
    """Make each BatchNormalization layer compute moments over the global batch.

    The layer's sums of ``x`` and ``x**2`` and its row count are summed over
    the tasks by an op whose gradient is, again, a sum over the tasks (the
    derivative of everyone's loss reaches every task's rows). Masked inputs
    keep local moments. Returns the layers changed, for :meth:`TensorFlowSteps.close`.
    """
    import tensorflow as tf

    def reduce(t: Any) -> np.ndarray:
        return collective.allreduce(t.numpy(), "sum")

    @tf.custom_gradient
    def global_sum(x: Any) -> Any:
        y = tf.py_function(reduce, [x], x.dtype)
        y.set_shape(x.shape)

        def grad(dy: Any) -> Any:
            g = tf.py_function(reduce, [dy], dy.dtype)
            g.set_shape(dy.shape)
            return g

        return y, grad

    layers = batch_norm_layers(model)
    for layer in layers:
        layer._moments = _global_moments(layer, global_sum)
    return layers


def _global_moments(layer: Any, global_sum: Any) -> Any:
    import tensorflow as tf

    local_moments = type(layer)._moments.__get__(layer)

    def moments(inputs: Any, mask: Any) -> tuple[Any, Any]:
        if mask is not None:
            return local_moments(inputs, mask)
        axes = list(layer._reduction_axes)
        kept = [d for i, d in enumerate(inputs.shape) if i not in axes and (i - len(inputs.shape)) not in axes]
        count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(inputs), axes)), inputs.dtype)
        s = tf.reshape(tf.reduce_sum(inputs, axes), [-1])
        sq = tf.reshape(tf.reduce_sum(tf.square(inputs), axes), [-1])
        total = global_sum(tf.concat([s, sq, tf.reshape(count, [1])], 0))
        k = tf.shape(s)[0]
        n = tf.maximum(total[-1], 1.0)
        mean = total[:k] / n
        variance = tf.maximum(total[k:2 * k] / n - tf.square(mean), 0.0)
        return tf.reshape(mean, kept), tf.reshape(variance, kept)

    return moments
