"""Finding, or starting, the SparkSession that sparkeras works in."""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import os
import re
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator

from sparkeras.errors import InputError

DAEMON_KEY = "spark.python.daemon.module"
SIMPLIFIED_TRACEBACK_KEY = "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled"
SIMPLIFIED_TRACEBACK_ENV = "SPARK_SIMPLIFIED_TRACEBACK"
_LOCAL_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.python.worker.reuse": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.driver.memory": "4g",
    "spark.driver.maxResultSize": "2g",
    # Workers start with TensorFlow and Keras already imported (sparkeras.worker.daemon).
    DAEMON_KEY: "sparkeras.worker.daemon",
    # One pool of Python workers for RDD functions and SQL functions (scoring UDFs, mapInArrow). Spark
    # keys its pools by the workers' environment, and SQL functions add SPARK_SIMPLIFIED_TRACEBACK=1 to
    # theirs where simplifiedTraceback is on: Spark's default, which is what their tasks read when they
    # run in an RDD job (a fit packing a DataFrame), whatever the session set. Such a function got a
    # second daemon that imported TensorFlow again (5.2 s before a session's first mapInArrow, against
    # 1.7 s with one pool; 2.2 s of a fit skipping undecodable images). Every function's workers get the
    # variable, so the environments are the same either way: pyspark's frames are left out of Python
    # tracebacks, as Spark does for SQL functions by default.
    f"spark.executorEnv.{SIMPLIFIED_TRACEBACK_ENV}": "1",
}


def get_spark(master: str | None = None, app_name: str = "sparkeras", *,
              alongside: Callable[[], None] | None = None) -> Any:
    """Return the active SparkSession, or start an embedded one.

    An active session (a notebook's, a test fixture's) is used unchanged.
    Under ``spark-submit`` the session takes the submitted master and
    settings (:func:`submitted_settings`), so the same script runs on
    standalone, YARN or Kubernetes clusters. Otherwise a session is started
    on ``master`` (default: the one Spark's own configuration names,
    :func:`configured_master`, else ``local[*]``) with Arrow on, the UI off
    and quiet logs. Python workers run
    the driver's interpreter and see the driver's ``KERAS_BACKEND``, and
    they are forked from a daemon that has imported TensorFlow and Keras
    once (:mod:`sparkeras.worker.daemon`), unless sparkeras was shipped
    with the job (:func:`shipped_with_the_job`). A ``spark://`` master that takes
    no connection is an :class:`InputError` before any JVM starts
    (:func:`check_master_answers`).

    ``alongside`` is work the caller needs next, run in a thread while
    Spark initialises (:class:`_Alongside`); ``get_spark`` returns once it
    is done, and raises its error.
    """
    from pyspark.sql import SparkSession

    active = running_session()
    if active is not None and master is None:
        if alongside is not None:
            alongside()
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    submitted = submitted_settings()
    chosen = _chosen_master(master, submitted)
    if _MASTER.match(chosen):  # a malformed URL is Spark's to refuse
        check_master_answers(chosen, f"master={master!r}" if master else "spark.master")
    options = embedded_options(chosen, app_name)
    options.update(python_socket_options(options["spark.master"]))
    quiet = not submitted or _logging_left_to_spark()
    if submitted:
        options = {key: value for key, value in options.items()
                   if (key not in submitted and key not in _SUBMITTED_KEEPS) or (key == "spark.master" and master)}
        if quiet and "spark.log.level" not in submitted:  # the context's own start-up, logged at INFO
            options["spark.log.level"] = "ERROR"
    else:
        _prestart_daemon(options)
    builder = SparkSession.builder
    for key, value in options.items():
        builder = builder.config(key, value)
    with launching_the_jvm():
        if "spark.driver.extraJavaOptions" in options:
            _start_jvm_without_its_warning(options)
        side = _Alongside(alongside)
        _OWN_START.active = True
        try:
            spark = builder.getOrCreate()
        except BaseException:
            side.wait()  # its error is the lesser one; stderr must be back for the caller's
            raise
        finally:
            _OWN_START.active = False
    try:
        if quiet:
            spark.sparkContext.setLogLevel("ERROR")
        start_python_workers(spark)
    finally:
        side.finish()
    return spark


class _Alongside:
    """Run a caller's work in a thread while the session's JVM initialises, once no process will be forked.

    Why. The command line imports Keras before it loads a model, quietly
    (:func:`sparkeras.worker.runtime.import_keras_quietly`): 3-5 s of a
    cold ``sparkeras train`` or ``evaluate``, run after ``get_spark`` had
    spent as long waiting for the JVM to create the SparkContext and the
    SparkSession. Run side by side, the two take the longer of the two on a
    driver with cores to spare. The quiet import closes this process's
    stderr while it runs, and a process forked meanwhile would keep the
    closed one, so the thread starts only once the JVM (and a local
    session's Python daemon) have been launched, or when ``spark-submit``
    launched the JVM: when Spark has yet to launch it, the work runs after.
    What the JVM writes to stderr meanwhile still shows (:func:`_copy_stderr`).
    """

    def __init__(self, work: Callable[[], None] | None) -> None:
        from pyspark import SparkContext

        self._work, self._error = work, None
        self._thread = None
        if work is not None and (SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ):
            self._thread = threading.Thread(target=self._call, name="sparkeras-alongside", daemon=True)
            self._thread.start()

    def _call(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - raised by finish, in the caller's thread
            self._error = exc

    def wait(self) -> None:
        """Wait for the thread, if one runs the work."""
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> None:
        """Wait for the work, running it here if no thread did, and raise its error."""
        if self._thread is None and self._work is not None:
            self._call()
        self.wait()
        if self._error is not None:
            raise self._error


_SUBMITTED_KEEPS = frozenset({"spark.app.name", "spark.ui.enabled", "spark.sql.shuffle.partitions",
                              "spark.driver.memory", "spark.driver.extraJavaOptions"})
"""What :func:`get_spark` leaves as ``spark-submit`` has it, set or not: the run's name, its UI, the user's
SQL settings, and what only the JVM's launch reads. Spark's log level is lowered to errors only where Spark's
default log4j profile is in use (:func:`_logging_left_to_spark`)."""


def _logging_left_to_spark() -> bool:
    """Whether the driver logs through Spark's default log4j profile (no configuration of the user's), and the
    user did not ask for debug output (``SPARKERAS_DEBUG``).

    Why. Under ``spark-submit`` that profile logs at INFO: every task's
    start and end, hundreds of lines through a fit's progress bar. A log4j
    configuration of the user's (``-Dlog4j2.configurationFile``,
    ``SPARK_CONF_DIR``) is theirs and keeps its levels.
    """
    from pyspark import SparkContext

    if os.environ.get("SPARKERAS_DEBUG", "") not in ("", "0"):
        return False
    try:
        logging = getattr(getattr(SparkContext._jvm.org.apache.spark.internal, "Logging$"), "MODULE$")
        return bool(getattr(logging, "org$apache$spark$internal$Logging$$defaultSparkLog4jConfig")())
    except Exception:  # noqa: BLE001 - a Spark without the field: leave the logging as it is
        return False


def configured_master() -> str | None:
    """The master that Spark's own configuration names for a session this process starts, else ``None``:
    ``--master`` (or ``--conf spark.master=...``) in ``PYSPARK_SUBMIT_ARGS``, else ``spark.master`` in
    ``spark-defaults.conf`` (in ``SPARK_CONF_DIR``, else ``SPARK_HOME/conf``).

    Why. pyspark's own builder starts its sessions there: a script run with
    ``python`` on a cluster's edge node, whose Spark installation names the
    cluster in ``spark-defaults.conf``, or with ``PYSPARK_SUBMIT_ARGS``, ran
    on ``local[*]`` when it left the session to sparkeras.
    """
    import shlex

    try:
        args = shlex.split(os.environ.get("PYSPARK_SUBMIT_ARGS", ""))
    except ValueError:  # unbalanced quotes: Spark's launcher refuses them too
        args = []
    found = None
    for flag, value in zip(args, args[1:] + [""]):
        if flag == "--master" and value:
            found = value
        elif flag.startswith("--master="):
            found = flag.split("=", 1)[1]
        elif flag == "--conf" and value.startswith("spark.master="):
            found = value.split("=", 1)[1]
    if found:
        return found
    folder = os.environ.get("SPARK_CONF_DIR") or (
        os.path.join(os.environ["SPARK_HOME"], "conf") if os.environ.get("SPARK_HOME") else None)
    try:
        with open(os.path.join(folder, "spark-defaults.conf"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (TypeError, OSError, UnicodeDecodeError):
        return None
    for line in lines:  # "key value" or "key=value", as Spark reads the file; the last one wins
        parts = re.split(r"[\s=]+", line.strip(), maxsplit=1)
        if parts[0] == "spark.master" and len(parts) == 2 and parts[1]:
            found = parts[1].strip()
    return found


def submitted_settings() -> dict[str, str]:
    """The Spark settings of a driver JVM that ``spark-submit`` (or another launcher) started for this process;
    empty where there is none.

    Why. ``spark-submit --master spark://... train.py`` starts the driver's
    JVM first, with the master, the executors' resources and the user's
    ``--conf`` settings, and runs the script in a Python process that
    connects to it (``PYSPARK_GATEWAY_PORT``). A script that left the session
    to sparkeras got a session on ``local[*]``: :func:`get_spark`'s
    ``spark.master`` took the place of the submitted one, and the whole fit
    ran on the driver's machine. These settings are the user's: they win
    over sparkeras' own (:data:`_SUBMITTED_KEEPS`).
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ:
        return {}
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return dict(SparkConf().getAll())


def _chosen_master(master: str | None, submitted: dict[str, str]) -> str:
    """The master :func:`get_spark` starts a session on when none runs."""
    return master or submitted.get("spark.master") or configured_master() or "local[*]"


def jobs_run_locally(master: str | None = None) -> bool:
    """Whether this process' Spark jobs run in an executor inside this driver (:func:`is_local`): the running
    session's master (a Spark Connect session's server is elsewhere), else the one :func:`get_spark` would start,
    which is not started to find out."""
    active = running_session()
    if active is not None and master is None:
        return not is_spark_connect(active) and is_local(active.sparkContext.master)
    return is_local(_chosen_master(master, submitted_settings()))


def running_session() -> Any:
    """This thread's active SparkSession, else the process's default one; ``None`` when there is neither.

    The active session is per thread: in a thread of the user's (the pool
    in which ``CrossValidator(parallelism=...)`` fits its models, a
    ``ThreadPoolExecutor``) there is none, though the user's session runs.
    :func:`get_spark` then started "a new one" through the builder, which
    handed back the running session with sparkeras' local options applied
    to its SQL settings (``spark.sql.shuffle.partitions`` set to 8 in the
    user's own session), Spark's "Using an existing Spark session" warning
    on the terminal, and a socket folder made for nothing, every fit.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    default = getattr(SparkSession, "_instantiatedSession", None)  # what SparkSession.active() falls back to
    context = getattr(default, "_sc", None)
    return default if context is not None and getattr(context, "_jsc", None) is not None else None


def shipped_with_the_job() -> bool:
    """Whether this process imported sparkeras from a zip or egg (``--py-files``, ``addPyFile``), not an install.

    Why. Spark puts the files of ``--py-files`` on a task's path when the
    task runs, in a Python worker already forked; the workers' daemon
    (``spark.python.daemon.module``) is imported before any task, by the
    interpreter alone, so :mod:`sparkeras.worker.daemon` cannot come from
    those files (checked on ``local-cluster``: every task failed with
    Spark's "Error while finding module specification for
    'sparkeras.worker.daemon'"). ``spark-submit`` puts the same files first
    on the driver's path, so a driver that imports sparkeras from one is
    the sign that the executors get it that way too. Sessions then keep
    pyspark's own daemon, and each worker imports the backend itself.
    """
    import sparkeras

    return not os.path.isfile(getattr(sparkeras, "__file__", None) or "")


def _prestart_daemon(options: dict[str, str]) -> None:
    """Start the local session's Python daemon as its JVM starts (:mod:`sparkeras.worker.prestart` says why).

    Only for a new local session with its Unix socket folder and sparkeras'
    daemon: an active SparkContext keeps its own options, so its daemon
    would never come to the folder.
    """
    from pyspark import SparkContext

    folder = options.get("spark.python.unix.domain.socket.dir")
    if folder and SparkContext._active_spark_context is None \
            and options.get("spark.python.daemon.module") == _LOCAL_CONF["spark.python.daemon.module"]:
        from sparkeras.worker.prestart import start

        start(folder, options, None if SparkContext._gateway is None else _jvm_environment(SparkContext._gateway))


def _jvm_environment(gateway: Any) -> dict[str, str] | None:
    """The environment the running JVM started with, which the daemons it launches inherit.

    This process's may have changed since (importing TensorFlow sets a
    variable), and a prestarted daemon whose environment differs is refused.
    ``None`` where it cannot be read (no ``/proc``, a JVM not started here).
    """
    process = getattr(gateway, "proc", None)
    try:
        with open(f"/proc/{process.pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except (AttributeError, OSError):
        return None
    return dict(os.fsdecode(e).split("=", 1) for e in entries if b"=" in e)


def embedded_options(master: str, app_name: str) -> dict[str, str]:
    """The Spark options of a session :func:`get_spark` starts on ``master``.

    The driver's Java options (quiet logging) are left out when the user
    asked for Spark's own output or set them through Spark's own means.
    """
    options = {"spark.master": master, "spark.app.name": app_name, **_LOCAL_CONF}
    if shipped_with_the_job():
        del options[DAEMON_KEY]
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        options["spark.executorEnv.KERAS_BACKEND"] = backend
    quiet = _quiet_logging()
    if quiet:
        options["spark.driver.extraJavaOptions"] = quiet
    return options


UNIX_SOCKET_PATH_LIMIT = 107  # sun_path holds 108 bytes, the last one a NUL


def python_socket_options(master: str) -> dict[str, str]:
    """Unix domain sockets between the JVM and its Python processes, for a local session, where Spark has them.

    Why. Spark talks to its Python workers (and the driver to its
    accumulator server) over loopback TCP. On a 2-core machine a trivial
    Python job took 85-95 ms that way and 46 ms over Unix domain sockets
    (``spark.python.unix.domain.socket.enabled``, Spark 4.1 and later); an
    epoch of a small ``averaging`` fit, one Spark job, went from 119 ms to
    81 ms, and every prediction, evaluation and tuning job gains the same.

    Only in local mode: the socket directory must exist on every executor's
    machine, and in local mode the executor is this process. Spark skips
    its secret handshake on these sockets, so they live in a directory of
    this process's own, mode 0700, under the temporary directory: only
    this user can reach them. It is removed when the process exits. No
    options (TCP, as Spark's default) when Spark is older, the platform has
    no such sockets, or the path would be too long for one.
    """
    import tempfile

    from pyspark.version import __version__

    major, minor = (int(part) for part in re.findall(r"\d+", __version__)[:2])
    if not is_local(master) or (major, minor) < (4, 1) or not hasattr(socket, "AF_UNIX"):
        return {}
    prefix = f"{SOCKET_FOLDER_PREFIX}{os.getpid()}-"
    root = tempfile.gettempdir()
    if not socket_paths_fit(root):
        return {}
    import atexit
    import shutil

    _remove_stale_socket_folders(root)
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    return {"spark.python.unix.domain.socket.enabled": "true", "spark.python.unix.domain.socket.dir": folder}


SOCKET_FOLDER_PREFIX = "sparkeras-sock-"


def socket_paths_fit(root: str) -> bool:
    """Whether Spark's socket paths (``<root>/<prefix><pid>-XXXXXXXX/.<uuid>.sock``) fit in a socket address."""
    folder = len(root) + len(f"/{SOCKET_FOLDER_PREFIX}{os.getpid()}-") + 8
    return folder + len("/.") + 36 + len(".sock") <= UNIX_SOCKET_PATH_LIMIT


def _remove_stale_socket_folders(root: str) -> None:
    """Remove this user's socket folders whose process is gone (killed before its exit handlers ran).

    Only folders named as :func:`python_socket_options` names them, owned by
    this user, whose process id no longer runs; a reused process id keeps
    its folder, which is harmless.
    """
    import shutil

    pattern = re.compile(re.escape(SOCKET_FOLDER_PREFIX) + r"(\d+)-\w{8}")
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        try:
            if not match or not entry.is_dir(follow_symlinks=False) \
                    or entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:  # another user's process, or the entry went away
            continue


def start_python_workers(spark: Any) -> threading.Thread | None:
    """Start the executors' Python workers in the background, once per SparkContext.

    Why. An executor starts its Python daemon on its first Python task,
    and with :mod:`sparkeras.worker.daemon` that daemon imports TensorFlow
    and Keras first: about 3 s on one core, during which no Python task of
    that executor starts (the JVM creates Python workers under one lock).
    Started when the session starts, that import runs while the driver does
    what comes next (reading and caching a DataFrame, listing image files,
    building the model), instead of at the start of the first fit or
    scoring job. The job is one trivial task per task slot (in local mode,
    per slot that has a core: :func:`local_slots`), so each slot's
    worker is forked and kept for reuse; it holds a slot only until its
    worker is up. In local mode the one executor has one daemon, so a first
    job of one task waits for its import, and a second one per slot then
    forks the other workers in moments: the other slots stay free for the
    user's first jobs (Parquet's schema, a cache) during the import. With
    every slot held for the import, a script that read and cached a Parquet
    table and then fitted took 18.6-19.0 s instead of 16.4-16.8 s.
    Returns the thread that runs the jobs (``None`` when it was started
    before; the context keeps it as ``_sparkeras_start_workers``). A failure
    costs nothing but the time it would have saved, except one that says
    the executors' Python lacks sparkeras: the next fit or evaluation
    raises it at once (:func:`check_executors_import_sparkeras`).
    """
    sc = spark.sparkContext
    if getattr(sc, "_sparkeras_start_workers", None) is not None:
        return None
    adopt_preloaded_workers(spark)
    started = functools.partial(_worker_started, driver_backend())

    def wave(tasks: int) -> None:
        with _CONSOLE_PAUSED.held(spark):  # a user's session draws bars; these jobs are sparkeras' own
            sc.parallelize(range(tasks), tasks).mapPartitions(started).collect()

    def submit() -> None:
        try:
            sc.setJobGroup("sparkeras-start", "sparkeras: starting the Python workers", interruptOnCancel=False)
            if is_local(sc.master):
                slots = default_parallelism(sc)
                for tasks in [1, slots] if slots > 1 else [slots]:
                    wave(tasks)
            else:
                _start_on_every_executor(sc, wave)
        except Exception as exc:  # noqa: BLE001 - the first Python task starts the workers instead
            sc._sparkeras_start_failure = exc  # read by check_executors_import_sparkeras

    with _START_LOCK:  # get_spark and a new context's watcher (start_workers_when_a_context_starts) may both call
        if getattr(sc, "_sparkeras_start_workers", None) is not None:
            return None
        thread = threading.Thread(target=submit, name="sparkeras-start-workers", daemon=True)
        thread.start()
        sc._sparkeras_start_workers = thread  # published started: whoever finds it may join it
    return thread


STARTUP_WATCH_SECONDS = 60.0
"""How long after a cluster session starts :func:`start_python_workers` looks for executors that register late."""


def _start_on_every_executor(sc: Any, wave: Callable[[int], None]) -> None:
    """On a cluster: a wave of one task per task slot once the executors have registered, and another
    whenever more register in the session's first :data:`STARTUP_WATCH_SECONDS`.

    Why. A wave sized by ``defaultParallelism`` as the session starts ran
    before the executors had registered: on a standalone cluster of two
    2-core workers it was 2 tasks, both taken by the first executor to
    register, and the second started its daemon (and TensorFlow's import)
    inside the first fit, whose cold fixed cost was 5.3-6.1 s against 0.6-1.0
    s warm. A wave of as many tasks as there are free slots gives every slot
    one, since each task holds its slot until its worker is up.
    """
    from sparkeras.barrier import concurrent_slots, registered_slots

    done = 0
    slots = registered_slots(sc)
    watch_until = sc.startTime / 1000.0 + STARTUP_WATCH_SECONDS
    while True:
        if slots > done:
            wave(slots)
            done = slots
        if time.time() >= watch_until:
            return
        time.sleep(1.0)
        slots = concurrent_slots(sc)


_START_LOCK = threading.Lock()
_OWN_START = threading.local()  # get_spark is starting a session, whose workers it starts itself
SESSION_WAIT_SECONDS = 5.0
"""How long the watcher of a new SparkContext waits for its SparkSession before it makes one, as for a bare
context (an Elephas script's ``SparkContext``)."""


def start_workers_when_a_context_starts() -> None:
    """Start the Python workers of every SparkContext made in this process from now on, as soon as it exists.

    Why. A script that imports sparkeras and then starts its own session
    (``SparkSession.builder...getOrCreate()``, an Elephas script's
    ``SparkContext``) got its workers started, and their TensorFlow import,
    only when its first ``SparkModel`` or ``KerasEstimator`` was made, right
    before the fit, which then waited for the import. Now the import runs
    while the script reads and caches its data, as it does in sessions that
    :func:`get_spark` starts. pyspark has no hook for a context's start, so
    ``SparkContext.__init__`` is wrapped, once per process; the wrapper only
    starts a thread, which waits for the builder's SparkSession
    (:data:`SESSION_WAIT_SECONDS`) and calls
    :func:`start_workers_of_active_session`. Contexts that ``get_spark``
    starts (it starts their workers itself) and the one a local Spark
    Connect server runs (its plugin set) are left alone. ``import
    sparkeras`` does not import pyspark (the CLI checks its flags before
    Spark or TensorFlow load): where pyspark is not imported yet, the wrap
    waits for its import (:class:`_WrapWhenPysparkLoads`).
    """
    pyspark = sys.modules.get("pyspark")
    if pyspark is not None and hasattr(pyspark, "SparkContext"):
        _watch(pyspark.SparkContext)
    elif not any(isinstance(finder, _WrapWhenPysparkLoads) for finder in sys.meta_path):
        sys.meta_path.insert(0, _WrapWhenPysparkLoads())


class _WrapWhenPysparkLoads(importlib.abc.MetaPathFinder):
    """Once: when the ``pyspark`` package is imported, :func:`_watch` its ``SparkContext``.

    It finds nothing itself: it takes the spec the other finders give and
    runs :func:`_watch` after the package's own code (which defines
    ``pyspark.SparkContext``), then leaves ``sys.meta_path``.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pyspark":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            del loader.exec_module  # a zip's importer serves pyspark's other modules too: they load as before
            run(module)
            with contextlib.suppress(Exception):  # a pyspark without SparkContext here: nothing to watch
                _watch(module.SparkContext)

        loader.exec_module = exec_module
        return spec


def _watch(context_class: Any) -> None:
    """Wrap ``context_class.__init__`` to start each new context's workers
    (:func:`start_workers_when_a_context_starts`)."""
    init = context_class.__init__
    if getattr(init, "_sparkeras_watches", False):
        return

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        try:
            connect_server = "SparkConnectPlugin" in (self._conf.get("spark.plugins", "") or "")
        except Exception:  # noqa: BLE001 - a context without a conf: leave it as it is
            return
        if not getattr(_OWN_START, "active", False) and not connect_server:
            threading.Thread(target=_start_once_its_session_exists, args=(self,), daemon=True,
                             name="sparkeras-session-watch").start()

    __init__._sparkeras_watches = True  # type: ignore[attr-defined]
    context_class.__init__ = __init__


def _start_once_its_session_exists(sc: Any) -> None:
    """The builder makes its SparkSession right after the context: start the workers in that one."""
    deadline = time.monotonic() + SESSION_WAIT_SECONDS
    while time.monotonic() < deadline:
        session = running_session()
        if session is not None and session._sc is sc:
            break
        if sc._jsc is None:  # stopped meanwhile
            return
        time.sleep(0.02)
    start_workers_of_active_session()


def start_workers_of_active_session() -> threading.Thread | None:
    """:func:`start_python_workers` for a session the user started, as soon as sparkeras sees it; never raises.

    Why. ``get_spark`` starts its sessions' Python workers (and their
    TensorFlow import) as the session starts, but a notebook's or a
    script's own ``SparkSession`` started them only at the first fit, which
    then waited for the import. Called when ``sparkeras`` is imported, when
    a context starts after that (:func:`start_workers_when_a_context_starts`)
    and when a ``SparkModel``, ``KerasEstimator`` or ``KerasModel`` is made, so
    that the import runs while the user's code reads and prepares the data.
    A script that started its local session, imported sparkeras, ran a
    Spark ML text pipeline (7 s) and fitted a ``KerasEstimator``: first fit
    5.4-5.5 s before, 1.6-2.6 s after, the preparation 0.6-0.9 s slower for
    the import beside it. Cheap where it has nothing to do: no SparkContext in
    this process (an executor's Python worker, a script before its session
    starts), or the workers already started. Spark Connect has none.
    """
    context = sys.modules.get("pyspark.context")
    sc = getattr(getattr(context, "SparkContext", None), "_active_spark_context", None)
    if sc is None or getattr(sc, "_sparkeras_start_workers", None) is not None:
        return None
    try:
        from pyspark.sql import SparkSession

        return start_python_workers(running_session() or SparkSession(sc))
    except Exception:  # noqa: BLE001 - a context being stopped: the first Python task starts the workers instead
        return None


def is_spark_connect(obj: Any) -> bool:
    """Whether ``obj`` (a SparkSession or DataFrame) belongs to a Spark Connect session.

    Such a session has no SparkContext, RDDs, broadcasts or barrier stages,
    which sparkeras' training runs on; its DataFrames and Arrow UDFs, which
    prediction needs, work.
    """
    return type(obj).__module__.startswith("pyspark.sql.connect")


def check_classic_session(data: Any, what: str, needs: str = "trains and evaluates on Spark's RDD and barrier APIs",
                          instead: str = "SparkModel.predict(df), KerasModel.transform, register_udf") -> None:
    """Refuse Spark Connect data (or a session) for ``what``, before any work, with the way out."""
    if is_spark_connect(data) or is_spark_connect(getattr(data, "sparkSession", None)):
        raise InputError(
            f"{what} needs a classic SparkSession: sparkeras {needs}, which a Spark Connect session "
            "(SparkSession.builder.remote(...)) does not have. Start a classic one on the cluster "
            "(SparkSession.builder.master(...).getOrCreate(), or sparkeras.get_spark(master)). "
            f"Prediction works on Spark Connect: {instead}.")


def workers_preloaded(spark: Any) -> bool:
    """Whether this session's Python workers fork from :mod:`sparkeras.worker.daemon`, with TensorFlow imported.

    True for sessions :func:`get_spark` started, and for local ones the user
    started once sparkeras ran in them (:func:`adopt_preloaded_workers`);
    other sessions (``spark-submit`` to a cluster, say) fork pyspark's own
    daemon, where every new worker imports it again.
    """
    try:
        return spark.sparkContext.getConf().get(DAEMON_KEY) == _LOCAL_CONF[DAEMON_KEY]
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext: its workers are not ours
        return False


def driver_backend() -> str:
    """The Keras backend of this driver's fits: Keras' own once it is imported, else what it will pick."""
    try:
        return sys.modules["keras"].backend.backend()
    except (KeyError, AttributeError):  # not imported (or still importing in another thread)
        pass
    from sparkeras.worker.daemon import configured_backend

    return configured_backend()


def _worker_started(backend: str, _: Iterator[int]) -> Iterator[int]:
    """Executor side: this Python worker's process id (it exists, which is the point), with the driver's
    ``backend`` imported when the daemon did not preload one (:func:`sparkeras.worker.runtime.import_backend_early`)."""
    try:
        from sparkeras.worker.runtime import import_backend_early

        import_backend_early(backend)
    except Exception:  # noqa: BLE001 - the first real task imports it and reports any error
        pass
    return iter([os.getpid()])


class _HeldWhileRunning:
    """A change to the running session that the first of sparkeras' concurrent calls makes and the last one undoes.

    ``CrossValidator(parallelism=k)`` and a thread per tuning trial run
    several fits at once: the first makes the change, and only the last one
    out undoes it, so no fit ends the others' setting. ``make(spark)``
    returns what ``undo`` needs, or ``None`` where the session does not
    allow the change (then there is nothing to undo).
    """

    def __init__(self, make: Callable[[Any], Any], undo: Callable[[Any], None]) -> None:
        self._make, self._undo = make, undo
        self._lock = threading.Lock()
        self._depth = 0
        self._made: Any = None

    @contextlib.contextmanager
    def held(self, spark: Any) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._made = self._make(spark)
        try:
            yield
        finally:
            with self._lock:  # undone under the lock, so a call starting now finds the change to make
                self._depth -= 1
                if self._depth == 0 and self._made is not None:
                    made, self._made = self._made, None
                    self._undo(made)


@contextlib.contextmanager
def running_own_jobs(spark: Any) -> Iterator[None]:
    """While sparkeras runs its own Spark jobs (a fit, an evaluation, arrays predicted, an ensemble, a search).

    Spark's console bars are off (:func:`_pause_console_progress`) and
    its delay scheduling too (:func:`_start_tasks_anywhere`); both come
    back as they were when the last such call ends. A local session the
    user started forks its next Python workers from sparkeras' daemon
    (:func:`adopt_preloaded_workers`).
    """
    adopt_preloaded_workers(spark)
    check_executors_import_sparkeras(spark)
    with _CONSOLE_PAUSED.held(spark), _DELAY_SCHEDULING_OFF.held(spark):
        yield


def check_executors_import_sparkeras(spark: Any) -> None:
    """Raise :class:`~sparkeras.errors.ExecutorEnvironmentError` if the session's start-up job found executors
    whose Python cannot import sparkeras.

    Why. Otherwise the fit runs its first job, and that job's error is
    Spark's for the first task it lost: where two tasks of one executor
    start the Python daemon together, that was at times a
    ``NullPointerException`` from Spark's worker factory, not the missing
    module (2 of 4 failed jobs on ``local[2]``). The start-up job
    (:func:`start_python_workers`) runs one task first, so its failure
    names the module, and the fit stops before any job of its own.
    """
    from sparkeras.errors import lacks_sparkeras, worker_error

    try:
        failure = getattr(spark.sparkContext, "_sparkeras_start_failure", None)
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext, and no start-up job of ours
        return
    if failure is not None and lacks_sparkeras(failure):
        raise worker_error(failure, "starting the executors' Python workers") from None


def adopt_preloaded_workers(spark: Any) -> bool:
    """In a local session the user started, make the Python workers Spark starts from now on like ``get_spark``'s.

    They fork from sparkeras' daemon, and RDD and SQL functions share one
    pool of them.

    Why the daemon. A notebook's ``SparkSession.builder.master("local[*]")``,
    an Elephas script's ``SparkContext`` or ``spark-submit --master local``
    forks Python workers from pyspark's own daemon, and each of them then
    imports TensorFlow once it runs sparkeras' code (2.3-3 s of CPU), again
    for every worker Spark starts after one idle minute.
    :mod:`sparkeras.worker.daemon` imports it once per executor. A local
    executor reads the driver's ``SparkConf`` when it launches a Python
    worker, so setting the key in the running context is enough: Spark keys
    its pools of workers by daemon, so workers already started stay in
    pyspark's pool, and the user's later functions run in workers like
    those of a ``get_spark`` session. Measured on 2 cores: a notebook's
    refit after an idle minute (a bare ``local[2]`` session, a cached
    DataFrame) took 1.2-1.7 s against 4.3-4.7 s, and its first fit 5.1-6.0 s
    against 6.4-7.1 s. The Elephas example's first fit on ``local[2]`` did
    not move (two workers imported at once before, on two cores); on
    ``local[8]``, with :func:`local_slots`, it went from 28.6-30.9 s to
    7.3-8.4 s (``bench/elephas_example.py --bare-context``).

    Why one pool. Spark also keys its pools by the workers' environment, and
    SQL functions (a scoring UDF, ``mapInArrow``) add
    ``SPARK_SIMPLIFIED_TRACEBACK=1`` to theirs while the session's
    ``simplifiedTraceback`` is on, as it is by default; RDD functions (a
    fit's jobs) do not. So a fit followed by a prediction started a second
    daemon, which imported TensorFlow again: the first prediction took 4.5
    s, the next 0.4 s. Functions take their environment from
    ``SparkContext.environment`` when they are made, so the variable goes
    there, as ``get_spark`` puts it in ``spark.executorEnv`` (which also
    leaves pyspark's frames out of RDD functions' tracebacks).

    The daemon only where it is safe: a local master (a cluster's executors
    read their settings when they start), no daemon of the user's own and
    the daemon in use (``spark.python.use.daemon``), and workers that run
    this interpreter, which has sparkeras installed (not shipped with the
    job: :func:`shipped_with_the_job`). One pool in every session: on a
    standalone cluster of two hosts, a session of the user's own with
    pyspark's daemon, the first prediction after a fit took 10.4 s (a second
    daemon on each executor, and TensorFlow imported in each of its
    workers), the next 0.8 s. Except on a cluster whose tasks are given GPUs:
    a worker keeps the GPUs of its first task (:mod:`sparkeras.worker.runtime`),
    and the workers of the pool started from here, forked one by one as jobs
    needed them, were seen to keep the same GPU while the workers the
    session had started together stayed idle in the old pool. Returns whether
    the session now uses the daemon.
    """
    try:
        sc = spark.sparkContext
        conf = sc._conf
        ours = _LOCAL_CONF[DAEMON_KEY]
        current = conf.get(DAEMON_KEY, None)
        if spark.conf.get(SIMPLIFIED_TRACEBACK_KEY, "true").strip().lower() == "true" \
                and (is_local(sc.master) or not conf.get("spark.task.resource.gpu.amount", None)):
            sc.environment.setdefault(SIMPLIFIED_TRACEBACK_ENV, "1")  # one pool, on a cluster too
        if current == ours:
            return True
        if current not in (None, "pyspark.daemon") or not is_local(sc.master) or shipped_with_the_job() \
                or conf.get("spark.python.use.daemon", "true").strip().lower() == "false" \
                or not _runs_this_interpreter(sc.pythonExec):
            return False
        conf.set(DAEMON_KEY, ours)
        return True
    except Exception:  # noqa: BLE001 - Spark Connect, or a context without these fields: leave it as it is
        return False


@functools.lru_cache(maxsize=8)
def _runs_this_interpreter(python: str) -> bool:
    """Whether Spark's Python workers, started as ``python``, run this very interpreter.

    A path that resolves to ``sys.executable`` does. Anything else (a
    notebook's default ``python3``, a pyenv shim, a virtualenv's link) is
    asked for its ``sys.executable``, once per command: 20-50 ms.
    """
    import shutil
    import subprocess

    found = shutil.which(python) or python
    if os.path.realpath(found) == os.path.realpath(sys.executable):
        return True
    try:
        answer = subprocess.run([found, "-c", "import sys; print(sys.executable)"], capture_output=True,
                                text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(answer) and os.path.realpath(answer) == os.path.realpath(sys.executable)


def _pause_console_progress(spark: Any) -> tuple[Any, Any, Any] | None:
    """Stop Spark's console stage bars (``[Stage 3:==>  (1 + 1) / 2]``); what :func:`_restart_console_progress` needs.

    The stages of sparkeras' calls (packing, warm-up, one job per epoch)
    are its own machinery: with ``verbose`` it draws its own bar, and
    without it the user asked for quiet. The bar is on in shells, in a bare
    ``SparkContext`` (as Elephas scripts make) and where
    ``spark.ui.showConsoleProgress`` is set, and Spark cannot switch it at
    runtime: its timer is stopped here and a new bar is started afterwards,
    through the JVM. Sessions that do not allow that (Spark Connect, a JVM
    without the field) keep theirs.
    """
    try:
        jsc = spark.sparkContext._jsc.sc()
        bar = jsc.progressBar()
        if not bar.isDefined():
            return None
        jvm = spark.sparkContext._jvm
        field = jsc.getClass().getDeclaredField("_progressBar")
        field.setAccessible(True)
        field.set(jsc, jvm.scala.Option.apply(None))
        bar.get().stop()
        return field, jsc, jvm
    except Exception:  # noqa: BLE001 - no JVM (Spark Connect) or a different Spark: leave the bar alone
        return None


def _restart_console_progress(paused: tuple[Any, Any, Any]) -> None:
    field, jsc, jvm = paused
    try:
        field.set(jsc, jvm.scala.Option.apply(jvm.org.apache.spark.ui.ConsoleProgressBar(jsc)))
    except Exception:  # noqa: BLE001 - the bar is a display; a failure costs only the display
        pass


LOCALITY_WAITS = ("spark.locality.wait", "spark.locality.wait.process", "spark.locality.wait.node",
                  "spark.locality.wait.rack")


def _start_tasks_anywhere(spark: Any) -> tuple[Any, dict[str, str | None]] | None:
    """Turn Spark's delay scheduling off; the session's own waits, for :func:`_restore_locality_waits`.

    Why. A task whose input is cached on a busy executor waits up to
    ``spark.locality.wait`` (3 s) at each locality level before Spark
    starts it elsewhere. sparkeras' training tasks read the packed blocks
    that Spark cached where the packing tasks ran, and small data is often
    packed on one executor (its one input partition, or the first executor
    up). All the tasks of a fit must run at once, so a fit waited for the
    levels to expire: on a standalone cluster of two 1-core workers in
    network namespaces, a cold fit's first epoch took 7.0 s against 0.3 s
    without the waits, and a barrier stage (``allreduce``) is refused its
    slots until then, as Spark's own message says. Fetching a packed block
    from another executor costs less than one level's wait.

    Spark reads the waits from the running context's ``SparkConf`` when it
    schedules a stage, so they are set to 0 there while sparkeras' own jobs
    run, and put back after (a user's job submitted meanwhile is scheduled
    without delay too). ``None`` where the context's conf cannot be
    reached (Spark Connect).
    """
    try:
        conf = spark.sparkContext._conf
        saved = {key: conf.get(key) for key in LOCALITY_WAITS}
    except Exception:  # noqa: BLE001 - no classic context: its scheduler is out of reach
        return None
    try:
        for key in LOCALITY_WAITS:
            conf.set(key, "0")
    except Exception:  # noqa: BLE001 - the context stopped meanwhile: put back what was set
        _restore_locality_waits((conf, saved))
        return None
    return conf, saved


def _restore_locality_waits(changed: tuple[Any, dict[str, str | None]]) -> None:
    conf, saved = changed
    try:
        for key, value in saved.items():
            if value is None:
                conf._jconf.remove(key)
            else:
                conf.set(key, value)
    except Exception:  # noqa: BLE001 - the context stopped meanwhile: nothing is scheduled any more
        pass


_CONSOLE_PAUSED = _HeldWhileRunning(_pause_console_progress, _restart_console_progress)
_DELAY_SCHEDULING_OFF = _HeldWhileRunning(_start_tasks_anywhere, _restore_locality_waits)


JVM_START_UP_WARNING = b"WARNING: Using incubator modules:"


@contextlib.contextmanager
def launching_the_jvm() -> Iterator[None]:
    """Start Spark's JVM without JAX's warning that ``os.fork()`` was called.

    pyspark starts the JVM with a ``preexec_fn``, so Python runs its
    before-fork handlers, and JAX's handler (installed once JAX has a
    backend: a model was built before the session) warns that forking a
    multithreaded process may deadlock. The child only resets a signal and
    runs ``exec``, so the danger is not there; the warning was the first
    line a JAX user saw from :func:`get_spark`.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def _start_jvm_without_its_warning(options: dict[str, str]) -> None:
    """Start Spark's JVM, if this process has none, with its stderr passed on minus its start-up warning.

    Spark 4.1 and later start the JVM with ``--add-modules=jdk.incubator.vector``,
    and the JVM then prints ``WARNING: Using incubator modules:
    jdk.incubator.vector`` to stderr, from Java code, before any logging is
    set up: no JVM option, log level or log4j profile holds it back. It was
    the first line of ``sparkeras demo`` and of every script. Here the JVM
    is started as pyspark starts it (:func:`pyspark.java_gateway.launch_gateway`,
    with the session's options), except that its stderr is a pipe that a
    thread copies to this process's stderr (as it was at the launch) byte
    for byte (Spark's console bars and log lines, as before), minus that one
    line when it comes first.
    Not done when a JVM is already running or was started for this process
    (``spark-submit``), nor when the user asked for Spark's own output.
    The JVM maps its classes from sparkeras' class-data archive when there
    is one (:mod:`sparkeras.class_archive`), which takes 2-4 s off its start.
    """
    import subprocess

    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway

    from sparkeras.class_archive import driver_java_options

    with SparkContext._lock:
        if SparkContext._gateway is not None or "PYSPARK_GATEWAY_PORT" in os.environ:
            return
        conf = SparkConf()
        for key, value in options.items():
            conf.set(key, value)
        archive = driver_java_options()
        if archive:
            conf.set("spark.driver.extraJavaOptions", f"{options['spark.driver.extraJavaOptions']} {archive}")
        gateway = launch_gateway(conf, popen_kwargs={"stderr": subprocess.PIPE})
        threading.Thread(target=_copy_stderr, args=(gateway.proc.stderr.fileno(), _stderr_copy()), daemon=True,
                         name="sparkeras-jvm-stderr").start()
        SparkContext._gateway, SparkContext._jvm = gateway, gateway.jvm


def _stderr_copy() -> int | None:
    """A new descriptor of this process's stderr, or ``None`` when it has none (a service started without one)."""
    try:
        return os.dup(2)
    except OSError:
        return None


def _copy_stderr(source: int, target: int | None) -> None:
    """Copy the JVM's stderr to ``target`` until the JVM closes it, dropping its start-up warning if it comes first.

    ``target`` is a copy of this process's stderr as the JVM started, what
    the JVM would have inherited: it stays the terminal while this process
    closes its own for a quiet import (:class:`_Alongside`).
    """
    head: bytes | None = b""
    while True:
        try:
            chunk = os.read(source, 65536)
        except OSError:  # the pipe was closed on our side
            break
        if not chunk:
            break
        if head is not None:
            head += chunk
            if b"\n" not in head and len(head) < 4096:
                continue
            line, _, rest = head.partition(b"\n")
            chunk, head = (rest if line.startswith(JVM_START_UP_WARNING) else head), None
        try:
            while chunk and target is not None:
                chunk = chunk[os.write(target, chunk):]
        except OSError:  # our stderr is closed: keep reading, so the JVM never blocks on a full pipe
            pass
    if target is not None:
        os.close(target)


def _quiet_logging() -> str | None:
    """Java options that start the embedded driver with errors-only logging, or ``None`` to keep Spark's.

    Spark's default log4j profile prints start-up warnings (the host's
    loopback address, the native Hadoop library) and how to change the log
    level before anyone can call ``setLogLevel``. Kept when the user asked
    for debug output (``SPARKERAS_DEBUG``) or set the driver's Java options
    themselves (``PYSPARK_SUBMIT_ARGS``, ``SPARK_CONF_DIR``): those are theirs.
    """
    if os.environ.get("SPARKERAS_DEBUG", "") not in ("", "0") or os.environ.get("PYSPARK_SUBMIT_ARGS") \
            or os.environ.get("SPARK_CONF_DIR"):
        return None
    from pathlib import Path

    path = Path(__file__).resolve().parent / "log4j2-quiet.properties"
    return f"-Dlog4j2.configurationFile={path.as_uri()}" if path.exists() else None  # a URI: no spaces


_MASTER = re.compile(
    r"^(local|local\[(\*|[1-9]\d*)(,\s*\d+)?\]|local-cluster\[[1-9]\d*,\s*[1-9]\d*,\s*[1-9]\d*\]"
    r"|spark://[^\s/,:]+:\d+(,[^\s/,:]+:\d+)*|yarn|k8s://\S+)$")


def check_master(master: str, flag: str = "--master", wait: float = 5.0) -> None:
    """Refuse a master URL Spark cannot use, before any JVM starts.

    A malformed URL otherwise surfaces as a Java stack trace, and an
    unreachable standalone master as a minute of retries ending in "Cannot
    call methods on a stopped SparkContext"; here each is one line. A
    ``spark://`` master is reached with a plain TCP connection, ``wait``
    seconds per address.
    """
    if not _MASTER.match(master):
        raise InputError(
            f"{flag} {master!r} is not a Spark master URL; use local[N], local-cluster[workers,cores,memoryMB], "
            "spark://host:port, yarn, or k8s://https://host:port.")
    check_master_answers(master, flag, wait)


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
"""Where a proxy is set, Spark's Kubernetes client may reach an API server this process cannot dial."""


def check_master_answers(master: str, flag: str, wait: float = 5.0) -> None:
    """For a ``spark://`` or ``k8s://`` master, an :class:`InputError` unless it takes a TCP connection.

    Spark's own client retries an unreachable standalone master for a minute
    (63 s measured) and then fails with "Cannot call methods on a stopped
    SparkContext" and a Java trace; a Kubernetes API server no one listens
    at printed about 300 lines of Java traces before the error. This asks
    each address once, ``wait`` seconds at most. Other masters are left to
    Spark; ``master`` is well formed (:data:`_MASTER`).
    """
    if master.startswith("k8s://"):
        address = _kubernetes_address(master)
        proxied = any(os.environ.get(name) for name in PROXY_VARIABLES)
        if address is not None and not proxied:  # Spark's Kubernetes client may reach it through the proxy
            error = _unreachable([address], wait)
            if error:
                raise InputError(f"{flag}: cannot reach the Kubernetes API server at {error}. Is the address "
                                 "right (k8s://https://host:port, as `kubectl cluster-info` prints it)?")
        return
    if not master.startswith("spark://"):
        return
    error = _unreachable([tuple(address.rsplit(":", 1)) for address in master[len("spark://"):].split(",")], wait)
    if error:
        raise InputError(f"{flag}: cannot reach the Spark master at {error}. Is the master running "
                         "(spark-class org.apache.spark.deploy.master.Master), and is the address right?")


def _unreachable(addresses: list[tuple[str, str | int]], wait: float) -> str | None:
    """``None`` once one of the ``(host, port)`` addresses takes a TCP connection, else why none did."""
    errors = []
    for host, port in addresses:
        try:
            with socket.create_connection((host, int(port)), timeout=wait):
                return None
        except OSError as exc:
            errors.append(f"{host}:{port} ({exc.strerror or exc})")
    return ", ".join(errors)


def _kubernetes_address(master: str) -> tuple[str, int] | None:
    """The API server's host and port in a ``k8s://`` master, as Spark reads it (https unless the URL says http),
    or ``None`` where the URL has no host or a port that is not a number (Spark's to refuse)."""
    from urllib.parse import urlsplit

    rest = master[len("k8s://"):]
    url = urlsplit(rest if rest.startswith(("http://", "https://")) else f"https://{rest}")
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:
        return None
    return (url.hostname, port) if url.hostname else None


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's cpuset included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def local_slots(sc: Any) -> int:
    """The task slots of a local master that can work at once: ``local[N]``, but at most this machine's cores.

    Why. Elephas' and Spark's own examples start ``local[8]`` whatever the
    machine, and every task of a local master shares this machine's cores.
    A Python worker that trains or starts beyond them only slices the same
    CPU, and each one pays its own TensorFlow import (3 s of CPU where the
    session's daemon did not preload it), model build and share of the
    averaging's noise. An Elephas script on ``local[8]`` with 2 cores fitted
    in 26.7 s with 8 workers and 9.1 s on ``local[2]``.
    """
    return max(1, min(sc.defaultParallelism, machine_cores()))


def default_parallelism(sc: Any) -> int:
    """Spark's default parallelism, but on a local master at most one per core (:func:`local_slots`)."""
    return local_slots(sc) if is_local(sc.master) else max(1, sc.defaultParallelism)


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
