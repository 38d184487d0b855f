"""The benchmark problems: generated data (no downloads) and the Keras model a user would fit on it.

Each :class:`Task` is sized so that plain ``model.fit`` takes 20-60 s on 2
cores, and the data is learnable but noisy, so the test metric keeps moving
for several epochs and no strategy can hide behind a saturated score.

* ``mlp``: 10 classes, 784 features (MNIST-shaped); each class is a mixture
  of 6 noisy clusters (so the boundary is not linear) and 10% of the labels
  are flipped; MLP 784-128-10, Adam defaults, batch 64.
* ``cnn``: 28x28 grey images of 10 random smooth templates, shifted by up to
  8 pixels, under heavy pixel noise, 5% flipped labels;
  Conv-Pool-Conv-Pool-Dense, Adam, batch 64.
* ``regression``: 32 features, a smooth non-linear target plus noise; MLP
  32-128-64-1, Adam, mean squared error, batch 64; scored by R^2.
* ``sequence``: 40 integer tokens out of 500 per row, the class is whether 4 or
  more of them are rare (below 50), 5% flipped labels; Embedding-GRU-Dense,
  Adam, batch 64. A recurrent model on integer columns, and a task whose
  plain curve jumps in the first epochs: added as a held-out-style check after
  the defaults were chosen, not used to choose them.
* ``text``: short documents as strings, 6 topics; each document is 24 words
  drawn from 3,000 common words (Zipf-like frequencies) plus 2 words of its
  topic's 300 (neighbouring topics share 50), 10% flipped labels. The model
  takes the strings: ``keras.Input(shape=(), dtype="string")``,
  ``TextVectorization`` (the generator's vocabulary, sequences of 32),
  Embedding 32, mean over words, Dense 32, Adam, batch 64. Added with string
  inputs, after the defaults were chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass(frozen=True)
class Task:
    name: str
    make_data: Callable[[], tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]]
    make_model: Callable[[], Any]
    metric: str  # "accuracy" or "r2", else a metric the model was compiled with, or "loss"
    epochs: int
    batch_size: int = 64
    higher_is_better: bool = True

    def score(self, model: Any, x: np.ndarray, y: np.ndarray) -> float:
        if self.metric not in ("accuracy", "r2"):
            return float(model.evaluate(x, y, batch_size=1024, verbose=0, return_dict=True)[self.metric])
        pred = model.predict(x, batch_size=2048, verbose=0)
        if self.metric == "accuracy":
            return float(np.mean(np.argmax(pred, axis=1) == y))
        pred = pred.reshape(-1)
        return float(1.0 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def _split(x: np.ndarray, y: np.ndarray, test: int):
    return (x[:-test], y[:-test]), (x[-test:], y[-test:])


def mlp_data(rows: int = 60_000, test: int = 10_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(60, 784)).astype(np.float32)
    cluster = rng.integers(0, 60, rows + test)
    y = cluster % 10
    x = centers[cluster] + 6.0 * rng.normal(size=(len(y), 784)).astype(np.float32)
    x /= np.abs(x).max()
    flip = rng.random(len(y)) < 0.10
    y = np.where(flip, rng.integers(0, 10, len(y)), y)
    return _split(x.astype(np.float32), y.astype(np.int64), test)


def mlp_model(seed: int = 7):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def cnn_data(rows: int = 40_000, test: int = 10_000, seed: int = 1):
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(10, 36, 36)).astype(np.float32)
    kernel = np.exp(-0.5 * (np.arange(-3, 4) / 1.5) ** 2)
    kernel /= kernel.sum()
    for axis in (1, 2):  # smooth templates: strokes, not pixel noise
        raw = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, raw)
    raw /= raw.std(axis=(1, 2), keepdims=True)
    y = rng.integers(0, 10, rows + test)
    dx, dy = rng.integers(0, 9, len(y)), rng.integers(0, 9, len(y))
    x = np.empty((len(y), 28, 28, 1), np.float32)
    for i in range(len(y)):
        x[i, :, :, 0] = raw[y[i], dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    x += 4.0 * rng.normal(size=x.shape).astype(np.float32)
    flip = rng.random(len(y)) < 0.05
    y = np.where(flip, rng.integers(0, 10, len(y)), y)
    return _split(x, y.astype(np.int64), test)


def cnn_model(seed: int = 7):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def regression_data(rows: int = 120_000, test: int = 10_000, seed: int = 2):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(rows + test, 32)).astype(np.float32)
    w = rng.normal(size=(32, 8)).astype(np.float32) / np.sqrt(32)
    h = x @ w
    y = (np.sin(3.0 * h[:, 0]) + h[:, 1] * h[:, 2] * 2.0 + np.cos(2.0 * h[:, 3] + h[:, 4])
         + np.tanh(4.0 * h[:, 5]) * h[:, 6] + 0.5 * h[:, 7] ** 2)
    y = y + 0.3 * rng.normal(size=len(y))
    y = (y - y.mean()) / y.std()
    return _split(x, y.astype(np.float32), test)


def regression_model(seed: int = 7):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((32,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def sequence_data(rows: int = 30_000, test: int = 10_000, seed: int = 3):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 500, size=(rows + test, 40)).astype(np.int32)
    y = ((x < 50).sum(axis=1) >= 4).astype(np.int64)
    flip = rng.random(len(y)) < 0.05
    y = np.where(flip, 1 - y, y)
    return _split(x, y, test)


def sequence_model(seed: int = 7):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((40,), dtype="int32"),
        keras.layers.Embedding(500, 16),
        keras.layers.GRU(16),
        keras.layers.Dense(2, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


TEXT_COMMON, TEXT_TOPICS, TEXT_TOPIC_WORDS = 3000, 6, 300


def _text_words() -> tuple[np.ndarray, np.ndarray]:
    """The common words, and each topic's words (neighbouring topics share 50 of them)."""
    common = np.array([f"w{i}" for i in range(TEXT_COMMON)])
    topics = np.array([[f"t{(k * 250 + j) % (TEXT_TOPICS * 250)}" for j in range(TEXT_TOPIC_WORDS)]
                       for k in range(TEXT_TOPICS)])
    return common, topics


def text_data(rows: int = 60_000, test: int = 10_000, seed: int = 4):
    rng = np.random.default_rng(seed)
    common, topics = _text_words()
    frequency = 1.0 / np.arange(1, TEXT_COMMON + 1)
    n = rows + test
    y = rng.integers(0, TEXT_TOPICS, n)
    filler = rng.choice(common, size=(n, 24), p=frequency / frequency.sum())
    topical = topics[y[:, None], rng.integers(0, TEXT_TOPIC_WORDS, size=(n, 2))]
    words = np.concatenate([filler, topical], axis=1)
    words = np.take_along_axis(words, rng.random(words.shape).argsort(axis=1), axis=1)
    x = np.array([" ".join(row) for row in words], dtype=object)
    flip = rng.random(n) < 0.10
    y = np.where(flip, rng.integers(0, TEXT_TOPICS, n), y).astype(np.int64)
    return _split(x, y, test)


def text_model(seed: int = 7):
    import keras

    keras.utils.set_random_seed(seed)
    common, topics = _text_words()
    vocabulary = list(common) + sorted(set(topics.ravel()))
    text = keras.Input(shape=(), dtype="string", name="text")
    ids = keras.layers.TextVectorization(vocabulary=vocabulary, output_sequence_length=32)(text)
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(len(vocabulary) + 2, 32)(ids))
    h = keras.layers.Dense(32, activation="relu")(h)
    model = keras.Model(text, keras.layers.Dense(TEXT_TOPICS, activation="softmax")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


TASKS = {
    "mlp": Task("mlp", mlp_data, mlp_model, "accuracy", epochs=10),
    "cnn": Task("cnn", cnn_data, cnn_model, "accuracy", epochs=5),
    "regression": Task("regression", regression_data, regression_model, "r2", epochs=10),
    "sequence": Task("sequence", sequence_data, sequence_model, "accuracy", epochs=4),
    "text": Task("text", text_data, text_model, "accuracy", epochs=3),
}
