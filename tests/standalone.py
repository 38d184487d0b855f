"""A real Spark standalone cluster for the suite: a master and workers, from the installed pyspark.

pip's pyspark ships no ``start-master.sh``/``start-worker.sh``, so the
daemons are started with ``spark-class``, as the README tells operators to.
The master picks its own port, read back from its log.

With ``separate_hosts=True``, and where the machine allows it (root, and
``ip netns``), each worker runs in a network namespace of its own, joined
to the master and the driver by a veth pair on a bridge: every worker is a
host with its own address, so the code paths between machines run for real
(all-reduce between hosts over TCP, data shipped to executors, servers
bound to a non-loopback address). Otherwise everything binds to loopback,
and :attr:`StandaloneCluster.separate_hosts` says why not.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time


def executors_with_a_daemon(application_id: str) -> tuple[int, int]:
    """The application's executor processes, and how many of them have started a Python daemon (pyspark's or
    sparkeras'), from the process table; processes that end while they are listed are left out."""
    counts = daemons_per_executor(application_id)
    return len(counts), sum(count > 0 for count in counts)


def daemons_per_executor(application_id: str) -> list[int]:
    """How many Python daemons (pyspark's or sparkeras') each of the application's executor processes runs."""
    import psutil

    def command(process) -> str:
        try:
            return " ".join(process.cmdline())
        except psutil.Error:
            return ""

    counts = []
    for executor in [p for p in psutil.process_iter() if f"--app-id {application_id}" in command(p)]:
        try:
            counts.append(sum(" -m " in command(c) and "daemon" in command(c) for c in executor.children()))
        except psutil.Error:
            pass
    return counts


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


class HostNetwork:
    """``hosts`` network namespaces on one bridge: the bridge is ``10.77.N.1``, host ``i`` is ``10.77.N.(i+2)``."""

    @staticmethod
    def unavailable() -> str | None:
        """Why separate hosts cannot be made here, or ``None`` when they can."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "the ip command (iproute2) is missing"
        probe = f"skrprobe{os.getpid()}"
        made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if made.returncode != 0:
            return f"ip netns add failed: {made.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    made = 0  # networks made by this process, so two of them never share a name or a subnet

    def __init__(self, hosts: int) -> None:
        HostNetwork.made += 1
        tag = (os.getpid() % 10_000) * 10 + HostNetwork.made % 10
        self.subnet = 10 + (os.getpid() + HostNetwork.made) % 240
        self.bridge, self.address = f"skb{tag}", f"10.77.{self.subnet}.1"
        self.namespaces = [f"skr{tag}-{i}" for i in range(hosts)]
        self.addresses = [f"10.77.{self.subnet}.{i + 2}" for i in range(hosts)]
        try:
            self._create(tag)
        except subprocess.CalledProcessError:
            self.close()
            raise

    def _create(self, tag: int) -> None:
        self._ip("link", "add", self.bridge, "type", "bridge")
        self._ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
        self._ip("link", "set", self.bridge, "up")
        for i, (ns, address) in enumerate(zip(self.namespaces, self.addresses)):
            outer, inner = f"skv{tag}o{i}", f"skv{tag}i{i}"
            self._ip("netns", "add", ns)
            self._ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._ip("link", "set", inner, "netns", ns)
            self._ip("link", "set", outer, "master", self.bridge)
            self._ip("link", "set", outer, "up")
            for args in (("addr", "add", f"{address}/24", "dev", inner), ("link", "set", inner, "up"),
                         ("link", "set", "lo", "up")):
                self._ip("netns", "exec", ns, "ip", *args)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def run_in(self, index: int) -> list[str]:
        """The command prefix that runs a program on host ``index``."""
        return ["ip", "netns", "exec", self.namespaces[index]]

    def close(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its end of the veth pair, and the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class StandaloneCluster:
    """``spark-class`` master and ``workers`` workers of ``cores`` cores each, stopped by :meth:`stop`."""

    def __init__(self, root: str, workers: int = 2, cores: int = 1, memory: str = "1g", wait: float = 60.0,
                 separate_hosts: bool = False) -> None:
        import pyspark

        self.root = root
        self.network: HostNetwork | None = None
        self.separate_hosts: str | None = "not asked for"  # None when every worker is a host of its own
        if separate_hosts:
            self.separate_hosts = HostNetwork.unavailable()
            if self.separate_hosts is None:
                try:
                    self.network = HostNetwork(workers)
                except subprocess.CalledProcessError as exc:  # e.g. veth pairs refused in a container
                    self.separate_hosts = f"{' '.join(exc.cmd)} failed: {(exc.stderr or b'').decode().strip()}"
        self.host = self.network.address if self.network else "127.0.0.1"  # where the master and drivers bind
        self.env = dict(os.environ, SPARK_HOME=os.path.dirname(pyspark.__file__), PYSPARK_PYTHON=sys.executable,
                        SPARK_LOCAL_IP=self.host)
        self.cores, self.memory, self.wait = cores, memory, wait
        self.master, self.workers = None, []
        try:  # a cluster that does not start leaves no daemons and no network namespaces behind
            self.master = self._start("master", "org.apache.spark.deploy.master.Master",
                                      "--host", self.host, "--port", "0", "--webui-port", "0")
            self.url = self._wait_for(self.master, r"Starting Spark master at (spark://\S+)", wait)
            for i in range(workers):
                self.workers.append(self._start_worker(i))
            for proc in self.workers:
                self._wait_for(proc, r"Successfully registered with master", wait)
        except BaseException:
            self.stop()
            raise

    def worker_host(self, index: int) -> str:
        return self.network.addresses[index] if self.network else "127.0.0.1"

    def _start_worker(self, index: int) -> subprocess.Popen:
        host = self.worker_host(index)
        return self._start(f"worker{index}-{time.monotonic_ns()}", "org.apache.spark.deploy.worker.Worker",
                           "--host", host, "--cores", str(self.cores), "--memory", self.memory,
                           "--webui-port", "0", "--work-dir", os.path.join(self.root, f"work{index}"), self.url,
                           prefix=self.network.run_in(index) if self.network else None, env={"SPARK_LOCAL_IP": host})

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

    def driver_env(self) -> dict[str, str]:
        """The environment a driver process on this machine needs to reach the cluster (and be reached)."""
        return dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP=self.host)

    def _start(self, name: str, cls: str, *args: str, prefix: list[str] | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(os.path.join(self.root, f"{name}.log"), "wb")
        proc = subprocess.Popen([*(prefix or []), spark_class(), cls, *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**self.env, **(env or {})}, start_new_session=True)
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
        for proc in self.workers + ([self.master] if self.master is not None else []):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(30)
        if self.network is not None:
            self.network.close()
