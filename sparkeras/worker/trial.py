"""A one-worker trial of a search, trained inside one Spark task.

The task reads the packed training and validation rows once, runs Keras'
own ``model.fit`` on them (so a trial trains exactly as ``model.fit``
would, with the validation scored by Keras every epoch), and after each
epoch sends the logs to the search's server on the driver
(:class:`~sparkeras.tune.reporting.TrialServer`) and waits for the verdict:
go on, or stop (pruned, or failed). One Spark job per trial, not one per
epoch: the model is built and traced once, and a stopped trial frees its
slot at once.

The task's input is the cached training blocks followed by the validation
blocks, one partition of their union, with no Python function upstream: a
``map`` there (to tag each block) runs in a second Python worker of the same
task, so two concurrent trials kept four workers busy, and each of the two
extra ones imported TensorFlow on the search's critical path (measured: the
second trial of a cold search started 5.5 s late).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from sparkeras.comm.server import FrameClient, ServerAddress
from sparkeras.data.packing import read_partition
from sparkeras.metric_values import to_json
from sparkeras.serialization import set_model_state, unpack_arrays
from sparkeras.worker import runtime
from sparkeras.worker.tasks import WorkerSpec


@dataclass(frozen=True)
class TrialTask:
    """What the trial's task needs, shipped in its closure (small: the weights come by broadcast)."""

    worker: WorkerSpec
    number: int
    epochs: int
    batch_size: int
    server: ServerAddress
    train_rows: int
    validation_rows: int = 0
    reply_timeout: float = 120.0


def split_blocks(blocks: Iterator[tuple], train_rows: int, validation_rows: int) -> tuple[list[tuple], list[tuple]]:
    """The training and validation blocks of the trial's input: the first ``train_rows`` rows are training.

    Spark's ``coalesce`` keeps the union's order (its training partition,
    then its validation partition); the row counts are checked, so a
    different order is an error, never a silent mix.
    """
    parts: tuple[list[tuple], list[tuple]] = ([], [])
    seen = [0, 0]
    for block in blocks:
        role = 0 if seen[0] < train_rows else 1
        parts[role].append(block)
        seen[role] += block[0]
    if seen != [train_rows, validation_rows]:
        raise RuntimeError(f"the trial's task read {seen[0]} training and {seen[1]} validation rows, expected "
                           f"{train_rows} and {validation_rows}")
    return parts


def run_trial(task: TrialTask, state: Any, rows: Iterator[tuple]) -> Iterator[tuple[int, int]]:
    """Train the trial's model on its training and validation blocks; answers (trial, epochs run)."""
    import keras

    runtime.configure(task.worker.backend)
    model = runtime.model(task.worker.model)
    set_model_state(model, unpack_arrays(state.value))
    train, held_out = split_blocks(rows, task.train_rows, task.validation_rows)
    columns = task.worker.columns
    arrays, _ = read_partition(columns, iter(train))
    x, y, *weights = columns.data(arrays)  # a weight column's weights come third
    validation = None
    if held_out:  # packed without the weight column: validation is not weighted
        val_arrays, _ = read_partition(columns.without_weights(), iter(held_out))
        validation = columns.without_weights().data(val_arrays)
    keras.utils.set_random_seed(task.worker.seed)
    reports = _Reports(task)
    try:
        model.fit(x, y, sample_weight=weights[0] if weights else None, validation_data=validation,
                  epochs=task.epochs, batch_size=task.batch_size, shuffle=True, verbose=0,
                  callbacks=[reports.callback()],
                  class_weight=dict(task.worker.class_weight) if task.worker.class_weight else None)
    finally:
        reports.close()
    yield task.number, reports.epochs


class _Reports:
    """Sends each epoch's logs to the driver and stops the fit when the verdict says so."""

    def __init__(self, task: TrialTask) -> None:
        self.task = task
        self.epochs = 0
        self._client: FrameClient | None = None

    def epoch_end(self, model: Any, epoch: int, logs: dict[str, Any] | None) -> None:
        self.epochs = epoch + 1
        values = {k: to_json(v) for k, v in (logs or {}).items()}
        if self._client is None:
            self._client = FrameClient(self.task.server, max_payload=0, timeout=self.task.reply_timeout)
        try:
            reply, _ = self._client.call({"type": "epoch", "trial": self.task.number, "epoch": epoch,
                                          "logs": values})
        except (OSError, EOFError) as exc:
            s = self.task.server
            raise ConnectionError(f"trial {self.task.number} got no verdict from the search's server at "
                                  f"{s.host}:{s.port} within {self.task.reply_timeout:.0f}s: {exc}") from None
        if reply.get("action") != "continue":
            model.stop_training = True

    def callback(self) -> Any:
        import keras

        reports = self

        class EpochReports(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                reports.epoch_end(self.model, epoch, logs)

        return EpochReports()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
