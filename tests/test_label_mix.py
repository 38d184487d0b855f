"""Training shares that hold different labels (data sorted or written by label) are dealt again, on real Spark."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import SparkModel
from sparkeras.data.label_mix import SKEWED, class_skew, label_moments, label_skew, value_skew


def test_class_skew_is_cramers_v_once_the_table_is_beyond_chance():
    assert class_skew(np.array([[50, 0], [0, 50]])) == pytest.approx(1.0)
    assert class_skew(np.array([[300, 200], [200, 300]])) == pytest.approx(np.sqrt(40 / 1000))  # chi2 40, 1000 rows
    assert class_skew(np.array([[30, 20], [20, 30]])) == 0.0  # chi2 4: within chance for 100 rows
    assert class_skew(np.array([[10, 0, 5], [0, 0, 0]])) == 0.0  # one partition with rows: nothing to compare
    rng = np.random.default_rng(0)
    for _ in range(200):  # random shares of any size and class count stay below the line
        rows, parts, classes = int(rng.integers(50, 50_000)), int(rng.integers(2, 9)), int(rng.integers(2, 200))
        table = np.zeros((parts, classes))
        np.add.at(table, (rng.permutation(rows) % parts, rng.integers(0, classes, rows)), 1)
        assert class_skew(table) <= SKEWED


def test_value_skew_is_the_root_of_eta_squared_of_the_most_different_value():
    rows = np.array([100.0, 100.0])
    assert value_skew(rows, np.array([[0.0], [100.0]]), np.array([[0.0], [100.0]])) == pytest.approx(1.0)
    # second value: means 0 and 1 around a spread of 2 within each partition: eta^2 = 0.25 / (0.25 + 4)
    sums = np.array([[5.0, 0.0], [5.0, 100.0]])
    sqsums = np.array([[0.25 * 100, 4 * 100], [0.25 * 100, (4 + 1) * 100]])
    assert value_skew(rows, sums, sqsums) == pytest.approx(np.sqrt(0.25 / 4.25), rel=1e-6)
    assert value_skew(rows, np.array([[50.0], [50.0]]), np.array([[50.0], [50.0]])) == 0.0


def test_label_moments_add_up_over_blocks_as_the_packing_statistics_do():
    ids = np.array([0, 2, 2, 1, 2])
    whole = label_moments("y", 3, ids)["y_classes"]
    parts = label_moments("y", 3, ids[:2])["y_classes"] + label_moments("y", 3, ids[2:])["y_classes"]
    np.testing.assert_array_equal(whole, [1, 1, 3])
    np.testing.assert_array_equal(parts, whole)
    targets = np.array([[1.0, 2.0], [3.0, np.nan], [5.0, 6.0]])
    moments = label_moments("t", None, targets)
    assert moments["t_n"] == 2  # the row with a NaN is left out: the fit refuses it anyway
    np.testing.assert_allclose(moments["t_sum"], [6.0, 8.0])
    np.testing.assert_allclose(moments["t_sqsum"], [26.0, 40.0])
    per_partition = [{"t_n": 2, "t_sum": np.array([0.0]), "t_sqsum": np.array([0.0])},
                     {"t_n": 2, "t_sum": np.array([2.0]), "t_sqsum": np.array([2.0])}]
    assert label_skew(per_partition, ["t"]) == 0.0  # 4 rows: within chance
    apart = [{"y_classes": np.array([90, 0])}, {}, {"y_classes": np.array([0, 90])}]  # the middle one is empty
    assert label_skew(apart, ["y"]) == pytest.approx(1.0)


def _classes_per_partition(prepared, slot: str) -> np.ndarray:
    from sparkeras.data.packing import _partition_stats

    parts = sorted(prepared.blocks.mapPartitionsWithIndex(_partition_stats).collect(), key=lambda r: r["pid"])
    return np.stack([p[f"{slot}_classes"] for p in parts])


@pytest.mark.parametrize("kind", ["dataframe", "numpy"])
def test_training_data_sorted_by_label_is_dealt_so_every_worker_gets_every_class(spark, kind):
    """Sorted into two partitions, each worker held two of the four classes; with ``balance_partitions`` (the
    default) every partition now holds each class's share, and ``False`` keeps the partitions as they came."""
    from sparkeras.data.columns import LABEL, resolve_columns
    from sparkeras.data.packing import prepare
    from sparkeras.data.sources import as_dataset

    x, y = blobs(2_000, dim=8, classes=4, seed=3)
    order = np.argsort(y, kind="stable")
    x, y = x[order], y[order]
    if kind == "dataframe":
        data = spark.createDataFrame([(r.tolist(), int(v)) for r, v in zip(x, y)], ["features", "label"]).coalesce(2)
        dataset = as_dataset(spark, data)
    else:
        dataset = as_dataset(spark, x, y)
    columns = resolve_columns(mlp(dim=8, classes=4), dataset.schema, "features", "label")
    slot = next(b.slot for b in columns.bindings if b.role == LABEL)
    even = np.bincount(y, minlength=4) / 2

    kept = prepare(dataset, columns, 2)
    assert kept.stats.label_skew > 0.9
    counts = _classes_per_partition(kept, slot)
    assert counts[0, 3] == counts[1, 0] == 0  # the first worker never sees class 3, the second never class 0
    kept.release()
    dealt = prepare(dataset, columns, 2, balance=True)
    assert dealt.stats.label_skew == 0.0 and sum(dealt.stats.rows_per_partition) == 2_000
    np.testing.assert_allclose(_classes_per_partition(dealt, slot), [even, even], rtol=0.1)
    dealt.release()


def test_a_fit_of_sorted_data_says_it_dealt_the_rows_again_and_trains_as_on_shuffled_data(spark, caplog):
    """``adag`` on four classes sorted into two workers' shares: each worker's pushes pulled the model towards
    its own two classes."""
    x, y = blobs(1_200, dim=8, classes=4, noise=2.0, seed=3)
    order = np.argsort(y, kind="stable")
    scores, said = {}, {}
    for name, (xs, ys) in {"sorted": (x[order], y[order]), "shuffled": (x, y)}.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sparkeras"):
            sm = SparkModel(mlp(dim=8, classes=4, seed=2), num_workers=2, strategy="adag", seed=0)
            sm.fit(xs, ys, epochs=2, batch_size=32, verbose=0)
        said[name] = [r.getMessage() for r in caplog.records if "different mixes of labels" in r.getMessage()]
        scores[name] = sm.evaluate(x, y)["accuracy"]
    assert said["shuffled"] == [] and len(said["sorted"]) == 1
    assert "dealt across the 2 workers again" in said["sorted"][0]
    assert scores["sorted"] == pytest.approx(scores["shuffled"], abs=0.03), scores
