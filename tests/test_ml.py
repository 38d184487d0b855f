"""Spark ML stages: Pipeline, persistence in a fresh process, CrossValidator; real Spark and Keras."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import InputError
from sparkeras.ml import KerasEstimator, KerasModel


def _frame(spark, n, seed, sample_seed=None, dim=4):
    x, y = blobs(n, dim=dim, classes=3, noise=1.0, seed=seed, sample_seed=sample_seed)
    x = x * 50.0 + 100.0  # badly scaled on purpose: the pipeline's StandardScaler must matter
    rows = [tuple(float(v) for v in r) + (int(label),) for r, label in zip(x, y)]
    return spark.createDataFrame(rows, [f"f{i}" for i in range(dim)] + ["label"])


def _pipeline(epochs=6, model=None):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import StandardScaler, VectorAssembler

    model = model if model is not None else mlp(dim=4, classes=3, hidden=16, seed=3)
    estimator = KerasEstimator(model=model, featuresCol="scaled",
                               epochs=epochs, batchSize=32, numWorkers=2, seed=1)
    return Pipeline(stages=[VectorAssembler(inputCols=[f"f{i}" for i in range(4)], outputCol="raw"),
                            StandardScaler(inputCol="raw", outputCol="scaled", withMean=True, withStd=True),
                            estimator])


LOAD_SCRIPT = """
import json, os, sys
os.environ["PYSPARK_PYTHON"] = sys.executable
from pyspark.ml import PipelineModel
import sparkeras
spark = sparkeras.get_spark("local[2]")
spark.sparkContext.setLogLevel("OFF")
{prelude}
for name, path, data in {pipelines!r}:
    model = PipelineModel.load(path)
    rows = model.transform(spark.read.parquet(data)).orderBy("id").select("prediction", "probability").collect()
    print("RESULT", name, json.dumps([[r.prediction, list(r.probability)] for r in rows]))
"""

CUSTOM_LAYER = """
import keras


@keras.saving.register_keras_serializable(package="sparkeras_test")
class Halve(keras.layers.Layer):
    def __init__(self, factor=0.5, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class Shift(keras.layers.Layer):  # not registered: the stage records where it is defined
    def call(self, x):
        return x - 0.1


def doubled_crossentropy(y_true, y_pred):  # a loss Keras saves by its bare name
    return 2.0 * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
"""


def _transfer_learning(spark, digit_images):
    """Transfer learning on image files: a conv base cut at its ``embedding`` layer (random weights, as with
    ``weights=None``) feeds a small classifier trained in the same Pipeline."""
    import keras
    from pyspark.ml import Pipeline
    from pyspark.sql import functions as F

    import sparkeras
    from sparkeras.ml import ImageFeaturizer

    keras.utils.set_random_seed(5)
    base = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Rescaling(1 / 255),
                             keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(4),
                             keras.layers.Flatten(name="embedding"), keras.layers.Dense(10)])
    width = base.get_layer("embedding").output.shape[-1]
    head = keras.Sequential([keras.Input((width,)), keras.layers.Dense(10, activation="softmax")])
    head.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images = sparkeras.read_images(spark, digit_images[0], 32, color_mode="grayscale", on_error="skip") \
        .withColumn("id", F.monotonically_increasing_id())
    train, test = images.randomSplit([0.8, 0.2], seed=2)
    pipeline = Pipeline(stages=[ImageFeaturizer(model=base, layer="embedding", outputCol="embedding"),
                                KerasEstimator(model=head, featuresCol="embedding", epochs=4, numWorkers=2, seed=1)])
    return pipeline.fit(train), test


@pytest.fixture(scope="module")
def fresh_process(spark, tmp_path_factory, digit_images):
    """Three fitted pipelines (a plain one, one with a registered custom layer shipped as users do, and
    transfer learning on image files), saved, then loaded and applied in one fresh Python process: one
    process start serves all three tests."""
    import keras
    from pyspark.sql import functions as F

    tmp = tmp_path_factory.mktemp("fresh-process")
    fitted = {}
    train = _frame(spark, 1_500, seed=4)
    test = _frame(spark, 300, seed=4, sample_seed=5).withColumn("id", F.monotonically_increasing_id())
    fitted["plain"] = (_pipeline().fit(train), test)
    fitted["images"] = _transfer_learning(spark, digit_images)

    module = tmp / "sparkeras_custom_layers.py"
    module.write_text(CUSTOM_LAYER)
    sys.path.insert(0, str(tmp))
    spark.sparkContext.addPyFile(str(module))
    try:
        from sparkeras_custom_layers import Halve, Shift, doubled_crossentropy

        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((4,)), Halve(0.25), Shift(), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss=doubled_crossentropy, metrics=["accuracy"])
        custom_test = _frame(spark, 200, seed=4, sample_seed=9).withColumn("id", F.monotonically_increasing_id())
        fitted["custom"] = (_pipeline(epochs=3, model=model).fit(_frame(spark, 600, seed=4)), custom_test)
        pipelines = []
        for name, (pipeline, frame) in fitted.items():
            path, data = str(tmp / name), str(tmp / f"{name}.parquet")
            pipeline.write().overwrite().save(path)
            frame.write.parquet(data)
            pipelines.append((name, path, data))
        prelude = (f"sys.path.insert(0, {str(tmp)!r}); spark.sparkContext.addPyFile({str(module)!r}); "
                   "import sparkeras_custom_layers")
        script = LOAD_SCRIPT.format(prelude=prelude, pipelines=pipelines)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    finally:
        sys.path.remove(str(tmp))
    reloaded = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            name, rows = line[len("RESULT "):].split(" ", 1)
            reloaded[name] = json.loads(rows)
    assert set(reloaded) == {"plain", "custom", "images"}, proc.stdout[-2000:] + proc.stderr[-4000:]
    return fitted, reloaded, Halve, tmp


@pytest.mark.own_processes
def test_transfer_learning_on_image_files_saves_and_reloads_in_a_fresh_process(fresh_process):
    from pyspark.ml import PipelineModel

    fitted, reloaded, _, tmp = fresh_process
    pipeline, test = fitted["images"]
    rows = pipeline.transform(test).orderBy("id").select("prediction", "probability", "label").collect()
    assert np.mean([r.prediction == r.label for r in rows]) > 0.6  # random conv features; chance is 0.1
    classes = [f"digit_{c}" for c in range(10)]
    assert pipeline.stages[-1].getClasses() == classes
    assert PipelineModel.load(str(tmp / "images")).stages[-1].getClasses() == classes
    assert [p for p, _ in reloaded["images"]] == [r.prediction for r in rows]
    np.testing.assert_allclose([p for _, p in reloaded["images"]], [list(r.probability) for r in rows], atol=1e-5)


@pytest.mark.own_processes
def test_pipeline_fits_saves_and_reloads_in_a_fresh_process(fresh_process):
    fitted, reloaded, _, _ = fresh_process
    pipeline, test = fitted["plain"]
    out = pipeline.transform(test)
    assert set(test.columns) <= set(out.columns)
    assert dict(out.dtypes)["prediction"] == "double" and dict(out.dtypes)["probability"] == "array<float>"
    rows = out.orderBy("id").select("prediction", "probability", "label").collect()
    accuracy = np.mean([r.prediction == r.label for r in rows])
    assert accuracy > 0.8, accuracy  # chance is 1/3
    assert all(r.prediction == float(np.argmax(r.probability)) for r in rows)
    assert [p for p, _ in reloaded["plain"]] == [r.prediction for r in rows]
    np.testing.assert_allclose([p for _, p in reloaded["plain"]], [list(r.probability) for r in rows], atol=1e-6)


@pytest.mark.own_processes
def test_custom_layers_and_losses_registered_or_not_survive_fit_save_and_a_fresh_process(fresh_process):
    """Custom objects in a module shipped as users do (--py-files / addPyFile) train, save and reload: a registered
    layer, and a layer and a loss that were never registered, which ``model.fit`` trains as they are. Those two
    stopped the fit ("Keras does not know the class 'Shift'"), and a saved stage could not be loaded, as
    ``PipelineModel.load`` takes no ``custom_objects``: the stage's metadata now says where each is defined."""
    fitted, reloaded, halve, tmp = fresh_process
    pipeline, test = fitted["custom"]
    rows = pipeline.transform(test).orderBy("id").select("prediction", "probability").collect()
    assert isinstance(pipeline.stages[-1].model.layers[0], halve)
    stage = next((tmp / "custom" / "stages").glob("*_KerasModel_*"))
    metadata = json.loads(next((stage / "metadata").glob("part-*")).read_text())
    assert metadata["customObjects"] == {"Shift": "sparkeras_custom_layers:Shift",
                                         "doubled_crossentropy": "sparkeras_custom_layers:doubled_crossentropy"}
    assert [p for p, _ in reloaded["custom"]] == [r.prediction for r in rows]
    np.testing.assert_allclose([p for _, p in reloaded["custom"]], [list(r.probability) for r in rows], atol=1e-6)


def test_estimator_and_model_save_and_load_with_their_params(spark, tmp_path, monkeypatch):
    import mlflow
    from pyspark.ml import Estimator

    estimator = KerasEstimator(model=mlp(dim=4, classes=3, seed=2), epochs=3, batchSize=16, strategy="adag",
                               strategyOptions={"window": 4}, learningRate=0.01, metrics=["accuracy"])
    estimator.write().overwrite().save(str(tmp_path / "est"))
    loaded = KerasEstimator.load(str(tmp_path / "est"))
    assert isinstance(loaded, Estimator) and loaded.uid == estimator.uid
    for name in ("epochs", "batchSize", "strategy", "strategyOptions", "learningRate", "metrics"):
        assert loaded.getOrDefault(name) == estimator.getOrDefault(name), name
    for a, b in zip(loaded._keras_model.get_weights(), estimator._keras_model.get_weights()):
        np.testing.assert_array_equal(a, b)

    # With mlflowExperiment, the fit is an MLflow run that holds the fitted stage, reloadable as one.
    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts under ./mlruns
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    try:
        fitted = KerasEstimator(model=mlp(dim=4, classes=3, seed=2), epochs=1, numWorkers=2, featuresCol="features",
                                mlflowExperiment="estimators") \
            .fit(spark.createDataFrame([([float(i), 1.0, 2.0, 3.0], i % 3) for i in range(60)], ["features", "label"]))
        runs = mlflow.search_runs(experiment_names=["estimators"], output_format="list")
        assert len(runs) == 1 and runs[0].data.params["train_rows"] == "60" and "loss" in runs[0].data.metrics
        logged = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="spark_ml_model",
                                                     dst_path=str(tmp_path / "download"))
    finally:
        mlflow.set_tracking_uri(previous)
    fitted.write().overwrite().save(str(tmp_path / "model"))
    for path in (str(tmp_path / "model"), logged):
        again = KerasModel.load(path)
        assert again.getBatchSize() == fitted.getBatchSize() and again.getFeaturesCol() == "features"
        for a, b in zip(again.model.get_weights(), fitted.model.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_cross_validator_picks_the_setting_that_matters_with_grid_points_in_parallel(spark):
    """Sequential CV gives every fit the estimator's 2 workers; ``parallelism=2`` fits two grid
    points at once on one slot each, and must choose the same setting."""
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    pipeline = _pipeline(epochs=3)
    estimator = pipeline.getStages()[-1]
    grid = (ParamGridBuilder()
            .addGrid(estimator.learningRate, [1e-6, 0.01])   # 1e-6 cannot learn in 3 epochs
            .addGrid(estimator.batchSize, [64])
            .build())
    frame = _frame(spark, 1_200, seed=6).cache()
    chosen, workers = {}, {}
    for parallelism in (1, 2):
        cv = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, numFolds=2, seed=7,
                            parallelism=parallelism, collectSubModels=True,
                            evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
        model = cv.fit(frame)
        chosen[parallelism] = grid[int(np.argmax(model.avgMetrics))][estimator.learningRate]
        assert max(model.avgMetrics) > 0.85 and min(model.avgMetrics) < 0.7, (parallelism, model.avgMetrics)
        workers[parallelism] = {fitted.stages[-1].history.params["num_workers"]
                                for fold in model.subModels for fitted in fold}
    frame.unpersist()
    assert chosen == {1: 0.01, 2: 0.01}
    assert workers == {1: {2}, 2: {1}}


def test_train_validation_split_tunes_strategy_and_epochs(spark):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    pipeline = _pipeline(epochs=1)
    estimator = pipeline.getStages()[-1]
    estimator.setParams(learningRate=0.01)
    grid = (ParamGridBuilder()
            .addGrid(estimator.strategy, ["averaging", "adag"])
            .addGrid(estimator.epochs, [1, 6])
            .build())
    tvs = TrainValidationSplit(estimator=pipeline, estimatorParamMaps=grid, trainRatio=0.7, seed=3,
                               evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
    model = tvs.fit(_frame(spark, 1_000, seed=8))
    metrics = dict(zip([(g[estimator.strategy], g[estimator.epochs]) for g in grid], model.validationMetrics))
    assert metrics[("averaging", 6)] > metrics[("averaging", 1)] and metrics[("adag", 6)] > 0.85, metrics
    assert grid[int(np.argmax(model.validationMetrics))][estimator.epochs] == 6
    assert model.bestModel.stages[-1].model.count_params() == estimator._keras_model.count_params()


def test_estimator_errors_name_the_problem(spark):
    import keras

    with pytest.raises(InputError, match=r"KerasEstimator needs a model"):
        KerasEstimator().fit(spark.createDataFrame([([1.0], 0)], ["features", "label"]))
    raw = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(InputError, match="model is not compiled"):
        KerasEstimator(model=raw).fit(spark.createDataFrame([([1.0] * 4, 0)], ["features", "label"]))
    wrong = spark.createDataFrame([([1.0, 2.0], 0)] * 10, ["features", "label"])
    with pytest.raises(InputError, match=r"column 'features' holds 2 values per row, but model input .* expects 4"):
        KerasModel(model=mlp(dim=4, classes=3)).transform(wrong)
    from pyspark.ml.feature import VectorAssembler

    assembled = VectorAssembler(inputCols=["a", "b", "c"], outputCol="features").transform(
        spark.createDataFrame([(1.0, 2.0, 3.0)], ["a", "b", "c"]))
    with pytest.raises(InputError, match=r"column 'features' holds 3 values per row, but model input .* expects 4"):
        KerasModel(model=mlp(dim=4, classes=3)).transform(assembled)
    strings = spark.createDataFrame([("x", 0)], ["features", "label"])
    with pytest.raises(InputError, match="'features'"):
        KerasModel(model=mlp(dim=4, classes=3)).transform(strings)


def test_validation_indicator_col_holds_out_the_marked_rows_and_scores_them_every_epoch(spark):
    """Spark ML's ``validationIndicatorCol``: the estimator trains on the unmarked rows and reports ``val_``
    figures on the marked ones, as a SparkModel fit given those rows as validation data does."""
    from pyspark.sql import functions as F

    from sparkeras import SparkModel

    x, y = blobs(600, dim=4, classes=3, seed=3)
    frame = spark.createDataFrame([(r.tolist(), int(label), i % 4 == 0) for i, (r, label) in enumerate(zip(x, y))],
                                  ["features", "label", "held_out"]).repartition(2)
    fitted = KerasEstimator(model=mlp(dim=4, classes=3, seed=2), epochs=2, numWorkers=2, seed=1,
                            validationIndicatorCol="held_out").fit(frame)
    want = SparkModel(mlp(dim=4, classes=3, seed=2), num_workers=2, seed=1).fit(
        frame.filter(~F.col("held_out")), validation_data=frame.filter(F.col("held_out")), epochs=2, verbose=0)
    assert fitted.history.history == want.history and len(want.history["val_loss"]) == 2

    estimator = KerasEstimator(model=mlp(dim=4, classes=3), numWorkers=2)
    with pytest.raises(InputError, match=r"validationIndicatorCol='label' has type bigint; it must be boolean"):
        estimator.copy({estimator.validationIndicatorCol: "label"}).fit(frame)
    with pytest.raises(InputError, match=r"validationIndicatorCol='marked' is not a column of the training data; "
                                         r"it has features, label, held_out"):
        estimator.copy({estimator.validationIndicatorCol: "marked"}).fit(frame)
    with pytest.raises(InputError, match=r"Set either validationIndicatorCol or validationSplit, not both"):
        estimator.copy({estimator.validationIndicatorCol: "held_out", estimator.validationSplit: 0.2}).fit(frame)


def test_the_same_transform_runs_on_a_streaming_dataframe(spark, tmp_path):
    from pyspark.sql import functions as F

    source = str(tmp_path / "incoming")
    batch = spark.createDataFrame([(i, [float(i % 5), 1.0, -1.0, 0.5]) for i in range(200)], ["id", "features"])
    batch.repartition(3).write.parquet(source)
    model = KerasModel(model=mlp(dim=4, classes=3, seed=8))
    stream = spark.readStream.schema(batch.schema).parquet(source)
    query = (model.transform(stream).writeStream.format("memory").queryName("sparkeras_stream")
             .trigger(availableNow=True).start())
    query.awaitTermination(120)
    assert query.exception() is None
    streamed = {r.id: r.prediction for r in spark.table("sparkeras_stream").collect()}
    expected = {r.id: r.prediction for r in model.transform(batch).select("id", "prediction").collect()}
    assert len(streamed) == 200 and streamed == expected
    assert spark.table("sparkeras_stream").where(F.col("probability").isNull()).count() == 0


def test_class_weight_param_survives_persistence_and_lifts_a_rare_class(spark, tmp_path):
    """``classWeight`` goes through Spark ML's JSON metadata (keys come back as strings) and still applies."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8))
    y = (x[:, 0] + 0.8 * rng.normal(size=3000) > 1.6).astype(int)  # about 8% positives
    df = spark.createDataFrame([(r.tolist(), int(c)) for r, c in zip(x, y)], ["features", "label"]).cache()

    def recall(estimator):
        rows = estimator.fit(df).transform(df).select("label", "prediction").collect()
        return float(np.mean([r.prediction == 1.0 for r in rows if r.label == 1]))

    weighted = KerasEstimator(model=mlp(dim=8, classes=2, seed=3), epochs=3, numWorkers=2,
                              classWeight={0: 1.0, 1: float((y == 0).sum() / (y == 1).sum())})
    weighted.write().overwrite().save(str(tmp_path / "weighted"))
    loaded = KerasEstimator.load(str(tmp_path / "weighted"))
    assert loaded._class_weight() == pytest.approx(weighted._class_weight())
    plain = recall(KerasEstimator(model=mlp(dim=8, classes=2, seed=3), epochs=3, numWorkers=2))
    assert recall(loaded) > plain + 0.2
    with pytest.raises(InputError, match=r"class_weight keys must be class ids .* got 'fraud'"):
        KerasEstimator(model=mlp(dim=8, classes=2), classWeight={"fraud": 2.0}).fit(df)
    df.unpersist()


def _binary_rows(spark, n=400, seed=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 0).astype(np.float32)
    return x, y, spark.createDataFrame([(i, r.tolist(), float(t)) for i, (r, t) in enumerate(zip(x, y))],
                                       ["id", "features", "label"])


def test_transform_of_a_binary_classifier_gives_classes_and_probabilities_as_spark_ml_does(spark, tmp_path):
    """One unit with binary crossentropy is a classifier: ``prediction`` is its class, so Spark ML's
    evaluators score it, ``probability`` is ``[1 - p, p]`` (the sigmoid of a logit with
    ``from_logits=True``), and ``rawPrediction`` the Vector ``[1 - p, p]`` or ``[-z, z]`` that
    ``BinaryClassificationEvaluator()`` reads by default (before, it failed: "No such struct field
    `rawPrediction`"); the same after a save and load. One unit with another loss stays a regression."""
    import keras
    from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
    from sklearn.metrics import roc_auc_score

    x, y, frame = _binary_rows(spark)
    for activation, loss in (("sigmoid", "binary_crossentropy"),
                             (None, keras.losses.BinaryCrossentropy(from_logits=True))):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation=activation)])
        net.compile(keras.optimizers.Adam(0.05), loss)
        net.fit(x, y, epochs=5, verbose=0)
        out = net.predict(x, verbose=0)[:, 0].astype(np.float64)
        p = out if activation else 1.0 / (1.0 + np.exp(-out))
        stage = KerasModel(model=net)
        stage.write().overwrite().save(str(tmp_path / "binary"))
        for model in (stage, KerasModel.load(str(tmp_path / "binary"))):
            scored = model.transform(frame)
            assert dict(scored.dtypes)["prediction"] == "double"
            rows = scored.orderBy("id").select("prediction", "probability").collect()
            np.testing.assert_array_equal([r.prediction for r in rows], (p > 0.5).astype(np.float64))
            np.testing.assert_allclose([r.probability for r in rows], np.stack([1 - p, p], axis=1), atol=1e-5)
            assert dict(scored.dtypes)["rawPrediction"] == "vector"
            raw = np.array([r.rawPrediction.toArray() for r in scored.orderBy("id").select("rawPrediction").collect()])
            np.testing.assert_allclose(raw, np.stack([1 - p, p] if activation else [-out, out], axis=1), atol=1e-5)
            accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(scored)
            assert accuracy == pytest.approx(np.mean((p > 0.5) == y)) and accuracy > 0.9, activation
            auc = BinaryClassificationEvaluator().evaluate(scored)
            assert auc == pytest.approx(roc_auc_score(y, p), abs=2e-3) and auc > 0.95, activation
    unscored = KerasModel(model=net, rawPredictionCol="").transform(frame)
    assert "rawPrediction" not in unscored.columns and "probability" in unscored.columns

    keras.utils.set_random_seed(0)
    regression = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    regression.compile("adam", "mse")
    scored = KerasModel(model=regression).transform(frame)
    assert "probability" not in scored.columns and "rawPrediction" not in scored.columns
    np.testing.assert_allclose([r.prediction for r in scored.orderBy("id").select("prediction").collect()],
                               regression.predict(x, verbose=0)[:, 0], atol=1e-5)


def test_transform_of_a_softmax_on_logits_gives_probabilities(spark):
    """Several units trained ``from_logits=True``: ``probability`` is their softmax, not the logits, and
    ``rawPrediction``, made for more than two classes when its Param is set, the logits."""
    import keras

    x, y = blobs(300, dim=4, classes=3, noise=0.5, seed=8)
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    net.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x, y, epochs=5, verbose=0)
    logits = net.predict(x, verbose=0).astype(np.float64)
    want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = spark.createDataFrame([(i, r.tolist()) for i, r in enumerate(x)], ["id", "features"])
    assert "rawPrediction" not in KerasModel(model=net).transform(frame).columns  # 3 classes: only when asked
    rows = KerasModel(model=net, rawPredictionCol="rawPrediction").transform(frame).orderBy("id").collect()
    np.testing.assert_allclose([r.probability for r in rows], want, atol=1e-5)
    np.testing.assert_allclose([r.rawPrediction.toArray() for r in rows], logits, atol=1e-5)
    assert [r.prediction for r in rows] == logits.argmax(axis=1).astype(np.float64).tolist()


def test_a_multi_label_classifier_gives_the_set_of_labels_as_spark_ml_reads_it(spark):
    """Several units trained with binary crossentropy are independent labels. ``prediction`` is the array of
    the labels above 0.5 (a logit of 0), as ``MultilabelClassificationEvaluator`` reads it, and
    ``probability`` is each label's own probability; the SQL function's ``class`` output is the same set.
    Trained through ``KerasEstimator`` from an array label column (sigmoid), and in plain Keras (logits)."""
    import keras
    from pyspark.ml.evaluation import MultilabelClassificationEvaluator

    from sparkeras import register_udf

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 6)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < -0.5], axis=1).astype(np.float32)
    sets = [[float(i) for i in np.flatnonzero(t)] for t in y]
    frame = spark.createDataFrame([(i, r.tolist(), t.tolist(), s) for i, (r, t, s) in enumerate(zip(x, y, sets))],
                                  "id INT, features ARRAY<FLOAT>, label ARRAY<FLOAT>, label_set ARRAY<DOUBLE>")
    keras.utils.set_random_seed(0)
    sigmoid = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="sigmoid")])
    sigmoid.compile(keras.optimizers.Adam(0.05), "binary_crossentropy")
    fitted = KerasEstimator(model=sigmoid, epochs=6, batchSize=16, numWorkers=2, labelCol="label").fit(frame)
    logits = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    logits.compile(keras.optimizers.Adam(0.05), keras.losses.BinaryCrossentropy(from_logits=True))
    logits.fit(x, y, epochs=6, batch_size=16, verbose=0)
    for stage, from_logits in ((fitted, False), (KerasModel(model=logits), True)):
        out = stage.model.predict(x, verbose=0).astype(np.float64)
        p = 1.0 / (1.0 + np.exp(-out)) if from_logits else out
        want = [[float(i) for i in np.flatnonzero(row > 0.5)] for row in p]
        scored = stage.transform(frame)
        assert dict(scored.dtypes)["prediction"] == "array<double>" and "rawPrediction" not in scored.columns
        rows = scored.orderBy("id").select("prediction", "probability").collect()
        assert [r.prediction for r in rows] == want, from_logits
        np.testing.assert_allclose([r.probability for r in rows], p, atol=1e-5)
        subset = MultilabelClassificationEvaluator(labelCol="label_set", metricName="subsetAccuracy").evaluate(scored)
        assert subset == pytest.approx(np.mean(((p > 0.5) == y.astype(bool)).all(axis=1))) and subset > 0.8, from_logits
        register_udf(spark, "labels_of", stage.model, output="class")
        frame.createOrReplaceTempView("multi_label_rows")
        assert [r[0] for r in spark.sql("SELECT labels_of(features) FROM multi_label_rows ORDER BY id").collect()] == want


def test_callbacks_stop_each_fit_early_even_when_grid_points_fit_at_once(spark, tmp_path, caplog):
    """``callbacks=[EarlyStopping]`` with ``validationSplit`` stops every fit, each on its own copy: two grid
    points fitted at once by ``TrainValidationSplit(parallelism=2)`` both stop. ``save`` leaves them out, saying so."""
    import logging

    import keras
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import ParamGridBuilder, TrainValidationSplit

    x, y = blobs(600, dim=4, classes=3, seed=6)
    df = spark.createDataFrame([(r.tolist(), int(c)) for r, c in zip(x, y)], ["features", "label"])
    never_better = keras.callbacks.EarlyStopping(monitor="val_loss", min_delta=10.0, patience=1)
    estimator = KerasEstimator(model=mlp(dim=4, classes=3, seed=2), epochs=10, batchSize=32, numWorkers=2,
                               validationSplit=0.2, callbacks=[never_better])
    assert len(estimator.fit(df).history.history["loss"]) == 2  # no epoch improves by 10: stops after patience 1

    grid = ParamGridBuilder().addGrid(estimator.learningRate, [0.001, 0.01]).build()
    split = TrainValidationSplit(estimator=estimator, estimatorParamMaps=grid, parallelism=2, collectSubModels=True,
                                 evaluator=MulticlassClassificationEvaluator(metricName="accuracy"), seed=1).fit(df)
    assert [len(m.history.history["loss"]) for m in split.subModels] == [2, 2]
    assert never_better.model is None  # the fits ran copies

    with caplog.at_level(logging.WARNING, logger="sparkeras"):
        estimator.write().overwrite().save(str(tmp_path / "with_callbacks"))
    assert "KerasEstimator.save leaves out its callbacks" in caplog.text
    loaded = KerasEstimator.load(str(tmp_path / "with_callbacks"))
    assert not loaded.isDefined(loaded.callbacks) and loaded.getOrDefault(loaded.epochs) == 10
    with pytest.raises(InputError, match=r"callbacks must be a list of keras.callbacks.Callback objects, got "
                                         r"\['early'\]"):
        KerasEstimator(model=mlp(dim=4, classes=3), callbacks=["early"])


def test_string_indexed_labels_name_the_classes_and_a_set_indexed_apart_is_refused(spark, tmp_path):
    """``StringIndexer`` writes its labels into the label column's metadata; they become the model's classes
    (``SparkModel.classes``, ``KerasModel.getClasses()``, kept by ``save``). A test set indexed by a
    ``StringIndexer`` fitted on it alone numbers the labels by its own frequencies, so the same index means
    another class: ``evaluate`` refuses it, naming the fix, where before it scored the model silently wrong."""
    from pyspark.ml.feature import IndexToString, StringIndexer

    from sparkeras import SparkModel

    x, y = blobs(360, dim=4, classes=3, noise=0.5, seed=5)
    species = np.array(["oak", "elm", "ash"])[y]
    rows = [(r.tolist(), str(s)) for r, s in zip(x, species)]
    frame = spark.createDataFrame(rows, "features array<float>, species string")
    indexer = StringIndexer(inputCol="species", outputCol="label").fit(frame)
    sm = SparkModel(mlp(dim=4, classes=3, hidden=16, seed=3), num_workers=1)
    sm.fit(indexer.transform(frame), epochs=15, batch_size=16, verbose=0)
    assert sm.classes == list(indexer.labels)
    sm.save(str(tmp_path / "trees.keras"))
    assert SparkModel.load(str(tmp_path / "trees.keras")).classes == list(indexer.labels)

    rare = indexer.labels[0]  # the most frequent class in training becomes the rarest in this test set
    kept = [r for r in rows if r[1] != rare] + [r for r in rows if r[1] == rare][:10]
    test = spark.createDataFrame(kept, "features array<float>, species string")
    own = StringIndexer(inputCol="species", outputCol="label").fit(test)
    assert list(own.labels) != list(indexer.labels)
    with pytest.raises(InputError, match=r"The evaluation data's label column 'label' numbers the classes "
                                         r".*the same index would mean different classes\. Index every set "
                                         r"with the same fitted StringIndexerModel"):
        sm.evaluate(own.transform(test))
    assert sm.evaluate(indexer.transform(test))["accuracy"] > 0.8

    stage = KerasEstimator(model=mlp(dim=4, classes=3, hidden=16, seed=3), epochs=1, numWorkers=1).fit(
        indexer.transform(frame))
    assert stage.getClasses() == list(indexer.labels)
    named = IndexToString(inputCol="prediction", outputCol="predicted_species").transform(stage.transform(
        indexer.transform(frame)))  # no labels=: the prediction column carries them, as StringIndexer's does
    assert all(r.predicted_species == indexer.labels[int(r.prediction)] for r in named.collect())


def test_a_stage_whose_custom_objects_cannot_be_imported_says_where_they_were_defined():
    from sparkeras.serialization import import_custom_objects

    with pytest.raises(InputError) as failed:
        import_custom_objects({"Shift": "layers_nobody_shipped:Shift"}, "The KerasModel at /models/m")
    assert str(failed.value) == (
        "The KerasModel at /models/m uses 'Shift', defined in 'layers_nobody_shipped' when it was saved, which cannot "
        "be found here (No module named 'layers_nobody_shipped'); make module 'layers_nobody_shipped' importable "
        "here (and ship it to the executors).")
    with pytest.raises(InputError, match=r"uses 'Gone', defined in '__main__' when it was saved, which cannot be "
                                         r"found here \(.*\); define it before loading, as when it was saved\."):
        import_custom_objects({"Gone": "__main__:Gone"}, "The KerasModel at /models/m")
