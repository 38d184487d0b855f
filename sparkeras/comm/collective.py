"""Collective operations between the tasks of one Spark barrier stage.

Between machines the reduction is ``torch.distributed`` over gloo, an
established CPU collective library; sparkeras only does the rendezvous, and
lets tasks that share a machine exchange through shared memory instead of
loopback TCP (:mod:`sparkeras.comm.shared_memory`; gloo still synchronizes
them and reduces between machines). When every task is on the driver's
machine (Spark's local modes), shared memory does it all and torch is not
imported (:mod:`sparkeras.comm.machine`).

Rendezvous: rank 0 creates a ``TCPStore`` on a port the operating system
picks at bind time (in the process that binds it, so there is no
bind-then-release race), listening only on the address its peers use, and publishes ``host:port`` to the driver's
:class:`Rendezvous`; the other ranks ask the driver for it and connect.
Spark's ``BarrierTaskContext.allGather`` could carry the address too, but it
answers no sooner than about a second (Spark's barrier RPC), which every fit
and every relaunch would pay. The driver's server signs its frames with a
secret made for the job, so only the job's tasks can publish or look up.
``wait_for_workers=False`` matters: with ``True`` rank 0 would block inside
the store's constructor before it could publish the port.

Only tensors cross the wire, never pickled objects. Neither the store nor
gloo authenticates peers, so barrier training belongs on a trusted cluster
network (as for Horovod, TorchDistributor and every gloo/NCCL job).
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from sparkeras.comm.base import CollectiveBase
from sparkeras.comm.machine import MachineCollective, is_machine_address, remove_segment
from sparkeras.comm.server import FrameClient, Reply, ServerAddress

_CONNECT_TIMEOUT = 15.0  # seconds to reach a published store before asking the driver again


class Collective(CollectiveBase):
    """The collective over ``torch.distributed`` (gloo), with shared memory between tasks of one machine."""

    def __init__(self, rank: int, world_size: int, store: Any, same_host: Any = None) -> None:
        super().__init__(rank, world_size)
        self._store = store  # keeps rank 0's server alive
        self._same_host = same_host

    @classmethod
    def join(cls, context: Any, rendezvous: ServerAddress, timeout: float, loopback: bool = False,
             shared_memory: bool = True) -> CollectiveBase:
        """Rendezvous with the stage's other tasks; raise ``TimeoutError`` if a peer does not arrive.

        ``rendezvous`` is the driver's :class:`Rendezvous` server. ``loopback``
        (local mode, every task on this machine) keeps the store and gloo's
        connections on 127.0.0.1, and there, with ``shared_memory``, the
        tasks need no gloo at all (:mod:`sparkeras.comm.machine`).
        ``shared_memory`` lets tasks on the same machine reduce through
        shared memory (``False``: gloo only).
        """
        rank = context.partitionId()
        world = len(context.getTaskInfos())
        if "torch.distributed" in sys.modules:
            import torch.distributed as dist

            if dist.is_initialized():  # a task of an earlier stage in this Python worker died mid-way
                dist.destroy_process_group()
        host = "127.0.0.1" if loopback else _task_host(context, rank)
        wait = datetime.timedelta(seconds=timeout)
        driver = FrameClient(rendezvous, 0, timeout=timeout)
        joined: Any = None
        try:
            if rank == 0:
                machine = MachineCollective.serves(loopback, shared_memory, world)
                joined = MachineCollective.create(world, timeout) if machine else None
                if joined is None:
                    joined = _bound_store(host, world, wait)
                    address = f"{host}:{joined.port}"
                else:
                    address = joined.address
                if world > 1:
                    driver.call({"type": "publish", "stage": context.stageId(), "world": world, "address": address})
            else:
                joined = _look_up(driver, context.stageId(), rank, world, timeout)
        except BaseException:
            if isinstance(joined, MachineCollective):
                joined.close()  # an unpublished segment: nobody else would remove its file
            raise
        finally:
            driver.close()
        if isinstance(joined, MachineCollective):
            joined.meet()
            return joined
        return cls._join_gloo(context, joined, host, timeout, shared_memory)

    @classmethod
    def _join_gloo(cls, context: Any, store: Any, host: str, timeout: float, shared_memory: bool) -> "Collective":
        import torch.distributed as dist

        rank = context.partitionId()
        world = len(context.getTaskInfos())
        _choose_gloo_interface(host)
        try:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout))
        except RuntimeError as exc:
            if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
                raise TimeoutError(
                    f"rank {rank}: not all {world} barrier tasks reached the rendezvous within {timeout:g}s") from exc
            raise
        same_host = None
        if shared_memory:
            from sparkeras.comm.shared_memory import SharedMemoryAllreduce

            hosts = [_task_host(context, r) for r in range(world)]
            same_host = SharedMemoryAllreduce.for_world(rank, hosts, store, timeout=timeout)
        # No rank leaves before every rank has built its groups: a rank whose user code failed at once
        # used to close its connections while a peer was still building one, and the peer's "connection
        # closed" error could reach the driver instead of the real one.
        dist.barrier()
        return cls(rank, world, store, same_host)

    @property
    def transport(self) -> str:
        """``"shared memory"`` where this rank reduces with peers on its machine that way, else ``"gloo"``."""
        return "shared memory" if self._same_host is not None and self._same_host.enabled else "gloo"

    def _reduce(self, buffer: np.ndarray, op: str) -> None:
        import torch
        import torch.distributed as dist

        if self._same_host is None or not self._same_host.allreduce_(buffer, op):
            dist.all_reduce(torch.from_numpy(buffer), op=torch_op(op))

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank (same shape and dtype everywhere)."""
        import torch
        import torch.distributed as dist

        out = np.array(array, copy=True, order="C")
        dist.broadcast(torch.from_numpy(out), src=root)
        return out

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self._same_host is not None:
            self._same_host.close()
            self._same_host = None
        if dist.is_initialized():
            dist.destroy_process_group()
        self._store = None


def torch_op(op: str) -> Any:
    """torch.distributed's ``ReduceOp`` for ``"sum"``, ``"max"`` or ``"min"``."""
    import torch.distributed as dist

    return {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]


class Rendezvous:
    """The driver's half of the rendezvous: where rank 0 of each barrier stage listens.

    Spark's Python API does not tell a task which attempt of its stage it
    belongs to, so a stage that Spark itself relaunches (same stage id) is
    told apart by counting: a publication serves the ``world - 1`` lookups
    of its attempt, and a later publication for the same stage replaces it.
    A task that finds a published address dead (its attempt failed before
    every peer had looked it up) reports it ``stale`` and waits for the next.
    A lookup waits, on its own server thread, up to ``timeout``.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._stages: dict[int, dict[str, Any]] = {}
        self._changed = threading.Condition()
        self._segments: set[str] = set()  # machine addresses published, removed by close()

    def handle(self, header: dict[str, Any], payload: bytes) -> Reply | None:
        """Answer ``publish``, ``lookup`` and ``stale`` frames; ``None`` for any other kind."""
        kind = header.get("type")
        if kind not in ("publish", "lookup", "stale"):
            return None
        stage = int(header.get("stage", -1))
        with self._changed:
            if kind == "publish":
                address = str(header.get("address", ""))
                self._stages[stage] = {"address": address, "lookups": int(header.get("world", 1)) - 1}
                if is_machine_address(address):
                    self._segments.add(address)
                self._changed.notify_all()
            elif kind == "stale":
                if self._stages.get(stage, {}).get("address") == header.get("address"):
                    del self._stages[stage]
            else:
                if not self._changed.wait_for(lambda: self._stages.get(stage, {}).get("lookups", 0) > 0,
                                              self.timeout):
                    return {"address": ""}, b""
                entry = self._stages[stage]
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


def _bound_store(host: str, world: int, wait: datetime.timedelta) -> Any:
    """Rank 0's ``TCPStore``, listening only on ``host`` (the address the peers use).

    Left to itself the store's server listens on every interface. The store
    carries the shared-memory segments' names and tokens, so the socket is
    bound here, on a port the operating system picks, and handed over with
    ``master_listen_fd``; the store closes it with itself.
    """
    import torch.distributed as dist

    listener = socket.create_server((host, 0), backlog=max(128, world))
    port = listener.getsockname()[1]
    fd = listener.detach()  # the store owns the descriptor and closes it with itself
    try:
        return dist.TCPStore(host, port, world, True, timeout=wait, wait_for_workers=False, master_listen_fd=fd)
    except BaseException:
        os.close(fd)
        raise


def _look_up(driver: FrameClient, stage: int, rank: int, world: int, timeout: float) -> Any:
    """Join what rank 0 published: its shared-memory segment, or gloo's store (``host:port``).

    A publication whose attempt is over (a dead store, a segment whose
    creator has gone) is reported stale and the driver asked again.
    """
    deadline = time.monotonic() + timeout
    while True:
        reply, _ = driver.call({"type": "lookup", "stage": stage}, timeout=timeout + 10)
        address = str(reply.get("address", ""))
        left = deadline - time.monotonic()
        if not address or left <= 0:
            raise TimeoutError(f"rank {rank}: rank 0 of the barrier stage did not start within {timeout:g}s")
        if is_machine_address(address):
            joined = MachineCollective.open(address, rank, world, timeout)
        else:
            joined = _store_at(address, world, min(_CONNECT_TIMEOUT, left), timeout)
        if joined is not None:
            return joined
        driver.call({"type": "stale", "stage": stage, "address": address})


def _store_at(address: str, world: int, connect: float, timeout: float) -> Any:
    """A client of the ``TCPStore`` at ``address``, or ``None`` if nobody listens there any more."""
    import torch.distributed as dist

    host, port = address.rsplit(":", 1)
    try:
        store = dist.TCPStore(host, int(port), world, False, timeout=datetime.timedelta(seconds=connect))
    except RuntimeError:  # torch's DistStoreError: nobody listens there any more
        return None
    store.set_timeout(datetime.timedelta(seconds=timeout))
    return store


_OPERATOR_INTERFACE = os.environ.get("GLOO_SOCKET_IFNAME")  # set by whoever started the worker, if anyone


def _choose_gloo_interface(host: str) -> None:
    """Make gloo listen on the interface that holds ``host``, the address Spark knows this executor by.

    Left to itself, gloo binds to whatever this machine's hostname resolves
    to, which on many hosts (Debian's ``127.0.1.1`` line in ``/etc/hosts``,
    containers, network namespaces) is a loopback address: peers on other
    machines are then told to connect to ``127.0.0.1`` and the rendezvous
    times out. The Python worker is reused by later stages, so the variable
    is set (or cleared) every time. An operator's own ``GLOO_SOCKET_IFNAME``
    (``spark.executorEnv.GLOO_SOCKET_IFNAME``) wins outside local mode.
    """
    interface = _interface_with(host)
    if _OPERATOR_INTERFACE and interface != "lo":
        interface = _OPERATOR_INTERFACE
    if interface is not None:
        os.environ["GLOO_SOCKET_IFNAME"] = interface
    else:
        os.environ.pop("GLOO_SOCKET_IFNAME", None)


def _interface_with(host: str) -> str | None:
    """The name of the local network interface whose IPv4 address is ``host`` (Linux), or ``None``."""
    import fcntl
    import struct

    try:
        address = socket.gethostbyname(host)
    except OSError:
        return None
    if address.startswith("127."):
        return "lo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                info = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
            if socket.inet_ntoa(info[20:24]) == address:
                return name
    return None


def _task_host(context: Any, rank: int) -> str:
    """The address of this task's executor, as Spark knows it."""
    address = context.getTaskInfos()[rank].address
    return address.rsplit(":", 1)[0] if address else "127.0.0.1"
