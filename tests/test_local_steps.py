"""The workers' local training loop equals ``model.fit`` on the same batches, traced or not."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import blobs, clone, mlp
from sparkeras.data.columns import resolve_columns
from sparkeras.data.sources import as_dataset
from sparkeras.worker.local_steps import LocalSteps


@pytest.mark.parametrize("backend", ["tensorflow", "other"], ids=["traced-loop", "train_on_batch"])
def test_local_steps_equal_fit_on_the_same_batches(spark, backend):
    x, y = blobs(200, seed=6)
    model = mlp(seed=9)
    plain = clone(model)
    order = np.random.default_rng(0).permutation(len(x))
    plain.fit(x[order], y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)  # 7 batches, the last of 8

    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(model, dataset.schema, dataset.features_col, dataset.label_col)
    steps = LocalSteps(model, [x, y.astype(np.int32)], columns, backend)
    model.reset_metrics()
    assert steps.train(order, 32, 0, 3) == 96  # three windows, as a worker runs them
    assert steps.train(order, 32, 3, 3) == 96
    assert steps.train(order, 32, 6, 3) == 8
    for got, want in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert int(model.optimizer.iterations) == 7
    got = {k: float(v) for k, v in model.get_metrics_result().items()}
    assert got["accuracy"] == pytest.approx(plain.history.history["accuracy"][0], abs=1e-6)
    assert got["loss"] == pytest.approx(plain.history.history["loss"][0], abs=1e-5)
