"""``fit(class_weight=...)``: Keras' per-class loss weights, applied on the workers by every strategy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import assert_same_weights, blobs, clone, mlp, weighted_plain_fits
from sparkeras import AllReduce, InputError, SparkModel
from sparkeras.data.weights import row_weights

WEIGHTS = {0: 0.2, 3: 4.0, 7: 2.5}  # classes not named weigh 1, as in Keras


def test_row_weights_follow_keras_rule():
    ids = np.array([0, 3, 7, 5, 3])
    want = np.array([0.2, 4.0, 2.5, 1.0, 4.0], np.float32)
    np.testing.assert_array_equal(row_weights(ids, tuple(WEIGHTS.items())), want)
    np.testing.assert_array_equal(row_weights(np.eye(10)[ids], tuple(WEIGHTS.items())), want)  # one-hot
    np.testing.assert_array_equal(row_weights(ids[:, None].astype(np.float32), tuple(WEIGHTS.items())), want)


@pytest.mark.parametrize("strategy", ["averaging", "async"])
def test_one_worker_with_class_weight_equals_plain_fit(spark, strategy):
    """The weights reach the loss and the metrics exactly as ``model.fit(class_weight=...)`` applies them."""
    x, y = blobs(640, seed=3)
    model = mlp(seed=5)
    plain = weighted_plain_fits(model, x, y, class_weight=WEIGHTS)

    history = SparkModel(model, strategy=strategy, num_workers=1, seed=0).fit(
        x, y, epochs=2, batch_size=32, shuffle=False, verbose=0, class_weight=WEIGHTS)

    assert_same_weights(model, plain)
    key = "worker_loss" if strategy == "async" else "loss"  # async reports the center's loss, measured unweighted
    assert history.history[key][0] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)


def test_two_workers_with_class_weight_equal_one_process_with_the_global_batch(spark):
    b = 16
    x, y = blobs(2 * 20 * b, seed=21)
    n = len(x) // 2
    order = [w * n + r for s in range(n // b) for w in range(2) for r in range(s * b, (s + 1) * b)]
    model = mlp(seed=4, optimizer="sgd")
    plain = clone(model)
    plain.fit(x[order], y[order], batch_size=2 * b, epochs=1, shuffle=False, verbose=0, class_weight=WEIGHTS)

    history = SparkModel(model, strategy=AllReduce(learning_rate_scaling=None), num_workers=2, seed=0).fit(
        x, y, epochs=1, batch_size=b, shuffle=False, verbose=0, class_weight=WEIGHTS)

    assert_same_weights(model, plain)
    assert history.history["loss"][0] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)


def _recall_of_rare_class(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1)[y == 1] == 1))


def test_class_weight_lifts_a_rare_class_with_one_job_per_window(spark):
    """Three workers on two slots train window by window from a broadcast state; the weights apply there too."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    y = ((x[:, 0] + 0.8 * rng.normal(size=3000)) > 1.6).astype(np.int64)  # about 8% positives, overlapping
    assert 0.04 < y.mean() < 0.15

    def fit(class_weight):
        model = mlp(dim=8, classes=2, seed=3)
        SparkModel(model, num_workers=3, seed=0).fit(x, y, epochs=3, batch_size=32, verbose=0,
                                                      class_weight=class_weight)
        return _recall_of_rare_class(model, x, y)

    balanced = {0: 1.0, 1: float((y == 0).sum() / (y == 1).sum())}
    assert fit(balanced) > fit(None) + 0.2


def test_bad_class_weight_is_refused_before_any_work(spark):
    sm = SparkModel(mlp(), num_workers=2)
    x, y = blobs(64)
    with pytest.raises(InputError, match=r"class_weight must be a dict \{class id: weight\}"):
        sm.fit(x, y, class_weight=[1.0, 2.0], verbose=0)
    with pytest.raises(InputError, match=r"class_weight keys must be class ids .* got 'cat'.*StringIndexer"):
        sm.fit(x, y, class_weight={"cat": 2.0}, verbose=0)
    with pytest.raises(InputError, match=r"class_weight\[2\] must be a finite number >= 0, got -1"):
        sm.fit(x, y, class_weight={2: -1}, verbose=0)
    with pytest.raises(InputError, match=r"class_weight names class ids \[12\], but output 'dense_\d+' predicts "
                                         r"10 classes \(ids 0\.\.9\)"):
        sm.fit(x, y, class_weight={1: 2.0, 12: 3.0}, verbose=0)


def test_class_weight_needs_one_output(spark):
    inp = keras.Input((16,))
    model = keras.Model(inp, [keras.layers.Dense(10, activation="softmax", name="a")(inp),
                              keras.layers.Dense(1, name="b")(inp)])
    model.compile("adam", ["sparse_categorical_crossentropy", "mse"])
    x, y = blobs(64)
    df = spark.createDataFrame([(r.tolist(), int(c), float(c)) for r, c in zip(x, y)],
                               "features array<float>, la long, lb double")
    with pytest.raises(InputError, match=r"class_weight needs a model with one output, as in Keras; this one "
                                         r"has 2 \(\['a', 'b'\]\)"):
        SparkModel(model, num_workers=2).fit(df, label_col={"a": "la", "b": "lb"}, class_weight={0: 1.0}, verbose=0)
