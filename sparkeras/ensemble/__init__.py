"""Ensembles of Keras models trained in parallel on Spark: :class:`~sparkeras.ensemble.ensemble.Ensemble`."""

from sparkeras.ensemble.ensemble import Ensemble

__all__ = ["Ensemble"]
