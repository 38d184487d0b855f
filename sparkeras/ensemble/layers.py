"""The layers that combine an ensemble's members inside one Keras model."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="sparkeras")
class MajorityVote(keras.layers.Layer):
    """The share of members voting for each class: each member votes for its most probable class.

    A member with one sigmoid unit votes 1 when its output exceeds 0.5, and
    the output is then the share voting 1. The shares sum to 1, so the
    ensemble's prediction is their argmax; a tie goes to the lower class id.
    """

    def call(self, inputs: list[Any]) -> Any:
        ops = keras.ops
        classes = inputs[0].shape[-1]
        if classes == 1:
            votes = [ops.cast(x > 0.5, "float32") for x in inputs]
        else:
            votes = [ops.one_hot(ops.argmax(x, axis=-1), classes) for x in inputs]
        return ops.mean(ops.stack(votes), axis=0)

    def compute_output_shape(self, input_shape: list[Any]) -> Any:
        return input_shape[0]
