"""Collective operations between the tasks of one Spark barrier stage.

The reduction itself is ``torch.distributed`` over gloo, an established CPU
collective library; sparkeras only does the rendezvous. Rank 0 creates a
``TCPStore`` on a port the operating system picks at bind time (in the
process that binds it, so there is no bind-then-release race) and publishes
``host:port`` through ``BarrierTaskContext.allGather``; the other ranks
connect to it. ``wait_for_workers=False`` matters: with ``True`` rank 0
would block inside the constructor before it could publish the port.

Only tensors cross the wire, never pickled objects. Neither the store nor
gloo authenticates peers, so barrier training belongs on a trusted cluster
network (as for Horovod, TorchDistributor and every gloo/NCCL job).
"""

from __future__ import annotations

import datetime
from typing import Any

import numpy as np

_OPS = ("sum", "mean", "max", "min")


class Collective:
    """All-reduce, broadcast and barrier among the ``world_size`` tasks of a barrier stage."""

    def __init__(self, rank: int, world_size: int, store: Any) -> None:
        self.rank, self.world_size = rank, world_size
        self._store = store  # keeps rank 0's server alive

    @classmethod
    def join(cls, context: Any, timeout: float, loopback: bool = False) -> "Collective":
        """Rendezvous with the stage's other tasks; raise ``TimeoutError`` if a peer does not arrive.

        ``loopback`` (local mode, every task on this machine) keeps the store
        and gloo's connections on 127.0.0.1.
        """
        import os

        import torch.distributed as dist

        rank = context.partitionId()
        world = len(context.getTaskInfos())
        wait = datetime.timedelta(seconds=timeout)
        if dist.is_initialized():  # a task of an earlier stage in this Python worker died mid-way
            dist.destroy_process_group()
        if loopback:
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        if rank == 0:
            host = "127.0.0.1" if loopback else _task_host(context, rank)
            store = dist.TCPStore(host, 0, world, True, timeout=wait, wait_for_workers=False)
            addresses = context.allGather(f"{host}:{store.port}")
        else:
            addresses = context.allGather("")
            host, port = addresses[0].rsplit(":", 1)
            store = dist.TCPStore(host, int(port), world, False, timeout=wait)
        try:
            dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=wait)
        except RuntimeError as exc:
            if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
                raise TimeoutError(
                    f"rank {rank}: not all {world} barrier tasks reached the rendezvous within {timeout:g}s") from exc
            raise
        return cls(rank, world, store)

    def allreduce(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        """The element-wise ``op`` (sum, mean, max, min) of ``array`` over all ranks."""
        import torch
        import torch.distributed as dist

        if op not in _OPS:
            raise ValueError(f"op must be one of {_OPS}, got {op!r}")
        out = np.array(array, copy=True, order="C")
        tensor = torch.from_numpy(out)
        reduce_op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM,
                     "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        dist.all_reduce(tensor, op=reduce_op)
        if op == "mean":
            out = out / self.world_size
        return out

    def allreduce_(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` (contiguous) over all ranks, in place; the training loop's hot path."""
        import torch
        import torch.distributed as dist

        dist.all_reduce(torch.from_numpy(buffer))
        return buffer

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

        if dist.is_initialized():
            dist.destroy_process_group()
        self._store = None


def _task_host(context: Any, rank: int) -> str:
    """The address of this task's executor, as Spark knows it."""
    address = context.getTaskInfos()[rank].address
    return address.rsplit(":", 1)[0] if address else "127.0.0.1"
