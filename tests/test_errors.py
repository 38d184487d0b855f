"""Every bad input gets a clear error that names what is wrong, before training starts."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import blobs, clone, mlp, score_driver_rows_on_the_workers
from sparkeras import InputError, SparkModel, WorkerError


def _df(spark, x, y, features_type="ARRAY<DOUBLE>"):
    return spark.createDataFrame([(x[i].tolist(), int(y[i])) for i in range(len(x))],
                                 f"features {features_type}, label INT")


def test_an_uncompiled_model_predicts_and_is_refused_where_it_needs_its_loss(spark):
    """As Keras' own: an uncompiled model (a featurizer, say) scores; fit and evaluate say to compile it."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x, y = blobs(40, dim=4, classes=2)
    sm = SparkModel(model, num_workers=2)
    np.testing.assert_allclose(sm.predict(x), model.predict(x, verbose=0), atol=1e-6)
    frame = _df(spark, x, y)
    scored = sm.predict(frame).collect()
    np.testing.assert_allclose([r.prediction for r in scored], model.predict(np.array([r.features for r in scored]),
                                                                             verbose=0), atol=1e-5)
    for call in ("fit", "evaluate"):
        with pytest.raises(InputError, match=rf"not compiled, and SparkModel.{call} needs its loss: call "
                                             r"model.compile\(optimizer=..., loss=..., metrics=\[...\]\) first"):
            getattr(sm, call)(frame)
    with pytest.raises(InputError, match=r"SparkModel needs a keras.Model, got str"):
        SparkModel("model.keras")


def test_row_size_mismatch_names_both_sizes(spark):
    x, y = blobs(50, dim=12)
    # the input is named after its layer, as model.summary() shows it, never an internal "keras_tensor_N"
    with pytest.raises(InputError, match=r"'features' has rows of 12 values, but model input 'input_layer(_\d+)?' "
                                         r"expects 16 values per row \(shape \(16,\)\)"):
        SparkModel(mlp(dim=16), num_workers=2).fit(_df(spark, x, y), verbose=0)


def test_a_label_of_the_wrong_width_names_the_output_layer(spark):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="price_and_volume")])
    model.compile(optimizer="adam", loss="mse")
    df = spark.createDataFrame([([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0])] * 8, "features ARRAY<DOUBLE>, label ARRAY<DOUBLE>")
    with pytest.raises(InputError, match=r"'label' has rows of 3 values, but model output 'price_and_volume' "
                                         r"expects 2 values per row") as info:
        SparkModel(model, num_workers=2).fit(df, verbose=0)
    assert "keras_tensor" not in str(info.value)


def test_missing_column_lists_existing_ones(spark):
    x, y = blobs(50)
    with pytest.raises(InputError, match=r"Column 'pixels' \(features_col\) is not in the data; the columns are "
                                         r"\['features', 'label'\]\. Pass features_col= with one of them \(an array "
                                         r"or vector column\), or with a list of numeric columns, one per input value"):
        SparkModel(mlp(), num_workers=2).fit(_df(spark, x, y), features_col="pixels", verbose=0)
    with pytest.raises(InputError, match=r"Column 'digit' \(label_col\) is not in the data; the columns are "
                                         r"\['features', 'label'\]\. Pass label_col= with one of them\.$"):
        SparkModel(mlp(), num_workers=2).fit(_df(spark, x, y), label_col="digit", verbose=0)


def test_non_numeric_features(spark):
    df = spark.createDataFrame([("a", 1), ("b", 0)], "features STRING, label INT")
    with pytest.raises(InputError, match=r"Column 'features' has type string, which is not numeric.*"
                                         r"StringIndexer\(inputCol='features'\).*Tokenizer then HashingTF"):
        SparkModel(mlp(), num_workers=1).fit(df, verbose=0)
    with pytest.raises(InputError, match=r"Array 'features' has dtype <U1, which is not numeric"):
        SparkModel(mlp(), num_workers=1).fit(np.array([["a"] * 16]), np.array([1]), verbose=0)


def test_text_labels_point_to_string_indexer(spark):
    x, _ = blobs(4)
    df = spark.createDataFrame([(r.tolist(), c) for r, c in zip(x, ["cat", "dog", "cat", "dog"])],
                               "features ARRAY<FLOAT>, species STRING")
    with pytest.raises(InputError, match=r"Column 'species' has type string, which is not numeric\. Label must "
                                         r"be numeric.*StringIndexer\(inputCol='species'.*label_col='label_index'"):
        SparkModel(mlp(), num_workers=1).fit(df, label_col="species", verbose=0)


def test_labels_out_of_range_for_the_output_layer(spark):
    x, y = blobs(60)
    y[3] = 12
    y[5] = -1
    with pytest.raises(InputError, match=r"ranges from -1 to 12, but output .* has 10 units, so class ids must lie in 0\.\.9"):
        SparkModel(mlp(), num_workers=2).fit(x, y, verbose=0)
    with pytest.raises(InputError, match=r"3 non-integer values"):
        SparkModel(mlp(), num_workers=2).fit(x, np.r_[[0.5, 1.5, 2.5], np.zeros(57)], verbose=0)


def test_class_index_labels_with_a_one_hot_loss(spark):
    import keras

    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x, y = blobs(40)
    with pytest.raises(InputError, match=r"label column 'label' holds one class index per row, but the loss "
                                         r"'categorical_crossentropy' expects one-hot rows of 10 values"):
        SparkModel(model, num_workers=2).fit(x, y, verbose=0)


def test_nan_and_inf_are_counted(spark):
    x, y = blobs(80)
    x[1, 2] = np.nan
    x[7, 0] = np.inf
    x[9, 9] = np.nan
    with pytest.raises(InputError, match=r"column 'features' holds 3 NaN or infinite values"):
        SparkModel(mlp(), num_workers=2).fit(_df(spark, x, y), verbose=0)


def test_nan_in_labels(spark):
    x, _ = blobs(40, dim=3)
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    y = np.ones(40)
    y[4] = np.nan
    with pytest.raises(InputError, match=r"label column 'label' holds 1 NaN or infinite values"):
        SparkModel(model, num_workers=2).fit(x, y, verbose=0)


def test_empty_dataset(spark):
    x, y = blobs(10)
    with pytest.raises(InputError, match=r"The training data is empty \(0 rows\)"):
        SparkModel(mlp(), num_workers=2).fit(_df(spark, x, y).limit(0), verbose=0)


def test_more_workers_than_rows(spark):
    x, y = blobs(3)
    with pytest.raises(InputError, match=r"num_workers=4 is larger than the 3 rows of the training data; use at most 3 workers"):
        SparkModel(mlp(), num_workers=4).fit(x, y, verbose=0)


def test_x_and_y_lengths_differ(spark):
    x, y = blobs(10)
    with pytest.raises(InputError, match=r"x and y must have the same number of rows"):
        SparkModel(mlp(), num_workers=1).fit(x, y[:7], verbose=0)


def test_python_lists_of_rows_are_refused_with_np_asarray_as_the_fix(spark):
    """Keras' fit takes no Python lists of rows; a list x or y means one array per input or output, as there."""
    x, y = blobs(10)
    sm = SparkModel(mlp(), num_workers=1)
    with pytest.raises(InputError, match=r"^x is a Python list of numbers or lists, which Keras' fit does not take "
                                         r"either: pass np.asarray\(x\). A list or tuple x holds one array per "
                                         r"model input, as in Keras.$"):
        sm.fit(x.tolist(), y, verbose=0)
    with pytest.raises(InputError, match=r"^y is a Python tuple of .*np.asarray\(y\).* per model output"):
        sm.fit(x, tuple(y.tolist()), verbose=0)
    with pytest.raises(InputError, match=r"^x is a Python list"):
        sm.predict(x.tolist())


def test_unknown_strategy_and_bad_window():
    with pytest.raises(InputError, match=r"Unknown strategy 'ring'; choose one of \['adag', 'aeasgd', 'allreduce', 'async', 'averaging', "
                       r"'downpour', 'dynsgd', 'eamsgd', 'easgd', 'hogwild'\]"):
        SparkModel(mlp(), strategy="ring")
    with pytest.raises(InputError, match=r"window must be 'epoch' or a positive number of batches, got 0"):
        SparkModel(mlp(), window=0)



def test_an_option_the_strategy_does_not_take_is_named_with_the_options_it_takes_and_where_it_belongs():
    """``workers=4`` (the CLI's flag is ``--workers``) and fit arguments land among a strategy's options; Python's
    "unexpected keyword argument" named neither the strategy's options nor where the value goes."""
    with pytest.raises(InputError) as refused:
        SparkModel(mlp(), "averaging", workers=4)
    assert str(refused.value) == (
        "Strategy 'averaging' has no option 'workers'; its options are ['window', 'outer_momentum', "
        "'outer_learning_rate', 'nesterov', 'timeout', 'max_restarts', 'slot_timeout', 'momentum_bias_correction', "
        "'learning_rate_scaling', 'warmup_epochs']. The number of workers is SparkModel's num_workers "
        "(SparkModel(model, strategy, num_workers=4)).")
    with pytest.raises(InputError, match=r"^Strategy 'adag' has no option 'batch_size', 'epochs'; its options are "
                                         r"\['window', .*\]\. \['batch_size', 'epochs'\] are arguments of fit\(\), "
                                         r"not of the strategy\.$"):
        SparkModel(mlp(), "adag", epochs=3, batch_size=64)

def test_worker_failure_surfaces_with_the_workers_traceback(spark):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    @F.udf(T.ArrayType(T.DoubleType()))
    def broken(v):
        raise RuntimeError("sensor feed corrupted at source")

    x, y = blobs(20)
    df = _df(spark, x, y).withColumn("features", broken("features"))
    with pytest.raises(WorkerError, match=r"(?s)A Spark task failed.*Traceback.*sensor feed corrupted at source"):
        SparkModel(mlp(), num_workers=2).fit(df, verbose=0)


def test_predict_rejects_a_wrong_sized_column_with_its_name(spark):
    x, y = blobs(30, dim=5)
    # refused when predict is called, before any prediction task runs
    with pytest.raises(InputError, match=r"column 'features' holds 5 values per row, but model input "
                                         r"'input_layer(_\d+)?' expects 16"):
        SparkModel(mlp(dim=16), num_workers=2).predict(_df(spark, x, y))


def test_predict_takes_nested_arrays_as_fit_does_and_counts_all_their_values(spark):
    """Rows of a ``(4, 3)`` input as ``array<array<float>>``: 12 values, not the 4 of the outer array."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(40, 4, 3)).astype(np.float32)
    df = spark.createDataFrame([(x[i].tolist(), i % 2) for i in range(40)], "features ARRAY<ARRAY<FLOAT>>, label INT")
    sm = SparkModel(model, num_workers=2)
    rows = sm.predict(df).collect()
    got, fed = np.array([r.prediction for r in rows]), np.array([r.features for r in rows], dtype=np.float32)
    np.testing.assert_allclose(got, model.predict(fed, verbose=0), atol=1e-5)
    short = spark.createDataFrame([(x[i, :, :2].tolist(), 0) for i in range(4)], "features ARRAY<ARRAY<FLOAT>>, label INT")
    with pytest.raises(InputError, match=r"column 'features' holds 8 values per row, but model input .* expects 12"):
        sm.predict(short)


@pytest.mark.parametrize("registered", [True, False])
def test_a_custom_layer_module_missing_on_the_executors_stops_the_fit_once_naming_it(spark, tmp_path, caplog,
                                                                                      registered):
    """A layer class of the user's module, registered with Keras or not (then its class travels with the model, by
    reference, as ``model.fit`` uses it), from a module the executors were never given: the fit stops at once,
    naming the module and the ways to ship it, instead of relaunching the epoch on the same error."""
    import logging
    import sys

    import keras

    from sparkeras import ExecutorEnvironmentError

    module = f"driver_only_{'registered' if registered else 'plain'}"
    register = "@keras.saving.register_keras_serializable(package='driver_only')\n" if registered else ""
    (tmp_path / f"{module}.py").write_text(
        f"import keras\n\n\n{register}class Same(keras.layers.Layer):\n    def call(self, x):\n        return x\n")
    sys.path.insert(0, str(tmp_path))  # the driver can import it; the executors were never given it
    try:
        model = keras.Sequential([keras.Input((16,)), __import__(module).Same(),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        x, y = blobs(40)
        with caplog.at_level(logging.WARNING, logger="sparkeras"), pytest.raises(InputError if registered else
                                                                                 ExecutorEnvironmentError) as failed:
            SparkModel(model, num_workers=2).fit(x, y, verbose=0)
        if registered:  # the worker imports the registered objects' modules before Keras looks
            assert re.search(f"custom objects from module '{module}', which this Python worker cannot import .* "
                             "--py-files or sc.addPyFile", str(failed.value)), failed.value
        else:  # the class's module, as Spark's cloudpickle imports it
            assert re.match(f"The executors' Python cannot import module '{module}'.*: the tasks failed while "
                            r"training epoch 1\. The model's own classes or functions, or yours, come from it: ship "
                            r"it with the job \(spark-submit --py-files, or spark.sparkContext.addPyFile\(path\) "
                            r"before the fit\), or install it on every machine that runs executors\.$",
                            str(failed.value)), failed.value
        assert not [r for r in caplog.records if "runs again" in r.getMessage()]  # the same in every attempt
    finally:
        sys.path.remove(str(tmp_path))


def test_failure_reason_names_the_innermost_error_not_a_jvm_frame():
    from sparkeras.errors import failure_reason

    python_side = RuntimeError("A Spark task failed.\nTraceback (most recent call last):\n  File \"w.py\", line 3\n"
                               "ZeroDivisionError: division by zero\n\tat org.apache.spark.api.python.Runner(x)")
    assert failure_reason(python_side) == "ZeroDivisionError: division by zero"
    jvm_side = RuntimeError(": org.apache.spark.SparkException: Job aborted due to stage failure\n"
                            "org.apache.spark.SparkException: Python worker exited unexpectedly (crashed).\n"
                            "\tat java.base/java.lang.Thread.run(Thread.java:840)")
    assert failure_reason(jvm_side) == "Python worker exited unexpectedly (crashed)."


def test_one_hot_labels_with_a_sparse_loss(spark):
    x, y = blobs(40)
    onehot = np.eye(10, dtype=np.float32)[y]
    with pytest.raises(InputError, match=r"label column 'label' holds arrays \(one-hot rows\?\), but the loss "
                                         r"'sparse_categorical_crossentropy' expects one class index per row"):
        SparkModel(mlp(), num_workers=2).fit(x, onehot, verbose=0)


def test_a_model_without_symbolic_inputs_gets_the_fix_that_applies(spark):
    import keras

    class Ranker(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10, activation="softmax")

        def call(self, x):
            return self.dense(x)

    x, y = blobs(40)
    ranker = Ranker()
    ranker(x[:1])  # built by a call, as most users build one
    ranker.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(InputError, match=r"The model is a subclassed keras.Model \(Ranker\), which has no symbolic "
                                         r"inputs even once built.*inputs = keras.Input\(shape=\(16,\)\); "
                                         r"model = keras.Model\(inputs, ranker\(inputs\)\)"):
        SparkModel(ranker, num_workers=1).fit(x, y, verbose=0)
    # an unbuilt Sequential is built for the rows now (test_training); its refusal is tested there



def test_a_model_the_workers_cannot_rebuild_is_refused_on_the_driver(spark, monkeypatch):
    """Classes that only this function defines (unregistered, not importable) train and score on the workers as
    ``model.fit`` and ``predict`` use them: a layer and a loss travel with the live model by value. A class the
    config names but the model does not hold cannot be rebuilt anywhere: refused before any work, with the advice
    that works."""
    import keras

    import sparkeras

    class Doubling(keras.layers.Layer):  # not registered, not importable
        def call(self, inputs):
            return 2.0 * inputs

    class Hint(keras.constraints.Constraint):  # only named in Hinted's config, never held by the model
        def __call__(self, w):
            return w

    class Hinted(keras.layers.Layer):
        def __init__(self, hint=None, **kwargs):
            super().__init__(**kwargs)
            if hint is not None:
                keras.saving.deserialize_keras_object(hint)

        def call(self, inputs):
            return inputs

        def get_config(self):
            return {**super().get_config(), "hint": keras.saving.serialize_keras_object(Hint())}

    def _doubled_loss(y_true, y_pred):
        return 2.0 * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    x, y = blobs(64)

    def model(extra=None, loss="sparse_categorical_crossentropy"):
        inputs = keras.Input((16,))
        hidden = extra(inputs) if extra is not None else inputs
        built = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden))
        built.compile("adam", loss)
        return built

    score_driver_rows_on_the_workers(monkeypatch)  # as more rows on a cluster
    doubling = model(Doubling())
    np.testing.assert_allclose(SparkModel(doubling, num_workers=2).predict(x), doubling.predict(x, verbose=0),
                               atol=1e-6)
    trained = SparkModel(model(Doubling()), num_workers=2, seed=0)
    assert np.isfinite(trained.fit(x, y, epochs=1, verbose=0).history["loss"][0])
    np.testing.assert_allclose(trained.predict(x), trained.model.predict(x, verbose=0), atol=1e-6)
    trained = SparkModel(model(loss=_doubled_loss), num_workers=2, seed=0)
    trained.fit(x, y, epochs=1, verbose=0)
    single = keras.losses.sparse_categorical_crossentropy(y, trained.model.predict(x, verbose=0))
    assert trained.evaluate(x, y)["loss"] == pytest.approx(2.0 * float(np.mean(single)), rel=1e-5)

    refused = (r"cannot be rebuilt from its Keras config, as every Spark worker must rebuild it: Keras does not know "
               r"the class 'Hint' in this process.*custom_objects=\{'Hint': Hint\}\.$")
    with pytest.raises(InputError, match=refused):
        sparkeras.register_udf(spark, "hinted", model(Hinted()))
    with pytest.raises(InputError, match=refused):
        SparkModel(model(Hinted()), num_workers=2).fit(x, y, epochs=1, verbose=0)
    history = SparkModel(model(Hinted()), num_workers=2, custom_objects={"Hint": Hint}) \
        .fit(x, y, epochs=1, verbose=0)  # the advice works
    assert np.isfinite(history.history["loss"][0])


def test_a_validation_tuple_other_than_x_y_is_refused_with_what_to_do(spark):
    x, y = blobs(40)
    sm = SparkModel(mlp(), num_workers=2)
    with pytest.raises(InputError, match=r"validation_data=\(x, y, sample_weight\): sparkeras scores validation "
                                         r"rows unweighted.*SparkModel.evaluate\(x, y, sample_weight=w\)"):
        sm.fit(x, y, validation_data=(x, y, np.ones(len(x))), verbose=0)
    with pytest.raises(InputError, match=r"validation_data is a tuple of 1 items; pass \(x, y\)"):
        sm.fit(x, y, validation_data=(x,), verbose=0)


def _notebook_model(package: str, seed: int = 5):
    """A keras.Model subclass with its own train_step, defined and registered as in a notebook or script.

    Its ``__module__`` is ``__main__``, which no Spark worker has run. Each step it also counts itself in a
    non-trainable variable, so a fit shows whether this train_step (and not Keras' own) ran.
    """
    import keras

    class Counting(keras.Model):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.own_steps = keras.Variable(0.0, trainable=False, name="own_steps")

        def train_step(self, data):
            self.own_steps.assign_add(1.0)
            return super().train_step(data)

    Counting.__module__ = "__main__"
    Counting = keras.saving.register_keras_serializable(package=package)(Counting)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    model = Counting(inputs, keras.layers.Dense(10, activation="softmax")(keras.layers.Dense(8)(inputs)))
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


def test_a_model_class_registered_in_main_trains_on_the_workers_with_its_own_train_step(spark):
    model = _notebook_model("notebook_fit")
    x, y = blobs(96)
    sm = SparkModel(model, strategy="averaging", num_workers=1)  # one worker trains exactly as model.fit
    sm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    assert float(sm.model.own_steps.numpy()) == 6.0  # the workers ran the class's train_step: 3 steps x 2 epochs
    plain = _notebook_model("notebook_plain")
    plain.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    for got, want in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_a_scripts_own_loss_and_layer_reach_the_workers_without_custom_objects(spark, monkeypatch):
    """A loss function and an unregistered layer class defined in the driver's ``__main__`` (a script or a
    notebook) travel with the model: one worker then trains exactly as ``model.fit`` with them."""
    import sys

    import keras

    def doubled_loss(y_true, y_pred):
        return 2.0 * keras.losses.sparse_categorical_crossentropy(y_true, y_pred)

    class Squared(keras.layers.Layer):  # not registered: Keras names it by its class name
        def call(self, x):
            return x * x

    main = sys.modules["__main__"]
    for obj in (doubled_loss, Squared):
        obj.__module__ = "__main__"
        monkeypatch.setattr(main, obj.__name__, obj, raising=False)

    def model():
        keras.utils.set_random_seed(2)
        built = keras.Sequential([keras.Input((16,)), Squared(), keras.layers.Dense(10, activation="softmax")])
        built.compile("adam", doubled_loss)
        return built

    x, y = blobs(96)
    sm = SparkModel(model(), strategy="averaging", num_workers=1)
    history = sm.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    plain = model()
    want = plain.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
    np.testing.assert_allclose(history.history["loss"], want.history["loss"], rtol=1e-5)
    for got, expected in zip(sm.model.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_allreduce_refuses_a_model_with_its_own_train_step_before_reading_data(spark):
    with pytest.raises(InputError, match=r"strategy='allreduce' cannot train Counting: its train_step "
                                         r"\(.*Counting.train_step\) is its own.*Use strategy='averaging'"):
        SparkModel(_notebook_model("notebook_allreduce"), strategy="allreduce", num_workers=2) \
            .fit("/nonexistent/never-read.parquet", verbose=0)


def test_a_class_the_workers_cannot_locate_stops_the_fit_at_once_naming_it(spark, caplog):
    import logging

    import keras

    class Ghost(keras.layers.Layer):  # registered on the driver only, under a module every worker imports
        def call(self, x):
            return x

    Ghost.__module__ = "json"
    keras.saving.register_keras_serializable(package="driver_registry")(Ghost)
    model = keras.Sequential([keras.Input((16,)), Ghost(), keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = blobs(40)
    with caplog.at_level(logging.WARNING, logger="sparkeras"), \
            pytest.raises(InputError, match=r"cannot be rebuilt from its Keras config, as every Spark worker must "
                                            r"rebuild it: Keras does not know the class 'Ghost' in this process\. "
                                            r"Register it .* custom_objects=\{'driver_registry>Ghost': Ghost\}"):
        SparkModel(model, num_workers=2).fit(x, y, verbose=0)
    assert not [r for r in caplog.records if "runs again" in r.getMessage()]  # the same in every attempt


def test_epochs_and_batch_sizes_must_be_positive_integers_and_none_means_keras_default(spark):
    x, y = blobs(200, seed=3)
    sm = SparkModel(mlp(seed=5), num_workers=1, seed=0)
    for call, message in [(lambda: sm.fit(x, y, epochs=0), "epochs must be a positive integer, got 0."),
                          (lambda: sm.fit(x, y, batch_size=0), "batch_size must be a positive integer, got 0."),
                          (lambda: sm.evaluate(x, y, batch_size=-1), "batch_size must be a positive integer, got -1."),
                          (lambda: sm.predict(x, batch_size=2.5), "batch_size must be a positive integer, got 2.5.")]:
        with pytest.raises(InputError, match=re.escape(message)):
            call()
    plain = clone(sm.model)
    want = plain.fit(x, y, batch_size=None, epochs=2, shuffle=False, verbose=0).history["loss"]
    got = sm.fit(x, y, batch_size=None, epochs=2, shuffle=False, verbose=0).history["loss"]  # Keras' 32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert sm.evaluate(x, y, batch_size=None)["loss"] == pytest.approx(plain.evaluate(x, y, verbose=0)[0], rel=1e-5)
    np.testing.assert_allclose(sm.predict(x, batch_size=None), plain.predict(x, verbose=0), atol=1e-6)


def test_a_validation_split_of_a_dataframe_that_leaves_a_side_without_rows_is_refused(spark):
    """Spark data's held-out rows are drawn at random, so a small fraction of few rows can hold out none (the fit
    went on without validation) and a large one can leave none to train on ("use at most 0 workers")."""
    x, y = blobs(30, seed=3)
    df = spark.createDataFrame([(row.tolist(), int(label)) for row, label in zip(x, y)], ["features", "label"])
    sm = SparkModel(mlp(seed=5), num_workers=2, seed=0)
    with pytest.raises(InputError, match=re.escape(
            "validation_split=1e-06 of the 30 rows held out 0 and left 30 to train on; both sides need rows. "
            "Choose a fraction that leaves some on each side, or pass validation_data=.")):
        sm.fit(df, validation_split=1e-6, verbose=0)
    with pytest.raises(InputError, match=re.escape("validation_split=0.999999 of the 30 rows held out 30 and left 0 ")):
        sm.fit(df, validation_split=0.999999, verbose=0)


def test_data_of_another_kind_is_refused_with_the_kinds_taken(spark):
    """A generator, a Keras ``PyDataset`` or a ``tf.data.Dataset`` (Keras' ``fit`` takes them) is named, with what
    to pass instead; a ``tf.data.Dataset`` is not taken for a tensor."""
    import keras

    x, y = blobs(64)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            return x[index * 32:(index + 1) * 32], y[index * 32:(index + 1) * 32]

    given = [((row, label) for row, label in zip(x, y)), Batches()]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        given.append(tf.data.Dataset.from_tensor_slices((x, y)).batch(32))
    sm = SparkModel(mlp(), num_workers=2)
    for data in given:
        with pytest.raises(InputError, match=re.escape(
                f"Cannot train on a {type(data).__module__}.{type(data).__qualname__}; pass numpy arrays (x=, y=), "
                "a pandas DataFrame, an Arrow table (or any frame with Arrow's __arrow_c_stream__: Polars, DuckDB), "
                "an RDD of (features, label) pairs, a Spark or pandas-on-Spark DataFrame, or a path to Parquet (or "
                "CSV, JSON, ORC, Delta) data.")):
            sm.fit(data, verbose=0)


def test_a_standalone_or_kubernetes_master_no_one_listens_at_is_named_before_any_jvm_starts(spark, monkeypatch):
    """Spark's own client retries such a master for a minute and ends in a Java trace (63 s measured)."""
    import socket

    import sparkeras
    from sparkeras.session import PROXY_VARIABLES, check_master_answers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed
    with pytest.raises(InputError) as failed:
        sparkeras.get_spark(f"spark://127.0.0.1:{port}")
    assert str(failed.value) == (f"master='spark://127.0.0.1:{port}': cannot reach the Spark master at "
                                 f"127.0.0.1:{port} (Connection refused). Is the master running (spark-class "
                                 "org.apache.spark.deploy.master.Master), and is the address right?")
    assert sparkeras.get_spark() is spark  # the suite's session is untouched

    # A Kubernetes API server no one listens at: about 300 lines of Java traces, then Spark's error.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError) as failed:
        sparkeras.get_spark(f"k8s://https://127.0.0.1:{port}")
    assert str(failed.value) == (f"master='k8s://https://127.0.0.1:{port}': cannot reach the Kubernetes API server "
                                 f"at 127.0.0.1:{port} (Connection refused). Is the address right "
                                 "(k8s://https://host:port, as `kubectl cluster-info` prints it)?")
    assert sparkeras.get_spark() is spark
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")  # Spark's client may reach the server through it
    check_master_answers(f"k8s://https://127.0.0.1:{port}", "--master")


def test_executors_whose_python_lacks_sparkeras_are_named_with_the_ways_to_ship_it(spark, tmp_path, caplog):
    """The session's Python workers run an interpreter without sparkeras (``sc.pythonExec`` is what
    ``spark.pyspark.python`` sets): Spark's error was a Java trace about ``sparkeras.worker.daemon``'s port. Both
    the packing job and a training epoch say what is missing and how to get it there, and the epoch is not
    relaunched, since every attempt fails the same way."""
    import logging

    import pandas as pd

    from shipped import python_without_sparkeras
    from sparkeras import ExecutorEnvironmentError

    sc = spark.sparkContext
    x, y = blobs(64)
    frame = spark.createDataFrame(pd.DataFrame({"features": list(x), "label": y})).coalesce(1)
    sc._sparkeras_start_workers.join(60)  # the session's start-up job ran with the usual interpreter
    usual, sc.pythonExec = sc.pythonExec, python_without_sparkeras(str(tmp_path))
    try:
        for data, doing in [((frame,), "reading the training data"), ((x, y), "training epoch 1")]:
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="sparkeras"), \
                    pytest.raises(ExecutorEnvironmentError) as failed:
                SparkModel(mlp(), num_workers=1).fit(*data, epochs=1, verbose=0)
            message = str(failed.value)
            assert re.match(r"The executors' Python cannot import sparkeras \(executor driver on \S+, Python \S+\): "
                            f"the tasks failed while {doing}\\. Install sparkeras on every machine that runs "
                            r"executors \(the driver has \S+\), or ship it with the job: spark-submit --py-files "
                            "sparkeras.zip", message), message
            assert "--archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python" in message
            assert "Traceback" not in message and "at org.apache" not in message, message
            assert not [r for r in caplog.records if "runs again" in r.getMessage()]
    finally:
        sc.pythonExec = usual
    assert SparkModel(mlp(), num_workers=1).fit(x, y, epochs=1, verbose=0).history["loss"]  # the usual workers


LACKING_SESSION = """
import json, os, sys, time
sys.path.insert(0, {tests!r})
os.environ["PYSPARK_PYTHON"] = {python!r}
from conftest import blobs, mlp
import sparkeras
spark = sparkeras.get_spark("local[2]")
spark.sparkContext._sparkeras_start_workers.join(60)  # the session's start-up job, on one task first
x, y = blobs(64)
started = time.monotonic()
try:
    sparkeras.SparkModel(mlp(), num_workers=2).fit(x, y, epochs=1, verbose=0)
except Exception as exc:
    print("RESULT", json.dumps([type(exc).__name__, str(exc), spark.sparkContext.statusTracker().getJobIdsForGroup()]))
"""


@pytest.mark.own_processes
def test_a_session_whose_executors_lack_sparkeras_stops_the_first_fit_before_its_jobs(tmp_path):
    """A session started with a ``PYSPARK_PYTHON`` that lacks sparkeras: its start-up job's one task found it, so
    the first fit raises that before it runs a job of its own (two jobs before, whose two tasks could fail with a
    ``NullPointerException`` from Spark's worker factory, both starting the daemon at once)."""
    import json
    import os
    import subprocess
    import sys

    from shipped import python_without_sparkeras

    script = LACKING_SESSION.format(tests=os.path.dirname(os.path.abspath(__file__)),
                                    python=python_without_sparkeras(str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, out.stderr[-4000:]
    name, message, jobs = json.loads(lines[0][len("RESULT "):])
    assert name == "ExecutorEnvironmentError", message
    assert message.startswith("The executors' Python cannot import sparkeras (executor driver on ") and \
        "the tasks failed while starting the executors' Python workers. Install sparkeras on every machine" \
        in message, message
    assert jobs == [], jobs  # the fit ran none: only the start-up job's, in its own group
