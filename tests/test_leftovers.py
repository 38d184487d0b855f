"""Nothing left behind: a driver killed with SIGKILL right after a fit and a prediction leaves neither its packed
data nor its Python workers' files in the temporary folder or Spark's scratch folder, once its JVM has exited.

Before, the packed ``.npy`` files stayed in ``sparkeras-data-*`` folders (as large as the data) and every worker
left TensorFlow's ``__autograph_generated_file*.py`` sources, which TensorFlow removes only at a normal exit.
sparkeras' own loops are traced without autograph; a model's own ``tf.function`` (here a layer's) still writes them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.own_processes

SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from conftest import blobs, mlp
import keras
import pandas as pd
import tensorflow as tf
import sparkeras

def halved(x):
    return x * 0.5

class Halved(keras.layers.Layer):
    def call(self, x):
        return tf.function(halved)(x)  # autograph converts halved wherever the layer is traced

spark = sparkeras.get_spark("local[2]")
x, y = blobs(600)
df = spark.createDataFrame(pd.DataFrame({{"features": list(x), "label": y}})).cache()
net = keras.Sequential([keras.Input((x.shape[1],)), Halved(), *mlp().layers])
net.compile("adam", "sparse_categorical_crossentropy")
model = sparkeras.SparkModel(net, num_workers=2)
model.fit(df, epochs=1, verbose=0, validation_data=df)
assert model.predict(df).count() == 600
print("JVM", spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid(), flush=True)
found = []
for root, dirs, files in os.walk({scratch!r}):
    found += [d for d in dirs if d.startswith("sparkeras-data-")]
    found += [os.path.join(root, f) for f in files if f.startswith("__autograph_generated_file")]
print("FOUND", "|".join(found), flush=True)
driver = [os.path.realpath(m.__file__) for n, m in list(sys.modules.items()) if n.startswith("__autograph_generated")]
print("DRIVER", "|".join(driver), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[-1][0] != "Z"


def test_a_killed_driver_leaves_no_packed_data_or_worker_files(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "SPARKERAS_DEBUG"}
    env.update(PYSPARK_PYTHON=sys.executable, TMPDIR=str(scratch), SPARK_LOCAL_DIRS=str(scratch))
    script = tmp_path / "fit_then_die.py"  # a file, so that autograph can read the layer's source
    script.write_text(SCRIPT.format(tests=os.path.dirname(os.path.abspath(__file__)), scratch=str(scratch)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == -9, done.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    jvm = int(lines["JVM"])
    found = lines["FOUND"].split("|")
    # The run did make both kinds: the packing's folders and the workers' autograph sources (the layer's).
    assert any(f.startswith("sparkeras-data-") for f in found), found
    assert any("__autograph_generated_file" in f for f in found), found
    deadline = time.monotonic() + 60
    while _alive(jvm):
        assert time.monotonic() < deadline, f"the JVM (pid {jvm}) of a killed driver did not exit within 60 s"
        time.sleep(0.5)
    time.sleep(1)  # the Python daemon ends on the JVM's closed pipe
    driver = {p for p in lines.get("DRIVER", "").split("|") if p}
    left = [os.path.join(root, name) for root, dirs, files in os.walk(scratch) for name in dirs + files
            if name.startswith(("sparkeras-", "__autograph_generated_file"))
            and os.path.realpath(os.path.join(root, name)) not in driver]
    assert not left, left
