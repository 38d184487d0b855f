"""Parameter-server training and the distributed optimizers, on real Spark and real Keras."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

import numpy as np
import pytest

from conftest import blobs, clone, mlp, tagged_jobs
from sparkeras import ADAG, EASGD, DistributedOptimizer, Downpour, DynSGD, InputError, SparkModel
from sparkeras.comm.parameter_server import ParameterClient, ParameterServer
from sparkeras.comm.wire import encode_frame
from sparkeras.serialization import pack_arrays

STRATEGIES = ["async", "hogwild", "downpour", "adag", "dynsgd", "easgd", "aeasgd", "eamsgd"]
MUST_MATCH_PLAIN = {"adag", "dynsgd", "easgd"}  # at Adam's default rate: rules that scale their workers' rate
EPOCHS = 6


def _model():
    return mlp(seed=2)


@pytest.fixture(scope="module")
def problem():
    """The core issue's learnable 10-class problem, and plain ``model.fit``'s test accuracy on it."""
    x, y = blobs(12_000, dim=16, noise=2.2, seed=11)
    xt, yt = blobs(4_000, dim=16, noise=2.2, seed=11, sample_seed=99)
    plain = clone(_model())
    plain.fit(x, y, batch_size=64, epochs=EPOCHS, verbose=0)
    return (x, y), (xt, yt), plain.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"]



@pytest.mark.parametrize("name", ["averaging", "adag", "easgd"])
def test_a_task_that_trains_every_epoch_in_one_job_is_sent_its_local_state_once(spark, name):
    """Each epoch's join sent a worker back the state it had just reported: 200 MB each way for a model of
    16.6M weights with Adam. A task that still holds it now gets the center alone; the fit is unchanged."""
    x, y = blobs(1200, seed=3)

    def fit(holds_state: bool):
        from sparkeras.comm import parameter_server

        original = parameter_server.ParameterServer._join
        if not holds_state:  # the server as it was: every join sends the parked state
            parameter_server.ParameterServer._join = lambda self, worker, attempt, holds=None: original(
                self, worker, attempt)
        try:
            sm = SparkModel(mlp(seed=5), name, num_workers=2, seed=0)
            history = sm.fit(x, y, epochs=3, batch_size=32, verbose=0)
        finally:
            parameter_server.ParameterServer._join = original
        return sm, history.parameter_server

    held, held_stats = fit(True)
    sent, sent_stats = fit(False)
    assert held_stats["joins"] == sent_stats["joins"] == 6  # 2 workers, 3 epochs, one job
    assert held_stats["local_states_sent"] == 2 and sent_stats["local_states_sent"] == 6
    assert held_stats["bytes_out"] < sent_stats["bytes_out"]
    if name != "adag":  # adag commits asynchronously: its model depends on the workers' timing
        for got, want in zip(held.model.get_weights(), sent.model.get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_distributed_optimizer_learns_the_ten_class_problem(spark, problem, name):
    (x, y), (xt, yt), plain_acc = problem
    sm = SparkModel(_model(), name, num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=EPOCHS, batch_size=64, verbose=0)
    acc = sm.evaluate(xt, yt)["accuracy"]
    loss = history.history["loss"]
    assert len(loss) == EPOCHS
    # Every epoch's loss is the center's, measured on the training rows: the model that is saved. It stays
    # below the untrained model's and ends far below it. Not "falls every epoch": an asynchronous center
    # is near its floor after one epoch here and then wanders around it in an order set by timing
    # (downpour's later epochs were all above its first in about 1 run in 8).
    untrained = clone(_model()).evaluate(x, y, verbose=0, return_dict=True)["loss"]
    assert max(loss) < untrained and loss[-1] < 0.25 * untrained, (loss, untrained)
    assert loss[-1] == pytest.approx(sm.evaluate(x, y)["loss"], rel=1e-4)
    stats = history.parameter_server
    assert stats["commits"] > 0 and stats["bytes_in"] > 0 and stats["bytes_out"] > 0
    assert sum(stats["staleness"].values()) == stats["commits"]
    if name in MUST_MATCH_PLAIN:
        assert acc >= plain_acc - 0.01, (name, acc, plain_acc)
    else:
        assert acc > 0.85, (name, acc, plain_acc)


def test_history_validation_on_the_center_and_exact_commit_count(spark, capsys):
    x, y = blobs(3_000, dim=16, seed=3)
    xt, yt = blobs(1_000, dim=16, seed=3, sample_seed=4)
    sm = SparkModel(mlp(seed=4), Downpour(window=5), num_workers=2, seed=1)
    history = sm.fit(x, y, epochs=2, batch_size=50, validation_data=(xt, yt), verbose=1)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "worker_loss",
                                    "worker_accuracy"}
    # validation ran on the final center, which is now the driver's model
    assert history.history["val_loss"][-1] == pytest.approx(sm.evaluate(xt, yt)["loss"], abs=1e-5)
    # and so did the training figures: the saved model's, exactly; the workers' running ones are named as such
    center = sm.evaluate(x, y)
    assert history.history["loss"][-1] == pytest.approx(center["loss"], abs=1e-5)
    assert history.history["accuracy"][-1] == pytest.approx(center["accuracy"], abs=1e-6)
    assert history.history["worker_loss"][-1] != pytest.approx(center["loss"], abs=1e-3)
    # 1,500 rows per worker = 30 batches = 6 windows, two workers, two epochs
    stats = history.parameter_server
    assert stats["commits"] == 2 * 2 * 6
    assert stats["joins"] == 4 and stats["resent_commits"] == 0
    assert "Epoch 2/2" in capsys.readouterr().out
    assert not [t for t in threading.enumerate() if t.name.startswith("sparkeras-parameter-server")]


def test_a_connection_cut_mid_fit_is_retried_and_the_commit_not_applied_twice(spark):
    x, y = blobs(2_000, dim=16, seed=5)
    strategy = Downpour(window=4)
    strategy.cut_connection_after = 3  # the server drops a connection after applying its 3rd commit
    history = SparkModel(mlp(seed=5), strategy, num_workers=2, seed=2).fit(x, y, epochs=2, batch_size=50,
                                                                           verbose=0)
    assert len(history.history["loss"]) == 2
    stats = history.parameter_server
    assert stats["resent_commits"] == 1  # the worker resent it after reconnecting ...
    assert stats["commits"] == 2 * 2 * 5  # ... and every window was applied exactly once (20 batches / 4)


def test_a_user_defined_distributed_optimizer_trains(spark):
    class HalfDelta(DistributedOptimizer):
        """Commit the window's update; the server applies half of it."""

        name = "half-delta"

        def __init__(self, window=5):
            super().__init__(window)
            self.applied = 0  # the server runs in the driver, so this counts there

        def commit(self, local, center, steps):
            return [w - c for w, c in zip(local, center)]

        def fold(self, local, center, sent):
            return center

        def apply(self, center, commit, staleness):
            self.applied += 1
            for c, d in zip(center, commit):
                c += 0.5 * d

    x, y = blobs(4_000, dim=16, seed=6)
    xt, yt = blobs(1_000, dim=16, seed=6, sample_seed=7)
    rule = HalfDelta(window=5)
    sm = SparkModel(mlp(seed=6), rule, num_workers=2, seed=3)
    history = sm.fit(x, y, epochs=4, batch_size=50, verbose=0)
    assert rule.applied == history.parameter_server["commits"] == 4 * 2 * 8
    assert sm.evaluate(xt, yt)["accuracy"] > 0.85
    assert "HalfDelta(window=5" in history.strategy


def test_a_diverging_worker_fails_the_fit_clearly_and_the_server_shuts_down(spark):
    import keras

    x, y = blobs(1_000, dim=16, seed=9)
    model = mlp(seed=9, optimizer=keras.optimizers.SGD(learning_rate=1e30))
    # An InputError, not a relaunch: the same settings would diverge again.
    with pytest.raises(InputError, match="Training diverged: .*the commit holds NaN or infinite values; "
                                         "lower the learning rate"):
        SparkModel(model, "downpour", num_workers=2, seed=1).fit(x, y, epochs=2, batch_size=50, verbose=0)
    time.sleep(1.0)
    assert not [t for t in threading.enumerate() if t.name.startswith("sparkeras-parameter-server")]


def test_a_rule_that_reports_its_center_scores_it_in_the_tasks_of_one_job(spark, monkeypatch):
    """EASGD reports its center's loss and metrics on the training data. In one Spark job the tasks score the
    epoch's final center on their partitions instead of a job per epoch: the same model and figures."""
    from sparkeras.strategies import epochs as epoch_jobs
    from sparkeras.training import DriverValidation

    x, y = blobs(1200, seed=6)

    def fit():
        sm = SparkModel(mlp(seed=4), EASGD(rho=2.0, learning_rate=0.2), num_workers=2, seed=0)
        first = next(epoch_jobs._tags)
        history = sm.fit(x[:900], y[:900], epochs=4, batch_size=32, verbose=0, validation_data=(x[900:], y[900:]))
        last = next(epoch_jobs._tags)
        return sm, history.history, sum(len(tagged_jobs(spark, f"sparkeras-easgd-{k}"))
                                        for k in range(first + 1, last))

    one, one_history, one_jobs = fit()
    monkeypatch.setattr(DriverValidation, "MAX_BYTES", 0)  # a validation job between epochs: a job per epoch
    each, each_history, each_jobs = fit()
    assert (one_jobs, each_jobs) == (1, 4)
    for got, want in zip(one.model.get_weights(), each.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    for key in ("loss", "accuracy", "worker_loss", "val_loss"):
        assert one_history[key] == pytest.approx(each_history[key], abs=1e-5), key
    assert one_history["loss"][-1] == pytest.approx(one.evaluate(x[:900], y[:900])["loss"], abs=1e-5)


# -- the server, spoken to directly over its socket ----------------------------------------


def _server(rule, center):
    return ParameterServer("127.0.0.1", rule, center, pack_arrays(center))


def _client(server, worker=0):
    return ParameterClient(server.address, worker, 0, max_payload=1 << 20, timeout=5)


def test_server_rejects_strangers_and_garbage_and_keeps_serving():
    center = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)]
    server = _server(Downpour(), center)
    try:
        host, port, secret = server.address.host, server.address.port, server.address.secret
        commit = {"type": "commit", "worker": 0, "attempt": 0, "seq": 1, "base": 0}
        delta = pack_arrays([np.full((2, 3), 100, np.float32), np.full(4, 100, np.float32)])
        good = encode_frame(secret, commit, delta)
        junk = [
            encode_frame(b"wrong secret".ljust(32), commit, delta),              # not this fit's secret
            good[:-10],                                                          # truncated, then hang-up
            good[:4] + struct.pack("<I", 10**7) + good[8:],                      # oversized header
            os.urandom(300),                                                     # random bytes
        ]
        for frame in junk:
            with socket.create_connection((host, port)) as s:
                s.sendall(frame)
        deadline = time.time() + 5
        while server._server.rejected < len(junk) and time.time() < deadline:
            time.sleep(0.05)
        assert server._server.rejected == len(junk)
        for got, want in zip(server.snapshot(), center):
            np.testing.assert_array_equal(got, want)

        # a signed commit of the wrong shape is refused with a reason, and changes nothing
        client = _client(server)
        with pytest.raises(RuntimeError, match="do not match the center's dtypes and shapes"):
            client.commit([np.ones(3, np.float32)], base=0, want_center=True)
        with pytest.raises(InputError, match="Training diverged: .*NaN or infinite"):
            client.commit([np.full((2, 3), np.nan, np.float32), np.ones(4, np.float32)], base=0,
                          want_center=True)
        for got, want in zip(server.snapshot(), center):
            np.testing.assert_array_equal(got, want)

        # and the server still serves a well-formed commit
        new, version = client.commit([np.ones((2, 3), np.float32), np.ones(4, np.float32)], base=0,
                                     want_center=True)
        assert version == 1
        np.testing.assert_array_equal(new[0], center[0] + 1)
        np.testing.assert_array_equal(new[1], center[1] + 1)
    finally:
        stats = server.close()
    assert stats["rejected_frames"] == 4 and stats["refused_commits"] == 2 and stats["commits"] == 1
    with pytest.raises(OSError):
        socket.create_connection((server.address.host, server.address.port), timeout=1).close()


def test_dynsgd_scales_a_stale_commit_by_one_over_staleness_plus_one():
    server = _server(DynSGD(), [np.zeros(3, np.float32)])
    try:
        a, b = _client(server, 0), _client(server, 1)
        _, version_a, _ = a.join()
        _, version_b, _ = b.join()
        assert version_a == version_b == 0
        a.commit([np.full(3, 4.0, np.float32)], base=version_a, want_center=True)      # fresh: + 4
        b.commit([np.full(3, 6.0, np.float32)], base=version_b, want_center=True)      # 1 update behind: + 6/2
        center, version = a.pull()
        np.testing.assert_allclose(center[0], [7.0, 7.0, 7.0])
        c, _ = b.commit([np.full(3, 9.0, np.float32)], base=version - 2, want_center=True)  # 2 behind: + 9/3
        np.testing.assert_allclose(c[0], [10.0, 10.0, 10.0])
    finally:
        stats = server.close()
    assert stats["staleness"] == {"0": 1, "1": 1, "2": 1}


def test_adag_commits_the_mean_update_of_the_window():
    local, center = [np.full(2, 13.0, np.float32)], [np.full(2, 1.0, np.float32)]
    np.testing.assert_allclose(ADAG().commit(local, center, steps=12)[0], [1.0, 1.0])
    np.testing.assert_allclose(Downpour().commit(local, center, steps=12)[0], [12.0, 12.0])


def test_easgd_rounds_wait_for_every_worker():
    rule = EASGD(rho=2.0, learning_rate=0.25)  # alpha = 0.5
    server = _server(rule, [np.zeros(2, np.float32)])
    server.begin_epoch([0, 1])
    try:
        a, b = _client(server, 0), _client(server, 1)
        got = {}
        first = threading.Thread(target=lambda: got.update(a=a.commit([np.full(2, 1.0, np.float32)], 0, True)))
        first.start()
        time.sleep(0.3)
        assert first.is_alive(), "a synchronous commit must wait for the rest of its round"
        got["b"] = b.commit([np.full(2, 3.0, np.float32)], 0, True)
        first.join(5)
        np.testing.assert_allclose(got["a"][0][0], [4.0, 4.0])
        np.testing.assert_allclose(got["b"][0][0], [4.0, 4.0])
    finally:
        server.close()


def test_bad_strategy_options_are_refused(spark):
    with pytest.raises(InputError, match="window must be 'epoch' or a positive number of batches, got 0"):
        Downpour(window=0)
    with pytest.raises(InputError, match=r"alpha = rho \* learning_rate = 5.0 \* 0.3 = 1.5"):
        EASGD(rho=5.0, learning_rate=0.3)
    x, y = blobs(400, dim=16)
    with pytest.raises(InputError, match=r"num_workers \* alpha = 1.20 .* rho \* learning_rate <= 0.500"):
        SparkModel(mlp(), EASGD(rho=6.0, learning_rate=0.1), num_workers=2).fit(x, y, verbose=0)
    with pytest.raises(InputError, match=r"num_workers \* alpha = 1.20 .* rho \* learning_rate <= 0.333"):
        SparkModel(mlp(), "easgd", num_workers=3, rho=5.0, learning_rate=0.08).fit(x, y, verbose=0)  # 2 slots


def test_a_retried_task_abandons_the_synchronous_round_at_once_and_a_new_epoch_starts_clean():
    rule = EASGD(rho=2.0, learning_rate=0.25)
    server = _server(rule, [np.zeros(2, np.float32)])
    server.begin_epoch([0, 1])
    try:
        waiting = {}

        def commit():
            try:
                _client(server, 0).commit([np.full(2, 1.0, np.float32)], 0, True)
            except RuntimeError as exc:
                waiting["error"] = str(exc)

        first = threading.Thread(target=commit)
        first.start()
        time.sleep(0.3)
        assert server.abandoned() is None
        retried = ParameterClient(server.address, 1, 1, max_payload=1 << 20, timeout=5)  # Spark's attempt 2
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"worker 1's task failed and Spark retried it \(attempt 2\)"):
            retried.join()
        first.join(5)
        assert time.monotonic() - started < 2.0, "the waiting worker must not sit out the round's timeout"
        assert "the synchronous round was abandoned: worker 1's task failed" in waiting["error"]
        assert "in the middle of a synchronous epoch" in server.abandoned()

        # the driver puts the epoch's center back and starts it again: a clean round
        server.restore([np.zeros(2, np.float32)])
        server.begin_epoch([0, 1])
        assert server.abandoned() is None
        got, a, b = {}, _client(server, 0), _client(server, 1)
        a.join(), b.join()  # the relaunched tasks join first, as every task does
        first = threading.Thread(target=lambda: got.update(a=a.commit([np.full(2, 1.0, np.float32)], 0, True)))
        first.start()
        got["b"] = b.commit([np.full(2, 3.0, np.float32)], 0, True)
        first.join(5)
        np.testing.assert_allclose(got["a"][0][0], [4.0, 4.0])
    finally:
        server.close()


def test_an_asynchronous_retry_abandons_a_whole_fit_job_but_joins_a_job_per_epoch():
    """An asynchronous rule's task Spark retries joins and goes on in a job per epoch. In a job that trains
    every epoch, the other tasks wait at the epoch's end for it, and it would start at the job's first epoch:
    its join abandons the run, and the worker waiting at the epoch's end hears why at once."""
    center = [np.zeros(2, np.float32)]
    server = _server(Downpour(), center)
    try:
        run = server.begin_epoch([0, 1])
        retried = ParameterClient(server.address, 1, 1, max_payload=1 << 20, timeout=5, run=run)
        retried.join()  # a job per epoch: the retry goes on
        assert server.abandoned() is None

        server.retry_abandons = "a job that trains every epoch"  # as OneJobFit sets it
        run = server.begin_epoch([0, 1])
        waiting = {}

        def report():
            client = ParameterClient(server.address, 0, 0, max_payload=1 << 20, timeout=5, run=run)
            try:
                client.end_epoch(10, 1, b"", b"", {})
            except RuntimeError as exc:
                waiting["error"] = str(exc)

        first = threading.Thread(target=report)
        first.start()
        time.sleep(0.3)
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"worker 1's task failed and Spark retried it \(attempt 2\) "
                                               r"in the middle of a job that trains every epoch"):
            ParameterClient(server.address, 1, 1, max_payload=1 << 20, timeout=5, run=run).join()
        first.join(5)
        assert time.monotonic() - started < 2.0, "the waiting worker must not sit out the server's timeout"
        assert "ended before the driver answered worker 0: worker 1's task failed" in waiting["error"]
    finally:
        server.close()


def test_a_task_of_an_abandoned_run_is_refused_and_cannot_abandon_the_run_that_replaced_it():
    """Spark may retry a task of a cancelled epoch job after the driver started the epoch again; its join
    (attempt 2) must not abandon the new run, nor its commits or 'done' reach the new run's rounds."""
    rule = EASGD(rho=2.0, learning_rate=0.25)
    server = _server(rule, [np.zeros(2, np.float32)])
    try:
        first_run = server.begin_epoch([0, 1])
        second_run = server.begin_epoch([0, 1])  # the driver cancelled the first run's job and started again
        assert second_run == first_run + 1
        late = ParameterClient(server.address, 0, 1, max_payload=1 << 20, timeout=5, run=first_run)
        with pytest.raises(RuntimeError, match=rf"worker 0's task belongs to run {first_run} of the epoch, which "
                                               rf"was abandoned; run {second_run} replaced it"):
            late.join()
        with pytest.raises(RuntimeError, match="which was abandoned"):
            late.done()
        assert server.abandoned() is None
        got = {}
        a = ParameterClient(server.address, 0, 0, max_payload=1 << 20, timeout=5, run=second_run)
        b = ParameterClient(server.address, 1, 0, max_payload=1 << 20, timeout=5, run=second_run)
        a.join(), b.join()
        first = threading.Thread(target=lambda: got.update(a=a.commit([np.full(2, 1.0, np.float32)], 0, True)))
        first.start()
        got["b"] = b.commit([np.full(2, 3.0, np.float32)], 0, True)
        first.join(5)
        np.testing.assert_allclose(got["a"][0][0], [4.0, 4.0])  # both workers still counted in the round
    finally:
        server.close()


def test_epoch_end_reports_reach_the_driver_once_all_are_in_and_its_answer_begins_the_next_run():
    """A fit in one Spark job: each task reports its epoch's end and waits; the driver gets every report at
    once, and its answer carries the next epoch's run and learning rate (or says stop)."""
    server = _server(EASGD(rho=2.0, learning_rate=0.25), [np.zeros(2, np.float32)])
    try:
        run = server.begin_epoch([0, 1])
        answers = {}

        def report(worker, state):
            client = ParameterClient(server.address, worker, 0, max_payload=1 << 20, timeout=5, run=run)
            answers[worker] = client.end_epoch(100 + worker, 4, state, b"metrics", {"seconds": 0.5})

        first = threading.Thread(target=report, args=(0, b"state-0"))
        first.start()
        assert server.epoch_reports(0.3) is None, "the epoch is handed over only once every worker reported"
        second = threading.Thread(target=report, args=(1, b"state-1!"))
        second.start()
        got_run, reports, scored = server.epoch_reports(5)
        assert got_run == run and sorted(reports) == [0, 1] and scored == {}
        header, payload = reports[1]
        assert (header["samples"], header["steps"], header["figures"]) == (101, 4, {"seconds": 0.5})
        assert payload[:header["state_bytes"]] == b"state-1!" and payload[header["state_bytes"]:] == b"metrics"
        time.sleep(0.2)
        assert first.is_alive() and second.is_alive(), "the tasks wait for the driver's answer"
        following = server.answer_epoch(run, 0.5, [0, 1])
        first.join(5), second.join(5)
        assert following == run + 1
        assert answers[0] == answers[1] == {"stop": False, "run": run + 1, "learning_rate": 0.5}
        report(1, b"state-1!")  # resent after a lost reply, once the next run began: the same answer
        assert answers[1] == answers[0]

        run, answers = following, {}
        tasks = [threading.Thread(target=report, args=(w, b"")) for w in (0, 1)]
        for task in tasks:
            task.start()
        assert server.epoch_reports(5)[0] == following
        server.answer_epoch(following)  # the driver stops the fit (the last epoch, or EarlyStopping)
        for task in tasks:
            task.join(5)
        assert answers[0]["stop"] is True and answers[1]["stop"] is True
    finally:
        server.close()


def test_a_task_waiting_at_its_epoch_end_gives_up_after_the_timeout_naming_what_it_waited_for():
    center = [np.zeros(2, np.float32)]
    server = ParameterServer("127.0.0.1", EASGD(rho=2.0, learning_rate=0.25), center, pack_arrays(center),
                             timeout=1.0)
    try:
        run = server.begin_epoch([0, 1])
        alone = ParameterClient(server.address, 0, 0, max_payload=1 << 20, timeout=5, run=run)
        with pytest.raises(RuntimeError, match=r"worker 0 waited 1s at the end of its epoch for worker\(s\) \[1\] "
                                               r"to finish theirs"):
            alone.end_epoch(10, 1, b"", b"", {})
        run = server.begin_epoch([0])
        unanswered = ParameterClient(server.address, 0, 0, max_payload=1 << 20, timeout=5, run=run)
        with pytest.raises(RuntimeError, match=r"worker 0 waited 1s at the end of its epoch for the driver's "
                                               r"answer \(its callbacks and validation\)"):
            unanswered.end_epoch(10, 1, b"", b"", {})
        run = server.begin_epoch([0, 1])  # a rule that reports its center: worker 1 never scores it
        silent = ParameterClient(server.address, 1, 0, max_payload=1 << 20, timeout=5, run=run)
        threading.Thread(target=lambda: silent.call({"type": "epoch_end", "samples": 1, "steps": 1, "state_bytes": 0,
                                                     "figures": {}, "center": True})).start()
        scorer = ParameterClient(server.address, 0, 0, max_payload=1 << 20, timeout=5, run=run)
        scores = []
        with pytest.raises(RuntimeError, match=r"worker 0 waited 1s at the end of its epoch for worker\(s\) \[1\] "
                                               r"to score the center"):
            scorer.end_epoch(10, 1, b"", b"", {}, score_center=lambda center: scores.append(center) or b"")
        np.testing.assert_array_equal(scores[0][0], np.zeros(2, np.float32))  # it was handed the center
    finally:
        server.close()


def test_a_task_of_a_fit_that_ended_stops_at_once_when_the_server_refuses_it():
    """A cancelled fit's task (its slots lost) finds the server's port closed: it must free its slot now,
    not retry for the whole timeout."""
    server = _server(Downpour(), [np.zeros(2, np.float32)])
    client = ParameterClient(server.address, 0, 0, max_payload=1 << 20, timeout=60)
    client.join()
    server.close()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"the parameter server at 127.0.0.1:{server.address.port} refused the "
                                              r"connection: the fit it served has ended, or its driver stopped"):
        client.commit([np.ones(2, np.float32)], 0, want_center=True)
    assert time.monotonic() - started < 5


def test_the_checkpoint_keeps_the_servers_update_count_and_parked_states():
    center = [np.zeros(3, np.float32)]
    server = _server(Downpour(), center)
    try:
        server.park({1: pack_arrays([np.ones(3, np.float32)])})
        client = _client(server)
        client.join()
        for _ in range(3):
            client.commit([np.ones(3, np.float32)], base=0, want_center=False)
        strategy = Downpour()
        strategy._server = server
        saved = strategy.checkpoint_state()
    finally:
        server.close()
    assert int(saved["server_version"][0]) == 3
    np.testing.assert_array_equal(saved["local/1"][0], np.ones(3, np.float32))

    resumed = Downpour()
    resumed.restore_checkpoint_state(saved)
    assert resumed._restored_version == 3 and set(resumed._restored_local) == {1}
