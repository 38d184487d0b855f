"""The TensorFlow backend's split step: gradients, the global sum and the update, in one traced loop of steps."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from sparkeras.serialization import ensure_optimizer_built
from sparkeras.worker.backends import Alone, GradientSteps, kept_on_model, traced_per_model
from sparkeras.worker.backends.batch_norm import synchronize_batch_norm


class TensorFlowSteps(GradientSteps):
    """Gradients from a ``tf.GradientTape``, summed and applied by the model's optimizer, many steps per call.

    A fit runs its steps with rows through :meth:`run_steps`: one traced
    loop per run of whole batches, with the global sum a ``numpy_function``
    between each step's backward pass and its update
    (:meth:`_TracedGradients.loop_over`). :meth:`step` (a step without rows
    here, or one called on its own) takes the parts in turn.
    """

    def __init__(self, model: Any, collective: Any, sync_batch_norm: bool) -> None:
        import tensorflow as tf

        traced = _TracedGradients.of(model, sync_batch_norm)
        traced.reducer.collective = collective
        super().__init__(model, collective, traced.global_sum)
        self._traced = traced
        self._empty_pass, self._apply = traced.empty_pass, traced_per_model(tf.function(traced.update, autograph=False))

    def run_steps(self, columns: Any, tensors: list[Any], batches: np.ndarray, shares: np.ndarray) -> None:
        """Train one step per row of ``batches`` (row indices into ``tensors``, none empty) in one traced call.

        ``shares[i]`` is this task's fraction of step ``i``'s global batch.
        See :meth:`_TracedGradients.loop_over` for why.
        """
        self._traced.loop_over(columns, tensors)(tensors, batches, shares)

    def close(self) -> None:
        super().close()
        self._traced.reducer.collective = None  # the fit's collective is closed; the next fit sets its own

    def local_gradients(self, x: Any, y: Any, share: float, sample_weight: Any = None) -> None:
        import tensorflow as tf

        self.buffer[:] = self._traced.gradients(x, y, sample_weight, tf.constant(share, tf.float32)).numpy()

    def empty_pass(self, x: Any) -> None:
        self.buffer[:] = self._empty_pass(x).numpy()

    def apply_sum(self) -> None:
        import tensorflow as tf

        self._apply(tf.convert_to_tensor(self.buffer))


class _Reducer:
    """Where a traced global sum finds the collective of the fit that calls it (one per fit)."""

    collective: Any = None


class _TracedGradients:
    """The gradient functions of one model, traced once per Python worker and reused by every fit.

    Why kept. Tracing the gradient step took 0.17-0.26 s, and the epoch's
    last, smaller batch traced it again (0.08-0.10 s), in every all-reduce
    fit of a model (measured on one core, an MLP and a small CNN). The
    functions read the fit's collective through a :class:`_Reducer`, so a
    later fit, with a new collective, reuses them. The loop of whole steps
    (gradients, sum, update) is kept too, and traced by the warm-up: the
    update reads the learning rate through variables that each fit sets
    (:class:`~sparkeras.worker.learning_rate.ScaledRate`).
    """

    def __init__(self, model: Any, sync_batch_norm: bool) -> None:
        import tensorflow as tf

        self.model = model
        self.reducer = _Reducer()
        self.global_sum = global_sum(self.reducer) if sync_batch_norm else None
        variables = list(model.trainable_variables)

        def flat(grads: list[Any]) -> Any:
            return tf.concat([tf.reshape(tf.cast(tf.zeros(v.shape) if g is None else tf.convert_to_tensor(g),
                                                 tf.float32), [-1]) for g, v in zip(grads, variables)], 0)

        @tf.function(reduce_retracing=True, autograph=False)
        def gradients(x: Any, y: Any, sample_weight: Any, share: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                loss = model._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
                model._loss_tracker.update_state(loss, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
                scaled = model.optimizer.scale_loss(loss * share)
            grads = tape.gradient(scaled, variables)
            model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
            return flat(grads)

        @tf.function(reduce_retracing=True, autograph=False)
        def empty_pass(x: Any) -> Any:
            with tf.GradientTape() as tape:
                y_pred = model(x, training=True)
                zero = tf.add_n([tf.reduce_sum(t) for t in tf.nest.flatten(y_pred)]) * 0.0
            return flat(tape.gradient(zero, variables))

        sizes = [int(np.prod(v.shape)) for v in variables]

        def update(summed: Any) -> None:
            parts = tf.split(summed, sizes)
            model.optimizer.apply([tf.cast(tf.reshape(p, v.shape), v.dtype) for p, v in zip(parts, variables)],
                                  variables)

        def reduce(flat: np.ndarray) -> np.ndarray:
            return self.reducer.collective.allreduce_(np.array(flat, dtype=np.float32))  # TF's memory is read-only

        self.gradients, self.empty_pass = traced_per_model(gradients), traced_per_model(empty_pass)
        self.update, self.reduce = update, reduce
        self._loops: dict[tuple, Any] = {}

    def loop_over(self, columns: Any, tensors: list[Any]) -> Any:
        """The traced loop of whole steps over a partition's ``tensors`` (or specs of them), made once per kind.

        Why. Called one step at a time from Python, a step cost 1.48 ms on the
        mlp benchmark's MLP 784-128-10, 0.94 ms on the regression MLP and 6.6
        ms on the small CNN (batch 64, one thread). Inside one traced
        ``tf.while_loop`` that gathers each batch's rows from the partition
        it cost 0.64, 0.26 and 5.0 ms: the Python loop, the rows' copy and
        the call into TensorFlow were most of a small model's step. The
        global sum stays a ``numpy_function`` in the loop, so every step is
        still matched across the tasks. Kept per model, Python worker and
        dtype and shape of the arrays, like the step itself; it reads the
        learning rate through the fit's :class:`~sparkeras.worker.learning_rate.ScaledRate`.
        """
        key = tuple((t.dtype, tuple(t.shape[1:])) for t in tensors)
        if key not in self._loops:
            self._loops[key] = self._trace_loop(columns, key)
        return self._loops[key]

    def _trace_loop(self, columns: Any, key: tuple) -> Any:
        import tensorflow as tf

        from sparkeras.worker.learning_rate import ScaledRate

        gradients, update, reduce = self.gradients, self.update, self.reduce
        signature = [[tf.TensorSpec([None, *shape], dtype) for dtype, shape in key],
                     tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.float32)]

        @tf.function(input_signature=signature, autograph=False)
        def loop(tensors: list[Any], batches: Any, shares: Any) -> Any:
            def one(i: Any) -> Any:
                x, y, *weights = columns.data([tf.gather(t, batches[i]) for t in tensors])
                flat = gradients(x, y, weights[0] if weights else None, shares[i])
                summed = tf.numpy_function(reduce, [flat], tf.float32, stateful=True)
                summed.set_shape(flat.shape)
                update(summed)
                return i + 1

            tf.while_loop(lambda i: i < tf.shape(batches)[0], one, [tf.constant(0)])
            return tf.constant(0)

        rate = ScaledRate.of(self.model.optimizer)
        restore = None if self.model.optimizer._learning_rate is rate else rate.install()
        try:
            loop.get_concrete_function()
        finally:
            if restore is not None:
                restore()
        return traced_per_model(loop)

    @classmethod
    def of(cls, model: Any, sync_batch_norm: bool) -> "_TracedGradients":
        """``model``'s functions for ``sync_batch_norm`` (only models with BatchNormalization sync)."""
        return kept_on_model(model, "_sparkeras_gradient_steps", sync_batch_norm, cls)


def trace_gradients(model: Any, columns: Any, weighted: bool, sync_batch_norm: bool,
                    batch_size: int | None = None) -> None:
    """Trace ``model``'s loop of steps ahead of its first all-reduce fit, for batches of any size, and run it once.

    Called by the training workers' warm-up (:func:`sparkeras.worker.runtime.warm_up`)
    while the driver packs the data; the fit's steps, its last smaller batch
    included, then find the trace done (:meth:`_TracedGradients.loop_over`).
    Synced BatchNormalization layers take the global moments while it
    traces, as they do in a fit. With ``batch_size`` the loop also runs one
    step on a batch of zeros of that size (:func:`_rehearse`), and every
    variable is put back.
    """
    import tensorflow as tf

    ensure_optimizer_built(model)
    specs = [tf.TensorSpec([None, *b.shape], b.dtype) for b in columns.bindings]
    if weighted and columns.labels and not columns.weights:
        specs.append(tf.TensorSpec([None], tf.float32))  # the rows' weights (class_weight)
    x, y = columns.data([tf.zeros((1, *[1 if d is None else d for d in s.shape[1:]]), s.dtype) for s in specs])[:2]
    model._symbolic_build(data_batch=(x, y, None))
    traced = _TracedGradients.of(model, sync_batch_norm)
    synced = synchronize_batch_norm(model, traced.global_sum) if traced.global_sum else []
    try:
        loop = traced.loop_over(columns, specs)
        if batch_size:
            zeros = [tf.zeros((batch_size, *s.shape[1:]), s.dtype) for s in specs]
            _rehearse(model, traced, lambda: loop(zeros, tf.range(batch_size)[tf.newaxis], tf.zeros([1])))
    finally:
        for layer in synced:
            del layer._moments


def _rehearse(model: Any, traced: _TracedGradients, run: Callable[[], Any]) -> None:
    """Call ``run`` (one traced step on zeros) and put every variable back as it was.

    Why. TensorFlow instantiates a traced function, and creates its kernels
    for the batch's shapes, at the first call: 80-270 ms on the benchmark
    models (MLP, CNN, LSTM) on one core, which a fit's first step paid on
    the critical path. Here it overlaps with the packing. The step runs with
    a zero share of the loss, and the model's variables (dropout seeds
    included), the optimizer's and the metrics' are restored afterwards.
    """
    from sparkeras.worker.learning_rate import ScaledRate

    variables = list(model.variables) + list(model.optimizer.variables) + list(model.metrics_variables)
    saved = [np.array(v) for v in variables]
    collective, traced.reducer.collective = traced.reducer.collective, Alone()
    restore_rate = ScaledRate.of(model.optimizer).install()
    try:
        run()
    finally:
        restore_rate()
        traced.reducer.collective = collective
        for variable, value in zip(variables, saved):
            variable.assign(value)


def global_sum(reducer: _Reducer) -> Any:
    """A sum over the tasks inside a ``tf.function`` (a ``py_function``), whose gradient is a sum too."""
    import tensorflow as tf

    def reduce(t: Any) -> np.ndarray:
        return reducer.collective.allreduce(t.numpy(), "sum")

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
