"""A class-data sharing (CDS) archive of the driver JVM's classes, so an embedded session starts sooner.

Why. Starting the JVM of an embedded session and running its first SQL
job loads about 20,000 classes from Spark's jars, and the JVM parses and
verifies each one: on 2 cores, ``get_spark`` took 5.2-6.8 s and a first
``range().count()`` plus a cached DataFrame 4.3-4.9 s more, against
3.4-3.7 s and 3.0-3.4 s with the classes mapped from an archive. That is
2-4 s off every cold script, ``sparkeras demo`` (18.3 -> 15.2-15.9 s) and
``sparkeras train`` included. The JDK's own tool for this is a dynamic CDS
archive (JDK 13+): a JVM started with ``-XX:ArchiveClassesAtExit=F``
writes the classes it loaded to ``F`` when it exits, and later JVMs with
``-XX:SharedArchiveFile=F`` map them. The JVM checks the archive against
its own build and class path, and runs without it (silently, with
``-Xlog:cds*=off``) when they differ.

How. Writing the archive slows that JVM's own start by about 4 s, so the
user's session never writes it. When :func:`driver_java_options` finds no
archive for this JDK and Spark, it arranges for a separate process to
build one after this Python process exits: ``python -m
sparkeras.class_archive`` starts a driver JVM with the same options,
runs a small workload that touches what sparkeras uses (SQL, Arrow,
caching, Parquet, binary files, Python RDD and barrier jobs), and stops
it. (A tiny sparkeras fit, evaluation and prediction added to that
workload made no measurable difference, and cost 10 s more to build.) It runs at idle CPU priority (``SCHED_IDLE``), so it takes only cores
nobody else wants, holds a lock so that one build runs at a time, and
renames the finished file into place. The next session uses it. A build
that fails leaves a ``.failed`` mark, and none is tried for a day after.

Where. ``$SPARKERAS_CACHE_DIR``, else ``$XDG_CACHE_HOME/sparkeras``, else
``~/.cache/sparkeras``: one file of about 120-160 MB per JDK and Spark
install (an older one is removed when a new one is written).
``SPARKERAS_CLASS_ARCHIVE=0`` turns all of this off.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

ENABLED_VARIABLE = "SPARKERAS_CLASS_ARCHIVE"
QUIET_CDS = "-Xlog:cds*=off"
BUILD_DEADLINE_SECONDS = 900.0
RETRY_AFTER_FAILURE_SECONDS = 86400.0
_SMALLEST_ARCHIVE = 1 << 20
_build_requested = False


def cache_folder() -> str:
    """Where sparkeras keeps files worth keeping between runs."""
    explicit = os.environ.get("SPARKERAS_CACHE_DIR")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparkeras")


def enabled() -> bool:
    return os.environ.get(ENABLED_VARIABLE, "1").strip().lower() not in ("0", "false", "no", "off")


def archive_path() -> str | None:
    """This JDK's and Spark's archive file (which may not exist yet), or ``None`` when neither is found.

    The name carries a digest of what the archive depends on: the ``java``
    that ``spark-submit`` runs (``JAVA_HOME``, else ``PATH``) with its
    ``libjvm`` and its ``lib/modules``, and the folder, names and sizes of
    Spark's jars. A JDK update or another Spark gets a new file instead of
    one the JVM would refuse. ``None`` too for a cache folder whose path has
    whitespace, which Spark's Java options cannot carry.
    """
    java = os.path.join(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") \
        else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    java_home = os.path.dirname(os.path.dirname(os.path.realpath(java)))
    try:
        from pyspark.find_spark_home import _find_spark_home

        jars = os.path.join(_find_spark_home(), "jars")
        parts = [os.path.realpath(java), os.path.realpath(jars)]  # the archive records the jars' paths
        for name in ("lib/server/libjvm.so", "lib/modules"):
            found = os.path.join(java_home, name)
            if os.path.exists(found):
                stat = os.stat(found)
                parts.append(f"{name}:{stat.st_size}:{int(stat.st_mtime)}")
        parts += sorted(f"{entry.name}:{entry.stat().st_size}" for entry in os.scandir(jars))
    except Exception:  # noqa: BLE001 - no Spark home or jars: no archive, the JVM starts as usual
        return None
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    path = os.path.join(cache_folder(), f"spark-driver-{digest}.jsa")
    return None if any(c.isspace() for c in path) else path


def driver_java_options() -> str | None:
    """The driver JVM's options that map the archive, or ``None`` (and a build after this process) without one."""
    if not enabled():
        return None
    path = archive_path()
    if path is None:
        return None
    if os.path.isfile(path) and os.path.getsize(path) >= _SMALLEST_ARCHIVE:
        return f"-XX:SharedArchiveFile={path} {QUIET_CDS}"
    try:
        failed_recently = time.time() - os.path.getmtime(path + ".failed") < RETRY_AFTER_FAILURE_SECONDS
    except OSError:
        failed_recently = False
    if not failed_recently and _writable(os.path.dirname(path)):
        _build_after_exit(path)
    return None


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _build_after_exit(path: str) -> None:
    """Start the builder when this process exits: it never competes with this process's own work."""
    global _build_requested
    if _build_requested:
        return
    _build_requested = True
    atexit.register(start_build, path)


def start_build(path: str) -> subprocess.Popen | None:
    """Start ``python -m sparkeras.class_archive path`` detached, or ``None`` if it cannot start."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYSPARK_GATEWAY_", "_PYSPARK_"))}
    try:
        return subprocess.Popen([sys.executable, "-m", "sparkeras.class_archive", path], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    except OSError:
        return None


def build(path: str, deadline: float = BUILD_DEADLINE_SECONDS) -> bool:
    """Write the archive at ``path`` by running a driver JVM through a small workload; True once it is there.

    Returns False when another process is building it, or the build
    failed; a later session then tries again. The JVM writes into a
    temporary file beside ``path``, which is renamed only after the JVM
    has exited and the file has a plausible size.
    """
    import fcntl

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with open(path + ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        if os.path.isfile(path):
            return True
        for stale in glob.glob(os.path.join(folder, "spark-driver-*.partial")):  # a killed builder's
            with contextlib.suppress(OSError):
                os.remove(stale)
        partial = f"{path}.{os.getpid()}.partial"
        built = False
        try:
            _run_workload(partial, deadline)
            built = os.path.isfile(partial) and os.path.getsize(partial) >= _SMALLEST_ARCHIVE
            if built:
                os.replace(partial, path)
        finally:
            if os.path.exists(partial):
                os.remove(partial)
            if not built:
                open(path + ".failed", "w").close()
        if not built:
            return False
        if os.path.exists(path + ".failed"):
            os.remove(path + ".failed")
        mine = os.path.basename(path)
        for older in glob.glob(os.path.join(folder, "spark-driver-*")):
            if not os.path.basename(older).startswith(mine):  # another JDK's or Spark's archive, lock or mark
                with contextlib.suppress(OSError):
                    os.remove(older)
        return True


def _run_workload(partial: str, deadline: float) -> None:
    """Start a driver JVM that writes its classes to ``partial`` when it exits, use it, and let it exit."""
    import tempfile

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    from sparkeras.session import embedded_options

    options = embedded_options("local[2]", "sparkeras-class-archive")
    options["spark.driver.extraJavaOptions"] = " ".join(
        filter(None, [options.get("spark.driver.extraJavaOptions"), f"-XX:ArchiveClassesAtExit={partial}",
                      QUIET_CDS]))
    options.pop("spark.python.daemon.module", None)  # pyspark's own workers: no TensorFlow import, same JVM side
    conf = SparkConf()
    for key, value in options.items():
        conf.set(key, value)
    gateway = launch_gateway(conf, popen_kwargs={"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL})
    ends = time.monotonic() + deadline
    watchdog = threading.Timer(deadline, gateway.proc.kill)  # a stuck job fails the workload, not hangs it
    watchdog.daemon = True
    watchdog.start()
    try:
        sc = SparkContext(conf=conf, gateway=gateway)
        sc.setLogLevel("OFF")
        with tempfile.TemporaryDirectory() as scratch:
            _touch_what_sparkeras_uses(SparkSession(sc), scratch)
            sc.stop()
        gateway.shutdown()
        gateway.proc.stdin.close()  # the JVM exits when its stdin closes, and writes the archive then
        gateway.proc.wait(timeout=max(1.0, ends - time.monotonic()))
    except BaseException:
        gateway.proc.kill()
        raise
    finally:
        watchdog.cancel()


def _touch_what_sparkeras_uses(spark: Any, scratch: str) -> None:
    """Jobs whose classes a sparkeras session loads: the archive holds what they load."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    spark.range(1000).selectExpr("id % 7 AS k", "id").groupBy("k").count().collect()
    frame = spark.createDataFrame(pd.DataFrame({
        "features": [np.arange(4, dtype=np.float32) + i for i in range(256)],
        "label": np.arange(256) % 3, "w": np.ones(256)}))
    frame.cache().count()
    frame.mapInArrow(lambda batches: (b for b in batches), frame.schema).count()
    frame.toPandas()
    frame.write.parquet(os.path.join(scratch, "table"))
    spark.read.parquet(os.path.join(scratch, "table")).filter("label > 0").toPandas()
    with open(os.path.join(scratch, "blob.bin"), "wb") as f:
        f.write(b"\0" * 64)
    spark.read.format("binaryFile").option("pathGlobFilter", "*.bin").load(scratch).count()
    sc = spark.sparkContext
    table = sc.broadcast(list(range(16)))
    total = sc.accumulator(0)
    sc.parallelize(range(64), 2).mapPartitions(lambda rows: [sum(rows) + len(table.value)]).collect()
    sc.parallelize(range(2), 2).barrier().mapPartitions(lambda rows: [sum(rows)]).collect()
    sc.parallelize(range(8), 2).foreach(lambda x: total.add(x))
    pa.table({"x": [1]})  # pyarrow itself, so the workload fails here (not in the JVM) if it is missing


def main(argv: list[str]) -> int:
    """The builder process: idle CPU priority, and a deadline for all of it, JVM start included.

    At the deadline the builder's whole process group (its JVM and that
    JVM's Python workers with it) is killed, and its partial file removed.
    """
    import signal

    path = argv[0]
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        with contextlib.suppress(OSError):
            os.nice(19)
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # a group of its own to kill at the deadline (a session leader has one already)

    def give_up(*_: Any) -> None:
        with contextlib.suppress(OSError):
            os.remove(f"{path}.{os.getpid()}.partial")
        os.killpg(os.getpgid(0), signal.SIGKILL)

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(int(BUILD_DEADLINE_SECONDS) + 60)
    return 0 if build(path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
