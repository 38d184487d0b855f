"""Keras callbacks that know about the cluster: pass them in ``callbacks=`` to ``SparkModel.fit``.

They run on the driver, like every callback of a fit, and also receive
sparkeras' per-worker epoch figures (``on_epoch_figures``).
"""

from sparkeras.tracking.mlflow import MLflowLogger
from sparkeras.tracking.tensorboard import ClusterScalars

__all__ = ["ClusterScalars", "MLflowLogger"]
