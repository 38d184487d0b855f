"""Quiet output: a ``verbose=0`` fit in a fresh process prints nothing of Spark's or TensorFlow's start-up,
a query cut short (``limit``) prints no worker traceback, and Spark's console stage bars stay off while a
fit, an evaluation or a prediction into arrays runs, with or without sparkeras' own progress bar."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.own_processes

SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
print("PID", os.getpid(), flush=True)
from conftest import blobs, mlp  # the user's own "import keras": its start-up lines are the user's
import numpy as np
import pandas as pd
import json, threading
import sparkeras
from pyspark import SparkContext
seen = []
def alongside():  # what the command line does here: import Keras quietly while the JVM starts
    seen.append([threading.current_thread().name, SparkContext._active_spark_context is None])
spark = sparkeras.get_spark("local[2]", alongside=lambda: (alongside(), seen.append("done")))
print("ALONGSIDE", json.dumps(seen), flush=True)
x, y = blobs(400)
sparkeras.SparkModel(mlp(), num_workers=2).fit(spark.createDataFrame(pd.DataFrame({{"features": list(x), "label": y}})),
                                              epochs=1, verbose=0)
import keras  # a float64 model: TensorFlow warns "Not handling type DT_DOUBLE" at level 1 as it traces
wide = keras.Sequential([keras.Input((16,), dtype="float64"), keras.layers.Dense(10, dtype="float64")])
wide.compile("sgd", "mse")
sparkeras.SparkModel(wide, num_workers=2).fit(x.astype("float64"), np.eye(10)[y], epochs=1, verbose=0)
from pyspark.ml.linalg import Vectors
rows = spark.createDataFrame([(Vectors.dense(r.tolist()), int(c)) for r, c in zip(*blobs(2000))], ["features", "label"])
rows.limit(2).collect()  # the JVM stops reading this query's Python source early
try:
    spark.sparkContext.parallelize([1], 1).map(lambda v: v / 0).collect()
except Exception as exc:
    assert "ZeroDivisionError" in str(exc)  # the failure reaches the driver, once
print("DONE", flush=True)
print("QUIET-END", file=sys.stderr, flush=True)

# A session the user starts, with Spark's console bar on as in a shell.
spark.stop()
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").config("spark.ui.showConsoleProgress", "true").getOrCreate()
x, y = blobs(1200)
print("QUIET-FIT", file=sys.stderr, flush=True)
sparkeras.SparkModel(mlp(), num_workers=2).fit(x, y, epochs=1, verbose=0)
print("FIT", file=sys.stderr, flush=True)
sparkeras.SparkModel(mlp(), num_workers=2).fit(x, y, epochs=2, verbose=1)
print("AFTER", file=sys.stderr, flush=True)
spark.sparkContext.parallelize(range(2), 2).foreach(lambda _: time.sleep(1.5))
print("SCORING", file=sys.stderr, flush=True)
import numpy as np
many = np.tile(x, (5, 1))  # one row per step: the stages outlast the bar's 0.5 s delay
scorer = sparkeras.SparkModel(mlp(), num_workers=2)
scorer.evaluate(many, np.tile(y, 5), batch_size=1)
scorer.predict(many, batch_size=1)
print("ALL-DONE", file=sys.stderr, flush=True)
"""


@pytest.fixture(scope="module")
def fresh():
    # TF_CPP_MIN_LOG_LEVEL=1 is what a driver that imported TensorFlow (and so JAX) hands its workers.
    env = {k: v for k, v in os.environ.items() if k != "SPARKERAS_DEBUG"} | {"TF_CPP_MIN_LOG_LEVEL": "1"}
    env["PYSPARK_PYTHON"] = sys.executable
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "ALL-DONE" in done.stderr, done.stderr[-3000:]
    return done


def test_a_quiet_fit_prints_no_spark_or_worker_start_up_lines(fresh):
    assert "DONE" in fresh.stdout
    driver = fresh.stdout.split()[1]
    err = fresh.stderr[:fresh.stderr.index("QUIET-END")].splitlines()
    for noise in ("log4j", "WARN Utils", "NativeCodeLoader", "Setting default log level", "setLogLevel",
                  "Traceback", "BrokenPipeError", "ERROR Executor", "ERROR TaskSetManager", "incubator modules"):
        assert not [line for line in err if noise in line], (noise, err)
    # TensorFlow's C++ lines ("I0000 <time> <thread id> port.cc...", and its "W0000" warnings) come from the
    # driver's own import and Keras work only.
    native = [m.group(1) for m in (re.match(r"[IW]\d{4} \S+\s+(\d+) ", line) for line in err) if m]
    assert set(native) <= {driver}, err
    assert sum("absl::InitializeLog" in line for line in err) <= len(native), err


def test_work_alongside_a_new_session_runs_in_a_thread_while_the_context_starts(fresh):
    """``get_spark(alongside=...)``: the command line's Keras import runs beside the JVM's start of the
    SparkContext (1 s of a cold ``sparkeras evaluate``'s 12 s on 2 cores), and is over when it returns."""
    line = next(ln for ln in fresh.stdout.splitlines() if ln.startswith("ALONGSIDE "))
    assert json.loads(line[len("ALONGSIDE "):]) == [["sparkeras-alongside", True], "done"], line


def test_work_alongside_runs_in_a_thread_once_the_jvm_runs_and_its_error_reaches_the_caller(spark):
    """With the JVM up no process is forked any more, so the work runs in a thread; its error is raised by
    ``finish`` (``get_spark``'s return), not by ``wait`` (a session that failed to start raises its own). An
    active session runs the work at once."""
    import threading

    from sparkeras.session import _Alongside, get_spark

    ran = []
    _Alongside(lambda: ran.append(threading.current_thread().name)).finish()
    assert ran == ["sparkeras-alongside"]

    def broken():
        raise ImportError("keras is broken")

    failing = _Alongside(broken)
    failing.wait()
    with pytest.raises(ImportError, match="keras is broken"):
        failing.finish()
    assert get_spark(alongside=lambda: ran.append(threading.current_thread().name)) is spark
    assert ran[-1] == threading.current_thread().name


def test_spark_console_progress_is_off_during_a_fit_and_back_after(fresh):
    err = fresh.stderr
    quiet = err[err.index("QUIET-FIT"):err.index("\nFIT")]
    during, after = err[err.index("\nFIT"):err.index("AFTER")], err[err.index("AFTER"):err.index("SCORING")]
    scoring = err[err.index("SCORING"):err.index("ALL-DONE")]
    assert "[Stage" not in quiet, quiet  # a verbose=0 fit: no bar of ours, and none of Spark's
    assert "[Stage" not in during, during
    assert "[Stage" in after, after  # a fresh console bar once the fit is over
    assert "[Stage" not in scoring, scoring  # evaluate, and predict into arrays, run sparkeras' jobs too
    assert fresh.stdout.count("Epoch 2/2") == 1


def test_a_script_ending_while_a_job_runs_prints_no_task_listener_stacks(spark):
    """A script that fails right after ``get_spark`` ends while the workers' start-up job runs. The JVM's
    shutdown frees that job's broadcasts first, and Spark logged "Error in TaskCompletionListener" with a
    Java stack per task (seen in 3 of 5 such runs). That failure fails its task, so the job's caller hears of
    it anyway; sparkeras' sessions keep the log line to fatal errors only."""
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j.LogManager
    assert str(log4j.getLogger("org.apache.spark.TaskContextImpl").getLevel()) == "FATAL"
    # ... and "Failed to update accumulator" from the scheduler, for tasks ending after the driver's Python
    assert str(log4j.getLogger("org.apache.spark.scheduler.DAGScheduler").getLevel()) == "FATAL"


def test_scoring_a_fresh_model_per_fold_prints_no_retracing_warning_but_the_users_own_functions_keep_theirs():
    """A grid search scores a fresh model per fold on the driver: from the sixth, TensorFlow warned that Keras'
    predict function "triggered tf.function retracing" (it counts traces by the function's code, which every
    model's function shares). That warning is dropped for Keras' own functions only."""
    import logging

    import keras
    import numpy as np

    from conftest import blobs, mlp
    import sparkeras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's warning")
    import tensorflow as tf

    warned: list[str] = []

    class Kept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warned.append(record.getMessage())

    handler = Kept()
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        x, _ = blobs(50)
        scores = [sparkeras.SparkModel(mlp(seed=seed)).predict(x) for seed in range(8)]
        assert all(s.shape == (50, 10) for s in scores) and not np.allclose(scores[0], scores[1])
        assert not [m for m in warned if "retracing" in m], warned

        @tf.function
        def users_own(n):
            return tf.constant(n)

        for n in range(8):
            users_own(n)  # a new Python value each call: retraced every time, which TensorFlow rightly reports
        assert [m for m in warned if "retracing" in m and "users_own" in m], warned
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
