"""Quiet output: a ``verbose=0`` fit in a fresh process prints nothing of Spark's or TensorFlow's start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
print("PID", os.getpid(), flush=True)
from conftest import blobs, mlp  # the user's own "import keras": its start-up lines are the user's
import pyarrow as pa
import sparkeras
spark = sparkeras.get_spark("local[2]")
x, y = blobs(400)
sparkeras.SparkModel(mlp(), num_workers=2).fit(spark.createDataFrame(pa.table({{"features": list(x), "label": y}})),
                                              epochs=1, verbose=0)
print("DONE", flush=True)
"""


def test_a_quiet_fit_prints_no_spark_or_worker_start_up_lines():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "SPARKERAS_DEBUG")}
    env["PYSPARK_PYTHON"] = sys.executable
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)))],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr[-3000:]
    driver = done.stdout.split()[1]
    err = done.stderr.splitlines()
    for noise in ("log4j", "WARN Utils", "NativeCodeLoader", "Setting default log level", "setLogLevel"):
        assert not [line for line in err if noise in line], (noise, err)
    # TensorFlow's C++ start-up lines ("I0000 <time> <thread id> port.cc...") come from the driver's import only.
    native = [m.group(1) for m in (re.match(r"I\d{4} \S+\s+(\d+) ", line) for line in err) if m]
    assert set(native) <= {driver}, err
    assert sum("absl::InitializeLog" in line for line in err) <= len(native), err
