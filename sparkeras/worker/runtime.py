"""State that lives as long as a Spark Python worker process.

Spark reuses Python workers across tasks (``spark.python.worker.reuse``), so
expensive things are done once per process, not once per task: limiting the
backend's thread pools to the cores the task was given (TensorFlow would
otherwise start one thread per core of the machine, and two tasks on two cores
would fight over four), making only the task's GPUs visible, and
deserialising the Keras model.

GPUs. When tasks request GPUs (``spark.task.resource.gpu.amount``), Spark
gives each task addresses (``TaskContext.resources()["gpu"]``).
:func:`configure` makes only those visible (``CUDA_VISIBLE_DEVICES``) before
the backend is imported, which is the one moment every backend reads it:
TensorFlow would otherwise reserve memory on every GPU of the machine, and
JAX and PyTorch would put every task on GPU 0. With no GPUs requested
nothing changes.

A reused worker keeps the GPUs of its first task, because a started backend
cannot change its devices. Spark hands a task whichever idle Python worker
comes first, so a later task may be given other addresses than its worker's
(a debug message names both). The executor's first workers started
together, on distinct GPUs, so tasks that run at once still use distinct
GPUs while Spark keeps one worker per GPU. Spark starts one more when a
task begins before an earlier task's worker is handed back, pinned to that
task's GPU, and two workers can then share one. Only
``spark.python.worker.reuse=false`` (a fresh worker per task, at the cost
of importing the backend each time) makes every task use its own addresses.
So that two workers on one GPU both run, TensorFlow in a worker given GPUs
takes GPU memory as it needs it (``TF_FORCE_GPU_ALLOW_GROWTH``, unless the
user set it), as Horovod advises for one process per GPU, instead of
taking nearly all of it when it starts (Keras itself sets it for the
other backends, whose workers may import TensorFlow too).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

from sparkeras.serialization import ModelSpec, refresh_derived_state

_MODEL_CACHE_SIZE = 3
_models: "OrderedDict[str, Any]" = OrderedDict()
_copies: dict[Any, Any] = {}  # "key": the architecture; 1, 2...: more instances of it (model(copy=...))
_inference: "OrderedDict[str, tuple[Any, str]]" = OrderedDict()
_inference_stats: "OrderedDict[str, dict[str, int]]" = OrderedDict()
_STATS_KEPT = 64
_configured_threads: int | None = None
_visible_gpus: tuple[str, ...] | None = None
# Held while a warm-up thread imports the backend and builds a model; every entry point waits for it.
_lock = threading.RLock()
_warming: set[str] = set()
_imported_early = False
# How long a start-up task (the session's, or a fit's warm-up) keeps its Python worker: returned at once, the
# executor hands it the next task of the same job and the slot's other worker is never forked. A model's build
# takes 0.1-0.3 s once the backend is imported.
HOLD_SECONDS = 0.5


def task_cpus() -> int:
    """The CPU cores Spark gave the running task (``spark.task.cpus``)."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    cpus = getattr(ctx, "cpus", None) if ctx is not None else None
    try:
        return max(1, int(cpus())) if callable(cpus) else 1
    except Exception:  # older Spark or no task context
        return 1


def task_gpus() -> tuple[str, ...] | None:
    """The GPU addresses Spark assigned the running task; ``None`` when it requested none."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    try:
        info = ctx.resources().get("gpu") if ctx is not None else None
    except Exception:  # noqa: BLE001 - no resource information in this Spark or context
        return None
    return tuple(info.addresses) if info is not None else None


def visible_gpus() -> tuple[str, ...] | None:
    """The GPUs this worker's backend was started with; ``None`` when no task asked for GPUs."""
    return _visible_gpus


def configure(backend: str, cpus: int | None = None, gpus: tuple[str, ...] | None = None) -> None:
    """Select the Keras backend, size its thread pools and pick its GPUs, before first use.

    Thread pools and visible devices can only be set before the backend
    starts, so this takes effect in the first task of each Python worker;
    later calls only check that the task's GPUs are still the worker's.
    """
    with _lock:
        _configure(backend, cpus or task_cpus(), gpus if gpus is not None else task_gpus())


def _check_gpus(gpus: tuple[str, ...] | None) -> None:
    if gpus is None or gpus == _visible_gpus:
        return
    from sparkeras.log import logger

    logger.debug("This Python worker's backend started on GPU(s) %s; this task was given %s and trains on %s.",
                 ",".join(_visible_gpus or ()) or "none", ",".join(gpus), ",".join(_visible_gpus or ()) or "none")


def _configure(backend: str, cpus: int, gpus: tuple[str, ...] | None = None) -> None:
    global _configured_threads, _visible_gpus
    if _configured_threads is not None:
        check_backend(backend, importlib.import_module("keras").backend.backend())
        _check_gpus(gpus)
        return
    keep_scratch_with_the_executor()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # see the module: two workers may share a GPU
        _visible_gpus = gpus
    os.environ["KERAS_BACKEND"] = backend
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(cpus)
    show_native = native_logs_wanted()
    quiet_native_logs()
    if backend == "jax":  # read when jax is imported
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={cpus}".strip()
        use_jax_compilation_cache()
    with keras_without_extras(backend), native_stderr_silenced(not show_native):
        try:
            keras = importlib.import_module("keras")  # and the backend with it
        except ImportError as error:
            raise backend_missing(backend, error) from error
    check_backend(backend, keras.backend.backend())
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(cpus)
            tf.config.threading.set_inter_op_parallelism_threads(cpus)
        except RuntimeError:  # the runtime was already initialised in this process
            pass
    elif backend == "torch":
        import torch

        torch.set_num_threads(cpus)
    freeze_imported_objects()
    _configured_threads = cpus


JAX_CACHE_MAX_BYTES = 2**30
JAX_CACHE_MIN_COMPILE_SECONDS = 0.0


def jax_compilation_cache_dir() -> str | None:
    """This user's folder for JAX's persistent compilation cache, made private; ``None`` where it cannot be.

    ``$XDG_CACHE_HOME/sparkeras/jax`` (``~/.cache/sparkeras/jax``). JAX
    runs what it finds there as compiled code, so the folder must be this
    user's alone: created ``0700``, and refused when another user owns it or
    others may write to it.
    """
    import stat

    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(root, "sparkeras", "jax")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError:
        return None
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022
    return path if private else None


def use_jax_compilation_cache() -> None:
    """Keep the JAX programs a worker compiles on disk, for every worker of this user (before JAX's import).

    Why. ``jax.jit`` compiles once per input shape and process: a worker's
    training window for each partition size it meets, its last short batch,
    its evaluation. A refit's tasks land on whichever Python worker is free,
    so one that had compiled for another partition's size compiled again:
    2.3 s in one refit of five (JAX ``averaging`` on ``local[2]``, 1,797
    rows), and 2-8 s a refit on a standalone cluster of two 2-core hosts
    with 4 workers. JAX's own persistent cache (its ``jax_compilation_cache_*``
    settings) lets a worker load what any worker of the machine compiled:
    that refit took 0.4-0.9 s, and a new session's first fit 2.2 s instead
    of 4.0-4.3 s, its first epoch 0.9-1.1 s instead of 2.8 s.

    Every program is kept (:data:`JAX_CACHE_MIN_COMPILE_SECONDS` is 0, where
    JAX's default keeps only those that took a second): a cold worker also
    compiles many small ones (initializers, broadcasts), each quick, and
    with a 0.1 s floor a new session's first fit still took 4.5 s. The
    folder is held to :data:`JAX_CACHE_MAX_BYTES`, least recently used
    first (a session of the suite's models left 260 KB). That bound
    makes JAX lock the folder around each read and write (with the
    ``filelock`` package), so no worker reads an entry another is still
    writing; without ``filelock`` there is no cache. A
    ``JAX_COMPILATION_CACHE_DIR`` of the user's is kept as it is, and an
    empty one (``spark.executorEnv.JAX_COMPILATION_CACHE_DIR=``) turns the
    cache off.
    """
    if "JAX_COMPILATION_CACHE_DIR" in os.environ or importlib.util.find_spec("filelock") is None:
        return
    path = jax_compilation_cache_dir()
    if path is None:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", str(JAX_CACHE_MIN_COMPILE_SECONDS))
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(JAX_CACHE_MAX_BYTES))


def import_backend_early(backend: str | None = None, hold_seconds: float = HOLD_SECONDS) -> str | None:
    """Executor side, when the session starts: import the backend in a worker whose daemon did not preload it.

    Why. :mod:`sparkeras.worker.daemon` imports the backend before it forks
    the workers, but not every session's workers fork from it (a cluster
    session the user started keeps Spark's own daemon), and it preloads
    nothing on a machine with an NVIDIA driver or for a backend it has not
    checked. Each such worker imported its backend in its first real task:
    2.1-2.3 s for JAX and several seconds for PyTorch, measured in a
    session's first prediction, where no warm-up overlaps it. Here the
    import runs in the task :func:`sparkeras.session.start_python_workers`
    gives each worker as the session starts, after the fork, as the first
    task's would. Not on a machine with an NVIDIA driver, where a worker's
    GPUs are those its first real task is given. Returns the backend
    imported, or ``None``.

    ``backend`` is the driver's: on a cluster the executors do not have the
    driver's ``KERAS_BACKEND``, and a worker that imported the backend its
    own environment named (TensorFlow) refused the driver's JAX fit.

    A worker that imported in an earlier task of the session's start keeps
    its task for ``hold_seconds``: returned at once, the executor handed it
    the next task of the same wave, and the slot's other worker was never
    forked (seen in a probe: the session's first prediction then imported
    JAX in a third worker).
    """
    global _imported_early
    from sparkeras.worker.daemon import configured_backend, has_nvidia_driver

    if _imported_early:
        time.sleep(hold_seconds)
        return None
    if "keras" in sys.modules or has_nvidia_driver():
        return None  # preloaded by the daemon, or a GPU machine
    backend = backend or configured_backend()
    configure(backend)
    _imported_early = True
    return backend


def imported_early() -> bool:
    """Whether this worker imported its backend in the session's start (:func:`import_backend_early`)."""
    return _imported_early


def keep_scratch_with_the_executor() -> None:
    """Put this worker's temporary files in a folder of the executor's local directory, which Spark removes.

    Why. TensorFlow's autograph writes one source file per traced function
    (``__autograph_generated_file*.py``, a few per model) to the temporary
    directory and removes them at interpreter exit, from ``atexit``. Spark
    ends its Python workers with ``os._exit`` or ``SIGKILL``, so that never
    runs: every worker left its files behind, 10 for one small fit and
    predict, and 25,000 in this machine's ``/tmp`` after some days of tests.
    Spark gives each worker its executor's local directories
    (``SPARK_LOCAL_DIRS``, the block manager's), and deletes them when the
    executor stops, as YARN and Kubernetes delete their containers' folders.
    The user's own functions in this worker get the same scratch space, on
    the disk that ``spark.local.dir`` chose for scratch. Outside a Spark
    worker, or when that directory cannot be written, nothing changes.
    """
    import tempfile

    local = (os.environ.get("SPARK_LOCAL_DIRS") or "").split(",")[0]
    if not local or not os.path.isdir(local):  # Spark's Python runner sets it for its workers only
        return
    try:
        tempfile.tempdir = tempfile.mkdtemp(prefix="sparkeras-worker-", dir=local)
    except OSError:
        pass


def freeze_imported_objects() -> None:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``).

    Spark's daemon runs a full ``gc.collect()`` in a reused Python worker
    after every task, before the worker takes the next one. With a backend
    and Keras imported that is about half a million objects: 0.24 s of CPU
    per task, measured, and a per-epoch job's next task waited for it. The
    objects alive right after the import are modules, classes and
    functions that live as long as the process, so the collector gains
    nothing by scanning them again; freezing them makes the per-task
    collection scan only what tasks created (what ``gc.freeze`` is for, as
    its documentation says for processes that fork). Objects created later
    (models, data) are collected as before. Called once per process.
    """
    import gc

    gc.collect()
    gc.freeze()


def check_backend(wanted: str, loaded: str) -> None:
    """Fail clearly when this worker's Keras was imported with another backend than the fit's.

    Keras picks its backend once per process, when it is first imported. A
    worker forked from sparkeras' preloading daemon
    (:mod:`sparkeras.worker.daemon`), or one that imported JAX or PyTorch
    as the session started (:func:`import_backend_early`), has the backend
    ``KERAS_BACKEND`` named then; a driver that switched backends after
    that would otherwise train another backend's model.
    """
    if wanted == loaded:
        return
    from sparkeras.errors import InputError

    raise InputError(
        f"This fit uses the {wanted!r} Keras backend, but its Python worker already imported Keras with "
        f"{loaded!r} (workers forked from spark.python.daemon.module=sparkeras.worker.daemon preload the backend "
        f"that KERAS_BACKEND named when the SparkSession started). Set KERAS_BACKEND={wanted} before starting "
        f"the SparkSession, or start it without that setting.")


def backend_missing(backend: str, error: ImportError) -> Exception:
    """The error for a worker whose Python cannot import the driver's Keras backend.

    An ``InputError``, so the fit stops at its first job instead of
    relaunching an epoch that cannot succeed; the message names the extra.
    """
    from sparkeras.errors import InputError

    missing = (error.name or "").split(".")[0] or backend
    if missing not in ("tensorflow", "jax", "jaxlib", "torch", backend):
        return error
    import platform
    import sys

    install = "sparkeras" if backend == "tensorflow" else f"sparkeras[{backend}]"  # TensorFlow is a dependency
    return InputError(
        f"The driver trains with KERAS_BACKEND={backend!r}, but the Python of this Spark executor "
        f"({platform.node()}, {sys.executable}) cannot import {missing!r}: install it on every executor with "
        f"pip install '{install}', or run the driver with a backend the executors have.")


DEBUG_ENV = "SPARKERAS_DEBUG"


def native_logs_wanted() -> bool:
    """Whether the user asked to see the backend's native start-up logs.

    ``SPARKERAS_DEBUG=1`` (set by the CLI's ``--debug``; on a cluster, pass
    it as ``spark.executorEnv.SPARKERAS_DEBUG``), or their own
    ``TF_CPP_MIN_LOG_LEVEL=0`` (TensorFlow's "show everything" level).

    Level 1 hides INFO lines, and it is what JAX sets on import
    (``os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')``), and TensorFlow
    imports JAX when it is installed. A driver that imported TensorFlow
    before starting its ``SparkContext`` therefore handed its Python workers
    a 1 they never asked for, and every cold worker printed its start-up
    lines on the user's terminal (measured with the Elephas README script).
    """
    return debug_asked() or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"


def debug_asked() -> bool:
    """Whether ``SPARKERAS_DEBUG`` asks for debug output (the CLI's ``--debug`` sets it)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def quiet_native_logs() -> None:
    """TensorFlow's C++ logs at errors only (``TF_CPP_MIN_LOG_LEVEL=2``), unless the user asked for more.

    Set before the backend's import, which reads it. A level the process
    inherited is kept, except 1: JAX sets it on import, and TensorFlow
    imports JAX when it is installed (:func:`native_logs_wanted`), so a
    driver that imported Keras before its session handed its workers a 1
    nobody asked for, and each worker printed TensorFlow's runtime warnings
    on the user's terminal (a float64 model: "Not handling type DT_DOUBLE",
    two lines per worker and traced function). ``SPARKERAS_DEBUG`` keeps it.
    """
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if level is None or (level == "1" and not debug_asked()):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"


@contextlib.contextmanager
def native_stderr_silenced(silence: bool = True) -> Iterator[None]:
    """While open, the process's file descriptor 2 goes to ``/dev/null``.

    Importing TensorFlow 2.21 prints its absl and oneDNN start-up lines
    (``All log messages before absl::InitializeLog()...``, ``oneDNN custom
    operations are on``) from C++, before its logging is set up, so
    ``TF_CPP_MIN_LOG_LEVEL`` and absl's settings do not hold them back
    (measured: 4 lines with every level). In local mode a Python worker's
    stderr is the user's terminal, and every cold worker printed them. Only
    the import runs inside this; an import error is raised as usual, after
    stderr is back.
    """
    if not silence:
        yield
        return
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(quiet, 2)
        yield
    finally:
        try:
            sys.stderr.flush()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(quiet)


def import_keras_quietly(debug: bool = False) -> None:
    """Import Keras and its backend now, without the backend's native start-up lines unless ``debug``.

    TensorFlow writes its absl and oneDNN lines from C++ while it imports,
    whatever ``TF_CPP_MIN_LOG_LEVEL`` says (4 lines on the terminal before
    the first epoch of ``sparkeras demo``). Where that import is sparkeras'
    own (the CLI, the demo, the benchmarks' plain side) they are noise.
    Only this process's stderr is closed, for the import alone: a JVM or
    Python worker started before or after keeps its own and prints as
    usual (one started during the import would inherit the closed one,
    so nothing is started from here meanwhile).
    """
    if debug:
        return
    import gc

    collecting = gc.isenabled()
    gc.disable()  # as the workers' daemon imports (sparkeras.worker.daemon): 2.3-2.5 s of CPU, not 2.8-3.1 s
    try:
        with native_stderr_silenced():
            importlib.import_module("keras")
    finally:
        if collecting:
            gc.enable()


# Imported by ``import keras`` when installed, for its scikit-learn wrappers, image-gallery
# plotting and notebook file editor; a Spark worker uses none of them.
KERAS_EXTRAS = ("sklearn", "matplotlib", "IPython")


@contextlib.contextmanager
def keras_without_extras(backend: str = "tensorflow") -> Iterator[None]:
    """While it is open, imports of the optional packages Keras loads for features workers never use fail.

    With scikit-learn, matplotlib and IPython installed (as on most data
    platforms, and with sparkeras' ``demo`` and ``test`` extras), importing
    Keras (or TensorFlow, which imports Keras) imports all three: measured
    4.8-5.7 s against 3.1-3.3 s without them, on 2 busy cores, and every
    cold Python worker pays it before its first step. Likewise TensorFlow
    imports JAX when it is installed (for TF Lite's JAX conversion): about
    1 s more per import (5.4-5.6 s against 6.4-6.8 s measured), so JAX is
    hidden too unless it is the backend. Only the import of the backend and
    Keras runs inside this, so a user's own code in the worker (a custom
    layer's module, say) imports them as usual afterwards; Keras'
    scikit-learn wrappers and plotting utilities, and TF Lite's JAX
    conversion, are then unavailable in that worker only. A process that
    already imported Keras is left alone.
    """
    import sys

    extras = KERAS_EXTRAS if backend == "jax" else KERAS_EXTRAS + ("jax",)
    hidden = [] if "keras" in sys.modules else [name for name in extras if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # makes "import name" raise ImportError
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def model(spec: ModelSpec, copy: int = 0) -> Any:
    """The compiled Keras model for ``spec``, built once per Python worker.

    ``copy`` > 0: another instance of it, for the partitions that one task
    trains side by side in threads of its own (:func:`sparkeras.worker.tasks.run_grouped`).
    Only the copies of the latest architecture asked for are kept.
    """
    key = spec.training_key
    spec.in_its_floatx()
    if copy:
        with _lock:
            if _copies.get("key") != key:
                _copies.clear()
                _copies["key"] = key
            if copy not in _copies:
                _copies[copy] = spec.build()
            return _copies[copy]
    with _lock:
        cached = _models.get(key)
        if cached is not None:
            _models.move_to_end(key)
            return cached
        built = spec.build()
        _models[key] = built
        while len(_models) > _MODEL_CACHE_SIZE:
            _models.popitem(last=False)
        return built


@dataclass(frozen=True)
class WarmUp:
    """What a fit's training tasks will run, so that the warm-up prepares that and nothing else.

    ``loop``: ``"window"`` for the traced window loop of
    :mod:`sparkeras.worker.local_steps` (averaging and the parameter-server
    rules), ``"gradients"`` for the split gradient step of the all-reduce
    (:mod:`sparkeras.worker.backends`). ``evaluation``: the fit has validation data, so the evaluation
    loop is traced too. ``batch_size``: the rows of a step, for a loop that
    is rehearsed once on zeros of that shape. ``hold_seconds``: how long
    the warm-up task may keep its Python worker waiting for the model's build
    (:func:`sparkeras.worker.tasks.warm_up`).
    """

    loop: str = "window"
    sync_batch_norm: bool = False
    evaluation: bool = False
    batch_size: int | None = None
    hold_seconds: float = 0.0


def warm_up(spec: ModelSpec, backend: str, columns: Any, weighted: bool = False,
            plan: WarmUp = WarmUp()) -> threading.Event:
    """Start importing the backend, building the model and tracing its training loop, in the background.

    Called by the short warm-up job that ``fit`` starts before packing
    (:func:`sparkeras.training.start_warm_up`); Spark hands the training
    tasks the same, reused, Python workers. A cold worker spends seconds
    importing TensorFlow and building and tracing the model; done here, that
    overlaps with packing instead of delaying the first epoch. Training tasks
    wait for it through :func:`configure` and :func:`model`, which take the
    same lock. Once per model and process; a training task that got the
    lock first has built the model itself, and the warm-up then does
    nothing. Errors are left for the training task to raise. ``plan`` says
    which loop the fit runs (:class:`WarmUp`). Returns an event set once the
    model is built (or the warm-up gave up, or had nothing to do).
    """
    built = threading.Event()
    key = spec.training_key
    with _lock:
        if key in _models or key in _warming:
            built.set()
            return built
        _warming.add(key)
    cpus, gpus = task_cpus(), task_gpus()  # read here: the task context belongs to the calling thread's task

    def work() -> None:
        with _lock:
            if key in _models:  # a training task got here first and uses the model now
                _warming.discard(key)
                built.set()
                return
            try:
                _configure(backend, cpus, gpus)
                ready = model(spec)
                built.set()
                if plan.loop == "gradients":
                    from sparkeras.worker.backends import trace_gradients

                    trace_gradients(ready, columns, backend, weighted, plan.sync_batch_norm, plan.batch_size)
                else:
                    from sparkeras.worker.local_steps import trace

                    trace(ready, columns, backend, weighted)
                if plan.evaluation:
                    from sparkeras.worker.local_steps import trace_evaluation

                    trace_evaluation(ready, columns, backend)
            except Exception:  # noqa: BLE001 - the training task builds again and reports it
                pass
            finally:
                _warming.discard(key)
                built.set()

    threading.Thread(target=work, name="sparkeras-warm-up", daemon=True).start()
    return built


def inference_model(spec: ModelSpec, weights_id: str, weights: Any) -> Any:
    """The model for prediction, with the broadcast ``weights`` set once per Python worker.

    Kept apart from the training cache of :func:`model`, whose models are
    reset to a new state by every training task; here the weights stay set
    across the tasks of a query (and the micro-batches of a stream), and are
    replaced only when another set of weights (``weights_id``) arrives.
    """
    from sparkeras.serialization import unpack_arrays

    stats = _inference_stats.setdefault(weights_id, {"tasks": 0, "builds": 0, "weight_loads": 0})
    _inference_stats.move_to_end(weights_id)
    while len(_inference_stats) > _STATS_KEPT:
        _inference_stats.popitem(last=False)
    stats["tasks"] += 1
    spec.in_its_floatx()
    entry = _inference.get(spec.key)
    if entry is not None and entry[1] == weights_id:
        _inference.move_to_end(spec.key)
        return entry[0]
    built = entry[0] if entry is not None else spec.build()
    stats["builds"] += entry is None
    stats["weight_loads"] += 1
    values = unpack_arrays(weights.value)
    if len(values) != len(built.weights):
        raise ValueError(f"{len(values)} weight arrays arrived for a model with {len(built.weights)} weights")
    for variable, value in zip(built.weights, values):
        variable.assign(value)
    refresh_derived_state(built)
    _inference[spec.key] = (built, weights_id)
    _inference.move_to_end(spec.key)
    while len(_inference) > _MODEL_CACHE_SIZE:
        _inference.popitem(last=False)
    return built


def inference_stats() -> dict[str, dict[str, int]]:
    """Per set of prediction weights, in this Python worker: tasks served, models built, weights loaded."""
    return {k: dict(v) for k, v in _inference_stats.items()}
