"""Callbacks that set the learning rate on the driver's model steer every strategy's workers.

Keras' ``LearningRateScheduler`` (as an epoch begins) and ``ReduceLROnPlateau``
(as one ends) set the rate on the model ``fit`` was given: in sparkeras, the
driver's. The workers train with optimizer states of their own, so the rate
must travel to them, and the driver's must not be put back from theirs.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import blobs, mlp

STRATEGIES = [
    pytest.param("averaging", {"outer_momentum": 0.0}, 2, id="averaging"),
    pytest.param("averaging", {"outer_momentum": 0.0}, 3, id="averaging-one-job-per-window"),  # 3 > 2 slots
    pytest.param("averaging", {"learning_rate_scaling": "linear"}, 2, id="averaging-workers-rate"),
    pytest.param("averaging", {"learning_rate_scaling": "linear"}, 3, id="averaging-workers-rate-per-window"),
    pytest.param("async", {}, 2, id="async"),
    pytest.param("allreduce", {}, 2, id="allreduce"),
]


class _Record(keras.callbacks.Callback):
    """The weights before training and after each epoch, and the learning rate at each epoch's end."""

    def on_train_begin(self, logs=None):
        self.weights = [self.model.get_weights()]
        self.rates = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())
        self.rates.append(float(np.asarray(self.model.optimizer.learning_rate)))


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("strategy, options, workers", STRATEGIES)
def test_a_scheduled_rate_reaches_every_worker(spark, strategy, options, workers):
    """Rate 0 in epochs 1 and 3 and 0.01 in epoch 2: with Adam, only epoch 2 may move the weights.

    With the compiled rate (0.01) left in the workers' own optimizer states,
    epochs 1 and 3 train as well; the one-worker-per-window path, which
    ships the whole state every window, is checked beside the others.
    """
    from sparkeras import SparkModel

    x, y = blobs(512)
    model = mlp(optimizer=keras.optimizers.Adam(0.01))
    record = _Record()
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, rate: 0.01 if epoch == 1 else 0.0)
    SparkModel(model, strategy=strategy, num_workers=workers, **options).fit(
        x, y, epochs=3, batch_size=32, verbose=0, callbacks=[schedule, record])

    before, first, second, third = record.weights
    assert record.rates == [0.0, pytest.approx(0.01), 0.0]
    assert _same(before, first), "epoch 1 trained at the compiled rate instead of the scheduled 0"
    assert not _same(first, second), "epoch 2, at rate 0.01, did not train"
    assert _same(second, third), "epoch 3 trained at a rate left from epoch 2 instead of the scheduled 0"


def test_reduce_lr_on_plateau_steps_down_as_under_model_fit(spark):
    """The driver's rate is not put back from the workers' states at each epoch's end."""
    from sparkeras import SparkModel

    x, y = blobs(512)

    def reduce():  # min_delta 10: no epoch after the first counts as an improvement
        return keras.callbacks.ReduceLROnPlateau("loss", factor=0.1, patience=1, min_delta=10.0)

    plain, distributed = _Record(), _Record()
    mlp(optimizer=keras.optimizers.Adam(0.01)).fit(x, y, epochs=4, batch_size=32, verbose=0,
                                                   callbacks=[reduce(), plain])
    model = mlp(optimizer=keras.optimizers.Adam(0.01))
    SparkModel(model, strategy="averaging", num_workers=2).fit(
        x, y, epochs=4, batch_size=32, verbose=0, callbacks=[reduce(), distributed])

    assert plain.rates[-1] < plain.rates[0] / 100  # the plain fit stepped down twice or more
    assert distributed.rates == pytest.approx(plain.rates, rel=1e-6)
    assert float(np.asarray(model.optimizer.learning_rate)) == pytest.approx(plain.rates[-1], rel=1e-6)
