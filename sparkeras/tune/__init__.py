"""Hyperparameter search on Spark with Optuna: :func:`~sparkeras.tune.search.tune` and :func:`best_model`.

``sparkeras.tune`` is the function itself (bound in ``sparkeras/__init__.py``);
this package holds its parts.
"""

from sparkeras.tune.keras_tuner import HyperParameters, from_keras_tuner
from sparkeras.tune.search import best_model, tune

__all__ = ["HyperParameters", "best_model", "from_keras_tuner", "tune"]
