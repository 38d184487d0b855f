"""Keras callbacks in a fit whose batches run on the workers.

The driver of a sparkeras fit sees each epoch begin and end; the batches run
in Spark tasks, so a callback's batch hooks (``on_train_batch_end``,
``on_batch_end``, ...) are never called. Keras' own callbacks that act per
epoch when so configured (``ModelCheckpoint`` and ``BackupAndRestore`` with
``save_freq="epoch"``, ``TensorBoard`` with ``update_freq="epoch"``) lose
nothing. ``TerminateOnNaN`` checks the loss after every batch; here it checks
each epoch's loss instead (:class:`NaNLossStop`). Any other callback that acts
per batch is named in a warning before the fit starts, rather than doing
nothing in silence.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras

from sparkeras.log import logger

BATCH_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_batch_begin", "on_batch_end")


def batch_hooks(callback: Any) -> list[str]:
    """The batch hooks ``callback`` acts in: its class's own, or functions given to a ``LambdaCallback``."""
    base = keras.callbacks.Callback
    return [hook for hook in BATCH_HOOKS
            if hook in vars(callback) or getattr(type(callback), hook, None) is not getattr(base, hook)]


def _acts_per_epoch(callback: Any) -> bool:
    """Whether a callback with batch hooks does all its work per epoch as configured (Keras', MLflow's)."""
    module = type(callback).__module__
    if module.startswith("sparkeras."):
        return True
    if isinstance(callback, (keras.callbacks.ModelCheckpoint, keras.callbacks.BackupAndRestore)):
        return callback.save_freq == "epoch"
    if isinstance(callback, keras.callbacks.TensorBoard):
        return callback.update_freq == "epoch" and not getattr(callback, "_start_batch", 0)
    if isinstance(callback, keras.callbacks.ProgbarLogger):
        return True  # sparkeras draws its own bar
    if module.startswith("mlflow."):
        return getattr(callback, "log_every_n_steps", None) is None
    return False


class NaNLossStop(keras.callbacks.Callback):
    """``TerminateOnNaN`` at epoch level: stops the fit after an epoch whose loss is NaN or infinite.

    Keras' callback stops at the first such batch; the driver sees the loss
    once per epoch, so the fit stops at that epoch's end, with the same
    message. The user's callback stays in the list, untouched.
    """

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            print(f"Epoch {epoch + 1}: Invalid loss, terminating training")
            self.model.stop_training = True


def may_set_weights_at_train_begin(callbacks: Sequence[Any]) -> bool:
    """Whether a callback may load weights in ``on_train_begin``: Keras' ``BackupAndRestore``, or one of the user's.

    Keras' and MLflow's other callbacks only reset their own counters
    there, so a fit without such a callback skips reading its model's
    state again (a copy of every weight and optimizer variable).
    """
    for callback in callbacks:
        if isinstance(callback, keras.callbacks.BackupAndRestore):
            return True
        module = type(callback).__module__
        if not module.startswith(("keras.", "sparkeras.", "mlflow.")) and (
                "on_train_begin" in vars(callback)
                or type(callback).on_train_begin is not keras.callbacks.Callback.on_train_begin):
            return True
    return False


def for_epoch_level(callbacks: Sequence[Any]) -> list[Any]:
    """``callbacks`` as the driver runs them: ``TerminateOnNaN`` checked per epoch, batch-only work named."""
    kept = []
    for callback in callbacks:
        kept.append(callback)
        if isinstance(callback, keras.callbacks.TerminateOnNaN):
            kept.append(NaNLossStop())
            continue
        hooks = batch_hooks(callback)
        if hooks and not _acts_per_epoch(callback):
            logger.warning(
                "%s acts in %s, which a sparkeras fit does not call: its batches run on the workers, and the "
                "driver sees each epoch begin and end. Move that work to on_epoch_begin or on_epoch_end.",
                type(callback).__name__, ", ".join(hooks))
    return kept
