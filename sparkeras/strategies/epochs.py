"""One epoch's Spark job, run so that a failure costs that epoch, never the fit, and nothing waits forever.

Model averaging and the parameter-server strategies train an epoch as one
Spark job (or one job per window). Spark retries a failed task by itself,
which suits asynchronous rules: the retried task joins the server again and
goes on. It does not suit synchronous rounds: the other workers wait in a
round for a peer whose retry starts the epoch over, and in local mode Spark
does not retry at all, so the fit used to fail on the first lost Python
worker. :class:`EpochAttempts` gives these strategies what ``allreduce``
already had:

* a failed epoch is run again from the state it started with (the caller's
  ``rollback``), up to ``max_restarts`` times per fit; each relaunch is
  recorded in ``history.restarts``, and callbacks see one
  ``on_epoch_begin``/``on_epoch_end`` pair per epoch;
* the job runs under a job tag of its own, so the driver can cancel it at once
  when the parameter server reports an abandoned round (a synchronous
  worker retried by Spark), instead of waiting out the round's timeout;
* when the job needs all its workers at once, the cluster's task slots are
  watched while it runs and before a relaunch: fewer than needed for
  ``slot_timeout`` seconds (a lost executor or Worker that nothing
  replaced) ends the attempt with :class:`~sparkeras.errors.ClusterCapacityError`
  naming the missing slots. Model averaging catches it and continues with
  the slots that are left (:mod:`sparkeras.strategies.averaging`).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

from sparkeras.errors import ClusterCapacityError, ExecutorEnvironmentError, FitCancelled, InputError, failure_reason

if TYPE_CHECKING:
    from sparkeras.training import TrainingJob

T = TypeVar("T")
_tags = itertools.count()


def check_restart_settings(max_restarts: Any, slot_timeout: Any) -> None:
    """Refuse a bad ``max_restarts`` or ``slot_timeout`` when the strategy is made."""
    if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
        raise InputError(f"max_restarts must be a non-negative integer, got {max_restarts!r}.")
    if not isinstance(slot_timeout, (int, float)) or isinstance(slot_timeout, bool) or slot_timeout <= 0:
        raise InputError(f"slot_timeout must be a positive number of seconds, got {slot_timeout!r}.")


def capacity_error(strategy: str, workers: int, slots: int, waited: float, next_epoch: int) -> ClusterCapacityError:
    """The error for a synchronous fit that lost the task slots it needs."""
    return ClusterCapacityError(
        f"{strategy} needs {workers} task slots at once, but the cluster has had only {slots} for "
        f"{waited:.0f}s (an executor or a worker was lost, or its slots were taken). The fit stopped after "
        f"{next_epoch} completed epoch(s); the model holds their state, and fit(checkpoint_dir=...) resumes "
        f"from it. Give the cluster {workers - slots} more slot(s), or fit with num_workers={max(1, slots)}.")


def wait_for_slots(job: "TrainingJob", strategy: str, needed: int, slot_timeout: float, next_epoch: int) -> None:
    """Return once the cluster has ``needed`` task slots; raise a capacity error after ``slot_timeout`` seconds."""
    from sparkeras.barrier import concurrent_slots

    sc = job.spark.sparkContext
    deadline = time.monotonic() + slot_timeout
    slots = concurrent_slots(sc)
    while slots < needed and time.monotonic() < deadline:
        time.sleep(0.5)
        slots = concurrent_slots(sc)
    if slots < needed:
        raise capacity_error(strategy, needed, slots, slot_timeout, next_epoch)


class SlotWatch:
    """Says when the cluster has had fewer than ``needed`` task slots for ``slot_timeout`` seconds.

    Asked often (every pass of a driver's wait loop), it asks Spark at most
    once a second.
    """

    def __init__(self, sc: Any, strategy: str, needed: int, slot_timeout: float) -> None:
        self.sc, self.strategy, self.needed, self.slot_timeout = sc, strategy, needed, slot_timeout
        self._checked = time.monotonic()
        self._short_since: float | None = None

    def lost(self, next_epoch: int) -> ClusterCapacityError | None:
        """The capacity error once the shortage has lasted ``slot_timeout`` seconds, else ``None``."""
        from sparkeras.barrier import concurrent_slots

        now = time.monotonic()
        if now - self._checked < 1.0:
            return None
        self._checked, slots = now, concurrent_slots(self.sc)
        self._short_since = None if slots >= self.needed else (self._short_since or now)
        if self._short_since is not None and now - self._short_since >= self.slot_timeout:
            return capacity_error(self.strategy, self.needed, slots, self.slot_timeout, next_epoch)
        return None


class TaggedJob(Generic[T]):
    """``launch()`` on a thread of its own, its Spark jobs under a job tag that :meth:`cancel` stops.

    The calling thread stays free to watch the cluster, serve reports, or
    notice an abandoned round while the job runs.

    Why a tag and not a job group. A thread has one job group, so setting
    ours replaced the user's: a notebook that cancels its cell's job group
    (or a user's ``cancelJobGroup``) left sparkeras' training running. The
    thread inherits the caller's group and other local properties
    (:class:`pyspark.InheritableThread`), and adds its own tag, so both the
    user's cancellation and the driver's (an abandoned epoch, lost slots)
    stop the job.
    """

    def __init__(self, sc: Any, strategy: str, description: str, launch: Callable[[], T]) -> None:
        from pyspark import InheritableThread

        self.sc, self.tag = sc, f"sparkeras-{strategy}-{next(_tags)}"
        self.finished = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

        def target() -> None:
            try:
                sc.setInterruptOnCancel(True)
                sc.addJobTag(self.tag)
                if sc.getLocalProperty("spark.job.description") is None:
                    sc.setJobDescription(description)
                self.result = launch()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                self.error = exc
            finally:
                self.finished.set()

        InheritableThread(target=target, name=f"sparkeras-{strategy}-job", daemon=True).start()

    def cancel(self) -> None:
        self.sc.cancelJobsWithTag(self.tag)


class EpochAttempts:
    """Runs a strategy's epoch jobs with relaunches, a slot watch and cancellation.

    Args:
        job: the fit; it counts the attempts and records each relaunch.
        strategy: the strategy's name, for messages.
        max_restarts: relaunches allowed over the whole fit.
        slot_timeout: seconds with too few task slots before giving up.
        slots_needed: task slots the job needs at once (``None``: any
            number will do, and slots are not watched).
    """

    def __init__(self, job: "TrainingJob", strategy: str, max_restarts: int, slot_timeout: float,
                 slots_needed: int | None) -> None:
        self.job, self.strategy = job, strategy
        self.max_restarts, self.slot_timeout, self.slots_needed = max_restarts, slot_timeout, slots_needed

    def run(self, epoch: int | Callable[[], int], launch: Callable[[], T], rollback: Callable[[], None] = lambda: None,
            abandoned: Callable[[], str | None] = lambda: None,
            serve: Callable[[float], None] | None = None) -> T:
        """``launch()``'s result, relaunching it after ``rollback()`` when it fails.

        ``epoch`` is the epoch the job trains, or, for a job that trains
        several, a function giving the first one not completed yet: a
        relaunch starts there. ``abandoned`` is polled while the job runs;
        a reason returned there cancels the job and counts as its failure.
        ``serve(seconds)``, when given, is what the driver does while it
        waits (at most that long per call): answering the epoch reports of a
        job that trains several epochs.
        """
        current = epoch if callable(epoch) else (lambda: epoch)
        while True:
            try:
                return self._once(current, launch, abandoned, serve)
            except (InputError, ClusterCapacityError, FitCancelled, ExecutorEnvironmentError):
                raise
            except Exception as failure:  # noqa: BLE001 - relaunched or raised below
                if self.job.attempt > self.max_restarts:
                    raise
                self.job.relaunched(current(), failure_reason(failure))
                rollback()
                self.job.begin_epoch(current())
                if self.slots_needed is not None:
                    wait_for_slots(self.job, self.strategy, self.slots_needed, self.slot_timeout, current())

    def _once(self, current: Callable[[], int], launch: Callable[[], T], abandoned: Callable[[], str | None],
              serve: Callable[[float], None] | None) -> T:
        sc = self.job.spark.sparkContext
        job = TaggedJob(sc, self.strategy, f"sparkeras {self.strategy} epoch {current() + 1}", launch)
        watch = None if self.slots_needed is None else SlotWatch(sc, self.strategy, self.slots_needed,
                                                                 self.slot_timeout)
        cancelled: BaseException | None = None
        try:
            while not job.finished.is_set():
                if serve is not None:
                    serve(0.1)
                elif job.finished.wait(0.2):
                    break
                if cancelled is None:
                    reason = abandoned()
                    cancelled = RuntimeError(reason) if reason is not None else watch and watch.lost(current())
                    if cancelled is not None:
                        job.cancel()
        except BaseException:  # an interrupt on the driver: its tasks must not train on
            job.cancel()
            raise
        if cancelled is not None:
            raise cancelled
        if job.error is not None:
            raise job.error
        return job.result
