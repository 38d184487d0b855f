"""Problems the defaults were not chosen on: each strategy against plain ``model.fit`` at equal epochs.

``bench/time_to_accuracy.py`` times four tasks that the defaults of
``averaging`` and ``allreduce`` were measured on. This script is the check
that those defaults are general: eleven more problems of other kinds, each
trained from a cached Spark DataFrame (in as many partitions as the most
workers asked for; the rows each worker gets, and so the curves, depend on
it) with 2 and 4 workers and with plain
``model.fit`` in the same process, all with the same seed, model and
settings. After every epoch the driver's model is scored on held-out rows
(outside the fit's own work), so the report shows each run's curve, its
metric at the last epoch and the gap to plain's.

* ``multilabel``: 60 features, 12 independent noisy binary labels; MLP
  60-96-12 with sigmoid outputs, binary cross-entropy, Adam, batch 64;
  scored by binary accuracy.
* ``signal``: 64 steps of 3 noisy channels carrying one of 4 sine
  frequencies; Conv1D-Pool-Conv1D-GlobalAveragePooling-Dense, Adam, batch 32;
  accuracy. Plain's curve leaves chance level in the first two epochs.
* ``autoencoder``: 48 features on a 6-dimensional manifold; Dense
  48-32-6-32-48, mean squared error, Adam, batch 64; scored by the loss
  (lower is better).
* ``huber``: a sine of a linear projection of 20 features, heavy-tailed
  noise; MLP 20-64-1, Huber loss, plain SGD (0.01, no momentum), batch 16;
  scored by mean absolute error (lower is better).
* ``imbalanced``: 40 features, about 12% positives from a noisy non-linear
  score; MLP 40-64-1, Adam, batch 64; scored by ROC AUC.
* ``tokens``: 24 token ids out of 500 per row, 6 classes carried by which
  ids occur; Embedding(500, 16), mean over tokens, Dense 32, Adam, batch 32.
* ``batchnorm``: 30 features, 8 classes; Dense 128 with BatchNormalization
  and Dropout 0.3, momentum SGD (0.05, momentum 0.9), batch 128.
* ``two_outputs``: 12 features, 2 smooth targets; MLP 12-64-64-2, RMSprop
  (1e-3), mean squared error, batch 32; scored by mean absolute error.
* ``recurrent``: 20 steps of 3 random channels; the target (no noise) is a
  scaled sum of the first channel over the steps plus the last step of the
  second; LSTM(16) and Dense 1, Adam, batch 32, 5 epochs; scored by the mean
  squared error. Plain's error falls about 27-fold from its first epoch
  to its fifth, so every epoch's steps count.
* ``digits``: scikit-learn's 1,797 8x8 digits (1,437 to train); MLP
  64-64-10, Adam, batch 32, 10 epochs. Small data: a worker's epoch is a
  few dozen batches, so a fit has few rounds.
* ``cancer``: scikit-learn's 569 breast cancer rows (455 to train), 30
  standardized features; MLP 30-16-1, Adam, batch 16, 20 epochs.

Each is small (plain takes a few seconds); all eleven with two strategies take about ten
minutes. Timing is not the point here; ``time_to_accuracy.py`` is.

Usage: python bench/more_problems.py [--tasks multilabel,signal,autoencoder,huber,...]
                                     [--strategies averaging,allreduce] [--workers 2,4]
                                     [--master "local[4]"] [--json FILE]

A strategy may carry options as in ``time_to_accuracy.py``:
``--strategies 'averaging,averaging:learning_rate_scaling="linear"'``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

import numpy as np


@dataclass(frozen=True)
class Problem:
    make_data: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]
    make_model: Callable[[], Any]
    metric: str  # a compiled metric's name, or "loss"
    higher_is_better: bool
    batch_size: int
    epochs: int


def _compiled(layers: list, optimizer: Any, loss: Any, metrics: list[str]) -> Any:
    import keras

    model = keras.Sequential(layers)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def multilabel_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    weights = rng.normal(size=(60, 12))
    x = rng.normal(size=(24_000, 60)).astype(np.float32)
    y = ((x @ weights + 2.0 * rng.normal(size=(len(x), 12))) > 1.0).astype(np.float32)
    return x, y


def multilabel_model() -> Any:
    import keras

    return _compiled([keras.Input((60,)), keras.layers.Dense(96, activation="relu"),
                      keras.layers.Dense(12, activation="sigmoid")],
                     keras.optimizers.Adam(1e-3), "binary_crossentropy", ["binary_accuracy"])


def signal_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    rows, steps, channels = 16_000, 64, 3
    y = rng.integers(0, 4, rows)
    frequency = np.array([2.0, 4.0, 6.0, 8.0])[y][:, None]
    phase = rng.uniform(0, 2 * np.pi, (rows, 1))
    wave = np.sin(2 * np.pi * frequency * np.arange(steps)[None, :] / steps + phase)
    x = np.stack([wave + 3.5 * rng.normal(size=(rows, steps)) for _ in range(channels)], axis=-1)
    return x.astype(np.float32), y.astype(np.int64)


def signal_model() -> Any:
    import keras

    return _compiled([keras.Input((64, 3)), keras.layers.Conv1D(16, 5, activation="relu"),
                      keras.layers.MaxPooling1D(2), keras.layers.Conv1D(16, 5, activation="relu"),
                      keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(4, activation="softmax")],
                     keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])


def autoencoder_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    basis = rng.normal(size=(6, 48))
    codes = rng.normal(size=(24_000, 6))
    x = np.tanh(codes @ basis / 2 + 0.1 * rng.normal(size=(len(codes), 48))).astype(np.float32)
    return x, x


def autoencoder_model() -> Any:
    import keras

    return _compiled([keras.Input((48,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(6),
                      keras.layers.Dense(32, activation="relu"), keras.layers.Dense(48)],
                     keras.optimizers.Adam(1e-3), "mse", [])


def huber_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    weights = rng.normal(size=20)
    x = rng.normal(size=(24_000, 20)).astype(np.float32)
    y = 3 * np.sin(x @ weights / 3) + 0.3 * rng.standard_t(3, len(x))
    return x, y.astype(np.float32)


def huber_model() -> Any:
    import keras

    return _compiled([keras.Input((20,)), keras.layers.Dense(64, activation="tanh"), keras.layers.Dense(1)],
                     keras.optimizers.SGD(0.01), keras.losses.Huber(), ["mae"])


def imbalanced_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(24_000, 40)).astype(np.float32)
    score = x[:, :10] @ rng.normal(size=10) + np.sin(x[:, 10:20] @ rng.normal(size=10)) + rng.normal(size=len(x))
    return x, (score > np.quantile(score, 0.88)).astype(np.float32)


def imbalanced_model() -> Any:
    import keras

    return _compiled([keras.Input((40,)), keras.layers.Dense(64, activation="relu"),
                      keras.layers.Dense(1, activation="sigmoid")],
                     keras.optimizers.Adam(1e-3), "binary_crossentropy", [keras.metrics.AUC(name="auc")])


def tokens_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 6, 20_000)
    common = rng.integers(0, 500, size=(len(y), 24))
    marked = 60 * y[:, None] + rng.integers(0, 60, size=(len(y), 24))  # each class has 60 ids of its own
    x = np.where(rng.random((len(y), 24)) < 0.25, marked, common)
    return x.astype(np.int32), y.astype(np.int64)


def tokens_model() -> Any:
    import keras

    return _compiled([keras.Input((24,), dtype="int32"), keras.layers.Embedding(500, 16),
                      keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(32, activation="relu"),
                      keras.layers.Dense(6, activation="softmax")],
                     keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])


def batchnorm_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centers = rng.normal(size=(8, 30)) * 1.5
    y = rng.integers(0, 8, 24_000)
    x = centers[y] + rng.normal(size=(len(y), 30)) * 2.0 + 3.0  # off-center, so normalizing matters
    return x.astype(np.float32), y.astype(np.int64)


def batchnorm_model() -> Any:
    import keras

    return _compiled([keras.Input((30,)), keras.layers.Dense(128), keras.layers.BatchNormalization(),
                      keras.layers.Activation("relu"), keras.layers.Dropout(0.3),
                      keras.layers.Dense(8, activation="softmax")],
                     keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy", ["accuracy"])


def two_outputs_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-2, 2, size=(24_000, 12)).astype(np.float32)
    y = np.stack([np.sin(x[:, 0] * x[:, 1]) + 0.5 * x[:, 2], np.cos(x[:, 3] + x[:, 4]) * x[:, 5]], axis=1)
    return x, (y + 0.05 * rng.normal(size=y.shape)).astype(np.float32)


def two_outputs_model() -> Any:
    import keras

    return _compiled([keras.Input((12,)), keras.layers.Dense(64, activation="relu"),
                      keras.layers.Dense(64, activation="relu"), keras.layers.Dense(2)],
                     keras.optimizers.RMSprop(1e-3), "mse", ["mae"])


def recurrent_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(10_000, 20, 3)).astype(np.float32)
    return x, (0.2 * x[:, :, 0].sum(axis=1) + x[:, -1, 1]).astype(np.float32)


def recurrent_model() -> Any:
    import keras

    return _compiled([keras.Input((20, 3)), keras.layers.LSTM(16), keras.layers.Dense(1)],
                     keras.optimizers.Adam(1e-3), "mse", [])


def digits_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = rng.permutation(len(digits.target))
    return (digits.data[order] / 16).astype(np.float32), digits.target[order].astype(np.int64)


def digits_model() -> Any:
    import keras

    return _compiled([keras.Input((64,)), keras.layers.Dense(64, activation="relu"),
                      keras.layers.Dense(10, activation="softmax")],
                     keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", ["accuracy"])


def cancer_data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer()
    order = rng.permutation(len(cancer.target))
    x = (cancer.data - cancer.data.mean(axis=0)) / cancer.data.std(axis=0)
    return x[order].astype(np.float32), cancer.target[order].astype(np.float32)


def cancer_model() -> Any:
    import keras

    return _compiled([keras.Input((30,)), keras.layers.Dense(16, activation="relu"),
                      keras.layers.Dense(1, activation="sigmoid")],
                     keras.optimizers.Adam(1e-3), "binary_crossentropy", ["binary_accuracy"])


PROBLEMS = {
    "multilabel": Problem(multilabel_data, multilabel_model, "binary_accuracy", True, 64, 4),
    "signal": Problem(signal_data, signal_model, "accuracy", True, 32, 3),
    "autoencoder": Problem(autoencoder_data, autoencoder_model, "loss", False, 64, 4),
    "huber": Problem(huber_data, huber_model, "mae", False, 16, 4),
    "imbalanced": Problem(imbalanced_data, imbalanced_model, "auc", True, 64, 4),
    "tokens": Problem(tokens_data, tokens_model, "accuracy", True, 32, 3),
    "batchnorm": Problem(batchnorm_data, batchnorm_model, "accuracy", True, 128, 4),
    "two_outputs": Problem(two_outputs_data, two_outputs_model, "mae", False, 32, 4),
    "recurrent": Problem(recurrent_data, recurrent_model, "loss", False, 32, 5),
    "digits": Problem(digits_data, digits_model, "accuracy", True, 32, 10),
    "cancer": Problem(cancer_data, cancer_model, "binary_accuracy", True, 16, 20),
}


def _scorer(x: np.ndarray, y: np.ndarray, metric: str) -> Any:
    import keras

    class Curve(keras.callbacks.Callback):
        """The held-out metric after every epoch, of the model the fit holds then."""

        def __init__(self) -> None:
            super().__init__()
            self.values: list[float] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            scores = self.model.evaluate(x, y, batch_size=1024, verbose=0, return_dict=True)
            self.values.append(round(float(scores[metric]), 4))

    return Curve()


def run_problem(spark: Any, name: str, problem: Problem, strategies: list[str], workers: list[int]) -> dict:
    import keras

    from sparkeras import SparkModel
    from time_to_accuracy import strategy_options

    x, y = problem.make_data(np.random.default_rng(0))
    cut = int(0.8 * len(x))
    (train_x, train_y), (test_x, test_y) = (x[:cut], y[:cut]), (x[cut:], y[cut:])
    keras.utils.set_random_seed(1)
    curve = _scorer(test_x, test_y, problem.metric)
    started = time.perf_counter()
    problem.make_model().fit(train_x, train_y, batch_size=problem.batch_size, epochs=problem.epochs, verbose=0,
                             callbacks=[curve])
    out: dict[str, Any] = {"problem": name, "metric": problem.metric, "epochs": problem.epochs,
                           "plain": curve.values, "plain_seconds": round(time.perf_counter() - started, 1)}
    rows = [(a.reshape(-1).tolist(), b.reshape(-1).tolist() if np.ndim(b) else b.item())
            for a, b in zip(train_x, train_y)]
    frame = spark.createDataFrame(rows, ["features", "label"]).repartition(max(workers)).cache()
    frame.count()
    try:
        for strategy in strategies:
            for count in workers:
                keras.utils.set_random_seed(1)
                curve = _scorer(test_x, test_y, problem.metric)
                strategy_name, options = strategy_options(strategy)
                SparkModel(problem.make_model(), strategy=strategy_name, num_workers=count, seed=0, **options).fit(
                    frame, features_col="features", label_col="label", batch_size=problem.batch_size,
                    epochs=problem.epochs, verbose=0, callbacks=[curve])
                out[f"{strategy}/{count}"] = curve.values
    finally:
        frame.unpersist()
    return out


def gap(result: dict, key: str, higher_is_better: bool) -> str:
    """The last epoch's gap to plain: points for a score in [0, 1] that grows, else percent of plain's value."""
    mine, plain = result[key][-1], result["plain"][-1]
    if higher_is_better:
        return f"{100 * (mine - plain):+.2f} pts"
    return f"{100 * (mine / plain - 1):+.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(PROBLEMS))
    parser.add_argument("--strategies", default="averaging,allreduce")
    parser.add_argument("--workers", default="2,4")
    parser.add_argument("--master", default="local[4]", help="enough task slots for the most workers")
    parser.add_argument("--json", help="also append each problem's result to this file, one JSON per line")
    args = parser.parse_args()
    names = args.tasks.split(",")
    unknown = [n for n in names if n not in PROBLEMS]
    if unknown:
        parser.error(f"--tasks: unknown {unknown}; choose from {list(PROBLEMS)}")
    strategies, workers = args.strategies.split(","), [int(w) for w in args.workers.split(",")]

    from sparkeras import get_spark
    from sparkeras.worker.runtime import import_keras_quietly

    spark = get_spark(args.master)
    import_keras_quietly()
    keys = [f"{s}/{w}" for s in strategies for w in workers]
    print("| problem | metric | plain | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for name in names:
        problem = PROBLEMS[name]
        result = run_problem(spark, name, problem, strategies, workers)
        cells = [f"{result[k][-1]:.4f} ({gap(result, k, problem.higher_is_better)})" for k in keys]
        print(f"| {name} | {problem.metric} at epoch {problem.epochs} | {result['plain'][-1]:.4f} | "
              + " | ".join(cells) + " |", flush=True)
        print("  curves: " + "; ".join(f"{k} {result[k]}" for k in ["plain"] + keys), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
