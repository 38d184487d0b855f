"""The shared segment of a machine's tasks: its file, its slots, and the flags at which the tasks meet.

The machine's first task creates the segment in ``/dev/shm`` (the temp
directory where there is none) with ``O_EXCL``, mode 0600 and a random name,
and reserves its pages with ``posix_fallocate``, so a small ``/dev/shm``
(Docker's default is 64 MB) fails there instead of killing a task with
SIGBUS later. The name and a random token reach the others through the
driver's rendezvous; each opens the file and checks the token, and the file
is unlinked as soon as every peer holds it mapped, so a task that dies
leaves nothing behind.

Ordering: slots are double-buffered and each call passes one barrier between
writing and reading, so no task can get two calls ahead and overwrite a slot
another task is still reading. Every task sums the slots in rank order, so
all replicas get bit-identical results. The tasks meet at flags in the
segment itself (:class:`_FlagBarrier`).
"""

from __future__ import annotations

import mmap
import os
import platform
import secrets
import tempfile
import time
import numpy as np

_HEADER = 4096  # token at offset 0, the barrier's flags from _FLAGS on; data page-aligned after it
_TOKEN = 16
_FLAGS = 64  # one 64-byte line per rank of the machine, so no two ranks write the same cache line
_MAX_FLAGS = (_HEADER - _FLAGS) // 64
# Total store order: another core sees this core's stores in the order they were made (see _FlagBarrier).
_ORDERED_STORES = platform.machine().lower() in ("x86_64", "amd64")
_UFUNCS = {"sum": np.add, "max": np.maximum, "min": np.minimum}


def host_groups(hosts: list[str]) -> list[list[int]]:
    """The ranks on each machine, machines in order of their first rank."""
    groups: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        groups.setdefault(host, []).append(rank)
    return list(groups.values())


class SlotReducer:
    """The reduction through one segment's slots; subclasses say how ranks meet and how segments are shared.

    Every rank of the machine must make the same calls in the same order,
    as for any collective.
    """

    def __init__(self, local_rank: int, local_size: int, chunk_bytes: int, timeout: float) -> None:
        self.local_rank, self.local_size = local_rank, local_size
        self.chunk_bytes, self.timeout = chunk_bytes, timeout
        self._segment: _Segment | None = None
        self._flags: _FlagBarrier | None = None
        self._capacity = 0
        self._calls = 0
        self.enabled = True

    def _adopt(self, segment: "_Segment | None", capacity: int) -> None:
        """Reduce through ``segment`` from now on, meeting at its flags; every rank switches at the same call."""
        self._flags = None
        if self._segment is not None:
            self._segment.close()
        self._segment, self._capacity = segment, capacity
        if segment is not None and self.local_size > 1:
            self._flags = _FlagBarrier(segment.memory, self.local_rank, self.local_size, self.timeout)

    def _barrier(self) -> None:
        raise NotImplementedError

    def _grow(self, nbytes: int) -> bool:
        raise NotImplementedError

    def _next_capacity(self, nbytes: int) -> int:
        capacity = min(max(nbytes, 2 * self._capacity, 1 << 16), self.chunk_bytes)  # nbytes <= chunk_bytes
        return -(-capacity // 64) * 64

    def allreduce_(self, buffer: np.ndarray, op: str) -> bool:
        """Reduce the contiguous ``buffer`` in place over all ranks; ``False`` for an op it does not know.

        Buffers larger than a slot (``chunk_bytes``, 8 MB) go through in
        slot-sized chunks, the same on every rank, so a large model needs no
        more than ``2 * (workers on the machine + 1) * chunk_bytes`` of
        shared memory.
        """
        if not self.enabled or op not in _UFUNCS or buffer.nbytes == 0:
            return False
        needed = min(buffer.nbytes, self.chunk_bytes)
        if needed > self._capacity and not self._grow(needed):
            return False
        flat = buffer.reshape(-1)
        step = max(1, self._capacity // flat.itemsize)
        for start in range(0, flat.size, step):
            self._reduce_chunk(flat[start:start + step], op)
        return True

    def _reduce_chunk(self, flat: np.ndarray, op: str) -> None:
        half = self._calls & 1
        self._calls += 1
        slots = self._segment.slots(half, self.local_size, flat.dtype, flat.size)
        slots[self.local_rank] = flat
        self._barrier()
        _UFUNCS[op].reduce(slots, axis=0, out=flat)

    def close(self) -> None:
        self._flags = None
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        self.enabled = False


class _FlagBarrier:
    """The machine's ranks meet at flags in the shared segment, not at a socket barrier.

    Why: a gloo barrier is a round trip over loopback TCP through gloo's
    threads. In an all-reduce fit of an MLP 784-128-10 on 2 cores it took
    1.1-1.3 ms of every 2.9-3.8 ms step (the workers' ``wait_seconds``),
    longer than the step's optimizer update.

    How: each rank owns one 64-bit flag, on a cache line of its own, holding
    how many barriers it has reached. Arriving writes the flag after the
    rank's slot; waiting reads every flag until all have reached as many.
    One writer per flag, so no atomic instruction is needed. Reading the
    others' slots once their flags are seen relies on stores becoming
    visible in the order they were made, which x86-64 guarantees (total
    store order) and ARM does not, so elsewhere every task joins the TCP ring.
    The wait spins briefly, then yields the core, then sleeps in short
    steps, so ranks that share cores (more workers than cores) still make
    progress. A rank that never arrives (its task died) makes the others
    raise ``TimeoutError`` after ``timeout`` seconds, naming it; Spark
    usually kills them sooner, as it aborts the barrier stage.
    """

    _SPINS, _YIELDS = 200, 2000

    def __init__(self, memory: mmap.mmap, rank: int, size: int, timeout: float) -> None:
        self.flags = np.frombuffer(memory, np.uint64, size * 8, _FLAGS)[::8]
        self.rank, self.timeout = rank, timeout
        self.reached = 0

    def wait(self) -> None:
        self.reached += 1
        reached, flags = self.reached, self.flags
        flags[self.rank] = reached
        checks, deadline = 0, 0.0
        while flags.min() < reached:
            checks += 1
            if checks <= self._SPINS:
                continue
            if checks <= self._YIELDS:
                os.sched_yield()
                continue
            now = time.monotonic()
            if not deadline:
                deadline = now + self.timeout
            elif now > deadline:
                missing = [r for r in range(len(flags)) if flags[r] < reached]
                raise TimeoutError(f"local rank {self.rank}: local ranks {missing} of this machine did not reach "
                                   f"shared-memory barrier {reached} within {self.timeout:g}s")
            time.sleep(0.0002)


class _Segment:
    """One mapped file: a header with the token and flags, then ``areas`` areas of ``capacity`` bytes (slots)."""

    def __init__(self, path: str, token: bytes, memory: mmap.mmap, capacity: int) -> None:
        self.path, self.token, self.memory, self.capacity = path, token, memory, capacity

    @staticmethod
    def path_for(name: bytes) -> str:
        """The file of the segment called ``name`` (12 random bytes): in ``/dev/shm``, else the temp folder."""
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        return os.path.join(directory, f"sparkeras-{name.hex()}")

    @property
    def name(self) -> bytes:
        return bytes.fromhex(os.path.basename(self.path)[len("sparkeras-"):])

    @classmethod
    def create(cls, areas: int, capacity: int) -> "_Segment":
        size = _HEADER + areas * capacity
        path = cls.path_for(secrets.token_bytes(12))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, size)
                else:
                    os.ftruncate(fd, size)
                memory = mmap.mmap(fd, size)
            except OSError:
                os.unlink(path)
                raise
        finally:
            os.close(fd)
        token = secrets.token_bytes(_TOKEN)
        memory[:_TOKEN] = token
        return cls(path, token, memory, capacity)

    @classmethod
    def open(cls, path: str, token: bytes, areas: int, capacity: int) -> "_Segment":
        size = _HEADER + areas * capacity
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            if os.fstat(fd).st_size != size:
                raise ValueError(f"{path} has the wrong size")
            memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        if not secrets.compare_digest(memory[:_TOKEN], token):
            memory.close()
            raise ValueError(f"{path} is not the segment its creator published")
        return cls(path, token, memory, capacity)

    def slots(self, half: int, count: int, dtype: np.dtype, size: int) -> np.ndarray:
        offset = _HEADER + half * count * self.capacity
        area = np.frombuffer(self.memory, np.uint8, count * self.capacity, offset)
        return area.reshape(count, self.capacity)[:, :size * dtype.itemsize].view(dtype)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        try:
            self.memory.close()
        except BufferError:  # a numpy view is still alive; the mapping goes with it
            pass
