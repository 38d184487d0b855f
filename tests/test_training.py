"""Training, evaluation and prediction with the averaging strategy, on real Spark and Keras."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (assert_same_weights, blobs, clone, mlp, plain_fit_accuracy, score_driver_rows_on_the_workers,
                      tagged_jobs)
from sparkeras import InputError, SparkModel


def test_one_worker_averaging_equals_plain_fit_with_adam(spark):
    x, y = blobs(1000, seed=3)
    model = mlp(seed=5)
    plain = clone(model)
    plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)

    sm = SparkModel(model, strategy="averaging", num_workers=1, seed=0)
    sm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)

    for got, want in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # optimizer state carried across windows: Adam's step count and moments match too
    assert int(sm.model.optimizer.iterations) == int(plain.optimizer.iterations) == 2 * 32
    for got, want in zip(sm.model.optimizer.variables, plain.optimizer.variables):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["averaging", "allreduce", "adag"])
def test_an_optimizer_with_use_ema_ends_the_fit_with_the_average_weights_as_keras_fit_does(spark, strategy, caplog):
    """Keras' ``fit`` ends by putting the optimizer's moving average of the weights in their place; a fit
    that skipped it kept the raw weights. One worker equals plain ``model.fit``. The parameter-server rules
    hold no optimizer state on the driver, so they say the setting has no effect and keep the center."""
    import keras

    x, y = blobs(600, seed=3)
    model = mlp(seed=5, optimizer=keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.9))
    plain = clone(model)
    plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    with caplog.at_level(logging.WARNING, logger="sparkeras"):
        SparkModel(model, strategy=strategy, num_workers=1, seed=0).fit(
            x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    average = [np.asarray(v) for v in model.optimizer.variables if "average" in v.path]
    if strategy == "adag":
        assert [r.getMessage() for r in caplog.records] == [
            "The optimizer's use_ema has no effect with the 'adag' strategy: each worker keeps its own optimizer, "
            "and the parameter server's center weights are the model. Use 'averaging' or 'allreduce' to train "
            "with the moving average of the weights."]
        assert model.get_weights()[0].any() and not average[0].any()  # the center kept; no average to put in
        return
    assert not caplog.records
    for got, want, mean in zip(model.get_weights(), plain.get_weights(), average):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(got, mean)


def test_a_model_compiled_again_without_loss_or_metrics_trains_with_those_keras_keeps(spark):
    """``model.compile(SGD(0.1))`` after a full compile keeps the loss and metrics in Keras (its ``fit`` reports
    them), while the compile config records ``None``: the workers trained without a loss or metrics and the fit
    failed ("workers returned 2 metric variables, the driver has 4")."""
    import keras

    x, y = blobs(600, seed=3)

    def recompiled():
        model = mlp(seed=5)
        model.compile(keras.optimizers.SGD(0.1))
        return model

    want = recompiled().fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0).history
    got = SparkModel(recompiled(), num_workers=1, seed=0).fit(x, y, epochs=2, batch_size=32, shuffle=False,
                                                             verbose=0).history
    assert sorted(got) == sorted(want) == ["accuracy", "loss"]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
    sm = SparkModel(recompiled(), strategy="allreduce", num_workers=2, seed=0)
    assert sm.fit(x, y, epochs=2, batch_size=32, verbose=0).history["accuracy"][-1] > 0.8
    assert sorted(sm.evaluate(x, y)) == ["accuracy", "loss"]


def test_backend_tensors_train_evaluate_and_predict_as_numpy_does(spark):
    """Keras' ``fit`` takes its backend's tensors as it takes numpy; they were refused ("Cannot train on a
    EagerTensor"). A PyTorch tensor that needs its gradient is taken too."""
    import keras
    import torch

    x, y = blobs(400, seed=3)
    w = np.linspace(0.5, 1.5, len(x)).astype("float32")
    tensors = {"x": keras.ops.convert_to_tensor(x), "y": keras.ops.convert_to_tensor(y),
               "sample_weight": torch.tensor(w, requires_grad=True),
               "validation_data": (keras.ops.convert_to_tensor(x[:50]), keras.ops.convert_to_tensor(y[:50]))}
    arrays = {"x": x, "y": y, "sample_weight": w, "validation_data": (x[:50], y[:50])}
    got, want = (SparkModel(mlp(seed=5), num_workers=2, seed=0) for _ in range(2))
    fitted = [sm.fit(**given, epochs=2, batch_size=32, verbose=0).history for sm, given in ((got, tensors),
                                                                                            (want, arrays))]
    assert fitted[0] == fitted[1] and "val_loss" in fitted[0]
    assert got.evaluate(tensors["x"], tensors["y"]) == want.evaluate(x, y)
    np.testing.assert_array_equal(got.predict(tensors["x"]), want.predict(x))


def test_pandas_on_spark_and_arrow_frames_train_evaluate_and_predict_as_their_rows_do(spark):
    """A pandas-on-Spark DataFrame, an Arrow table and a stream of Arrow batches were refused ("Cannot train on
    a DataFrame", naming no module). pandas-on-Spark stays in Spark, and its predictions come back on its index;
    Arrow data is driver-side data, as pandas is, so it trains exactly as the same pandas frame."""
    import pandas as pd
    import pyarrow as pa
    import pyspark.pandas as ps

    x, y = blobs(400, seed=3)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(label=y)
    frame.index = pd.Index(np.arange(len(x))[::-1] * 3 + 7, name="rowid")
    features = [c for c in frame.columns if c != "label"]
    fitted = {}
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for name, data in [("pandas", frame), ("arrow", table), ("stream", table.to_reader(max_chunksize=64))]:
        sm = SparkModel(mlp(seed=5), num_workers=2, seed=0)
        fitted[name] = sm.fit(data, features_col=features, epochs=2, verbose=0, validation_split=0.2).history
    assert fitted["arrow"] == fitted["stream"] == fitted["pandas"] and "val_loss" in fitted["arrow"]
    stream = pa.Table.from_pandas(frame, preserve_index=False).to_reader(max_chunksize=64)
    np.testing.assert_allclose(list(sm.evaluate(stream).values()), list(sm.evaluate(frame).values()), rtol=1e-6)

    in_spark = SparkModel(mlp(seed=5), num_workers=2, seed=0)
    want = in_spark.fit(spark.createDataFrame(frame), features_col=features, epochs=4, verbose=0).history
    distributed = SparkModel(mlp(seed=5), num_workers=2, seed=0)
    assert distributed.fit(ps.from_pandas(frame), features_col=features, epochs=4, verbose=0).history == want
    assert want["accuracy"][-1] > want["accuracy"][0] + 0.3
    want = distributed.model.predict(x, verbose=0)
    np.testing.assert_allclose(list(distributed.evaluate(ps.from_pandas(frame)).values()),
                               list(distributed.evaluate(x, y).values()), rtol=1e-5)
    scored = distributed.predict(ps.from_pandas(frame))
    assert isinstance(scored, ps.DataFrame) and scored.index.name == "rowid"
    local = scored.to_spark(index_col="rowid").toPandas().set_index("rowid").loc[frame.index]
    np.testing.assert_allclose(np.stack(local["prediction"].to_numpy()), want, atol=1e-6)
    np.testing.assert_array_equal(local["label"].to_numpy(), y)


def test_a_fit_in_a_thread_of_the_users_uses_their_session_as_it_is(spark):
    """The active session is per thread, and in a thread of the user's (CrossValidator's pool of parallel fits, a
    ThreadPoolExecutor) there is none: sparkeras then went through Spark's builder, which handed back the running
    session with sparkeras' own options applied to its SQL settings (``spark.sql.shuffle.partitions`` reset)."""
    from concurrent.futures import ThreadPoolExecutor

    x, y = blobs(300, seed=3)
    frame = spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(x, y)], ["features", "label"])
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "5")
    try:
        def fit(*data):
            sm = SparkModel(mlp(seed=5), num_workers=2, seed=0)
            return sm.fit(*data, epochs=1, verbose=0).history, sm.spark

        with ThreadPoolExecutor(1) as pool:
            fitted = [pool.submit(fit, *data).result() for data in ((frame,), (x, y))]
        assert all(session is spark for _, session in fitted)
        assert [len(history["loss"]) for history, _ in fitted] == [1, 1]
        assert spark.conf.get("spark.sql.shuffle.partitions") == "5"
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", before)


def test_a_float64_floatx_trains_in_float64_on_the_workers_too(spark):
    """``keras.config.set_floatx("float64")`` is a global of the driver's process: the workers built the float64
    layers, but their loss trackers and optimizer ran in float32, so the history had float32's precision (2e-7
    from ``model.fit``'s loss) and the weights drifted by 1e-8. The workers now take the driver's floatx."""
    import keras

    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 4))
    y = x @ np.array([0.5, -1.0, 2.0, 0.25]) + rng.normal(scale=0.5, size=600)
    before, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")  # a policy another test set no longer follows floatx
    try:
        def build():
            keras.utils.set_random_seed(2)
            model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                                      keras.layers.Dense(1)])
            model.compile(keras.optimizers.SGD(0.05), "mse", metrics=["mae"])
            return model

        plain = build()
        want = plain.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0).history
        sm = SparkModel(build(), num_workers=1)
        got = sm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0).history
    finally:
        keras.config.set_floatx(before)
        keras.config.set_dtype_policy(policy)
    assert sorted(got) == sorted(want) == ["loss", "mae"]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=3e-8)  # 6e-8 and more before
    assert all(w.dtype == np.float64 for w in sm.model.get_weights())
    assert_same_weights(sm.model, plain, atol=1e-8)


_SCALE = 0.5  # read by the lambda below as a global of this module, as a notebook's lambda reads its own


def test_a_lambda_layer_holding_a_python_lambda_trains_and_scores_as_written(spark):
    """Keras refuses to rebuild a Python lambda in safe mode, so such a model was refused before training;
    the lambdas now travel by value with the model, as a UDF's do, with the globals they read."""
    import keras

    import sparkeras

    x, y = blobs(600, seed=3)

    def build():
        keras.utils.set_random_seed(5)
        inputs = keras.Input((16,))
        scaled = keras.layers.Lambda(lambda t: t * _SCALE, output_shape=lambda shape: shape)(inputs)
        built = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(scaled))
        built.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        return built

    want = build().fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0).history
    got = SparkModel(build(), num_workers=1, seed=0).fit(x, y, epochs=2, batch_size=32, shuffle=False,
                                                         verbose=0).history
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
    model = build()
    sm = SparkModel(model, num_workers=2, seed=0)
    sm.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert sm.evaluate(x, y)["loss"] == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-5)
    want = model.predict(x, verbose=0)
    np.testing.assert_allclose(sm.predict(x), want, atol=1e-6)
    df = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(x)], ["id", "features"])
    scored = np.stack(sm.predict(df).orderBy("id").toPandas()["prediction"].to_numpy())
    np.testing.assert_allclose(scored, want, atol=1e-6)
    sparkeras.register_udf(spark, "lambda_scores", model)
    df.createOrReplaceTempView("lambda_rows")
    rows = spark.sql("SELECT lambda_scores(features) AS s FROM lambda_rows ORDER BY id").collect()
    np.testing.assert_allclose(np.array([r.s for r in rows]), want, atol=1e-6)

    from sparkeras.ml import KerasEstimator

    fitted = KerasEstimator(model=build(), labelCol="label", epochs=1, numWorkers=2).fit(  # trains a copy
        spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(x, y)], ["features", "label"]))
    probabilities = np.stack(fitted.transform(df).orderBy("id").toPandas()["probability"].to_numpy())
    np.testing.assert_allclose(probabilities, fitted.model.predict(x, verbose=0), atol=1e-6)


def _weighted_bce(positive: float):
    """A loss factory, as Keras users write them: the loss is a closure no worker can import by name."""
    import keras

    def loss(y_true, y_pred):
        y_pred = keras.ops.clip(y_pred, 1e-7, 1 - 1e-7)
        return -keras.ops.mean(positive * y_true * keras.ops.log(y_pred) + (1 - y_true) * keras.ops.log(1 - y_pred))
    return loss


def _within(tolerance: float):
    """A metric factory: two of its closures share the name ``close``, so no ``custom_objects`` entry parts them."""
    import keras

    def close(y_true, y_pred):
        return keras.ops.mean(keras.ops.cast(keras.ops.abs(y_true - y_pred) < tolerance, "float32"))
    return close


def test_a_loss_and_metrics_made_by_factories_train_as_written_in_copies_too(spark):
    """Keras saves a loss or metric function by its bare name; a factory's closures (and a script's own
    function) were unknown to every worker, and to Keras' ``clone_model`` that ``KerasEstimator`` copies the
    model with: the fit was refused, and the estimator failed with Keras' "Could not locate function".
    They now travel by value from the live model, each to its own place."""
    import keras

    from sparkeras.ml import KerasEstimator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8)).astype("float32")
    y = ((x[:, 0] + 0.5 * rng.normal(size=600)) > 0.8).astype("float32").reshape(-1, 1)

    def build():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", _weighted_bce(3.0), metrics=[_within(0.5), _within(0.1)])
        return model

    want = build().fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0).history
    got = SparkModel(build(), num_workers=1, seed=0).fit(x, y, epochs=2, batch_size=32, shuffle=False,
                                                         verbose=0).history
    assert sorted(got) == sorted(want) == ["close", "close_1", "loss"]
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5)
    assert want["close"][-1] > want["close_1"][-1] + 0.2  # the two tolerances give two figures

    df = spark.createDataFrame([(row.tolist(), float(v)) for row, v in zip(x, y[:, 0])], ["features", "label"])
    fitted = KerasEstimator(model=build(), epochs=1, numWorkers=2).fit(df)
    reference = build()
    reference.set_weights(fitted.model.get_weights())
    scores = fitted.model.evaluate(x, y, verbose=0, return_dict=True)
    assert scores == pytest.approx(reference.evaluate(x, y, verbose=0, return_dict=True), rel=1e-6)


def _unlabelled_models(seed: int = 5) -> dict:
    """Two models that Keras' ``fit(x)`` trains without labels, compiled without a loss.

    ``"added"`` adds its loss from a layer (an activity regularizer on a
    bottleneck); ``"computed"`` is an autoencoder whose class computes its
    loss from ``x`` (Keras 3's ``compute_loss``), defined and registered as in
    a notebook, so it travels with the model.
    """
    import keras

    class Reconstructing(keras.Model):
        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            return keras.ops.mean(keras.ops.square(x - y_pred))

    Reconstructing.__module__ = "__main__"
    Reconstructing = keras.saving.register_keras_serializable(package="unlabelled")(Reconstructing)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    code = keras.layers.Dense(4, activity_regularizer=keras.regularizers.L2(0.1))(inputs)
    added = keras.Model(inputs, code)
    computed = Reconstructing(inputs, keras.layers.Dense(16)(keras.layers.Dense(4)(inputs)))
    for model in (added, computed):
        model.compile(keras.optimizers.Adam(0.01))
    return {"added": added, "computed": computed}


@pytest.mark.parametrize("kind", ["added", "computed"])
def test_a_model_whose_loss_needs_no_labels_trains_without_them_as_keras_fit_does(spark, kind):
    """``model.fit(x)`` trains a model whose loss reads no labels; sparkeras refused it ("fit needs labels").
    One worker equals plain ``fit``, validated on ``(x_val,)``; two ``allreduce`` workers train from a DataFrame
    with ``label_col=None``, and
    ``evaluate`` equals Keras' on the trained weights."""
    x, _ = blobs(600, seed=3)
    model, plain = _unlabelled_models()[kind], _unlabelled_models()[kind]
    want = plain.fit(x, batch_size=32, epochs=2, shuffle=False, verbose=0, validation_data=(x[:100],)).history
    got = SparkModel(model, num_workers=1, seed=0).fit(x, epochs=2, batch_size=32, shuffle=False, verbose=0,
                                                       validation_data=(x[:100],)).history
    assert sorted(got) == ["loss", "val_loss"]
    for key in got:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5)
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)

    model = _unlabelled_models(seed=6)[kind]
    df = spark.createDataFrame([(row.tolist(),) for row in x], ["features"])
    sm = SparkModel(model, strategy="allreduce", num_workers=2, seed=0)
    losses = sm.fit(df, label_col=None, epochs=3, batch_size=32, verbose=0).history["loss"]
    assert losses[-1] < 0.8 * losses[0]
    scored = sm.evaluate(df, label_col=None)
    assert list(scored) == ["loss"]
    assert scored["loss"] == pytest.approx(model.evaluate(x, verbose=0), rel=1e-4)


def test_a_loss_that_compares_with_labels_asks_for_them(spark):
    x, _ = blobs(100, seed=3)
    sm = SparkModel(mlp(), num_workers=1)
    with pytest.raises(InputError, match=re.escape(
            "fit needs labels: pass y= with numpy features, or label_col= naming the label column.")):
        sm.fit(x, verbose=0)
    with pytest.raises(InputError,
                       match=re.escape("evaluate needs labels: pass y= with numpy features, or label_col=.")):
        sm.evaluate(x)


def test_a_per_class_metric_is_reported_as_keras_reports_it(spark, tmp_path):
    """Keras' ``F1Score`` gives one value per class, and its ``fit`` and ``evaluate`` keep the array; they were
    dropped from the history and from ``evaluate``. They survive a checkpoint and reach a plot (their mean)."""
    import keras

    from sparkeras import plot_history
    from sparkeras.metric_values import flat_numbers
    from sparkeras.storage.checkpoint import Saved, decode, encode

    x, labels = blobs(600, dim=16, classes=3, seed=3)
    y = np.eye(3, dtype="float32")[labels]
    model = mlp(classes=3, seed=5)
    model.compile("adam", "categorical_crossentropy", metrics=["accuracy", keras.metrics.F1Score()])
    sm = SparkModel(model, num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=2, batch_size=32, validation_split=0.2, verbose=0,
                     checkpoint_dir=str(tmp_path / "checkpoint"))
    assert sorted(history.history) == ["accuracy", "f1_score", "loss", "val_accuracy", "val_f1_score", "val_loss"]
    assert [np.shape(v) for v in history.history["val_f1_score"]] == [(3,), (3,)]
    scores = sm.evaluate(x, y)
    want = model.evaluate(x, y, verbose=0, return_dict=True)
    np.testing.assert_allclose(scores["f1_score"], want["f1_score"], atol=1e-5)
    assert scores["f1_score"].shape == (3,) and 0.5 < scores["f1_score"].min()
    again = decode(encode(Saved(2, [], {}, history.history)))
    np.testing.assert_allclose(again.history["val_f1_score"][1], history.history["val_f1_score"][1])
    assert sorted(flat_numbers(scores)) == ["accuracy", "f1_score_0", "f1_score_1", "f1_score_2", "loss"]
    plot_history(history, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_a_scalar_label_column_reaches_a_one_unit_output_in_its_shape(spark):
    """A DataFrame's scalar label column feeding a ``Dense(1)`` output arrives as ``(n, 1)``, as Keras users pass
    ``y`` for such a model. It arrived as ``(n,)``: a binary ``F1Score`` refused it before training, and a loss
    of the user's that subtracts ``y_true - y_pred`` broadcast to ``(n, n)`` and trained on the wrong number.
    One worker equals ``model.fit`` on ``y.reshape(-1, 1)``."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype("float32")
    y = ((x[:, 0] + 0.5 * rng.normal(size=400)) > 0).astype("float32")

    def squared(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred))

    def build():
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile("adam", squared, metrics=[keras.metrics.F1Score(threshold=0.5), "binary_accuracy"])
        return model

    model, plain = build(), build()
    plain.fit(x, y.reshape(-1, 1), batch_size=32, epochs=2, shuffle=False, verbose=0)
    df = spark.createDataFrame([(r.tolist(), float(v)) for r, v in zip(x, y)], ["features", "label"]).coalesce(1)
    sm = SparkModel(model, num_workers=1, seed=0)
    history = sm.fit(df, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    want = plain.evaluate(x, y.reshape(-1, 1), verbose=0, return_dict=True)
    scores = sm.evaluate(df)
    for name in ("loss", "f1_score", "binary_accuracy"):
        np.testing.assert_allclose(scores[name], want[name], atol=1e-5)
    assert np.shape(history.history["f1_score"][-1]) == (1,)


@pytest.mark.parametrize("strategy", ["averaging", "allreduce"])
def test_a_mixed_float16_model_trains_with_its_loss_scale_optimizer(spark, strategy):
    """Under ``mixed_float16`` Keras wraps the optimizer in a ``LossScaleOptimizer``, but only for a model whose
    own policy is mixed, and Keras rebuilds a model from its config with the global policy. The workers
    (global ``float32``) used to build a plain Adam, and every fit failed on the optimizer's variable count.
    One worker equals plain ``model.fit`` under the same policy."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = blobs(600, seed=3)
        model = mlp(seed=5)
        plain = clone(model)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"
    plain.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    sm = SparkModel(model, strategy=strategy, num_workers=1, seed=0)
    sm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    assert [str(w.dtype) for w in sm.model.weights] == ["float32"] * len(sm.model.weights)  # float16 compute only
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert float(sm.model.optimizer.dynamic_scale) == float(plain.optimizer.dynamic_scale)


def test_two_workers_match_plain_fit_accuracy(spark):
    x, y = blobs(12_000, dim=16, noise=2.2, seed=11)
    xt, yt = blobs(4_000, dim=16, noise=2.2, seed=11, sample_seed=99)

    model = mlp(seed=2)
    _, plain_acc = plain_fit_accuracy(model, (x, y), (xt, yt), batch_size=64, epochs=12)

    sm = SparkModel(model, num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=12, batch_size=64, verbose=0)
    acc = sm.evaluate(xt, yt)["accuracy"]
    assert plain_acc > 0.5, "the problem must be learnable for this test to mean anything"
    assert abs(acc - plain_acc) <= 0.01, (acc, plain_acc)
    assert len(history.history["loss"]) == 12
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_history_has_train_and_validation_metrics_and_callbacks_run(spark):
    import keras

    x, y = blobs(2000, seed=4)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, dict(logs)))

    sm = SparkModel(mlp(), num_workers=2, seed=0)
    history = sm.fit(x, y, epochs=3, batch_size=32, validation_split=0.25, callbacks=[Record()], verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert [e for e, _ in seen] == [0, 1, 2]
    assert seen[-1][1]["val_accuracy"] == pytest.approx(history.history["val_accuracy"][-1])
    # the driver's model holds the epoch's weights when callbacks run: validation loss is reproducible
    val_x, val_y = x[1500:], y[1500:]
    direct = sm.model.evaluate(val_x, val_y, verbose=0, return_dict=True)
    assert direct["loss"] == pytest.approx(history.history["val_loss"][-1], abs=1e-5)


def _fit_failing_in_a_callback(x, y) -> None:
    """A two-worker fit whose callback raises at the end of its first epoch; the error reaches the caller."""
    import keras

    class Fails(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        SparkModel(mlp(), num_workers=2, seed=0).fit(x, y, epochs=1, batch_size=32, callbacks=[Fails()], verbose=0)


def test_rdd_functions_and_a_map_in_arrow_share_one_pool_of_python_workers(spark):
    """Spark keys its pools of Python workers by their environment, and a ``mapInArrow``'s executor adds
    ``SPARK_SIMPLIFIED_TRACEBACK=1`` to it when its tasks carry none of the session's SQL settings, as when a
    fit packs the frame. Skipping undecodable images is one: it started a second daemon that imported
    TensorFlow again, 2.2 s of an image fit on ``local[2]``. Every worker now gets the variable, so both kinds
    of function run in the workers of one daemon."""
    import pyarrow as pa

    def daemon(_):
        yield os.getppid()

    def daemon_of_batches(batches):
        for _ in batches:
            yield pa.RecordBatch.from_pydict({"daemon": [os.getppid()]})

    from sparkeras.data.arrow import arrow_batches

    rdd = set(spark.sparkContext.parallelize(range(4), 2).mapPartitions(daemon).collect())
    frame = spark.range(4).repartition(2).mapInArrow(daemon_of_batches, "daemon long")
    # Read as a fit packs a frame: an RDD job, whose tasks carry none of the session's SQL settings.
    messages, read = arrow_batches(frame)
    sql = {d for batch in messages.mapPartitions(lambda it: [b.column("daemon").to_pylist() for b in read(it)])
           .collect() for d in batch}
    assert len(rdd) == 1 and sql == rdd, (rdd, sql)


def test_a_session_sparkeras_starts_takes_the_master_sparks_own_configuration_names(monkeypatch, tmp_path):
    """As pyspark's builder does: ``--master`` in ``PYSPARK_SUBMIT_ARGS``, else ``spark.master`` in
    ``spark-defaults.conf``; a script on a cluster's edge node ran on ``local[*]`` before. The last check starts a
    session that way in a fresh process."""
    import subprocess
    import sys

    from sparkeras.session import configured_master

    for name in ("PYSPARK_SUBMIT_ARGS", "SPARK_CONF_DIR", "SPARK_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert configured_master() is None
    (tmp_path / "spark-defaults.conf").write_text("# an edge node's defaults\nspark.master  yarn\n"
                                                  "spark.executor.cores 2\n")
    monkeypatch.setenv("SPARK_HOME", "/nowhere")
    assert configured_master() is None
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))
    assert configured_master() == "yarn"
    for args, master in [("--master spark://h:7077 pyspark-shell", "spark://h:7077"),
                         ("--master=local[3] pyspark-shell", "local[3]"),
                         ("--conf spark.master=k8s://https://k:443 pyspark-shell", "k8s://https://k:443"),
                         ("--driver-memory 2g pyspark-shell", "yarn")]:
        monkeypatch.setenv("PYSPARK_SUBMIT_ARGS", args)
        assert configured_master() == master, args
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONF_DIR", "SPARK_HOME")}
    env.update(PYSPARK_SUBMIT_ARGS="--master local[1] pyspark-shell", PYSPARK_PYTHON=sys.executable)
    done = subprocess.run([sys.executable, "-c", "import sparkeras; print('MASTER', sparkeras.get_spark().sparkContext."
                                                 "master)"], capture_output=True, text=True, timeout=180, env=env)
    assert "MASTER local[1]" in done.stdout, (done.stdout, done.stderr[-3000:])


def test_a_local_session_forks_workers_from_sparkeras_daemon_only_where_that_is_safe(spark, tmp_path):
    """A local session the user started switches to sparkeras' daemon (the Elephas README test checks it end to
    end). The conditions are checked on the suite's session by setting its live keys and putting them back, with
    no job between: a daemon of the user's own, the daemon turned off, or workers on another interpreter keep
    their settings."""
    from sparkeras.session import DAEMON_KEY, adopt_preloaded_workers, workers_preloaded

    sc = spark.sparkContext
    conf, ours, python = sc._conf, sc._conf.get(DAEMON_KEY), sc.pythonExec
    assert ours == "sparkeras.worker.daemon" and adopt_preloaded_workers(spark)
    try:
        conf.set(DAEMON_KEY, "my_company.daemon")
        assert not adopt_preloaded_workers(spark) and conf.get(DAEMON_KEY) == "my_company.daemon"
        conf.set(DAEMON_KEY, "pyspark.daemon")
        sc.pythonExec = "/opt/other/bin/python3"
        assert not adopt_preloaded_workers(spark) and not workers_preloaded(spark)
        sc.pythonExec = python
        conf.set("spark.python.use.daemon", "false")
        assert not adopt_preloaded_workers(spark) and conf.get(DAEMON_KEY) == "pyspark.daemon"
        conf._jconf.remove("spark.python.use.daemon")
        assert adopt_preloaded_workers(spark) and conf.get(DAEMON_KEY) == ours and workers_preloaded(spark)
    finally:
        sc.pythonExec = python
        conf.set(DAEMON_KEY, ours)
        conf._jconf.remove("spark.python.use.daemon")
    # A link to this interpreter, or a wrapper that runs it (as a pyenv shim or a notebook's "python3" does), is it.
    from sparkeras.session import _runs_this_interpreter

    (tmp_path / "link").symlink_to(sys.executable)
    (tmp_path / "shim").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (tmp_path / "shim").chmod(0o755)
    (tmp_path / "other").write_text("#!/bin/sh\nexec /bin/true\n")
    (tmp_path / "other").chmod(0o755)
    assert _runs_this_interpreter(str(tmp_path / "link")) and _runs_this_interpreter(str(tmp_path / "shim"))
    assert not _runs_this_interpreter(str(tmp_path / "other"))


USER_SESSION_SCRIPT = """
import json, os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.sql import SparkSession

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("OFF")
sc = spark.sparkContext
import sparkeras  # the session exists: its workers start now

sc._sparkeras_start_workers.join(120)


def parent(_):
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        command = f.read().decode().split("\\0")
    return command[command.index("-m") + 1], "tensorflow" in sys.modules  # the daemon's module


workers = sc.parallelize(range(2), 2).map(parent).collect()
spark.stop()

spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
deadline = time.monotonic() + 10  # a session started after the import: its workers start as it starts
while not hasattr(spark.sparkContext, "_sparkeras_start_workers") and time.monotonic() < deadline:
    time.sleep(0.05)
started = hasattr(spark.sparkContext, "_sparkeras_start_workers")
spark.sparkContext._sparkeras_start_workers.join(120)
later = spark.sparkContext.parallelize(range(1), 1).map(parent).collect()
again = sparkeras.session.start_python_workers(spark)  # what the first SparkModel calls: they are started
print(json.dumps({"workers": sorted(set(workers)), "later": later, "started": started, "again": again}))
spark.stop()
"""


IMPORT_FIRST_SCRIPT = """
import json, os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
import sparkeras  # before pyspark, which it does not import

imported = "pyspark" in sys.modules
from pyspark.sql import SparkSession

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
spark.sparkContext.setLogLevel("OFF")
deadline = time.monotonic() + 10
while not hasattr(spark.sparkContext, "_sparkeras_start_workers") and time.monotonic() < deadline:
    time.sleep(0.05)
spark.sparkContext._sparkeras_start_workers.join(120)


def parent(_):
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        command = f.read().decode().split("\\0")
    return command[command.index("-m") + 1], "tensorflow" in sys.modules


print(json.dumps({"imported": imported, "workers": sorted(set(spark.sparkContext.parallelize(range(2), 2)
                                                               .map(parent).collect()))}))
spark.stop()
"""


def _script_report(tmp_path, text: str) -> dict:
    """Run ``text`` as a script in a fresh process; the JSON object of its last line."""
    script = tmp_path / "script.py"
    script.write_text(text)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYSPARK_PYTHON=sys.executable), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.own_processes
def test_a_script_that_imports_sparkeras_before_pyspark_gets_its_sessions_workers_started_as_it_starts(tmp_path):
    """``import sparkeras`` leaves pyspark unimported (the CLI checks its flags first), and still sees a session
    the script builds afterwards: its workers start as it starts, forked from sparkeras' daemon."""
    report = _script_report(tmp_path, IMPORT_FIRST_SCRIPT)
    assert report == {"imported": False, "workers": [["sparkeras.worker.daemon", True]]}, report


@pytest.mark.own_processes
def test_a_session_the_user_started_gets_its_python_workers_started_when_sparkeras_first_sees_it(tmp_path):
    """A script's own local session, then ``import sparkeras``: its Python workers start in the background at once,
    forked from sparkeras' daemon (TensorFlow already imported), so the first fit does not wait for the import. A
    session started after the import gets them as it starts, not when the first ``SparkModel`` is made (just before
    the fit, which then waited for the import)."""
    report = _script_report(tmp_path, USER_SESSION_SCRIPT)
    assert report == {"workers": [["sparkeras.worker.daemon", True]], "later": [["sparkeras.worker.daemon", True]],
                      "started": True, "again": None}, report


def test_a_local_master_trains_with_one_default_worker_per_core_not_per_slot(spark):
    """``local[N]`` above the machine's cores (Elephas' examples start ``local[8]``) shares those cores, so a fit
    without ``num_workers`` takes one worker per core: the cores are narrowed to one for the driver's thread."""
    from sparkeras.barrier import worker_slots
    from sparkeras.session import local_slots, machine_cores

    x, y = blobs(400, dim=16, classes=10, seed=3)
    cores = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cores)})
        assert machine_cores() == 1 and spark.sparkContext.defaultParallelism == 2
        assert local_slots(spark.sparkContext) == 1 and worker_slots(spark.sparkContext) == 1
        history = SparkModel(mlp()).fit(x, y, epochs=1, verbose=0)
        assert history.params["num_workers"] == 1 and list(history.epoch_figures[0]["workers"]) == [0]
        history = SparkModel(mlp(), num_workers=2).fit(x, y, epochs=1, verbose=0)  # asked for: as asked
        assert history.params["num_workers"] == 2
    finally:
        os.sched_setaffinity(0, cores)
    if len(cores) >= 2:
        assert SparkModel(mlp()).fit(x, y, epochs=1, verbose=0).params["num_workers"] == 2


def test_sparkeras_jobs_start_their_tasks_without_delay_scheduling_and_the_sessions_waits_come_back(spark):
    """A fit's tasks all run at once, but Spark holds a task back for up to ``spark.locality.wait`` (3 s) per
    locality level while the executor caching its packed block is busy: a cold fit's first epoch on a
    standalone cluster of two 1-core workers took 7.0 s instead of 0.3 s. The waits are 0 while sparkeras'
    jobs run, and the session's own come back after, after a failed fit too, and only when the last of two
    overlapping calls ends; keys the session never set are unset again."""
    import keras

    from sparkeras.session import LOCALITY_WAITS, _restore_locality_waits, running_own_jobs

    conf = spark.sparkContext._conf  # the running context's SparkConf, which the scheduler reads
    x, y = blobs(600, seed=4)
    seen = []

    class Waits(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append({key: conf.get(key) for key in LOCALITY_WAITS})

    users = {key: conf.get(key) for key in LOCALITY_WAITS}
    try:
        conf.set("spark.locality.wait", "5s")
        conf.set("spark.locality.wait.node", "7s")
        for key in ("spark.locality.wait.process", "spark.locality.wait.rack"):
            conf._jconf.remove(key)
        session = {"spark.locality.wait": "5s", "spark.locality.wait.process": None,
                   "spark.locality.wait.node": "7s", "spark.locality.wait.rack": None}
        SparkModel(mlp(), num_workers=2, seed=0).fit(x, y, epochs=2, batch_size=32, callbacks=[Waits()], verbose=0)
        assert seen == [dict.fromkeys(LOCALITY_WAITS, "0")] * 2
        assert {key: conf.get(key) for key in LOCALITY_WAITS} == session

        _fit_failing_in_a_callback(x, y)
        assert {key: conf.get(key) for key in LOCALITY_WAITS} == session

        with running_own_jobs(spark):
            with running_own_jobs(spark):
                assert conf.get("spark.locality.wait.node") == "0"
            assert conf.get("spark.locality.wait.node") == "0"  # the outer call still runs
        assert {key: conf.get(key) for key in LOCALITY_WAITS} == session
    finally:
        _restore_locality_waits((conf, users))


def test_full_collections_wait_while_a_fit_runs_and_the_thresholds_come_back(spark):
    """A full garbage collection holds the driver's interpreter for 0.3-0.4 s, idling every worker; during a fit
    only young collections run. The user's own thresholds come back after the fit, after a failed one too, and
    only when the last of two overlapping fits ends."""
    import gc

    import keras

    from sparkeras.training import FullCollectionsDeferred

    x, y = blobs(600, seed=4)
    seen = []

    class Thresholds(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(gc.get_threshold())

    users = gc.get_threshold()
    try:
        gc.set_threshold(500, 7, 9)
        SparkModel(mlp(), num_workers=2, seed=0).fit(x, y, epochs=2, batch_size=32, callbacks=[Thresholds()],
                                                     verbose=0)
        assert seen == [(500, 7, FullCollectionsDeferred.OUT_OF_REACH)] * 2
        assert gc.get_threshold() == (500, 7, 9)

        _fit_failing_in_a_callback(x, y)
        assert gc.get_threshold() == (500, 7, 9)

        with FullCollectionsDeferred():
            with FullCollectionsDeferred():
                assert gc.get_threshold() == (500, 7, FullCollectionsDeferred.OUT_OF_REACH)
            assert gc.get_threshold() == (500, 7, FullCollectionsDeferred.OUT_OF_REACH)
        assert gc.get_threshold() == (500, 7, 9)
    finally:
        gc.set_threshold(*users)


@pytest.mark.parametrize("strategy", ["averaging", "async"])
def test_small_validation_data_is_scored_on_the_driver_as_the_workers_would(spark, strategy, monkeypatch):
    """Small validation data is read once and scored on the driver: the same figures, and the whole fit in one
    Spark job, synchronous or not; above the size limit the workers score it, as before."""
    from sparkeras.training import DriverValidation

    x, y = blobs(1200, seed=5)
    val = (x[900:], y[900:])
    sc = spark.sparkContext

    def fit(group, validation=val):
        sc.setJobGroup(group, "validation test")
        try:
            sm = SparkModel(mlp(seed=3), strategy=strategy, num_workers=2, seed=0)
            history = sm.fit(x[:900], y[:900], epochs=4, batch_size=32, verbose=0, validation_data=validation)
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)
        direct = sm.model.evaluate(*val, verbose=0, return_dict=True)  # the model of the last epoch
        return history.history, direct, len(sc.statusTracker().getJobIdsForGroup(group))

    driver, driver_direct, driver_jobs = fit(f"driver-{strategy}")
    if strategy == "averaging":  # Spark rows are packed by a job and read back by another
        frame = spark.createDataFrame([(r.tolist(), int(label)) for r, label in zip(*val)],
                                      "features array<float>, label long")
        from_spark, _, spark_jobs = fit("driver-frame", frame)
        assert from_spark["val_loss"] == pytest.approx(driver["val_loss"], abs=1e-5)
        assert spark_jobs == 3, spark_jobs
    monkeypatch.setattr(DriverValidation, "MAX_BYTES", 0)
    workers, workers_direct, worker_jobs = fit(f"workers-{strategy}")
    for history, direct in ((driver, driver_direct), (workers, workers_direct)):
        assert history["val_loss"][-1] == pytest.approx(direct["loss"], abs=1e-5)
        assert history["val_accuracy"][-1] == pytest.approx(direct["accuracy"], abs=1e-6)
    if strategy == "averaging":  # synchronous rounds: the same model both times
        assert driver["val_loss"] == pytest.approx(workers["val_loss"], abs=1e-5)
    # The caller's job group holds every job of the fit. On the driver: one training job (the numpy validation
    # rows are the driver's already). By the workers, per epoch: a training job, a validation job, and for a rule
    # that reports its center a job scoring it on the training data.
    assert (driver_jobs, worker_jobs) == (1, {"averaging": 8, "async": 12}[strategy])


def test_averaging_trains_every_epoch_in_one_spark_job_and_the_same_model(spark, monkeypatch):
    """With nothing between epochs that needs a Spark job (validation scored on the driver), model averaging
    runs the whole fit as one job whose tasks wait at each epoch's end for the driver's callbacks. It trains
    the model one job per epoch trains, a learning rate set by a callback included; an early stop ends it."""
    import keras

    from sparkeras.strategies import epochs as epoch_jobs
    from sparkeras.training import DriverValidation

    x, y = blobs(1200, seed=5)
    val = (x[900:], y[900:])

    def fit(epochs=5, stop=None):
        halve = keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate / 2 if epoch == 2 else rate)
        sm = SparkModel(mlp(seed=3), strategy="averaging", num_workers=2, seed=0)
        first = next(epoch_jobs._tags)  # the training jobs run under tags numbered after it
        history = sm.fit(x[:900], y[:900], epochs=epochs, batch_size=32, verbose=0, validation_data=val,
                         callbacks=[halve] + ([stop] if stop else []))
        last = next(epoch_jobs._tags)
        training = sum(len(tagged_jobs(spark, f"sparkeras-averaging-{k}")) for k in range(first + 1, last))
        return sm, history.history, training

    one, one_history, one_jobs = fit()
    assert one_jobs == 1
    assert float(one.model.optimizer.learning_rate) == pytest.approx(0.0005)
    monkeypatch.setattr(DriverValidation, "MAX_BYTES", 0)  # validation jobs between epochs: a job per epoch
    each, each_history, each_jobs = fit()
    assert each_jobs == 5
    for got, want in zip(one.model.get_weights(), each.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert one_history["loss"] == pytest.approx(each_history["loss"], abs=1e-6)
    assert one_history["val_loss"] == pytest.approx(each_history["val_loss"], abs=1e-5)

    monkeypatch.setattr(DriverValidation, "MAX_BYTES", 4 * 2**20)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    stopped, stopped_history, stopped_jobs = fit(epochs=10, stop=stop)
    assert len(stopped_history["loss"]) == 2 and stopped_jobs == 1
    assert stopped_history["loss"] == pytest.approx(one_history["loss"][:2], abs=1e-6)


def test_an_asynchronous_fit_is_one_spark_job_when_its_tasks_can_run_at_once(spark):
    """An asynchronous rule trains the whole fit in one job too (its tasks wait at each epoch's end for the
    driver), when the cluster runs all its workers at once; with more workers than task slots (3 on
    ``local[2]``) the tasks take turns, one job per epoch. Both learn, and a callback's rate reaches them."""
    import keras

    from sparkeras.strategies import epochs as epoch_jobs

    x, y = blobs(1200, seed=5)

    def fit(workers):
        halve = keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate / 2 if epoch == 2 else rate)
        sm = SparkModel(mlp(seed=3), strategy="async", num_workers=workers, seed=0)
        first = next(epoch_jobs._tags)
        history = sm.fit(x[:900], y[:900], epochs=4, batch_size=32, verbose=0, validation_data=(x[900:], y[900:]),
                         callbacks=[halve])
        last = next(epoch_jobs._tags)
        training = sum(len(tagged_jobs(spark, f"sparkeras-async-{k}")) for k in range(first + 1, last))
        return sm, history.history, training

    for workers, want_jobs in ((2, 1), (3, 4)):
        sm, history, training = fit(workers)
        assert training == want_jobs, workers
        # 3 workers: the server damped stale commits and the workers trained at 3 times the rate (async's rule)
        assert (sm.strategy.damps(sm.strategy._num_workers), sm.strategy._ramp[0]) == (
            (True, 3.0) if workers == 3 else (False, 1.0))
        staleness = sm.strategy._staleness  # the fit's running damping: moved by the commits only where damped
        assert (staleness.rate_factor, staleness.mean != 1 / workers) == (
            (3.0, True) if workers == 3 else (1.0, False))
        assert len(history["loss"]) == 4 and history["val_accuracy"][-1] > 0.6, history  # chance: 0.1
        assert float(sm.model.optimizer.learning_rate) == pytest.approx(0.0005)
        assert history["loss"][-1] == pytest.approx(sm.evaluate(x[:900], y[:900])["loss"], abs=1e-5)


def test_early_stopping_stops_the_fit(spark):
    import keras

    x, y = blobs(1000, seed=4)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    history = SparkModel(mlp(), num_workers=2, seed=0).fit(x, y, epochs=10, verbose=0, callbacks=[stop])
    assert len(history.history["loss"]) == 2


def test_early_stopping_restores_the_best_weights_and_the_saved_model_has_them(spark, tmp_path):
    import keras

    x, y = blobs(300, noise=3.0, seed=4)
    xv, yv = blobs(300, noise=3.0, seed=4, sample_seed=9)
    stop = keras.callbacks.EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    sm = SparkModel(mlp(seed=2, optimizer=keras.optimizers.Adam(0.05)), num_workers=2, seed=0)
    history = sm.fit(x, y, validation_data=(xv, yv), epochs=30, verbose=0, callbacks=[stop])
    losses = history.history["val_loss"]
    assert len(losses) < 30 and min(losses) < losses[-1]  # it stopped after validation got worse
    assert sm.evaluate(xv, yv)["loss"] == pytest.approx(min(losses), rel=1e-4)
    sm.save(str(tmp_path / "best.keras"))
    saved = keras.models.load_model(str(tmp_path / "best.keras"))
    assert saved.evaluate(xv, yv, verbose=0, return_dict=True)["loss"] == pytest.approx(min(losses), rel=1e-4)


def _normalized_model(x, seed=3):
    """A tabular model whose first layers are an adapted Normalization and Discretization, as Keras' guides build."""
    import keras

    keras.utils.set_random_seed(seed)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    bins = keras.layers.Discretization(num_bins=4, output_mode="one_hot")
    bins.adapt(x[:, :1])
    inputs = keras.Input((x.shape[1],))
    hidden = keras.layers.Concatenate()([norm(inputs), bins(inputs[:, :1])])
    hidden = keras.layers.Dense(16, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("strategy", ["averaging", "allreduce"])
def test_adapted_preprocessing_layers_work_on_the_workers_as_on_the_driver(spark, strategy):
    """A worker sets the driver's variables on a model rebuilt from its config; the layers must use them."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(480, 5)) * [1, 10, 100, 0.1, 5] + [0, 50, -300, 1, 2]).astype(np.float32)
    y = ((x[:, 0] + x[:, 1] / 10 - (x[:, 2] + 300) / 100) > 0).astype(np.int64)
    workers = 1 if strategy == "averaging" else 2  # one averaging worker trains exactly as model.fit
    sm = SparkModel(_normalized_model(x), strategy=strategy, num_workers=workers, seed=0)
    history = sm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    if strategy == "averaging":
        plain = _normalized_model(x)
        want = plain.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
        assert history.history["loss"] == pytest.approx(want.history["loss"], abs=1e-5)  # 0.7, not 40 or more
        for got, expected in zip(sm.model.get_weights(), plain.get_weights()):
            np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    on_workers = sm.evaluate(x, y)
    on_driver = sm.model.evaluate(x, y, verbose=0, return_dict=True)
    assert on_workers["loss"] == pytest.approx(on_driver["loss"], rel=1e-4)
    assert on_workers["accuracy"] == pytest.approx(on_driver["accuracy"], abs=1e-6)
    frame = spark.createDataFrame([(row.tolist(),) for row in x], "features ARRAY<FLOAT>")
    predicted = sm.predict(frame).select("prediction").collect()
    np.testing.assert_allclose([r.prediction for r in predicted], sm.model.predict(x, verbose=0), atol=1e-5)


def test_an_adapted_integer_lookup_reaches_the_workers_with_its_vocabulary(spark):
    """The vocabulary of an adapted lookup is an asset, not config or variables; workers failed without it."""
    import keras

    rng = np.random.default_rng(1)
    ids = rng.choice([3, 7, 11, 42, 1000, 5000], size=(400, 1)).astype(np.int64)
    y = np.isin(ids[:, 0], [7, 42, 5000]).astype(np.int64)
    keras.utils.set_random_seed(2)
    lookup = keras.layers.IntegerLookup(output_mode="one_hot")
    lookup.adapt(ids)
    inputs = keras.Input((1,), dtype="int64")
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(lookup(inputs)))
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    sm = SparkModel(model, num_workers=2, seed=0)
    sm.fit(ids, y, epochs=3, batch_size=16, verbose=0)
    on_workers = sm.evaluate(ids, y)
    on_driver = sm.model.evaluate(ids, y, verbose=0, return_dict=True)
    assert on_workers["accuracy"] == on_driver["accuracy"] == 1.0
    assert on_workers["loss"] == pytest.approx(on_driver["loss"], rel=1e-4)


def test_evaluate_matches_keras_evaluate(spark):
    x, y = blobs(3000, seed=8)
    sm = SparkModel(mlp(seed=9), num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, verbose=0)
    got = sm.evaluate(x, y, batch_size=50)
    want = sm.model.evaluate(x, y, batch_size=50, verbose=0, return_dict=True)
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-5)


def test_predict_numpy_keeps_input_order(spark):
    x, _ = blobs(2501, seed=1)
    sm = SparkModel(mlp(seed=3), num_workers=2)
    got = sm.predict(x)
    np.testing.assert_allclose(got, sm.model.predict(x, verbose=0), atol=1e-6)


def test_predict_dataframe_keeps_every_column(spark):
    from pyspark.sql import types as T

    x, y = blobs(300, seed=1)
    rows = [(i, f"row{i}", x[i].tolist(), int(y[i])) for i in range(len(x))]
    df = spark.createDataFrame(rows, "id INT, name STRING, features ARRAY<FLOAT>, label LONG").repartition(3)
    sm = SparkModel(mlp(seed=3), num_workers=2)
    out = sm.predict(df)
    assert out.columns == ["id", "name", "features", "label", "prediction"]
    assert out.schema["prediction"].dataType == T.ArrayType(T.FloatType(), False)
    got = {r["id"]: (r["name"], np.array(r["prediction"])) for r in out.collect()}
    assert len(got) == 300
    want = sm.model.predict(x, verbose=0)
    for i in (0, 17, 299):
        assert got[i][0] == f"row{i}"
        np.testing.assert_allclose(got[i][1], want[i], atol=1e-5)


def test_training_on_a_dataframe_never_collects_it(spark, monkeypatch):
    x, y = blobs(4000, seed=6)
    df = spark.createDataFrame(
        [(x[i].tolist(), int(y[i])) for i in range(len(x))], "features ARRAY<DOUBLE>, label INT").repartition(4)
    DataFrame = type(df)  # the concrete class (pyspark.sql.classic in Spark 4)

    def forbid(name):
        original = getattr(DataFrame, name)

        def guarded(self, *args, **kwargs):
            if "features" in self.columns:
                raise AssertionError(f"DataFrame.{name} pulled the training set onto the driver")
            return original(self, *args, **kwargs)
        monkeypatch.setattr(DataFrame, name, guarded)

    for name in ("collect", "toPandas", "toLocalIterator", "take", "head", "first", "tail", "toArrow"):
        if hasattr(DataFrame, name):
            forbid(name)
    with pytest.raises(AssertionError):
        df.collect()  # the guard works
    sm = SparkModel(mlp(seed=2), num_workers=2, seed=0)
    history = sm.fit(df, epochs=3, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.8


def test_vector_column_multiple_columns_parquet_and_rdd(spark, tmp_path, monkeypatch):
    """The Parquet path is relative to Python's working folder, which a script may change and the JVM's does not
    follow."""
    from pyspark.ml.feature import VectorAssembler

    x, y = blobs(1200, dim=4, classes=3, seed=2)
    pdf_rows = [tuple(float(v) for v in x[i]) + (int(y[i]),) for i in range(len(x))]
    df = spark.createDataFrame(pdf_rows, "a DOUBLE, b DOUBLE, c DOUBLE, d DOUBLE, label INT")
    vec = VectorAssembler(inputCols=["a", "b", "c", "d"], outputCol="features").transform(df)
    path = str(tmp_path / "data.parquet")
    vec.write.parquet(path)
    rdd = spark.sparkContext.parallelize([(x[i], int(y[i])) for i in range(len(x))], 3)
    monkeypatch.chdir(tmp_path)

    results = {}
    for name, data, features in [("vector", vec, "features"), ("columns", df, ["a", "b", "c", "d"]),
                                 ("parquet", "data.parquet", "features"), ("rdd", rdd, "features")]:
        sm = SparkModel(mlp(dim=4, classes=3, seed=3), num_workers=2, seed=0)
        sm.fit(data, epochs=4, batch_size=32, features_col=features, verbose=0)
        results[name] = sm.evaluate(x, y)["accuracy"]
    assert min(results.values()) > 0.85, results


def test_a_sequential_without_an_input_is_built_for_the_datas_rows(spark):
    """As Keras' fit builds it from the first batch: numpy keeps its row shape, a Vector has its size."""
    import keras
    from pyspark.ml.linalg import Vectors

    def unbuilt(*first):
        keras.utils.set_random_seed(4)
        model = keras.Sequential([*first, keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
        model.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    x, y = blobs(600, dim=16, classes=3, seed=6)
    images = SparkModel(unbuilt(keras.layers.Conv2D(4, 3, activation="relu")), num_workers=2, seed=0)
    images.fit(x.reshape(-1, 4, 4, 1), y, epochs=6, batch_size=32, verbose=0)
    assert tuple(images.model.inputs[0].shape) == (None, 4, 4, 1)
    assert images.evaluate(x.reshape(-1, 4, 4, 1), y)["accuracy"] > 0.9

    frame = spark.createDataFrame([(Vectors.dense(r.tolist()), int(c)) for r, c in zip(x, y)], ["features", "label"])
    vectors = SparkModel(unbuilt(), num_workers=2, seed=0)
    vectors.fit(frame, epochs=6, batch_size=32, verbose=0)
    assert tuple(vectors.model.inputs[0].shape) == (None, 16)
    scored = vectors.predict(frame).select("prediction").toPandas()["prediction"]
    np.testing.assert_allclose(np.stack(scored), vectors.model.predict(x, verbose=0), atol=1e-5)

    texts = spark.createDataFrame([("a b", 1)], ["features", "label"])  # nothing numeric to build for
    with pytest.raises(InputError, match="The model has no known inputs: build it first"):
        SparkModel(unbuilt(), num_workers=2).fit(texts, verbose=0)


def test_reading_an_rdds_first_pair_keeps_the_python_worker_that_read_it(spark):
    """``RDD.take(1)`` on pairs of arrays ends the worker that produced them (measured); the fit's reader does not."""
    from sparkeras.data.sources import first_element

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False

    sc = spark.sparkContext
    x, y = blobs(1400, dim=64, classes=10, seed=1)
    rdd = sc.parallelize([(x[i], np.eye(10)[y[i]]) for i in range(len(x))], 2).map(lambda p: (os.getpid(), p))
    [(pid, (features, label))] = first_element(rdd)
    np.testing.assert_array_equal(features, x[0])
    np.testing.assert_array_equal(label, np.eye(10)[y[0]])
    time.sleep(1.0)  # a closed worker is gone within 0.5 s
    assert alive(pid)
    assert first_element(sc.parallelize([7], 3)) == [7]  # partition 0 is empty: Spark scans on
    assert first_element(sc.emptyRDD()) == []


def test_an_rdds_pairs_are_packed_by_the_tasks_that_read_them_without_a_sql_query(spark):
    """No DataFrame between an RDD and its packed blocks, and the same model as through one."""
    from sparkeras.data.sources import pair_rdd

    sc = spark.sparkContext
    x, y = blobs(600, dim=4, classes=3, seed=2)
    rdd = sc.parallelize([(x[i].reshape(2, 2), int(y[i])) for i in range(len(x))], 2)
    queries = spark._jsparkSession.sharedState().statusStore()
    before = queries.executionsCount()
    direct = SparkModel(mlp(dim=4, classes=3, seed=3), num_workers=2, seed=0)
    direct.fit(rdd, epochs=4, batch_size=32, verbose=0)
    assert queries.executionsCount() == before  # not one SQL query: no createDataFrame, no Arrow conversion

    frame = pair_rdd(rdd, "features", "label").frame(spark)  # the rows the JVM used to make, same partitions
    assert frame.schema.simpleString() == "struct<features:array<double>,label:bigint>"
    through_rows = SparkModel(mlp(dim=4, classes=3, seed=3), num_workers=2, seed=0)
    through_rows.fit(frame, epochs=4, batch_size=32, verbose=0)
    for got, want in zip(direct.model.get_weights(), through_rows.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert direct.evaluate(x, y)["accuracy"] > 0.8

    history = SparkModel(mlp(dim=4, classes=3, seed=3), num_workers=2, seed=0).fit(
        rdd, epochs=4, batch_size=32, validation_split=0.25, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.8
    rows = history.params["train_rows"], history.params["validation_rows"]
    assert 0.15 < rows[1] / 600 < 0.35 and sum(rows) == 600, rows  # a seeded random quarter, every pair once


def test_an_rdd_of_mllib_labeled_points_trains_as_pairs(spark):
    from pyspark.mllib.regression import LabeledPoint

    x, y = blobs(600, dim=4, classes=3, seed=2)
    points = spark.sparkContext.parallelize([LabeledPoint(float(y[i]), x[i]) for i in range(len(x))], 2)
    sm = SparkModel(mlp(dim=4, classes=3, seed=3), num_workers=2, seed=0)
    sm.fit(points, epochs=4, batch_size=32, verbose=0)
    assert sm.evaluate(points)["accuracy"] == pytest.approx(sm.evaluate(x, y)["accuracy"], abs=1e-6)
    assert sm.evaluate(x, y)["accuracy"] > 0.8


@pytest.mark.parametrize("kind", ["matrix_and_int", "list_and_float", "vector_and_bool", "one_hot", "features_only"])
def test_an_rdds_elements_become_the_rows_a_dataframe_of_them_holds(kind):
    """Executor side, without Spark: the Arrow batches packing reads equal the rows ``createDataFrame`` was given."""
    from pyspark.ml.linalg import Vectors

    from sparkeras.data.sources import PairLayout

    rng = np.random.default_rng(0)
    features = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(7)]
    elements, layout = {
        "matrix_and_int": ([(f, np.int64(i % 3)) for i, f in enumerate(features)],
                           PairLayout("features", "label", False, True)),
        "list_and_float": ([(f.ravel().tolist(), 0.5 * i) for i, f in enumerate(features)],
                           PairLayout("x", "y", False, False)),
        "vector_and_bool": ([(Vectors.dense(f.ravel()), i % 2 == 0) for i, f in enumerate(features)],
                            PairLayout("features", "label", False, True)),
        "one_hot": ([(f, np.eye(3, dtype=np.float32)[i % 3]) for i, f in enumerate(features)],
                    PairLayout("features", "label", True, False)),
        "features_only": (features, PairLayout("features", None)),
    }[kind]
    batches = list(layout.batches(iter(elements), rows=3))
    assert [b.num_rows for b in batches] == [3, 3, 1]
    got = [list(row.values()) for b in batches for row in b.to_pylist()]
    flat = [f.astype(np.float64).ravel().tolist() for f in features]  # what the JVM's rows held: doubles
    labels = {"matrix_and_int": [i % 3 for i in range(7)], "list_and_float": [0.5 * i for i in range(7)],
              "vector_and_bool": [int(i % 2 == 0) for i in range(7)],
              "one_hot": [np.eye(3)[i % 3].tolist() for i in range(7)]}.get(kind)
    assert got == ([[f] for f in flat] if labels is None else [[f, label] for f, label in zip(flat, labels)])
    assert [field.name for field in layout.schema.fields] == list(batches[0].schema.names)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (["a"] * 4, 1), "Element 20 of the RDD's partition 1 is not like its first element: its features "
                                 "['a', 'a', 'a', 'a'] are not numbers (could not convert string to float: 'a')"),
    (lambda x, y: (x, np.eye(3)[y]), "Element 20 of the RDD's partition 1 is not like its first element: its label "
                                     "has 3 values, where the first element's label is one number"),
    (lambda x, y: x, "Element 20 of the RDD's partition 1 is not like its first element: it is a ndarray, not a "
                     "(features, label) pair"),
])
def test_an_rdd_element_unlike_the_first_is_named_before_training(spark, bad, message):
    x, y = blobs(100, dim=4, classes=3, seed=2)
    pairs = [(x[i], int(y[i])) for i in range(len(x))]
    pairs[70] = bad(x[70], y[70])
    with pytest.raises(InputError, match=re.escape(message)):
        SparkModel(mlp(dim=4, classes=3), num_workers=2).fit(spark.sparkContext.parallelize(pairs, 2), epochs=1,
                                                             verbose=0)


def test_an_rdd_with_rows_of_different_lengths_is_refused_before_training(spark):
    x, y = blobs(100, dim=4, classes=3, seed=2)
    pairs = [(x[i], int(y[i])) for i in range(len(x))]
    pairs[57] = (x[57][:3], int(y[57]))
    rdd = spark.sparkContext.parallelize(pairs, 2)
    with pytest.raises(InputError, match=r"column 'features' has arrays of different lengths \(4 and 3\)"):
        SparkModel(mlp(dim=4, classes=3), num_workers=2).fit(rdd, epochs=1, verbose=0)


def test_arrow_batches_carry_every_column_type_a_fit_reads_in_row_order(spark):
    """Packing reads the JVM's Arrow batches with a schema made in Python; both must agree."""
    from pyspark.ml.linalg import Vectors

    from sparkeras.data.arrow import arrow_batches

    rows = [(Vectors.dense([float(i), -1.5]) if i % 3 else Vectors.sparse(2, [1], [float(i)]),
             [float(i) / 7, None if i == 4 else 2.0], i * 10_000_000_000, float(i) / 3, bytes([i, 255 - i]) * i)
            for i in range(1, 25)]
    frame = spark.createDataFrame(rows, ["v", "a", "n", "f", "b"]).repartition(3).cache()
    messages, read = arrow_batches(frame)
    assert messages.getNumPartitions() == 3
    decoded = messages.mapPartitions(lambda it: (b.to_pylist() for b in read(it))).collect()
    got = [r for batch in decoded for r in batch]
    expected = [r.asDict() for r in frame.collect()]
    assert len(got) == len(expected) == 24
    for g, e in zip(got, expected):  # same order: the same partitions, read the same way
        assert g["a"] == e["a"] and g["n"] == e["n"] and g["b"] == e["b"]
        assert g["f"] == pytest.approx(e["f"])
        vector = e["v"]
        if hasattr(vector, "indices"):  # SparseVector
            assert g["v"] == {"type": 0, "size": 2, "indices": list(vector.indices), "values": list(vector.values)}
        else:
            assert g["v"] == {"type": 1, "size": None, "indices": None, "values": list(vector.values)}
    frame.unpersist()


def test_multi_input_multi_output_model_maps_columns(spark):
    import keras

    rng = np.random.default_rng(0)
    a = rng.normal(size=(800, 3)).astype(np.float32)
    b = rng.normal(size=(800, 2)).astype(np.float32)
    cls = (a[:, 0] + b[:, 0] > 0).astype(np.int64)
    reg = (a.sum(1) - b.sum(1)).astype(np.float32)
    ia, ib = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([ia, ib]))
    # Dicts written out of sorted order, and heads named apart from their keys: Keras flattens a dict by
    # its sorted keys, so model.outputs is [cls, reg] and each label must meet its own head's shape and loss.
    model = keras.Model({"b": ib, "a": ia}, {"reg": keras.layers.Dense(1, name="amount_head")(h),
                                             "cls": keras.layers.Dense(2, activation="softmax", name="class_head")(h)})
    model.compile("adam", {"reg": "mse", "cls": "sparse_categorical_crossentropy"})
    df = spark.createDataFrame(
        [(a[i].tolist(), b[i].tolist(), int(cls[i]), float(reg[i])) for i in range(800)],
        "fa ARRAY<FLOAT>, fb ARRAY<FLOAT>, ycls INT, yreg DOUBLE")
    sm = SparkModel(model, num_workers=2, seed=0)
    history = sm.fit(df, epochs=5, batch_size=32, verbose=0, features_col={"a": "fa", "b": "fb"},
                     label_col={"cls": "ycls", "reg": "yreg"})
    assert history.history["loss"][-1] < history.history["loss"][0]
    predicted = sm.predict(x={"a": a, "b": b})
    expected_arrays = model.predict({"a": a, "b": b}, verbose=0)
    assert set(predicted) == {"cls", "reg"}
    for key in ("cls", "reg"):
        np.testing.assert_allclose(predicted[key], expected_arrays[key], atol=1e-5)
    out = sm.predict(df)  # the fit's columns, unless told otherwise
    assert out.columns[-2:] == ["prediction_cls", "prediction_reg"]
    scores = sm.evaluate(df)
    want = model.evaluate({"a": a, "b": b}, {"cls": cls, "reg": reg}, batch_size=32, verbose=0, return_dict=True)
    assert set(scores) == set(want) and {"cls_loss", "reg_loss"} <= set(want)
    for name, value in want.items():  # each output's loss under its own name (the workers order them as here)
        # Keras weighs each output's loss per batch by the batch's static size, which a traced loop with any
        # batch size lacks, so those two follow the partitions' last batches; swapped, they differ 5-fold.
        assert scores[name] == pytest.approx(value, rel=2e-2 if name in ("cls_loss", "reg_loss") else 1e-4), name
    with pytest.raises(InputError, match=r"pass features_col as a dict"):
        sm.predict(df, features_col="fa")  # an explicit mapping still wins
    rows = out.collect()
    expected = model.predict({"a": np.array([r.fa for r in rows]), "b": np.array([r.fb for r in rows])}, verbose=0)
    np.testing.assert_allclose([r.prediction_cls for r in rows], expected["cls"], atol=1e-5)
    np.testing.assert_allclose([r.prediction_reg for r in rows], expected["reg"][:, 0], atol=1e-5)

    from sparkeras.ml import KerasModel

    stage = KerasModel(model=model, featuresCol="fa,fb", predictionCol="p")  # one column per input, in order
    staged = stage.transform(df).collect()
    np.testing.assert_allclose([r.p_cls for r in staged], expected["cls"], atol=1e-5)


def test_integer_inputs_are_packed_as_integers_and_embeddings_learn_from_id_columns(spark):
    """An ``Embedding``'s ids reach it as the input's own integer type: as ``float32`` an id above 2**24 would
    change (16,777,217 reads as 16,777,216). Fractional ids are refused with the column named."""
    import keras
    import pyarrow as pa

    from sparkeras.data.columns import resolve_columns

    def id_model(dtype):
        ids, extra = keras.Input((1,), dtype=dtype, name="ids"), keras.Input((2,), name="extra")
        h = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Embedding(50, 4)(ids)), extra])
        model = keras.Model([ids, extra], keras.layers.Dense(2, activation="softmax")(h))
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return model

    big = 16_777_217
    for dtype, value in (("int32", big), ("int64", 2**40 + 1)):
        schema = spark.createDataFrame([], "item BIGINT, extra ARRAY<FLOAT>").schema
        columns = resolve_columns(id_model(dtype), schema, ["item", "extra"], None)
        batch = pa.RecordBatch.from_pydict({"item": pa.array([value, 3], pa.int64()),
                                            "extra": pa.array([[0.0, 1.0]] * 2, pa.list_(pa.float32()))})
        ids = columns.features[0].to_numpy(batch).values
        assert ids.dtype == np.dtype(dtype) and ids[:, 0].tolist() == [value, 3]
        assert columns.features[1].dtype == "float32"

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    item = rng.integers(0, 50, 1200)
    extra = rng.normal(size=(1200, 2)).astype(np.float32) * 0.1
    label = (item % 2).astype(np.int64)  # only the id's embedding tells the classes apart
    df = spark.createDataFrame([(int(i), e.tolist(), int(y)) for i, e, y in zip(item, extra, label)],
                               "item INT, extra ARRAY<FLOAT>, label INT")
    model = id_model("int32")
    sm = SparkModel(model, num_workers=2, seed=0)
    history = sm.fit(df, features_col=["item", "extra"], epochs=4, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    rows = sm.predict(df, features_col=["item", "extra"]).collect()
    want = model.predict([np.array([[r.item] for r in rows], np.int32), np.array([r.extra for r in rows])], verbose=0)
    np.testing.assert_allclose([r.prediction for r in rows], want, atol=1e-5)

    fractional = df.withColumn("item", df.item + 0.5)
    with pytest.raises(InputError, match=r"column 'item' holds 1200 non-integer values, but model input 'ids' takes "
                                         r"int32; cast or round the column"):
        SparkModel(id_model("int32"), num_workers=2).fit(fractional, features_col=["item", "extra"], verbose=0)


def test_partition_with_zero_rows_trains(spark):
    x, y = blobs(5, seed=0)  # 4 workers over 5 rows: slices of 2, 2, 1 and 0 rows
    sm = SparkModel(mlp(seed=1), num_workers=4, seed=0)
    history = sm.fit(x, y, epochs=2, batch_size=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_window_of_k_batches_averages_within_the_epoch(spark):
    x, y = blobs(4000, seed=5)
    sm = SparkModel(mlp(seed=1), strategy="averaging", num_workers=2, seed=0, window=10)
    assert sm.strategy.get_config()["window"] == 10
    history = sm.fit(x, y, epochs=3, batch_size=32, verbose=0)
    # 2000 rows per worker = 63 batches -> 7 windows per epoch, every batch trained once
    assert int(sm.model.optimizer.iterations) == 3 * 63
    assert history.history["accuracy"][-1] > 0.8


def test_save_and_load_round_trip(spark, tmp_path):
    x, y = blobs(500, seed=5)
    sm = SparkModel(mlp(seed=1), num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, verbose=0)
    (tmp_path / "uri").mkdir()
    for path in (str(tmp_path / "m.keras"), "file://" + str(tmp_path / "uri" / "m.keras")):
        sm.save(path)
        loaded = SparkModel.load(path, num_workers=2)
        np.testing.assert_allclose(loaded.predict(x[:20]), sm.predict(x[:20]), atol=1e-6)


def test_workers_use_the_cores_spark_gave_them_and_cache_the_model(spark):
    from sparkeras.serialization import ModelSpec
    from sparkeras.worker import runtime

    spec = ModelSpec.from_model(mlp(seed=1))

    def probe(_):
        import tensorflow as tf

        runtime.configure("tensorflow")
        first = runtime.model(spec)
        again = runtime.model(spec)
        yield (runtime.task_cpus(), tf.config.threading.get_intra_op_parallelism_threads(), first is again)

    got = spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect()
    assert got == [(1, 1, True), (1, 1, True)]


def test_a_rebuilt_model_draws_no_random_weights_and_takes_the_drivers_state_exactly():
    """Workers set every variable from the driver's state right after the build, so the build draws no
    random initial weights (JAX compiled each random initializer per weight shape); a registered custom
    initializer is kept."""
    import keras

    from sparkeras.serialization import ModelSpec, model_state, set_model_state

    @keras.saving.register_keras_serializable(package="sparkeras_tests")
    class Halves(keras.initializers.Initializer):
        def __call__(self, shape, dtype=None):
            return keras.ops.full(shape, 0.5, dtype=dtype)

    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, activation="relu"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(3, kernel_initializer=Halves(), activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rebuilt = ModelSpec.from_model(model).build()
    kernel, bias, gamma, beta, mean, variance, halves, _ = rebuilt.get_weights()
    assert not kernel.any() and not gamma.any() and not variance.any()  # the Dense's Glorot, BN's ones: zeros
    assert (halves == 0.5).all()
    assert model.get_weights()[0].any()  # the driver's model is untouched
    set_model_state(rebuilt, model_state(model))
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    np.testing.assert_array_equal(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_model_the_user_saved_as_h5_is_rebuilt_with_its_own_optimizer(tmp_path):
    """Keras' legacy ``.h5`` saving pops the optimizer from the model's compile config; rebuilt from that, the
    workers compiled Keras' default (RMSprop), whose state has as many arrays as this SGD with momentum."""
    import keras

    from sparkeras.serialization import ModelSpec, model_state

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.5), "sparse_categorical_crossentropy")
    model.save(str(tmp_path / "user.h5"))
    assert "optimizer" not in model.get_compile_config()  # what Keras leaves: the reason for the rule
    rebuilt = ModelSpec.from_model(model).build()
    assert type(rebuilt.optimizer).__name__ == "SGD" and rebuilt.optimizer.momentum == 0.5
    assert float(rebuilt.optimizer.learning_rate.numpy()) == pytest.approx(0.1)
    assert [v.shape for v in model_state(rebuilt)] == [v.shape for v in model_state(model)]


def test_a_model_built_again_trains_on_the_workers_model_and_steps_of_its_architecture(spark):
    """Keras names layers after a per-process counter, so the same model built again has another config;
    the workers keep one model (and its traced steps) per architecture, its layers' names left out. The
    names of a model's several outputs stay part of it: a trial's logs are named after them."""
    import keras

    from sparkeras.serialization import ModelSpec
    from sparkeras.worker import runtime

    first, again, wider = mlp(seed=1), mlp(seed=2), mlp(hidden=24, seed=1)
    specs = [ModelSpec.from_model(m) for m in (first, again, wider)]
    assert [layer.name for layer in first.layers] != [layer.name for layer in again.layers]
    assert specs[0].key != specs[1].key and specs[0].architecture == specs[1].architecture
    assert specs[2].architecture != specs[0].architecture

    def two_outputs(name: str | None = None):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8)(inputs)
        model = keras.Model(inputs, [keras.layers.Dense(2, name=name)(hidden), keras.layers.Dense(1)(hidden)])
        model.compile(optimizer="adam", loss=["mse", "mse"])
        return ModelSpec.from_model(model).architecture

    def one_output():
        inputs = keras.Input((4,))
        model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(8)(inputs)))
        model.compile(optimizer="adam", loss="mse")
        return ModelSpec.from_model(model).architecture

    assert one_output() == one_output()  # a functional model's references to its layers renamed too
    assert two_outputs("scores") != two_outputs("scores")  # the second output's own name differs
    shipped = ModelSpec.of(json.loads(specs[0].config), {"Halve": object})  # a script's class, maybe redefined
    assert shipped.architecture == shipped.key
    x, y = blobs(400, seed=5)

    def probe(_):
        runtime.configure("tensorflow")
        yield [id(runtime.model(spec)) for spec in specs]

    for ids in spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect():
        assert ids[0] == ids[1] != ids[2]
    trained = SparkModel(first, num_workers=2, seed=0)
    trained.fit(x, y, epochs=2, batch_size=25, verbose=0)
    rebuilt = SparkModel(again, num_workers=2, seed=0)
    rebuilt.model.set_weights(mlp(seed=1).get_weights())  # the same start as the first fit, on new layers
    rebuilt.fit(x, y, epochs=2, batch_size=25, verbose=0)
    for got, want in zip(rebuilt.model.get_weights(), trained.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_a_cold_worker_imports_keras_without_its_optional_extras_and_they_import_afterwards():
    """In a fresh interpreter, as in a new Python worker: Keras comes up without sklearn, matplotlib or
    IPython (nor JAX, which TensorFlow imports when it is installed), which stay importable for the
    user's own code."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from sparkeras.worker.runtime import KERAS_EXTRAS, configure\n"
        "configure('tensorflow', 1)\n"
        "print('keras' in sys.modules, sorted(m for m in KERAS_EXTRAS + ('jax',) if m in sys.modules))\n"
        "import sklearn, matplotlib, jax\n"
        "print(sklearn.__name__, matplotlib.__name__, jax.__name__)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["True []", "sklearn matplotlib jax"]


def test_workers_fork_from_a_daemon_that_imported_tensorflow_and_freeze_what_they_imported(spark):
    """get_spark's sessions fork Python workers from sparkeras.worker.daemon, which has TensorFlow loaded;
    a configured worker has frozen its imported objects, so Spark's per-task gc.collect() skips them."""
    from sparkeras.worker import runtime

    def probe(_):
        import gc
        import os

        runtime.configure("tensorflow")
        with open(f"/proc/{os.getppid()}/maps") as maps:
            daemon_has_tensorflow = "libtensorflow" in maps.read()
        with open(f"/proc/{os.getppid()}/cmdline") as cmdline:
            daemon = cmdline.read().split("\0")[2]
        with open(f"/proc/{os.getppid()}/stat") as stat:
            daemon_parent = int(stat.read().split(") ")[-1].split()[1])
        yield daemon, daemon_has_tensorflow, gc.isenabled(), daemon_parent, gc.get_freeze_count()

    got = spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect()
    # The daemon imports with the collector off, and turns it back on before it forks. It is the process
    # get_spark started beside the JVM (sparkeras.worker.prestart, a child of this one; a fresh session's
    # case is checked below), or one the JVM launched that imported itself: the JVM launches another for a
    # new worker environment, and in this shared session an earlier test may have led it to.
    assert [g[:3] for g in got] in ([("sparkeras.worker.prestart", True, True)] * 2,
                                    [("sparkeras.worker.daemon", True, True)] * 2), got
    assert all(g[3] == (os.getpid() if g[0] == "sparkeras.worker.prestart" else g[3]) for g in got), got
    assert all(g[4] > 100_000 for g in got), got  # Keras and TensorFlow alone are about 500,000 objects


def test_the_prestarted_daemon_refuses_a_daemon_whose_imports_could_differ(monkeypatch):
    import pyspark

    from sparkeras.worker import prestart

    spark_zip = os.path.join(os.path.dirname(pyspark.__file__), "python", "lib", "pyspark.zip")
    env = {"HOME": "/root", "PYTHONHASHSEED": "0"}
    same = {"executable": sys.executable, "cwd": os.getcwd(), "argv": ["daemon.py", "pyspark.worker"],
            "env": {**env, "SPARK_REUSE_WORKER": "1", "PYTHON_WORKER_FACTORY_SOCK_DIR": "/tmp/x",
                    "PYTHONPATH": spark_zip}}
    assert prestart.why_refused(same, env) is None  # Spark's protocol variables and its own PYTHONPATH are fine
    assert prestart.why_refused({**same, "executable": "/usr/bin/python3.9"}, env).startswith(
        "the workers run '/usr/bin/python3.9'")
    assert prestart.why_refused({**same, "cwd": "/"}, env) == f"the daemon starts in '/', not {os.getcwd()!r}"
    for changed in ({**same["env"], "PYTHONHASHSEED": "1"}, {k: v for k, v in same["env"].items() if k != "HOME"},
                    {**same["env"], "OMP_NUM_THREADS": "4"}):
        key = ({*changed.items()} ^ {*same["env"].items()}).pop()[0]
        assert prestart.why_refused({**same, "env": changed}, env) == f"environment variable {key} differs"
    other = {**same, "env": {**same["env"], "PYTHONPATH": f"{spark_zip}{os.pathsep}/opt/libs/keras-2.zip"}}
    assert prestart.why_refused(other, env) == "PYTHONPATH entry '/opt/libs/keras-2.zip' is outside pyspark's folder"
    monkeypatch.delenv("PYTHON_WORKER_FACTORY_SOCK_DIR", raising=False)
    assert prestart.hand_over() is False  # a daemon Spark launched without Unix sockets serves itself


def test_a_refused_daemon_serves_itself_and_the_prestarted_process_ends(tmp_path):
    """A real prestarted process, refusing a launched daemon whose environment differs: both sides carry on."""
    from sparkeras.worker import prestart

    folder = tmp_path / "sockets"
    folder.mkdir(mode=0o700)
    env = {**os.environ, "SPARKERAS_DEBUG": "1"}  # the refused daemon then says why
    waiting = subprocess.Popen([sys.executable, "-m", "sparkeras.worker.prestart",
                                str(folder / prestart.SOCKET_NAME)], stdin=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (folder / prestart.SOCKET_NAME).exists():
            assert time.monotonic() < deadline and waiting.poll() is None, "the prestarted process did not listen"
            time.sleep(0.05)
        launched = subprocess.run(
            [sys.executable, "-c", "from sparkeras.worker.prestart import hand_over; print(hand_over())"],
            capture_output=True, text=True, timeout=150,
            env={**env, "PYTHON_WORKER_FACTORY_SOCK_DIR": str(folder), "SPARKERAS_EXAMPLE": "differs"})
        assert launched.stdout.strip() == "False", launched.stderr[-2000:]
        assert "refused to take over: environment variable SPARKERAS_EXAMPLE differs" in launched.stderr
        assert waiting.wait(timeout=30) == 0
        assert not (folder / prestart.SOCKET_NAME).exists()
    finally:
        waiting.kill()


def test_the_daemon_turns_the_collector_back_on_when_its_import_fails(monkeypatch):
    import gc

    from sparkeras.worker import daemon

    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setattr(daemon, "has_nvidia_driver", lambda: False)
    monkeypatch.setattr(daemon.importlib, "import_module", lambda name: 1 / 0)
    frozen = gc.get_freeze_count()
    try:
        assert daemon.preload() is None
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_the_daemon_preloads_the_checked_backends_and_reads_the_backend_as_keras_does(tmp_path, monkeypatch):
    """TensorFlow, JAX and PyTorch are imported before the fork (their imports start no runtime); another
    backend, or any on a machine with an NVIDIA driver (CUDA must see each worker's GPUs), is left to the workers."""
    from sparkeras.worker import daemon

    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(daemon, "has_nvidia_driver", lambda: False)
    assert daemon.configured_backend() == daemon.backend_to_preload() == "tensorflow"  # no config file
    (tmp_path / "keras.json").write_text('{"backend": "jax", "floatx": "float32"}')
    assert daemon.configured_backend() == daemon.backend_to_preload() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert daemon.configured_backend() == daemon.backend_to_preload() == "torch"
    monkeypatch.setenv("KERAS_BACKEND", "openvino")
    assert daemon.backend_to_preload() is None and daemon.preload() is None
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setattr(daemon, "has_nvidia_driver", lambda: True)
    assert daemon.backend_to_preload() is None and daemon.preload() is None


def test_a_worker_whose_keras_has_another_backend_says_how_to_start_the_session():
    from sparkeras.worker.runtime import check_backend

    check_backend("tensorflow", "tensorflow")
    with pytest.raises(InputError) as err:
        check_backend("jax", "tensorflow")
    message = str(err.value)
    assert "'jax'" in message and "'tensorflow'" in message
    assert "KERAS_BACKEND=jax" in message and "spark.python.daemon.module" in message


def test_driver_data_gives_the_same_model_through_files_or_through_spark(spark):
    """Local mode memory-maps driver data from files; a cluster ships it through Spark."""
    from sparkeras.data.packing import MEMORY_MAP_CONF

    x, y = blobs(1500, seed=12)
    model = mlp(seed=13)
    weights = {}
    try:
        for mode in ("auto", "false"):
            spark.conf.set(MEMORY_MAP_CONF, mode)
            sm = SparkModel(clone(model), num_workers=2, seed=4)
            sm.fit(x, y, epochs=2, batch_size=32, verbose=0)
            weights[mode] = sm.model.get_weights()
            np.testing.assert_allclose(sm.predict(x), sm.model.predict(x, verbose=0), atol=1e-6)
    finally:
        spark.conf.unset(MEMORY_MAP_CONF)
    for a, b in zip(weights["auto"], weights["false"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("memory_map", ["auto", "false"], ids=["files", "spark-blocks"])
def test_validation_split_of_a_dataframe_holds_out_every_row_once_from_one_packing(spark, memory_map):
    """A DataFrame's ``validation_split`` was two ``randomSplit`` queries, each reading all the rows and
    sorting every partition; now the rows are dealt from one packing, so each fit reads each row once (an
    accumulator counts them). Each row's value is its id and the model outputs it unchanged (a frozen
    identity), so each side's mean absolute error is the mean of its ids: the two sides together hold every
    id once. The same seed (or none) holds out the same rows again; row weights stay on the training side."""
    import keras
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, DoubleType

    from sparkeras.data.packing import MEMORY_MAP_CONF

    ids = np.arange(2000, dtype="float32")
    reads = spark.sparkContext.accumulator(0)

    def counted(value):
        reads.add(1)
        return value

    df = spark.createDataFrame([([float(i)], 0.0, 1.0) for i in ids], ["features", "label", "w"]).repartition(3)
    df = df.withColumn("features", F.udf(counted, ArrayType(DoubleType()))("features"))

    def identity():
        inputs = keras.Input((1,))
        layer = keras.layers.Dense(1, kernel_initializer="ones", trainable=False)
        model = keras.Model(inputs, layer(inputs))
        model.compile("sgd", "mae")
        return model

    try:
        spark.conf.set(MEMORY_MAP_CONF, memory_map)
        fits = [SparkModel(identity(), num_workers=2, seed=seed).fit(df, epochs=1, validation_split=0.25, verbose=0,
                                                                     weight_col=weights)
                for seed, weights in ((7, None), (7, None), (8, None), (7, "w"), (None, None), (None, None))]
    finally:
        spark.conf.unset(MEMORY_MAP_CONF)
    assert reads.value == 6 * 2000
    for history in fits:
        train, held_out = history.params["train_rows"], history.params["validation_rows"]
        assert train + held_out == 2000 and 0.2 < held_out / 2000 < 0.3, (train, held_out)
        total = history.history["loss"][0] * train + history.history["val_loss"][0] * held_out
        assert total == pytest.approx(ids.sum(), rel=1e-5)
    assert fits[0].history == fits[1].history
    assert fits[0].history["val_loss"] != fits[2].history["val_loss"]
    assert fits[4].history == fits[5].history  # without a seed too: no held-out row trains in a later fit


def test_packed_files_are_removed_when_released(spark):
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.packing import MEMORY_MAP_CONF, prepare
    from sparkeras.data.sources import as_dataset

    x, y = blobs(100, seed=1)
    dataset = as_dataset(spark, x, y)
    prepared = prepare(dataset, resolve_columns(mlp(), dataset.schema, "features", "label"), 2)
    assert prepared.files is not None and len(os.listdir(prepared.files)) == 4  # 2 partitions x (x, y)
    assert prepared.stats.rows_per_partition == [50, 50]
    prepared.release()
    assert not os.path.exists(prepared.files)

    spark.conf.set(MEMORY_MAP_CONF, "false")
    try:
        shipped = prepare(dataset, resolve_columns(mlp(), dataset.schema, "features", "label"), 2)
    finally:
        spark.conf.unset(MEMORY_MAP_CONF)
    assert shipped.files is None and shipped.stats.rows_per_partition == [50, 50]
    shipped.release()


def _skewed_frame(spark, big: int, small: int, seed: int = 0):
    """A two-partition DataFrame with ``big`` rows in one partition and ``small`` in the other."""
    x, y = blobs(big + small, seed=seed)
    rows = [(x[i].tolist(), int(y[i])) for i in range(len(x))]
    sc = spark.sparkContext
    parts = sc.parallelize(rows[:big], 1).union(sc.parallelize(rows[big:], 1))
    return spark.createDataFrame(parts, "features ARRAY<DOUBLE>, label INT"), x, y


def test_uneven_spark_partitions_are_rebalanced_for_training(spark):
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.packing import prepare
    from sparkeras.data.sources import as_dataset

    df, _, _ = _skewed_frame(spark, 300, 20)
    dataset = as_dataset(spark, df)
    columns = resolve_columns(mlp(), dataset.schema, "features", "label")
    kept = prepare(dataset, columns, 2)
    assert kept.stats.rows_per_partition == [300, 20]
    kept.release()
    balanced = prepare(dataset, columns, 2, balance=True)
    assert sorted(balanced.stats.rows_per_partition) == [160, 160]
    balanced.release()


def test_very_unequal_partitions_train_when_balancing_is_off(spark):
    df, x, y = _skewed_frame(spark, 2000, 10, seed=3)
    sm = SparkModel(mlp(seed=2), num_workers=2, seed=0, balance_partitions=False)
    history = sm.fit(df, epochs=2, batch_size=32, verbose=0)
    assert len(history.history["loss"]) == 2
    assert sm.evaluate(x, y)["accuracy"] > 0.5


def test_packed_blocks_are_capped_so_executors_never_hold_one_huge_value(spark, monkeypatch):
    from sparkeras.data import packing
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.sources import as_dataset

    x, y = blobs(1_000, dim=16, seed=2)
    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(mlp(), dataset.schema, "features", "label")
    monkeypatch.setattr(packing, "BLOCK_BYTES", 100 * (16 * 4 + 4))  # 100 rows of 16 floats and an int label
    assert packing.block_rows(columns) == 100
    batch = dataset.table.select(columns.columns).combine_chunks().to_batches()[0]
    blocks = list(packing.pack_batches(columns, iter([batch.slice(0, 650), batch.slice(650)])))
    assert [rows for rows, _, _ in blocks] == [100] * 6 + [50] + [100] * 3 + [50]
    assert [stats["rows"] for _, _, stats in blocks] == [rows for rows, _, _ in blocks]
    features = np.concatenate([np.frombuffer(packed[0], np.float32) for _, packed, _ in blocks]).reshape(-1, 16)
    np.testing.assert_array_equal(features, x)
    labels = np.concatenate([np.frombuffer(packed[1], np.int32) for _, packed, _ in blocks])
    np.testing.assert_array_equal(labels, y)



def test_local_mode_packs_a_partition_into_one_file_per_column_that_a_worker_reads_once(spark, tmp_path):
    from sparkeras.data import packing
    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.sources import as_dataset

    x, y = blobs(1_000, dim=16, seed=2)
    dataset = as_dataset(spark, x, y)
    columns = resolve_columns(mlp(), dataset.schema, "features", "label")
    batch = dataset.table.select(columns.columns).combine_chunks().to_batches()[0]
    blocks = list(packing.pack_batches(columns, iter([batch.slice(0, 650), batch.slice(650)]), str(tmp_path)))
    assert len(blocks) == 1 and blocks[0][0] == 1000 and blocks[0][2]["rows"] == 1000
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in blocks[0][1])  # two files in all
    arrays, rows = packing.read_partition(columns, iter(blocks))
    assert rows == 1000 and arrays[0].ctypes.data % packing.ALIGNMENT == 0  # memory-mapped, aligned for TensorFlow
    np.testing.assert_array_equal(arrays[0], x)
    np.testing.assert_array_equal(arrays[1], y)
    for path in blocks[0][1]:
        os.remove(path)
    again, _ = packing.read_partition(columns, iter(blocks))  # the next epoch's task in the same worker
    assert again[0] is arrays[0] and again[1] is arrays[1]


STARTED_WORKERS = """
import json, os, sys
os.environ["PYSPARK_PYTHON"] = sys.executable
import sparkeras
from sparkeras.session import start_python_workers
spark = sparkeras.get_spark("local[2]")
sc = spark.sparkContext
sc._sparkeras_start_workers.join(120)
with open("/proc/uptime") as f:  # seconds since boot, as /proc/<pid>/stat counts a process's start
    first_job = float(f.read().split()[0])

def probe(_):
    import os
    with open(f"/proc/{os.getppid()}/stat") as f:  # the daemon that forked this worker
        stat = f.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{os.getppid()}/cmdline") as f:
        parent = f.read().split("\\0")[2]
    # A forked worker starts with its daemon's environment (/proc shows only what a process started with).
    yield (int(stat[19]) / os.sysconf("SC_CLK_TCK"), parent, int(stat[1]), os.environ.get("PYTHON_WORKER_FACTORY_SOCK_DIR"),
           os.environ.get("SPARK_REUSE_WORKER"), sys.argv[1:])

import psutil
from sparkeras.worker.prestart import STAND_IN
tracker = sc.statusTracker()
jobs = [tracker.getJobInfo(j) for j in sorted(tracker.getJobIdsForGroup("sparkeras-start"))]
workers = sc.parallelize(range(2), 2).mapPartitions(probe).collect()
jvm = [c for c in psutil.Process().children() if c.name() == "java"][0]
stand_ins = []
for c in jvm.children():
    try:
        if STAND_IN in c.cmdline() and os.readlink(f"/proc/{c.pid}/fd/0") == os.devnull:
            stand_ins.append(c.memory_info().rss)
    except (psutil.Error, OSError):
        pass
folder = sc.getConf().get("spark.python.unix.domain.socket.dir")
again = start_python_workers(spark) is None
jobs = [[j.status, tracker.getStageInfo(j.stageIds[0]).numCompletedTasks] for j in jobs]
socket_left = os.path.exists(os.path.join(folder, "prestarted-daemon.sock"))
# A session started again on the running JVM, after this process's environment changed (as importing
# TensorFlow changes it): its daemons inherit the JVM's environment, and so does its prestarted process.
spark.stop()
os.environ["SPARKERAS_SET_AFTER_THE_JVM"] = "1"
spark = sparkeras.get_spark("local[2]")
restarted = spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect()
print(json.dumps({"jobs": jobs, "again": again, "first_job": first_job, "workers": workers, "driver": os.getpid(),
                  "folder": folder, "stand_ins": stand_ins, "socket_left": socket_left, "restarted": restarted}))
"""


@pytest.mark.own_processes
def test_a_new_session_starts_its_python_workers_before_the_first_python_job():
    """get_spark starts the Python workers in the background: the daemon (with its TensorFlow import) that forks
    the user's first Python job's workers was up before that job was submitted."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", STARTED_WORKERS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["jobs"] == [["SUCCEEDED", 1], ["SUCCEEDED", 2]] and got["again"]  # the import, then every slot
    # The daemon is the process get_spark started beside the JVM (a child of the driver), which took over the
    # JVM's pipes, environment and arguments from the daemon Spark launched.
    assert [w[1:3] for w in got["workers"]] == [["sparkeras.worker.prestart", got["driver"]]] * 2
    assert all(w[3:] == [got["folder"], "1", ["pyspark.worker"]] for w in got["workers"]), got
    assert all(w[0] < got["first_job"] - 0.05 for w in got["workers"]), got  # the daemon's start
    # The launched daemon stays as the JVM's stand-in, an interpreter without site-packages (79 MB before);
    # the prestarted process takes one daemon only.
    assert len(got["stand_ins"]) == 1 and got["stand_ins"][0] < 30 * 2**20 and not got["socket_left"], got
    assert [w[1:3] for w in got["restarted"]] == [["sparkeras.worker.prestart", got["driver"]]] * 2, got


LATE_EXECUTORS = """
import json, os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
from standalone import daemons_per_executor, executors_with_a_daemon
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local-cluster[3,1,1024]").config("spark.ui.enabled", "false")
         .config("spark.ui.showConsoleProgress", "false").config("spark.dynamicAllocation.enabled", "true")
         .config("spark.dynamicAllocation.shuffleTracking.enabled", "true")
         .config("spark.dynamicAllocation.initialExecutors", "1").config("spark.dynamicAllocation.minExecutors", "1")
         .config("spark.dynamicAllocation.maxExecutors", "3")
         .config("spark.dynamicAllocation.schedulerBacklogTimeout", "1s").getOrCreate())
spark.sparkContext.setLogLevel("OFF")
import sparkeras  # the session exists: its workers start now

# A job of the JVM's alone with a backlog of tasks: dynamic allocation adds two executors meanwhile.
spark.range(0, 6, 1, 6).selectExpr("java_method('java.lang.Thread', 'sleep', 2000L)").collect()
deadline = time.monotonic() + 60
app = spark.sparkContext.applicationId
while executors_with_a_daemon(app) != (3, 3) and time.monotonic() < deadline:
    time.sleep(0.5)
started = executors_with_a_daemon(app)

# RDD functions and SQL functions (a scoring UDF, mapInArrow) get the same environment, so Spark runs them in one
# pool of workers (test_rdd_functions_and_a_map_in_arrow_share_one_pool_of_python_workers checks the pool).
variable = spark.sparkContext.environment.get("SPARK_SIMPLIFIED_TRACEBACK")
print(json.dumps([started, daemons_per_executor(app), variable]))
spark.stop()
"""


@pytest.mark.own_processes
def test_executors_that_register_after_a_cluster_session_starts_get_their_python_workers_started_too():
    """On a cluster, executors register after the session starts, and later (dynamic allocation, autoscaling):
    each gets a Python worker started (its daemon, and on TensorFlow the import) when it registers in the
    session's first minute, not inside the first fit. Before, one wave sized as the session started (2 tasks)
    reached at most 2 of the 3 executors. Its RDD and SQL functions then share each executor's one daemon."""
    import json
    import subprocess
    import sys

    script = LATE_EXECUTORS.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    started, daemons, variable = json.loads(done.stdout.strip().splitlines()[-1])
    assert started == [3, 3] and daemons == [1, 1, 1], done.stdout
    # The user's own session keeps pyspark's daemon on a cluster, and RDD and SQL functions had a pool each: the
    # first prediction after a fit started a second daemon on each executor, which imported TensorFlow again.
    assert variable == "1", done.stdout


UNREACHABLE_DRIVER = """
import os, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local-cluster[1,1,1024]").config("spark.ui.enabled", "false")
         .config("spark.driver.host", "192.0.2.123").config("spark.driver.bindAddress", "127.0.0.1")
         .config("spark.scheduler.maxRegisteredResourcesWaitingTime", "1s").getOrCreate())
spark.sparkContext.setLogLevel("OFF")
from conftest import blobs, mlp
import sparkeras
x, y = blobs(200)
for workers in (None, 2):  # the default count waits for the executors; a given count needs one
    started = time.monotonic()
    try:
        sparkeras.SparkModel(mlp(), num_workers=workers).fit(x, y, epochs=1, verbose=0)
        print("FITTED")
    except sparkeras.InputError as exc:
        print("REFUSED", round(time.monotonic() - started), str(exc).replace(chr(10), " "))
spark.stop()
"""


@pytest.mark.own_processes
def test_a_cluster_session_that_no_executor_joins_fails_the_fit_with_what_it_waited_for():
    """Executors that cannot reach the driver's advertised address exit as they start, and Spark waits for them
    for ever, its one warning held back by the quiet logs: a fit on a standalone cluster hung, silent, for ten
    minutes. Now the fit stops after Spark's registration wait, and names the address and the settings."""
    import subprocess
    import sys

    script = UNREACHABLE_DRIVER.format(tests=os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    refused = [ln.split(" ", 2) for ln in done.stdout.splitlines() if ln.startswith(("REFUSED", "FITTED"))]
    assert len(refused) == 2, (done.stdout[-2000:], done.stderr[-3000:])
    for _, seconds, message in refused:
        assert int(seconds) < 60, refused
        assert message.startswith("No executor has joined this Spark session (master local-cluster[1,1,1024]) in "
                                  "1 s"), message
        assert "the driver at 192.0.2.123:" in message and "SPARK_LOCAL_IP or spark.driver.host" in message, message
        assert "spark.scheduler.maxRegisteredResourcesWaitingTime" in message, message


def test_sql_functions_run_in_the_same_pool_of_python_workers_as_training(spark):
    """Scoring UDFs (SQL functions) fork from the daemon that already imported TensorFlow for training (RDD
    functions), not from a second one that imports it again."""
    import os

    def sql_side(batches):
        import pyarrow as pa

        for batch in batches:
            yield pa.RecordBatch.from_pydict({"id": [os.getppid()] * batch.num_rows})

    sql = {r.id for r in spark.range(4).repartition(2).mapInArrow(sql_side, "id long").collect()}
    rdd = set(spark.sparkContext.parallelize(range(2), 2).mapPartitions(lambda _: [os.getppid()]).collect())
    assert sql == rdd and len(rdd) == 1, (sql, rdd)


def test_a_second_fit_of_the_same_model_continues_where_the_first_stopped_unless_its_weights_changed(spark):
    """As Keras keeps its optimizer's state across fits, averaging keeps its outer momentum and the workers'
    own Adam moments for the next fit of the same model: fit(1) then fit(3, initial_epoch=1) is fit(3)."""
    from sparkeras.serialization import model_state, set_model_state

    x, y = blobs(4000, seed=5)  # 63 batches per worker and epoch: two rounds of 32
    one_go = SparkModel(mlp(seed=2), num_workers=2, seed=0)
    one_go.fit(x, y, epochs=3, batch_size=32, verbose=0)
    continued = SparkModel(mlp(seed=2), num_workers=2, seed=0)
    continued.fit(x, y, epochs=1, batch_size=32, verbose=0)
    continued.fit(x, y, epochs=3, initial_epoch=1, batch_size=32, verbose=0)
    for got, want in zip(continued.model.get_weights(), one_go.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)

    changed = SparkModel(mlp(seed=2), num_workers=2, seed=0)
    changed.fit(x, y, epochs=1, batch_size=32, verbose=0)
    changed.model.set_weights([w + 0.01 for w in changed.model.get_weights()])
    before = model_state(changed.model)
    changed.fit(x, y, epochs=3, initial_epoch=1, batch_size=32, verbose=0)
    after = [np.array(w) for w in changed.model.get_weights()]
    set_model_state(changed.model, before)
    fresh = SparkModel(changed.model, num_workers=2, seed=0)  # the same state, and nothing to carry
    fresh.fit(x, y, epochs=3, initial_epoch=1, batch_size=32, verbose=0)
    for got, want in zip(after, fresh.model.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("strategy,freq,scored", [("averaging", 2, [2, 4]), ("allreduce", [1, 3], [1, 3])])
def test_validation_freq_scores_only_the_epochs_it_names(spark, strategy, freq, scored):
    import keras

    x, y = blobs(600, seed=3)
    seen = []

    class Seen(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch + 1, "val_loss" in logs))

    history = SparkModel(mlp(), strategy, num_workers=2, seed=0).fit(
        x, y, epochs=4, validation_data=(x[:100], y[:100]), validation_freq=freq, verbose=0, callbacks=[Seen()])
    assert seen == [(e, e in scored) for e in range(1, 5)]
    assert len(history.history["val_loss"]) == len(scored) and len(history.history["loss"]) == 4
    assert history.validation_epochs == scored
    from sparkeras.tracking.plots import _figure  # the learning curves put each val_ point at its epoch

    curves = {k: history.history[k] for k in ("loss", "val_loss")}
    figure = _figure(["loss"], curves, None, ("fit", "-"), {}, None, history.validation_epochs)
    drawn = {line.get_label(): [int(e) for e in line.get_xdata()] for line in figure.axes[0].lines}
    assert drawn == {"fit train": [1, 2, 3, 4], "fit validation": scored}


@pytest.mark.parametrize("strategy,epochs", [("averaging", 2), ("averaging", 4), ("allreduce", 2)])
def test_validation_batch_size_sets_the_rows_each_validation_batch_scores(spark, strategy, epochs):
    """A loss that is the batch's row count: 1.0 exactly in batches of one row, by a Spark job (2 epochs),
    on the driver (4, see DriverValidation) or in all-reduce's workers."""
    import keras

    def rows_in_batch(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_true - y_pred)) * 0.0 + keras.ops.cast(
            keras.ops.shape(y_true)[0], "float32")

    x, y = blobs(200, seed=4)
    val = (x[:60], y[:60].astype("float32").reshape(-1, 1))
    losses = []
    for size in (1, None):
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
        model.compile("sgd", rows_in_batch)
        history = SparkModel(model, strategy, num_workers=2, seed=0).fit(
            x, y.astype("float32").reshape(-1, 1), epochs=epochs, batch_size=16, validation_data=val,
            validation_batch_size=size, verbose=0)
        losses.append(history.history["val_loss"])
    assert losses[0] == [1.0] * epochs
    assert all(v > 10 for v in losses[1]), losses[1]  # batches of 16 (and the parts' remainders)


def test_keras_step_limits_are_refused_with_what_to_do_instead():
    x, y = blobs(40)
    with pytest.raises(InputError, match=r"steps_per_epoch=5 is not supported: an epoch of SparkModel.fit is one "
                                         r"pass over the data.*df.sample"):
        SparkModel(mlp(), num_workers=2).fit(x, y, steps_per_epoch=5, verbose=0)
    with pytest.raises(InputError, match=r"validation_steps=2 is not supported: validation scores every row.*"
                                         r"val_df.limit"):
        SparkModel(mlp(), num_workers=2).fit(x, y, validation_data=(x, y), validation_steps=2, verbose=0)
    with pytest.raises(InputError, match=r"validation_batch_size must be a positive integer, got 0"):
        SparkModel(mlp(), num_workers=2).fit(x, y, validation_data=(x, y), validation_batch_size=0, verbose=0)


def test_a_bad_validation_freq_is_refused(spark):
    x, y = blobs(40)
    for bad in (0, [0, 2], "2", []):
        with pytest.raises(InputError, match=r"validation_freq must be a positive number of epochs, or a list"):
            SparkModel(mlp(), num_workers=2).fit(x, y, validation_data=(x, y), validation_freq=bad, verbose=0)


def test_a_local_session_talks_to_its_python_workers_over_private_unix_sockets(spark):
    import stat

    from pyspark.version import __version__

    from sparkeras.session import python_socket_options

    assert python_socket_options("local-cluster[2,1,1024]") == {} == python_socket_options("spark://host:7077")
    if tuple(int(p) for p in __version__.split(".")[:2]) < (4, 1):
        assert python_socket_options("local[2]") == {}
        return
    import tempfile

    from sparkeras.session import socket_paths_fit

    if not socket_paths_fit(tempfile.gettempdir()):  # a socket path's limit: the session keeps TCP
        pytest.skip(f"the temporary directory {tempfile.gettempdir()!r} is too long for Unix socket paths")
    conf = spark.sparkContext.getConf()
    assert conf.get("spark.python.unix.domain.socket.enabled") == "true"
    folder = conf.get("spark.python.unix.domain.socket.dir")
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700  # Spark skips its secret on these sockets
    assert spark.sparkContext.parallelize(range(4), 2).map(lambda v: v * v).sum() == 14
    assert any(name.endswith(".sock") for name in os.listdir(folder))  # the daemon listens there


def test_socket_folders_of_killed_processes_are_removed_and_live_ones_kept(monkeypatch):
    import shutil
    import subprocess
    import tempfile

    from pyspark.version import __version__

    from sparkeras.session import python_socket_options

    if tuple(int(p) for p in __version__.split(".")[:2]) < (4, 1):
        pytest.skip("Spark before 4.1 has no Unix domain sockets for Python workers")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = tempfile.mkdtemp(prefix="sk-", dir="/tmp" if os.path.isdir("/tmp") else None)  # a socket path: 107 bytes
    try:
        folders = {name: os.path.join(root, f"sparkeras-sock-{pid}-{tail}") for name, pid, tail in
                   [("stale", gone.pid, "abcd1234"), ("live", os.getpid(), "abcd1234"),
                    ("other", gone.pid, "notours")]}  # "notours": not a name sparkeras makes
        for folder in folders.values():
            os.mkdir(folder)
            open(os.path.join(folder, ".x.sock"), "wb").close()
        monkeypatch.setattr(tempfile, "tempdir", root)
        made = python_socket_options("local[2]")["spark.python.unix.domain.socket.dir"]
        assert not os.path.exists(folders["stale"])
        assert os.path.exists(folders["live"]) and os.path.exists(folders["other"])
        assert os.path.dirname(made) == root and os.path.basename(made).startswith(f"sparkeras-sock-{os.getpid()}-")
    finally:
        shutil.rmtree(root)


def _warm_up_spec(hidden: int):
    """A spec of an architecture no other test trains, so the workers have not built it yet."""
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType

    from sparkeras.data.columns import resolve_columns
    from sparkeras.serialization import ModelSpec
    from sparkeras.worker.tasks import WorkerSpec

    model = mlp(hidden=hidden, seed=1)
    schema = StructType([StructField("features", ArrayType(FloatType())), StructField("label", LongType())])
    return WorkerSpec(ModelSpec.from_model(model), resolve_columns(model, schema, "features", "label"), "tensorflow")


def test_every_worker_of_a_fit_is_warmed_by_a_task_of_its_own(spark):
    """The warm-up job's two tasks, as ``start_warm_up`` plans them, build the model in two Python workers.

    Each task reports its worker once ``tasks.warm_up`` returns. Tasks that returned at once shared one
    worker in about half of the cold fits of a fresh ``local[2]`` session, as this test did then.
    """
    from sparkeras.training import warm_up_plan
    from sparkeras.worker import runtime, tasks

    spec = _warm_up_spec(hidden=33)
    plan = warm_up_plan(runtime.WarmUp(), 2)
    assert plan.hold_seconds > 0 and warm_up_plan(runtime.WarmUp(), 1).hold_seconds == 0

    def warm(it):
        list(tasks.warm_up(spec, plan, it))  # returns with the model built, not before
        built = spec.model.architecture in runtime._models
        started = time.monotonic()  # a second warm-up of the same model has nothing to do and does not wait
        list(tasks.warm_up(spec, runtime.WarmUp(hold_seconds=60.0), iter(())))
        yield os.getpid(), built, time.monotonic() - started

    found = spark.sparkContext.parallelize(range(2), 2).mapPartitions(warm).collect()
    assert len({pid for pid, _, _ in found}) == 2 and all(built for _, built, _ in found), found
    assert all(again < 5.0 for _, _, again in found), found


def test_driver_rows_are_scored_on_the_driver_as_the_workers_score_them(spark, monkeypatch):
    """numpy rows are predicted and evaluated in the driver's process, without a Spark job (or a session:
    test_sklearn); on a cluster, more than 16 MB of them go to the workers, which give the same figures."""
    from sparkeras.session import jobs_run_locally

    x, y = blobs(500, classes=3)
    weights = np.linspace(0.2, 3.0, len(x))
    sm = SparkModel(mlp(classes=3), num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, verbose=0)
    sc = spark.sparkContext

    def with_jobs(group, call):
        sc.setJobGroup(group, "scored on the driver or by the workers")
        try:
            return call(), len(sc.statusTracker().getJobIdsForGroup(group))
        finally:
            sc.setLocalProperty("spark.jobGroup.id", None)

    def scored():
        return sm.predict(x), sm.evaluate(x, y), sm.evaluate(x, y, sample_weight=weights)

    assert jobs_run_locally() and jobs_run_locally("local[3]") and not jobs_run_locally("spark://elsewhere:7077")
    many = np.random.default_rng(0).normal(size=(300_000, 16)).astype(np.float32)  # 19 MB: a local session's too
    predicted_many, jobs_many = with_jobs("scoring-many", lambda: sm.predict(many))
    np.testing.assert_allclose(predicted_many, sm.model.predict(many, batch_size=4096, verbose=0), atol=1e-6)
    (predicted, figures, weighted), jobs = with_jobs("scoring-here", scored)
    score_driver_rows_on_the_workers(monkeypatch)
    (by_workers, their_figures, their_weighted), their_jobs = with_jobs("scoring-there", scored)
    assert jobs_many == jobs == 0 and their_jobs >= 3, (jobs_many, jobs, their_jobs)
    np.testing.assert_allclose(predicted, sm.model.predict(x, verbose=0), atol=1e-6)
    np.testing.assert_allclose(predicted, by_workers, atol=1e-6)
    assert figures == pytest.approx(dict(zip(["loss", "accuracy"], sm.model.evaluate(x, y, verbose=0))), rel=1e-5)
    assert figures == pytest.approx(their_figures, rel=1e-5) and weighted == pytest.approx(their_weighted, rel=1e-5)
    assert weighted["loss"] != pytest.approx(figures["loss"], rel=1e-3)


def test_evaluate_and_predict_take_keras_verbose_and_return_dict(spark, capsys):
    """Code written for Keras passes ``verbose=`` and ``return_dict=``; they mean what they mean in Keras."""
    x, y = blobs(300, classes=3)
    sm = SparkModel(mlp(classes=3), num_workers=2, seed=0)
    sm.fit(x, y, epochs=1, batch_size=32, verbose=0)
    capsys.readouterr()
    figures = sm.evaluate(x, y, verbose="auto")
    line = capsys.readouterr().out
    assert re.fullmatch(r"evaluate: loss: \d+\.\d{4} - accuracy: \d+\.\d{4} \(\d+\.\d s\)\n", line), line
    assert f"loss: {figures['loss']:.4f}" in line
    as_keras = sm.evaluate(x, y, return_dict=False)
    assert as_keras == pytest.approx(sm.model.evaluate(x, y, verbose=0), rel=1e-4)  # [loss, accuracy], Keras' order
    assert sm.evaluate(x, y, verbose=0) == pytest.approx(figures) and capsys.readouterr().out == ""
    predicted = sm.predict(x, verbose=1)
    assert capsys.readouterr().out.startswith("predict: 300 rows (")
    np.testing.assert_allclose(predicted, sm.model.predict(x, verbose=0), atol=1e-5)
    for bad, message in [(dict(verbose=3), "verbose must be 0 (silent), 1 (progress bar), 2 (one line per epoch) "
                                           "or 'auto', got 3."),
                         (dict(return_dict="yes"), "return_dict must be True or False, got 'yes'.")]:
        with pytest.raises(InputError) as caught:
            sm.evaluate(x, y, **bad)
        assert str(caught.value) == message
    with pytest.raises(InputError, match="verbose must be 0 .* got 'loud'"):
        sm.fit(x, y, epochs=1, verbose="loud")
