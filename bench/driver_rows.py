"""Scoring rows that are on the driver already: ``SparkModel.predict``/``evaluate`` and a pickled estimator.

Two things a user meets after training:

1. **A test set in numpy** (a notebook's ``x_test``, scikit-learn's
   ``score``): ``SparkModel.predict`` and ``evaluate`` against plain
   ``model.predict``/``model.evaluate`` on the same rows, warm (a second
   call), in one ``local[2]`` session, for an MLP (784-128-10) and a CNN
   (28x28, two conv layers) at several row counts. A local session's
   driver scores them all itself (on a cluster, up to 16 MB of them).
2. **A fitted scikit-learn estimator served elsewhere**: a
   ``KerasClassifier`` is pickled, then a fresh Python process unpickles it
   and predicts 5 rows; the baseline is a fresh process that loads the
   same Keras model from a ``.keras`` file and calls ``model.predict``.
   Timed from the process' start to its predictions.

    python bench/driver_rows.py

Prints a table and one JSON line.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROWS = (5, 1000, 5000, 20000)


def _mlp():
    import keras

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _cnn():
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Conv2D(64, 3, activation="relu"),
                              keras.layers.MaxPooling2D(), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _second_call(call) -> tuple[float, object]:
    call()
    started = time.perf_counter()
    out = call()
    return time.perf_counter() - started, out


def test_sets() -> list[dict]:
    import sparkeras

    sparkeras.get_spark("local[2]")
    rng = np.random.default_rng(3)
    rows = []
    for name, build, shape in (("mlp", _mlp, (784,)), ("cnn", _cnn, (28, 28, 1))):
        model = build()
        sm = sparkeras.SparkModel(model, num_workers=2)
        for n in ROWS:
            x = rng.random((n, *shape), dtype=np.float32)
            y = rng.integers(0, 10, n)
            ours, predicted = _second_call(lambda: sm.predict(x))
            plain, want = _second_call(lambda: model.predict(x, batch_size=256, verbose=0))
            ours_eval, _ = _second_call(lambda: sm.evaluate(x, y, batch_size=256))
            plain_eval, _ = _second_call(lambda: model.evaluate(x, y, batch_size=256, verbose=0))
            rows.append({"model": name, "rows": n, "megabytes": round(x.nbytes / 2**20, 2),
                         "predict_s": round(ours, 4), "plain_predict_s": round(plain, 4),
                         "predict_ratio": round(plain / ours, 2), "evaluate_s": round(ours_eval, 4),
                         "plain_evaluate_s": round(plain_eval, 4), "evaluate_ratio": round(plain_eval / ours_eval, 2),
                         "max_difference": float(np.abs(predicted - want).max())})
            print(f"{name:4} {n:6d} rows {rows[-1]['megabytes']:7.2f} MB  predict {ours:.4f}s (plain {plain:.4f}s, "
                  f"ratio {rows[-1]['predict_ratio']:.2f})  evaluate {ours_eval:.4f}s (plain {plain_eval:.4f}s, "
                  f"ratio {rows[-1]['evaluate_ratio']:.2f})", flush=True)
    return rows


SERVE = """
import os, pickle, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
x = np.load(sys.argv[2])
if sys.argv[1] == "sparkeras":
    clf = pickle.loads(open(sys.argv[3], "rb").read())
    predicted = clf.predict(x)
else:
    import keras
    predicted = keras.saving.load_model(sys.argv[3]).predict(x, verbose=0).argmax(axis=1)
from pyspark import SparkContext
print(predicted.tolist(), SparkContext._active_spark_context is not None)
"""


def served_estimator() -> dict:
    from sklearn.datasets import load_digits

    from sparkeras.sklearn import KerasClassifier

    import keras

    digits = load_digits()
    x, y = (digits.data / 16.0).astype("float32"), digits.target
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    clf = KerasClassifier(model, epochs=5, num_workers=2).fit(x, y)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {name: os.path.join(tmp, name) for name in ("clf.pkl", "model.keras", "x.npy")}
        with open(paths["clf.pkl"], "wb") as f:
            pickle.dump(clf, f)
        clf.model_.save(paths["model.keras"])
        np.save(paths["x.npy"], x[:5])
        times, outputs = {}, {}
        for side, artefact in (("sparkeras", paths["clf.pkl"]), ("plain", paths["model.keras"])):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", SERVE, side, paths["x.npy"], artefact],
                                  capture_output=True, text=True, check=True)
            times[side] = time.perf_counter() - started
            outputs[side] = done.stdout.strip().splitlines()[-1]
    print(f"served estimator, 5 rows in a fresh process: sparkeras {times['sparkeras']:.2f}s, plain Keras "
          f"{times['plain']:.2f}s (ratio {times['plain'] / times['sparkeras']:.2f}); "
          f"sparkeras {outputs['sparkeras']}, plain {outputs['plain']} (predictions, Spark started)", flush=True)
    return {"served_s": round(times["sparkeras"], 2), "plain_served_s": round(times["plain"], 2),
            "served_ratio": round(times["plain"] / times["sparkeras"], 2),
            "same_predictions": outputs["sparkeras"] == outputs["plain"]}


def main() -> None:
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it
    result = {"test_sets": test_sets(), **served_estimator()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
