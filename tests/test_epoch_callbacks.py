"""Keras callbacks whose work Keras' ``fit`` does per batch or at ``on_train_begin``, in a sparkeras fit.

The batches run on the workers, so the driver calls epoch hooks only: Keras'
``BackupAndRestore`` resumes an interrupted fit where it stopped,
``TerminateOnNaN`` stops after the epoch whose loss is not finite, and a
callback that would act per batch is named in a warning, not skipped in silence.
"""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import SparkModel


class _Interrupt(keras.callbacks.Callback):
    """Stops a fit as a crash would, as the fourth epoch begins (Keras' own example of BackupAndRestore)."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 3:
            raise RuntimeError("interrupted")


def _fit_interrupted_then_resumed(fit, backup_dir) -> tuple:
    """Run ``fit(model, callbacks)`` until it is interrupted, then again on a fresh model; its history and weights."""
    model = mlp(seed=5)
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, [keras.callbacks.BackupAndRestore(str(backup_dir)), _Interrupt()])
    model = mlp(seed=5)
    history = fit(model, [keras.callbacks.BackupAndRestore(str(backup_dir))])
    return history, model.get_weights()


def test_backup_and_restore_resumes_an_interrupted_fit_where_keras_fit_resumes_it(spark, tmp_path):
    """The resumed fit trained all six epochs again from the first weights: the callback restores the weights
    and first epoch in ``on_train_begin``, after the job had taken its state."""
    x, y = blobs(600, seed=3)

    def plain(model, callbacks):
        return model.fit(x, y, epochs=6, batch_size=32, shuffle=False, verbose=0, callbacks=callbacks)

    def spark_fit(model, callbacks):
        return SparkModel(model, num_workers=1, seed=0).fit(x, y, epochs=6, batch_size=32, shuffle=False,
                                                            verbose=0, callbacks=callbacks)

    want, want_weights = _fit_interrupted_then_resumed(plain, tmp_path / "plain")
    got, got_weights = _fit_interrupted_then_resumed(spark_fit, tmp_path / "spark")
    assert got.epoch == want.epoch == [3, 4, 5]
    np.testing.assert_allclose(got.history["loss"], want.history["loss"], rtol=1e-5)
    for a, b in zip(got_weights, want_weights):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert not (tmp_path / "spark").exists()  # removed at the end of a completed fit, as Keras removes it


def test_terminate_on_nan_stops_after_the_epoch_whose_loss_is_not_finite(spark, capsys):
    x, y = blobs(600, seed=3)
    model = mlp(seed=5)
    weights = model.get_weights()
    weights[0][0, 0] = np.inf  # every loss from the first batch on is NaN, on every backend
    model.set_weights(weights)
    history = SparkModel(model, strategy="allreduce", num_workers=2, seed=0).fit(
        x, y, epochs=4, batch_size=32, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1 and np.isnan(history.history["loss"][0])
    assert "Epoch 1: Invalid loss, terminating training" in capsys.readouterr().out


def test_a_callback_that_acts_per_batch_is_named_before_the_fit_and_epoch_level_ones_are_not(spark, tmp_path,
                                                                                             caplog):
    x, y = blobs(200, seed=3)
    batches: list[int] = []
    quiet = [keras.callbacks.EarlyStopping("loss", patience=2), keras.callbacks.TensorBoard(str(tmp_path / "tb")),
             keras.callbacks.ModelCheckpoint(str(tmp_path / "m.keras")), keras.callbacks.CSVLogger(str(tmp_path / "c")),
             keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)]
    named = [keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: batches.append(batch)),
             keras.callbacks.ModelCheckpoint(str(tmp_path / "b.keras"), save_freq=5)]
    with caplog.at_level(logging.WARNING, logger="sparkeras"):
        SparkModel(mlp(seed=5), num_workers=2).fit(x, y, epochs=1, verbose=0, callbacks=quiet + named)
    assert [r.getMessage() for r in caplog.records] == [
        f"{name} acts in {hooks}, which a sparkeras fit does not call: its batches run on the workers, and the "
        "driver sees each epoch begin and end. Move that work to on_epoch_begin or on_epoch_end."
        for name, hooks in [("LambdaCallback", "on_train_batch_end"), ("ModelCheckpoint", "on_train_batch_end")]]
    assert batches == []


class _LoadAtStart(keras.callbacks.Callback):
    """Sets the model's weights as the fit begins, as a user's own restoring callback would."""

    def __init__(self, weights):
        super().__init__()
        self.weights = weights

    def on_train_begin(self, logs=None):
        self.model.set_weights(self.weights)


def test_weights_a_users_callback_sets_at_train_begin_are_the_ones_trained(spark):
    x, y = blobs(600, seed=3)
    start = mlp(seed=9).get_weights()
    plain = mlp(seed=5)
    plain.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[_LoadAtStart(start)])
    model = mlp(seed=5)
    SparkModel(model, num_workers=1, seed=0).fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0,
                                                 callbacks=[_LoadAtStart(start)])
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
