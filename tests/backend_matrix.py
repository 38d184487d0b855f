"""The backend matrix: the parts of the suite that touch the Keras backend, run on JAX or PyTorch.

``tests/test_backends.py`` runs this module in a child process with
``KERAS_BACKEND`` set (a process has one Keras backend, and Spark's Python
workers keep the backend they started with), so the suite covers TensorFlow,
JAX and PyTorch in one ``pytest`` command. The tests are the suite's own,
imported here: exact equivalence (one-worker ``averaging`` with ``model.fit``;
``allreduce`` with one process on the global batch, BatchNormalization
included; both with ``class_weight``, and ``allreduce`` with row weights; learning-rate scaling), a parameter-server rule, evaluate, predict,
save/load, small validation data scored on the driver, the SQL UDF, Spark ML stages and streaming, both
facades, and (on JAX) one compilation
of the workers' steps per batch shape.

With ``SPARKERAS_MATRIX_GPUS=1`` the session is ``local-cluster[1,2,1024]``
with two fake GPUs found by a discovery script and one GPU per task, so
every one of those tests also runs with Spark assigning GPUs, and
:func:`test_workers_use_their_cores_and_only_their_gpus` checks what each
worker was given.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tempfile

import numpy as np
import pytest

from test_allreduce import test_two_workers_equal_one_process_with_the_global_batch
from test_class_weight import (test_one_worker_with_class_weight_equals_plain_fit,
                               test_two_workers_with_class_weight_equal_one_process_with_the_global_batch)
from test_convergence_rules import test_allreduce_scales_the_rate_with_warmup_exactly
from test_inference import test_sql_udf_gives_the_models_predictions, trained
from test_ml import test_the_same_transform_runs_on_a_streaming_dataframe
from test_parameter_server import problem, test_every_distributed_optimizer_learns_the_ten_class_problem
from test_sample_weight import test_two_workers_with_row_weights_equal_one_process_with_the_global_batch
from test_sklearn import test_classifier_keeps_label_values_and_binary_models
from test_training import (test_evaluate_matches_keras_evaluate,
                           test_one_worker_averaging_equals_plain_fit_with_adam, test_predict_numpy_keeps_input_order,
                           test_save_and_load_round_trip,
                           test_small_validation_data_is_scored_on_the_driver_as_the_workers_would)

__all__ = ["problem", "trained", "test_allreduce_scales_the_rate_with_warmup_exactly",
           "test_classifier_keeps_label_values_and_binary_models", "test_evaluate_matches_keras_evaluate",
           "test_every_distributed_optimizer_learns_the_ten_class_problem",
           "test_one_worker_averaging_equals_plain_fit_with_adam", "test_predict_numpy_keeps_input_order",
           "test_save_and_load_round_trip", "test_sql_udf_gives_the_models_predictions",
           "test_small_validation_data_is_scored_on_the_driver_as_the_workers_would",
           "test_the_same_transform_runs_on_a_streaming_dataframe",
           "test_two_workers_equal_one_process_with_the_global_batch",
           "test_one_worker_with_class_weight_equals_plain_fit",
           "test_two_workers_with_class_weight_equal_one_process_with_the_global_batch",
           "test_two_workers_with_row_weights_equal_one_process_with_the_global_batch"]

GPUS = os.environ.get("SPARKERAS_MATRIX_GPUS") == "1"
FAKE_GPUS = '#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n'


def gpu_probe(backend: str):
    """A task body that configures the worker and yields what it was given and what it sees."""
    def probe(_):
        from pyspark import TaskContext

        from sparkeras.worker import runtime

        runtime.configure(backend)
        if backend == "torch":
            import torch

            threads = torch.get_num_threads()
        else:
            flags = os.environ.get("XLA_FLAGS", "")
            threads = int(flags.rsplit("intra_op_parallelism_threads=", 1)[1].split()[0])
        resources = TaskContext.get().resources()
        given = tuple(resources["gpu"].addresses) if "gpu" in resources else None
        yield (runtime.task_cpus(), threads, given, runtime.visible_gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"),
               os.getpid(), runtime.imported_early())

    return probe


FIRST_TASKS: list[tuple] = []  # what the session's first tasks, each on a fresh Python worker, saw


@pytest.fixture(scope="session")
def spark():
    """This backend's session: ``local[2]``, or a local cluster whose tasks each get one fake GPU."""
    import keras
    from pyspark.sql import SparkSession

    import sparkeras

    if not GPUS:
        session = sparkeras.get_spark("local[2]", app_name="sparkeras-backend-matrix")
        session.sparkContext._sparkeras_start_workers.join(120)  # the workers it starts import the backend
    else:
        script = os.path.join(tempfile.mkdtemp(prefix="sparkeras-gpus-"), "gpus.sh")
        with open(script, "w") as f:
            f.write(FAKE_GPUS)
        os.chmod(script, os.stat(script).st_mode | stat.S_IEXEC)
        os.environ["PYSPARK_PYTHON"] = sys.executable
        session = (SparkSession.builder.master("local-cluster[1,2,1024]").appName("sparkeras-backend-matrix")
                   .config("spark.worker.resource.gpu.amount", "2")
                   .config("spark.worker.resource.gpu.discoveryScript", script)
                   .config("spark.executor.resource.gpu.amount", "2")
                   .config("spark.task.resource.gpu.amount", "1")
                   .config("spark.executorEnv.KERAS_BACKEND", os.environ["KERAS_BACKEND"])
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                   .config("spark.ui.enabled", "false").getOrCreate())
    session.sparkContext.setLogLevel("OFF")
    FIRST_TASKS.extend(session.sparkContext.parallelize(range(2), 2)
                       .mapPartitions(gpu_probe(keras.backend.backend())).collect())
    yield session
    session.stop()


def test_workers_use_their_cores_and_only_their_gpus(spark):
    """Every worker sized its backend's threads from ``spark.task.cpus``. With GPUs assigned, each
    worker's first task made exactly its own addresses visible before the backend started, and every
    worker kept them through every later test. Which worker runs a later task is Spark's choice: when a
    task starts before an earlier one's worker is handed back, Spark starts one more, pinned to that
    task's GPU, so two workers may then share a GPU (the README says so): twice in thirteen suite runs."""
    import keras

    from conftest import blobs, mlp
    from sparkeras import SparkModel

    backend = keras.backend.backend()
    x, y = blobs(400, seed=2)
    SparkModel(mlp(seed=1), strategy="allreduce", num_workers=2, seed=0).fit(x, y, epochs=1, verbose=0)
    later = spark.sparkContext.parallelize(range(2), 2).mapPartitions(gpu_probe(backend)).collect()
    for rows in (FIRST_TASKS, later):
        assert [r[:2] for r in rows] == [(1, 1)] * 2, rows
        assert len({r[5] for r in rows}) == 2, rows  # two Python workers
    if not GPUS:
        assert [r[2:5] for r in FIRST_TASKS + later] == [(None, None, None)] * 4
        # The daemon preloaded the backend, so the session's start had nothing to import in the workers.
        assert [r[6] for r in FIRST_TASKS] == [False, False], FIRST_TASKS
        return
    assert sorted(r[2] for r in FIRST_TASKS) == [("0",), ("1",)], FIRST_TASKS
    for _, _, given, visible, env, _, _ in FIRST_TASKS:
        assert visible == given and env == ",".join(given), FIRST_TASKS
    for _, _, given, visible, env, _, _ in later:  # each worker still on the GPU it was pinned to, and only that
        assert env == ",".join(visible) and visible in {("0",), ("1",)}, later
    assert sorted(r[2] for r in later) == [("0",), ("1",)], later  # Spark gave the tasks running together both
    pinned = {pid: visible for _, _, _, visible, _, pid, _ in FIRST_TASKS}
    for _, _, _, visible, _, pid, _ in later:  # a worker of the first tasks keeps its GPU (Spark may start more)
        assert pinned.get(pid, visible) == visible, (FIRST_TASKS, later)


def _jax_mlp_problem(spark, seed: int):
    """Rows, a compiled MLP and its column bindings, for the tests that count JAX's compilations."""
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the compilations counted are JAX's")
    from conftest import blobs, mlp
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.sources import as_dataset

    x, y = blobs(200, seed=6)
    model = mlp(seed=seed)
    dataset = as_dataset(spark, x, y)
    return x, y, model, resolve_columns(model, dataset.schema, dataset.features_col, dataset.label_col)


def test_workers_use_one_compiled_program_per_batch_shape_on_jax(spark):
    """A worker's jitted window (averaging, the parameter-server rules) and gradient step (all-reduce)
    compile once per batch shape. ``jax.jit`` also keys on whether each array is committed to a device:
    they compiled again once the driver's (numpy) state was set, and the gradient step once more when the
    metrics' variables appeared at its first call, 0.9-1.25 s each in a worker. The next fit's gradient step
    on the same model compiles nothing: its jitted functions are kept on the model."""
    from conftest import mlp
    from sparkeras.serialization import model_state, set_model_state
    from sparkeras.worker.backends.jax_steps import JaxSteps
    from sparkeras.worker.local_steps import LocalSteps

    x, y, model, columns = _jax_mlp_problem(spark, seed=9)
    state, order = model_state(model), np.arange(len(x))
    steps = LocalSteps(model, [x, y.astype(np.int32)], columns, "jax")
    for _ in range(2):  # two rounds, each from the driver's state
        set_model_state(model, state)
        assert steps.train(order, 32, 0, 3) == 96
    window = model._sparkeras_jax_windows[2]
    assert window._cache_size() == 1
    assert steps.train(order, 32, 6, 3) == 8  # the 8 rows left: a second batch shape
    assert window._cache_size() == 2

    model = mlp(seed=9)
    gradients = JaxSteps(model, None, sync_batch_norm=False)
    for _ in range(2):
        set_model_state(model, state)
        gradients.local_gradients(x[:32], y[:32].astype(np.int32), 0.5)
        gradients.apply_sum()
        gradients.sync()
    assert gradients._gradients._cache_size() == 1
    assert int(model.optimizer.iterations) == 1  # the second step started again from the state

    again = JaxSteps(model, None, sync_batch_norm=False)  # the next fit's, on the worker's same model
    set_model_state(model, state)
    again.local_gradients(x[:32], y[:32].astype(np.int32), 0.5)
    again.apply_sum()
    again.sync()
    assert again._gradients is gradients._gradients and again._apply is gradients._apply
    assert again._gradients._cache_size() == 1 and again._apply._cache_size() == 1


def test_the_warm_up_compiles_the_all_reduce_step_a_fit_then_runs_on_jax(spark):
    """The training workers' warm-up compiles the all-reduce's gradient step and update for the fit's batch
    size, with the arguments a fit's step passes (so its first step compiles nothing), and leaves the
    model's state as it was."""
    from sparkeras.serialization import model_state, set_model_state
    from sparkeras.worker.backends import Alone, trace_gradients
    from sparkeras.worker.backends.jax_steps import JaxSteps

    x, y, model, columns = _jax_mlp_problem(spark, seed=10)
    state = model_state(model)
    trace_gradients(model, columns, "jax", weighted=False, sync_batch_norm=False, batch_size=32)
    for got, want in zip(model_state(model), state):
        np.testing.assert_array_equal(got, want)
    steps = JaxSteps(model, Alone(), sync_batch_norm=False)
    assert steps._gradients._cache_size() == 1 and steps._apply._cache_size() == 1
    set_model_state(model, state)
    steps.step(*columns.data([x[:32], y[:32].astype(np.int32)])[:2], rows=32, share=1.0)
    steps.sync()
    assert steps._gradients._cache_size() == 1 and steps._apply._cache_size() == 1
    assert int(model.optimizer.iterations) == 1


def test_jax_workers_keep_their_compiled_programs_for_the_machines_other_workers(spark):
    """After a fit, every JAX worker's persistent compilation cache is its user's folder, private, and holds
    the programs compiled: a worker that meets a shape another compiled loads it instead of compiling."""
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the cache is JAX's")
    from conftest import blobs, mlp
    from sparkeras import SparkModel

    x, y = blobs(300, seed=3)
    SparkModel(mlp(seed=4), num_workers=2, seed=0).fit(x, y, epochs=2, batch_size=32, verbose=0)

    def cache(_):
        import jax

        folder = jax.config.jax_compilation_cache_dir
        yield folder, oct(os.stat(folder).st_mode & 0o777), sum(n.endswith("-cache") for n in os.listdir(folder))

    seen = spark.sparkContext.parallelize(range(2), 2).mapPartitions(cache).collect()
    expected = os.path.join(os.environ["XDG_CACHE_HOME"], "sparkeras", "jax")
    assert {(folder, mode) for folder, mode, _ in seen} == {(expected, "0o700")}, seen
    assert min(entries for _, _, entries in seen) > 0, seen


def test_a_short_jax_fit_scores_small_validation_data_on_the_driver(spark):
    """On JAX even a 2-epoch fit scores small validation data on the driver (``MIN_EPOCHS_JAX``): one training
    job (the numpy validation rows are the driver's), not a training and a validation job per epoch."""
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the threshold is JAX's")
    from conftest import blobs, mlp
    from sparkeras import SparkModel

    x, y = blobs(600, seed=5)
    sc = spark.sparkContext
    sc.setJobGroup("short-jax-validation", "validation test")
    try:
        sm = SparkModel(mlp(seed=3), num_workers=2, seed=0)
        history = sm.fit(x[:450], y[:450], epochs=2, batch_size=32, verbose=0, validation_data=(x[450:], y[450:]))
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    direct = sm.model.evaluate(x[450:], y[450:], verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(direct["loss"], abs=1e-5)
    assert len(sc.statusTracker().getJobIdsForGroup("short-jax-validation")) == 1


def test_the_jvm_starts_without_jaxs_fork_warning():
    """pyspark starts the JVM with a ``preexec_fn``, which runs JAX's before-fork handler once JAX has a
    backend; its deadlock warning does not apply to a fork that execs, and ``get_spark`` hides it."""
    import subprocess
    import warnings

    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the warning is JAX's")
    import jax.numpy as jnp

    from sparkeras.session import launching_the_jvm

    jnp.ones(1)  # JAX has a backend, and its fork handler is installed

    def fork_warnings(quiet: bool) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with launching_the_jvm() if quiet else contextlib.nullcontext():
                subprocess.run(["true"], preexec_fn=lambda: None, check=True)
        return [str(w.message) for w in caught if "os.fork() was called" in str(w.message)]

    assert fork_warnings(quiet=False), "JAX no longer warns at a fork: this test checks nothing"
    assert fork_warnings(quiet=True) == []


def test_spark_ml_estimator_and_the_elephas_facade(spark, monkeypatch):
    """A ``KerasEstimator`` fit (with a parameter-server rule) and transform, and an Elephas ``SparkModel``
    (averaging) on an RDD, on this backend; its numpy predictions scored on the driver and by the workers."""
    from conftest import score_driver_rows_on_the_workers
    from conftest import blobs, mlp
    from sparkeras.compat import elephas
    from sparkeras.ml import KerasEstimator

    x, y = blobs(400, dim=4, classes=3, noise=0.5, seed=2)
    frame = spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(x, y)], ["features", "label"])
    fitted = KerasEstimator(model=mlp(dim=4, classes=3, seed=2), epochs=2, numWorkers=2, learningRate=0.02,
                            strategy="adag").fit(frame)  # a parameter-server rule
    rows = fitted.transform(frame.limit(40)).select("features", "probability").collect()
    want = fitted.model.predict(np.array([r.features for r in rows], np.float32), verbose=0)
    np.testing.assert_allclose(np.array([r.probability for r in rows]), want, atol=1e-5)
    assert fitted.model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] > 0.85

    model = elephas.SparkModel(mlp(dim=4, classes=3, seed=3), mode="synchronous", num_workers=2)
    model.fit(elephas.to_simple_rdd(spark.sparkContext, x, y), epochs=2, batch_size=16)
    assert model.evaluate(x, y)[1] > 0.85
    on_the_driver = model.predict(x[:20])
    np.testing.assert_allclose(on_the_driver, model.master_network.predict(x[:20], verbose=0), atol=1e-5)
    score_driver_rows_on_the_workers(monkeypatch)
    np.testing.assert_allclose(model.predict(x[:20]), on_the_driver, atol=1e-5)
