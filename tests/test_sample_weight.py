"""Row weights: ``fit(weight_col=...)`` / ``sample_weight=`` (Keras' ``sample_weight``, Spark ML's ``weightCol``)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_same_weights, blobs, clone, mlp, weighted_plain_fits
from sparkeras import AllReduce, InputError, SparkModel


def _weights(n, seed=1):
    return np.random.default_rng(seed).uniform(0.0, 3.0, n).astype(np.float32)


def _frame(spark, x, y, w):
    return spark.createDataFrame([(r.tolist(), int(c), float(v)) for r, c, v in zip(x, y, w)],
                                 "features array<float>, label long, w double")


@pytest.mark.parametrize("strategy", ["averaging", "async"])
def test_one_worker_with_row_weights_equals_plain_fit(spark, strategy):
    """numpy ``sample_weight=`` reaches the loss exactly as ``model.fit(sample_weight=...)`` applies it."""
    x, y = blobs(640, seed=3)
    w = _weights(len(x))
    model = mlp(seed=5)
    again = clone(model)
    plain = weighted_plain_fits(model, x, y, sample_weight=w)

    history = SparkModel(model, strategy=strategy, num_workers=1, seed=0).fit(
        x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, sample_weight=w)

    assert_same_weights(model, plain)
    key = "worker_loss" if strategy == "async" else "loss"
    assert history.history[key][0] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)

    # The same rows as a DataFrame with a weight column, in one partition in row order.
    SparkModel(again, strategy=strategy, num_workers=1, seed=0).fit(
        _frame(spark, x, y, w).coalesce(1), epochs=2, batch_size=32, shuffle=False, verbose=0, weight_col="w")
    assert_same_weights(again, plain)


def test_two_workers_with_row_weights_equal_one_process_with_the_global_batch(spark):
    b = 16
    x, y = blobs(2 * 20 * b, seed=21)
    w = _weights(len(x), seed=2)
    n = len(x) // 2
    order = [k * n + r for s in range(n // b) for k in range(2) for r in range(s * b, (s + 1) * b)]
    model = mlp(seed=4, optimizer="sgd")
    plain = clone(model)
    plain.fit(x[order], y[order], batch_size=2 * b, epochs=1, shuffle=False, verbose=0, sample_weight=w[order])

    history = SparkModel(model, strategy=AllReduce(learning_rate_scaling=None), num_workers=2, seed=0).fit(
        x, y, epochs=1, batch_size=b, shuffle=False, verbose=0, sample_weight=w)

    assert_same_weights(model, plain)
    assert history.history["loss"][0] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)


def test_validation_is_unweighted_and_evaluate_is_weighted(spark):
    """The held-out rows need no weights and count equally; ``evaluate(weight_col=)`` matches Keras'."""
    x, y = blobs(800, seed=7)
    w = _weights(len(x), seed=3)
    model = mlp(seed=2)
    sm = SparkModel(model, num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=2, batch_size=32, verbose=0, sample_weight=w, validation_split=0.25)
    held_out = model.evaluate(x[600:], y[600:], verbose=0, return_dict=True)
    assert history.history["val_loss"][-1] == pytest.approx(held_out["loss"], abs=1e-4)

    frame = _frame(spark, x, y, w)
    got = sm.evaluate(frame, weight_col="w")
    want = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)
    assert got["loss"] != pytest.approx(sm.evaluate(frame)["loss"], abs=1e-3)  # the weights matter there too


def test_row_weights_lift_a_rare_class_through_the_estimator(spark, tmp_path):
    """``KerasEstimator(weightCol=...)``: Spark ML's weight column, kept when the estimator is saved."""
    from pyspark.sql import functions as F

    from sparkeras.ml import KerasEstimator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    y = ((x[:, 0] + 0.8 * rng.normal(size=3000)) > 1.6).astype(np.int64)  # about 8% positives, overlapping
    ratio = float((y == 0).sum() / (y == 1).sum())
    frame = _frame(spark, x, y, np.ones(len(x))).withColumn("w", F.when(F.col("label") == 1, ratio).otherwise(1.0))

    def recall(estimator):
        rows = estimator.fit(frame).transform(frame).where("label = 1").select("prediction").collect()
        return float(np.mean([r.prediction == 1.0 for r in rows]))

    weighted = KerasEstimator(model=mlp(dim=8, classes=2, seed=3), epochs=3, numWorkers=2, weightCol="w")
    weighted.write().overwrite().save(str(tmp_path / "est"))
    loaded = KerasEstimator.load(str(tmp_path / "est"))
    assert loaded.getWeightCol() == "w"
    plain = KerasEstimator(model=mlp(dim=8, classes=2, seed=3), epochs=3, numWorkers=2)
    assert recall(loaded) > recall(plain) + 0.2


def test_scikit_learn_sample_weight_multiplies_class_weight(spark):
    """scikit-learn's rule: a row weighs its ``sample_weight`` times its class's weight."""
    from sparkeras.sklearn import KerasClassifier

    x, y = blobs(400, dim=4, classes=3, noise=0.6, seed=5)
    w = _weights(len(x), seed=4)
    folded = w * np.array([1.0, 3.0, 0.5], np.float32)[y]
    a = KerasClassifier(mlp(dim=4, classes=3, seed=1), epochs=2, num_workers=1, class_weight={0: 1.0, 1: 3.0, 2: 0.5},
                        seed=0).fit(x, y, sample_weight=w)
    b = KerasClassifier(mlp(dim=4, classes=3, seed=1), epochs=2, num_workers=1, seed=0).fit(x, y, sample_weight=folded)
    for got, want in zip(a.model_.get_weights(), b.model_.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    c = KerasClassifier(mlp(dim=4, classes=3, seed=1), epochs=2, num_workers=1, seed=0).fit(x, y)
    assert not np.allclose(a.model_.get_weights()[0], c.model_.get_weights()[0], atol=1e-3)


def test_bad_row_weights_are_refused_with_the_column_and_the_fix(spark):
    from pyspark.sql import functions as F

    x, y = blobs(64)
    w = _weights(len(x))
    sm = SparkModel(mlp(), num_workers=2)
    # Argument checks, before Spark does any work.
    with pytest.raises(InputError, match=r"Pass row weights once: weight_col= .* or sample_weight="):
        sm.fit(x, y, weight_col="w", sample_weight=w, verbose=0)
    with pytest.raises(InputError, match=r"class_weight cannot be combined with row weights .* fold the class "
                                         r"weights into the row weights"):
        sm.fit(x, y, sample_weight=w, class_weight={0: 2.0}, verbose=0)
    with pytest.raises(InputError, match=r"weight_col='w' names a column, but the data is numpy arrays; pass the "
                                         r"weights as sample_weight=array"):
        sm.fit(x, y, weight_col="w", verbose=0)
    with pytest.raises(InputError, match=r"sample_weight must hold one number per row \(shape \(rows,\)\), got an "
                                         r"array of shape \(64, 2\)"):
        sm.fit(x, y, sample_weight=np.ones((64, 2)), verbose=0)
    with pytest.raises(InputError, match=r"sample_weight has 10 weights but the data has 64 rows"):
        sm.fit(x, y, sample_weight=np.ones(10), verbose=0)
    with pytest.raises(InputError, match=r"sample_weight has 70 weights but the data has 64 rows"):
        sm.fit(x, y, sample_weight=np.ones(70), validation_split=0.25, verbose=0)  # checked before the split

    frame = _frame(spark, x, y, w).withColumn("name", F.lit("a"))
    with pytest.raises(InputError, match=r"sample_weight= takes an array for numpy data; for a DataFrame.*"
                                         r"pass weight_col="):
        sm.fit(frame, sample_weight=w, verbose=0)
    with pytest.raises(InputError, match=r"Column 'weights' \(weight_col\) is not in the data; the columns are "
                                         r"\['features', 'label', 'name', 'w'\]"):
        sm.fit(frame, weight_col="weights", verbose=0)
    with pytest.raises(InputError, match=r"weight column 'name' has type string; it must hold one number per row"):
        sm.fit(frame, weight_col="name", verbose=0)
    with pytest.raises(InputError, match=r"weight column 'label' also feeds \['dense_\d+'\]"):
        sm.fit(frame, weight_col="label", verbose=0)
    # Value checks, from the packing's statistics.
    with pytest.raises(InputError, match=r"In the training data, weight column 'w' holds negative weights \(down "
                                         r"to -1\); row weights must be >= 0"):
        sm.fit(frame.withColumn("w", frame.w - 1.0 - frame.w), weight_col="w", verbose=0)
    with pytest.raises(InputError, match=r"every row of weight column 'w' weighs 0"):
        sm.fit(frame.withColumn("w", frame.w * 0.0), weight_col="w", verbose=0)
    with pytest.raises(InputError, match=r"weight column 'w' holds 64 NaN or infinite values"):
        sm.fit(frame.withColumn("w", F.lit(float("nan"))), weight_col="w", verbose=0)
