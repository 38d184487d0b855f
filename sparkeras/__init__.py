"""sparkeras: train and serve Keras 3 models on Apache Spark, where the data lives."""

from sparkeras.barrier import WorkerContext, run
from sparkeras.ensemble import Ensemble
from sparkeras.errors import InputError, SparkerasError, WorkerError
from sparkeras.inference.udf import register_udf
from sparkeras.model import SparkModel
from sparkeras.session import get_spark
from sparkeras.strategies import (
    ADAG, AEASGD, EAMSGD, EASGD, AllReduce, Asynchronous, DistributedOptimizer, Downpour, DynSGD, Hogwild,
    ModelAveraging, Strategy)
from sparkeras.tune.search import best_model, tune  # binds sparkeras.tune to the function, not the package

__version__ = "0.1.0"

__all__ = ["ADAG", "AEASGD", "EAMSGD", "EASGD", "AllReduce", "Asynchronous", "DistributedOptimizer", "Downpour",
           "DynSGD", "Ensemble", "Hogwild", "InputError", "ModelAveraging", "SparkModel", "SparkerasError", "Strategy",
           "WorkerError", "WorkerContext", "__version__", "best_model", "get_spark", "register_udf", "run", "tune"]
