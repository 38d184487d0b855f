"""Failed epochs are run again inside the fit, for model averaging and the parameter-server strategies."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import ADAG, Downpour, ModelAveraging, SparkModel, WorkerError


def _recorder(events):
    return keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: events.append(("begin", e)),
                                          on_epoch_end=lambda e, logs: events.append(("end", e)))


@pytest.mark.parametrize("workers", [2, 3])
def test_averaging_runs_a_failed_epoch_again_from_its_start_and_trains_the_same_model(spark, tmp_path, workers):
    # 3 workers on local[2]'s 2 slots: one task trains two of them, and the failing one's partner is left
    # waiting at the round, which the relaunch abandons.
    x, y = blobs(1_600, seed=11)
    clean = SparkModel(mlp(seed=4), ModelAveraging(window=5), num_workers=workers, seed=2)
    clean.fit(x, y, epochs=3, batch_size=40, verbose=0)

    strategy = ModelAveraging(window=5)
    strategy.fail_once = (1, str(tmp_path / "failed"))  # partition 0 fails in epoch 2, after a round
    failed = SparkModel(mlp(seed=4), strategy, num_workers=workers, seed=2)
    events = []
    history = failed.fit(x, y, epochs=3, batch_size=40, verbose=0, callbacks=[_recorder(events)])

    assert (tmp_path / "failed").exists()
    assert [(r["attempt"], r["resumed_at_epoch"]) for r in history.restarts] == [(2, 2)]
    assert "RuntimeError: test hook: the task fails once after a commit" in history.restarts[0]["reason"]
    assert events == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1), ("begin", 2), ("end", 2)]
    assert len(history.history["loss"]) == 3
    # the relaunched epoch started from the same center, outer momentum and worker states
    for got, want in zip(failed.model.get_weights(), clean.model.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_parameter_server_fit_runs_a_failed_epoch_again(spark, tmp_path):
    x, y = blobs(1_600, seed=12)
    xt, yt = blobs(400, seed=12, sample_seed=13)
    strategy = Downpour()
    strategy.fail_once = (0, str(tmp_path / "failed"))
    sm = SparkModel(mlp(seed=5), strategy, num_workers=2, seed=2)
    history = sm.fit(x, y, epochs=3, batch_size=40, verbose=0)
    assert [(r["attempt"], r["resumed_at_epoch"]) for r in history.restarts] == [(2, 1)]
    assert len(history.history["loss"]) == 3
    assert sm.evaluate(xt, yt)["accuracy"] > 0.8


def test_without_restarts_a_failed_epoch_is_a_worker_error_with_its_reason(spark, tmp_path):
    x, y = blobs(400, seed=12)
    strategy = ModelAveraging(window=2, max_restarts=0)
    strategy.fail_once = (0, str(tmp_path / "failed"))
    with pytest.raises(WorkerError, match=r"^A Spark task failed while training epoch 1\. The worker's traceback"
                                          r"(.|\n)*RuntimeError: test hook: the task fails once after a commit"):
        SparkModel(mlp(seed=5), strategy, num_workers=2).fit(x, y, epochs=2, batch_size=40, verbose=0)


def test_bad_restart_settings_are_refused():
    from sparkeras import InputError

    with pytest.raises(InputError, match="max_restarts must be a non-negative integer, got -1"):
        ModelAveraging(max_restarts=-1)
    with pytest.raises(InputError, match="slot_timeout must be a positive number of seconds, got 0"):
        ADAG(slot_timeout=0)


@pytest.mark.parametrize("strategy", ["averaging", "allreduce", "async"])
def test_cancelling_the_users_job_group_stops_the_fit_instead_of_relaunching_it(spark, strategy):
    """A notebook's stop button cancels the cell's job group. sparkeras' training jobs run in the caller's
    group (under a tag of their own), so the cancellation reaches them, and a cancelled job is not relaunched:
    the fit ends at once with FitCancelled, the model holding the epochs completed before it."""
    import threading
    import time

    from sparkeras import FitCancelled

    x, y = blobs(1200, seed=5)
    sc = spark.sparkContext
    ended = threading.Event()
    model = mlp(seed=3)
    initial = [w.copy() for w in model.get_weights()]
    cancelled_at = []

    class CancelAfterTwoEpochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1 and not ended.is_set():
                ended.set()
                threading.Timer(0.2, lambda: (cancelled_at.append(time.monotonic()),
                                              sc.cancelJobGroup("a-notebook-cell"))).start()

    sc.setJobGroup("a-notebook-cell", "the user's cell")
    try:
        with pytest.raises(FitCancelled, match=r"Spark cancelled the job while training epoch \d+ \(.*"
                                               r"a-notebook-cell.*\), so the fit stops here instead of running it"):
            SparkModel(model, strategy=strategy, num_workers=2, seed=0).fit(
                x, y, epochs=500, batch_size=32, verbose=0, callbacks=[CancelAfterTwoEpochs()])
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    assert time.monotonic() - cancelled_at[0] < 30  # no relaunch, no wait for the 500 epochs
    assert any(np.abs(a - b).max() > 1e-3 for a, b in zip(model.get_weights(), initial))  # two epochs kept
