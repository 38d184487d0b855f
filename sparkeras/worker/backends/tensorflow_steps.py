"""The TensorFlow backend's split step: two ``tf.function``s around the global sum."""

from __future__ import annotations

from typing import Any

import numpy as np

from sparkeras.worker.backends import GradientSteps


class TensorFlowSteps(GradientSteps):
    """Gradients from a ``tf.GradientTape``; the sum applied by the model's optimizer in a ``tf.function``."""

    def __init__(self, model: Any, collective: Any, sync_batch_norm: bool) -> None:
        import tensorflow as tf

        super().__init__(model, collective, global_sum(collective) if sync_batch_norm else None)
        variables = self.variables

        def flat(grads: list[Any]) -> Any:
            return tf.concat([tf.reshape(tf.cast(tf.zeros(v.shape) if g is None else tf.convert_to_tensor(g),
                                                 tf.float32), [-1]) for g, v in zip(grads, variables)], 0)

        @tf.function(reduce_retracing=True)
        def gradients(x: Any, y: Any, sample_weight: Any, share: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
                model._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
                scaled = model.optimizer.scale_loss(loss * share)
            grads = tape.gradient(scaled, variables)
            model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
            return flat(grads)

        @tf.function(reduce_retracing=True)
        def empty_pass(x: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                zero = tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(y_pred)]) * 0.0
            return flat(tape.gradient(zero, variables))

        @tf.function
        def apply(buffer: Any) -> None:
            parts = tf.split(buffer, self.sizes)
            model.optimizer.apply([tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(parts, variables)],
                                  variables)

        self._gradients, self._empty_pass, self._apply = gradients, empty_pass, apply

    def local_gradients(self, x: Any, y: Any, share: float, sample_weight: Any = None) -> None:
        import tensorflow as tf

        self.buffer[:] = self._gradients(x, y, sample_weight, tf.constant(share, tf.float32)).numpy()

    def empty_pass(self, x: Any) -> None:
        self.buffer[:] = self._empty_pass(x).numpy()

    def apply_sum(self) -> None:
        import tensorflow as tf

        self._apply(tf.convert_to_tensor(self.buffer))


def global_sum(collective: Any) -> Any:
    """A sum over the tasks inside a ``tf.function`` (a ``py_function``), whose gradient is a sum too."""
    import tensorflow as tf

    def reduce(t: Any) -> np.ndarray:
        return collective.allreduce(t.numpy(), "sum")

    @tf.custom_gradient
    def total(x: Any) -> Any:
        y = tf.py_function(reduce, [x], x.dtype)
        y.set_shape(x.shape)

        def grad(dy: Any) -> Any:
            g = tf.py_function(reduce, [dy], dy.dtype)
            g.set_shape(dy.shape)
            return g

        return y, grad

    return total
