"""BatchNormalization under distributed fits: test accuracy at equal epochs, sparkeras vs plain ``model.fit``.

A held-out-style check, not one of ``time_to_accuracy.py``'s tasks: a small
CNN with BatchNormalization and Dropout on scikit-learn's digits (1,400
training rows, 397 test rows, 15 epochs, batch 32), 2 workers on
``local[2]``, over several model seeds. Each seed fits:

* ``plain``: ``model.fit`` in this process;
* ``averaging`` and ``allreduce`` with their defaults: the workers update
  BatchNormalization's moving statistics with ``momentum ** N``
  (``ModelSpec.with_moving_statistics_for``);
* the same with the layers' own momentum in the workers (how sparkeras
  trained before): the model is given ``momentum ** (1 / N)``, which the
  workers raise back to ``momentum``. Scoring does not read the momentum.

Prints each seed's accuracies, then the mean gap to plain in points per arm,
and one JSON line.

    python bench/batch_norm.py [--seeds 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

EPOCHS, BATCH = 15, 32


def digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16).astype(np.float32), d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def make_model(seed: int, momentum: float = 0.99):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)), keras.layers.Reshape((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same"), keras.layers.BatchNormalization(momentum=momentum),
        keras.layers.ReLU(), keras.layers.MaxPooling2D(), keras.layers.Flatten(),
        keras.layers.Dropout(0.2), keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x, batch_size=1024, verbose=0).argmax(axis=1) == y))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it

    import pandas as pd

    import sparkeras

    (x, y), (xt, yt) = digits()
    spark = sparkeras.get_spark(f"local[{args.workers}]", app_name="bench-batch-norm")
    spark.sparkContext.setLogLevel("OFF")
    frame = spark.createDataFrame(pd.DataFrame({"features": list(x), "label": y})).cache()
    frame.count()
    arms = {f"{s}{suffix}": (s, power) for s in ("averaging", "allreduce")
            for suffix, power in (("", 1.0), (", layers' own momentum", 1.0 / args.workers))}
    scores: dict[str, list[float]] = {"plain": [], **{arm: [] for arm in arms}}
    seconds: dict[str, list[float]] = {arm: [] for arm in scores}
    for seed in range(1, args.seeds + 1):
        model = make_model(seed)
        start = time.perf_counter()
        model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0)
        seconds["plain"].append(time.perf_counter() - start)
        scores["plain"].append(accuracy(model, xt, yt))
        for arm, (strategy, power) in arms.items():
            sm = sparkeras.SparkModel(make_model(seed, 0.99 ** power), strategy=strategy, num_workers=args.workers)
            start = time.perf_counter()
            sm.fit(frame, epochs=EPOCHS, batch_size=BATCH, verbose=0)
            seconds[arm].append(time.perf_counter() - start)
            scores[arm].append(accuracy(sm.model, xt, yt))
        print(f"seed {seed}: " + ", ".join(f"{arm} {s[-1]:.4f}" for arm, s in scores.items()), flush=True)
    plain = np.array(scores["plain"])
    gaps = {arm: round(float(np.mean(np.array(s) - plain)) * 100, 2) for arm, s in scores.items() if arm != "plain"}
    print(f"\n{'':42}{'mean accuracy':>14}{'gap (pts)':>11}{'fit (s)':>9}")
    for arm, s in scores.items():
        print(f"{arm:42}{statistics.mean(s):14.4f}{gaps.get(arm, 0.0):11.2f}{statistics.median(seconds[arm]):9.1f}")
    print(json.dumps({"benchmark": "batch_norm", "workers": args.workers, "seeds": args.seeds, "epochs": EPOCHS,
                      "mean_accuracy": {a: round(statistics.mean(s), 4) for a, s in scores.items()},
                      "gap_points": gaps, "cores": os.cpu_count(), "machine": platform.machine()}))
    spark.stop()


if __name__ == "__main__":
    main()
