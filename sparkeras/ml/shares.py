"""Each of the fits that Spark's tuning stages run at once gets its own share of the task slots.

``CrossValidator(parallelism=k)`` and ``TrainValidationSplit(parallelism=k)``
fit up to ``k`` grid points at once, each on a thread of a
``multiprocessing.pool.ThreadPool``, and tell the estimator nothing about
it. Left alone, every ``KerasEstimator`` fit would ask for all the slots,
so ``k`` fits would queue ``k`` times the tasks the cluster can run, and
synchronous strategies would wait for slots held by the other fits.

:class:`SlotShares` is the driver-wide ledger that prevents this. A fit
claims its workers when it starts and gives them back when it ends:

- How many fits run at once is read from the calling thread's pool (the
  threads that take work from the same queue). This is exact where a
  fixed wait for other fits to arrive would be a guess, and it costs
  nothing when fits run one after another.
- A fit outside any pool, with no other claimed fit running, keeps the
  number of workers it asked for; nothing changes for a plain ``fit``.
- Otherwise the fit gets the free slots divided among the fits of its
  pool that have yet to claim, at least one, and never more than its
  ``numWorkers``. When a fit ends, the next grid point takes the slots it
  freed.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing.pool
import threading
from typing import Any, Callable, Iterator


def pool_concurrency(thread: threading.Thread | None = None) -> int:
    """How many threads of ``thread``'s ThreadPool can run at once; 1 outside a pool.

    A pool's threads run ``multiprocessing.pool.worker`` on one shared task
    queue (the first argument), so the threads with the same queue are the
    pool. Spark sizes that pool ``min(parallelism, grid points)``.
    """
    thread = thread or threading.current_thread()
    queue = _pool_queue(thread)
    if queue is None:
        return 1
    return sum(1 for other in threading.enumerate() if _pool_queue(other) is queue)


def _pool_queue(thread: threading.Thread) -> Any:
    if getattr(thread, "_target", None) is not multiprocessing.pool.worker:
        return None
    args = getattr(thread, "_args", None)
    return args[0] if args else None


class SlotShares:
    """The task slots held by the estimator fits running on this driver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}  # claim number -> workers
        self._numbers = itertools.count()

    @property
    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())

    @contextlib.contextmanager
    def claim(self, requested: int | None, slots: Callable[[], int]) -> Iterator[int | None]:
        """Workers for one fit while it runs: ``requested`` (``None``: the default) or its share.

        ``slots`` is called only when the fit has to share, so a plain fit
        never asks the cluster for its size.
        """
        concurrency = pool_concurrency()
        with self._lock:
            if concurrency == 1 and not self._held:
                workers: int | None = requested
            else:
                free = max(0, slots() - sum(self._held.values()))
                starting = max(1, concurrency - len(self._held))
                workers = max(1, free // starting)
                if requested is not None:
                    workers = min(workers, requested)
            key = next(self._numbers)
            self._held[key] = workers or 0
        try:
            yield workers
        finally:
            with self._lock:
                del self._held[key]


SHARES = SlotShares()

__all__ = ["SHARES", "SlotShares", "pool_concurrency"]
