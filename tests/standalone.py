"""A real Spark standalone cluster for the suite: a master and workers, from the installed pyspark.

pip's pyspark ships no ``start-master.sh``/``start-worker.sh``, so the
daemons are started with ``spark-class``, as the README tells operators to.
Everything binds to loopback; the master picks its own port, read back from
its log.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time


def parent_pid(pid: int) -> int:
    """The parent of ``pid``, from ``/proc`` (field 4 of ``stat``, after the parenthesised command name)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def executor_of(pid: int) -> int:
    """The executor JVM (``CoarseGrainedExecutorBackend``) that a Python worker ``pid`` belongs to."""
    while pid > 1:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"CoarseGrainedExecutorBackend" in f.read():
                return pid
        pid = parent_pid(pid)
    raise LookupError("the process does not run under a Spark executor")


def spark_class() -> str:
    import pyspark

    return os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-class")


class StandaloneCluster:
    """``spark-class`` master and ``workers`` workers of ``cores`` cores each, stopped by :meth:`stop`."""

    def __init__(self, root: str, workers: int = 2, cores: int = 1, memory: str = "1g", wait: float = 60.0) -> None:
        import pyspark

        self.root = root
        self.env = dict(os.environ, SPARK_HOME=os.path.dirname(pyspark.__file__), PYSPARK_PYTHON=sys.executable,
                        SPARK_LOCAL_IP="127.0.0.1")
        self.master = self._start("master", "org.apache.spark.deploy.master.Master",
                                  "--host", "127.0.0.1", "--port", "0", "--webui-port", "0")
        self.url = self._wait_for(self.master, r"Starting Spark master at (spark://\S+)", wait)
        self.cores, self.memory, self.wait = cores, memory, wait
        self.workers = [self._start_worker(i) for i in range(workers)]
        for proc in self.workers:
            self._wait_for(proc, r"Successfully registered with master", wait)

    def _start_worker(self, index: int) -> subprocess.Popen:
        return self._start(f"worker{index}-{time.monotonic_ns()}", "org.apache.spark.deploy.worker.Worker",
                           "--host", "127.0.0.1", "--cores", str(self.cores), "--memory", self.memory,
                           "--webui-port", "0", "--work-dir", os.path.join(self.root, f"work{index}"), self.url)

    def restart_worker(self, index: int) -> None:
        """Start worker ``index`` again after :meth:`kill_worker`, and wait until the master has it."""
        self.workers[index] = self._start_worker(index)
        self._wait_for(self.workers[index], r"Successfully registered with master", self.wait)

    def worker_of(self, pid: int) -> int:
        """The index of the Worker daemon that ``pid`` (an executor, or a Python worker under one) runs under."""
        daemons = {proc.pid: i for i, proc in enumerate(self.workers)}
        while pid > 1:
            if pid in daemons:
                return daemons[pid]
            pid = parent_pid(pid)
        raise LookupError("the process does not run under any of this cluster's workers")

    def _start(self, name: str, cls: str, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.root, f"{name}.log"), "wb")
        proc = subprocess.Popen([spark_class(), cls, *args], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        proc.log_path = log.name
        return proc

    @staticmethod
    def _wait_for(proc: subprocess.Popen, pattern: str, wait: float) -> str:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with open(proc.log_path, errors="replace") as f:
                found = re.search(pattern, f.read())
            if found:
                return found.group(found.lastindex or 0)
            if proc.poll() is not None:
                break
            time.sleep(0.3)
        with open(proc.log_path, errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"standalone daemon did not log {pattern!r} within {wait}s:\n{tail}")

    def kill_worker(self, index: int) -> None:
        """SIGKILL a whole Worker daemon (its executors lose their worker and exit)."""
        os.killpg(self.workers[index].pid, signal.SIGKILL)

    def stop(self) -> None:
        for proc in self.workers + [self.master]:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(30)
