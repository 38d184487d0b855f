"""Metric values as Keras' logs hold them: a number, or an array for a per-class metric.

Keras' ``F1Score`` and ``FBetaScore`` (with their default ``average=None``)
report one value per class, and Keras' ``fit`` and ``evaluate`` give them as
arrays in the logs and ``history``. Everything that carries or stores logs
(the history, a trial's reports, MLflow, plots, the command line) goes
through these helpers, so such a metric is kept as Keras keeps it, and
turned into numbers only where a store takes numbers alone.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

MetricValue = float | np.ndarray


def metric_value(value: Any) -> MetricValue:
    """A metric's result as a Python float, or a float array (a copy) when it has one value per class."""
    array = np.asarray(value)
    if array.ndim == 0:
        return float(array)
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32)  # astype copies


def to_json(value: Any) -> float | list | None:
    """A JSON-safe form of a metric value: non-finite numbers as ``None`` (read back by :func:`from_json`)."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        number = float(array)
        return number if math.isfinite(number) else None
    return [to_json(v) for v in array]


def from_json(value: Any) -> MetricValue:
    """Inverse of :func:`to_json`: ``None`` is NaN, a list is a float32 array."""
    if isinstance(value, list):
        return np.array([float("nan") if v is None else float(v) for v in value], dtype=np.float32)
    return float("nan") if value is None else float(value)


def flat_numbers(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """One number per name: a per-class metric ``f1_score`` as ``f1_score_0``, ``f1_score_1``, ...

    For stores and displays that take numbers only (MLflow's metrics). Other
    values that are not numbers are left out.
    """
    flat: dict[str, float] = {}
    for name, value in (logs or {}).items():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if array.ndim == 0:
            flat[name] = float(array)
        else:
            flat.update((f"{name}_{i}", float(v)) for i, v in enumerate(array.ravel()))
    return flat


def rounded(value: Any, digits: int) -> float | list | None:
    """A metric for a printed line or JSON: rounded, a per-class metric as a list (``None`` if not finite)."""
    plain = to_json(value)
    if isinstance(plain, list):
        return [None if v is None else round(v, digits) for v in plain]
    return None if plain is None else round(plain, digits)


def is_per_class(value: Any) -> bool:
    return np.asarray(value).ndim > 0
