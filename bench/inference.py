"""Inference throughput: ``KerasModel.transform`` vs plain ``model.predict``, same model, rows and cores, one run.

Model: MLP 64-256-256-10 (softmax). Data: 1,000,000 rows of 64 float32
features. The plain baseline is ``model.predict`` on the rows as one numpy
array in this process. sparkeras runs ``KerasModel.transform`` on the
embedded ``local[2]`` session and writes the result to Spark's ``noop`` sink,
which forces every row's prediction and probability columns to be computed.

Two sources for sparkeras:

* ``cached``: a DataFrame of the same rows, read from Parquet and cached in
  Spark's memory before timing (the rows are already in Spark, as the numpy
  array is already in the baseline's memory);
* ``parquet``: read from a Parquet file while predicting (a batch-scoring job).

For reference it also times pyspark's ``predict_batch_udf`` with the same
model on the cached DataFrame.

Each timing is the best of ``--repeats`` runs after a warm-up run (Python
workers started, model loaded). The predictions of both sides are compared on
a sample of rows. Prints a table and one JSON line.

    python bench/inference.py [--rows 1000000] [--batch-size 1024] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

FEATURES = 64


def make_model(seed: int = 3):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def write_rows(rows: int, path: str, row_group: int = 50_000) -> np.ndarray:
    """Write ``rows`` random feature rows with an ``id`` column as Parquet; return them as numpy."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(0).normal(size=(rows, FEATURES)).astype(np.float32)
    offsets = pa.array(np.arange(0, x.size + 1, FEATURES, dtype=np.int64))
    features = pa.LargeListArray.from_arrays(offsets, pa.array(x.ravel())).cast(pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": pa.array(np.arange(rows)), "features": features}), path,
                   row_group_size=row_group)
    return x


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def predict_batch_udf_seconds(frame, model, args) -> float:
    """The same model through pyspark's own ``predict_batch_udf`` (pandas batches), for reference."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import types as T

    config, weights = model.to_json(), model.get_weights()

    def make_predict_fn():
        import keras

        rebuilt = keras.models.model_from_json(config)
        rebuilt.set_weights(weights)
        return lambda x: rebuilt.predict_on_batch(x)

    udf = predict_batch_udf(make_predict_fn, return_type=T.ArrayType(T.FloatType()), batch_size=args.batch_size,
                            input_tensor_shapes=[[FEATURES]])
    scored = frame.withColumn("probability", udf("features"))

    def run():
        scored.write.format("noop").mode("overwrite").save()

    run()
    return best_of(args.repeats, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it

    tmp = tempfile.TemporaryDirectory()
    path = os.path.join(tmp.name, "rows.parquet")
    x = write_rows(args.rows, path)
    model = make_model()

    model.predict(x[:10_000], batch_size=args.batch_size, verbose=0)
    plain_s = best_of(args.repeats, lambda: model.predict(x, batch_size=args.batch_size, verbose=0))
    expected = model.predict(x[:1000], batch_size=args.batch_size, verbose=0)

    from sparkeras import get_spark
    from sparkeras.session import keras_backend
    from sparkeras.ml import KerasModel

    spark = get_spark(args.master)
    stage = KerasModel(model=model, batchSize=args.batch_size)
    frames = {"parquet": spark.read.parquet(path), "cached": spark.read.parquet(path).cache()}
    frames["cached"].count()
    results = {}
    for source, frame in frames.items():
        scored = stage.transform(frame)

        def run(scored=scored):
            scored.write.format("noop").mode("overwrite").save()

        run()
        results[source] = best_of(args.repeats, run)
    results["predict_batch_udf"] = predict_batch_udf_seconds(frames["cached"], model, args)
    sample = stage.transform(frames["cached"].where(f"id < {len(expected)}")).orderBy("id").collect()
    got = np.array([r.probability for r in sample], dtype=np.float32)
    max_diff = float(np.abs(got - expected).max())
    assert max_diff < 1e-4, f"sparkeras and plain predictions differ by {max_diff}"
    assert [r.prediction for r in sample] == [float(c) for c in expected.argmax(axis=1)]

    report = {
        "benchmark": "inference_throughput",
        "rows": args.rows, "batch_size": args.batch_size, "master": args.master,
        "plain_rows_per_s": round(args.rows / plain_s),
        "sparkeras_cached_rows_per_s": round(args.rows / results["cached"]),
        "sparkeras_parquet_rows_per_s": round(args.rows / results["parquet"]),
        "ratio_cached": round(plain_s / results["cached"], 3),
        "ratio_parquet": round(plain_s / results["parquet"], 3),
        "predict_batch_udf_rows_per_s": round(args.rows / results["predict_batch_udf"]),
        "ratio_predict_batch_udf": round(plain_s / results["predict_batch_udf"], 3),
        "max_abs_difference": max_diff,
        "backend": keras_backend(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(f"plain model.predict (numpy)        : {report['plain_rows_per_s']:>10,} rows/s")
    for source in ("cached", "parquet"):
        print(f"sparkeras transform ({source:>7})    : {report[f'sparkeras_{source}_rows_per_s']:>10,} rows/s"
              f"  ratio {report[f'ratio_{source}']:.2f}")
    print(f"pyspark predict_batch_udf (cached): {report['predict_batch_udf_rows_per_s']:>10,} rows/s"
          f"  ratio {report['ratio_predict_batch_udf']:.2f}  (reference: same model, Spark's own helper)")
    print(json.dumps(report), flush=True)
    tmp.cleanup()


if __name__ == "__main__":
    main()
