"""The rules that make distributed fits converge like ``model.fit``: averaging's outer step, all-reduce's
learning-rate scaling and warmup, and the switches that turn them off."""

from __future__ import annotations

import math
import re
from functools import partial

import keras
import numpy as np
import pytest

from conftest import blobs, clone, mlp
from sparkeras import AllReduce, InputError, ModelAveraging, SparkModel
from sparkeras.strategies.averaging import OuterStep
from sparkeras.worker.learning_rate import scale_factor, scale_learning_rate, warmup_factor


def test_outer_step_is_nesterov_momentum_on_the_mean_move():
    center = [np.array([1.0, 2.0], np.float32), np.array([10.0], np.float32)]
    step = OuterStep(momentum=0.5, learning_rate=1.0, nesterov=True, trainable=[True, False])
    step(center, [np.array([-0.2, 0.4], np.float32), np.array([2.0], np.float32)])
    # g = -move = [0.2, -0.4]; v = g; step = g + 0.5 v = 1.5 g
    np.testing.assert_allclose(center[0], [1.0 - 0.3, 2.0 + 0.6], rtol=1e-6)
    np.testing.assert_allclose(center[1], [12.0])  # not trainable: plain average, no momentum
    step(center, [np.array([-0.2, 0.4], np.float32), np.array([0.0], np.float32)])
    # v = 0.5 * g + g = 1.5 g; step = g + 0.5 * 1.5 g = 1.75 g
    np.testing.assert_allclose(center[0], [0.7 - 0.35, 2.6 + 0.7], rtol=1e-6)


def test_the_outer_momentum_is_bias_corrected_so_its_first_rounds_take_the_steady_step():
    """``bias_correction``: round t divides the velocity by ``1 - m**t``, so a constant move gets the
    ``1 / (1 - m)`` step (2 g for m = 0.5) from the first round, where uncorrected momentum takes 1.5 g, then 1.75 g."""
    center = [np.array([1.0, 2.0], np.float32), np.array([10.0], np.float32)]
    step = OuterStep(momentum=0.5, learning_rate=1.0, nesterov=True, trainable=[True, False], bias_correction=True)
    move = [np.array([-0.2, 0.4], np.float32), np.array([2.0], np.float32)]
    step(center, move)  # g = [0.2, -0.4]; v = g, corrected v / 0.5 = 2 g; step = g + 0.5 * 2 g = 2 g
    np.testing.assert_allclose(step.velocity[0], [0.2, -0.4], rtol=1e-6)  # kept uncorrected
    np.testing.assert_allclose(center[0], [1.0 - 0.4, 2.0 + 0.8], rtol=1e-6)
    np.testing.assert_allclose(center[1], [12.0])  # not trainable: plainly averaged
    # the iterate takes out the corrected look-ahead, 0.5 * 2 g: the first round's mean move, g
    np.testing.assert_allclose(step.iterate(center)[0], [1.0 - 0.2, 2.0 + 0.4], rtol=1e-6)
    step(center, [move[0], np.array([0.0], np.float32)])  # v = 1.5 g, / (1 - 0.25) = 2 g: the same step
    np.testing.assert_allclose(center[0], [0.6 - 0.4, 2.8 + 0.8], rtol=1e-6)
    step(center, [-move[0], np.array([0.0], np.float32)])  # v = 0.75 g - g = -0.25 g, / 0.875 = -2 g / 7
    np.testing.assert_allclose(center[0], [0.2 + 0.2 * 8 / 7, 3.6 - 0.4 * 8 / 7], rtol=1e-5)  # step -g - g / 7
    assert step.rounds == 3
    heavy = [np.array([0.0], np.float32)]
    OuterStep(0.75, 1.0, False, [True], bias_correction=True)(heavy, [np.array([1.0], np.float32)])
    np.testing.assert_allclose(heavy[0], [4.0])  # heavy ball: v / 0.25
    plain = [np.array([0.0], np.float32)]
    OuterStep(0.0, 1.0, True, [True], bias_correction=True)(plain, [np.array([0.25], np.float32)])
    np.testing.assert_allclose(plain[0], [0.25])  # no momentum: the plain average, corrected or not
    assert not ModelAveraging().get_config()["momentum_bias_correction"]  # off unless asked for
    assert ModelAveraging(momentum_bias_correction=True).get_config()["momentum_bias_correction"]


def test_outer_step_heavy_ball_and_plain_average():
    center = [np.array([0.0], np.float32)]
    heavy = OuterStep(momentum=0.5, learning_rate=2.0, nesterov=False, trainable=[True])
    heavy(center, [np.array([1.0], np.float32)])  # v = -1, step = lr * v
    heavy(center, [np.array([1.0], np.float32)])  # v = -1.5
    np.testing.assert_allclose(center[0], [2.0 + 3.0])
    plain = [np.array([0.0], np.float32)]
    OuterStep(momentum=0.0, learning_rate=1.0, nesterov=True, trainable=[True])(plain, [np.array([0.25], np.float32)])
    np.testing.assert_allclose(plain[0], [0.25])


def test_the_iterate_is_the_center_without_nesterovs_look_ahead():
    outer = OuterStep(momentum=0.5, learning_rate=2.0, nesterov=True, trainable=[True, False])
    center = [np.array([0.0], np.float32), np.array([10.0], np.float32)]
    np.testing.assert_array_equal(outer.iterate(center)[0], [0.0])  # no step yet: the center
    outer(center, [np.array([1.0], np.float32), np.array([1.0], np.float32)])
    # v = -1; step = -1 + 0.5 * -1 = -1.5; center = 0 + 2 * 1.5 = 3; the iterate is 3 + 2 * 0.5 * -1 = 2
    np.testing.assert_allclose(center[0], [3.0])
    iterate = outer.iterate(center)
    np.testing.assert_allclose(iterate[0], [2.0])
    np.testing.assert_array_equal(iterate[1], [11.0])  # not trained: plainly averaged, no momentum
    np.testing.assert_allclose(outer.look_ahead(iterate)[0], center[0])
    assert iterate[0] is not center[0]
    for plain in (OuterStep(0.5, 2.0, False, [True]), OuterStep(0.0, 1.0, True, [True])):
        c = [np.array([0.0], np.float32)]
        plain(c, [np.array([1.0], np.float32)])
        np.testing.assert_array_equal(plain.iterate(c)[0], c[0])  # heavy ball, or no momentum


def test_the_iterate_is_reported_only_with_twice_as_many_rounds_per_epoch_as_workers():
    rule = ModelAveraging().reports_iterate
    assert rule(2, 4) and rule(4, 8) and rule(8, 30)
    assert not rule(2, 3) and not rule(4, 7) and not rule(2, 1)


def test_averaging_momentum_follows_the_worker_count_unless_set():
    assert ModelAveraging().momentum(1) == 0.0
    assert ModelAveraging().momentum(2) == 0.5
    assert ModelAveraging().momentum(4) == 0.75
    assert ModelAveraging(outer_momentum=0).momentum(4) == 0.0
    strategy = ModelAveraging()
    strategy._outer = OuterStep(0.0, 1.0, True, [True])
    center = [np.zeros(2, np.float32)]
    strategy.apply_round(center, [[np.array([1.0, 3.0], np.float32)], [np.array([3.0, 5.0], np.float32)]])
    np.testing.assert_allclose(center[0], [2.0, 4.0])  # the mean of the two moves


@pytest.mark.parametrize("options, message", [
    ({"learning_rate_scaling": "sqrt"}, "learning_rate_scaling must be 'auto' (linear for SGD, the outer momentum "
                                        "for the Adam family), None (the outer momentum makes the N-fold step) or "
                                        "'linear' (the workers train at N times the rate), got 'sqrt'"),
    ({"outer_momentum": 1.0}, "outer_momentum must be in [0, 1)"),
    ({"outer_learning_rate": 0}, "outer_learning_rate must be a positive number, got 0"),
    ({"window": 0}, "window must be 'epoch' or a positive number of batches"),
])
def test_bad_averaging_options_are_refused(options, message):
    with pytest.raises(InputError, match=re.escape(message)):
        ModelAveraging(**options)


def test_workers_that_scale_their_own_rate_need_no_outer_momentum_unless_it_is_set():
    scaled = ModelAveraging(learning_rate_scaling="linear")
    assert [scaled.momentum(n) for n in (1, 2, 4)] == [0.0, 0.0, 0.0]
    assert [scaled.worker_learning_rate(0.01, n) for n in (1, 2, 4)] == [0.01, 0.02, 0.04]
    assert ModelAveraging(learning_rate_scaling="linear", outer_momentum=0.3).momentum(4) == 0.3
    assert ModelAveraging().worker_learning_rate(0.01, 4) == 0.01
    assert ModelAveraging(**scaled.get_config()).learning_rate_scaling == "linear"


@pytest.mark.parametrize("optimizer, two_workers, four_workers", [
    (lambda: keras.optimizers.SGD(0.05), "linear", "linear"),
    (lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True), "linear", "linear"),
    (lambda: keras.optimizers.Adam(1e-3), "linear", "linear"),
    (lambda: keras.optimizers.RMSprop(1e-3), None, None),
    (lambda: keras.optimizers.AdamW(1e-3), "linear", "linear"),
    (lambda: keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.9)), None, None),
], ids=["sgd", "momentum-sgd", "adam", "rmsprop", "adamw", "sgd-schedule"])
def test_the_default_rule_scales_the_rate_for_sgd_and_adam_else_leaves_it_to_the_outer_momentum(
        optimizer, two_workers, four_workers):
    """``learning_rate_scaling="auto"``: Goyal et al.'s linear rule where the optimizer's step is its rate times
    the gradient, and for Adam and its kin (a first moment), warmed up over an epoch from 3 workers on; the
    outer momentum for RMSprop, or where the rate follows a schedule."""
    strategy = ModelAveraging()
    model = mlp(seed=1, optimizer=optimizer())
    strategy.check_model(model)
    assert (strategy.rule(2), strategy.rule(4)) == (two_workers, four_workers)
    adam_family = hasattr(model.optimizer, "beta_1")
    assert [strategy.warmup_for(n) for n in (1, 2, 3, 4)] == ([0.0, 0.0, 1.0, 1.0] if adam_family else [0.0] * 4)
    assert (strategy.momentum(2), strategy.momentum(4)) == (0.0 if two_workers else 0.5, 0.0 if four_workers else 0.75)
    assert strategy.worker_learning_rate(0.05, 2) == (0.1 if two_workers else 0.05)
    assert strategy.worker_learning_rate(0.05, 4) == (0.2 if four_workers else 0.05)
    assert strategy.momentum(1) == 0.0 and strategy.worker_learning_rate(0.05, 1) == 0.05
    assert ModelAveraging(learning_rate_scaling=None).scaling_for(model.optimizer) is None
    assert ModelAveraging(**strategy.get_config()).learning_rate_scaling == "auto"


def test_a_scaled_rate_needs_a_constant_one_and_says_so_before_any_data_is_read(spark):
    model = mlp(seed=1, optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)))
    sm = SparkModel(model, strategy=ModelAveraging(learning_rate_scaling="linear"), num_workers=2)
    with pytest.raises(InputError, match=re.escape(
            "ModelAveraging(learning_rate_scaling='linear') scales a constant learning rate, but the model's "
            "optimizer (Adam) follows a schedule. Compile it with a number as learning_rate")):
        sm.fit("/nonexistent/never-read.parquet", epochs=1)


def test_the_averaging_window_shrinks_with_the_square_of_the_worker_count_down_to_8_unless_given():
    default = ModelAveraging()
    assert [default.window_for(n) for n in (1, 2, 3, 4, 8, 16)] == [128, 32, 14, 8, 8, 8]
    assert ModelAveraging(window=5).window_for(4) == 5
    assert ModelAveraging(window="epoch").window_for(8) == "epoch"
    assert "window=None" in repr(default)


def test_a_fit_uses_the_window_chosen_for_its_workers_and_keeps_its_setting(spark):
    x, y = blobs(400, seed=3)
    strategy = ModelAveraging()
    before = repr(strategy)
    SparkModel(mlp(seed=2), strategy=strategy, num_workers=4, seed=0).fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert strategy.window == 8 and repr(strategy) == before  # the checkpoint fingerprint stays the same
    assert (strategy._outer.momentum, strategy._outer.learning_rate) == (0.0, 1.0)  # Adam: linear rule...
    assert strategy._ramp == (4.0, 1.0, 7)  # ...warmed up over one epoch of 7 batches, with 4 workers
    SparkModel(mlp(seed=2), strategy=strategy, num_workers=2, seed=0).fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert strategy.window == 32
    assert (strategy._outer.momentum, strategy._outer.learning_rate) == (0.0, 1.0)  # Adam's 2 workers: linear
    assert strategy._ramp[:2] == (2.0, 0.0)  # with no warmup


def test_scale_factor_follows_the_optimizer_family():
    assert scale_factor("auto", keras.optimizers.Adam(), 2) == 2.0  # the Adam family: linear up to 4 workers
    assert scale_factor("auto", keras.optimizers.AdamW(), 2) == 2.0
    assert scale_factor("auto", keras.optimizers.Adam(), 4) == 4.0
    assert scale_factor("auto", keras.optimizers.Adam(), 5) == pytest.approx(math.sqrt(5))
    assert scale_factor("auto", keras.optimizers.Adam(), 9) == pytest.approx(3.0)
    assert scale_factor("auto", keras.optimizers.RMSprop(), 2) == pytest.approx(math.sqrt(2))
    assert scale_factor("auto", keras.optimizers.Adagrad(), 2) == pytest.approx(math.sqrt(2))
    assert scale_factor("auto", keras.optimizers.SGD(), 4) == 4.0
    assert scale_factor("linear", keras.optimizers.Adam(), 4) == 4.0
    assert scale_factor("sqrt", keras.optimizers.SGD(), 9) == 3.0
    assert scale_factor("none", keras.optimizers.SGD(), 4) == 1.0
    assert scale_factor("auto", keras.optimizers.SGD(), 1) == 1.0


def test_allreduce_warms_the_adam_familys_linear_rule_up_over_an_epoch_above_two_workers():
    from sparkeras.worker.learning_rate import allreduce_warmup_epochs

    adam, sgd, rmsprop = keras.optimizers.Adam(), keras.optimizers.SGD(), keras.optimizers.RMSprop()
    assert [allreduce_warmup_epochs(None, "auto", adam, n) for n in (2, 3, 4, 5, 8)] == [0.25, 1.0, 1.0, 0.25, 0.25]
    assert allreduce_warmup_epochs(None, "auto", sgd, 4) == 0.25  # SGD's linear rule keeps a quarter epoch
    assert allreduce_warmup_epochs(None, "auto", rmsprop, 4) == 0.25  # sqrt(N)
    assert allreduce_warmup_epochs(None, "linear", adam, 4) == 0.25  # asked for: the rule's own warmup
    assert allreduce_warmup_epochs(0.5, "auto", adam, 4) == 0.5
    assert AllReduce().get_config()["warmup_epochs"] is None
    assert AllReduce(**AllReduce(warmup_epochs=2).get_config()).warmup_epochs == 2.0


def test_warmup_rises_linearly_to_the_scaled_rate():
    assert warmup_factor(0, 4.0, 100) == 1.0
    assert warmup_factor(50, 4.0, 100) == 2.5
    assert warmup_factor(100, 4.0, 100) == 4.0
    assert warmup_factor(1000, 4.0, 100) == 4.0
    assert warmup_factor(0, 4.0, 0) == 4.0


@pytest.mark.parametrize("schedule", [False, True], ids=["constant", "schedule"])
def test_scaled_learning_rate_on_a_keras_optimizer_and_its_restore(schedule):
    base = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5) if schedule else 0.1
    optimizer = keras.optimizers.SGD(base)
    optimizer.build([keras.Variable(np.zeros(2, np.float32))])
    optimizer.iterations.assign(15)
    user_rate = float(optimizer.learning_rate)
    restore = scale_learning_rate(optimizer, scale=3.0, warmup_steps=20, start=5)
    assert float(optimizer.learning_rate) == pytest.approx(user_rate * warmup_factor(10, 3.0, 20))
    optimizer.iterations.assign(40)
    want = (0.1 * 0.5 ** 4.0 if schedule else 0.1) * 3.0
    assert float(optimizer.learning_rate) == pytest.approx(want, rel=1e-6)
    restore()
    assert float(optimizer.learning_rate) == pytest.approx(0.1 * 0.5 ** 4.0 if schedule else 0.1, rel=1e-6)


def test_bad_scaling_options_are_refused():
    with pytest.raises(InputError, match=r"learning_rate_scaling must be one of \['auto', 'linear', 'sqrt', 'none'\]"):
        AllReduce(learning_rate_scaling="cubic")
    with pytest.raises(InputError, match="warmup_epochs must be a non-negative number"):
        AllReduce(warmup_epochs=-1)


class _WarmupSGD(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, rate, scale, warmup):
        self.rate, self.scale, self.warmup = rate, scale, warmup

    def __call__(self, step):
        ramp = keras.ops.clip(keras.ops.cast(step, "float32") / self.warmup, 0.0, 1.0)
        return self.rate * (1.0 + (self.scale - 1.0) * ramp)


def test_allreduce_scales_the_rate_with_warmup_exactly(spark):
    """2 workers, SGD, linear rule, warmup over half an epoch == one process with that schedule; then a fit
    of the same architecture without scaling == one process at the user's rate."""
    from test_allreduce import _global_batches

    b = 16
    x, y = blobs(2 * 20 * b, seed=21)
    model = mlp(seed=4, optimizer=keras.optimizers.SGD(0.05))
    plain = clone(model)
    plain.compile(optimizer=keras.optimizers.SGD(_WarmupSGD(0.05, 2.0, 10)), loss=model.loss)
    gx, gy = _global_batches(x, y, b)
    plain.fit(gx, gy, batch_size=2 * b, epochs=1, shuffle=False, verbose=0)

    strategy = AllReduce(learning_rate_scaling="linear", warmup_epochs=0.5)
    sm = SparkModel(model, strategy=strategy, num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, batch_size=b, shuffle=False, verbose=0)
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert float(sm.model.optimizer.learning_rate) == pytest.approx(0.05)  # the user's rate is kept

    # The same architecture again: the workers train it with the step they traced (jitted on JAX) for the
    # fit above, at this fit's rate, unscaled.
    model = mlp(seed=4, optimizer=keras.optimizers.SGD(0.05))
    plain = clone(model)
    plain.fit(gx, gy, batch_size=2 * b, epochs=1, shuffle=False, verbose=0)
    sm = SparkModel(model, strategy=AllReduce(learning_rate_scaling=None), num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, batch_size=b, shuffle=False, verbose=0)
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _simulate_averaging(model, x, y, workers, batch, window, epochs, momentum, iterate=False,
                        bias_correction=False, rate_factor=1.0, warmup_epochs=0.0):
    """What ModelAveraging should compute, in one process: each worker a model with its own optimizer,
    training at ``rate_factor`` times the model's learning rate, reached linearly from the model's own over
    ``warmup_epochs`` epochs, window by window."""
    n = -(-len(x) // workers)
    replicas = [clone(model) for _ in range(workers)]
    rate = float(model.optimizer.learning_rate)
    trainable = [v.trainable for v in model.weights]
    outer = OuterStep(momentum, 1.0, True, trainable, bias_correction=bias_correction)
    center = [np.array(w) for w in model.get_weights()]
    for epoch in range(epochs):
        steps = -(-n // batch)
        for start in range(0, steps, window):
            done = min(1.0, (epoch + start / steps) / warmup_epochs) if warmup_epochs else 1.0
            for replica in replicas:
                replica.optimizer.learning_rate.assign(rate * (1 + (rate_factor - 1) * done))
            moves = []
            for k, replica in enumerate(replicas):
                replica.set_weights(center)
                xs, ys = x[k * n:(k + 1) * n], y[k * n:(k + 1) * n]
                for s in range(start, min(steps, start + window)):
                    replica.train_on_batch(xs[s * batch:(s + 1) * batch], ys[s * batch:(s + 1) * batch])
                moves.append([np.array(w) - c for w, c in zip(replica.get_weights(), center)])
            outer(center, [np.mean(parts, axis=0) for parts in zip(*moves)])
    return outer.iterate(center) if iterate else center  # what is reported; training goes on from the center


def test_two_worker_averaging_applies_the_outer_step_every_window(spark):
    x, y = blobs(2 * 96, seed=8)  # 96 rows per worker: 6 batches of 16, windows of 4 -> 2 rounds per epoch
    model = mlp(seed=3)
    want = _simulate_averaging(model, x, y, workers=2, batch=16, window=4, epochs=2, momentum=0.5)
    sm = SparkModel(model, strategy="averaging", num_workers=2, seed=0, window=4, learning_rate_scaling=None)
    history = sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert history.parameter_server["commits"] == 2 * 2 * 2  # workers x rounds x epochs
    # the driver's optimizer state is the workers' averaged inner state: 6 Adam steps per epoch each
    assert int(sm.model.optimizer.iterations) == 12


def test_two_worker_averaging_with_a_bias_corrected_momentum_applies_it_every_window(spark):
    x, y = blobs(2 * 96, seed=8)  # 2 rounds per epoch, as above, with the corrected outer momentum
    model = mlp(seed=3)
    want = _simulate_averaging(model, x, y, workers=2, batch=16, window=4, epochs=2, momentum=0.5,
                               bias_correction=True)
    plain = _simulate_averaging(model, x, y, workers=2, batch=16, window=4, epochs=2, momentum=0.5)
    sm = SparkModel(model, strategy=ModelAveraging(window=4, momentum_bias_correction=True, learning_rate_scaling=None),
                    num_workers=2, seed=0)
    sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(want, plain)) > 1e-4  # the correction changes the model


def test_two_worker_averaging_with_many_rounds_reports_the_iterate(spark):
    x, y = blobs(2 * 96, seed=8)  # 6 batches of 16 per worker, windows of 1 -> 6 rounds per epoch
    model = mlp(seed=3)
    want = _simulate_averaging(model, x, y, workers=2, batch=16, window=1, epochs=2, momentum=0.5, iterate=True)
    center = _simulate_averaging(model, x, y, workers=2, batch=16, window=1, epochs=2, momentum=0.5)
    sm = SparkModel(model, strategy="averaging", num_workers=2, seed=0, window=1, learning_rate_scaling=None)
    sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(want, center)) > 1e-4  # the points differ by 10x the tolerance


@pytest.mark.parametrize("way", ["grouped", "jobs"])
@pytest.mark.parametrize("window, iterate", [(4, False), (1, True)], ids=["center", "iterate"])
def test_averaging_with_more_workers_than_slots_trains_and_reports_the_same_model(spark, window, iterate, way,
                                                                                 monkeypatch):
    # 3 workers on local[2]'s 2 slots. "grouped": one task trains two of the workers side by side, in one Spark
    # job; "jobs": each window is a Spark job, as after the cluster lost slots (forced here). With plain SGD the
    # averaged inner state is only a step count, so the rounds must match the one-process simulation exactly,
    # across an epoch boundary: 6 batches per worker make 2 rounds per epoch at window 4 (the center is
    # reported) and 6 at window 1 (the iterate).
    x, y = blobs(3 * 96, seed=9)
    model = mlp(seed=5, optimizer="sgd")
    want = _simulate_averaging(model, x, y, workers=3, batch=16, window=window, epochs=2, momentum=2 / 3,
                               iterate=iterate)
    if way == "jobs":
        _one_job_per_window(monkeypatch)
    sc, group = spark.sparkContext, f"more-workers-{window}-{way}"
    # The outer momentum's rule, which "auto" leaves to the Adam family; plain SGD would get the linear one.
    sm = SparkModel(model, strategy=ModelAveraging(window=window, learning_rate_scaling=None), num_workers=3, seed=0)
    sc.setJobGroup(group, "more workers than slots")
    try:
        history = sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert [r["resumed_at_epoch"] for r in history.restarts] == ([] if way == "grouped" else [1])
    tracker = sc.statusTracker()
    stages = [tracker.getStageInfo(s) for j in tracker.getJobIdsForGroup(group) for s in tracker.getJobInfo(j).stageIds]
    trained = [s.numTasks for s in stages if s is not None]  # numpy rows: packed on the driver, no job
    # Grouped: the whole fit is one job of 2 tasks; otherwise each of the 2 epochs' windows is a job of 3.
    assert trained == ([2] if way == "grouped" else [3] * (2 * -(-6 // window))), trained


@pytest.mark.parametrize("scaling", ["linear", "auto"])
def test_workers_that_scale_their_own_rate_train_at_n_times_it_and_the_model_keeps_the_users(spark, scaling):
    # 2 workers, each at twice Adam's rate (asked for, or the default rule for 2 Adam workers), their moves
    # averaged with no outer momentum, every window, across an epoch boundary; the driver's model ends with
    # the rate it was compiled with.
    x, y = blobs(2 * 96, seed=8)
    model = mlp(seed=3)
    want = _simulate_averaging(model, x, y, workers=2, batch=16, window=4, epochs=2, momentum=0.0, rate_factor=2.0)
    unscaled = _simulate_averaging(model, x, y, workers=2, batch=16, window=4, epochs=2, momentum=0.0)
    sm = SparkModel(model, strategy=ModelAveraging(window=4, learning_rate_scaling=scaling), num_workers=2, seed=0)
    sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(want, unscaled)) > 1e-4  # the rate changes the model
    assert float(sm.model.optimizer.learning_rate) == pytest.approx(0.001)


def _one_job_per_window(monkeypatch):
    """Make model averaging train one Spark job per window, as it goes on after the cluster lost slots."""
    from sparkeras.errors import ClusterCapacityError
    from sparkeras.strategies.distributed import DistributedOptimizer

    def lost(self, job):
        raise ClusterCapacityError("averaging needs 3 task slots at once, but the cluster has had only 2 (test)")

    monkeypatch.setattr(DistributedOptimizer, "fit", lost)


@pytest.mark.parametrize("way", ["grouped", "jobs"])
@pytest.mark.parametrize("scaling", ["linear", "auto"])
def test_workers_scale_their_own_rate_with_more_workers_than_slots_too(spark, scaling, way, monkeypatch):
    # 3 workers on local[2]'s 2 slots (a task trains two side by side, or each window is a Spark job), each
    # worker at 3 times SGD's rate: asked for, or the default rule for SGD.
    if way == "jobs":
        _one_job_per_window(monkeypatch)
    x, y = blobs(3 * 96, seed=9)
    model = mlp(seed=5, optimizer="sgd")
    want = _simulate_averaging(model, x, y, workers=3, batch=16, window=4, epochs=2, momentum=0.0, rate_factor=3.0)
    sm = SparkModel(model, strategy=ModelAveraging(window=4, learning_rate_scaling=scaling), num_workers=3, seed=0)
    sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert float(sm.model.optimizer.learning_rate) == pytest.approx(0.01)


def test_the_warmup_ramps_the_workers_rate_linearly_window_by_window_from_the_models_own():
    strategy = ModelAveraging()
    strategy._ramp = (4, 1.0, 12)  # 4 workers at 4 times the rate, one epoch of warmup, 12 batches per epoch
    assert [strategy.rate_ramp(0, start) for start in (0, 3, 6, 9)] == [0.25, 0.4375, 0.625, 0.8125]
    assert [strategy.rate_ramp(epoch, 0) for epoch in (1, 2)] == [1.0, 1.0]  # a resumed fit does not warm up
    strategy._ramp = (3, 2.0, 10)  # two epochs of warmup: halfway at the second epoch's start
    assert strategy.rate_ramp(1, 0) == pytest.approx((1 + 2 * 0.5) / 3)
    strategy._ramp = (1, 1.0, 10)  # the workers keep the model's rate: nothing to ramp
    assert strategy.rate_ramp(0, 0) == 1.0
    assert ModelAveraging(warmup_epochs=0).warmup_for(4) == 0.0
    assert ModelAveraging(**ModelAveraging(warmup_epochs=2).get_config()).warmup_epochs == 2.0


@pytest.mark.parametrize("value", [-1, "1", True, float("inf")])
def test_a_bad_warmup_is_refused_with_what_it_takes(value):
    with pytest.raises(InputError, match=re.escape(
            f"warmup_epochs must be a number of epochs >= 0 (0: no warmup) or None (the default: one epoch with "
            f"more than 2 workers, where their rate is scaled), got {value!r}.")):
        ModelAveraging(warmup_epochs=value)
    from sparkeras import EASGD

    with pytest.raises(InputError, match=re.escape("warmup_epochs must be a number of epochs >= 0")):
        EASGD(warmup_epochs=value)


@pytest.mark.parametrize("way", ["grouped", "jobs"])
def test_a_warmup_ramps_the_workers_rate_with_more_workers_than_slots_too(spark, way, monkeypatch):
    # 3 workers on local[2]'s 2 slots (a task trains two side by side, or each window is a Spark job); the
    # averaged inner state is only a step count with plain SGD. 6 batches per worker, windows of 2: the first
    # epoch's windows train at 1, 5/3 and 7/3 times SGD's rate, the second's at 3 times. (Adam warms up so by
    # default from 3 workers on.)
    if way == "jobs":
        _one_job_per_window(monkeypatch)
    x, y = blobs(3 * 96, seed=9)
    model = mlp(seed=5, optimizer="sgd")
    want = _simulate_averaging(model, x, y, workers=3, batch=16, window=2, epochs=2, momentum=0.0, rate_factor=3.0,
                               warmup_epochs=1.0)
    cold = _simulate_averaging(model, x, y, workers=3, batch=16, window=2, epochs=2, momentum=0.0, rate_factor=3.0)
    sm = SparkModel(model, strategy=ModelAveraging(window=2, warmup_epochs=1), num_workers=3, seed=0)
    _fits_the_simulated_warmup(sm, x, y, want, cold, rate=0.01)


def _fits_the_simulated_warmup(sm, x, y, want, cold, rate):
    """Fit ``sm`` (2 epochs of batches of 16, in order): it must end at ``want`` (the simulated warmup), which
    differs from ``cold`` (no warmup), and keep the model's ``rate``."""
    sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(want, cold)) > 1e-4  # the warmup changes the model
    assert float(sm.model.optimizer.learning_rate) == pytest.approx(rate)


@pytest.mark.parametrize("rule", ["averaging", "easgd"])
def test_a_warmup_asked_for_ramps_two_workers_rate_in_the_rounds_at_the_server(spark, rule):
    # 2 workers with warmup_epochs=1: twice Adam's rate for averaging (no warmup by default), 3 times for
    # easgd (a quarter epoch by default), reached over the first epoch's 3 windows, in the server's
    # synchronous rounds in one Spark job, across an epoch boundary.
    x, y = blobs(2 * 96, seed=8)
    model = mlp(seed=3)
    simulate = partial(_simulate_averaging, momentum=0.0) if rule == "averaging" else partial(_simulate_easgd,
                                                                                            alpha=0.45)
    run = dict(workers=2, batch=16, window=2, epochs=2, rate_factor=2.0 if rule == "averaging" else 3.0)
    want, cold = simulate(model, x, y, warmup_epochs=1.0, **run), simulate(model, x, y, **run)
    sm = SparkModel(model, strategy=rule, num_workers=2, seed=0, window=2, warmup_epochs=1)
    _fits_the_simulated_warmup(sm, x, y, want, cold, rate=0.001)


def test_plain_averaging_once_per_epoch_is_a_setting(spark):
    x, y = blobs(2 * 96, seed=8)
    model = mlp(seed=3)
    want = _simulate_averaging(model, x, y, workers=2, batch=16, window=6, epochs=1, momentum=0.0)
    sm = SparkModel(model, strategy=ModelAveraging(window="epoch", outer_momentum=0, learning_rate_scaling=None),
                    num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def _batch_norm_model():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(momentum=0.9)])
    model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_batch_norm_momentum_is_raised_to_the_worker_count_in_the_workers_model_only():
    from sparkeras.serialization import ModelSpec

    spec = ModelSpec.from_model(_batch_norm_model())
    paced = spec.with_moving_statistics_for(3)
    assert paced.key != spec.key  # a worker caches the two models apart
    assert [layer.momentum for layer in paced.build()._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)] == [pytest.approx(0.9 ** 3)]
    assert spec.with_moving_statistics_for(1) is spec
    plain = ModelSpec.from_model(mlp())
    assert plain.with_moving_statistics_for(4) is plain  # no BatchNormalization: the cached model is reused


@pytest.mark.parametrize("strategy, workers", [("averaging", 2), (ModelAveraging(window=2), 3), ("allreduce", 2),
                                               ("adag", 1)],
                         ids=["averaging", "averaging-jobs", "allreduce", "adag"])
def test_batch_norm_statistics_forget_per_row_as_in_one_process(spark, strategy, workers):
    # Every row is the same, so each batch's mean is exact and its variance 0: after n updates from
    # (mean 0, variance 1) the moving mean is x (1 - 0.9^n) and the moving variance 0.9^n. model.fit
    # makes n = 10 updates over 80 rows in batches of 8; the workers make 80 / (8 workers) updates
    # each (all-reduce: 5 global batches), which must count as the same 10. ADAG divides the weights' commit by
    # its window, but not the statistics' move.
    rows = 40 * workers
    x = np.tile(np.array([[3.0, -1.0, 5.0]], np.float32), (rows, 1))
    y = np.zeros((rows, 1), np.float32)
    reference = _batch_norm_model()
    reference.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    sm = SparkModel(_batch_norm_model(), strategy=strategy, num_workers=workers, seed=0)
    sm.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    got = next(l for l in sm.model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization))
    want = next(l for l in reference._flatten_layers() if isinstance(l, keras.layers.BatchNormalization))
    np.testing.assert_allclose(np.asarray(want.moving_variance), 0.9 ** (rows // 8), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got.moving_mean), np.asarray(want.moving_mean), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got.moving_variance), np.asarray(want.moving_variance), rtol=1e-4)
    assert got.momentum == 0.9  # the driver's model keeps the user's setting


@pytest.mark.parametrize("optimizer, two_workers, four_workers, eight_workers", [
    (lambda: keras.optimizers.SGD(0.05), 2.0, 4.0, 8.0),
    (lambda: keras.optimizers.Adam(1e-3), 3.0, 5.0, 5.0),
    (lambda: keras.optimizers.RMSprop(1e-3), 3.0, 5.0, 5.0),
    (lambda: keras.optimizers.Adagrad(1e-2), 3.0, 5.0, 5.0),
    (lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)), 1.0, 1.0, 1.0),
    (lambda: keras.optimizers.RMSprop(keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)), 1.0, 1.0, 1.0),
], ids=["sgd", "adam", "rmsprop", "adagrad", "adam-schedule", "rmsprop-schedule"])
def test_elastic_averaging_workers_train_at_a_multiple_of_the_rate_by_the_optimizer_family(
        optimizer, two_workers, four_workers, eight_workers):
    """EASGD's center moves about 1/(N+1) as far per epoch as one process at the user's rate; ``"auto"`` trains
    the workers, synchronous or not, at N times SGD's rate and at ``min(N + 1, 5)`` times an adaptive optimizer's
    (RMSprop and Adagrad too, unlike model averaging), for the center to keep one process' pace, reached over a
    quarter epoch with 2 workers and over the first epoch from 3 on. Schedules stay at the user's rate. Without
    the warmup an adaptive optimizer's factor is ``min(N, 1 + N/2, 3)``."""
    from sparkeras import AEASGD, EAMSGD, EASGD

    strategy = EASGD()
    strategy.check_model(mlp(seed=1, optimizer=optimizer()))
    assert (strategy.rate_factor(2), strategy.rate_factor(4), strategy.rate_factor(8)) == \
        (two_workers, four_workers, eight_workers)
    assert [EASGD().window_for(n) for n in (1, 2, 4, 8, 16)] == [64, 32, 16, 8, 8]  # 64 batches a round, at least 8
    assert AEASGD().window_for(4) == 16 and EASGD(window=5).window_for(4) == 5
    assert EAMSGD().window_for(4) == 32  # dist-keras' at any count: its own SGD was not measured with the rule
    assert EASGD(**EASGD().get_config()).window_for(4) == 16
    assert strategy.worker_learning_rate(0.01, 2) == pytest.approx(0.01 * two_workers)
    assert strategy.rate_factor(1) == 1.0
    off = EASGD(learning_rate_scaling=None)
    off.check_model(mlp(seed=1, optimizer=optimizer()))
    assert off.rate_factor(4) == 1.0
    adaptive = eight_workers == 5.0  # the adaptive optimizers, capped at 5 (SGD: N)
    assert [strategy.warmup_for(n) for n in (2, 3, 8)] == ([0.25, 1.0, 1.0] if adaptive else [0.0] * 3)
    assert strategy.rate_factor(3) == (4.0 if adaptive else 3.0 if two_workers == 2.0 else 1.0)  # N + 1; SGD N
    asynchronous = AEASGD()
    asynchronous.check_model(mlp(seed=1, optimizer=optimizer()))
    assert [(asynchronous.rate_factor(n), asynchronous.warmup_for(n)) for n in (2, 3, 4, 8)] == \
        [(strategy.rate_factor(n), strategy.warmup_for(n)) for n in (2, 3, 4, 8)]
    cold = EASGD(warmup_epochs=0)
    cold.check_model(mlp(seed=1, optimizer=optimizer()))
    assert (cold.rate_factor(2), cold.rate_factor(4), cold.rate_factor(8)) == \
        ((2.0, 3.0, 3.0) if adaptive else (two_workers, four_workers, eight_workers))
    assert EASGD(**strategy.get_config()).learning_rate_scaling == "auto"


def test_elastic_averaging_defaults_to_a_stable_alpha_for_any_worker_count_and_checks_a_given_one():
    from types import SimpleNamespace

    from sparkeras import AEASGD, EAMSGD, EASGD

    for workers, alpha in [(1, 0.9), (2, 0.45), (4, 0.225), (8, 0.1125)]:
        strategy = EASGD()
        strategy.check(SimpleNamespace(num_workers=workers))  # a fit's check sees its job's worker count
        assert strategy.alpha == pytest.approx(alpha)
    assert EASGD(rho=2.0, learning_rate=0.1).alpha == pytest.approx(0.2)
    assert AEASGD().alpha == pytest.approx(0.5) and EAMSGD().alpha == pytest.approx(0.05)  # dist-keras' rho=5
    with pytest.raises(InputError, match=re.escape("easgd with 4 workers moves the center by num_workers * alpha = "
                                                   "2.00 of the workers' distance per round, which overshoots (needs "
                                                   "<= 1); use rho * learning_rate <= 0.250, or leave rho out.")):
        EASGD(rho=5.0).check(SimpleNamespace(num_workers=4))
    with pytest.raises(InputError, match="easgd's learning_rate_scaling must be 'auto', 'linear' or None, got 'sqrt'"):
        EASGD(learning_rate_scaling="sqrt")
    assert "learning_rate_scaling" not in EAMSGD().get_config()  # its workers train with its own SGD
    schedule = keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9))
    with pytest.raises(InputError, match=re.escape("easgd(learning_rate_scaling='linear') scales a constant learning "
                                                   "rate, but the model's optimizer (Adam) follows a schedule")):
        EASGD(learning_rate_scaling="linear").check_model(mlp(seed=1, optimizer=schedule))


def _simulate_easgd(model, x, y, workers, batch, window, epochs, alpha, rate_factor, warmup_epochs=0.0):
    """What synchronous EASGD computes, in one process: each worker keeps its own weights and optimizer, at
    ``rate_factor`` times the model's rate (reached linearly from the model's own over ``warmup_epochs``, window
    by window); every window each moves ``alpha`` of its distance to the center toward it, and the center moves
    by the sum of those steps."""
    n = -(-len(x) // workers)
    replicas = [clone(model) for _ in range(workers)]
    rate = float(model.optimizer.learning_rate)
    center = [np.array(w) for w in model.get_weights()]
    steps = -(-n // batch)
    for epoch in range(epochs):
        for start in range(0, steps, window):
            done = min(1.0, (epoch + start / steps) / warmup_epochs) if warmup_epochs else 1.0
            for replica in replicas:
                replica.optimizer.learning_rate.assign(rate * (1 + (rate_factor - 1) * done))
            pulls = []
            for k, replica in enumerate(replicas):
                xs, ys = x[k * n:(k + 1) * n], y[k * n:(k + 1) * n]
                for s in range(start, min(steps, start + window)):
                    replica.train_on_batch(xs[s * batch:(s + 1) * batch], ys[s * batch:(s + 1) * batch])
                pull = [alpha * (np.array(w) - c) for w, c in zip(replica.get_weights(), center)]
                replica.set_weights([np.array(w) - e for w, e in zip(replica.get_weights(), pull)])
                pulls.append(pull)
            for pull in pulls:
                center = [c + e for c, e in zip(center, pull)]
    return center


def test_two_worker_elastic_averaging_trains_its_workers_at_three_times_adams_rate_after_a_quarter_epoch(spark):
    # 96 rows per worker: 6 batches of 16, windows of 4 -> 2 rounds per epoch, across an epoch boundary. The
    # quarter epoch's warmup (1.5 batches) ends after the first window: it trains at the model's rate, the rest
    # at 3 times it.
    x, y = blobs(2 * 96, seed=8)
    model = mlp(seed=3)
    want = _simulate_easgd(model, x, y, workers=2, batch=16, window=4, epochs=2, alpha=0.45, rate_factor=3.0,
                           warmup_epochs=0.25)
    unscaled = _simulate_easgd(model, x, y, workers=2, batch=16, window=4, epochs=2, alpha=0.45, rate_factor=1.0)
    sm = SparkModel(model, strategy="easgd", num_workers=2, seed=0, window=4)
    sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert max(np.abs(a - b).max() for a, b in zip(want, unscaled)) > 1e-4  # the rate changes the model
    assert float(sm.model.optimizer.learning_rate) == pytest.approx(0.001)  # the model keeps the user's


def test_elastic_averaging_with_more_workers_than_slots_trains_the_model_enough_slots_give(spark):
    # 3 workers on local[2]'s 2 slots: a task trains two of them side by side, and the synchronous rounds are
    # those of 3 tasks (as the one-process simulation computes them), in one Spark job of 2 tasks.
    from sparkeras import EASGD

    x, y = blobs(3 * 96, seed=9)
    model = mlp(seed=5, optimizer="sgd")
    want = _simulate_easgd(model, x, y, workers=3, batch=16, window=4, epochs=2, alpha=0.3, rate_factor=1.0)
    sm = SparkModel(model, strategy=EASGD(window=4, learning_rate_scaling=None), num_workers=3, seed=0)
    sc = spark.sparkContext
    sc.setJobGroup("easgd-more-workers", "more workers than slots")
    try:
        sm.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    for got, expected in zip(sm.model.get_weights(), want):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    tracker = sc.statusTracker()
    jobs = tracker.getJobIdsForGroup("easgd-more-workers")
    assert [tracker.getStageInfo(s).numTasks for j in jobs for s in tracker.getJobInfo(j).stageIds] == [2]


def test_elastic_averaging_pulls_every_64_cluster_batches_by_default(spark):
    """The default window is ``64 / N`` batches: 4 asynchronous workers of 20 batches an epoch commit at batches
    16 and 20, eight commits in all (at dist-keras' 32, four)."""
    x, y = blobs(4 * 160, seed=2)
    sm = SparkModel(mlp(seed=1), strategy="aeasgd", num_workers=4, seed=0)
    history = sm.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert sm.strategy.window == 16
    assert sum(history.epoch_figures[0]["staleness"].values()) == 8  # the server's commits, by staleness


@pytest.mark.parametrize("optimizer, window, factor", [
    (lambda: keras.optimizers.Adam(1e-3), None, 8.0),
    (lambda: keras.optimizers.SGD(0.05), None, 8.0),
    (lambda: keras.optimizers.RMSprop(1e-3), 4, 4.0),
    (lambda: keras.optimizers.Adam(1e-3), 12, 8.0),
    (lambda: keras.optimizers.Adam(1e-3), "epoch", 8.0),
    (lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)), None, 1.0),
], ids=["adam", "sgd", "rmsprop-window-4", "window-12", "epoch", "schedule"])
def test_adag_workers_train_at_the_windows_multiple_of_the_rate_after_a_quarter_epoch(optimizer, window, factor):
    """ADAG's commit is the window's mean update, so at the model's rate its center moves 1/window as far per
    epoch as one process; ``"auto"`` trains the workers at ``min(window, 8)`` times any constant rate, reached
    over a quarter epoch, and leaves a schedule alone. ``learning_rate_scaling=None`` is the published rule."""
    from sparkeras import ADAG

    strategy = ADAG(window=window)
    assert strategy.window == (8 if window is None else window)  # 8 by default, dist-keras' was 12
    strategy.check_model(mlp(seed=1, optimizer=optimizer()))
    assert [strategy.rate_factor(n) for n in (1, 2, 4, 16)] == [factor] * 4  # the window's, whatever the workers
    assert strategy.worker_learning_rate(0.01, 2) == pytest.approx(0.01 * factor)
    assert strategy.warmup_for(2) == (0.25 if factor > 1 else 0.0)
    for options in ({"learning_rate_scaling": None}, {"warmup_epochs": 0}):
        other = ADAG(window=window, **options)
        other.check_model(mlp(seed=1, optimizer=optimizer()))
        assert (other.rate_factor(2), other.warmup_for(2)) == ((1.0, 0.0) if options.get("warmup_epochs") is None
                                                               else (factor, 0.0))
    assert ADAG(**strategy.get_config()).get_config() == strategy.get_config()


@pytest.mark.parametrize("optimizer, factors, warmups", [
    (lambda: keras.optimizers.SGD(0.05), (1.0, 2.0, 4.0), (0.0, 0.0, 0.0)),
    (lambda: keras.optimizers.Adam(1e-3), (1.0, 2.0, 4.0), (0.0, 0.0, 1.0)),
    (lambda: keras.optimizers.RMSprop(1e-3), (1.0, 2.0, 4.0), (0.0, 0.0, 1.0)),
    (lambda: keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.9)), (1.0,) * 3,
     (0.0,) * 3),
], ids=["sgd", "adam", "rmsprop", "adam-schedule"])
def test_dynsgd_workers_train_at_n_times_the_rate_as_its_damping_takes_n_fold(optimizer, factors, warmups):
    """Equally fast workers' commits are ``N - 1`` updates stale, so DynSGD's ``1 / (staleness + 1)`` moves the
    center ``1 / N`` as far per epoch as one process; ``"auto"`` trains the workers at N times any constant
    rate (adaptive optimizers warmed up over an epoch above 2 workers), ``None`` is the published rule."""
    from sparkeras import DynSGD

    strategy = DynSGD()
    strategy.check_model(mlp(seed=1, optimizer=optimizer()))
    assert tuple(strategy.rate_factor(n) for n in (1, 2, 4)) == factors
    assert tuple(strategy.warmup_for(n) for n in (1, 2, 4)) == warmups
    off = DynSGD(learning_rate_scaling=None)
    off.check_model(mlp(seed=1, optimizer=optimizer()))
    assert off.rate_factor(4) == 1.0
    assert DynSGD(**strategy.get_config()).get_config() == strategy.get_config()
    with pytest.raises(InputError, match=re.escape("dynsgd's learning_rate_scaling must be 'auto', 'linear' or None, "
                                                   "got 'sqrt'.")):
        DynSGD(learning_rate_scaling="sqrt")


@pytest.mark.parametrize("name", ["async", "hogwild"])
def test_elephas_modes_damp_stale_commits_above_two_workers_at_dynsgds_rate(name):
    """Elephas adds whole commits however stale: fine with 2 workers, 3.6 points behind on the benchmark CNN with
    4. By default more than 2 workers get DynSGD's rule (``commit / (staleness + 1)``, workers at N times the
    rate, Adam warmed up over an epoch); ``staleness_damping=False`` keeps Elephas' rule, ``True`` damps always."""
    from sparkeras.strategies.distributed import DISTRIBUTED_OPTIMIZERS

    rule = DISTRIBUTED_OPTIMIZERS[name]
    strategy = rule()
    strategy.check_model(mlp(seed=1))  # Adam
    assert strategy.window == 4
    assert [strategy.damps(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert [strategy.rate_factor(n) for n in (1, 2, 3, 4)] == [1.0, 1.0, 3.0, 4.0]
    assert [strategy.warmup_for(n) for n in (2, 4)] == [0.0, 1.0]
    for workers, staleness, moved in ((2, 3, 8.0), (4, 3, 2.0), (4, 0, 8.0)):
        strategy._num_workers = workers  # as record_job sets it before the server starts
        center = [np.zeros(2, np.float32)]
        strategy.apply(center, [np.full(2, 8.0, np.float32)], staleness)
        np.testing.assert_allclose(center[0], [moved, moved])
    elephas = rule(staleness_damping=False)
    elephas.check_model(mlp(seed=1))
    elephas._num_workers = 4
    center = [np.zeros(2, np.float32)]
    elephas.apply(center, [np.full(2, 8.0, np.float32)], 3)
    np.testing.assert_allclose(center[0], [8.0, 8.0])
    assert (elephas.rate_factor(4), elephas.warmup_for(4)) == (1.0, 0.0)
    always = rule(staleness_damping=True, learning_rate_scaling=None)
    always.check_model(mlp(seed=1))
    assert (always.damps(2), always.rate_factor(2)) == (True, 1.0)
    assert rule(**strategy.get_config()).get_config() == strategy.get_config()
    with pytest.raises(InputError, match=re.escape(
            f"{name}'s staleness_damping must be None (the default: damp stale commits with more than 2 workers), "
            "True (always) or False (never: Elephas' rule), got 'yes'.")):
        rule(staleness_damping="yes")


@pytest.mark.parametrize("name", ["dynsgd", "async"])
def test_damped_commits_keep_the_center_at_one_process_pace_when_fresher_than_taking_turns(name):
    """DynSGD's workers at N times the rate match one process only when every commit is N - 1 updates stale;
    fresher commits (workers that do not take turns) take a share that makes up for it, never more than all."""
    from sparkeras.strategies.distributed import DISTRIBUTED_OPTIMIZERS, StalenessMean

    turns = StalenessMean(4, 4.0)
    assert {turns.share(3) for _ in range(200)} == {1.0}  # round-robin: DynSGD's damping exactly
    fresh = StalenessMean(4, 4.0)
    shares = [fresh.share(0) for _ in range(600)]
    assert shares[0] == pytest.approx(1 / (4 * (0.25 + 0.75 / 64)))
    assert shares[-1] == pytest.approx(0.25, rel=1e-3)  # whole commits at 4 times the rate: a quarter of each
    assert all(a > b for a, b in zip(shares, shares[1:200]))
    warm = StalenessMean(4, 4.0, warmup_epochs=1.0, commits_per_epoch=100)  # the workers' rate ramps up
    ramped = [warm.share(0) for _ in range(300)]
    assert ramped[:20] == [1.0] * 20  # the rate still near the model's: DynSGD's damping alone
    np.testing.assert_allclose(ramped[100:], shares[100:300])  # then as without a warmup
    assert StalenessMean(4, 4.0, 1.0, 100, first_epoch=1).share(0) == shares[0]  # a resumed fit's is behind it
    staler = StalenessMean(4, 4.0)
    assert {staler.share(7) for _ in range(100)} == {1.0}  # never scaled up
    unscaled = StalenessMean(4, 1.0)
    assert {unscaled.share(0) for _ in range(100)} == {1.0}  # the model's own rate: the published rule

    rule = DISTRIBUTED_OPTIMIZERS[name]()
    rule.check_model(mlp(seed=1))
    rule._num_workers = 4  # what record_job sets, with the running mean
    rule._staleness = StalenessMean(4, rule.rate_factor(4))
    center = [np.zeros(2, np.float32)]
    for _ in range(64):
        rule.apply(center, [np.full(2, 8.0, np.float32)], 1)  # every commit 1 stale: damped by a half
    mean = StalenessMean(4, 4.0)
    want = sum(8.0 * mean.share(1) / 2 for _ in range(64))
    np.testing.assert_allclose(center[0], [want, want], rtol=1e-5)
    assert 0.7 * 64 * 4.0 < want < 0.8 * 64 * 4.0  # DynSGD's damping alone would add 64 * 4.0


def test_adag_divides_only_the_trainable_weights_move_by_the_window():
    from sparkeras import ADAG

    rule = ADAG()
    local, center = [np.full(2, 13.0, np.float32), np.full(2, 5.0, np.float32)], [np.ones(2, np.float32)] * 2
    np.testing.assert_allclose(rule.commit(local, center, steps=4)[1], [1.0, 1.0])  # all trainable by default
    rule._trainable = (True, False)  # a moving statistic second, as a fit records it
    sent = rule.commit(local, center, steps=4)
    np.testing.assert_allclose(sent[0], [3.0, 3.0])
    np.testing.assert_allclose(sent[1], [4.0, 4.0])


def test_bad_adag_rate_options_are_refused_with_what_they_take():
    from sparkeras import ADAG

    with pytest.raises(InputError, match=re.escape("adag's learning_rate_scaling must be 'auto' or None, got "
                                                   "'linear'.")):
        ADAG(learning_rate_scaling="linear")
    with pytest.raises(InputError, match=re.escape(
            "warmup_epochs must be a number of epochs >= 0 (0: no warmup) or None (the default: a quarter epoch, "
            "where the workers' rate is scaled), got -1.")):
        ADAG(warmup_epochs=-1)


def _simulate_adag(model, x, y, batch, window, epochs, rate_factor, warmup_epochs=0.0):
    """What ADAG computes with one worker, in one process: each window trains at ``rate_factor`` times the
    model's rate (reached linearly from the model's own over ``warmup_epochs``, window by window), the center
    moves by the window's mean update, and the worker goes on from the center with its optimizer state."""
    replica = clone(model)
    rate = float(model.optimizer.learning_rate)
    center = [np.array(w) for w in model.get_weights()]
    steps = -(-len(x) // batch)
    for epoch in range(epochs):
        for start in range(0, steps, window):
            done = min(1.0, (epoch + start / steps) / warmup_epochs) if warmup_epochs else 1.0
            replica.optimizer.learning_rate.assign(rate * (1 + (rate_factor - 1) * done))
            count = min(window, steps - start)
            for s in range(start, start + count):
                replica.train_on_batch(x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch])
            center = [c + (np.array(w) - c) / count for w, c in zip(replica.get_weights(), center)]
            replica.set_weights(center)
    return center


def test_adag_trains_its_worker_at_the_windows_multiple_of_adams_rate_warmed_up(spark):
    # One worker, so no commits race: 12 batches of 16 per epoch, windows of 4 at 4 times Adam's rate, reached
    # over a quarter epoch (the first window at the model's rate, the rest at 4 times it), across an epoch boundary.
    x, y = blobs(192, seed=8)
    model = mlp(seed=3)
    want = _simulate_adag(model, x, y, batch=16, window=4, epochs=2, rate_factor=4.0, warmup_epochs=0.25)
    unscaled = _simulate_adag(model, x, y, batch=16, window=4, epochs=2, rate_factor=1.0)
    sm = SparkModel(model, strategy="adag", num_workers=1, seed=0, window=4)
    _fits_the_simulated_warmup(sm, x, y, want, unscaled, rate=0.001)
