"""sparkeras: train and serve Keras 3 models on Apache Spark, where the data lives."""

from sparkeras.barrier import WorkerContext, run
from sparkeras.errors import InputError, SparkerasError, WorkerError
from sparkeras.inference.udf import register_udf
from sparkeras.model import SparkModel
from sparkeras.session import get_spark
from sparkeras.strategies import (
    ADAG, AEASGD, EAMSGD, EASGD, AllReduce, Asynchronous, DistributedOptimizer, Downpour, DynSGD, Hogwild,
    ModelAveraging, Strategy)

__version__ = "0.1.0"

__all__ = ["ADAG", "AEASGD", "EAMSGD", "EASGD", "AllReduce", "Asynchronous", "DistributedOptimizer", "Downpour",
           "DynSGD", "Hogwild", "InputError", "ModelAveraging", "SparkModel", "SparkerasError", "Strategy", "WorkerError",
           "WorkerContext", "__version__", "get_spark", "register_udf", "run"]
