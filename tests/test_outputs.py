"""Outputs are checked before work starts and written atomically; data is read by its format."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import SparkModel
from sparkeras.data.sources import data_format, read_data
from sparkeras.errors import InputError
from sparkeras.storage.model_file import check_model_archive
from sparkeras.storage.outputs import check_output, save_model_atomically, write_table_atomically


def _digest(path) -> str:
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize("make,kwargs,message", [
    (lambda d: d / "model", {"kind": "model"}, r"must end in \.keras .* use '.*model\.keras'"),
    (lambda d: d / "missing" / "m.keras", {"kind": "model"}, r"the directory '.*missing' does not exist"),
    (lambda d: d / "exists.keras", {"kind": "model"}, r"already exists; pass --overwrite"),
    (lambda d: d / "data.parquet", {"kind": "table", "inputs": ["{d}/data.parquet"]},
     r"would write over the input '.*data\.parquet'"),
    (lambda d: d / "data.parquet" / "out", {"kind": "table", "inputs": ["{d}/data.parquet"]},
     r"would write over the input"),
    (lambda d: d, {"kind": "table", "inputs": ["{d}/data.parquet"]}, r"would write over the input"),
    (lambda d: "file://{d}/data.parquet/", {"kind": "table", "inputs": ["{d}/data.parquet"]},
     r"would write over the input"),
    (lambda d: d / "a_dir.keras", {"kind": "model", "overwrite": True}, r"is a directory"),
])
def test_bad_output_paths_are_refused_with_the_reason(tmp_path, make, kwargs, message):
    (tmp_path / "exists.keras").write_bytes(b"x")
    (tmp_path / "a_dir.keras").mkdir()
    (tmp_path / "data.parquet").mkdir()
    path = str(make(tmp_path)).format(d=tmp_path)
    kwargs = {**kwargs, "inputs": [s.format(d=tmp_path) for s in kwargs.get("inputs", [])]}
    with pytest.raises(InputError, match=message):
        check_output(path, flag="--output", **kwargs)


def test_good_output_paths_pass(tmp_path):
    (tmp_path / "old.keras").write_bytes(b"x")
    check_output(str(tmp_path / "new.keras"), kind="model", inputs=[str(tmp_path / "in.keras")])
    check_output(str(tmp_path / "old.keras"), kind="model", overwrite=True)
    check_output(str(tmp_path / "ckpt"), kind="directory")
    check_output("hdfs://namenode/out.parquet", kind="table", inputs=["hdfs://namenode/in.parquet"])


def test_a_corrupt_or_foreign_model_file_is_named_as_such(tmp_path):
    (tmp_path / "bad.keras").write_bytes(b"this is not a zip")
    (tmp_path / "old.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(InputError, match=r"'.*bad\.keras' is not a valid \.keras archive"):
        check_model_archive(str(tmp_path / "bad.keras"))
    with pytest.raises(InputError, match=r"legacy HDF5 \(\.h5\) model"):
        check_model_archive(str(tmp_path / "old.h5"))
    with pytest.raises(InputError, match=r"No model file at"):
        check_model_archive(str(tmp_path / "none.keras"))
    model = mlp()
    model.save(str(tmp_path / "good.keras"))
    check_model_archive(str(tmp_path / "good.keras"))
    with open(tmp_path / "good.keras", "rb") as f:
        (tmp_path / "cut.keras").write_bytes(f.read()[:-200])  # a truncated download
    with pytest.raises(InputError, match=r"not a valid \.keras archive"):
        SparkModel.load(str(tmp_path / "cut.keras"))


def test_save_keras_writes_the_same_model_and_builds_keras_skip_sets_once(tmp_path):
    """The skip sets Keras recomputes on every save (a key mismatch in Keras) are stored where Keras reads them."""
    import threading

    import keras
    from keras.src.backend.common import global_state

    from sparkeras.storage.model_file import save_keras

    x, y = blobs(256, seed=2)
    model = mlp()
    model.fit(x, y, epochs=1, verbose=0)  # optimizer state to keep
    built = []

    def save_in_a_new_thread(path):  # Keras' global state is per thread: a fresh one has no sets yet
        def run():
            built.append(global_state.get_global_attribute("saving_attr_skiplist_Optimizer") is None)
            save_keras(model, str(path))
            built.append(global_state.get_global_attribute("saving_attr_skiplist_Optimizer"))
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()

    save_in_a_new_thread(tmp_path / "a.keras")
    assert built[0] is True and "variables" not in built[1] and "_tracker" in built[1]
    reloaded = keras.models.load_model(tmp_path / "a.keras")
    for got, want in zip(reloaded.get_weights() + [v.numpy() for v in reloaded.optimizer.variables],
                         model.get_weights() + [v.numpy() for v in model.optimizer.variables]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(reloaded.predict(x[:20], verbose=0), model.predict(x[:20], verbose=0), atol=1e-6)


def test_a_model_saved_before_any_training_loads_without_keras_optimizer_warnings(tmp_path):
    """The driver's model has never trained; its optimizer is built on save so the file loads cleanly."""
    import warnings

    import keras

    from sparkeras.storage.model_file import save_keras

    model = mlp()
    assert not model.optimizer.built
    save_keras(model, str(tmp_path / "fresh.keras"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = keras.models.load_model(tmp_path / "fresh.keras")
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)], [str(w.message) for w in caught]
    assert len(reloaded.optimizer.variables) == len(model.optimizer.variables) > 2
    for got, want in zip(reloaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_loading_a_users_untrained_model_file_drops_only_the_empty_optimizer_warning(tmp_path):
    """A model saved by Keras before any training (the CLI's usual --model) loads without Keras' skip warning."""
    import warnings

    from sparkeras.model import load_model_file
    from sparkeras.storage.model_file import _unbuilt_optimizer_skipped

    model = mlp()
    model.save(str(tmp_path / "untrained.keras"))  # Keras' own save: the optimizer is saved unbuilt
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model_file(str(tmp_path / "untrained.keras"))
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)], [str(w.message) for w in caught]
    for got, want in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(got, want)
    message = "Skipping variable loading for optimizer 'adam', because it has 10 variables whereas the saved " \
              "optimizer has {} variables."
    assert _unbuilt_optimizer_skipped(message.format(2), loaded)  # Adam unbuilt: iterations, learning rate
    assert not _unbuilt_optimizer_skipped(message.format(6), loaded)  # state that would be lost: kept


def test_model_save_is_atomic_and_refuses_to_replace_without_overwrite(spark, tmp_path):
    path = str(tmp_path / "m.keras")
    sm = SparkModel(mlp(seed=1), num_workers=1)
    sm.save(path)
    first = _digest(tmp_path)
    with pytest.raises(InputError, match=r"already exists; pass --overwrite \(overwrite=True"):
        sm.save(path)

    class Exploding:
        def save(self, target):
            with open(target, "wb") as f:
                f.write(b"half a model")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_atomically(Exploding(), path, overwrite=True)
    assert _digest(tmp_path) == first  # the old model intact, no temporary left behind
    sm.model.layers[0].kernel.assign(np.zeros(sm.model.layers[0].kernel.shape))
    sm.save(path, overwrite=True)
    assert os.listdir(tmp_path) == ["m.keras"]
    assert not SparkModel.load(path).model.layers[0].kernel.numpy().any()


def test_a_failed_table_write_leaves_the_previous_output_intact(spark, tmp_path, monkeypatch):
    from pyspark.sql import functions as F

    out = str(tmp_path / "out.parquet")
    spark.range(10).write.parquet(out)
    before = _digest(out)
    boom = F.udf(lambda v: 1 // (v - 7), "int")  # fails on one row, after other tasks have written
    with pytest.raises(Exception):
        write_table_atomically(spark.range(0, 12, 1, 4).select(boom("id").alias("x")), out, overwrite=True)
    assert _digest(out) == before
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"]
    with pytest.raises(InputError, match="already exists"):
        write_table_atomically(spark.range(3), out)
    write_table_atomically(spark.range(3), out, overwrite=True)
    assert sorted(r.id for r in spark.read.parquet(out).collect()) == [0, 1, 2]
    assert sorted(os.listdir(tmp_path)) == ["out.parquet"]
    monkeypatch.chdir(tmp_path)  # a relative path is Python's, whose working folder the JVM does not follow
    write_table_atomically(spark.range(2), "relative.parquet")
    assert sorted(os.listdir(tmp_path)) == ["out.parquet", "relative.parquet"]


KILLED_WRITER = """
import os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.sql import functions as F
import sparkeras
from sparkeras.storage.outputs import write_table_atomically
spark = sparkeras.get_spark("local[1]")
spark.sparkContext.setLogLevel("OFF")
slow = F.udf(lambda v: (time.sleep(0.5), v)[1], "long")
write_table_atomically(spark.range(0, 400, 1, 40).select(slow("id").alias("id")), sys.argv[1])
"""


@pytest.mark.own_processes
def test_a_killed_writer_leaves_no_partial_output(tmp_path):
    out = tmp_path / "scores.parquet"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        partial = []
        while not partial and time.monotonic() < deadline:  # wait until some part files are written
            time.sleep(0.5)
            partial = [f for d in tmp_path.glob(".scores.parquet.tmp-*") for f in d.rglob("part-*")]
        assert partial, "the writer never started writing"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert not out.exists()
    assert all(p.name.startswith(".") for p in tmp_path.iterdir())  # only a hidden temporary, which readers skip


def test_data_is_read_by_its_format(spark, tmp_path):
    x, y = blobs(60, dim=3, classes=2, seed=2)
    import pandas as pd

    frame = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": y})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_json(tmp_path / "d.json", orient="records", lines=True)
    spark.createDataFrame(frame).write.orc(str(tmp_path / "d_orc"))
    spark.createDataFrame(frame).coalesce(1).write.option("header", "true").csv(str(tmp_path / "csvdir"))
    assert [data_format(str(tmp_path / p)) for p in ("d.csv", "d.json", "d_orc", "csvdir")] == \
        ["csv", "json", "orc", "csv"]
    for name in ("d.csv", "d.json", "d_orc", "csvdir"):
        df = read_data(spark, str(tmp_path / name))
        got = sorted((round(r["a"], 4), int(r["label"])) for r in df.collect())
        assert got == sorted((round(float(a), 4), int(b)) for a, b in zip(x[:, 0], y)), name
    sm = SparkModel(mlp(dim=3, classes=2), num_workers=2, seed=0)
    history = sm.fit(str(tmp_path / "d.csv"), features_col=["a", "b", "c"], epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(InputError, match=r"'.*image\.png' is a PNG image, which sparkeras cannot read as a table; "
                                         r"convert it to one of parquet, csv, json, orc, delta"):
        read_data(spark, str(tmp_path / "image.png"))
    with pytest.raises(InputError, match=r"No data at '.*nothing\.parquet'"):
        read_data(spark, str(tmp_path / "nothing.parquet"))
