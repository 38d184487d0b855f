"""Spark Connect: prediction works (the weights travel in the UDF; numpy rows are scored by the driver), training
is refused with the way out.

A Spark Connect session (``SparkSession.builder.remote("local[2]")``) starts a
server JVM of its own and switches the process to Connect mode, so the
checks run in a child process, against a real local Connect server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.own_processes

HERE = os.path.dirname(os.path.abspath(__file__))

SCRIPT = r"""
import json, os, sys
import numpy as np
from pyspark.sql import SparkSession

spark = SparkSession.builder.remote("local[2]").getOrCreate()
from conftest import blobs, mlp
import sparkeras
from sparkeras import InputError, SparkModel
from sparkeras.inference.batch import InlineWeights
from sparkeras.inference.udf import ship_weights
from sparkeras.ml import KerasEstimator, KerasModel

out = {"session": type(spark).__module__}
x, y = blobs(300, seed=3)
model = mlp(seed=2)
df = spark.createDataFrame([(i, r.tolist(), int(c)) for i, (r, c) in enumerate(zip(x, y))],
                           "id long, features array<float>, label long")
want = model.predict(x, verbose=0)
sm = SparkModel(model, num_workers=2)
rows = sm.predict(df).orderBy("id").collect()
out["predict_gap"] = float(np.abs(np.array([r.prediction for r in rows]) - want).max())
out["numpy_gap"] = float(np.abs(sm.predict(x) - want).max())  # driver-side rows: scored by the driver
out["numpy_loss"] = [sm.evaluate(x, y)["loss"], model.evaluate(x, y, verbose=0)[0]]
rows = KerasModel(model=model, rawPredictionCol="scores").transform(df).orderBy("id").collect()
out["transform_agrees"] = [r.prediction for r in rows] == want.argmax(1).astype(float).tolist()
out["raw_gap"] = float(np.abs(np.array([r.scores.toArray() for r in rows]) - want).max())
sparkeras.register_udf(spark, "blob_class", model, output="class")
df.createOrReplaceTempView("t")
rows = spark.sql("SELECT id, blob_class(features) AS c FROM t ORDER BY id").collect()
out["sql_agrees"] = [r.c for r in rows] == want.argmax(1).astype(float).tolist()
out["inline"] = isinstance(ship_weights(spark, b"weights"), InlineWeights)
errors = {}
for name, call in [("fit", lambda: sm.fit(df, epochs=1, verbose=0)), ("evaluate", lambda: sm.evaluate(df)),
                   ("estimator", lambda: KerasEstimator(model=model).fit(df)),
                   ("tune", lambda: sparkeras.tune(lambda trial: model, df, n_trials=1)),
                   ("read_images", lambda: sparkeras.read_images(spark, os.getcwd(), 16)),
                   ("big", lambda: ship_weights(spark, bytes(121 << 20)))]:
    try:
        call()
        errors[name] = None
    except InputError as exc:
        errors[name] = str(exc)
out["errors"] = errors
print("RESULT", json.dumps(out))
spark.stop()
"""


def test_prediction_runs_on_spark_connect_and_training_says_what_to_use(tmp_path):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYSPARK_SUBMIT_ARGS", None)
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env,
                         cwd=str(tmp_path))
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-5000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["session"].startswith("pyspark.sql.connect")
    assert out["predict_gap"] < 1e-5 and out["transform_agrees"] and out["sql_agrees"] and out["inline"]
    assert out["raw_gap"] < 1e-5  # rawPrediction is a Vector on Connect too
    assert out["numpy_gap"] < 1e-5 and out["numpy_loss"][0] == pytest.approx(out["numpy_loss"][1], rel=1e-5)
    for name, what in (("fit", "SparkModel.fit"), ("evaluate", "SparkModel.evaluate"),
                       ("estimator", "KerasEstimator.fit"), ("tune", "sparkeras.tune")):
        message = out["errors"][name]
        assert message and message.startswith(f"{what} needs a classic SparkSession"), (name, message)
        assert "SparkSession.builder.master(...)" in message and "Prediction works on Spark Connect" in message
    assert out["errors"]["read_images"].startswith("read_images needs a classic SparkSession")
    assert "spark.read.format('binaryFile') and pass its 'content' column" in out["errors"]["read_images"]
    assert "The model's weights are 121 MB; on Spark Connect they travel inside the UDF" in out["errors"]["big"]
