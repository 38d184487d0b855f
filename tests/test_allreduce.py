"""strategy="allreduce": per-step gradient all-reduce in a Spark barrier stage, on real Spark and Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import blobs, clone, mlp
from sparkeras import AllReduce, InputError, SparkModel


def _global_batches(x, y, batch, workers=2):
    """The rows one process sees, batch by batch, when each of ``workers`` contiguous slices gives ``batch``."""
    n = len(x) // workers
    order = [w * n + r for s in range(n // batch) for w in range(workers) for r in range(s * batch, (s + 1) * batch)]
    return x[order], y[order]


def _bn_model(seed: int = 3):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16,)),
        keras.layers.Dense(32, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("make_model", [lambda: mlp(seed=4, optimizer="sgd"), _bn_model], ids=["mlp", "batchnorm"])
def test_two_workers_equal_one_process_with_the_global_batch(spark, make_model):
    b = 16
    x, y = blobs(2 * 20 * b, seed=21)  # 20 steps of 16 rows per worker
    model = make_model()
    plain = clone(model)
    gx, gy = _global_batches(x, y, b)
    plain.fit(gx, gy, batch_size=2 * b, epochs=1, shuffle=False, verbose=0)

    sm = SparkModel(model, strategy="allreduce", num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=1, batch_size=b, shuffle=False, verbose=0)

    assert int(sm.model.optimizer.iterations) == int(plain.optimizer.iterations) == 20
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):  # includes BatchNorm moving statistics
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert history.history["loss"][0] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)
