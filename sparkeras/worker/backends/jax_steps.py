"""The JAX backend's split step: ``jax.value_and_grad`` over Keras' stateless call, jitted.

Keras' JAX trainer keeps the model's state (trainable, non-trainable,
optimizer and metric values) as arrays outside the variables while it
trains, and writes them back when it is done. This step does the same: the
two jitted functions take and return that state, and :meth:`JaxSteps.sync`
writes it back into the variables before anything reads them (the epoch
end, a progress report).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sparkeras.worker.backends import Alone, GradientSteps, kept_on_model


def committed(state: Any) -> Any:
    """``state`` (a tree of arrays) committed to the default device, as a jitted function's outputs are.

    Why. ``jax.jit`` keys its compilations on whether each argument is
    committed to a device, not only on shapes. A variable set from the
    driver's state (numpy) holds an uncommitted array, and one a jitted
    step wrote holds a committed one, so the first steps of every fit
    compiled the same function two or three times: 0.9-1.25 s each in a
    Spark worker for a 784-128-10 MLP. Committing the state first makes
    the first call look like every later one.
    """
    import jax

    return jax.device_put(state, jax.devices()[0])


class _JittedSteps:
    """A model's jitted gradient, empty-pass and apply functions, kept on the model for every fit.

    Why. The functions close over the model alone, and a worker keeps one
    model per architecture (:func:`sparkeras.worker.runtime.model`), so
    they stay valid from fit to fit; made per task, each all-reduce fit
    compiled its gradient step again, 0.9-1.25 s in a Spark worker for a
    784-128-10 MLP. With synced BatchNormalization the global sum is a host
    callback to this object, which forwards it to the running fit's
    collective (:attr:`collective`), as TensorFlow's traced step does.
    """

    def __init__(self, model: Any, sync: bool) -> None:
        import jax
        import jax.numpy as jnp

        self.collective: Any = None
        self.global_sum = global_sum(self) if sync else None
        shapes = [tuple(v.shape) for v in model.trainable_variables]
        cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1].tolist()

        def flat(grads: list[Any]) -> Any:
            return jnp.concatenate([jnp.ravel(g).astype(jnp.float32) for g in grads])

        def gradients(trainable: Any, non_trainable: Any, metrics: Any, optimizer: Any, x: Any, y: Any,
                      sample_weight: Any, share: Any) -> Any:
            def loss(trainable: Any, non_trainable: Any, metrics: Any) -> Any:
                value, aux = model.compute_loss_and_updates(
                    trainable, non_trainable, metrics, x, y, sample_weight, training=True,
                    optimizer_variables=optimizer)
                return value * share, aux

            (_, (unscaled, y_pred, non_trainable, metrics)), grads = jax.value_and_grad(loss, has_aux=True)(
                trainable, non_trainable, metrics)
            _, metrics = model._update_metrics_variables(metrics, unscaled, x, y, y_pred, sample_weight)
            return flat(grads), non_trainable, metrics

        def empty_pass(trainable: Any, non_trainable: Any, x: Any) -> Any:
            def zero(trainable: Any) -> Any:
                y_pred, updated = model.stateless_call(trainable, non_trainable, x, training=True)
                return sum(jnp.sum(t) for t in jax.tree_util.tree_leaves(y_pred)) * 0.0, updated

            grads, non_trainable = jax.grad(zero, has_aux=True)(trainable)
            return flat(grads), non_trainable

        def apply(trainable: Any, optimizer: Any, buffer: Any, rate_settings: Any) -> Any:
            grads = [part.reshape(shape).astype(value.dtype)
                     for part, shape, value in zip(jnp.split(buffer, cuts), shapes, trainable)]
            return _apply_with_scaled_rate(model.optimizer, optimizer, grads, trainable, rate_settings)

        self.gradients, self.empty_pass, self.apply = jax.jit(gradients), jax.jit(empty_pass), jax.jit(apply)

    def allreduce(self, values: np.ndarray, op: str) -> np.ndarray:
        return self.collective.allreduce(values, op)

    @staticmethod
    def rate_settings(optimizer: Any) -> list[np.ndarray]:
        """The fit's learning-rate scale, warmup and start (:class:`ScaledRate`), as arguments of ``apply``."""
        from sparkeras.worker.learning_rate import ScaledRate

        return [np.asarray(v.value, np.float32) for v in ScaledRate.of(optimizer).settings]

    @classmethod
    def of(cls, model: Any, sync_batch_norm: bool) -> "_JittedSteps":
        """``model``'s functions for ``sync_batch_norm`` (only models with BatchNormalization sync)."""
        return kept_on_model(model, "_sparkeras_jax_gradient_steps", sync_batch_norm, cls)


def _apply_with_scaled_rate(optimizer: Any, values: Any, grads: Any, trainable: Any, rate_settings: Any) -> Any:
    """``optimizer.stateless_apply`` at the learning rate of :class:`ScaledRate` whose settings are ``rate_settings``.

    Why. Inside ``jax.jit`` a variable that is not among the function's
    arguments is read once, as a constant, when the function is traced. The
    rate's scale, warmup and start are such variables, and the jitted step
    is kept from fit to fit (:class:`_JittedSteps`), so a later fit with
    other settings (another number of workers, scaling off, a resumed
    start) would have trained at the first fit's rate. Here they are
    arguments, mapped onto their variables in the same stateless scope as
    the optimizer's state (Keras reads only the innermost scope), and the
    traced update always goes through the :class:`ScaledRate`, which is
    neutral outside a fit. An optimizer with a stateless update of its own
    (``LossScaleOptimizer``, whose inner optimizer holds the rate) keeps it.
    """
    import keras

    from sparkeras.worker.learning_rate import ScaledRate

    if type(optimizer).stateless_apply is not keras.optimizers.Optimizer.stateless_apply:
        return optimizer.stateless_apply(values, grads, trainable)
    rate = ScaledRate.of(optimizer)
    mapping = (list(zip(optimizer._trainable_variables, trainable)) + list(zip(optimizer.variables, values))
               + list(zip(rate.settings, rate_settings)))
    installed, optimizer._learning_rate = optimizer._learning_rate, rate
    try:
        with keras.StatelessScope(state_mapping=mapping) as scope:
            optimizer.apply(grads)
    finally:
        optimizer._learning_rate = installed
    return ([scope.get_current_value(v) for v in optimizer._trainable_variables],
            [scope.get_current_value(v) for v in optimizer.variables])


class JaxSteps(GradientSteps):
    """``jax.value_and_grad`` of the share-scaled loss; the sum applied with ``optimizer.stateless_apply``."""

    def __init__(self, model: Any, collective: Any, sync_batch_norm: bool) -> None:
        jitted = _JittedSteps.of(model, sync_batch_norm)
        jitted.collective = collective
        super().__init__(model, collective, jitted.global_sum)
        self._state: list[Any] | None = None
        self._rate_settings: list[np.ndarray] | None = None
        self._gradients, self._empty_pass, self._apply = jitted.gradients, jitted.empty_pass, jitted.apply

    def _owners(self) -> list[list[Any]]:
        """The variables behind the state, in its order: trainable, non-trainable, metrics, optimizer."""
        model = self.model
        return [model.trainable_variables, model.non_trainable_variables, model.metrics_variables,
                model.optimizer.variables]

    def _load(self) -> list[Any]:
        """The model's state as arrays."""
        if self._state is None:
            self._state = committed([[v.value for v in variables] for variables in self._owners()])
        return self._state

    def local_gradients(self, x: Any, y: Any, share: float, sample_weight: Any = None) -> None:
        if self._state is None:  # the compiled metrics' variables exist before the state is taken, or the
            self.model._symbolic_build(data_batch=(x, y, sample_weight))  # second step's state grows: a compile
        state = self._load()
        buffer, state[1], state[2] = self._gradients(*state, x, y, sample_weight, np.float32(share))
        self.buffer[:] = np.asarray(buffer)

    def empty_pass(self, x: Any) -> None:
        state = self._load()
        buffer, state[1] = self._empty_pass(state[0], state[1], x)
        self.buffer[:] = np.asarray(buffer)

    def apply_sum(self) -> None:
        state = self._load()
        if self._rate_settings is None:  # installed by the fit once its steps exist, constant while it runs
            self._rate_settings = _JittedSteps.rate_settings(self.model.optimizer)
        state[0], state[3] = self._apply(state[0], state[3], self.buffer, self._rate_settings)

    def sync(self) -> None:
        if self._state is None:
            return
        for variables, values in zip(self._owners(), self._state):
            for variable, value in zip(variables, values):
                variable.assign(value)
        self._state = None


def compile_gradients(model: Any, columns: Any, weighted: bool, sync_batch_norm: bool, batch_size: int) -> None:
    """Compile ``model``'s gradient step and update for batches of ``batch_size`` rows, ahead of its fit.

    Called by the training workers' warm-up while the driver packs the
    data (:func:`sparkeras.worker.runtime.warm_up`). The jitted functions
    are kept on the model (:class:`_JittedSteps`), and JAX keys their
    compilations on the arguments' shapes, dtypes and placement, so the
    calls here take what a fit's steps take: the committed state, numpy
    batches of the packed columns' dtypes, a float32 share. Each
    compilation cost a cold fit's first step 0.9-1.25 s in a Spark worker
    (784-128-10 MLP). JAX is functional: the results are dropped, and the
    model's variables are never written.
    """
    arrays = [np.zeros((batch_size, *[1 if d is None else d for d in b.shape]), b.dtype) for b in columns.bindings]
    if weighted and columns.labels and not columns.weights:
        arrays.append(np.ones((batch_size,), np.float32))  # the rows' weights (class_weight)
    x, y, *weights = columns.data(arrays)
    steps = JaxSteps(model, Alone(), sync_batch_norm)
    try:
        steps.local_gradients(x, y, 0.0, weights[0] if weights else None)
        state = steps._load()
        steps._apply(state[0], state[3], steps.buffer, _JittedSteps.rate_settings(model.optimizer))
    finally:
        steps._state = None  # nothing to write back
        steps.close()


def global_sum(collective: Any) -> Any:
    """A sum over the tasks inside a jitted function (a host callback), whose gradient is a sum too."""
    import jax

    def reduce(x: Any) -> np.ndarray:
        x = np.asarray(x)
        return collective.allreduce(x, "sum").astype(x.dtype)

    def call(x: Any) -> Any:
        return jax.pure_callback(reduce, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    @jax.custom_vjp
    def total(x: Any) -> Any:
        return call(x)

    total.defvjp(lambda x: (call(x), None), lambda _, dy: (call(dy),))
    return total
