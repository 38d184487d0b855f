"""Training throughput: sparkeras vs plain ``model.fit``, same model, data and cores, one run.

Model: MLP 784-128-10; data: 60,000 rows of a learnable synthetic 10-class
problem (MNIST-shaped, no download); batch 64; 3 epochs. The plain baseline
runs ``model.fit`` in this process; sparkeras trains the same initial model
on the embedded ``local[2]`` session with 2 workers. Both timings cover
``fit`` alone (the Spark session and Python workers are started by a warm-up
fit first, as a long-running cluster would have them), and the cold first fit
is reported too. Prints a table and one JSON line.

``--source parquet`` trains sparkeras from a Parquet file of the same rows
(the data engineer's case: data that lives in Spark) instead of from the
driver's numpy arrays. The strategy name ``allreduce-gloo`` is ``allreduce``
with ``shared_memory=False`` (every reduction over gloo's TCP), to compare.

``--tracking N`` then measures what tracking costs: N more warm fits each
without callbacks, with sparkeras' tracking (``MLflowLogger`` with its
defaults, into a sqlite store: params, every epoch's metrics and the model;
and ``ClusterScalars`` for TensorBoard), the same with ``log_model=False``,
and with ``MLflowLogger`` and Keras' own ``TensorBoard`` callback (which adds sparkeras' scalars by itself),
interleaved; it reports the median overheads, the time to log the model
alone, and the driver CPU that tracking adds (its background writes waited
for) as a share of the untracked fit's core-seconds: a figure the machine's
noise moves far less than wall time.

    python bench/throughput.py [--strategy averaging[,adag,allreduce,allreduce-gloo,...]]
                               [--source numpy|parquet] [--rows 60000]
                               [--epochs 3] [--learning-rate 0.001] [--tracking 5]
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


def make_data(rows: int, seed: int = 0):
    """A learnable 10-class problem: noisy clusters in 784 dimensions."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, 784)).astype(np.float32)
    y = rng.integers(0, 10, rows + 10_000)
    x = (centers[y] + 12.0 * rng.normal(size=(len(y), 784))).astype(np.float32)
    x /= np.abs(x).max()
    return (x[:rows], y[:rows]), (x[rows:], y[rows:])


def write_parquet(x, y, directory: str) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(directory, "train.parquet")
    offsets = pa.array(np.arange(0, x.size + 1, x.shape[1], dtype=np.int32))
    features = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))
    pq.write_table(pa.table({"features": features, "label": pa.array(y)}), path)
    return path


def make_model(seed: int = 7, learning_rate: float = 0.001):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _strategy(name: str):
    if name == "allreduce-gloo":
        from sparkeras import AllReduce

        return AllReduce(shared_memory=False)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="averaging",
                        help="a strategy name, or several separated by commas (one baseline for all)")
    parser.add_argument("--learning-rate", type=float, default=0.001, help="Adam's, for both sides")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--source", choices=("numpy", "parquet"), default="numpy")
    parser.add_argument("--tracking", type=int, default=0, metavar="N",
                        help="N warm fits with and N without MLflow and TensorBoard logging, interleaved")
    args = parser.parse_args()

    (x, y), (xt, yt) = make_data(args.rows)
    samples = args.rows * args.epochs

    baseline = make_model(learning_rate=args.learning_rate)
    start = time.perf_counter()
    baseline.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
    plain_s = time.perf_counter() - start
    plain_acc = float(baseline.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"])

    from sparkeras import SparkModel, get_spark
    from sparkeras.session import keras_backend

    get_spark(args.master)
    tmp = tempfile.TemporaryDirectory()
    data = {"x": x, "y": y} if args.source == "numpy" else {"data": write_parquet(x, y, tmp.name)}
    print(f"plain model.fit     : {round(samples / plain_s):>8,} samples/s  test acc {plain_acc:.4f}")
    for strategy in args.strategy.split(","):
        results = {}
        for run in ("cold", "warm"):
            sm = SparkModel(make_model(learning_rate=args.learning_rate), strategy=_strategy(strategy),
                            num_workers=args.workers, seed=0)
            start = time.perf_counter()
            sm.fit(**data, batch_size=args.batch_size, epochs=args.epochs, verbose=0)
            results[run] = time.perf_counter() - start
        spark_acc = float(sm.model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"])
        report = {
            "benchmark": "train_throughput",
            "strategy": strategy,
            "source": args.source,
            "rows": args.rows, "epochs": args.epochs, "batch_size": args.batch_size, "workers": args.workers,
            "learning_rate": args.learning_rate,
            "plain_samples_per_s": round(samples / plain_s),
            "sparkeras_samples_per_s": round(samples / results["warm"]),
            "sparkeras_cold_samples_per_s": round(samples / results["cold"]),
            "ratio": round(plain_s / results["warm"], 3),
            "ratio_cold": round(plain_s / results["cold"], 3),
            "plain_test_accuracy": round(plain_acc, 4),
            "sparkeras_test_accuracy": round(spark_acc, 4),
            "backend": keras_backend(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
        print(f"sparkeras ({strategy}, {args.source}, warm): {report['sparkeras_samples_per_s']:>8,} samples/s  "
              f"test acc {spark_acc:.4f}  ratio {report['ratio']:.2f}  "
              f"(first fit, cold workers: ratio {report['ratio_cold']:.2f})")
        if args.tracking:
            report.update(tracking_overhead(args, strategy, data, tmp.name))
            print(f"tracking (MLflowLogger + ClusterScalars): {report['tracking_overhead_pct']:+.1f}% of a warm fit; "
                  f"without logging the model: {report['tracking_without_model_overhead_pct']:+.1f}%; "
                  f"with Keras' TensorBoard too: {report['tracking_with_keras_tensorboard_overhead_pct']:+.1f}% "
                  f"(medians of {args.tracking}); logging the model alone: {report['log_model_s']:.2f}s; "
                  f"driver CPU added: {report['tracking_driver_cpu_pct_of_fit']:.1f}% of the fit's core-seconds")
        print(json.dumps(report), flush=True)
    tmp.cleanup()


def tracking_overhead(args: argparse.Namespace, strategy: str, data: dict, directory: str) -> dict:
    """Median warm fit time without callbacks, with sparkeras' tracking, and with Keras' TensorBoard too.

    The three kinds are interleaved, so they share the machine's noise.
    """
    import keras

    from sparkeras import SparkModel
    from sparkeras.callbacks import ClusterScalars, MLflowLogger
    from sparkeras.tracking.mlflow import log_keras_model

    uri = f"sqlite:///{directory}/mlflow.db"
    os.chdir(directory)  # the sqlite store's artifacts go to ./mlruns
    kinds = {
        "untracked": lambda i: None,
        "tracked": lambda i: [MLflowLogger(tracking_uri=uri, experiment="bench"),
                              ClusterScalars(os.path.join(directory, f"tb{i}"))],
        "tracked_without_model": lambda i: [MLflowLogger(tracking_uri=uri, experiment="bench", log_model=False),
                                            ClusterScalars(os.path.join(directory, f"n{i}"))],
        "tracked_keras_tensorboard": lambda i: [MLflowLogger(tracking_uri=uri, experiment="bench"),
                                                keras.callbacks.TensorBoard(os.path.join(directory, f"k{i}"))],
    }
    times: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, list[float]] = {k: [] for k in kinds}  # the driver's CPU seconds, its threads included
    logger = None
    for i in range(args.tracking):
        for kind, callbacks in kinds.items():
            sm = SparkModel(make_model(learning_rate=args.learning_rate), strategy=_strategy(strategy),
                            num_workers=args.workers, seed=0)
            given = callbacks(i)
            logger = given[0] if given else logger
            start, start_cpu = time.perf_counter(), time.process_time()
            sm.fit(**data, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=given)
            if logger is not None:
                logger.wait()  # the background writes count as this fit's driver CPU
            times[kind].append(time.perf_counter() - start)
            cpu[kind].append(time.process_time() - start_cpu)
    logger.wait()
    start = time.perf_counter()
    log_keras_model(sm.model, logger.run)
    log_model_s = time.perf_counter() - start
    median = {k: float(np.median(v)) for k, v in times.items()}
    cpu_median = {k: float(np.median(v)) for k, v in cpu.items()}
    core_seconds = median["untracked"] * min(os.cpu_count() or 1, args.workers)
    return {"tracking_fits": args.tracking, **{f"{k}_median_s": round(v, 3) for k, v in median.items()},
            **{f"{k}_driver_cpu_median_s": round(v, 3) for k, v in cpu_median.items()},
            "tracking_driver_cpu_pct_of_fit":
                round(100 * (cpu_median["tracked"] - cpu_median["untracked"]) / core_seconds, 2),
            "tracking_overhead_pct": round(100 * (median["tracked"] / median["untracked"] - 1), 2),
            "tracking_without_model_overhead_pct":
                round(100 * (median["tracked_without_model"] / median["untracked"] - 1), 2),
            "tracking_with_keras_tensorboard_overhead_pct":
                round(100 * (median["tracked_keras_tensorboard"] / median["untracked"] - 1), 2),
            "log_model_s": round(log_model_s, 3)}


if __name__ == "__main__":
    main()
