"""Packed data kept for a cached DataFrame that is fitted again unchanged.

CrossValidator and TrainValidationSplit fit every grid point on the same
cached fold, hyperparameter searches refit one dataset many times, and a
notebook user refits after changing a layer. Each fit used to pack the
DataFrame again: a Spark job over every row, about 1.2 s warm for 60,000 x
784 floats on ``local[2]`` and 4-5 s on ``local-cluster`` (BENCHMARKS.md),
against under a second per epoch.

Data is kept only when Spark itself guarantees it is unchanged: the
DataFrame (or one with the same plan) is cached (``df.cache()``/``persist``,
as CrossValidator does with each fold), and the keep is dropped as soon as
that cache is gone. A DataFrame read from files that are not cached is packed
again every time, since its files may change between fits.

What is kept is keyed by the DataFrame's plan and the packing's shape: the
columns each model input and output reads, their per-row shapes and dtypes,
and the partition count. Two models with the same input and output shapes
(the trials of a search) share it; the validation of labels against the
new model's output runs again on the kept statistics.

``spark.sparkeras.data.keepPacked`` (default 2) is how many packed datasets
are kept at once, least recently used first out; 0 turns keeping off.
They take executor storage (memory, spilling to disk) beside the user's
own cache; in local mode they are memory-mapped files in a temporary
directory, removed when they are dropped or the driver exits.
"""

from __future__ import annotations

import atexit
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from sparkeras.data.columns import ColumnMap
    from sparkeras.data.packing import PreparedData

KEEP_CONF = "spark.sparkeras.data.keepPacked"
DEFAULT_KEEP = 2


@dataclass
class _Kept:
    frame: Any
    prepared: "PreparedData"
    users: int = 0  # fits using it now
    dropped: bool = False  # out of the store; freed when the last user releases it


class Lease:
    """One fit's use of a kept packing; ``release()`` once, when the fit is done with it."""

    def __init__(self, store: "PackedData", entry: _Kept) -> None:
        self._store, self._entry, self._open = store, entry, True

    def release(self) -> None:
        with self._store._lock:
            if not self._open:
                return
            self._open = False
            self._entry.users -= 1
            if self._entry.dropped and self._entry.users == 0:
                _discard(self._entry)


def packing_key(columns: "ColumnMap") -> tuple:
    """What the packed bytes depend on: per binding its columns, shape, dtype, role and slot.

    And, for a string input, the layers that turned its strings into numbers
    (their ``.keras`` file's digest): another vocabulary of the same size
    packs other ids into the same shape.
    """
    return tuple((b.columns, b.shape, b.dtype, b.role, b.slot, getattr(b.strings, "key", None))
                 for b in columns.bindings)


class PackedData:
    """The driver's store of packed datasets, one per Python driver process.

    Fits may run at once (the trials of :func:`sparkeras.tune`, the members
    of an ensemble): fits of the same data wait for one packing instead of
    each packing it, and a packing pushed out of the store (or whose
    DataFrame was unpersisted) is freed only when the last fit using it
    releases it.
    """

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple, _Kept] = OrderedDict()
        self._lock = threading.Lock()
        self._packing: dict[tuple, threading.Lock] = {}
        self.hits = 0  # fits served from kept data since the last clear()

    def get(self, frame: Any, columns: "ColumnMap", num_partitions: int, balance: bool,
            pack: Callable[[], "PreparedData"]) -> "PreparedData":
        """The kept packing of ``frame`` for ``columns``, or ``pack()``'s result, kept when ``frame`` is cached.

        The returned data carries ``columns`` (the caller's model) and a
        :class:`Lease`, so its ``release()`` leaves it for the next fit.
        """
        capacity = _capacity(frame)
        with self._lock:
            self._drop_uncached()
        key = _key(frame, columns, num_partitions, balance) if capacity and _is_cached(frame) else None
        if key is None:
            return pack()
        with self._lock:
            packing = self._packing.setdefault(key, threading.Lock())
        with packing:
            with self._lock:
                entry = self._kept.get(key)
                if entry is not None and entry.frame.sameSemantics(frame):
                    self._kept.move_to_end(key)
                    self.hits += 1
                    return self._lease(entry, columns)
            prepared = pack()
            with self._lock:
                old = self._kept.pop(key, None)
                if old is not None:
                    self._drop(old)
                entry = _Kept(frame, replace(prepared, kept=True))
                self._kept[key] = entry
                while len(self._kept) > capacity:
                    self._drop(self._kept.popitem(last=False)[1])
                return self._lease(entry, columns)

    def clear(self) -> None:
        """Drop everything kept (their cached blocks and files, once no fit uses them)."""
        with self._lock:
            self.hits = 0
            while self._kept:
                self._drop(self._kept.popitem()[1])

    def __len__(self) -> int:
        return len(self._kept)

    def _lease(self, entry: _Kept, columns: "ColumnMap") -> "PreparedData":
        entry.users += 1
        return replace(entry.prepared, columns=columns, kept=True, lease=Lease(self, entry))

    def _drop(self, entry: _Kept) -> None:
        entry.dropped = True
        if entry.users == 0:
            _discard(entry)

    def drop_uncached(self) -> None:
        """Drop the packings of DataFrames that are no longer cached (each fit does this too)."""
        with self._lock:
            self._drop_uncached()

    def _drop_uncached(self) -> None:
        for key in [k for k, e in self._kept.items() if not _is_cached(e.frame)]:
            self._drop(self._kept.pop(key))

    def _remove_files(self) -> None:
        """At exit: the local-mode files only; the SparkContext may be gone already."""
        for entry in self._kept.values():
            _remove_files(entry)


def _discard(entry: _Kept) -> None:
    """Free a kept packing: its cached blocks and files, or only its files when its SparkContext has stopped."""
    try:
        entry.prepared.free()
    except Exception:  # noqa: BLE001 - the session was stopped (a new one may be running)
        _remove_files(entry)


def _remove_files(entry: _Kept) -> None:
    import shutil

    if entry.prepared.files is not None:
        shutil.rmtree(entry.prepared.files, ignore_errors=True)


def _key(frame: Any, columns: "ColumnMap", num_partitions: int, balance: bool) -> tuple | None:
    try:
        plan = frame.semanticHash()
        app = frame.sparkSession.sparkContext.applicationId
    except Exception:  # noqa: BLE001 - a frame Spark cannot hash is simply not kept
        return None
    return app, plan, packing_key(columns), num_partitions, balance


def _is_cached(frame: Any) -> bool:
    """Whether Spark's cache holds ``frame``'s plan (asked of the JVM, so a dropped cache shows).

    A frame of a stopped SparkContext is not: its session's cache manager
    outlives the context in the JVM and would still say it is.
    """
    try:
        if frame.sparkSession.sparkContext._jsc is None:  # stopped
            return False
        level = frame.storageLevel
        return bool(level.useMemory or level.useDisk or level.useOffHeap)
    except Exception:  # noqa: BLE001 - a stopped session, say
        return False


def _capacity(frame: Any) -> int:
    from sparkeras.errors import InputError

    try:
        value = frame.sparkSession.conf.get(KEEP_CONF, str(DEFAULT_KEEP))
    except Exception:  # noqa: BLE001 - no session: keep nothing
        return 0
    try:
        capacity = int(str(value).strip())
    except ValueError:
        capacity = -1
    if capacity < 0:
        raise InputError(f"{KEEP_CONF} must be a whole number of datasets to keep (0 keeps none), got {value!r}.")
    return capacity


PACKED = PackedData()
atexit.register(PACKED._remove_files)
