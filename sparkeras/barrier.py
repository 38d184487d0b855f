"""Run a function on Spark barrier tasks that talk to each other.

Barrier mode starts all of a stage's tasks together (or none), which is what
collective training needs: every rank must be alive to all-reduce. This module
holds what both the all-reduce strategy and :func:`run` need: the checks that
turn Spark's slow or silent failure modes into clear errors up front, and the
per-task :class:`WorkerContext`.

:func:`run` is the TorchDistributor / TensorFlowOnSpark-style entry point: your
function gets its rank, the world size, collectives over numpy arrays and, if
you pass a DataFrame, its own partition as Arrow batches; rank 0's return
value comes back to the driver.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from sparkeras.comm.server import ServerAddress
from sparkeras.errors import InputError, worker_error

DEFAULT_TIMEOUT = 300.0


EXECUTOR_REGISTRATION_KEY = "spark.scheduler.maxRegisteredResourcesWaitingTime"
"""Spark's own limit on how long a new session waits for its executors to register (30 s by default); sparkeras'
checks wait as long."""


def registration_wait(sc: Any) -> float:
    """The session's :data:`EXECUTOR_REGISTRATION_KEY` in seconds (Spark's parsing: ``30s``, ``1min``, bare ms)."""
    try:
        return sc._jsc.sc().conf().getTimeAsMs(EXECUTOR_REGISTRATION_KEY, "30s") / 1000.0
    except Exception:  # noqa: BLE001 - Spark Connect, or a value Spark refuses too: Spark's default
        return 30.0


def registered_slots(sc: Any, wanted: int = 1, wait: float | None = None) -> int:
    """The cluster's task slots, once its executors have registered, waiting at most ``wait`` seconds
    (:func:`registration_wait` where not given).

    A session just started on a cluster (standalone, ``local-cluster``,
    YARN) has no executors yet: they register over the next seconds, and
    Spark runs jobs once they have. Counted right away the slots were 0
    (``SparkModel(model, "easgd").fit`` refused "the cluster has 0 task
    slots" on a fresh ``local-cluster[2,1,1024]``), and
    ``defaultParallelism``, the default worker count, was 2 for 4 seconds
    on ``local-cluster[2,2,1024]`` before it became 4. So this waits until
    there are ``wanted`` slots and, in a session younger than ``wait``
    seconds, until the executors its settings promise have registered
    (:func:`expected_slots`), or, where they promise none (a standalone
    master handing out every core), until the count has held for 2 s.
    Local mode's one executor is the driver: no wait. With no executor at
    all by then it raises :func:`no_executors` instead of returning 0.
    """
    from sparkeras.session import is_local

    slots = concurrent_slots(sc)
    if is_local(sc.master):
        return slots
    wait = registration_wait(sc) if wait is None else wait
    now = time.monotonic()
    deadline = now + wait
    young_until = min(deadline, now + wait - (time.time() - sc.startTime / 1000.0))
    expected = expected_slots(sc.master, sc.getConf())
    held_since, last = _held_since(sc, slots, now), slots

    def settled() -> bool:
        if time.monotonic() >= young_until:
            return True
        if expected is not None:
            return slots >= expected
        return slots > 0 and time.monotonic() - held_since >= 2.0

    while (slots < wanted or not settled()) and time.monotonic() < deadline:
        time.sleep(0.5)
        slots = concurrent_slots(sc)
        if slots != last:
            held_since, last = time.monotonic(), slots
    if slots == 0 and not _dynamic_allocation(sc.getConf()):
        raise no_executors(sc, wait)
    return slots


def require_executors(sc: Any) -> None:
    """Return once a cluster session has an executor to run tasks; raise :func:`no_executors` after
    :func:`registration_wait` seconds without one. Local mode and dynamic allocation return at once."""
    from sparkeras.session import is_local

    if is_local(sc.master) or _dynamic_allocation(sc.getConf()):
        return
    wait = registration_wait(sc)
    deadline = time.monotonic() + wait
    while concurrent_slots(sc) == 0:
        if time.monotonic() >= deadline:
            raise no_executors(sc, wait)
        time.sleep(0.5)


def no_executors(sc: Any, waited: float) -> InputError:
    """The error for a cluster session that no executor joined in ``waited`` seconds.

    Why. Spark then waits for ever, and its only word, "Initial job has not
    accepted any resources", is a warning that sparkeras' quiet logging
    holds back: on a standalone cluster whose workers could not reach the
    driver's address, every executor exited as it started, the master
    launched the next (47 in ten minutes), and the fit hung without a line.
    """
    conf = sc.getConf()
    driver = f"{conf.get('spark.driver.host', '?')}:{conf.get('spark.driver.port', '?')}"
    cores = conf.get("spark.executor.cores", None)
    memory = conf.get("spark.executor.memory", "1g")
    return InputError(
        f"No executor has joined this Spark session (master {sc.master}) in {waited:.0f} s, so no task can run. "
        f"Executors connect back to the driver at {driver}: if the cluster's machines cannot reach that address, "
        "set SPARK_LOCAL_IP or spark.driver.host to one they can (the workers' logs show the failed connections). "
        f"Otherwise no worker may have {f'{cores} cores' if cores else 'a core'} and {memory} of memory free for an "
        "executor (spark.executor.cores, spark.executor.memory): the master's web UI lists its workers and what "
        f"they have free. {EXECUTOR_REGISTRATION_KEY} sets how long to wait.")


def _dynamic_allocation(conf: Any) -> bool:
    """Whether executors come and go with the jobs' demand, so that none may be there before a job asks."""
    return conf.get("spark.dynamicAllocation.enabled", "false").strip().lower() == "true"


def expected_slots(master: str, conf: Any) -> int | None:
    """The task slots a session's master URL and settings (a ``SparkConf``) promise once every executor has
    registered, else ``None``.

    ``local-cluster[N,C,M]``: ``N * C``; ``spark.cores.max``; or, without
    dynamic allocation, ``spark.executor.instances`` times
    ``spark.executor.cores`` (1 where unset, as on YARN and Kubernetes);
    each divided by ``spark.task.cpus``.
    """
    import re

    cluster = re.fullmatch(r"local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]", master)
    try:
        per_task = max(1, int(conf.get("spark.task.cpus", "1")))
        if cluster:
            return int(cluster.group(1)) * int(cluster.group(2)) // per_task
        if conf.get("spark.cores.max", None):
            return int(conf.get("spark.cores.max")) // per_task
        if conf.get("spark.executor.instances", None) and not _dynamic_allocation(conf) \
                and not master.startswith("spark://"):
            return int(conf.get("spark.executor.instances")) * int(conf.get("spark.executor.cores", "1")) // per_task
    except ValueError:  # a setting Spark would refuse too: no promise
        return None
    return None


def check_barrier(sc: Any, num_workers: int, wait: float | None = None) -> None:
    """Fail fast when Spark cannot run ``num_workers`` barrier tasks at once.

    Spark itself either refuses late (after retrying for minutes) or waits
    for slots that never come, so both cases are checked here. Executors
    that are still registering (a cluster just started) are waited for, up
    to ``wait`` seconds (:func:`registered_slots`).
    """
    if _dynamic_allocation(sc.getConf()):
        raise InputError(
            "Barrier training needs all its tasks running at once, which Spark does not allow with "
            "dynamic allocation; set spark.dynamicAllocation.enabled=false for this job.")
    slots = registered_slots(sc, num_workers, wait)
    if slots < num_workers:
        raise InputError(
            f"num_workers={num_workers} barrier tasks must run at the same time, but the cluster has "
            f"{slots} task slots (executor cores / spark.task.cpus). Use at most {slots} workers, "
            "or give the job more executors or cores.")


def worker_slots(sc: Any) -> int:
    """How many workers a fit without ``num_workers`` may share: the slots free at once, in local mode at most
    one per core (:func:`sparkeras.session.local_slots` says why)."""
    from sparkeras.session import is_local, local_slots

    return local_slots(sc) if is_local(sc.master) else concurrent_slots(sc)


def concurrent_slots(sc: Any) -> int:
    """How many tasks the cluster can run at once right now (noted on ``sc``: :func:`_held_since`)."""
    jsc = sc._jsc.sc()
    try:
        slots = int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
    except Exception:  # noqa: BLE001 - an internal API; fall back to Spark's public estimate
        slots = int(sc.defaultParallelism)
    seen = getattr(sc, "_sparkeras_slots_seen", None)
    if seen is None or seen[0] != slots:
        sc._sparkeras_slots_seen = (slots, time.monotonic())
    return slots


def _held_since(sc: Any, slots: int, now: float) -> float:
    """Since when the cluster has had ``slots`` task slots, as far as any count of this process saw; else ``now``.

    Why. In a session younger than the registration wait, a count that no
    setting promises must hold 2 s before :func:`registered_slots` trusts it,
    and that hold started at each call: on a standalone cluster every fit in
    the session's first 30 s waited 2.0 s, though its executors had
    registered long before (the session's start-up job counts the slots each
    second for its first minute, :func:`sparkeras.session.start_python_workers`).
    """
    seen = getattr(sc, "_sparkeras_slots_seen", None)
    return seen[1] if seen is not None and seen[0] == slots else now


class WorkerContext:
    """What a barrier task's function gets: its rank, the world, and collectives.

    Arrays are numpy; collectives run through shared memory between tasks on
    one machine and over an authenticated TCP ring between machines
    (:mod:`sparkeras.comm.collective`), and every rank must call the same
    collectives in the same order.
    """

    def __init__(self, rank: int, world_size: int, collective: Any,
                 batches: Iterator[Any] | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self._collective = collective
        self._batches = batches

    @property
    def transport(self) -> str:
        """How this rank reduces: ``"shared memory"`` (with peers on its machine; TCP between machines) or ``"tcp"``."""
        return self._collective.transport

    def allreduce(self, array: Any, op: str = "mean") -> np.ndarray:
        """``op`` (``mean``, ``sum``, ``max``, ``min``) of ``array`` over all ranks (one shape and dtype on all)."""
        array = np.asarray(array)
        self._check_alike(array, "allreduce")
        return self._collective.allreduce(array, op)

    def broadcast(self, array: Any, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank; every rank passes an array of its shape and dtype."""
        array = np.asarray(array)
        self._check_alike(array, "broadcast")
        return self._collective.broadcast(array, root)

    def _check_alike(self, array: np.ndarray, collective: str) -> None:
        """Refuse, on every rank at once, arrays whose shape or dtype differ between the ranks.

        The collectives reduce buffers of one size: a rank's 3 values summed
        with another's 4 gave a wrong answer in silence. One small collective
        of a digest of the shape and dtype (its maximum and, negated, its
        minimum) tells every rank the same thing, so they all raise and none
        waits in the next collective.
        """
        digest = zlib.crc32(f"{array.shape}|{array.dtype.str}".encode())
        seen = self._collective.allreduce(np.array([digest, -digest], dtype=np.int64), "max")
        if int(seen[0]) != -int(seen[1]):
            raise InputError(
                f"ctx.{collective} was given arrays of different shapes or dtypes on the ranks: rank {self.rank} "
                f"passed shape {array.shape} of {array.dtype}. Every rank must pass one shape and dtype to each "
                f"collective, in the same order.")

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        self._collective.barrier()

    def partition(self) -> Iterator[Any]:
        """This task's partition of ``data``, as ``pyarrow.RecordBatch`` es (read once)."""
        if self._batches is None:
            raise InputError("This run was given no data; pass data=<DataFrame or Parquet path> to sparkeras.run.")
        batches, self._batches = self._batches, iter(())
        return batches


def run(train_fn: Callable[[WorkerContext], Any], num_workers: int, data: Any = None, *,
        timeout: float = DEFAULT_TIMEOUT, shared_memory: bool = True) -> Any:
    """Run ``train_fn(context)`` on ``num_workers`` barrier tasks; return rank 0's result.

    Args:
        train_fn: called once per task with a :class:`WorkerContext`. Its
            return value on rank 0 is sent back (it must be picklable).
        num_workers: how many tasks run together (at most the cluster's slots).
        data: optional Spark DataFrame or Parquet path; it is repartitioned to
            ``num_workers`` partitions if needed, and each task reads its own
            through ``context.partition()``.
        timeout: seconds to wait for every task to reach the rendezvous, and
            for any one collective.
        shared_memory: let tasks on the same machine reduce through shared
            memory; ``False`` sends everything over TCP.
    """
    from sparkeras.comm.collective import Rendezvous
    from sparkeras.comm.server import FrameServer
    from sparkeras.session import driver_host, get_spark

    if not isinstance(num_workers, int) or num_workers < 1:
        raise InputError(f"num_workers must be a positive integer, got {num_workers!r}.")
    if not callable(train_fn):
        raise InputError(f"train_fn must be callable, got {type(train_fn).__name__}.")
    spark = get_spark()
    sc = spark.sparkContext
    check_barrier(sc, num_workers)
    rendezvous = Rendezvous(timeout)
    server = FrameServer(driver_host(spark), rendezvous.handle, 0, "sparkeras-rendezvous")
    task = _Task(train_fn, CollectiveSettings.for_cluster(sc, server.address, timeout, shared_memory))
    try:
        if data is None:
            rows = (sc.parallelize(range(num_workers), num_workers).barrier()
                    .mapPartitions(lambda _: task.run(None)).collect())
            return next((value for rank, value in rows if rank == 0), None)
        frame = _frame(spark, data)
        if frame.rdd.getNumPartitions() != num_workers:
            frame = frame.repartition(num_workers)
        out = frame.mapInArrow(task.run_arrow, "rank INT, value BINARY", barrier=True).collect()
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated, never swallowed
        raise worker_error(exc, "running the function on barrier tasks") from None
    finally:
        server.close()
        rendezvous.close()
    import cloudpickle

    return next((cloudpickle.loads(r["value"]) for r in out if r["rank"] == 0), None)


@dataclass(frozen=True)
class CollectiveSettings:
    """How a barrier task joins its peers: the driver's rendezvous, the timeout, and the transport."""

    rendezvous: ServerAddress
    timeout: float
    loopback: bool
    shared_memory: bool = True

    @classmethod
    def for_cluster(cls, sc: Any, rendezvous: ServerAddress, timeout: float,
                    shared_memory: bool) -> "CollectiveSettings":
        """Settings for ``sc``'s cluster: in local modes every task is on this machine (loopback)."""
        return cls(rendezvous, timeout, sc.master.startswith("local"), shared_memory)

    def join(self) -> Any:
        """This task's collective (:meth:`sparkeras.comm.collective.Collective.join`)."""
        from pyspark import BarrierTaskContext

        from sparkeras.comm.collective import Collective

        return Collective.join(BarrierTaskContext.get(), self.rendezvous, self.timeout, self.loopback,
                               self.shared_memory)


@dataclass(frozen=True)
class _Task:
    """One barrier task of :func:`run`: join, call the user's function, hand back rank 0's value."""

    train_fn: Callable[[WorkerContext], Any]
    settings: CollectiveSettings

    def run(self, batches: Iterator[Any] | None) -> Iterator[tuple[int, Any]]:
        collective = self.settings.join()
        try:
            result = self.train_fn(WorkerContext(collective.rank, collective.world_size, collective, batches))
        finally:
            collective.close()
        yield collective.rank, (result if collective.rank == 0 else None)

    def run_arrow(self, batches: Iterator[Any]) -> Iterator[Any]:
        import cloudpickle
        import pyarrow as pa

        for rank, value in self.run(batches):
            blob = cloudpickle.dumps(value) if rank == 0 else b""
            yield pa.RecordBatch.from_pydict({"rank": pa.array([rank], pa.int32()),
                                              "value": pa.array([blob], pa.binary())})


def _frame(spark: Any, data: Any) -> Any:
    import os

    from pyspark.sql import DataFrame

    if isinstance(data, DataFrame):
        return data
    if isinstance(data, (str, os.PathLike)):
        from sparkeras.data.sources import as_dataset

        return as_dataset(spark, os.fspath(data)).frame
    raise InputError(f"sparkeras.run takes data as a Spark DataFrame or a Parquet path, got {type(data).__name__}.")
