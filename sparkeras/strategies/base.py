"""The contract between :class:`~sparkeras.SparkModel` and a training strategy.

``SparkModel`` prepares everything that does not depend on how workers
cooperate (data, model, callbacks, progress) into a
:class:`~sparkeras.training.TrainingJob` and calls :meth:`Strategy.fit`. A
strategy decides what the workers do between two epoch ends: run one Spark
job per window and average (model averaging), run one barrier stage that
all-reduces gradients every step, or talk to a parameter server. It reports
each finished epoch through ``job.end_epoch`` and stops when that returns
``True``. New strategies plug in without changing ``SparkModel``.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, ClassVar

from sparkeras.worker.runtime import WarmUp

if TYPE_CHECKING:
    from sparkeras.training import TrainingJob


class Strategy(abc.ABC):
    """How workers cooperate to train one model."""

    name: ClassVar[str]
    #: Whether the workers' BatchNormalization statistics are averaged over workers that each make
    #: 1/N of the steps (model averaging) or updated once per global batch (all-reduce); the workers
    #: then update them with ``momentum ** N`` (:meth:`sparkeras.serialization.ModelSpec.with_moving_statistics_for`).
    #: Parameter-server rules that add up every worker's moves keep the layers' own momentum.
    averages_moving_statistics: ClassVar[bool] = False
    #: Whether the driver's model ends a fit holding the workers' optimizer state (its step count, moments,
    #: and the moving average of the weights that ``use_ema`` keeps), so that the fit can end as Keras'
    #: ``fit`` ends. The parameter-server rules keep each worker's optimizer on its worker: the driver
    #: holds the center's weights only.
    driver_holds_optimizer_state: ClassVar[bool] = False

    def check_cluster(self, spark: Any, num_workers: int) -> None:
        """Reject a cluster this strategy cannot run on (too few task slots, a missing library).

        Called before the data is read or any task starts, so a fit that
        cannot run costs no packing and leaves no tasks behind.
        """

    def check_model(self, model: Any) -> None:
        """Reject a model this strategy cannot train as written, before any data is read."""

    def worker_warm_up(self, spark: Any, num_workers: int) -> WarmUp:
        """What the training workers prepare while the driver packs the data: by default the window loop."""
        return WarmUp()

    def check(self, job: "TrainingJob") -> None:
        """Reject options that cannot work for this job, before training starts."""

    @abc.abstractmethod
    def fit(self, job: "TrainingJob") -> None:
        """Train epochs ``job.initial_epoch`` to ``job.epochs`` and keep ``job.state`` current."""

    def get_config(self) -> dict[str, Any]:
        """The strategy's options, for logs, history and persistence."""
        return {}

    def checkpoint_state(self) -> dict[str, list[Any]]:
        """The strategy's own state at an epoch end (numpy arrays by name), saved with the model's.

        Called on the driver after each completed epoch while ``fit`` runs;
        whatever the next epoch needs beyond the model's weights and
        optimizer state (an outer optimizer's momentum, workers' local
        states) goes here.
        """
        return {}

    def restore_checkpoint_state(self, state: dict[str, list[Any]]) -> None:
        """Take back what :meth:`checkpoint_state` saved, before ``fit`` resumes."""

    def forget_finished_fit(self) -> None:
        """Drop what :meth:`checkpoint_state` kept of a completed fit once it has been taken (see
        :mod:`sparkeras.strategies.continuation`), so a strategy object does not hold it for other models."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({opts})"
