"""``sparkeras demo``: distributed vs plain Keras on data that ships with scikit-learn.

Trains a small CNN on the 8x8 digits images (no download) on an embedded Spark
session with two workers, then trains the same initial model with plain
``model.fit`` in this process, and prints both test accuracies. Writes the
trained model and a PNG of the learning curves.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from typing import Any

import numpy as np


def load_digits_split(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 8x8 digits as (N, 8, 8, 1) floats in [0, 1]; 80/20 stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def build_cnn(seed: int = 42) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ], name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def run_demo(args: argparse.Namespace) -> int:
    from sparkeras import SparkModel
    from sparkeras.worker.runtime import import_keras_quietly
    from sparkeras.session import get_spark
    from sparkeras.tracking.plots import plot_history

    (x_train, y_train), (x_test, y_test) = load_digits_split()
    say = (lambda *a: None) if args.json else print
    spark = get_spark(args.master or f"local[{args.workers}]",  # Keras is imported while the JVM starts
                      alongside=functools.partial(import_keras_quietly, args.debug))
    spark.sparkContext.setLogLevel("ERROR" if args.debug else "OFF")
    say(f"sparkeras demo: {len(x_train)} training images (8x8 digits), {args.workers} Spark workers, "
        f"{args.epochs} epochs")

    sm = SparkModel(build_cnn(), strategy="averaging", num_workers=args.workers, seed=0)
    start = time.perf_counter()
    history = sm.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=(x_test, y_test), verbose=0 if args.json else 1)
    train_seconds = time.perf_counter() - start
    test_accuracy = sm.evaluate(x_test, y_test)["accuracy"]

    say("\nbaseline: the same model with plain model.fit in one process")
    baseline = build_cnn()
    start = time.perf_counter()
    base_hist = baseline.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                             validation_data=(x_test, y_test), verbose=0)
    baseline_seconds = time.perf_counter() - start
    baseline_accuracy = float(baseline.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"])

    os.makedirs(args.output, exist_ok=True)
    model_path = os.path.join(args.output, "digits_cnn.keras")
    plot_path = os.path.join(args.output, "learning_curves.png")
    sm.save(model_path, overwrite=True)  # the demo's own output folder, rewritten on each run
    plot_history(history, plot_path, baseline=base_hist, labels=(f"sparkeras ({args.workers} workers)",
                                                                 "plain model.fit"),
                 title="sparkeras demo: 8x8 digits CNN, model averaging vs plain model.fit", overwrite=True)

    samples_per_second = len(x_train) * args.epochs / train_seconds
    result = {
        "test_accuracy": round(float(test_accuracy), 4),
        "baseline_accuracy": round(baseline_accuracy, 4),
        "train_seconds": round(train_seconds, 2),
        "baseline_seconds": round(baseline_seconds, 2),
        "samples_per_second": round(samples_per_second, 1),
        "model": model_path,
        "plot": plot_path,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"\n{'':24}{'test accuracy':>14}{'train time':>12}")
        print(f"{'sparkeras (2 workers)':24}{test_accuracy:>14.4f}{train_seconds:>11.1f}s")
        print(f"{'plain model.fit':24}{baseline_accuracy:>14.4f}{baseline_seconds:>11.1f}s")
        print(f"\nmodel: {model_path}\nlearning curves: {plot_path}")
    return 0
