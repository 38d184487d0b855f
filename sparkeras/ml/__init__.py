"""Spark ML integration: a Keras model as an Estimator / Model in Pipelines and CrossValidator, and
``ImageFeaturizer`` for transfer learning."""

from sparkeras.ml.estimator import KerasEstimator, KerasModel
from sparkeras.ml.featurizer import ImageFeaturizer

__all__ = ["ImageFeaturizer", "KerasEstimator", "KerasModel"]
