"""Faults on a real standalone cluster (a master and two workers started by the suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from standalone import StandaloneCluster

LOST_WORKER = """
import json, os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
import keras
from conftest import blobs, mlp
import sparkeras
from sparkeras import AllReduce, SparkModel
spark = sparkeras.get_spark({url!r})
spark.sparkContext.setLogLevel("OFF")
x, y = blobs(20000, seed=3)
started = time.monotonic()


class Signal(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            open({marker!r}, "w").close()


try:
    SparkModel(mlp(), AllReduce(slot_timeout=10, max_restarts=2), num_workers=2).fit(
        x, y, epochs=200, batch_size=32, verbose=0, callbacks=[Signal()])
    print("RESULT", json.dumps({{"error": None}}))
except Exception as exc:
    print("RESULT", json.dumps({{"error": type(exc).__name__, "message": str(exc)}}))
"""


@pytest.fixture()
def cluster(tmp_path):
    cluster = StandaloneCluster(str(tmp_path))
    yield cluster
    cluster.stop()


def test_allreduce_stops_with_the_missing_capacity_when_a_worker_daemon_dies(cluster, tmp_path):
    marker = tmp_path / "first-epoch-done"
    script = LOST_WORKER.format(tests=os.path.dirname(__file__), url=cluster.url, marker=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the fit never completed an epoch"
        cluster.kill_worker(1)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=180)  # never a silent wait: a bounded failure
        waited = time.monotonic() - killed
    finally:
        proc.kill()
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert lines, err[-3000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["error"] == "ClusterCapacityError", result
    assert result["message"].startswith("allreduce needs 2 task slots at once, but the cluster has had only 1 "
                                        "for 10s"), result
    assert "fit with num_workers=1" in result["message"]
    assert waited < 120, waited
