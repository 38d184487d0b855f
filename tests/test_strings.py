"""String model inputs (TextVectorization, StringLookup) fed from DataFrame string columns."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import keras

from sparkeras import InputError, SparkModel, register_udf
from sparkeras.data.strings import string_split

POSITIVE = ["good", "great", "fun", "excellent", "love", "nice"]
NEGATIVE = ["bad", "awful", "boring", "poor", "hate", "dull"]
FILLER = ["movie", "film", "the", "a", "plot", "actor", "story", "was", "is", "very"]
COLOURS = ["red", "green", "blue", "yellow"]


def reviews(n: int, seed: int = 0) -> list[tuple[str, str, float, int]]:
    """(review, colour, x, label): the label is the review's sentiment, flipped for blue rows.

    Neither the words nor the colour alone predict the label, so a model
    that learns it reads both string inputs.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        sentiment = int(rng.integers(0, 2))
        words = list(rng.choice(FILLER, 5)) + [str(rng.choice(POSITIVE if sentiment else NEGATIVE))]
        rng.shuffle(words)
        colour = str(rng.choice(COLOURS))
        rows.append((" ".join(words), colour, float(rng.normal()), sentiment ^ int(colour == "blue")))
    return rows


def review_model(texts: list[str], sequence: bool = True) -> keras.Model:
    """A dict-input model: review text (TextVectorization), colour (StringLookup), a number."""
    keras.utils.set_random_seed(3)
    if sequence:
        vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    else:
        vectorize = keras.layers.TextVectorization(max_tokens=40, output_mode="multi_hot")
    vectorize.adapt(np.array(texts))
    review = keras.Input(shape=(), dtype="string", name="review")
    colour = keras.Input(shape=(1,), dtype="string", name="colour")
    x = keras.Input(shape=(1,), name="x")
    words = vectorize(review)
    if sequence:
        words = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 16)(words))
    hot = keras.layers.StringLookup(vocabulary=COLOURS, output_mode="one_hot")(colour)
    h = keras.layers.Concatenate()([keras.layers.Dense(16, activation="relu")(words), hot, x])
    h = keras.layers.Dense(32, activation="relu")(h)
    model = keras.Model({"review": review, "colour": colour, "x": x},
                        keras.layers.Dense(1, activation="sigmoid")(h))
    model.compile(keras.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    return model


FEATURES = {"review": "review", "colour": "colour", "x": "x"}


@pytest.fixture(scope="module")
def review_frames(spark):
    rows = reviews(1600)
    frame = spark.createDataFrame(rows, ["review", "colour", "x", "label"]).repartition(2)
    train, test = frame.randomSplit([0.8, 0.2], seed=1)
    return rows, train.cache(), test.cache()


def driver_predictions(model, frame):
    pdf = frame.toPandas()
    return np.asarray(model.predict_on_batch({
        "review": pdf.review.to_numpy(dtype=object), "colour": pdf.colour.to_numpy(dtype=object).reshape(-1, 1),
        "x": pdf.x.to_numpy().reshape(-1, 1)})).ravel(), pdf.label.to_numpy()


@pytest.mark.parametrize("strategy,sequence", [("averaging", True), ("allreduce", False)])
def test_fit_evaluate_predict_from_string_columns(spark, review_frames, strategy, sequence):
    rows, train, test = review_frames
    model = review_model([r[0] for r in rows], sequence)
    history = SparkModel(model, strategy, num_workers=2).fit(
        train, epochs=6, batch_size=32, features_col=FEATURES, label_col="label", validation_data=test, verbose=0)
    assert history.history["val_accuracy"][-1] > 0.95, history.history
    trainer = SparkModel(model, strategy, num_workers=2)
    scores = trainer.evaluate(test, features_col=FEATURES, label_col="label")
    expected, labels = driver_predictions(model, test)
    assert scores["accuracy"] == pytest.approx(np.mean((expected > 0.5) == labels), abs=1e-6)
    predicted = trainer.predict(test, features_col=FEATURES).toPandas()
    np.testing.assert_allclose(predicted.prediction.to_numpy(), expected, atol=1e-5)
    # The user's model, with its string layers, still saves and reloads after being split for training.
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"sparkeras-strings-{strategy}.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_allclose(driver_predictions(reloaded, test)[0], expected, atol=1e-6)


def test_sql_function_takes_string_columns(spark, review_frames):
    rows, _, test = review_frames
    model = review_model([r[0] for r in rows])
    register_udf(spark, "score_review", model)
    test.createOrReplaceTempView("reviews_for_sql")
    # Inputs by position in model.inputs' order: a dict's sorted keys (colour, review, x).
    got = spark.sql("SELECT score_review(colour, review, x) AS p FROM reviews_for_sql").toPandas()
    np.testing.assert_allclose(np.array([np.ravel(p)[0] for p in got.p]), driver_predictions(model, test)[0],
                               atol=1e-6)


def test_estimator_pipeline_on_a_text_column_saves_and_reloads(spark, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import StringIndexer

    from sparkeras.ml import KerasEstimator

    rows = reviews(1200, seed=4)
    frame = spark.createDataFrame([(r[0], "pos" if r[3] ^ (r[1] == "blue") else "neg") for r in rows],
                                  ["text", "sentiment"])
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    vectorize.adapt(np.array([r[0] for r in rows]))
    text = keras.Input(shape=(), dtype="string", name="text")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(2, activation="softmax")(pooled))
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    estimator = KerasEstimator(model=model, featuresCol="text", labelCol="label", epochs=6, batchSize=32,
                               numWorkers=2)
    fitted = Pipeline(stages=[StringIndexer(inputCol="sentiment", outputCol="label"), estimator]).fit(frame)
    scored = fitted.transform(frame).select("label", "prediction", "probability").toPandas()
    assert np.mean(scored.label == scored.prediction) > 0.95
    fitted.save(str(tmp_path / "pipeline"))
    again = PipelineModel.load(str(tmp_path / "pipeline")).transform(frame).select("probability").toPandas()
    np.testing.assert_allclose(np.stack(again.probability), np.stack(scored.probability), atol=1e-6)
    # The estimator trained a copy: the user's model and its vocabulary are as they were.
    assert model.layers[1].get_vocabulary() == vectorize.get_vocabulary()


def test_split_shares_the_variables_and_leaves_the_model_whole():
    rows = reviews(200)
    model = review_model([r[0] for r in rows])
    split = string_split(model)
    assert {id(v) for v in split.trunk.weights} == {id(v) for v in model.weights}
    assert split.trunk.optimizer is model.optimizer
    assert [str(t.dtype) for t in split.trunk.inputs if "string" in str(t.dtype)] == []
    keras.saving.serialize_keras_object(model)  # failed once the trunk was built with Keras' graph cloning
    assert string_split(model) is split  # kept while the compilation is the same
    ids = split.prefixes["review"](np.array(["good movie", "awful plot"], dtype=object))
    assert ids.shape == (2, 6) and ids.dtype.kind == "i" and (ids[:, :2] > 1).all() and (ids[:, 2:] == 0).all()


@pytest.mark.parametrize("mode", ["int", "multi_hot", "tf_idf"])
def test_estimator_copies_keep_adapted_vocabularies(mode):
    from sparkeras.model import fresh_copy

    vectorize = keras.layers.TextVectorization(max_tokens=20, output_mode=mode,
                                               output_sequence_length=4 if mode == "int" else None)
    vectorize.adapt(["a b c", "a d", "e f a"])
    text = keras.Input(shape=(), dtype="string")
    model = keras.Model(text, keras.layers.Dense(1)(keras.layers.Flatten()(vectorize(text))))
    model.compile("adam", "mse")
    copy = fresh_copy(model)
    docs = np.array(["a b", "c d e unseen", "f"], dtype=object)
    np.testing.assert_allclose(np.asarray(copy.layers[1](docs)), np.asarray(vectorize(docs)), atol=1e-6)
    np.testing.assert_allclose(np.asarray(copy.predict_on_batch(docs)), np.asarray(model.predict_on_batch(docs)),
                               atol=1e-6)


def _string_model(layer: keras.layers.Layer, shape=(), pooled: bool = False) -> keras.Model:
    text = keras.Input(shape=shape, dtype="string", name="text")
    if pooled:  # rows of varying length
        h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(10, 4)(layer(text)))
    else:
        h = keras.layers.Flatten()(layer(text))
    out = keras.layers.Dense(1)(h)
    model = keras.Model(text, out)
    model.compile("adam", "mse")
    return model


class _WeightedStrings(keras.layers.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=(), initializer="ones")

    def call(self, strings):
        import tensorflow as tf

        return tf.cast(tf.strings.length(strings), "float32")[:, None] * self.scale

    def compute_output_shape(self, shape):
        return (shape[0], 1)


def test_a_vocabulary_adapted_again_is_packed_again():
    from pyspark.sql import types as T

    from sparkeras.data.columns import resolve_columns
    from sparkeras.data.reuse import packing_key

    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=3)
    vectorize.adapt(["a b", "c"])
    model = _string_model(vectorize)
    schema = T.StructType([T.StructField("s", T.StringType()), T.StructField("label", T.DoubleType())])
    columns = resolve_columns(model, schema, "s", "label")
    first = string_split(model)
    assert string_split(model) is first
    vectorize.adapt(["d e f", "g"])
    second = string_split(model)
    assert second is not first
    assert packing_key(first.packed(columns)) != packing_key(second.packed(columns))  # no kept packing reused
    np.testing.assert_array_equal(second.prefixes["text"](np.array(["d e", "a"], dtype=object)),
                                  np.asarray(vectorize(np.array(["d e", "a"], dtype=object))))


def test_a_scripts_own_string_layer_reaches_the_packing_tasks(spark, monkeypatch):
    """A string layer class defined in the driver's ``__main__`` travels with the layers the packing runs."""
    import tensorflow as tf

    class Lowered(keras.layers.Layer):  # not registered: Keras names it by its class name
        def call(self, strings):
            return tf.strings.lower(strings)

    Lowered.__module__ = "__main__"
    monkeypatch.setattr(sys.modules["__main__"], "Lowered", Lowered, raising=False)
    vectorize = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=3, standardize=None)
    vectorize.adapt(["good movie", "bad movie"])
    text = keras.Input(shape=(), dtype="string")
    ids = vectorize(Lowered()(text))
    model = keras.Model(text, keras.layers.Dense(1, activation="sigmoid")(
        keras.layers.Flatten()(keras.layers.Embedding(10, 4)(ids))))
    model.compile(keras.optimizers.Adam(0.05), "binary_crossentropy", metrics=["accuracy"])
    frame = spark.createDataFrame([("GOOD Movie" if i % 2 else "Bad MOVIE", float(i % 2)) for i in range(200)],
                                  ["text", "label"])
    history = SparkModel(model, num_workers=2).fit(frame, epochs=4, features_col="text", verbose=0)
    assert history.history["accuracy"][-1] == 1.0  # only lower-cased words are in the vocabulary


def test_string_inputs_that_cannot_be_packed_are_refused():
    ragged = keras.layers.TextVectorization(max_tokens=10)
    ragged.adapt(["a b", "c"])
    with pytest.raises(InputError, match="output_sequence_length=.*multi_hot"):
        string_split(_string_model(ragged, pooled=True))
    with pytest.raises(InputError, match="Layer '.*' has trainable weights and takes the strings of input 'text'"):
        string_split(_string_model(_WeightedStrings()))


def test_string_column_errors_name_the_column(spark):
    lookup = keras.layers.StringLookup(vocabulary=["a", "b"], output_mode="one_hot")
    frame = spark.createDataFrame([("a", 1.0, 0.0), (None, 2.0, 1.0)], "s string, v double, label double")
    model = _string_model(lookup)
    trainer = SparkModel(model, num_workers=1)
    with pytest.raises(InputError, match="Model input 'text' takes strings .* column 'v' has type double"):
        trainer.fit(frame, features_col="v", verbose=0)
    with pytest.raises(InputError, match="column 's' has 1 null rows; fill them"):
        trainer.fit(frame, features_col="s", verbose=0)
    numeric = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1)])
    numeric.compile("adam", "mse")
    with pytest.raises(InputError, match=r"Column 's' has type string.*keras.Input\(shape=\(\), dtype='string'\)"):
        SparkModel(numeric, num_workers=1).fit(frame, features_col="s", verbose=0)
    with pytest.raises(InputError, match="one string per row"):
        SparkModel(_string_model(keras.layers.StringLookup(vocabulary=["a"]), shape=(2,)), num_workers=1).fit(
            frame, features_col="s", verbose=0)


def test_other_backends_are_told_to_use_tensorflow():
    code = ("import keras, pytest\n"
            "from sparkeras import InputError\n"
            "from sparkeras.data.strings import string_split\n"
            "t = keras.Input(shape=(), dtype='string')\n"
            "m = keras.Model(t, keras.layers.Dense(1)(keras.layers.StringLookup(vocabulary=['a'], "
            "output_mode='one_hot')(t)))\n"
            "with pytest.raises(InputError, match=\"need TensorFlow's string ops; this process uses the 'jax' "
            "backend. Set KERAS_BACKEND=tensorflow\"):\n"
            "    string_split(m)\n"
            "from pyspark.sql import types as T\n"
            "from sparkeras.data.columns import resolve_columns\n"
            "schema = T.StructType([T.StructField('s', T.StringType())])\n"
            "with pytest.raises(InputError, match=\"need TensorFlow's string ops\"):\n"
            "    resolve_columns(m, schema, 's', None)  # prediction binds the columns too\n"
            "print('refused')\n")
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "jax"},
                          capture_output=True, text=True, timeout=300)
    assert "refused" in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("workers_per_trial", [1, 2])
def test_tune_trials_take_string_columns(spark, review_frames, workers_per_trial):
    import sparkeras

    rows, train, _ = review_frames
    texts = [r[0] for r in rows]

    def build(params):
        model = review_model(texts, sequence=False)
        model.optimizer.learning_rate.assign(params["learning_rate"])
        return model

    study = sparkeras.tune(build, train, search_space={"learning_rate": [0.01, 0.02]}, n_trials=2, epochs=4,
                           batch_size=32, metric="val_accuracy", direction="maximize", features_col=FEATURES,
                           workers_per_trial=workers_per_trial, verbose=0, seed=0)
    assert len(study.trials) == 2
    assert study.best_value > 0.95, [t.value for t in study.trials]


def test_numpy_strings_fit_and_predict(spark):
    rows = reviews(600, seed=5)
    texts = np.array([r[0] for r in rows])  # a numpy str_ array, as np.array(list_of_str) makes it
    labels = np.array([r[3] ^ (r[1] == "blue") for r in rows], dtype=np.float32)  # the sentiment alone
    vectorize = keras.layers.TextVectorization(max_tokens=40, output_sequence_length=6)
    vectorize.adapt(texts)
    text = keras.Input(shape=(), dtype="string")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(1, activation="sigmoid")(pooled))
    model.compile(keras.optimizers.Adam(0.02), "binary_crossentropy", metrics=["accuracy"])
    trainer = SparkModel(model, num_workers=2)
    history = trainer.fit(texts, labels, epochs=8, batch_size=32, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    predicted = trainer.predict(texts.astype(object).reshape(-1, 1))
    np.testing.assert_allclose(np.ravel(predicted), np.ravel(model.predict_on_batch(texts.astype(object))),
                               atol=1e-5)
    with pytest.raises(InputError, match=r"Array 'features' has dtype object and holds \['dict'\] values, which "
                                         r"are neither numbers nor strings"):
        trainer.fit(np.array([{"a": 1}, "b"], dtype=object), np.array([0.0, 1.0]), verbose=0)
