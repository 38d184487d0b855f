"""The scikit-learn facade: estimators that train on Spark inside scikit-learn's tools."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import blobs, mlp
from sparkeras import InputError
from sparkeras.sklearn import KerasClassifier, KerasRegressor


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype("float32"), digits.target


def _digits_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_cross_val_score_trains_each_fold_on_spark(spark):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    x, y = _digits()
    model = _digits_model()
    initial = [w.copy() for w in model.get_weights()]
    clf = KerasClassifier(model, epochs=6, batch_size=32, num_workers=2)
    assert clf.get_params()["epochs"] == 6 and clone(clf).get_params()["model"] is model
    scores = cross_val_score(clf, x, y, cv=3)
    assert len(scores) == 3 and scores.min() > 0.85, scores  # chance is 0.1
    for before, after in zip(initial, model.get_weights()):  # the user's model is never trained
        np.testing.assert_array_equal(before, after)


def test_grid_search_picks_the_learning_rate_that_learns(spark):
    from sklearn.model_selection import GridSearchCV

    x, y = blobs(600, dim=4, classes=3, noise=0.6, seed=5)
    search = GridSearchCV(KerasClassifier(mlp(dim=4, classes=3, seed=1), epochs=3, num_workers=2),
                          {"learning_rate": [1e-7, 0.02]}, cv=2)
    search.fit(x, y)
    assert search.best_params_ == {"learning_rate": 0.02}
    assert search.best_score_ > 0.85 and min(search.cv_results_["mean_test_score"]) < 0.7
    assert search.score(x, y) > 0.85  # the refitted best estimator predicts on Spark


def test_classifier_keeps_label_values_and_binary_models(spark):
    import keras

    x, y = blobs(400, dim=4, classes=2, noise=0.5, seed=3)
    names = np.array(["cat", "dog"])[y]
    keras.utils.set_random_seed(0)
    sigmoid = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(1, activation="sigmoid")])
    sigmoid.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy")
    clf = KerasClassifier(sigmoid, epochs=5, num_workers=2).fit(x, names)
    assert clf.classes_.tolist() == ["cat", "dog"]
    proba = clf.predict_proba(x)
    assert proba.shape == (400, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert set(clf.predict(x)) <= {"cat", "dog"} and clf.score(x, names) > 0.9


def test_a_pickled_classifier_scores_in_a_fresh_process_without_starting_spark(spark, tmp_path):
    """A fitted estimator is pickled and served elsewhere; its predictions of a test set's rows need no session.

    The process below never starts Spark (a job would start a session and
    its JVM first: 4.9 s to predict 5 rows), and scores as the driver here.
    """
    import json
    import pickle
    import subprocess
    import sys

    x, y = blobs(300, dim=4, classes=2, noise=0.5, seed=3)
    names = np.array(["cat", "dog"])[y]
    clf = KerasClassifier(mlp(dim=4, classes=2), epochs=3, num_workers=2).fit(x, names)
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(clf))
    np.save(tmp_path / "x.npy", x)
    served = subprocess.run([sys.executable, "-c", f"""
import json, pickle, numpy as np
from pyspark import SparkContext
from sparkeras import InputError, SparkModel
clf = pickle.loads(open({str(tmp_path / "clf.pkl")!r}, "rb").read())
x = np.load({str(tmp_path / "x.npy")!r})
out = dict(predicted=clf.predict(x).tolist(), proba=clf.predict_proba(x).tolist(),
           figures=SparkModel(clf.model_).evaluate(x, (clf.predict(x) == "dog").astype(int)), errors=[])
x[0, 1] = np.nan
for bad in (x[:0], x):
    try:
        clf.predict(bad)
    except InputError as exc:
        out["errors"].append(str(exc))
print(json.dumps(dict(out, spark=SparkContext._active_spark_context is not None)))
"""], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    out = json.loads(served.stdout.strip().splitlines()[-1])
    assert out["spark"] is False  # bad rows are refused, as by the workers, without a session either
    assert out["errors"] == ["The prediction data is empty (0 rows); check the path or the filters that produced it.",
                             "In the prediction data, column 'features' holds 1 NaN or infinite values; drop or fill "
                             "them (e.g. df.na.drop / df.na.fill) before scoring."], out["errors"]
    assert out["predicted"] == clf.predict(x).tolist()
    np.testing.assert_allclose(out["proba"], clf.predict_proba(x), atol=1e-6)
    assert out["figures"]["loss"] == pytest.approx(clf.model_.evaluate(x, clf.predict(x) == "dog", verbose=0)[0],
                                                   rel=1e-5)


def test_classifier_of_logits_gives_probabilities_and_trains_on_logits(spark):
    """Models compiled ``from_logits=True``: ``predict_proba`` applies the sigmoid or softmax, and a
    categorical loss recompiled to its sparse form keeps ``from_logits`` (without it, training
    would read logits as probabilities)."""
    import keras

    x, y = blobs(400, dim=4, classes=3, noise=0.5, seed=6)
    for classes, loss in ((2, keras.losses.BinaryCrossentropy(from_logits=True)),
                          (3, keras.losses.CategoricalCrossentropy(from_logits=True))):
        keep = y < classes
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                keras.layers.Dense(1 if classes == 2 else classes)])
        net.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
        clf = KerasClassifier(net, epochs=8, num_workers=2).fit(x[keep], y[keep])
        assert getattr(clf.model_.loss, "from_logits", False)
        logits = clf.model_.predict(x[keep], verbose=0).astype(np.float64)
        if classes == 2:
            p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            want = np.stack([1 - p, p], axis=1)
        else:
            want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        proba = clf.predict_proba(x[keep])
        np.testing.assert_allclose(proba, want, atol=1e-5)
        assert clf.score(x[keep], y[keep]) > 0.9, classes


def test_regressor_and_a_model_building_function(spark):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 3)).astype("float32")
    y = x @ np.array([1.5, -2.0, 0.5], dtype="float32") + 0.3

    def build(X, hidden=8):
        model = keras.Sequential([keras.Input((X.shape[1],)), keras.layers.Dense(hidden, activation="relu"),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
        return model

    reg = KerasRegressor(build, model_kwargs={"hidden": 16}, epochs=20, num_workers=2).fit(x, y)
    assert reg.model_.layers[0].units == 16
    assert reg.predict(x).shape == (800,)
    assert reg.score(x, y) > 0.9  # R²


def test_grid_search_routes_model_parameters_to_the_building_function(spark):
    """scikeras' ``model__<name>`` grids reach the function's argument; the template keeps its own dict."""
    import keras
    from sklearn.model_selection import GridSearchCV

    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3)).astype("float32")
    y = np.abs(x @ np.array([1.5, -2.0, 0.5], dtype="float32")) + np.sin(3 * x[:, 0])
    built = []

    def build(X, hidden=4, depth=1):
        built.append((hidden, depth))
        layers = [keras.layers.Dense(hidden, activation="relu") for _ in range(depth)]
        model = keras.Sequential([keras.Input((X.shape[1],)), *layers, keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse")
        return model

    given = {"depth": 2}
    template = KerasRegressor(build, model_kwargs=given, epochs=15, num_workers=2)
    search = GridSearchCV(template, {"model__hidden": [1, 32]}, cv=2).fit(x, y)
    assert search.best_params_ == {"model__hidden": 32}, search.cv_results_["mean_test_score"]
    assert sorted(set(built)) == [(1, 2), (32, 2)]  # each candidate built with the grid's value and the dict's
    assert search.best_estimator_.model_.layers[0].units == 32 and len(search.best_estimator_.model_.layers) == 3
    assert given == {"depth": 2} and template.model_kwargs is given
    template.set_params(model__hidden=8, epochs=2)
    assert template.get_params()["model__hidden"] == 8 and template.model_kwargs is given
    assert template.epochs == 2 and given == {"depth": 2}


def test_the_builders_arguments_as_constructor_parameters_as_scikeras_and_kerass_old_wrappers_take_them(spark):
    """``KerasClassifier(build, model__hidden=32)`` (scikeras) and ``KerasClassifier(build_fn=build, hidden=32)``
    (Keras' old wrappers) build with that argument, keep it through clone, and grids over either name reach it."""
    import keras
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV

    x, y = blobs(400, dim=4, classes=3, seed=2)
    built = []

    def create_model(hidden=2, activation="relu"):
        built.append((hidden, activation))
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(hidden, activation=activation),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
        return model

    scikeras = KerasClassifier(create_model, model__hidden=32, epochs=3, num_workers=2)
    assert clone(scikeras).get_params()["model__hidden"] == 32
    assert scikeras.fit(x, y).model_.layers[0].units == 32 and built[-1] == (32, "relu")
    legacy = KerasClassifier(build_fn=create_model, epochs=3, batch_size=16, verbose=0, activation="tanh", num_workers=2)
    search = GridSearchCV(legacy, {"hidden": [1, 16]}, cv=2).fit(x, y)
    assert search.best_params_ == {"hidden": 16}, search.cv_results_["mean_test_score"]
    assert {h for h, a in built[1:]} == {1, 16} and {a for h, a in built[1:]} == {"tanh"}
    assert search.best_estimator_.model_.layers[0].units == 16
    assert "activation='tanh'" in repr(legacy) and "hidden" not in legacy.get_params()

    with pytest.raises(InputError, match=r"\['epoch'\] \(given as model_kwargs, model__ or other keyword parameters\) "
                                         r"are not arguments of create_model\(hidden=2, activation='relu'\); 'epoch' "
                                         r"looks like the parameter 'epochs'"):
        KerasClassifier(create_model, epoch=3).fit(x, y)
    with pytest.raises(InputError, match="was given both model and build_fn"):
        KerasClassifier(create_model, build_fn=create_model).fit(x, y)


def test_facade_errors_name_the_problem(spark):
    from sklearn.exceptions import NotFittedError

    x, y = blobs(60, dim=4, classes=3, seed=1)
    with pytest.raises(InputError, match=r"y has 3 classes \[0, 1, 2\], but the model's output has 5 unit"):
        KerasClassifier(mlp(dim=4, classes=5), num_workers=2).fit(x, y)
    with pytest.raises(InputError, match="X has 60 rows but y has 59"):
        KerasClassifier(mlp(dim=4, classes=3)).fit(x, y[:-1])
    with pytest.raises(InputError, match=r"X must have one row per sample .* got shape \(60,\)"):
        KerasClassifier(mlp(dim=4, classes=3)).fit(x[:, 0], y)
    with pytest.raises(InputError, match="single class"):
        KerasClassifier(mlp(dim=4, classes=3)).fit(x, np.zeros(60))
    with pytest.raises(InputError, match="needs a model"):
        KerasClassifier().fit(x, y)
    with pytest.raises(InputError, match="\\['depth'\\] \\(given as model_kwargs, model__ or other keyword "
                                         "parameters\\) are not arguments of <lambda>\\(X\\)"):
        KerasRegressor(lambda X: None, model_kwargs={"depth": 2}).fit(x, y.astype(float))
    with pytest.raises(InputError, match=r"\['hidden'\] \(given as model_kwargs, model__ or other keyword "
                                         r"parameters\) need a function that builds the model; KerasClassifier was "
                                         r"given a compiled keras.Model"):
        KerasClassifier(mlp(dim=4, classes=3)).set_params(model__hidden=8).fit(x, y)
    with pytest.raises(NotFittedError):
        KerasClassifier(mlp(dim=4, classes=3)).predict(x)
    fitted = KerasClassifier(mlp(dim=4, classes=3), num_workers=2).fit(x, y)
    with pytest.raises(InputError, match="X has 3 features, but KerasClassifier was fitted with 4"):
        fitted.predict(x[:, :3])


def test_class_weight_by_label_value_or_balanced(spark):
    """Keyed by the labels the user has ("fraud"), or "balanced": the rare class is found more often."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    labels = np.where(x[:, 0] + 0.8 * rng.normal(size=3000) > 1.6, "fraud", "ok")  # about 8% fraud

    def recall(**options):
        clf = KerasClassifier(mlp(dim=8, classes=2, seed=3), epochs=3, num_workers=2, **options).fit(x, labels)
        return float(np.mean(clf.predict(x)[labels == "fraud"] == "fraud"))

    plain = recall()
    ratio = float(np.sum(labels == "ok") / np.sum(labels == "fraud"))
    assert recall(class_weight="balanced") > plain + 0.2
    assert recall(class_weight={"fraud": ratio}) > plain + 0.2
    with pytest.raises(InputError, match=r"class_weight names labels \['spam'\] that y does not have; its "
                                         r"classes are \['fraud', 'ok'\]"):
        KerasClassifier(mlp(dim=8, classes=2), class_weight={"spam": 2.0}).fit(x, labels)
    with pytest.raises(InputError, match="class_weight applies to classifiers; KerasRegressor has no classes"):
        KerasRegressor(mlp(dim=8, classes=1), class_weight="balanced").fit(x, x[:, 0])


def test_multi_label_indicator_matrix_as_scikit_learn_takes_it(spark):
    """A 2-D 0/1 ``y`` is multi-label: ``predict`` gives the indicator matrix, ``predict_proba`` each label's
    probability (the sigmoid of logits), ``score`` is scikit-learn's subset accuracy; wrong shapes are named."""
    import keras
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 6)).astype(np.float32)
    y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0, x[:, 3] < -0.5], axis=1).astype(np.int64)
    for activation, loss in (("sigmoid", "binary_crossentropy"),
                             (None, keras.losses.BinaryCrossentropy(from_logits=True))):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation=activation)])
        net.compile(keras.optimizers.Adam(0.05), loss)
        clf = KerasClassifier(net, epochs=6, batch_size=16, num_workers=2).fit(x, y)
        out = clf.model_.predict(x, verbose=0).astype(np.float64)
        p = out if activation else 1.0 / (1.0 + np.exp(-out))
        np.testing.assert_allclose(clf.predict_proba(x), p, atol=1e-5)
        predicted = clf.predict(x)
        np.testing.assert_array_equal(predicted, (p > 0.5).astype(np.int64))
        assert clf.score(x, y) == pytest.approx(accuracy_score(y, predicted)) and clf.score(x, y) > 0.8, activation
        assert clf.classes_.tolist() == [0, 1, 2]

    with pytest.raises(InputError, match=r"multi-label indicator matrix of 3 labels, so the model needs 3 sigmoid "
                                         r"units trained with binary_crossentropy; it has 3 unit\(s\) and the loss "
                                         r"'sparse_categorical_crossentropy'"):
        KerasClassifier(mlp(dim=6, classes=3)).fit(x, y)
    with pytest.raises(InputError, match=r"must hold only 0 and 1; it holds \[0, 1, 2\]"):
        KerasClassifier(net).fit(x, np.c_[y[:, :2], y[:, 2] * 2])
    with pytest.raises(InputError, match=r"class_weight needs one class per row.*sample_weight"):
        KerasClassifier(net, class_weight="balanced").fit(x, y)
