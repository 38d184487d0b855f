"""The Elephas-compatible facade: Elephas scripts run with only their imports changed."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs
from sparkeras import InputError
from sparkeras.compat import elephas

SCRIPT = os.path.join(os.path.dirname(__file__), "elephas_readme_script.py")


@pytest.mark.own_processes
def test_elephas_readme_script_runs_and_matches_plain_keras(tmp_path):
    """The README's asynchronous, frequency='epoch' example on a small CNN, near plain Keras.

    Asynchronous commits interleave as the workers' timing falls, so one fit's test accuracy is a
    random draw. Measured on this script's data (397 test digits, one digit = 0.25 points):

    * plain Keras over seeds 0-5: mean 0.9773, range 0.9698-0.9824 (seed 0, used here: 0.9798);
    * the facade, two fits per seed over seeds 0-5: mean 0.9731 (0.4 points below plain), sd 0.7 points;
    * the facade with seed 0, 26 fits: mean 0.969, sd 0.9 points, lowest 0.9496 (3.0 points below seed 0's plain fit;
      a CI run drew it against the earlier 2.5-point bound).

    The bound is 4 points below this seed's plain fit: a draw falls under it about once in a thousand
    runs, while a rule that divides each commit by its window (the published 'adag', at the model's rate: 0.922
    measured) fails every time. A milder slowdown, dividing by staleness + 1 (the published 'dynsgd': 0.952),
    passes; this test guards the
    facade's wiring, not the last point of accuracy, which issue 12 tracks in the benchmark.
    """
    proc = subprocess.run([sys.executable, SCRIPT, "20", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[0][len("RESULT "):])
    assert result["plain_accuracy"] > 0.9
    assert result["predicted_accuracy"] >= result["plain_accuracy"] - 0.04, result
    assert abs(result["evaluate"][1] - result["predicted_accuracy"]) < 1e-6  # evaluate = [loss, accuracy]
    assert result["epochs_run"] == 20 and "val_loss" in result["history_keys"]
    assert result["reloaded"] == ["SparkModel", "asynchronous", "epoch"] and result["reloaded_same_weights"]
    # The script's own local SparkContext forks its Python workers from sparkeras' daemon once sparkeras runs in it,
    # one daemon for RDD and SQL functions alike.
    assert result["daemon"] == "sparkeras.worker.daemon", result
    assert len(result["workers_fork_from"]) == 1 and "sparkeras.worker.daemon" in result["workers_fork_from"][0], result


def test_modes_map_onto_strategies_and_ignored_arguments_warn(spark, caplog):
    assert elephas.strategy_for("synchronous", "epoch") == ("averaging", {})
    assert elephas.strategy_for("synchronous", "batch") == ("allreduce", {})
    assert elephas.strategy_for("asynchronous", "epoch") == ("async", {})
    assert elephas.strategy_for("HOGWILD", "batch") == ("hogwild", {"window": 1})
    with pytest.raises(InputError, match=r"Unknown Elephas mode 'sync'; choose one of"):
        elephas.strategy_for("sync", "epoch")
    with pytest.raises(InputError, match=r"Unknown Elephas frequency 'step'"):
        elephas.SparkModel(_model(), mode="asynchronous", frequency="step")

    x, y = blobs(800, dim=4, classes=3, noise=0.5, seed=2)
    with caplog.at_level(logging.WARNING, logger="sparkeras"):  # library messages go through its logger
        model = elephas.AsynchronousSparkModel(_model(), num_workers=2, mode="hogwild", frequency="batch",
                                               parameter_server_mode="socket", port=4000)
    assert [r.name for r in caplog.records] == ["sparkeras"]
    assert caplog.records[0].getMessage() == ("AsynchronousSparkModel: ['parameter_server_mode', 'port'] accepted "
                                              "for Elephas compatibility and ignored by sparkeras.")
    assert (model.strategy, model.strategy_options) == ("hogwild", {"window": 1})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparkeras"):  # Keras' class_weight is passed on, not ignored
        model.fit(elephas.to_simple_rdd(spark.sparkContext, x, y), epochs=3, batch_size=32,
                  class_weight={0: 1.0, 1: 1.5, 2: 1.0})
    assert not caplog.records
    assert model.evaluate(x, y)[1] > 0.85
    rdd_predictions = model.predict(spark.sparkContext.parallelize(list(x[:20]), 3))
    np.testing.assert_allclose(rdd_predictions, model.master_network.predict(x[:20], verbose=0), atol=1e-5)
    with pytest.raises(InputError, match="must end with '.keras' or '.h5'"):
        model.save("model.bin")


def test_elephas_ml_example_with_setters_pipeline_and_persistence(spark, tmp_path):
    """Elephas' ml_mlp_classification and ml_pipeline_otto examples: setters (Spark 2's camelCase ones
    included), a Pipeline, one-hot labels turned into a label column."""
    import keras
    from pyspark.ml import Pipeline

    x, y = blobs(900, dim=4, classes=3, noise=0.5, seed=4)
    y_onehot = keras.utils.to_categorical(y, 3)
    df = elephas.to_data_frame(spark.sparkContext, x, y_onehot, categorical=True)
    df = df.withColumnRenamed("features", "scaled_features").withColumnRenamed("label", "index_category")
    model = _model()
    estimator = elephas.ElephasEstimator()
    estimator.set_keras_model_config(model.to_json())
    estimator.set_optimizer_config(keras.optimizers.serialize(keras.optimizers.Adam(0.01)))
    estimator.set_mode("synchronous")
    estimator.set_loss("categorical_crossentropy")
    estimator.set_metrics(["acc"])
    estimator.set_epochs(6)
    estimator.set_batch_size(32)
    estimator.set_validation_split(0.1)
    estimator.set_categorical_labels(True)
    estimator.set_nb_classes(3)
    estimator.set_num_workers(2)
    estimator.setFeaturesCol("scaled_features")
    estimator.setLabelCol("index_category")
    assert estimator.setOutputCol("scores") is estimator and estimator.getOutputCol() == "scores"
    fitted = Pipeline(stages=[estimator]).fit(df)
    transformer = fitted.stages[0]
    assert (transformer.getFeaturesCol(), transformer.getLabelCol()) == ("scaled_features", "index_category")
    rows = fitted.transform(df).select("index_category", "scores").collect()
    accuracy = np.mean([row.index_category == float(np.argmax(row.scores)) for row in rows])
    assert accuracy > 0.85, accuracy

    estimator.save(str(tmp_path / "estimator"))
    assert elephas.load_ml_estimator(str(tmp_path / "estimator")).get_config() == estimator.get_config()
    transformer.save(str(tmp_path / "transformer"))
    again = elephas.load_ml_transformer(str(tmp_path / "transformer"))
    assert [list(r.scores) for r in again.transform(df).select("scores").collect()] == \
        [list(r.scores) for r in rows]
    with pytest.raises(InputError, match="ElephasEstimator has no parameter"):
        elephas.ElephasEstimator(learning_rate=0.1)
    with pytest.raises(InputError, match=r"needs a loss: set_loss"):
        elephas.ElephasEstimator(keras_model_config=model.to_json()).fit(df)


def test_labeled_points_and_the_mllib_model(spark):
    from pyspark.mllib.linalg import Vectors

    x, y = blobs(600, dim=4, classes=3, noise=0.5, seed=6)
    points = elephas.to_labeled_point(spark.sparkContext, x, y)
    assert points.count() == 600 and points.first().label == float(y[0])
    pairs = elephas.lp_to_simple_rdd(points, categorical=True, nb_classes=3).first()
    assert pairs[1].tolist() == np.eye(3)[y[0]].tolist()
    model = elephas.SparkMLlibModel(_model(), num_workers=2)
    model.train(points, epochs=5, batch_size=32, validation_split=0.0)
    single = model.predict(Vectors.dense(x[0]))
    np.testing.assert_allclose(single.toArray(), model.master_network.predict(x[:1], verbose=0)[0], atol=1e-6)
    assert model.evaluate(x, y)[1] > 0.85


def _model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_a_model_saved_as_h5_keeps_training_with_its_own_optimizer_and_loads_back(spark, tmp_path):
    """Keras' legacy ``.h5`` saving takes the optimizer out of the model's compile settings; the workers then
    rebuilt the model with Keras' default (RMSprop), so the next fit trained with another optimizer and scoring
    failed on a state of the wrong size. The settings are put back, and ``load_spark_model`` reads the file."""
    import keras

    x, y = blobs(400, dim=4, classes=3, noise=0.5, seed=8)
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    spark_model = elephas.SparkModel(model, num_workers=2)
    spark_model.fit(elephas.to_simple_rdd(spark.sparkContext, x, y), epochs=1, batch_size=32)
    spark_model.save(str(tmp_path / "model.h5"))
    assert spark_model.master_network.get_compile_config()["optimizer"]["class_name"] == "SGD"
    np.testing.assert_allclose(spark_model.predict(x[:20]), spark_model.master_network.predict(x[:20], verbose=0),
                               atol=1e-5)
    spark_model.fit(elephas.to_simple_rdd(spark.sparkContext, x, y), epochs=1, batch_size=32)
    optimizer = spark_model.master_network.optimizer  # SGD without momentum: no slots, as the driver's
    assert type(optimizer).__name__ == "SGD" and [v.name for v in optimizer.variables] == ["iteration", "learning_rate"]
    again = elephas.load_spark_model(str(tmp_path / "model.h5"))
    assert type(again.master_network.optimizer).__name__ == "SGD"
    assert again.get_config() == spark_model.get_config()
    assert again.evaluate(x, y)[1] > 0.5
