"""Row weights of the loss, for a fit whose labels never reach the driver.

``class_weight`` (per class): ``model.fit(class_weight={0: 1.0, 1: 5.0})``
turns each batch's labels into per-row weights of the loss. Here each worker
does that once for its whole partition (:func:`row_weights`).

A weight column (per row): ``weight_col=`` (Spark ML's ``weightCol``), or
``sample_weight=`` for numpy data as in Keras. It is packed with the other
columns; :func:`check_row_weights` checks the arguments before Spark starts,
and the packing checks the values (finite, at least 0, not all 0). Keras 3
refuses ``class_weight`` with ``sample_weight``, and so does sparkeras.

Either way the weights travel with the partition's other arrays, gathered by
the same row indices as its batches: the training steps of every backend and
strategy then pass ``(x, y, sample_weight)`` to the model, as ``fit`` does.
Validation stays unweighted, as for ``class_weight`` in Keras (Keras would
weigh a ``validation_split`` by ``sample_weight``; here the validation rows
need not carry the weight column). ``evaluate`` with a weight column weighs
its loss and metrics, as Keras' ``evaluate(sample_weight=...)``.
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


def check_row_weights(weight_col: Any, sample_weight: Any, data: Any, class_weight: Any = None) -> np.ndarray | None:
    """The ``weight_col``/``sample_weight`` arguments, checked before any work: ``sample_weight`` as a 1-D array.

    numpy ``data`` (an array, or a list or dict of them) has no column
    names, so it takes ``sample_weight``; named columns take ``weight_col``.
    """
    numpy_data = isinstance(data, (np.ndarray, Mapping, list, tuple))
    if weight_col is not None and sample_weight is not None:
        raise InputError("Pass row weights once: weight_col= (a column of the data) or sample_weight= (an array "
                         "for numpy data), not both.")
    if class_weight is not None and (weight_col is not None or sample_weight is not None):
        raise InputError("class_weight cannot be combined with row weights (weight_col/sample_weight), as in "
                         "Keras' fit; fold the class weights into the row weights instead, e.g. "
                         "F.col('w') * F.when(F.col('label') == 1, 5.0).otherwise(1.0).")
    if weight_col is not None:
        if not isinstance(weight_col, str) or not weight_col:
            raise InputError(f"weight_col must be the name of a numeric column, got {weight_col!r}.")
        if numpy_data:
            raise InputError(f"weight_col={weight_col!r} names a column, but the data is numpy arrays; pass the "
                             "weights as sample_weight=array (one per row), as in Keras.")
        return None
    if sample_weight is None:
        return None
    if not numpy_data:
        raise InputError("sample_weight= takes an array for numpy data; for a DataFrame, Parquet or pandas data, "
                         "pass weight_col='name of the column of row weights'.")
    weights = np.asarray(sample_weight)
    if weights.ndim == 2 and weights.shape[1] == 1:
        weights = weights[:, 0]
    if weights.ndim != 1 or weights.dtype.kind not in "biuf":
        raise InputError(f"sample_weight must hold one number per row (shape (rows,)), got an array of shape "
                         f"{weights.shape} and dtype {weights.dtype}.")
    return weights.astype(np.float32)
