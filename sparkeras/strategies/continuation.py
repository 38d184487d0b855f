"""What a strategy carries from one fit of a model to the next fit of the same model.

Why. Keras keeps the optimizer's state across ``fit`` calls, so
``fit(epochs=2)`` then ``fit(epochs=4, initial_epoch=2)`` continues where
the first call stopped. A strategy's own state belongs to that optimizer:
model averaging's outer momentum, above all. A second fit used to start it
from zero, so a continued fit trailed the same fit run in one go (loss
0.2161 against 0.1995 after 4 epochs, 2 workers; 0.1996 with the momentum
carried alone). The state is what the strategy would write to a checkpoint
once its fit is over (:meth:`Strategy.checkpoint_state`): the outer
momentum and each worker's own optimizer state, taken back the way a
resumed fit takes it back, so the continued fit equals the one-go fit.
The driver keeps it between the fits: for averaging with Adam, about
``2 * num_workers + 1`` times the model's trainable weights, what a
checkpoint of the fit holds.

When. Only while the model holds exactly the weights the last fit left it
with, which a fingerprint of its variables checks. A model whose weights
were set or loaded in between, or a strategy object that several models
share (the folds of a ``CrossValidator``, the trials of a search), starts
afresh, as a first fit does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sparkeras.strategies.base import Strategy


def weights_fingerprint(model: Any) -> bytes:
    """A digest of the model's variables (their shapes and values)."""
    digest = hashlib.blake2b(digest_size=16)
    for variable in model.weights:
        value = np.ascontiguousarray(np.asarray(variable))
        digest.update(repr((value.shape, value.dtype.str)).encode())
        digest.update(memoryview(value).cast("B"))
    return digest.digest()


@dataclass(frozen=True)
class Continuation:
    """A finished fit's strategy state, kept for the next fit of the same model."""

    state: dict[str, list[np.ndarray]]
    fingerprint: bytes

    @classmethod
    def after_fit(cls, strategy: "Strategy", model: Any) -> "Continuation | None":
        """What ``strategy`` carries after a completed fit of ``model``; ``None`` when it carries nothing."""
        state = strategy.checkpoint_state()
        strategy.forget_finished_fit()
        if not state:
            return None
        kept = {name: [np.array(a, copy=True) for a in arrays] for name, arrays in state.items()}
        return cls(kept, weights_fingerprint(model))

    def resume(self, strategy: "Strategy", model: Any) -> bool:
        """Give ``strategy`` the kept state if ``model`` is as the last fit left it; whether it did."""
        if weights_fingerprint(model) != self.fingerprint:
            return False
        strategy.restore_checkpoint_state(self.state)
        return True
