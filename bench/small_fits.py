"""Small fits with validation: where a Spark fit's fixed costs show, against plain ``model.fit``.

A user's first try is often a small table and ``validation_data``, scored
every epoch. Plain ``model.fit`` needs well under a second for that, so the
fixed costs of a distributed fit (Spark jobs, packing, validation) decide
how it compares. Two problems from data that ships with scikit-learn:

* ``cancer``: breast cancer, 569 rows x 30 features, Dense 30-16-1
  (binary), 20 epochs, batch 32;
* ``digits``: 8x8 digits, 1,797 rows x 64 features, Dense 64-64-10,
  20 epochs, batch 32.

Each is split 80/20 into training and validation rows. Plain ``model.fit``
trains on numpy with ``validation_data``, a fresh model each time. sparkeras
trains the same model from a cached Spark DataFrame of the same rows, with a
DataFrame of the validation rows, on the embedded ``local[2]`` session with 2
workers: a first fit of the problem and strategy, then warm fits. Only the
table's first row's first fit is cold (fresh Python workers); the later first
fits find the workers started but build and trace the new model. With
``--compare-workers`` each warm fit is repeated with the validation scored by
the workers' Spark job instead of on the driver
(``sparkeras.training.DriverValidation``), to compare the two in one run.

Prints a table (medians of ``--repeats`` warm fits) and one JSON line per row.

    python bench/small_fits.py [--strategies averaging,allreduce] [--epochs 20] [--repeats 3]
                               [--compare-workers]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np


def problems() -> dict:
    from sklearn.datasets import load_breast_cancer, load_digits

    out = {}
    for name, loader, classes in (("cancer", load_breast_cancer, 2), ("digits", load_digits, 10)):
        x, y = loader(return_X_y=True)
        x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
        order = np.random.default_rng(0).permutation(len(x))
        x, y = x[order], y[order].astype(np.int64)
        cut = int(0.8 * len(x))
        out[name] = (x[:cut], y[:cut], x[cut:], y[cut:], classes)
    return out


def make_model(features: int, classes: int):
    import keras

    keras.utils.set_random_seed(1)
    if classes == 2:
        layers, loss = [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid")], \
            "binary_crossentropy"
    else:
        layers, loss = [keras.layers.Dense(64, activation="relu"), keras.layers.Dense(classes, activation="softmax")], \
            "sparse_categorical_crossentropy"
    model = keras.Sequential([keras.Input((features,)), *layers])
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


def timed(fit) -> tuple[float, float]:
    """Seconds of ``fit()`` and the last epoch's ``val_accuracy`` of the History it returns."""
    started = time.perf_counter()
    history = fit()
    return time.perf_counter() - started, float(history.history["val_accuracy"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strategies", default="averaging,allreduce")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare-workers", action="store_true",
                        help="also time each warm fit with the validation scored by the workers' Spark job")
    args = parser.parse_args()

    from sparkeras import SparkModel
    from sparkeras.session import get_spark
    from sparkeras.training import DriverValidation

    spark = get_spark()
    rows = []
    for name, (x, y, vx, vy, classes) in problems().items():
        plain = [timed(lambda: make_model(x.shape[1], classes).fit(
            x, y, validation_data=(vx, vy), epochs=args.epochs, batch_size=32, verbose=0))
            for _ in range(args.repeats)]
        plain_s, plain_acc = float(np.median([p[0] for p in plain])), plain[-1][1]
        def cached(a, b, partitions):
            rows = [(r.tolist(), int(v)) for r, v in zip(a, b)]
            frame = spark.createDataFrame(rows, ["features", "label"]).repartition(partitions).cache()
            frame.count()
            return frame

        frame, val = cached(x, y, 2), cached(vx, vy, 1)
        for strategy in args.strategies.split(","):
            def fit():
                return SparkModel(make_model(x.shape[1], classes), strategy=strategy, num_workers=2, seed=0).fit(
                    frame, features_col="features", label_col="label", validation_data=val,
                    epochs=args.epochs, batch_size=32, verbose=0)

            kinds = [("", DriverValidation.MAX_BYTES)]
            if args.compare_workers and strategy != "allreduce":  # allreduce scores inside its tasks
                kinds.append((" (validation by the workers)", 0))
            limit = DriverValidation.MAX_BYTES
            first = timed(fit)
            for label, max_bytes in kinds:
                DriverValidation.MAX_BYTES = max_bytes
                try:
                    warm = [timed(fit) for _ in range(args.repeats)]
                finally:
                    DriverValidation.MAX_BYTES = limit
                warm_s = float(np.median([w[0] for w in warm]))
                rows.append({"benchmark": "small_fits", "problem": name, "strategy": strategy + label,
                             "epochs": args.epochs, "plain_s": round(plain_s, 2),
                             "first_fit_s": round(first[0], 2) if not label else None, "warm_s": round(warm_s, 2),
                             "ratio_warm": round(plain_s / warm_s, 2), "plain_val_accuracy": round(plain_acc, 4),
                             "val_accuracy": round(warm[-1][1], 4),
                             "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"})
        frame.unpersist()
        val.unpersist()

    print("\n| problem | strategy | plain (s) | sparkeras first fit (s) | warm (s) | ratio, warm | val accuracy, plain / sparkeras |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        first = "-" if r["first_fit_s"] is None else f"{r['first_fit_s']:.2f}"
        print(f"| {r['problem']} | {r['strategy']} | {r['plain_s']:.2f} | {first} | {r['warm_s']:.2f} | "
              f"{r['ratio_warm']:.2f} | {r['plain_val_accuracy']:.4f} / {r['val_accuracy']:.4f} |")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
