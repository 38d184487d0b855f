"""Collective operations between the tasks of one Spark barrier stage.

Tasks that share a machine reduce through shared memory
(:mod:`sparkeras.comm.machine`); the machines' first tasks, their leaders,
reduce over an authenticated TCP ring (:mod:`sparkeras.comm.ring`), and each
leader hands the result back through its machine's segment: a hierarchical
all-reduce, as Horovod's. In Spark's local modes every task is on the
driver's machine, so shared memory does it all. With ``shared_memory=False``
(or where the segment's flags cannot be used: not x86-64, more than 63 tasks
on a machine) every task is its own member of the ring.

Rendezvous: each machine's leader creates its segment and publishes its
name to the driver's :class:`Rendezvous`; the other tasks of the machine
look it up there. Each ring member publishes the address it listens on the
same way. Spark's ``BarrierTaskContext.allGather`` could carry these too,
but it answers no sooner than about a second (Spark's barrier RPC), which
every fit and every relaunch would pay. The driver's server signs its
frames with a secret made for the job, so only the job's tasks can publish
or look up, and the ring's handshakes prove the same secret. Only arrays
cross the wire, never pickled objects.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from sparkeras.comm.base import CollectiveBase
from sparkeras.comm.machine import MachineCollective, is_machine_address, remove_segment
from sparkeras.comm.ring import LeaderRing
from sparkeras.comm.server import FrameClient, Reply, ServerAddress
from sparkeras.comm.shared_memory import host_groups


class Collective(CollectiveBase):
    """Shared memory among a machine's tasks, an authenticated TCP ring among the machines' leaders."""

    def __init__(self, rank: int, world_size: int, machine: MachineCollective | None,
                 ring: LeaderRing | None, machines: int) -> None:
        super().__init__(rank, world_size)
        self._machine, self._ring, self._machines = machine, ring, machines

    @classmethod
    def join(cls, context: Any, rendezvous: ServerAddress, timeout: float, loopback: bool = False,
             shared_memory: bool = True) -> "Collective":
        """Rendezvous with the barrier stage's other tasks (:meth:`connect`), as Spark's ``context`` places them.

        ``loopback`` (local mode, every task on this machine) keeps
        everything on 127.0.0.1.
        """
        world = len(context.getTaskInfos())
        hosts = ["127.0.0.1"] * world if loopback else [_task_host(context, r) for r in range(world)]
        return cls.connect(context.partitionId(), hosts, context.stageId(), rendezvous, timeout, shared_memory)

    @classmethod
    def connect(cls, rank: int, hosts: list[str], stage: int, rendezvous: ServerAddress, timeout: float,
                shared_memory: bool = True) -> "Collective":
        """Join ranks ``0 .. len(hosts) - 1``, rank ``r`` on the machine ``hosts[r]``; raise ``TimeoutError``
        if a peer does not arrive within ``timeout``.

        ``rendezvous`` is the driver's :class:`Rendezvous` server, ``stage``
        what tells this stage's publications from others'.
        ``shared_memory`` lets tasks on the same machine reduce through
        shared memory (``False``: each task joins the TCP ring).
        """
        world = len(hosts)
        groups = (host_groups(hosts) if MachineCollective.serves(shared_memory, max(map(hosts.count, hosts)))
                  else [[r] for r in range(world)])
        index = next(i for i, members in enumerate(groups) if rank in members)
        members = groups[index]
        driver = FrameClient(rendezvous, 0, timeout=timeout)
        machine: MachineCollective | None = None
        ring: LeaderRing | None = None
        try:
            if len(members) > 1:
                machine = _join_machine(driver, stage, index, members.index(rank), len(members), timeout)
            if rank == members[0] and len(groups) > 1:
                ring = LeaderRing.join(driver, stage, index, [hosts[g[0]] for g in groups], rendezvous.secret,
                                       timeout)
            if machine is not None:
                machine.meet()
        except BaseException:
            if machine is not None:
                machine.close()  # an unpublished or unmet segment: nobody else would remove its file
            if ring is not None:
                ring.close()
            raise
        finally:
            driver.close()
        return cls(rank, world, machine, ring, len(groups))

    @property
    def transport(self) -> str:
        """``"shared memory"`` where this rank reduces with peers on its machine that way, else ``"tcp"``."""
        return "shared memory" if self._machine is not None else "tcp"

    def _reduce(self, buffer: np.ndarray, op: str) -> None:
        if self._machine is not None:
            self._machine._reduce(buffer, op)
        if self._machines == 1:
            return
        if self._ring is not None:
            self._ring.allreduce_(buffer.reshape(-1), op)
        if self._machine is not None:  # the leader's result, to the machine's other tasks
            self._machine.broadcast_(buffer.reshape(-1).view(np.uint8), 0)

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank (same shape and dtype everywhere).

        Between machines it is a sum of bytes in which every rank but
        ``root`` adds zeros: exact for any dtype, and the ring's one code path.
        """
        out = np.array(array, copy=True, order="C")
        if self._machines == 1:
            return self._machine.broadcast(out, root) if self._machine is not None else out
        if self.rank != root:
            out[...] = 0
        self._reduce(out.reshape(-1).view(np.uint8), "sum")
        return out

    def barrier(self) -> None:
        if self._machines == 1:
            if self._machine is not None:
                self._machine.barrier()
            return
        self._reduce(np.zeros(1, np.uint8), "max")

    def close(self) -> None:
        if self._machine is not None:
            self._machine.close()
            self._machine = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None


def _join_machine(driver: FrameClient, stage: int, index: int, local_rank: int, size: int,
                  timeout: float) -> MachineCollective:
    """This task's share of machine ``index``'s segment: its leader creates and publishes it, the others map it."""
    key = f"machine{index}"
    if local_rank == 0:
        machine = MachineCollective.create(size, timeout)
        if machine is None:
            raise RuntimeError(
                "could not create a shared-memory segment for the tasks of this machine (is /dev/shm full?); "
                "pass shared_memory=False to reduce over TCP instead")
        try:
            driver.call({"type": "publish", "stage": stage, "key": key, "address": machine.address,
                         "lookups": size - 1})
        except BaseException:
            machine.close()
            raise
        return machine
    return _look_up(driver, stage, local_rank, size, timeout, key)


class Rendezvous:
    """The driver's half of the rendezvous: where each barrier stage's tasks find each other.

    A task publishes an address (a machine's segment, a ring member's
    ``host:port``) under its stage and a ``key``, for ``lookups`` lookups.
    Spark's Python API does not tell a task which attempt of its stage it
    belongs to, so a stage that Spark itself relaunches (same stage id) is
    told apart by counting: a publication serves the lookups of its
    attempt, and a later publication under the same key replaces it. A task
    that finds a published address dead (its attempt failed before every
    peer had looked it up) reports it ``stale`` and waits for the next. A
    lookup waits, on its own server thread, up to ``timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._published: dict[tuple[int, str], dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._segments: set[str] = set()  # machine addresses published, removed by close()

    def handle(self, header: dict[str, Any], payload: bytes) -> Reply | None:
        """Answer ``publish``, ``lookup`` and ``stale`` frames; ``None`` for any other kind."""
        kind = header.get("type")
        if kind not in ("publish", "lookup", "stale"):
            return None
        name = (int(header.get("stage", -1)), str(header.get("key", "")))
        with self._changed:
            if kind == "publish":
                address = str(header.get("address", ""))
                self._published[name] = {"address": address, "lookups": int(header.get("lookups", 0))}
                if is_machine_address(address):
                    self._segments.add(address)
                self._changed.notify_all()
            elif kind == "stale":
                if self._published.get(name, {}).get("address") == header.get("address"):
                    del self._published[name]
            else:
                if not self._changed.wait_for(lambda: self._published.get(name, {}).get("lookups", 0) > 0,
                                              self.timeout):
                    return {"address": ""}, b""
                entry = self._published[name]
                entry["lookups"] -= 1
                return {"address": entry["address"]}, b""
        return {}, b""

    def close(self) -> None:
        """Remove what the stages' tasks may have left: a segment whose creator died before unlinking it.

        Call once no task of those stages runs any more (after the job).
        """
        with self._changed:
            segments, self._segments = self._segments, set()
        for address in segments:
            remove_segment(address)


def _look_up(driver: FrameClient, stage: int, rank: int, world: int, timeout: float,
             key: str = "machine0") -> MachineCollective:
    """Map the segment this machine's leader published under ``key``.

    A publication whose attempt is over (a segment whose creator has gone)
    is reported stale and the driver asked again.
    """
    deadline = time.monotonic() + timeout
    while True:
        reply, _ = driver.call({"type": "lookup", "stage": stage, "key": key}, timeout=timeout + 10)
        address = str(reply.get("address", ""))
        if not address or deadline - time.monotonic() <= 0:
            raise TimeoutError(f"local rank {rank}: the first task of this machine in the barrier stage did not "
                               f"start within {timeout:g}s")
        joined = MachineCollective.open(address, rank, world, timeout)
        if joined is not None:
            return joined
        driver.call({"type": "stale", "stage": stage, "key": key, "address": address})


def _task_host(context: Any, rank: int) -> str:
    """The address of this task's executor, as Spark knows it."""
    address = context.getTaskInfos()[rank].address
    return address.rsplit(":", 1)[0] if address else "127.0.0.1"
