"""Spark's Python daemon, with the Keras backend and Keras imported once, before it forks the workers.

Why. Spark starts Python workers by forking them from one daemon process
per executor (``pyspark.daemon``), and every worker then imports what its
task needs. For sparkeras that is the Keras backend and Keras: about 2.3 s
of CPU per worker for TensorFlow, and 3.4 s (JAX) or 5.3 s (PyTorch) of
wall time for a lone process on 2 cores. Spark
stops a worker that has been idle for one minute (a constant,
``PythonWorkerFactory.IDLE_WORKER_TIMEOUT_NS``), so a fit after a pause
paid the import again, and so did every worker a job needs beyond the
ones already started (a SQL query with two scoring UDFs forks four). Here
the daemon imports them once; every worker it forks starts with them
loaded (copy-on-write, so the pages are shared too), and a worker that
Spark restarts after a pause is ready at once. On its own, the daemon
gains a session's first fit nothing
(measured): the JVM creates Python workers under one lock per executor
(``SparkEnv.createPythonWorker`` is ``synchronized`` around the factory's
``create()``), so no Python task of that executor starts while the daemon
imports, about 3 s on one core.
That is why :func:`sparkeras.session.start_python_workers` starts the
workers when the session starts: the import then overlaps with the
driver's own work (reading and caching the data), and the first fit's
fixed cost fell from 7.4 s to 3.3 s (mlp task, ``bench/time_to_accuracy.py``).

In a local session :func:`sparkeras.get_spark` starts a process that does
this import while the JVM starts, and the daemon Spark launches hands its
role over to it (:mod:`sparkeras.worker.prestart`); where that process is
missing or refuses, the daemon imports itself as described here.

How to use it. :func:`sparkeras.get_spark` sets it for the sessions it
starts; any other session opts in with
``spark.python.daemon.module=sparkeras.worker.daemon`` (sparkeras must be
installed on the executors, as it must be anyway).

Why it is safe to fork after the import. No backend's import starts its
runtime; each starts it on first use, which is in the forked worker,
after :func:`sparkeras.worker.runtime.configure` has sized it to the
task's cores:

* TensorFlow 2.21 creates its thread pools and devices on first use;
* JAX creates no XLA client when imported (``xla_bridge._backends`` stays
  empty), and reads ``XLA_FLAGS`` only when its first backend starts
  (checked: an unknown flag set after the import stops that start, not
  the import);
* PyTorch starts no OpenMP pool when imported; its thread count is set in
  the worker with ``torch.set_num_threads``.

The only threads the imports start are OpenBLAS' and jemalloc's
(pyarrow's) idle pools, which both re-arm themselves across ``fork``
(checked with ``gdb`` for TensorFlow's import; after JAX's and PyTorch's
the same threads run, by name and number, and a model trained in two
workers forked after either import ends with the weights a fresh process
gives). Spark's own daemon
imports nothing before forking because it cannot know what a worker's
import starts; this daemon imports one known set of modules and nothing
else. JAX reads its compilation-cache settings when it is imported, so the
daemon sets them first (:func:`sparkeras.worker.runtime.use_jax_compilation_cache`).

What it does not preload, and why:

* a backend other than those three (``KERAS_BACKEND``, or Keras' config
  file, says which): what its import starts has not been checked;
* on a machine with an NVIDIA driver: CUDA must see each worker's own
  ``CUDA_VISIBLE_DEVICES``, which is only known after the fork.

In those cases, and if the import fails for any reason, the daemon runs
exactly as Spark's own and each worker imports the backend itself.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
from typing import Any, Callable, Iterator


def configured_backend() -> str:
    """The Keras backend this process's workers will use, read as Keras reads it, without importing Keras."""
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        return backend
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend") or "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def has_nvidia_driver() -> bool:
    """Whether this machine has an NVIDIA driver loaded, and so maybe GPUs that tasks will be given."""
    return os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/nvidiactl")


PRELOADED_BACKENDS = ("tensorflow", "jax", "torch")
"""The Keras backends whose import was checked to start nothing a fork would lose (see the module's docstring)."""


def backend_to_preload() -> str | None:
    """The backend this process's daemon imports before forking; ``None`` where each worker must import its own."""
    backend = configured_backend()
    if backend not in PRELOADED_BACKENDS or has_nvidia_driver():
        return None
    return backend


def preload(worker_module: bool = True) -> str | None:
    """Import the Keras backend, Keras and (with ``worker_module``) Spark's worker module; the backend preloaded.

    ``None`` when nothing was (a backend not checked, a GPU machine, or a
    failed import, which the workers will then meet and report themselves).
    """
    backend = backend_to_preload()
    if backend is None:
        return None
    gc.disable()
    try:
        from sparkeras.worker.runtime import (keras_without_extras, native_logs_wanted, native_stderr_silenced,
                                              quiet_native_logs, use_jax_compilation_cache)

        quiet_native_logs()
        if backend == "jax":
            use_jax_compilation_cache()
        with _stdout_kept_for_spark(), keras_without_extras(backend), \
                native_stderr_silenced(not native_logs_wanted()):
            importlib.import_module("keras")  # and the backend with it
            if worker_module:
                importlib.import_module("pyspark.worker")  # each forked worker imported it itself: 0.24 s of CPU
    except Exception:  # noqa: BLE001 - the workers import it themselves and report any error
        return None
    finally:
        _frozen_for_fork()
    return backend


def _frozen_for_fork() -> None:
    """Move every object made so far out of the collector's reach, as the ``gc`` documentation advises before ``fork``.

    Its recipe is ``gc.disable()`` early in the parent and ``gc.freeze()``
    right before forking: the children neither scan these objects again
    (a full collection of them took 0.24 s per worker) nor copy their pages
    by touching them. The collector stays off through the import, which
    then costs 2.3-2.5 s of CPU instead of 2.8-3.1 s, since importing
    TensorFlow makes half a million objects and each generation's threshold
    set off another scan of them. No ``gc.collect()`` first (0.16-0.33 s):
    the import's few cyclic leftovers stay frozen, which left the daemon's
    resident memory unchanged (642 MB either way). This is the daemon's
    share of a session's first fit: until it has imported, no Python task
    of its executor starts.
    """
    gc.freeze()
    gc.enable()


@contextlib.contextmanager
def _stdout_kept_for_spark() -> Iterator[None]:
    """While open, file descriptor 1 writes to stderr: the daemon's stdout carries only its port to the JVM."""
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def quiet_when_cut_short(worker: Callable[[Any, bool], int]) -> Callable[[Any, bool], int]:
    """Spark's worker body, minus the traceback Spark prints when the JVM stops reading a task early.

    ``df.limit(n).collect()``, ``take`` and ``first`` close a Python task's
    socket once they have their rows. The worker's last flush then meets a
    closed pipe, and Spark's daemon prints a ``BrokenPipeError`` traceback
    on the user's terminal for a query that succeeded (three of them for one
    ``limit(2)`` over a DataFrame made from Python rows). Here the worker
    ends quietly instead, not reused, as Spark's daemon would have ended it.
    """
    def run(sock: Any, authenticated: bool) -> int:
        try:
            return worker(sock, authenticated)
        except (BrokenPipeError, ConnectionResetError):
            return 1

    return run


def preload_worker_module() -> None:
    """Import Spark's worker module, frozen for ``fork`` as :func:`preload`'s imports are."""
    gc.disable()
    try:
        importlib.import_module("pyspark.worker")
    except Exception:  # noqa: BLE001 - each worker imports it and reports the error itself
        pass
    finally:
        _frozen_for_fork()


def serve() -> None:
    """Run Spark's daemon loop in this process, its workers ending quietly when a task is cut short."""
    from pyspark import daemon

    daemon.worker = quiet_when_cut_short(daemon.worker)
    daemon.manager()


def main() -> None:
    from sparkeras.worker.prestart import hand_over

    if hand_over():
        return  # a prestarted process, which imported as the JVM started, is the daemon now
    preload()
    serve()


if __name__ == "__main__":
    main()
