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
* the job runs in its own job group, so the driver can cancel it at once
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
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from sparkeras.errors import ClusterCapacityError, InputError, failure_reason

if TYPE_CHECKING:
    from sparkeras.training import TrainingJob

T = TypeVar("T")
_groups = itertools.count()


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

    def run(self, epoch: int, launch: Callable[[], T], rollback: Callable[[], None] = lambda: None,
            abandoned: Callable[[], str | None] = lambda: None) -> T:
        """``launch()``'s result, relaunching it after ``rollback()`` when it fails.

        ``abandoned`` is polled while the job runs; a reason returned there
        cancels the job and counts as its failure.
        """
        while True:
            try:
                return self._once(epoch, launch, abandoned)
            except (InputError, ClusterCapacityError):
                raise
            except Exception as failure:  # noqa: BLE001 - relaunched or raised below
                if self.job.attempt > self.max_restarts:
                    raise
                self.job.relaunched(epoch, failure_reason(failure))
                rollback()
                self.job.begin_epoch(epoch)
                if self.slots_needed is not None:
                    wait_for_slots(self.job, self.strategy, self.slots_needed, self.slot_timeout, epoch)

    def _once(self, epoch: int, launch: Callable[[], T], abandoned: Callable[[], str | None]) -> T:
        from sparkeras.barrier import concurrent_slots

        sc = self.job.spark.sparkContext
        group = f"sparkeras-{self.strategy}-{next(_groups)}"
        outcome: dict[str, Any] = {}
        finished = threading.Event()

        def target() -> None:
            try:
                sc.setJobGroup(group, f"sparkeras {self.strategy} epoch {epoch + 1}", interruptOnCancel=True)
                outcome["result"] = launch()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                outcome["error"] = exc
            finally:
                finished.set()

        threading.Thread(target=target, name="sparkeras-epoch-job", daemon=True).start()
        cancelled: BaseException | None = None
        short_since: float | None = None
        checked = time.monotonic()
        while not finished.wait(0.2):
            if cancelled is not None:
                continue
            reason = abandoned()
            now = time.monotonic()
            if reason is not None:
                cancelled = RuntimeError(reason)
            elif self.slots_needed is not None and now - checked >= 1.0:
                checked, slots = now, concurrent_slots(sc)
                short_since = None if slots >= self.slots_needed else (short_since or now)
                if short_since is not None and now - short_since >= self.slot_timeout:
                    cancelled = capacity_error(self.strategy, self.slots_needed, slots, self.slot_timeout, epoch)
            if cancelled is not None:
                sc.cancelJobGroup(group)
        if cancelled is not None:
            raise cancelled
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]
