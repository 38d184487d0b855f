"""What every collective offers a barrier task: all-reduce, broadcast and barrier over numpy arrays."""

from __future__ import annotations

import abc
import time

import numpy as np

OPS = ("sum", "mean", "max", "min")


class CollectiveBase(abc.ABC):
    """All-reduce, broadcast and barrier among the ``world_size`` tasks of a barrier stage.

    Every rank must make the same calls in the same order, with arrays of
    the same shape and dtype. ``seconds`` and ``bytes`` count the time spent
    in all-reduces (transfer, and the wait for the slowest rank) and the
    bytes this rank contributed: the straggler figures of a fit.
    """

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size
        self.seconds = 0.0
        self.bytes = 0

    @property
    @abc.abstractmethod
    def transport(self) -> str:
        """How this rank reduces: ``"shared memory"`` or ``"tcp"``."""

    def allreduce(self, array: np.ndarray, op: str = "sum") -> np.ndarray:
        """The element-wise ``op`` (sum, mean, max, min) of ``array`` over all ranks."""
        if op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {op!r}")
        out = self.allreduce_(np.array(array, copy=True, order="C"), "sum" if op == "mean" else op)
        if op == "mean":
            out = out / self.world_size
        return out

    def allreduce_(self, buffer: np.ndarray, op: str = "sum") -> np.ndarray:
        """Reduce ``buffer`` (contiguous) over all ranks, in place; the training loop's hot path."""
        started = time.perf_counter()
        self.bytes += buffer.nbytes
        self._reduce(buffer, op)
        self.seconds += time.perf_counter() - started
        return buffer

    @abc.abstractmethod
    def _reduce(self, buffer: np.ndarray, op: str) -> None:
        """Reduce ``buffer`` in place with ``op`` (sum, max or min)."""

    @abc.abstractmethod
    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank ``root``'s ``array`` on every rank (same shape and dtype everywhere)."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Wait until every rank gets here."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the collective holds; it cannot be used afterwards."""
