"""The workers' local training loop equals ``model.fit`` on the same batches, traced or not."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import blobs, clone, mlp
from sparkeras.data.columns import resolve_columns
from sparkeras.data.packing import ALIGNMENT, aligned_empty, read_partition
from sparkeras.data.sources import as_dataset
from sparkeras.worker.local_steps import (SCORING_BATCH_BYTES, SCORING_MOST_ROWS, LocalSteps, evaluate_arrays,
                                         scoring_batch_size, shared_tensor, trace)


@pytest.mark.parametrize("backend,warmed", [("tensorflow", False), ("tensorflow", True), ("other", False)],
                         ids=["traced-loop", "traced-loop-after-warm-up", "train_on_batch"])
def test_local_steps_equal_fit_on_the_same_batches(spark, backend, warmed):
    """The warm-up's trace and empty first call (``trace``) must leave no step behind."""
    x, y = blobs(200, seed=6)
    model = mlp(seed=9)
    plain = clone(model)
    order = np.random.default_rng(0).permutation(len(x))
    plain.fit(x[order], y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)  # 7 batches, the last of 8

    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(model, dataset.schema, dataset.features_col, dataset.label_col)
    if warmed:
        trace(model, columns, backend)
        assert int(model.optimizer.iterations) == 0
    steps = LocalSteps(model, [x, y.astype(np.int32)], columns, backend)
    model.reset_metrics()
    assert steps.train(order, 32, 0, 3) == 96  # three windows, as a worker runs them
    assert steps.train(order, 32, 3, 3) == 96
    assert steps.train(order, 32, 6, 3) == 8
    for got, want in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert int(model.optimizer.iterations) == 7
    if backend == "tensorflow":  # the warm-up's traced loop, not Keras' own train function, traced in the task
        assert model.train_function is None
    got = {k: float(v) for k, v in model.get_metrics_result().items()}
    assert got["accuracy"] == pytest.approx(plain.history.history["accuracy"][0], abs=1e-6)
    assert got["loss"] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)


def _columns(spark, x, y):
    dataset = as_dataset(spark, x, y)
    return resolve_columns(mlp(seed=9), dataset.schema, dataset.features_col, dataset.label_col)


def test_a_partition_of_several_blocks_is_joined_once_and_shared_with_tensorflow(spark):
    x, y = blobs(50, seed=3)
    y = y.astype(np.int32)
    blocks = [(n, (x[lo:lo + n].tobytes(), y[lo:lo + n].tobytes()), {}) for lo, n in ((0, 20), (20, 20), (40, 10))]
    arrays, rows = read_partition(_columns(spark, x, y), iter(blocks))
    assert rows == 50
    np.testing.assert_array_equal(arrays[0], x)
    np.testing.assert_array_equal(arrays[1], y)
    assert all(a.ctypes.data % ALIGNMENT == 0 and a.flags.writeable for a in arrays)

    tensor, jax_array = shared_tensor(arrays[0]), shared_tensor(arrays[0], "jax")
    arrays[0][3, 2] = 123.0  # the tensors are the array's memory, not copies of it
    assert float(tensor[3, 2]) == 123.0
    assert float(jax_array[3, 2]) == 123.0


@pytest.mark.parametrize("counted", [50, 35, 80], ids=["as-packed", "fewer-than-read", "more-than-read"])
def test_counted_blocks_are_copied_in_as_they_arrive_whatever_the_count(spark, counted):
    """Spark's cached blocks, with the packing's row count, land in aligned arrays of exactly the rows read."""
    from sparkeras.data.packing import CountedBlocks

    x, y = blobs(50, seed=5)
    y = y.astype(np.int32)
    blocks = [(n, (x[lo:lo + n].tobytes(), y[lo:lo + n].tobytes()), {}) for lo, n in ((0, 20), (20, 20), (40, 10))]
    arrays, rows = read_partition(_columns(spark, x, y), CountedBlocks(iter(blocks), counted))
    assert rows == 50
    np.testing.assert_array_equal(arrays[0], x)
    np.testing.assert_array_equal(arrays[1], y)
    assert [a.shape for a in arrays] == [(50, x.shape[1]), (50,)]
    assert all(a.ctypes.data % ALIGNMENT == 0 and a.flags.writeable for a in arrays)


def test_a_counted_partition_of_one_block_is_shared_without_a_copy(spark):
    from sparkeras.data.packing import CountedBlocks

    x, y = blobs(20, seed=5)
    y = y.astype(np.int32)
    payload = x.tobytes()
    arrays, rows = read_partition(_columns(spark, x, y), CountedBlocks(iter([(20, (payload, y.tobytes()), {})]), 20))
    assert rows == 20
    np.testing.assert_array_equal(arrays[0], x)
    assert np.shares_memory(arrays[0], np.frombuffer(payload, dtype=np.uint8))


def test_arrays_tensorflow_cannot_share_are_copied(spark):
    x = np.arange(64, dtype=np.float32).reshape(8, 8)
    read_only = np.frombuffer(x.tobytes(), dtype=np.float32).reshape(8, 8)
    raw = aligned_empty((8 * 8 + 1,), np.float32)
    unaligned = raw[1:].reshape(8, 8)  # 4 bytes past a 64-byte boundary: TensorFlow would abort on it
    unaligned[:] = x
    for array in (read_only, unaligned):
        for backend in ("tensorflow", "jax"):
            np.testing.assert_array_equal(np.asarray(shared_tensor(array, backend)), x)
    tensor, jax_array = shared_tensor(unaligned), shared_tensor(unaligned, "jax")
    unaligned[0, 0] = -1.0
    assert float(tensor[0, 0]) == 0.0 and float(jax_array[0, 0]) == 0.0


def test_memory_mapped_blocks_never_write_back_to_their_file(spark, tmp_path):
    x, y = blobs(30, seed=4)
    y = y.astype(np.int32)
    paths = (str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    np.save(paths[0], x)
    np.save(paths[1], y)
    arrays, _ = read_partition(_columns(spark, x, y), iter([(30, paths, {})]))
    assert arrays[0].ctypes.data % ALIGNMENT == 0
    tensor = shared_tensor(arrays[0])
    arrays[0][0, 0] = 99.0
    assert float(tensor[0, 0]) == 99.0
    np.testing.assert_array_equal(np.load(paths[0]), x)  # copy-on-write: the packed file is unchanged


@pytest.mark.parametrize("backend", ["tensorflow", "other"], ids=["traced-loop", "model.evaluate"])
def test_evaluation_loop_equals_keras_evaluate_with_a_short_last_batch_and_row_weights(spark, backend):
    x, y = blobs(203, seed=2)
    weights = np.random.default_rng(1).uniform(0.1, 2.0, len(x)).astype(np.float32)
    model = mlp(seed=4)
    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(model, dataset.schema, dataset.features_col, dataset.label_col)
    for w in (None, weights):
        want = model.evaluate(x, y, sample_weight=w, batch_size=32, verbose=0, return_dict=True)  # 6 batches + 11 rows
        model.reset_metrics()
        arrays = [x, y.astype(np.int32)] + ([] if w is None else [w])
        for _ in range(2):  # the second call reuses the trace and starts from fresh metric states
            evaluate_arrays(model, columns, arrays, backend, 32)
            got = {k: float(v) for k, v in model.get_metrics_result().items()}
            assert got == pytest.approx(want, abs=1e-6), (w is not None, got, want)
    if backend == "tensorflow":
        assert set(model.__dict__["_sparkeras_test_loops"]) == {2, 3}  # one trace per array count


def test_a_scoring_pass_grows_its_batch_and_gives_the_same_figures(spark):
    """The fit's own scoring passes (validation, a center's figures) run larger batches than the fit's: the
    same totals, fewer calls. Large rows (images) keep the fit's batch."""
    assert scoring_batch_size(64, [np.zeros((5, 784), np.float32), np.zeros(5, np.int32)]) == \
        SCORING_BATCH_BYTES // (784 * 4 + 4)
    assert scoring_batch_size(64, [np.zeros((5, 8), np.float32)]) == SCORING_MOST_ROWS
    assert scoring_batch_size(64, [np.zeros((5, 224, 224, 3), np.float32)]) == 64
    assert scoring_batch_size(8192, [np.zeros((5, 8), np.float32)]) == 8192

    import keras

    class Batches(keras.Model):
        """Counts the batches its test_step sees, and keeps the largest."""

        def build_counters(self):
            self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")
            self.largest = self.add_weight(shape=(), initializer="zeros", trainable=False, name="largest")

        def test_step(self, data):
            import tensorflow as tf

            self.calls.assign_add(1.0)
            self.largest.assign(tf.maximum(self.largest, tf.cast(tf.shape(data[0])[0], "float32")))
            return super().test_step(data)

    x, y = blobs(2_003, seed=2)
    inputs = keras.Input((x.shape[1],))
    base = mlp(seed=4)
    model = Batches(inputs, base(inputs))
    model.build_counters()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    want = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(model, dataset.schema, dataset.features_col, dataset.label_col)
    arrays = [x, y.astype(np.int32)]
    for scoring, batches, largest in ((False, 63, 32), (True, 1, 2_003)):
        model.calls.assign(0.0)
        model.largest.assign(0.0)
        evaluate_arrays(model, columns, arrays, "tensorflow", 32, scoring=scoring)
        got = {k: float(v) for k, v in model.get_metrics_result().items()}
        assert got == pytest.approx(want, abs=1e-6), (scoring, got, want)
        assert (float(model.calls.numpy()), float(model.largest.numpy())) == (batches, largest), scoring


def test_the_traced_loops_convert_no_python_code(spark, monkeypatch):
    """Keras 3 traces its own steps without autograph (``do_not_convert``), and so do the workers' loops.

    Autograph rewrote the window loop and the column mapping it calls: 0.15-0.25 s of CPU in every cold
    worker's first trace, on the cores that pack the data at the same time.
    """
    from tensorflow.python.autograph.impl import api as autograph

    from sparkeras.worker.backends import trace_gradients
    from sparkeras.worker.local_steps import trace_evaluation

    converted = []
    real = autograph._convert_actual
    monkeypatch.setattr(autograph, "_convert_actual", lambda entity, ctx: converted.append(entity) or real(entity, ctx))
    x, y = blobs(64, seed=5)
    model = mlp(seed=2)
    columns = _columns(spark, x, y)
    trace(model, columns, "tensorflow")
    trace_evaluation(model, columns, "tensorflow")
    trace_gradients(model, columns, "tensorflow", weighted=False, sync_batch_norm=False, batch_size=16)
    assert converted == []
    steps = LocalSteps(model, [x, y.astype(np.int32)], columns, "tensorflow")
    assert steps.train(np.arange(len(x)), 16, 0, 4) == 64  # the loop trains as before
    assert int(model.optimizer.iterations) == 4


def test_many_models_trained_in_one_process_print_no_retracing_warning(spark):
    """Each model's loops are traced once; TensorFlow counts traces by code object, so its "excessive
    retracing" warning reached the terminal from a worker's sixth model (tuning trials, notebook fits)."""
    import logging

    x, y = blobs(64, seed=2)
    columns = _columns(spark, x, y)
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep(level=logging.WARNING)
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        for seed in range(8):
            model = mlp(seed=seed)
            LocalSteps(model, [x, y.astype(np.int32)], columns, "tensorflow").train(np.arange(64), 16, 0, 4)
            evaluate_arrays(model, columns, [x, y.astype(np.int32)], "tensorflow", 16)
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [m for m in seen if "retracing" in m], seen
