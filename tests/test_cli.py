"""The sparkeras command, run as a user would, in separate processes.

``train`` runs on ``local-cluster[2,1,1024]``: two executor JVMs with their own
Python workers, so nothing can lean on state shared with the driver process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs, mlp


def _cli(*args, timeout=600):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "sparkeras.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def files(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    x, y = blobs(3000, dim=8, classes=4, seed=3)
    rows = [(i, x[i].tolist(), int(y[i])) for i in range(len(x))]
    spark.createDataFrame(rows, "id INT, pixels ARRAY<FLOAT>, digit INT").repartition(3) \
        .write.parquet(str(tmp / "train.parquet"))
    model = mlp(dim=8, classes=4, seed=0)
    model.save(str(tmp / "untrained.keras"))
    return tmp, x, y, model


def test_train_on_a_local_cluster_then_predict(files, spark):
    import keras

    tmp, x, y, untrained = files
    before = untrained.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    res = _cli("train", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "pixels", "--label", "digit", "--epochs", "3", "--batch-size", "32",
               "--workers", "2", "--master", "local-cluster[2,1,1024]", "--output", str(tmp / "trained.keras"),
               "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "saved" in res.stdout
    trained = keras.saving.load_model(str(tmp / "trained.keras"))
    after = trained.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert after > 0.85 > before

    res = _cli("predict", "--model", str(tmp / "trained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "pixels", "--output", str(tmp / "pred.parquet"), "--master", "local[2]")
    assert res.returncode == 0, res.stderr[-3000:]
    out = spark.read.parquet(str(tmp / "pred.parquet"))
    assert out.columns == ["id", "pixels", "digit", "prediction"]
    got = {r["id"]: np.argmax(r["prediction"]) for r in out.select("id", "prediction").collect()}
    want = trained.predict(x, verbose=0).argmax(1)
    assert len(got) == 3000 and all(got[i] == want[i] for i in range(0, 3000, 97))


def test_errors_are_one_clear_line_without_a_java_trace(files):
    tmp = files[0]
    res = _cli("predict", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "image", "--output", str(tmp / "x.parquet"), "--master", "local[1]")
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("sparkeras")]
    assert err == ["sparkeras predict: error: Column 'image' (features_col) is not in the data; the columns are "
                   "['digit', 'id', 'pixels']. Pass features_col= with one of them."]
    assert "at org.apache" not in res.stderr and "Traceback" not in res.stderr
    res = _cli("train", "--model", str(tmp / "nope.keras"), "--data", "x", "--output", "y", "--master", "local[1]")
    assert res.returncode == 2 and "No model file at" in res.stderr


@pytest.mark.parametrize("command", ["demo", "train", "predict"])
def test_help(command):
    res = _cli(command, "--help", timeout=60)
    assert res.returncode == 0 and f"usage: sparkeras {command}" in res.stdout


def test_demo_prints_json(tmp_path):
    res = _cli("demo", "--json", "--epochs", "3", "--output", str(tmp_path / "demo"), "--master", "local[2]")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(result) >= {"test_accuracy", "baseline_accuracy", "train_seconds", "baseline_seconds",
                           "samples_per_second"}
    assert result["test_accuracy"] > 0.7 and result["baseline_accuracy"] > 0.7
    assert os.path.getsize(result["plot"]) > 10_000 and os.path.exists(result["model"])
