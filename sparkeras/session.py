"""Finding, or starting, the SparkSession that sparkeras works in."""

from __future__ import annotations

import os
import sys
from typing import Any

_LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
    "spark.driver.maxResultSize": "2g",
}


def get_spark(master: str | None = None, app_name: str = "sparkeras") -> Any:
    """Return the active SparkSession, or start an embedded one.

    An active session (``spark-submit``, a notebook, a test fixture) is used
    unchanged, so the same code runs on standalone, YARN or Kubernetes
    clusters. Without one, a session is started on ``master`` (default
    ``local[*]``) with Arrow on, the UI off and quiet logs. Python workers run
    the driver's interpreter and see the driver's ``KERAS_BACKEND``.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.master(master or "local[*]").appName(app_name)
    for key, value in _LOCAL_CONF.items():
        builder = builder.config(key, value)
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        builder = builder.config("spark.executorEnv.KERAS_BACKEND", backend)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def is_local(master: str) -> bool:
    """True when Spark runs its executor inside the driver (``local``, ``local[n]``).

    Its Python workers then share the driver's machine and disk; ``local-cluster``
    and real clusters do not count.
    """
    return master == "local" or master.startswith("local[")


def driver_host(spark: Any) -> str:
    """The address workers use to reach servers on the driver.

    Loopback when every process runs on this machine (``local``,
    ``local-cluster``); otherwise ``spark.driver.host``.
    """
    if spark.sparkContext.master.startswith("local"):
        return "127.0.0.1"
    return spark.sparkContext.getConf().get("spark.driver.host", "127.0.0.1")


def keras_backend() -> str:
    """The Keras backend the driver uses; workers are told to use the same."""
    import keras

    return keras.backend.backend()
