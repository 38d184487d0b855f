"""A bare scan of local Parquet files is packed by the workers with pyarrow: Spark's rows, in equal shares."""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import blobs, mlp


def _write(directory, x, y, files: int = 3, row_group_size: int = 70) -> str:
    os.makedirs(directory)
    for i, rows in enumerate(np.array_split(np.arange(len(x)), files)):
        features = pa.FixedSizeListArray.from_arrays(pa.array(x[rows].ravel()), x.shape[1]).cast(
            pa.list_(pa.float32()))
        pq.write_table(pa.table({"features": features, "label": pa.array(y[rows].astype(np.int64))}),
                       os.path.join(directory, f"part-{i}.parquet"), row_group_size=row_group_size)
    return str(directory)


def _packed(spark, frame, mode: str, features_col: str = "features", dim: int = 16, classes: int = 10):
    """Rows per partition and all packed rows (features, labels), packing ``frame`` with ``readParquet=mode``."""
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.packing import _prepare_spark, read_partition
    from sparkeras.data.parquet import READ_CONF
    from sparkeras.data.sources import as_dataset

    spark.conf.set(READ_CONF, mode)
    try:
        dataset = as_dataset(spark, frame, features_col=features_col)
        columns = resolve_columns(mlp(dim=dim, classes=classes), dataset.schema, features_col, "label")
        prepared = _prepare_spark(dataset, columns, 2, "training data")
        try:
            parts = [read_partition(columns, iter(blocks)) for blocks in prepared.blocks.glom().collect()]
        finally:
            prepared.free()
    finally:
        spark.conf.unset(READ_CONF)
    x = np.concatenate([arrays[0] for arrays, _ in parts])
    y = np.concatenate([arrays[1] for arrays, _ in parts])
    order = np.lexsort(np.column_stack([x, y.reshape(len(y), -1)]).T[::-1])
    return prepared.stats.rows_per_partition, x[order], y[order]


def _shares(spark, frame, num_partitions: int = 2):
    from sparkeras.data.parquet import parquet_shares

    return parquet_shares(frame, num_partitions)


def test_a_parquet_scan_is_packed_in_equal_shares_holding_the_rows_spark_reads(spark, tmp_path):
    x, y = blobs(1001, seed=7)
    path = _write(tmp_path / "train.parquet", x, y)
    frame = spark.read.parquet(path).cache()
    frame.count()
    try:
        shares = _shares(spark, frame)
        assert shares is not None
        assert [sum(s.stop - s.start for s in share) for share in shares] == [500, 501]
        counts, direct_x, direct_y = _packed(spark, frame, "auto")
        assert counts == [500, 501]
        spark_counts, spark_x, spark_y = _packed(spark, frame, "false")
        assert sum(spark_counts) == 1001
        np.testing.assert_array_equal(direct_x, spark_x)
        np.testing.assert_array_equal(direct_y, spark_y)
        expected = np.lexsort(np.column_stack([x, y]).T[::-1])
        np.testing.assert_array_equal(direct_x, x[expected].astype(np.float32))
        assert _shares(spark, spark.read.parquet(path).select("label", "features")) is not None  # not cached
    finally:
        frame.unpersist(blocking=True)


def test_spark_ml_vectors_written_by_spark_are_read_the_same_way(spark, tmp_path):
    from pyspark.ml.feature import VectorAssembler

    x, y = blobs(300, dim=4, classes=3, seed=2)
    df = spark.createDataFrame([tuple(float(v) for v in x[i]) + (int(y[i]),) for i in range(len(x))],
                               "a DOUBLE, b DOUBLE, c DOUBLE, d DOUBLE, label INT")
    path = str(tmp_path / "vectors.parquet")
    VectorAssembler(inputCols=["a", "b", "c", "d"], outputCol="features").transform(df).write.parquet(path)
    frame = spark.read.parquet(path)
    assert _shares(spark, frame.select("features", "label")) is not None
    counts, direct_x, direct_y = _packed(spark, frame, "auto", dim=4, classes=3)
    assert counts == [150, 150]
    _, spark_x, spark_y = _packed(spark, frame, "false", dim=4, classes=3)
    np.testing.assert_array_equal(direct_x, spark_x)
    np.testing.assert_array_equal(direct_y, spark_y)


def test_spark_reads_the_data_itself_unless_it_is_a_bare_scan_of_unchanged_local_parquet(spark, tmp_path):
    from pyspark.sql import functions as F

    from sparkeras.data.parquet import READ_CONF

    x, y = blobs(200, seed=3)
    path = _write(tmp_path / "train.parquet", x, y, files=2)
    frame = spark.read.parquet(path)
    assert _shares(spark, frame) is not None
    assert _shares(spark, frame.filter("label < 5")) is None
    assert _shares(spark, frame.withColumn("label", F.col("label") + 1)) is None
    assert _shares(spark, frame.union(frame)) is None
    spark.read.parquet(path).write.json(str(tmp_path / "train.json"))
    assert _shares(spark, spark.read.json(str(tmp_path / "train.json"))) is None
    spark.conf.set(READ_CONF, "false")
    try:
        assert _shares(spark, frame) is None
    finally:
        spark.conf.unset(READ_CONF)

    unsigned = tmp_path / "unsigned.parquet"  # Spark reads uint32 as a long, pyarrow as uint32
    os.makedirs(unsigned)
    pq.write_table(pa.table({"features": pa.array(np.arange(10, dtype=np.uint32)), "label": pa.array(np.zeros(10))}),
                   str(unsigned / "part-0.parquet"))
    assert _shares(spark, spark.read.parquet(str(unsigned))) is None

    listed = spark.read.parquet(path)  # its file index holds the files as they are now
    assert _shares(spark, listed) is not None
    time.sleep(1.1)
    _write(tmp_path / "again", x[:50], y[:50], files=1)
    os.replace(tmp_path / "again" / "part-0.parquet", os.path.join(path, "part-0.parquet"))
    assert _shares(spark, listed) is None  # rewritten since Spark listed it: Spark's own reader decides


def test_null_rows_in_parquet_are_named_before_training(spark, tmp_path):
    from sparkeras import InputError, SparkModel

    directory = tmp_path / "nulls.parquet"
    os.makedirs(directory)
    features = pa.array([[0.5] * 16] * 39 + [None], type=pa.list_(pa.float32()))
    pq.write_table(pa.table({"features": features, "label": pa.array(np.arange(40) % 10)}),
                   str(directory / "part-0.parquet"))
    frame = spark.read.parquet(str(directory))
    assert _shares(spark, frame) is not None
    with pytest.raises(InputError, match=r"column 'features' has 1 null rows"):
        SparkModel(mlp(), num_workers=2).fit(frame, epochs=1, verbose=0)


def test_shares_cut_row_groups_into_contiguous_ranges_of_equal_size():
    from sparkeras.data.parquet import RowSlice, _split

    groups = [("a", 0, 7), ("a", 1, 3), ("b", 0, 11)]
    shares = _split(groups, 3)
    assert shares == [
        [RowSlice("a", 0, 0, 7)],
        [RowSlice("a", 1, 0, 3), RowSlice("b", 0, 0, 4)],
        [RowSlice("b", 0, 4, 11)],
    ]
    many = _split(groups, 25)  # more partitions than rows: some stay empty, every row once
    assert sum(s.stop - s.start for share in many for s in share) == 21
    assert max(len(share) for share in many) == 1


def test_dealt_shares_take_runs_of_rows_in_turn_across_row_groups_and_files():
    from sparkeras.data.parquet import RowSlice, _deal

    groups = [("a", 0, 7), ("a", 1, 5), ("b", 0, 10)]  # rows 0-6, 7-11, 12-21; runs of 3 dealt to 2 shares
    assert _deal(groups, 2, 3) == [
        [RowSlice("a", 0, 0, 3), RowSlice("a", 0, 6, 7), RowSlice("a", 1, 0, 2),  # runs 0-2 and 6-8
         RowSlice("b", 0, 0, 3), RowSlice("b", 0, 6, 9)],                           # 12-14, 18-20
        [RowSlice("a", 0, 3, 6), RowSlice("a", 1, 2, 5), RowSlice("b", 0, 3, 6), RowSlice("b", 0, 9, 10)],
    ]


def test_parquet_sorted_by_label_is_dealt_by_the_workers_own_reads_every_row_once(spark, tmp_path):
    """A Parquet file sorted by label gave one worker the first classes and the other the last; the packing
    deals runs of rows instead, still read with pyarrow (no trip through Spark's rows and a shuffle)."""
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.packing import prepare, read_partition
    from sparkeras.data.sources import as_dataset

    x, y = blobs(3000, dim=16, classes=10, seed=7)
    order = np.argsort(y, kind="stable")
    path = _write(tmp_path / "sorted.parquet", x[order], y[order], files=2, row_group_size=1000)
    frame = spark.read.parquet(path)
    dataset = as_dataset(spark, frame)
    columns = resolve_columns(mlp(dim=16, classes=10), dataset.schema, "features", "label")
    prepared = prepare(dataset, columns, 2, balance=True)
    try:
        counts = prepared.stats.rows_per_partition
        assert prepared.stats.label_skew == 0.0 and sum(counts) == 3000
        assert abs(counts[0] - counts[1]) <= 3000 // (2 * 64)  # within one run: each share takes 64 runs or more
        parts = [read_partition(columns, iter(blocks)) for blocks in prepared.blocks.glom().collect()]
        for arrays, _ in parts:  # every class in each share, near its share of the whole
            np.testing.assert_allclose(np.bincount(arrays[1], minlength=10), np.bincount(y, minlength=10) / 2,
                                       atol=0.15 * len(y) / 10)
        got = np.concatenate([arrays[1] for arrays, _ in parts])
        np.testing.assert_array_equal(np.sort(got), np.sort(y))
        lineage = prepared.blocks.toDebugString().decode()
        assert "ParallelCollectionRDD" in lineage and "Shuffled" not in lineage  # the shares, read by the tasks
    finally:
        prepared.release()

