"""The tasks of a barrier stage that share a machine: all-reduce, broadcast and barrier in shared memory.

Why: tasks on one machine can each write their buffer into a shared segment,
meet at flags in it and read the others' buffers directly, with no socket
and no library; over loopback TCP (gloo) the same all-reduce cost ~2 ms for
a 0.4 MB gradient, longer than a small model's whole step. This is how the
CPU shared-memory all-reduces of DeepSpeed, vLLM and SGLang work. In Spark's
local modes every task is on the driver's machine and this is the whole
collective; on a cluster each machine's tasks use it, and their leader takes
the machine's sum to the other machines (:mod:`sparkeras.comm.collective`).

- the machine's first task creates the segment and publishes its name, token
  and size through the driver's rendezvous server (signed frames); the
  others map it, all meet at the segment's flags, and the first task
  unlinks the file, which every task now holds mapped;
- a larger segment is announced in the current one's header, and every task
  reports in its own flag line whether it mapped it, so all agree; when the
  new one cannot be made, buffers go through the old one in chunks;
- a stale publication (its attempt failed before every peer looked it up)
  is one whose file is gone or whose creator's process has exited: the peer
  reports it to the driver and asks again.

Only where stores are totally ordered (x86-64, see
:class:`~sparkeras.comm.shared_memory._FlagBarrier`): elsewhere every task
joins the TCP ring on its own.
"""

from __future__ import annotations

import os

import numpy as np

from sparkeras.comm.base import CollectiveBase
from sparkeras.comm.shared_memory import _FLAGS, _MAX_FLAGS, _ORDERED_STORES, SlotReducer, _Segment

_INITIAL_CAPACITY = 1 << 16
_PID = 16  # the creator's process id (int64), after the token
_PUBLISHED = 32  # a grown segment: 1 byte (1: made, 2: could not be made), its 12-byte name, its 16-byte token
_ADDRESS_PREFIX = "shm:"


def is_machine_address(address: str) -> bool:
    """Whether a published rendezvous address names a segment (else a ring member's ``host:port``)."""
    return address.startswith(_ADDRESS_PREFIX)


def segment_path(address: str) -> str:
    """The file of the segment a machine address names."""
    return _Segment.path_for(bytes.fromhex(address[len(_ADDRESS_PREFIX):].split(":")[0]))


def remove_segment(address: str) -> None:
    """Unlink the segment a machine address names, if its file is still there.

    The driver calls it for every segment published in a stage once the stage
    is over: rank 0 unlinks its file as soon as every peer has mapped it, so
    a file is left only where rank 0 died before that (killed, or its peers
    never came), and no task of the stage can still need it.
    """
    try:
        os.unlink(segment_path(address))
    except FileNotFoundError:
        pass


class _MachineSlots(SlotReducer):
    """The slot reduction of :class:`MachineCollective`: flags for every barrier, segments grown through the header."""

    def __init__(self, rank: int, size: int, segment: _Segment | None, timeout: float,
                 chunk_bytes: int = 8 << 20) -> None:
        super().__init__(rank, size, chunk_bytes, timeout)
        self._growths = 0
        if segment is not None:
            self._adopt(segment, segment.capacity)

    def _barrier(self) -> None:
        self._flags.wait()

    def _grow(self, nbytes: int) -> bool:
        """Move to a segment for buffers of ``nbytes``; if any rank cannot map it, keep this one and chunk."""
        capacity = self._next_capacity(nbytes)
        areas = 2 * self.local_size
        header = self._segment.memory
        reports = np.frombuffer(header, np.int64, self.local_size * 8, _FLAGS)[1::8]  # word 2 of each flag line
        self._growths += 1
        mark = self._growths
        grown: _Segment | None = None
        try:
            if self.local_rank == 0:
                try:
                    grown = _Segment.create(areas, capacity)
                except OSError:  # no /dev/shm space, say
                    header[_PUBLISHED] = 2
                else:
                    header[_PUBLISHED + 1:_PUBLISHED + 29] = grown.name + grown.token
                    header[_PUBLISHED] = 1
            self._barrier()
            if self.local_rank != 0 and header[_PUBLISHED] == 1:
                name, token = header[_PUBLISHED + 1:_PUBLISHED + 13], header[_PUBLISHED + 13:_PUBLISHED + 29]
                try:
                    grown = _Segment.open(_Segment.path_for(name), token, areas, capacity)
                except (OSError, ValueError):
                    grown = None
            reports[self.local_rank] = mark if grown is not None else -mark
            self._barrier()
            agreed = bool(np.all(reports == mark))
        finally:  # unlinked once all have it mapped, or at once if anything failed: never left behind
            if grown is not None and self.local_rank == 0:
                grown.unlink()
        del reports
        if not agreed:
            if grown is not None:
                grown.close()
            self.chunk_bytes = self._capacity  # larger buffers go through this segment in chunks
            return True
        self._adopt(grown, capacity)
        return True

    def broadcast_(self, raw: np.ndarray, root: int) -> None:
        """Rank ``root``'s bytes into every rank's ``raw`` (a flat ``uint8`` view), slot by slot."""
        needed = min(raw.nbytes, self.chunk_bytes)
        if needed > self._capacity:
            self._grow(needed)
        for start in range(0, raw.size, self._capacity):
            chunk = raw[start:start + self._capacity]
            half = self._calls & 1
            self._calls += 1
            slots = self._segment.slots(half, self.local_size, np.dtype(np.uint8), chunk.size)
            if self.local_rank == root:
                slots[root] = chunk
            self._barrier()
            if self.local_rank != root:
                chunk[:] = slots[root]

    def meet(self) -> None:
        self._barrier()


class MachineCollective(CollectiveBase):
    """All-reduce, broadcast and barrier among tasks that share this machine, through one shared segment."""

    def __init__(self, rank: int, world_size: int, segment: _Segment | None, timeout: float) -> None:
        super().__init__(rank, world_size)
        self.timeout = timeout
        self._slots = _MachineSlots(rank, world_size, segment, timeout) if world_size > 1 else None
        self._address = (f"{_ADDRESS_PREFIX}{segment.name.hex()}:{segment.token.hex()}:{segment.capacity}"
                         if segment is not None and rank == 0 else "")

    @staticmethod
    def serves(shared_memory: bool, tasks: int) -> bool:
        """Whether ``tasks`` tasks of one machine share a segment: shared memory allowed, and flags that work
        here (x86-64, at most 63 tasks)."""
        return shared_memory and _ORDERED_STORES and tasks <= _MAX_FLAGS

    @classmethod
    def create(cls, world_size: int, timeout: float) -> "MachineCollective | None":
        """Rank 0's collective and segment, or ``None`` when the segment cannot be made (no space in ``/dev/shm``, say)."""
        if world_size == 1:
            return cls(0, 1, None, timeout)
        try:
            segment = _Segment.create(2 * world_size, _INITIAL_CAPACITY)
        except OSError:
            return None
        np.frombuffer(segment.memory, np.int64, 1, _PID)[0] = os.getpid()
        return cls(0, world_size, segment, timeout)

    @property
    def address(self) -> str:
        """What rank 0 publishes: the segment's name, token and slot size."""
        return self._address

    @classmethod
    def open(cls, address: str, rank: int, world_size: int, timeout: float) -> "MachineCollective | None":
        """A peer's collective on the published segment, or ``None`` if the publication is stale.

        A segment that exists but cannot be mapped cannot be stale, and the
        machine's other tasks already chose shared memory, so that fails
        the task with the reason.
        """
        _, token, capacity = address[len(_ADDRESS_PREFIX):].split(":")
        path = segment_path(address)
        try:
            segment = _Segment.open(path, bytes.fromhex(token), 2 * world_size, int(capacity))
        except FileNotFoundError:  # unlinked: its attempt is over
            return None
        except (OSError, ValueError) as exc:
            raise RuntimeError(
                f"rank {rank}: cannot map the shared-memory segment {path} that rank 0 of this barrier stage "
                f"made ({exc}); pass shared_memory=False to reduce over TCP instead") from exc
        creator = int(np.frombuffer(segment.memory, np.int64, 1, _PID)[0])
        if not _alive(creator):
            segment.unlink()
            segment.close()
            return None
        return cls(rank, world_size, segment, timeout)

    def meet(self) -> None:
        """Wait until every rank has mapped the segment; then rank 0 unlinks its file."""
        if self._slots is None:
            return
        segment = self._slots._segment
        try:
            self._slots.meet()
        except TimeoutError as exc:
            raise TimeoutError(f"rank {self.rank}: not all {self.world_size} barrier tasks reached the rendezvous "
                               f"within {self.timeout:g}s ({exc})") from None
        finally:
            if self.rank == 0:
                segment.unlink()

    @property
    def transport(self) -> str:
        return "shared memory"

    def _reduce(self, buffer: np.ndarray, op: str) -> None:
        if self._slots is not None and buffer.nbytes and not self._slots.allreduce_(buffer, op):
            raise ValueError(f"op must be sum, max or min, got {op!r}")

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        out = np.array(array, copy=True, order="C")
        self.broadcast_(out.reshape(-1).view(np.uint8), root)
        return out

    def broadcast_(self, raw: np.ndarray, root: int) -> None:
        """Rank ``root``'s bytes into every rank's flat ``uint8`` ``raw``, in place."""
        if self._slots is not None and raw.nbytes:
            self._slots.broadcast_(raw, root)

    def barrier(self) -> None:
        if self._slots is not None:
            self._slots._barrier()

    def close(self) -> None:
        if self._slots is not None:
            if self.rank == 0 and self._slots._segment is not None:
                self._slots._segment.unlink()  # a no-op after meet; a failed join leaves nothing behind
            self._slots.close()
            self._slots = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
