"""Spark ML integration: a Keras model as an Estimator / Model in Pipelines and CrossValidator."""

from sparkeras.ml.estimator import KerasEstimator, KerasModel

__all__ = ["KerasEstimator", "KerasModel"]
