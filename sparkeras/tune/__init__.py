"""Hyperparameter search on Spark with Optuna: :func:`~sparkeras.tune.search.tune` and :func:`best_model`.

``sparkeras.tune`` is the function itself (bound in ``sparkeras/__init__.py``);
this package holds its parts.
"""

from sparkeras.tune.search import best_model, tune

__all__ = ["best_model", "tune"]
