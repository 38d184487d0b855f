"""A fit with ``checkpoint_dir`` resumes where it stopped, after its driver was killed or the fit interrupted.

One script runs the strategy families in turn (averaging, all-reduce, a
parameter-server rule). Its first run kills its own driver process with
SIGKILL at the start of epoch 3 of the ``averaging`` fit. Run again, it
resumes that fit from its checkpoint; then it interrupts each of the other
fits at the same point with ``KeyboardInterrupt``, as a notebook user stops
a cell, and fits again in the same session, which resumes from the
checkpoint. Each resumed fit must end with exactly the weights of an
uninterrupted fit. Two driver processes cover every family: each fresh
driver costs a JVM, a Spark session and Python workers.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import SparkModel
from sparkeras.errors import InputError

# averaging at window 4: 6 rounds per epoch, so a resumed fit must turn the reported iterate back into
# the look-ahead it trains from
STRATEGIES = {"averaging": {"window": 4}, "allreduce": {"learning_rate_scaling": None}, "easgd": {"window": 8}}
EPOCHS = 4

SCRIPT = """
import json, os, signal, sys
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
import keras, numpy as np
from conftest import blobs, mlp
import sparkeras
sparkeras.get_spark("local[2]").sparkContext.setLogLevel("OFF")
root, strategies, epochs = {root!r}, {strategies!r}, {epochs}
x, y = blobs(1200, seed=4)


class StopAtEpoch3(keras.callbacks.Callback):
    def __init__(self, how):
        super().__init__()
        self.how = how

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt


for i, (name, options) in enumerate(strategies.items()):
    done = os.path.join(root, name + ".done")
    if os.path.exists(done):
        continue
    killed = os.path.join(root, name + ".killed")
    first_time = not os.path.exists(killed)
    if first_time:
        open(killed, "w").close()
    fit = dict(epochs=epochs, batch_size=25, verbose=0, checkpoint_dir=os.path.join(root, name))
    sm = sparkeras.SparkModel(mlp(seed=3), name, num_workers=2, seed=0, **options)
    if first_time:
        try:
            sm.fit(x, y, callbacks=[StopAtEpoch3("kill" if i == 0 else "interrupt")], **fit)
        except KeyboardInterrupt:
            print("INTERRUPTED", name, flush=True)
        sm = sparkeras.SparkModel(mlp(seed=3), name, num_workers=2, seed=0, **options)
    h = sm.fit(x, y, **fit)
    np.save(os.path.join(root, name + ".npy"), np.concatenate([w.ravel() for w in sm.model.get_weights()]))
    print("RESULT", json.dumps({{"strategy": name, "epochs": len(h.history["loss"]), "restarts": h.restarts,
                                "iterations": int(sm.model.optimizer.iterations)}}), flush=True)
    open(done, "w").close()
"""


@pytest.mark.own_processes
def test_a_killed_driver_or_an_interrupted_fit_resumes_every_strategy_family_from_its_checkpoint(spark, tmp_path):
    script = SCRIPT.format(tests=os.path.dirname(__file__), root=str(tmp_path), strategies=STRATEGIES,
                           epochs=EPOCHS)
    results, interrupted = {}, []
    for run in range(2):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                got = json.loads(line[len("RESULT "):])
                results[got["strategy"]] = got
            interrupted += line.split()[1:] if line.startswith("INTERRUPTED ") else []
        assert out.returncode == (-9 if run == 0 else 0), (run, out.returncode, out.stderr[-3000:])
    assert set(results) == set(STRATEGIES)
    assert interrupted == list(STRATEGIES)[1:]

    x, y = blobs(1200, seed=4)
    for name, options in STRATEGIES.items():
        got = results[name]
        assert got["epochs"] == EPOCHS, got
        assert [(r["attempt"], r["resumed_at_epoch"]) for r in got["restarts"]] == [(1, 3)], got
        assert got["restarts"][0]["reason"] == f"checkpoint in {tmp_path / name}"
        sm = SparkModel(mlp(seed=3), name, num_workers=2, seed=0, **options)
        sm.fit(x, y, epochs=EPOCHS, batch_size=25, verbose=0)
        want = np.concatenate([w.ravel() for w in sm.model.get_weights()])
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), want, atol=1e-5, err_msg=name)
        assert got["iterations"] == int(sm.model.optimizer.iterations), name
        directory = tmp_path / name
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert [p.name for p in directory.iterdir()] == ["sparkeras-checkpoint.skr"]
        assert stat.S_IMODE((directory / "sparkeras-checkpoint.skr").stat().st_mode) == 0o600


def test_a_checkpoint_of_another_fit_is_refused(spark, tmp_path):
    x, y = blobs(200, seed=1)
    SparkModel(mlp(seed=1), "averaging", num_workers=2, seed=0).fit(
        x, y, epochs=1, batch_size=50, verbose=0, checkpoint_dir=str(tmp_path / "ckpt"))
    with pytest.raises(InputError, match=r"checkpoint_dir '.*ckpt' holds the state of a different fit \(its "
                                         r"batch_size differ from this one's\)"):
        SparkModel(mlp(seed=1), "averaging", num_workers=2, seed=0).fit(
            x, y, epochs=2, batch_size=20, verbose=0, checkpoint_dir=str(tmp_path / "ckpt"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"checkpoint_dir '.*file' is a file, not a directory"):
        SparkModel(mlp(seed=1), num_workers=2).fit(x, y, verbose=0, checkpoint_dir=str(tmp_path / "file"))
    # The same fit with more epochs goes on from the checkpoint.
    sm = SparkModel(mlp(seed=1), "averaging", num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=2, batch_size=50, verbose=0, checkpoint_dir=str(tmp_path / "ckpt"))
    assert len(history.history["loss"]) == 2 and history.restarts[0]["resumed_at_epoch"] == 2
