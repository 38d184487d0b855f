"""``class_weight``: Keras' per-class loss weights, for a fit whose labels never reach the driver.

``model.fit(class_weight={0: 1.0, 1: 5.0})`` turns each batch's labels into
per-row weights of the loss. Here each worker does that once for its whole
partition (:func:`row_weights`), and the weights travel with the partition's
other arrays, gathered by the same row indices as its batches: the training
steps of every backend and strategy then pass ``(x, y, sample_weight)`` to
the model, as ``fit`` does. Validation and ``evaluate`` stay unweighted, as
in Keras.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from sparkeras.errors import InputError

ClassWeights = tuple[tuple[int, float], ...]  # hashable, for the frozen task specs


def check_class_weight(class_weight: Any) -> ClassWeights | None:
    """``class_weight`` as sorted ``(class id, weight)`` pairs; an :class:`InputError` naming a bad entry."""
    if class_weight is None:
        return None
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise InputError(f"class_weight must be a dict {{class id: weight}}, as in Keras' fit, got {class_weight!r}.")
    pairs = []
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise InputError(f"class_weight keys must be class ids (integers >= 0), got {key!r}; "
                             "map string labels to ids first (e.g. StringIndexer).")
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) \
                or not math.isfinite(float(weight)) or weight < 0:
            raise InputError(f"class_weight[{int(key)}] must be a finite number >= 0, got {weight!r}.")
        pairs.append((int(key), float(weight)))
    return tuple(sorted(pairs))


def check_class_weight_fits(class_weight: ClassWeights | None, columns: Any) -> None:
    """The model side of ``class_weight``: one output, and class ids that output can predict."""
    if class_weight is None:
        return
    if len(columns.labels) != 1:
        raise InputError(f"class_weight needs a model with one output, as in Keras; this one has "
                         f"{len(columns.labels)} ({[b.name for b in columns.labels]}).")
    binding = columns.labels[0]
    classes = binding.classes or (2 if binding.unit_interval else None)
    unknown = [k for k, _ in class_weight if classes is not None and k >= classes]
    if unknown:
        raise InputError(f"class_weight names class ids {unknown}, but output {binding.name!r} predicts "
                         f"{classes} classes (ids 0..{classes - 1}); drop them or widen the output layer.")


def row_weights(labels: np.ndarray, class_weight: ClassWeights) -> np.ndarray:
    """Each row's weight, from its label, by Keras' rule.

    One-hot labels (a last axis of more than one) count by their largest
    entry; others are rounded to the nearest class id. Classes missing from
    ``class_weight`` weigh 1, as in Keras.
    """
    ids = np.asarray(labels)
    if ids.ndim > 1:
        ids = np.argmax(ids, axis=-1) if ids.shape[-1] != 1 else ids[..., 0]
    ids = np.round(ids.reshape(len(labels), -1)[:, 0]).astype(np.int64)
    weights = np.ones(len(ids), dtype=np.float32)
    for cls, weight in class_weight:
        weights[ids == cls] = weight
    return weights
