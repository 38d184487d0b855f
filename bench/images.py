"""Scoring image files: ``read_images`` + ``KerasModel.transform`` vs plain Pillow + ``model.predict``, one run.

Data: ``--files`` image files (default 50,000), scikit-learn's digits drawn
at ``--stored-size`` pixels (default 64x64, larger than the model's input, as
stored photos are), half PNG and half JPEG, in ten class folders. They are
written once to ``--dir`` and reused.

Model: a small CNN on 32x32 grayscale (Rescaling, two Conv2D + pooling,
Dense 10).

* plain: one Python process lists the files, decodes each with Pillow
  (grayscale, bilinear resize to 32x32, as ``read_images`` does) into one
  numpy array, and calls ``model.predict`` on it;
* sparkeras: ``read_images`` on the embedded ``local[2]`` session, then
  ``KerasModel.transform``, whose ``path`` and ``prediction`` (what plain
  gives) are written to Spark's ``noop`` sink, which forces every
  prediction. The files are listed, read, decoded and scored in the Spark
  tasks.

``cold`` is the first sparkeras run in a fresh session (Python workers
start, TensorFlow loads); ``warm`` is the best of ``--repeats`` runs after
it, and plain is the best of as many runs. The predictions of both sides are compared on every file. Prints a table
and one JSON line.

    python bench/images.py [--files 50000] [--stored-size 64] [--repeats 2] [--dir /tmp/sparkeras-bench-images]
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

SIZE = 32


def write_files(root: str, files: int, stored: int) -> None:
    """``files`` digit images under ``root``/digit_<c>/, unless they are there already."""
    marker = os.path.join(root, f".complete-{files}-{stored}")
    if os.path.exists(marker):
        return
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(0)
    for i in range(files):
        k = i % len(pixels)
        folder = os.path.join(root, f"digit_{digits.target[k]}")
        os.makedirs(folder, exist_ok=True)
        noisy = np.clip(pixels[k].astype(int) + rng.integers(-20, 21, pixels[k].shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(noisy, "L").resize((stored, stored), Image.Resampling.BILINEAR)
        if i % 2:
            image.save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)
        else:
            image.save(os.path.join(folder, f"{i:06d}.png"))
    open(marker, "w").close()


def make_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 1)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def read_every_file(root: str) -> None:
    """Read each file once, so that both sides find them in the page cache.

    Plain runs first: right after the files were written, or after the other
    ``--stored-size`` pushed them out of memory, it alone read them from disk
    (plain took 16.1 s and 33.8 s in such runs against 9-11 s and 24 s).
    """
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as f:
                f.read()


def plain(root: str, model) -> tuple[float, dict]:
    """List, decode with Pillow and predict in this process; returns seconds and {path: class}."""
    from PIL import Image

    start = time.perf_counter()
    paths = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                   if f.lower().endswith((".png", ".jpg")))
    x = np.empty((len(paths), SIZE, SIZE, 1), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as image:
            if image.format == "JPEG":
                image.draft("L", (SIZE, SIZE))
            x[i, ..., 0] = np.asarray(image.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    scores = model.predict(x.astype(np.float32), batch_size=256, verbose=0)
    seconds = time.perf_counter() - start
    return seconds, dict(zip(paths, scores.argmax(axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--stored-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dir", default="/tmp/sparkeras-bench-images")
    args = parser.parse_args()
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it

    root = os.path.join(args.dir, f"{args.files}-{args.stored_size}")
    write_files(root, args.files, args.stored_size)
    model = make_model()
    read_every_file(root)
    runs = [plain(root, model) for _ in range(args.repeats)]
    plain_seconds, expected = min(t for t, _ in runs), runs[0][1]

    import sparkeras
    from sparkeras.ml import KerasModel

    spark = sparkeras.get_spark("local[2]", app_name="bench-images")
    spark.sparkContext.setLogLevel("OFF")
    stage = KerasModel(model=model, featuresCol="image", batchSize=args.batch_size)

    def run():
        frame = sparkeras.read_images(spark, root, SIZE, color_mode="grayscale", labels=None)
        stage.transform(frame).select("path", "prediction").write.format("noop").mode("overwrite").save()

    times = []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    frame = sparkeras.read_images(spark, root, SIZE, color_mode="grayscale", labels=None)
    partitions = frame.rdd.getNumPartitions()
    got = {r.path[len("file:"):]: int(r.prediction) for r in stage.transform(frame).select("path", "prediction")
           .collect()}
    agree = float(np.mean([got[p] == c for p, c in expected.items()])) if len(got) == len(expected) else 0.0
    cold, warm = times[0], min(times[1:])
    result = {
        "benchmark": "images", "files": args.files, "stored_size": args.stored_size, "model_input": [SIZE, SIZE, 1],
        "plain_seconds": round(plain_seconds, 2), "sparkeras_cold_seconds": round(cold, 2),
        "sparkeras_warm_seconds": round(warm, 2), "ratio_cold": round(plain_seconds / cold, 2),
        "ratio_warm": round(plain_seconds / warm, 2), "files_per_second_plain": round(args.files / plain_seconds),
        "files_per_second_warm": round(args.files / warm), "partitions": partitions,
        "predictions_agree": round(agree, 4), "backend": os.environ.get("KERAS_BACKEND", "tensorflow"),
        "cores": os.cpu_count(), "machine": platform.machine(),
    }
    print(f"{'':24}{'seconds':>10}{'files/s':>10}{'ratio':>8}")
    print(f"{'plain Pillow + predict':24}{plain_seconds:10.2f}{args.files / plain_seconds:10.0f}{1:8.2f}")
    print(f"{'sparkeras cold':24}{cold:10.2f}{args.files / cold:10.0f}{plain_seconds / cold:8.2f}")
    print(f"{'sparkeras warm':24}{warm:10.2f}{args.files / warm:10.0f}{plain_seconds / warm:8.2f}")
    print(json.dumps(result))
    spark.stop()


if __name__ == "__main__":
    main()
