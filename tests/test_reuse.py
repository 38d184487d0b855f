"""Packed data is kept for a cached DataFrame fitted again unchanged, and only then."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs, mlp


@pytest.fixture
def packed():
    from sparkeras.data.reuse import PACKED

    PACKED.clear()
    yield PACKED
    PACKED.clear()


def _frame(spark, n: int = 400, seed: int = 5):
    x, y = blobs(n, seed=seed)
    rows = [(x[i].tolist(), int(y[i])) for i in range(n)]
    return spark.createDataFrame(rows, "features ARRAY<FLOAT>, label INT").repartition(2)


def _fit(data, seed: int = 1, hidden: int = 32):
    from sparkeras import SparkModel

    model = SparkModel(mlp(seed=seed, hidden=hidden), "averaging", num_workers=2, seed=3)
    model.fit(data, epochs=1, batch_size=32, verbose=0)
    return [np.array(w) for w in model.model.get_weights()]


def test_a_cached_dataframe_fitted_again_is_packed_once_and_trains_the_same_model(spark, packed):
    df = _frame(spark).cache()
    df.count()
    try:
        first = _fit(df)
        assert (packed.hits, len(packed)) == (0, 1)
        second = _fit(df)  # from the kept packing
        assert packed.hits == 1
        for a, b in zip(first, second):
            np.testing.assert_allclose(a, b, atol=1e-6)
        wider = _fit(df, hidden=48)  # another model with the same inputs and outputs shares the packing
        assert packed.hits == 2 and wider[0].shape == (16, 48)

        filtered = df.filter("label < 5").cache()  # another plan: its own packing
        filtered.count()
        _fit(filtered)
        assert packed.hits == 2 and len(packed) == 2
        filtered.unpersist(blocking=True)
    finally:
        df.unpersist(blocking=True)
    _fit(df)  # no longer cached: packed again, nothing kept, and the stale entries are dropped
    assert packed.hits == 2 and len(packed) == 0


def test_data_that_spark_does_not_cache_is_not_kept(spark, packed, tmp_path):
    path = str(tmp_path / "train.parquet")
    _frame(spark).write.parquet(path)
    _fit(path)
    assert len(packed) == 0


def test_keeping_can_be_turned_off_and_a_bad_setting_is_named(spark, packed):
    from sparkeras import InputError
    from sparkeras.data.reuse import KEEP_CONF

    df = _frame(spark, seed=6).cache()
    df.count()
    try:
        spark.conf.set(KEEP_CONF, "0")
        _fit(df)
        assert len(packed) == 0
        spark.conf.set(KEEP_CONF, "lots")
        with pytest.raises(InputError, match=r"spark.sparkeras.data.keepPacked must be a whole number .* 'lots'"):
            _fit(df)
    finally:
        spark.conf.unset(KEEP_CONF)
        df.unpersist(blocking=True)


STOPPED_SESSION = """
import os, sys
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
from conftest import blobs, mlp
import sparkeras
from sparkeras.data.reuse import PACKED

def fit(spark):
    x, y = blobs(128, seed=2)
    df = spark.createDataFrame([(x[i].tolist(), int(y[i])) for i in range(128)], "features ARRAY<FLOAT>, label INT")
    df = df.cache()
    df.count()
    sparkeras.SparkModel(mlp(seed=1), num_workers=1).fit(df, epochs=1, verbose=0)

fit(sparkeras.get_spark("local[1]"))
kept = PACKED._kept[next(iter(PACKED._kept))].prepared.files
sparkeras.get_spark().stop()
fit(sparkeras.get_spark("local[1]"))  # the stopped session's packing is dropped, not unpersisted
print("kept", len(PACKED), PACKED.hits, os.path.exists(kept))
"""


@pytest.mark.own_processes
def test_a_stopped_sessions_packing_is_dropped_when_a_new_session_fits(tmp_path):
    script = STOPPED_SESSION.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-4:] == ["kept", "1", "0", "False"], done.stdout
