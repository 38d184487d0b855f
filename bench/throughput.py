"""Training throughput: sparkeras vs plain ``model.fit``, same model, data and cores, one run.

Model: MLP 784-128-10 (``--hidden`` for others); data: 60,000 rows of a learnable synthetic 10-class
problem (MNIST-shaped, no download); batch 64; 3 epochs. The plain baseline
runs ``model.fit`` in this process; sparkeras trains the same initial model
on the embedded ``local[2]`` session with 2 workers. Both timings cover
``fit`` alone (the Spark session and Python workers are started by a warm-up
fit first, as a long-running cluster would have them), and the cold first fit
is reported too. Prints a table and one JSON line.

``--source parquet`` trains sparkeras from a Parquet file of the same rows
(the data engineer's case: data that lives in Spark) instead of from the
driver's numpy arrays. The strategy name ``allreduce-tcp`` is ``allreduce``
with ``shared_memory=False`` (every worker a member of the TCP ring), to compare.

``--validation-split F`` has both sides hold out F of the rows and score
them after every epoch (Keras takes the last rows, sparkeras a random share).

``--sorted`` orders the training rows by label, as data written by label is
(``partitionBy("label")``, one folder per class): Keras' ``fit`` shuffles
them all; sparkeras deals them across its workers again before training
(:mod:`sparkeras.data.label_mix`), which the cold fit pays for.

``--tracking N`` then measures what tracking costs: N more warm fits each
without callbacks, with sparkeras' tracking (``MLflowLogger`` with its
defaults, into a sqlite store: params, every epoch's metrics and the model;
and ``ClusterScalars`` for TensorBoard), the same with ``log_model=False``,
and with ``MLflowLogger`` and Keras' own ``TensorBoard`` callback (which adds
sparkeras' scalars by itself), interleaved; it reports the median overheads,
the paired one with a 95% bootstrap interval; the same measured directly (the
fit thread's time in the tracking callbacks plus the wait for the background
writes: a floor, which the machine's noise moves far less than wall time),
with the writer thread's CPU while the workers trained; the time to log the
model alone; and the driver CPU that tracking adds as a share of the untracked
fit's core-seconds. ``--tracking-kinds defaults`` runs only the untracked and
the default tracked fits, so that the same time buys twice the rounds (one
warm fit's wall time varies by more than the effect measured).

    python bench/throughput.py [--strategy averaging[,adag,allreduce,allreduce-tcp,...]]
                               [--source numpy|parquet] [--rows 60000] [--hidden 128] [--validation-split 0.1]
                               [--sorted]
                               [--epochs 3] [--learning-rate 0.001] [--tracking 5]
                               [--tracking-kinds defaults,log_model=False,keras_tensorboard]
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


def make_model(seed: int = 7, learning_rate: float = 0.001, hidden: tuple[int, ...] = (128,)):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((784,)),
        *(keras.layers.Dense(units, activation="relu") for units in hidden),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _strategy(name: str):
    if name == "allreduce-tcp":
        from sparkeras import AllReduce

        return AllReduce(shared_memory=False)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="averaging",
                        help="a strategy name, or several separated by commas (one baseline for all)")
    parser.add_argument("--learning-rate", type=float, default=0.001, help="Adam's, for both sides")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--hidden", default="128", metavar="UNITS,...",
                        help="the MLP's hidden layers (4096,2048: 11.6M weights, for the cost of moving large states)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--source", choices=("numpy", "parquet"), default="numpy")
    parser.add_argument("--validation-split", type=float, default=0.0, metavar="F",
                        help="both sides hold out F of the rows and score them after every epoch")
    parser.add_argument("--sorted", action="store_true", help="the training rows ordered by label, on both sides")
    parser.add_argument("--tracking", type=int, default=0, metavar="N",
                        help="N warm fits with and N without MLflow and TensorBoard logging, interleaved")
    parser.add_argument("--tracking-kinds", default=",".join(TRACKING_KINDS), metavar="KINDS",
                        help=f"the tracked kinds to time against untracked fits, of {', '.join(TRACKING_KINDS)}")
    args = parser.parse_args()
    if args.sorted and args.validation_split:
        parser.error("--sorted with --validation-split: Keras would hold out the last rows, all of the last class")
    unknown = set(args.tracking_kinds.split(",")) - set(TRACKING_KINDS)
    if unknown or "defaults" not in args.tracking_kinds.split(","):
        parser.error(f"--tracking-kinds: give defaults, and any of {', '.join(TRACKING_KINDS)}"
                     + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else ""))
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it

    (x, y), (xt, yt) = make_data(args.rows)
    if args.sorted:
        order = np.argsort(y, kind="stable")
        x, y = x[order], y[order]
    samples = args.rows * args.epochs

    hidden = tuple(int(units) for units in args.hidden.split(","))
    baseline = make_model(learning_rate=args.learning_rate, hidden=hidden)
    start = time.perf_counter()
    baseline.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                 validation_split=args.validation_split)
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
            sm = SparkModel(make_model(learning_rate=args.learning_rate, hidden=hidden), strategy=_strategy(strategy),
                            num_workers=args.workers, seed=0)
            start = time.perf_counter()
            sm.fit(**data, batch_size=args.batch_size, epochs=args.epochs, verbose=0,
                   validation_split=args.validation_split)
            results[run] = time.perf_counter() - start
        spark_acc = float(sm.model.evaluate(xt, yt, verbose=0, return_dict=True)["accuracy"])
        report = {
            "benchmark": "train_throughput",
            "strategy": strategy,
            "source": args.source,
            "rows": args.rows, "hidden": list(hidden), "epochs": args.epochs, "batch_size": args.batch_size,
            "workers": args.workers,
            "learning_rate": args.learning_rate,
            "validation_split": args.validation_split,
            "sorted_by_label": args.sorted,
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
            print(f"tracking (MLflowLogger + ClusterScalars), medians of {args.tracking} warm fits:")
            for name, (_, label) in TRACKING_KINDS.items():
                if name not in args.tracking_kinds.split(","):
                    continue
                print(f"  {name:24s} wall {report[f'{label}_overhead_pct']:+5.1f}% "
                      f"(paired {report[f'{label}_paired_overhead_pct']:+5.1f}%, 95% interval "
                      f"{report[f'{label}_paired_overhead_ci95_pct'][0]:+.1f}% to "
                      f"{report[f'{label}_paired_overhead_ci95_pct'][1]:+.1f}%)  "
                      f"measured directly {report[f'{label}_direct_pct']:.1f}% "
                      f"(on the fit's thread {report[f'{label}_on_thread_ms']:.0f} ms, "
                      f"waiting for the writes {report[f'{label}_end_wait_ms']:.0f} ms; the writer's CPU "
                      f"while training {report[f'{label}_writer_cpu_while_training_ms']:.0f} ms)")
            print(f"  logging the model alone: {report['log_model_s']:.2f}s; driver CPU added: "
                  f"{report['tracking_driver_cpu_pct_of_fit']:.1f}% of the fit's core-seconds")
            timed = ["untracked", *(TRACKING_KINDS[name][0] for name in args.tracking_kinds.split(","))]
            print("  Python's full collections inside the fits, ms per fit (fits with one): " + ", ".join(
                f"{kind} {report[f'{kind}_full_collections_ms_per_fit']:.0f} "
                f"({report[f'{kind}_fits_with_a_full_collection']})" for kind in timed))
        print(json.dumps(report), flush=True)
    tmp.cleanup()


TRACKING_KINDS = {  # --tracking-kinds name: (the fit's kind, its key in the report)
    "defaults": ("tracked", "tracking"),
    "log_model=False": ("tracked_without_model", "tracking_without_model"),
    "keras_tensorboard": ("tracked_keras_tensorboard", "tracking_with_keras_tensorboard"),
}


def tracking_overhead(args: argparse.Namespace, strategy: str, data: dict, directory: str) -> dict:
    """What tracking adds to a warm fit, measured two ways over N interleaved fits of each kind.

    The kinds (no callbacks; sparkeras' tracking; the same without the
    model; with Keras' TensorBoard too) are interleaved, so they share the
    machine's noise. **Wall medians** compare whole fits, but one warm fit
    varies by more than the effect; the **paired** figure is the median
    of the differences between the fits of one round, which share the
    machine's state more closely than the medians do. The tracked fits are also
    **measured directly**: the time the fit's thread spends inside the
    tracking callbacks, plus the wait after ``fit`` returns for the
    background writes (each tracked fit waits for them inside its timed
    region); and, apart, the CPU the writer thread spent while the workers
    trained. The direct figure leaves out what the writer thread's CPU
    slows (the workers, the fit's own Python work), so it is a floor.
    """
    import keras

    from sparkeras import SparkModel
    from sparkeras.callbacks import ClusterScalars, MLflowLogger
    from sparkeras.tracking import mlflow as tracking_mlflow

    uri = f"sqlite:///{directory}/mlflow.db"
    os.chdir(directory)  # the sqlite store's artifacts go to ./mlruns
    every_kind = {
        "untracked": lambda i: None,
        "tracked": lambda i: [MLflowLogger(tracking_uri=uri, experiment="bench"),
                              ClusterScalars(os.path.join(directory, f"tb{i}"))],
        "tracked_without_model": lambda i: [MLflowLogger(tracking_uri=uri, experiment="bench", log_model=False),
                                            ClusterScalars(os.path.join(directory, f"n{i}"))],
        "tracked_keras_tensorboard": lambda i: [MLflowLogger(tracking_uri=uri, experiment="bench"),
                                                keras.callbacks.TensorBoard(os.path.join(directory, f"k{i}"))],
    }
    chosen = {TRACKING_KINDS[name][0] for name in args.tracking_kinds.split(",")}
    kinds = {k: v for k, v in every_kind.items() if k == "untracked" or k in chosen}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    collections: dict[str, list[float]] = {k: [] for k in kinds}  # seconds of full collections inside each fit
    cpu: dict[str, list[float]] = {k: [] for k in kinds}  # the driver's CPU seconds, its threads included
    direct: dict[str, list[dict[str, float]]] = {k: [] for k in kinds if k != "untracked"}
    logger = None
    hidden = tuple(int(units) for units in args.hidden.split(","))
    for i in range(args.tracking):
        order = list(kinds.items())
        for kind, callbacks in order[i % len(order):] + order[:i % len(order)]:  # no kind always runs first
            sm = SparkModel(make_model(learning_rate=args.learning_rate, hidden=hidden), strategy=_strategy(strategy),
                            num_workers=args.workers, seed=0)
            given = callbacks(i)
            on_thread = [0.0]
            for callback in given or []:
                _time_hooks(callback, on_thread)
            logger = given[0] if given else logger
            writer_cpu = _writer_cpu(tracking_mlflow)
            full = _FullCollections()
            start, start_cpu = time.perf_counter(), time.process_time()
            sm.fit(**data, batch_size=args.batch_size, epochs=args.epochs, verbose=0, callbacks=given)
            returned, writer_at_return = time.perf_counter(), _writer_cpu(tracking_mlflow)
            if given:
                logger.wait()  # the background writes count as this fit's time and driver CPU
            times[kind].append(time.perf_counter() - start)
            cpu[kind].append(time.process_time() - start_cpu)
            collections[kind].append(full.stop())
            if given:
                direct[kind].append({"on_thread": on_thread[0], "end_wait": time.perf_counter() - returned,
                                     "writer_cpu_while_training": writer_at_return - writer_cpu})
    logger.wait()
    start = time.perf_counter()
    tracking_mlflow.log_keras_model(sm.model, logger.run)
    log_model_s = time.perf_counter() - start
    median = {k: float(np.median(v)) for k, v in times.items()}
    cpu_median = {k: float(np.median(v)) for k, v in cpu.items()}
    core_seconds = median["untracked"] * min(os.cpu_count() or 1, args.workers)
    out = {"tracking_fits": args.tracking, **{f"{k}_median_s": round(v, 3) for k, v in median.items()},
           **{f"{k}_driver_cpu_median_s": round(v, 3) for k, v in cpu_median.items()},
           "tracking_driver_cpu_pct_of_fit":
               round(100 * (cpu_median["tracked"] - cpu_median["untracked"]) / core_seconds, 2),
           "log_model_s": round(log_model_s, 3),
           **{f"{k}_full_collections_ms_per_fit": round(1000 * float(np.mean(v)), 1) for k, v in collections.items()},
           **{f"{k}_fits_with_a_full_collection": sum(1 for s in v if s > 0) for k, v in collections.items()}}
    for kind, label in TRACKING_KINDS.values():
        if kind not in kinds:
            continue
        out[f"{label}_overhead_pct"] = round(100 * (median[kind] / median["untracked"] - 1), 2)
        paired = [t - u for t, u in zip(times[kind], times["untracked"])]  # fit i of each kind ran back to back
        out[f"{label}_paired_overhead_pct"] = round(100 * float(np.median(paired)) / median["untracked"], 2)
        out[f"{label}_paired_overhead_ci95_pct"] = [
            round(100 * bound / median["untracked"], 2) for bound in _median_interval(paired)]
        parts = {k: float(np.median([d[k] for d in direct[kind]])) for k in direct[kind][0]}
        added = float(np.median([d["on_thread"] + d["end_wait"] for d in direct[kind]]))
        out.update({f"{label}_{k}_ms": round(1000 * v, 1) for k, v in parts.items()})
        out[f"{label}_direct_pct"] = round(100 * added / median["untracked"], 2)
    return out


def _median_interval(values: list[float]) -> tuple[float, float]:
    """A 95% bootstrap interval for the median of ``values`` (scipy's percentile bootstrap, seeded): whether
    the paired figure is below a threshold, or only its median is."""
    from scipy.stats import bootstrap

    if len(values) < 3:
        return float("nan"), float("nan")
    low, high = bootstrap((np.asarray(values),), np.median, confidence_level=0.95, method="percentile",
                          random_state=np.random.default_rng(0)).confidence_interval
    return float(low), float(high)


class _FullCollections:
    """The seconds Python's full garbage collections (generation 2) take from now until :meth:`stop`.

    With TensorFlow, Keras, Spark and MLflow loaded, one walks about 600,000
    objects and holds the interpreter for 0.3-0.4 s.
    """

    def __init__(self) -> None:
        import gc

        self.seconds, self._started = 0.0, None
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.seconds += time.perf_counter() - self._started

    def stop(self) -> float:
        import gc

        gc.callbacks.remove(self._observe)
        return self.seconds


def _time_hooks(callback: object, total: list[float]) -> None:
    """Add the time of each of ``callback``'s fit hooks, on the calling thread, to ``total[0]``."""
    for name in ("set_params", "set_model", "on_fit_start", "on_train_begin", "on_epoch_begin", "on_epoch_end",
                 "on_epoch_figures", "on_train_end"):
        hook = getattr(callback, name, None)
        if hook is None:
            continue

        def timed(*args, _hook=hook, **kwargs):
            start = time.perf_counter()
            try:
                return _hook(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - start

        setattr(callback, name, timed)


def _writer_cpu(tracking_mlflow: object) -> float:
    """CPU seconds of the MLflow writer thread so far (0 before it starts)."""
    writer = getattr(tracking_mlflow, "_WRITER", None)
    if writer is None:
        return 0.0
    return time.clock_gettime(time.pthread_getcpuclockid(writer._thread.ident))


if __name__ == "__main__":
    main()
