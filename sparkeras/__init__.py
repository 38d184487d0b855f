"""sparkeras: train and serve Keras 3 models on Apache Spark, where the data lives."""

from sparkeras.barrier import WorkerContext, run
from sparkeras.ensemble import Ensemble
from sparkeras.errors import (ClusterCapacityError, ExecutorEnvironmentError, FitCancelled, InputError, SparkerasError,
                              WorkerError)
from sparkeras.images import read_images, skipped_images
from sparkeras.inference.udf import register_udf
from sparkeras.model import SparkModel
from sparkeras.session import get_spark
from sparkeras.strategies import (
    ADAG, AEASGD, EAMSGD, EASGD, AllReduce, Asynchronous, DistributedOptimizer, Downpour, DynSGD, Hogwild,
    ModelAveraging, Strategy)
from sparkeras.tracking.plots import plot_history
from sparkeras.tune.keras_tuner import from_keras_tuner
from sparkeras.tune.search import best_model, tune  # binds sparkeras.tune to the function, not the package

__version__ = "0.1.0"

from sparkeras.session import start_workers_of_active_session as _start_workers  # noqa: E402
from sparkeras.session import start_workers_when_a_context_starts as _watch_contexts  # noqa: E402

_start_workers()  # a session the user started before importing sparkeras: its workers import TensorFlow now
_watch_contexts()  # and one started after it, as soon as it exists

__all__ = ["ADAG", "AEASGD", "EAMSGD", "EASGD", "AllReduce", "Asynchronous", "ClusterCapacityError",
           "DistributedOptimizer", "Downpour", "DynSGD", "Ensemble", "ExecutorEnvironmentError", "FitCancelled",
           "Hogwild", "InputError", "ModelAveraging", "SparkModel", "SparkerasError", "Strategy",
           "WorkerError", "WorkerContext", "__version__", "best_model", "from_keras_tuner", "get_spark",
           "plot_history", "read_images", "register_udf", "run", "skipped_images", "tune"]


def __getattr__(name: str):
    """``sparkeras.callbacks`` on first use: it imports Keras, which ``import sparkeras`` does not."""
    if name == "callbacks":
        import importlib

        return importlib.import_module("sparkeras.callbacks")
    raise AttributeError(f"module 'sparkeras' has no attribute {name!r}")
