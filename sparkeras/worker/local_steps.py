"""Local training steps on a worker's partition, as fast as the backend allows.

Strategies that train locally between synchronisations (averaging, the
parameter-server family) spend nearly all their time here, so this is the
hot loop of sparkeras. Calling ``model.fit`` once per window costs its
set-up (data adapter, iterator, callbacks) every time, and
``train_on_batch`` pays a Python round trip and a device sync per batch.
Measured on one core for an MLP 784-128-10 at batch 64: ``model.fit``
2.1 ms per step, ``train_on_batch`` 3.6 ms, a traced ``train_step`` called
per batch 1.1-1.4 ms, and a traced loop over a window of batches 0.62 ms.

So on TensorFlow the partition is turned into tensors once, and a window
is one call of a traced ``tf.while`` loop that gathers each batch by row
index and runs the model's own ``train_step`` (its loss, optimizer, metrics
and any custom ``train_step`` override), exactly as ``fit`` would for the
same batches. On JAX a window is one jitted loop over Keras' stateless
``train_step``, on the model's state taken out of its variables and written
back after the window, as Keras' JAX trainer does around ``fit``: per batch,
``train_on_batch`` ran at half of plain ``fit``'s speed there
(``bench/throughput.py`` with ``KERAS_BACKEND=jax``). Other backends run
``train_on_batch`` per batch (adding up the metric states, which it resets
on every call).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from sparkeras.data.columns import ColumnMap
from sparkeras.serialization import ensure_optimizer_built
from sparkeras.worker.backends import traced_per_model


class LocalSteps:
    """Trains ``model`` on batches of this partition, chosen by row index.

    Args:
        model: the compiled model (the worker's cached one).
        arrays: one array per column binding (features, then labels).
        columns: how the arrays map onto the model's inputs and outputs.
        backend: the Keras backend name.
    """

    def __init__(self, model: Any, arrays: Sequence[np.ndarray], columns: ColumnMap, backend: str) -> None:
        self.model, self.columns = model, columns
        self._arrays = list(arrays)
        ensure_optimizer_built(model)
        self._loop = None
        self._totals: list[np.ndarray] | None = None
        if backend == "tensorflow" and len(self._arrays[0]):
            self._data = [shared_tensor(a) for a in self._arrays]
            self._loop = _traced_loop(model, columns, self._data)
        elif backend == "jax" and len(self._arrays[0]):
            self._data = [shared_tensor(a, backend) for a in self._arrays]
            self._loop = _JaxWindows(model, columns, self._arrays)

    def run(self, batches: np.ndarray) -> None:
        """Train one step per row of ``batches`` (``[steps, batch_size]`` row indices)."""
        if batches.size == 0:
            return
        if self._loop is not None:
            self._loop(self._data, batches.astype(np.int32, copy=False))
            return
        for rows in batches:
            self.model.train_on_batch(*_as_tensors(self.columns.data([a[rows] for a in self._arrays])))
            # train_on_batch resets the metrics first, so add its batch's states up here
            values = [np.asarray(v) for v in self.model.metrics_variables]
            self._totals = values if self._totals is None else [t + v for t, v in zip(self._totals, values)]
        for variable, total in zip(self.model.metrics_variables, self._totals):
            variable.assign(total)

    def train(self, order: np.ndarray, batch_size: int, start: int, steps: int) -> int:
        """Train ``steps`` batches of ``order`` starting at batch ``start``; the rows trained.

        Full batches run as one call; a last, shorter batch runs as a second one.
        """
        lo = start * batch_size
        hi = min(len(order), (start + steps) * batch_size)
        if hi <= lo:
            return 0
        full = (hi - lo) // batch_size
        if full:
            self.run(order[lo:lo + full * batch_size].reshape(full, batch_size))
        if lo + full * batch_size < hi:
            self.run(order[lo + full * batch_size:hi].reshape(1, -1))
        return hi - lo

    def running_loss(self) -> float:
        return float(np.asarray(self.model._loss_tracker.result()))


def _as_tensors(data: tuple) -> tuple:
    """One batch as the backend's tensors, as ``fit``'s data adapter hands them to ``train_step``.

    Keras' PyTorch ``train_on_batch`` passes numpy arrays through as they
    are, so a model's own ``compute_loss`` got ``x`` as numpy where ``fit``
    gives a tensor (``x - y_pred`` failed).
    """
    from keras import ops, tree

    return tuple(tree.map_structure(lambda a: None if a is None else ops.convert_to_tensor(a), part) for part in data)


def shared_tensor(array: np.ndarray, backend: str = "tensorflow") -> Any:
    """The backend's tensor over ``array``'s own memory where the backend can share it, else a copy.

    ``tf.convert_to_tensor`` and ``jnp.asarray`` copy a numpy array; a
    training task holds its whole partition, so that copy doubled the
    memory it needs and cost each task a pass over the data (TensorFlow:
    0.02 s per 94 MB in later epochs, 0.28 s in a worker's first, which
    touches fresh memory; JAX: 0.08-0.17 s; measured on 2 cores). DLPack
    hands the backend the array's memory instead, which it keeps alive.
    TensorFlow aborts the process on data that is not aligned to 64 bytes,
    and DLPack cannot export a read-only array, so those (and types DLPack
    refuses) are copied as before. JAX shares only on its CPU backend: on an
    accelerator the data must be copied to the device anyway.
    """
    from sparkeras.data.packing import ALIGNMENT

    shareable = (array.size and array.flags.c_contiguous and array.flags.writeable
                 and array.ctypes.data % ALIGNMENT == 0)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        if shareable and jax.default_backend() == "cpu":
            try:
                return jax.dlpack.from_dlpack(array)
            except (BufferError, TypeError, ValueError, RuntimeError):
                pass
        return jnp.asarray(np.ascontiguousarray(array))
    import tensorflow as tf

    if shareable:
        try:
            return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
        except (BufferError, TypeError, ValueError, tf.errors.InvalidArgumentError):
            pass
    return tf.convert_to_tensor(np.ascontiguousarray(array))


def trace(model: Any, columns: ColumnMap, backend: str, weighted: bool = False) -> None:
    """Trace ``model``'s window loop ahead of time, from the column shapes, and run it once on no batches.

    Tracing builds the graph, but TensorFlow optimizes and instantiates a
    function only at its first call: measured 0.10 s (MLP 784-128-10) and
    0.13 s (a small CNN) on one core, which the first window would pay. A
    call with zero batches pays it here and runs no step, so the model's
    weights, optimizer and metrics are left as they were.
    """
    if backend != "tensorflow":
        return
    import tensorflow as tf

    ensure_optimizer_built(model)
    data = [tf.zeros((1, *[1 if d is None else d for d in b.shape]), b.dtype) for b in columns.bindings]
    if weighted and columns.labels and not columns.weights:
        data.append(tf.ones((1,), tf.float32))  # the rows' weights (class_weight)
    _traced_loop(model, columns, data)(data, tf.zeros((0, 1), tf.int32))


def trace_evaluation(model: Any, columns: ColumnMap, backend: str) -> None:
    """Trace the evaluation loop of :func:`evaluate_arrays` (a fit with validation data) and call it on no rows."""
    if backend != "tensorflow":
        return
    import tensorflow as tf

    unweighted = columns.without_weights().bindings  # validation is packed unweighted
    data = [tf.zeros((1, *[1 if d is None else d for d in b.shape]), b.dtype) for b in unweighted]
    _test_loop(model, columns, data)([d[:0] for d in data], tf.constant(1, tf.int32))


def _traced_loop(model: Any, columns: ColumnMap, data: list[Any]) -> Any:
    """The model's traced window loop, made once per model and Python worker.

    The partition's tensors are arguments, not captured constants, so the
    next task (the next epoch, another partition) reuses the trace. One
    trace per number of tensors: row weights (a weight column,
    ``class_weight``) add one.

    Why ``autograph=False`` and a written-out ``tf.while_loop``. Autograph
    rewrote this loop and the column mapping it calls (five functions) in
    every Python worker's first trace: 0.15-0.25 s of CPU in a cold worker,
    on the cores packing the data. Keras 3 traces its own step without
    autograph too (``do_not_convert``), so a model's ``train_step`` runs
    here exactly as under ``model.fit``. The evaluation loop and the
    all-reduce step are traced the same way.
    """
    import tensorflow as tf

    loops = model.__dict__.setdefault("_sparkeras_window_loops", {})
    if len(data) in loops:
        return loops[len(data)]
    x, y = columns.data([d[:1] for d in data])[:2]
    model._symbolic_build(data_batch=(x, y, None))  # metric variables: a traced loop cannot create them
    signature = [[tf.TensorSpec([None, *d.shape[1:]], d.dtype) for d in data],
                 tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=signature, autograph=False)
    def loop(tensors: list[Any], batches: Any) -> Any:
        def step(i: Any) -> Any:
            model.train_step(columns.data([tf.gather(t, batches[i]) for t in tensors]))
            return i + 1

        tf.while_loop(lambda i: i < tf.shape(batches)[0], step, [tf.constant(0)])
        return tf.constant(0)

    loops[len(data)] = traced_per_model(loop)
    return loop


SCORING_BATCH_BYTES = 256 * 2**10
"""The input bytes a batch of a scoring pass may grow to (see :func:`scoring_batch_size`)."""

SCORING_MOST_ROWS = 4096
"""The most rows a batch of a scoring pass grows to (see :func:`scoring_batch_size`)."""


def scoring_batch_size(batch_size: int, arrays: Sequence[np.ndarray]) -> int:
    """The batch for a pass the fit makes only to score (validation, a parameter server's center).

    Why not always the training batch. Such a pass computes the loss and
    metric totals over all rows; in inference mode the batch changes only
    their summation order, not what is summed. Where a batch's work is
    small, each batch's fixed cost dominates: on one core, over 15,000 rows
    of the benchmark tasks (``bench/tasks.py``) in the traced loop below,
    the LSTM scored in 0.090 s at batch 1,024 against 0.296 s at 64, and the
    regression MLP (128-byte rows) in 0.006 against 0.012 s. Where a row's
    activations are large, a larger batch leaves the cache: the CNN took
    0.386 s at 1,024 against 0.331 s at 64 (and 0.52 against 0.44 s per
    epoch in a parameter server's workers), and the 784-wide MLP gained
    nothing past 256. So the batch grows from the fit's until its input
    reaches :data:`SCORING_BATCH_BYTES` (a 784-float row stays at 83 rows,
    an image at the fit's batch), at most :data:`SCORING_MOST_ROWS` rows. A
    user's own ``evaluate`` keeps the batch the user gave.
    """
    row = sum(a.itemsize * int(np.prod(a.shape[1:])) for a in arrays) or 1
    return max(batch_size, min(SCORING_MOST_ROWS, SCORING_BATCH_BYTES // row))


def evaluate_arrays(model: Any, columns: ColumnMap, arrays: Sequence[np.ndarray], backend: str,
                    batch_size: int, scoring: bool = False) -> None:
    """Set ``model``'s metric states to its totals over ``arrays`` in order, as ``model.evaluate`` leaves them.

    ``scoring``: a pass the fit makes only to score, whose batch may grow
    (:func:`scoring_batch_size`), on TensorFlow, where the traced loop takes
    the batch as an argument; elsewhere a new batch shape would compile
    again.

    Why not ``model.evaluate``. Its fixed cost (data adapter, ``tf.data``
    pipeline, callbacks) is 55-60 ms per call on one core, whatever the
    rows: the validation of a small fit's epoch cost more than its training
    (the demo's CNN, 180 rows per worker: 60 ms against 3 ms for the batch).
    On TensorFlow the rows are now one call of a traced loop that runs the
    model's own ``test_step`` (its loss, compiled metrics, and any override)
    over consecutive batches of ``batch_size``, as ``evaluate`` would, made
    once per model, Python worker and number of arrays. A weight column, the
    last array, weighs the loss and metrics as ``sample_weight`` does. Other
    backends call ``model.evaluate``.
    """
    if backend != "tensorflow" or not len(arrays[0]):
        x, y, *weights = columns.data(list(arrays))
        model.evaluate(x, y, sample_weight=weights[0] if weights else None, batch_size=batch_size, verbose=0)
        return
    import tensorflow as tf

    if scoring:
        batch_size = scoring_batch_size(batch_size, arrays)
    data = [shared_tensor(a) for a in arrays]
    model.reset_metrics()
    _test_loop(model, columns, data)(data, tf.constant(batch_size, tf.int32))


def _test_loop(model: Any, columns: ColumnMap, data: list[Any]) -> Any:
    """The model's traced evaluation loop over consecutive batches, made once per model, worker and array count."""
    import tensorflow as tf

    loops = model.__dict__.setdefault("_sparkeras_test_loops", {})
    if len(data) in loops:
        return loops[len(data)]
    model._symbolic_build(data_batch=tuple(columns.data([d[:1] for d in data]))[:2] + (None,))
    signature = [[tf.TensorSpec([None, *d.shape[1:]], d.dtype) for d in data], tf.TensorSpec([], tf.int32)]

    @tf.function(input_signature=signature, autograph=False)
    def loop(tensors: list[Any], batch_size: Any) -> Any:
        def step(start: Any) -> Any:
            model.test_step(columns.data([t[start:start + batch_size] for t in tensors]))
            return start + batch_size

        tf.while_loop(lambda start: start < tf.shape(tensors[0])[0], step, [tf.constant(0)])
        return tf.constant(0)

    loops[len(data)] = traced_per_model(loop)
    return loop


class _JaxWindows:
    """JAX: a window is one jitted ``fori_loop`` over Keras' stateless ``train_step``.

    The loop runs a number of steps given at run time over a ``[capacity,
    batch]`` index array, padded to a power of two, so windows of different
    lengths (the last of an epoch, say) reuse a few compilations instead of
    compiling one each. The jitted function is made once per model, Python
    worker and number of arrays (row weights add one).
    """

    def __init__(self, model: Any, columns: ColumnMap, arrays: Sequence[np.ndarray]) -> None:
        self.model = model
        x, y = columns.data([a[:1] for a in arrays])[:2]
        model._symbolic_build(data_batch=(x, y, None))  # metric variables exist before the state is taken
        windows = model.__dict__.setdefault("_sparkeras_jax_windows", {})
        self._window = windows.get(len(arrays)) or self._compile(model, columns)
        windows[len(arrays)] = self._window

    @staticmethod
    def _compile(model: Any, columns: ColumnMap) -> Any:
        import jax
        import jax.numpy as jnp

        def window(state: Any, tensors: list[Any], batches: Any, steps: Any) -> Any:
            def step(i: Any, state: Any) -> Any:
                batch = [jnp.take(t, batches[i], axis=0) for t in tensors]
                _, state = model.train_step(state, columns.data(batch))
                return state

            return jax.lax.fori_loop(0, steps, step, state)

        return jax.jit(window)

    def __call__(self, tensors: list[Any], batches: np.ndarray) -> None:
        from sparkeras.worker.backends.jax_steps import committed

        model = self.model
        steps = len(batches)
        capacity = 1 << (steps - 1).bit_length()
        padded = np.zeros((capacity, batches.shape[1]), dtype=np.int32)
        padded[:steps] = batches
        state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                 [v.value for v in model.optimizer.variables], [v.value for v in model.metrics_variables])
        state = self._window(committed(state), tensors, padded, steps)
        for variables, values in zip((model.trainable_variables, model.non_trainable_variables,
                                      model.optimizer.variables, model.metrics_variables), state):
            for variable, value in zip(variables, values):
                variable.assign(value)
