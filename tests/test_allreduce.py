"""strategy="allreduce": per-step gradient all-reduce in a Spark barrier stage, on real Spark and Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import blobs, clone, mlp, plain_fit_accuracy
from sparkeras import AllReduce, InputError, SparkModel


def _global_batches(x, y, batch, workers=2):
    """The rows one process sees, batch by batch, when each of ``workers`` contiguous slices gives ``batch``."""
    n = len(x) // workers
    order = [w * n + r for s in range(n // batch) for w in range(workers) for r in range(s * batch, (s + 1) * batch)]
    return x[order], y[order]


def _bn_model(seed: int = 3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "tcp"])
@pytest.mark.parametrize("make_model", [lambda: mlp(seed=4, optimizer="sgd"), _bn_model], ids=["mlp", "batchnorm"])
def test_two_workers_equal_one_process_with_the_global_batch(spark, make_model, shared_memory):
    b = 16
    x, y = blobs(2 * 20 * b, seed=21)  # 20 steps of 16 rows per worker
    model = make_model()
    plain = clone(model)
    gx, gy = _global_batches(x, y, b)
    plain.fit(gx, gy, batch_size=2 * b, epochs=1, shuffle=False, verbose=0)

    sm = SparkModel(model, strategy=AllReduce(shared_memory=shared_memory, learning_rate_scaling=None),
                    num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=1, batch_size=b, shuffle=False, verbose=0)

    assert int(sm.model.optimizer.iterations) == int(plain.optimizer.iterations) == 20
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):  # includes BatchNorm moving statistics
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert history.history["loss"][0] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)


def test_allreduce_reaches_plain_fit_accuracy_with_the_same_global_batch(spark):
    x, y = blobs(12_000, dim=16, noise=2.2, seed=11)
    xt, yt = blobs(3000, dim=16, noise=2.2, seed=11, sample_seed=99)
    model = mlp(seed=6)
    _, want = plain_fit_accuracy(model, (x, y), (xt, yt), batch_size=64, epochs=3)

    sm = SparkModel(model, strategy="allreduce", num_workers=2, seed=0, learning_rate_scaling=None)
    sm.fit(x, y, epochs=3, batch_size=32, verbose=0)  # 2 workers x 32 = the same global batch of 64
    got = sm.model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]
    assert abs(got - want) <= 0.005, (got, want)


def test_history_validation_and_keras_callbacks(spark, tmp_path):
    x, y = blobs(2000, seed=2)
    xv, yv = blobs(500, seed=2, sample_seed=5)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, dict(logs)))

    path = str(tmp_path / "best.keras")
    sm = SparkModel(mlp(seed=1), strategy="allreduce", num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=3, batch_size=32, validation_data=(xv, yv), verbose=0,
                     callbacks=[Record(), keras.callbacks.ModelCheckpoint(path, monitor="val_loss")])
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert [e for e, _ in seen] == [0, 1, 2]
    # the logged val_ metrics are Keras' own evaluate of the epoch's weights on the validation rows
    want = sm.model.evaluate(xv, yv, batch_size=32, verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(want["loss"], abs=1e-5)
    assert history.history["val_accuracy"][-1] == pytest.approx(want["accuracy"], abs=1e-6)
    saved = keras.saving.load_model(path)
    for a, b in zip(saved.get_weights(), sm.model.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert history.restarts == []
    # Every rank's own figures reach the driver: its rows, steps, time in all-reduces and bytes reduced.
    assert [f["epoch"] for f in history.epoch_figures] == [0, 1, 2]
    for figures in history.epoch_figures:
        workers = figures["workers"]
        assert sorted(workers) == [0, 1] and sum(w["samples"] for w in workers.values()) == 2000
        steps = -(-max(w["samples"] for w in workers.values()) // 32)
        for w in workers.values():
            assert w["steps"] == steps and 0 < w["wait_seconds"] < w["seconds"]
            assert w["bytes"] >= steps * sum(np.asarray(v).nbytes for v in sm.model.trainable_weights)


def test_early_stopping_stops_every_worker(spark):
    x, y = blobs(1000, seed=4)
    stopper = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    sm = SparkModel(mlp(seed=2), strategy="allreduce", num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=10, batch_size=32, verbose=0, callbacks=[stopper])
    assert len(history.history["loss"]) == 2  # epoch 2 did not improve by 10


def test_very_unequal_partitions_do_not_hang(spark):
    rows = [(v.tolist(), int(c)) for v, c in zip(*blobs(2010, seed=7))]
    sc = spark.sparkContext
    parts = sc.parallelize(rows[:10], 1).union(sc.parallelize(rows[10:], 1))
    df = spark.createDataFrame(parts, "features ARRAY<DOUBLE>, label INT")
    sm = SparkModel(mlp(seed=3), strategy="allreduce", num_workers=2, seed=0, balance_partitions=False,
                    timeout=60)
    history = sm.fit(df, epochs=2, batch_size=50, verbose=0)
    # 2000 rows / 50 = 40 steps per epoch on both workers; the 10-row worker adds one row to 10 of them
    assert int(sm.model.optimizer.iterations) == 2 * 40
    assert history.history["accuracy"][-1] > 0.5


def test_the_barrier_stage_reads_the_packed_blocks_in_place_when_spark_allows_it(spark):
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.packing import prepare
    from sparkeras.data.sources import Dataset
    from sparkeras.strategies.allreduce import _barrier_input, _one_barrier_stage

    sc = spark.sparkContext
    same = sc.parallelize(range(8), 2).map(lambda v: v + 1)
    union = sc.parallelize(range(4), 1).union(sc.parallelize(range(4, 8), 1))
    assert _one_barrier_stage(same, 2) and not _one_barrier_stage(same, 3)
    assert not _one_barrier_stage(union, 2)
    assert _one_barrier_stage(union.repartition(2), 2)  # the walk stops at the shuffle, as the stage does
    # the rule is Spark's: the stage it accepts runs, the one it refuses fails before any task
    assert sorted(same.barrier().mapPartitions(lambda it: [sum(it)]).collect()) == [10, 26]
    with pytest.raises(Exception, match="Barrier execution mode does not allow"):
        union.barrier().mapPartitions(lambda it: [sum(it)]).collect()

    x, y = blobs(200, seed=2)
    frame = spark.createDataFrame([(v.tolist(), int(c)) for v, c in zip(x, y)], "features ARRAY<FLOAT>, label INT")
    frame = frame.repartition(2).cache()
    dataset = Dataset(frame=frame, features_col="features", label_col="label")
    columns = resolve_columns(mlp(seed=1), frame.schema, "features", "label")
    train = prepare(dataset, columns, 2)
    try:
        direct = _barrier_input(train, None, 2)
        assert "ShuffledRDD" not in direct.toDebugString().decode()  # no shuffle of the packed data
        keys = direct.keys().collect()
        assert {k[0] for k in keys} == {0, 1} and {k[1] for k in keys} == {0}
        shuffled = _barrier_input(train, train, 2)  # validation data: both partitions i meet in task i
        lineage = shuffled.toDebugString().decode()
        assert "ShuffledRDD" in lineage
        assert sorted(shuffled.keys().collect()) == sorted(keys + [(i, 1, k) for i, _, k in keys])
        # One Python function keys both sides in the shuffle's map tasks: below the union of the sides lie
        # only the packed blocks. A side keyed in Python of its own ran a second Python worker inside each
        # map task, and an executor of 2 cores kept 4 workers, half of them without the model.
        below = lineage.split("UnionRDD", 1)[1].splitlines()[1:3]
        assert "PythonRDD[" in below[0] and "CachedPartitions" in below[1], lineage
    finally:
        train.release()


def test_a_killed_worker_resumes_from_the_last_completed_epoch(spark, tmp_path):
    x, y = blobs(2000, seed=8)
    strategy = AllReduce(timeout=60, max_restarts=2, checkpoint_dir=str(tmp_path / "ckpt"))
    marker = tmp_path / "killed"
    strategy.fail_once = (1, 1, str(marker))  # rank 1's Python worker dies in the middle of epoch 2
    sm = SparkModel(mlp(seed=5), strategy=strategy, num_workers=2, seed=0)
    events = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: events.append(("begin", e)),
                                            on_epoch_end=lambda e, logs: events.append(("end", e)))
    history = sm.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[record])

    assert marker.exists()
    assert events == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1), ("begin", 2), ("end", 2)]
    assert len(history.history["loss"]) == 3
    assert [(r["attempt"], r["resumed_at_epoch"]) for r in history.restarts] == [(2, 2)]
    # Spark reports whichever task failed first: the killed worker, or its peer's broken connection.
    reason = history.restarts[0]["reason"]
    assert reason.startswith("Python worker exited unexpectedly (crashed)") or "its task probably failed" in reason \
        or "did not reach shared-memory barrier" in reason, reason
    assert int(sm.model.optimizer.iterations) == 3 * 32  # epoch 2's partial steps were discarded
    assert (tmp_path / "ckpt" / "sparkeras-checkpoint.skr").exists()


def test_a_crashed_worker_without_restarts_is_a_worker_error_with_its_reason(spark, tmp_path):
    from sparkeras.errors import WorkerError

    x, y = blobs(400, seed=8)
    strategy = AllReduce(timeout=60, max_restarts=0)
    strategy.fail_once = (1, 1, str(tmp_path / "killed"))  # in the middle of epoch 2
    with pytest.raises(WorkerError, match=r"^A Spark task failed while training epoch 2: "
                                          r"(Python worker exited unexpectedly \(crashed\)|.*its task probably failed|"
                                          r".*did not reach shared-memory barrier)") as info:
        SparkModel(mlp(seed=5), strategy=strategy, num_workers=2, seed=0).fit(x, y, epochs=2, verbose=0)
    assert "at org.apache" not in str(info.value) and len(str(info.value)) < 1000


@pytest.mark.parametrize("master, settings, slots", [
    ("local-cluster[2,2,1024]", {}, 4),
    ("local-cluster[2,2,1024]", {"spark.task.cpus": "2"}, 2),
    ("spark://host:7077", {"spark.cores.max": "6"}, 6),
    ("spark://host:7077", {"spark.executor.instances": "3"}, None),  # a standalone master decides the cores
    ("yarn", {"spark.executor.instances": "3", "spark.executor.cores": "2"}, 6),
    ("k8s://https://api:6443", {"spark.executor.instances": "4"}, 4),
    ("yarn", {"spark.executor.instances": "3", "spark.dynamicAllocation.enabled": "true"}, None),
    ("yarn", {}, None),
    ("yarn", {"spark.cores.max": "many"}, None),
])
def test_the_slots_a_sessions_settings_promise_before_its_executors_register(spark, master, settings, slots):
    """What a session just started waits for before it counts its workers (``registered_slots``): on
    ``local-cluster[2,2,1024]`` the default worker count was 2 for 4 s, then 4."""
    from pyspark import SparkConf

    from sparkeras.barrier import expected_slots

    conf = SparkConf(loadDefaults=False)
    for key, value in settings.items():
        conf.set(key, value)
    assert expected_slots(master, conf) == slots
    assert expected_slots(spark.sparkContext.master, spark.sparkContext.getConf()) is None  # local[2]


def test_bad_allreduce_settings_are_refused_before_training(spark):
    x, y = blobs(100, seed=1)
    with pytest.raises(InputError, match=r"num_workers=3 barrier tasks must run at the same time.*2 task slots"):
        SparkModel(mlp(), strategy="allreduce", num_workers=3).fit(x, y, verbose=0)
    # Checked before the data is read: these rows would fail in the packing job.
    from pyspark.sql import functions as F

    unreadable = spark.range(100).select(F.udf(lambda v: [1.0 / 0] * 16, "array<double>")("id").alias("features"),
                                         (F.col("id") % 10).alias("label"))
    with pytest.raises(InputError, match="num_workers=3 barrier tasks must run at the same time"):
        SparkModel(mlp(), strategy="allreduce", num_workers=3).fit(unreadable, verbose=0)
    with pytest.raises(InputError, match="timeout must be a positive number"):
        SparkModel(mlp(), strategy="allreduce", timeout=0)
    for bad in (0, 1.5, True):
        with pytest.raises(InputError, match=r"min_workers must be a positive number of workers or None \(stop "
                                             rf"when slots are lost\), got {bad!r}"):
            AllReduce(min_workers=bad)
    conf = spark.sparkContext._conf  # the running context's own SparkConf, which the check reads
    conf.set("spark.dynamicAllocation.enabled", "true")
    try:
        with pytest.raises(InputError, match="dynamic allocation; set spark.dynamicAllocation.enabled=false"):
            SparkModel(mlp(), strategy="allreduce", num_workers=2).fit(x, y, verbose=0)
    finally:
        conf.set("spark.dynamicAllocation.enabled", "false")


class _OneRank:
    """The collective of a one-task stage: every sum is the task's own value."""

    def allreduce_(self, buffer, op="sum"):
        return buffer

    def allreduce(self, array, op="sum"):
        return np.array(array, copy=True)


@pytest.mark.parametrize("make_model", [lambda: mlp(seed=4), _bn_model], ids=["mlp", "batchnorm"])
def test_the_warm_up_traces_the_gradient_step_once_for_every_fit_of_the_model(spark, make_model):
    """The warm-up's trace serves every batch size, later fits reuse it, and it runs no step."""
    import tensorflow as tf

    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.sources import as_dataset
    from sparkeras.worker.backends import trace_gradients
    from sparkeras.worker.backends.tensorflow_steps import TensorFlowSteps

    x, y = blobs(200, seed=6)
    y = y.astype(np.int32)
    model = make_model()
    plain = clone(model)
    plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)  # 7 batches per epoch, the last of 8

    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(model, dataset.schema, dataset.features_col, dataset.label_col)
    trace_gradients(model, columns, "tensorflow", weighted=False, sync_batch_norm=True, batch_size=32)
    assert int(model.optimizer.iterations) == 0  # rehearsed once on zeros, and put back
    fits = []
    tensors = [tf.constant(x), tf.constant(y)]
    for _ in range(2):  # two fits of one epoch each, as two all-reduce fits of the cached model would run
        steps = TensorFlowSteps(model, _OneRank(), sync_batch_norm=True)
        # As an epoch runs them: whole batches in traced runs of a few steps, then the last, shorter batch.
        steps.run_steps(columns, tensors, np.arange(96, dtype=np.int32).reshape(3, 32), np.ones(3, np.float32))
        steps.run_steps(columns, tensors, np.arange(96, 192, dtype=np.int32).reshape(3, 32), np.ones(3, np.float32))
        steps.run_steps(columns, tensors, np.arange(192, 200, dtype=np.int32).reshape(1, 8), np.ones(1, np.float32))
        steps.close()
        fits.append(steps)
    assert fits[1]._traced is fits[0]._traced
    loops = fits[0]._traced._loops
    assert len(loops) == 1  # the warm-up's trace serves the fit's arrays
    assert next(iter(loops.values())).experimental_get_tracing_count() == 1  # runs of 3 steps and 1 step alike
    assert not any("_moments" in layer.__dict__ for layer in model.layers)  # the layers are given back
    assert int(model.optimizer.iterations) == 14
    for got, want in zip(model.get_weights(), plain.get_weights()):  # BatchNorm moving statistics included
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_warm_up_rehearsal_puts_every_variable_back(spark):
    """The warm-up runs the traced step once on zeros (TensorFlow instantiates it at its first call); weights,
    optimizer slots, metrics and the dropout seed must be as before, and the fit's step not traced again."""
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.sources import as_dataset
    from sparkeras.worker.backends import trace_gradients

    x, y = blobs(64, seed=8)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.5, seed=3),
                              keras.layers.Dense(int(y.max()) + 1, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    model.train_on_batch(x[:8], y[:8])  # non-zero optimizer slots, metrics and seed state
    variables = list(model.variables) + list(model.optimizer.variables) + list(model.metrics_variables)
    before = [np.array(v) for v in variables]
    columns = resolve_columns(model, as_dataset(spark, x, y).schema, "features", "label")
    trace_gradients(model, columns, "tensorflow", weighted=False, sync_batch_norm=True, batch_size=16)
    loops = model._sparkeras_gradient_steps[False]._loops
    assert [loop.experimental_get_tracing_count() for loop in loops.values()] == [1]
    for variable, value in zip(variables, before):
        np.testing.assert_array_equal(np.array(variable), value, err_msg=variable.path)
    assert model.optimizer._learning_rate is not model.optimizer.__dict__["_sparkeras_scaled_rate"]  # given back


def test_an_elastic_fit_gives_each_remaining_worker_the_partitions_of_the_lost_ones():
    """Rank ``r`` of ``M`` takes partitions ``r, r + M, ...``: every row still trained, once."""
    from sparkeras.strategies.allreduce import rows_per_rank

    assert rows_per_rank([10, 11, 12, 13], 4) == (10, 11, 12, 13)
    assert rows_per_rank([10, 11, 12, 13], 3) == (23, 11, 12)
    assert rows_per_rank([10, 11, 12, 13], 2) == (22, 24)
    assert rows_per_rank([10, 11, 12, 13], 1) == (46,)
    assert AllReduce(min_workers=2).get_config()["min_workers"] == 2
