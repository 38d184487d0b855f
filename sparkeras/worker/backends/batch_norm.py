"""BatchNormalization moments over the global batch, for every backend.

Each synced layer's ``_moments`` is replaced by one that sums ``x``,
``x**2`` and the row count over the tasks through ``global_sum``, an op
whose gradient is, again, a sum over the tasks (the derivative of
everyone's loss reaches every task's rows). The moments are written with
``keras.ops``, so the arithmetic is the same on every backend; only
``global_sum`` is backend code. Masked inputs keep local moments.
"""

from __future__ import annotations

import math
from typing import Any, Callable


def batch_norm_layers(model: Any) -> list[Any]:
    import keras

    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def synchronize_batch_norm(model: Any, global_sum: Callable[[Any], Any]) -> list[Any]:
    """Make each BatchNormalization layer of ``model`` use global moments; returns the layers changed."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer._moments = _global_moments(layer, global_sum)
    return layers


def _global_moments(layer: Any, global_sum: Callable[[Any], Any]) -> Any:
    from keras import ops

    local_moments = type(layer)._moments.__get__(layer)

    def moments(inputs: Any, mask: Any) -> tuple[Any, Any]:
        if mask is not None:
            return local_moments(inputs, mask)
        axes = [a % len(inputs.shape) for a in layer._reduction_axes]
        kept = [d for i, d in enumerate(inputs.shape) if i not in axes]
        shape = ops.shape(inputs)
        count = ops.cast(math.prod(shape[a] for a in axes), inputs.dtype)
        s = ops.reshape(ops.sum(inputs, axes), [-1])
        sq = ops.reshape(ops.sum(ops.square(inputs), axes), [-1])
        total = global_sum(ops.concatenate([s, sq, ops.reshape(count, [1])], 0))
        k = math.prod(kept)
        n = ops.maximum(total[-1], 1.0)
        mean = total[:k] / n
        variance = ops.maximum(total[k:2 * k] / n - ops.square(mean), 0.0)
        return ops.reshape(mean, kept), ops.reshape(variance, kept)

    return moments
