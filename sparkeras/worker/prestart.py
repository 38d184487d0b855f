"""The local session's Python daemon, started beside the JVM instead of after it.

Why. In local mode the executor's Python daemon (:mod:`sparkeras.worker.daemon`)
imports the Keras backend and Keras before it forks any worker (2.3-4 s of
CPU for TensorFlow, more for JAX and PyTorch), during which no Python task
starts. Spark launches that daemon only once
the JVM is up and a first Python task asks for a worker, so the import
began 3-4 s after the session did and, on slow days, was still running
1.1-2.6 s into the first fit (BENCHMARKS.md, "Where a cold fit's fixed cost
went today"). The JVM's own start keeps about one core busy, so on two
cores the import can run beside it. Here :func:`sparkeras.get_spark` starts
a Python process that imports them as the JVM starts (:func:`start`), and
the daemon that Spark launches later hands itself over to it.

How. The prestarted process (:func:`main`) listens on a Unix socket in the
session's private socket folder (mode 0700, the one Spark's own Unix
sockets use), checks that each peer runs as this user, and imports what
the daemon preloads. When the JVM launches :mod:`sparkeras.worker.daemon`,
that process (:func:`hand_over`) sends it the JVM's pipes (standard input,
output and error, as file descriptors), its environment, working folder
and arguments, as JSON; nothing is unpickled. The prestarted process takes
them and runs Spark's daemon loop as if the JVM had launched it. The
launched process stays as the one the JVM knows: it passes the JVM's
SIGTERM on and exits when the daemon does.

What keeps it exact. An import reads its environment once, so the
prestarted process is started with what Spark gives its daemon
(``PYTHONHASHSEED``, ``OMP_NUM_THREADS``, unbuffered output), and it refuses
the hand-over, which the launched daemon then serves itself as before, when
anything an import could have read differs: the interpreter, the working
folder, or any environment variable other than the ones Spark sets for the
worker protocol (:data:`SPARK_PROTOCOL_VARIABLES`). Spark's ``PYTHONPATH``
(its own ``pyspark.zip`` and py4j) is added to ``sys.path`` then; an entry
outside pyspark's own folder refuses it, since it could hold another
version of something already imported. Spark's worker module is imported
only after the hand-over. Every wait has a deadline: the prestarted process
waits :data:`HAND_OVER_SECONDS` for the daemon and exits with the driver;
the launched daemon waits as long for the import to end.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

SOCKET_NAME = "prestarted-daemon.sock"
HAND_OVER_SECONDS = 120.0
SPARK_PROTOCOL_VARIABLES = frozenset({
    "PYTHONPATH", "PYTHONUNBUFFERED", "PYTHON_DAEMON_KILL_WORKER_ON_FLUSH_FAILURE", "PYTHON_FAULTHANDLER_DIR",
    "PYTHON_UDF_BATCH_SIZE", "PYTHON_UNIX_DOMAIN_ENABLED", "PYTHON_WORKER_FACTORY_SECRET",
    "PYTHON_WORKER_FACTORY_SOCK_DIR", "_PYSPARK_DRIVER_CONN_INFO_PATH",
})
"""Variables Spark sets for the worker protocol, read when a worker runs (plus every ``SPARK_*`` one)."""

_started: list[subprocess.Popen] = []


def start(socket_folder: str, options: dict[str, str], jvm_environment: dict[str, str] | None = None
          ) -> subprocess.Popen | None:
    """Start the prestarted daemon for a local session whose Spark options are ``options``; driver side.

    ``jvm_environment`` is the environment of a JVM already running (a
    session started again in the same process), which its daemons inherit;
    ``None``: this process's, which a JVM launched now inherits. ``None``
    (nothing started) is returned where the daemon would not preload, where
    the workers run another interpreter, or where the socket path would not fit.
    """
    from sparkeras.session import UNIX_SOCKET_PATH_LIMIT
    from sparkeras.worker.daemon import backend_to_preload

    path = os.path.join(socket_folder, SOCKET_NAME)
    if backend_to_preload() is None or len(path.encode()) > UNIX_SOCKET_PATH_LIMIT \
            or os.path.realpath(os.environ.get("PYSPARK_PYTHON", sys.executable)) != os.path.realpath(sys.executable):
        return None
    _started[:] = [p for p in _started if p.poll() is None]  # reap the ones that have ended
    env = dict(os.environ if jvm_environment is None else jvm_environment)
    env["PYTHONHASHSEED"] = os.environ.get("PYTHONHASHSEED", "0")  # pyspark's rule for its workers
    env.update({key[len("spark.executorEnv."):]: value for key, value in options.items()
                if key.startswith("spark.executorEnv.")})
    if "spark.executorEnv.OMP_NUM_THREADS" not in options:  # else set just above
        # Spark's rule (SPARK-28843): the executor's cores, over any OMP_NUM_THREADS of the JVM's environment.
        env["OMP_NUM_THREADS"] = options.get("spark.executor.cores", "1")
    env["PYTHONUNBUFFERED"] = "YES"
    # Out of the terminal's process group (3.11 and later), as the JVM's daemon is: Ctrl-C is for the driver.
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {}
    try:
        process = subprocess.Popen([sys.executable, "-m", __name__, path], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, env=env, close_fds=True, **group)
    except OSError:
        return None
    _started.append(process)
    return process


def main(path: str) -> None:
    """The prestarted process: listen, import, wait for the daemon Spark launches, and become it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in the daemon the JVM launches, which inherits the JVM's
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
    except OSError:
        return  # the folder is gone: the session ended, or never started
    listener.listen(4)
    try:
        from sparkeras.worker.daemon import preload

        environment = dict(os.environ)
        if preload(worker_module=False) is None:
            return  # the launched daemon imports, or reports the failure, itself
        connection = _next_peer(listener, time.monotonic() + HAND_OVER_SECONDS)
        taken = None if connection is None else _take_over(connection, environment)
        if taken is None:
            return  # a refusal would be repeated for any later daemon of this session
    finally:
        listener.close()
        if os.path.exists(path):
            os.unlink(path)
    _become_daemon(connection, taken, {k: v for k, v in os.environ.items() if k not in environment})


def _next_peer(listener: socket.socket, deadline: float) -> socket.socket | None:
    """The next connection from this user, or ``None`` once the driver is gone (our stdin ends) or at the deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([listener, 0], [], [], left)
        if 0 in ready and not os.read(0, 1):
            return None
        if listener in ready:
            connection, _ = listener.accept()
            if _peer_uid(connection) in (None, os.getuid()):
                return connection
            connection.close()


def _peer_uid(connection: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None  # the folder's mode 0700 already keeps other users out
    _, uid, _ = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


def _take_over(connection: socket.socket, environment: dict[str, str]) -> dict | None:
    """Receive the launched daemon's pipes and setting; what to become, or ``None`` when it did not come or was refused.

    ``environment`` is this process's environment before its imports.
    """
    connection.settimeout(30)
    try:
        _send(connection, {"ready": True})
        message, fds = _receive(connection, with_fds=3)
    except (OSError, ValueError):
        connection.close()
        return None
    why = why_refused(message, environment)
    if why is not None or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        try:
            _send(connection, {"adopted": False, "why": why or "no pipes came"})
        except OSError:
            pass
        connection.close()
        return None
    return {**message, "fds": fds}


def why_refused(message: dict, environment: dict[str, str]) -> str | None:
    """Why this process cannot serve as the daemon described by ``message``, or ``None`` when it can.

    ``environment`` is this process's environment before its imports
    (TensorFlow's adds a variable of its own, and the daemon sets JAX's cache settings).
    """
    if os.path.realpath(message.get("executable", "")) != os.path.realpath(sys.executable):
        return f"the workers run {message.get('executable')!r}, not {sys.executable!r}"
    if message.get("cwd") != os.getcwd():
        return f"the daemon starts in {message.get('cwd')!r}, not {os.getcwd()!r}"
    theirs, ours = message.get("env", {}), environment
    for key in sorted(set(theirs) | set(ours)):
        if key not in SPARK_PROTOCOL_VARIABLES and not key.startswith("SPARK_") and theirs.get(key) != ours.get(key):
            return f"environment variable {key} differs"
    import pyspark

    own = os.path.dirname(os.path.abspath(pyspark.__file__)) + os.sep
    for entry in (theirs.get("PYTHONPATH") or "").split(os.pathsep):
        if entry and entry not in sys.path and not os.path.abspath(entry).startswith(own):
            return f"PYTHONPATH entry {entry!r} is outside pyspark's folder"
    return None


def _become_daemon(connection: socket.socket, message: dict, imported: dict[str, str]) -> None:
    """Take the launched daemon's pipes, environment and arguments, and run Spark's daemon loop.

    ``imported`` holds the variables this process's imports set, which the
    launched daemon's own imports would have set too.
    """
    for target, fd in enumerate(message["fds"]):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear()
    os.environ.update(message["env"])
    for key, value in imported.items():
        os.environ.setdefault(key, value)
    sys.argv = list(message["argv"])
    paths = [p for p in (message["env"].get("PYTHONPATH") or "").split(os.pathsep) if p and p not in sys.path]
    sys.path[1:1] = paths  # where the interpreter puts PYTHONPATH, after the main module's folder
    _send(connection, {"adopted": True, "pid": os.getpid()})
    connection.setblocking(True)
    from sparkeras.worker.daemon import preload_worker_module, serve

    preload_worker_module()
    serve()  # never returns, so ``connection`` stays open: the stand-in waits for it to close


def hand_over() -> bool:
    """Hand this launched daemon's role to the prestarted process, if there is one; daemon side.

    Returns ``False`` when there is none, it refused, or it did not answer
    in time: this process then serves as the daemon itself. Otherwise this
    process stays until the prestarted one, now the daemon, ends, passing on
    the JVM's signals, and then exits.
    """
    folder = os.environ.get("PYTHON_WORKER_FACTORY_SOCK_DIR")
    if not folder or not hasattr(socket, "AF_UNIX") or not os.path.exists(os.path.join(folder, SOCKET_NAME)):
        return False
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(HAND_OVER_SECONDS)
        connection.connect(os.path.join(folder, SOCKET_NAME))
        if not _receive(connection)[0].get("ready"):
            raise ValueError("the prestarted process is not ready")
        connection.settimeout(30)
        _send(connection, {"executable": sys.executable, "cwd": os.getcwd(), "env": dict(os.environ),
                           "argv": sys.argv}, fds=[0, 1, 2])
        answer = _receive(connection)[0]
    except (OSError, ValueError):
        connection.close()
        return False
    if not answer.get("adopted"):
        connection.close()
        if os.environ.get("SPARKERAS_DEBUG", "") not in ("", "0"):  # the JVM passes this stderr on to the driver's
            print(f"sparkeras: the prestarted Python daemon refused to take over: {answer.get('why')}; this "
                  "daemon imports the Keras backend itself.", file=sys.stderr, flush=True)
        return False
    _stand_in(connection, int(answer["pid"]))
    return True


def _stand_in(connection: socket.socket, daemon: int) -> None:
    """Be the process the JVM launched until the daemon ends: pass its SIGTERM on, then exit.

    The process replaces itself (``exec``, same process id) with an
    interpreter that runs :data:`STAND_IN` without site-packages: the
    launched daemon had imported sparkeras and numpy, 79 MB resident, to
    sit waiting for the whole session.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)  # the daemon alone holds the JVM's pipes, so their ends mean what they meant
    os.close(devnull)
    connection.setblocking(True)  # its timeout made the descriptor non-blocking, which the program would inherit
    fd = connection.detach()
    os.set_inheritable(fd, True)
    arguments = [str(fd), str(daemon)]
    try:
        os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", STAND_IN, *arguments])
    except OSError:
        sys.argv[1:] = arguments
        exec(STAND_IN, {"__name__": "__stand_in__"})  # noqa: S102 - our own constant, run here instead


STAND_IN = """
import os, signal, sys
connection, daemon = int(sys.argv[1]), int(sys.argv[2])

def pass_on(signum, frame):
    try:
        os.kill(daemon, signum)
    except OSError:
        pass

signal.signal(signal.SIGTERM, pass_on)  # how the JVM stops its daemon (Process.destroy)
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as Spark's daemon ignores it
while True:
    try:
        if not os.read(connection, 1024):
            break
    except InterruptedError:
        continue
    except OSError:
        break
"""
"""The stand-in's program: wait until the daemon ends (its end of the connection closes)."""


def _send(connection: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    header = struct.pack("!I", len(data))
    if fds:
        socket.send_fds(connection, [header], fds)
        connection.sendall(data)
    else:
        connection.sendall(header + data)


def _receive(connection: socket.socket, with_fds: int = 0) -> tuple[dict, list[int]]:
    fds: list[int] = []
    if with_fds:
        head, fds, _, _ = socket.recv_fds(connection, 4, with_fds)
    else:
        head = connection.recv(4)
    head += _exactly(connection, 4 - len(head))
    data = _exactly(connection, struct.unpack("!I", head)[0])
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("not a JSON object")
    return message, fds


def _exactly(connection: socket.socket, size: int) -> bytes:
    parts = []
    while size > 0:
        part = connection.recv(min(size, 1 << 16))
        if not part:
            raise ValueError("the peer closed the connection")
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


if __name__ == "__main__":
    main(sys.argv[1])
