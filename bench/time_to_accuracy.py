"""Time to accuracy: how long until sparkeras' model is as good as plain ``model.fit``'s, cold and warm.

MLPerf Training and DAWNBench rank systems by the time to a target
quality, not by throughput; a user compares a distributed trainer with
``model.fit`` the same way. For each task of ``bench/tasks.py``:

1. Plain ``model.fit`` runs ``E`` epochs in this process (all cores). The
   test metric is taken after every epoch with the clock paused. The target
   is plain's metric after ``E`` epochs, less a tolerance (0.5 points of
   accuracy or of R^2 by default), and plain's time to target is the wall
   time of the first epoch that reaches it.
2. Each strategy trains the same initial model with ``--workers`` workers
   from a cached Spark DataFrame (read from Parquet, cached and counted
   before the clock starts), in a fresh SparkSession of a fresh Python
   process (``--in-process``: all in this one): the first fit is
   *cold* (new Python workers: imports, model build, packing), the second
   *warm* (a new model on the same session and data). Each runs until it
   has done ``E`` epochs and reached the target, or ``1.5 E`` epochs.
   The test metric is taken after every epoch on the driver with the clock
   paused (the workers wait for the driver at epoch ends).
3. It reports the time to target, the metric at ``E`` epochs and its gap to
   plain, the ratio plain time / sparkeras time, and the fixed cost (the
   first epoch's end minus the median epoch), prints a table, writes one
   JSON line per run, and draws metric against wall time for every run.

For a model that takes strings (the ``text`` task), plain ``model.fit`` of
the model as written vectorizes the text in every step; a second plain
baseline turns the strings into ids once and trains the rest on them
(:func:`plain_fit_vectorized_once`), and each run also reports its ratio
against that one.

    python bench/time_to_accuracy.py [--tasks mlp,cnn,regression,sequence,text]
        [--strategies averaging,allreduce,adag,easgd] [--workers 2] [--master local[2]]
        [--png bench/time_to_accuracy.png] [--json results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from tasks import TASKS, Task  # noqa: E402


class Curve:
    """Wall time (evaluation excluded) and test metric after each epoch of one run."""

    def __init__(self, task: Task, test: tuple, target: float | None = None, min_epochs: int = 0) -> None:
        self.task, self.test, self.target, self.min_epochs = task, test, target, min_epochs
        self.times: list[float] = []
        self.scores: list[float] = []
        self._start = 0.0
        self._paused = 0.0

    def start(self) -> None:
        self._start, self._paused = time.perf_counter(), 0.0

    def epoch_end(self, model) -> bool:
        """Record the epoch; True once the run may stop (enough epochs and the target reached)."""
        now = time.perf_counter()
        self.times.append(now - self._start - self._paused)
        self.scores.append(self.task.score(model, *self.test))
        self._paused += time.perf_counter() - now
        return (self.target is not None and len(self.scores) >= self.min_epochs
                and self.scores[-1] >= self.target)

    def time_to(self, target: float) -> float | None:
        for t, s in zip(self.times, self.scores):
            if s >= target:
                return t
        return None

    def fixed_cost(self) -> float:
        """The first epoch's end beyond one typical epoch: start-up, packing, the first job's overhead."""
        epochs = [b - a for a, b in zip(self.times, self.times[1:])]
        return self.times[0] - (statistics.median(epochs) if epochs else 0.0)


def callback(curve: Curve):
    import keras

    class Measure(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if curve.epoch_end(self.model):
                self.model.stop_training = True

    return Measure()


def write_parquet(x: np.ndarray, y: np.ndarray, directory: str, files: int = 4) -> str:
    """The training rows as Parquet (flat ``array<float>`` features), in a few files as a data lake has them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(directory, "train.parquet")
    os.makedirs(path)
    flat = x.reshape(len(x), -1)
    for i, rows in enumerate(np.array_split(np.arange(len(x)), files)):
        part = flat[rows]
        if x.dtype == object:  # documents: a string column
            features = pa.array(list(x[rows]), pa.string())
        else:
            offsets = pa.array(np.arange(0, part.size + 1, part.shape[1], dtype=np.int32))
            features = pa.ListArray.from_arrays(offsets, pa.array(part.ravel()))
        pq.write_table(pa.table({"features": features, "label": pa.array(y[rows])}),
                       os.path.join(path, f"part-{i}.parquet"))
    return path


def plain_fit(task: Task, train: tuple, test: tuple) -> Curve:
    model = task.make_model()
    curve = Curve(task, test)
    curve.start()
    model.fit(*train, batch_size=task.batch_size, epochs=task.epochs, verbose=0, callbacks=[callback(curve)])
    return curve


def plain_fit_vectorized_once(task: Task, train: tuple, test: tuple) -> Curve | None:
    """For a model with string inputs, ``model.fit`` as a careful Keras user would write it.

    The model as written runs ``TextVectorization`` in every step of every
    epoch. Keras' advice is to run it once in the input pipeline: here the
    strings are turned into ids once (on the clock), and the layers after
    them train on the ids; the test metric is still the whole model's. This
    is the faster of the two plain baselines, so ratios against it are the
    honest ones. ``None`` for models without string inputs.
    """
    from sparkeras.data.strings import string_split

    model = task.make_model()
    split = string_split(model)
    if split is None or len(split.prefixes) != 1:
        return None
    vectorize = next(iter(split.prefixes.values()))
    curve = Curve(task, test)
    curve.start()
    x = np.concatenate([vectorize(train[0][i:i + 4096]) for i in range(0, len(train[0]), 4096)])
    split.trunk.fit(x, train[1], batch_size=task.batch_size, epochs=task.epochs, verbose=0,
                    callbacks=[_scored_on(curve, model)])
    return curve


def _scored_on(curve: Curve, model):
    """:func:`callback`, scoring ``model`` (the whole model) whatever model the fit trains."""
    import keras

    class Measure(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            curve.epoch_end(model)

    return Measure()


def strategy_options(name: str) -> tuple[str, dict]:
    """A strategy name, or ``name:key=value+key=value`` to try options (values in JSON)."""
    if ":" in name:
        name, _, given = name.partition(":")
        return name, {k: json.loads(v) for k, v in (item.split("=", 1) for item in given.split("+"))}
    if name == "allreduce-noscale":
        return "allreduce", {"learning_rate_scaling": None}
    if name == "averaging-epoch":
        return "averaging", {"window": "epoch", "outer_momentum": 0.0}
    return name, {}


def sparkeras_fits(task: Task, strategy: str, parquet: str, test: tuple, target: float, args) -> dict[str, Curve]:
    """A cold and a warm fit in a fresh SparkSession, from a cached DataFrame, in a fresh Python process.

    Each strategy gets a process of its own, as a user's new script or
    notebook has, so that no strategy starts on a JVM that an earlier one
    warmed. In one process, a second ``SparkSession`` starts
    in 0.1 s on the running JVM (against 2.5-3.5 s for the first), and its
    fit then begins while the new Python workers are still importing
    TensorFlow: that adds about 1 s to the later strategies' fixed cost
    (BENCHMARKS.md). ``--in-process`` measures that case.
    """
    if args.in_process:
        return _fits_here(task, strategy, parquet, test, target, args)
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        results = pool.apply(_fit_curves, (task.name, strategy, parquet, test, target, args))
    curves = {}
    for run, (times, scores) in results.items():
        curve = Curve(task, test, target, min_epochs=task.epochs)
        curve.times, curve.scores = times, scores
        curves[run] = curve
    return curves


def _fit_curves(task_name: str, strategy: str, parquet: str, test: tuple, target: float, args) -> dict:
    """The child process' side of :func:`sparkeras_fits`: each run's times and scores."""
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()
    curves = _fits_here(TASKS[task_name], strategy, parquet, test, target, args)
    return {run: (curve.times, curve.scores) for run, curve in curves.items()}


def _fits_here(task: Task, strategy: str, parquet: str, test: tuple, target: float, args) -> dict[str, Curve]:
    from sparkeras import SparkModel, get_spark

    spark = get_spark(args.master, app_name=f"bench-{task.name}-{strategy}")
    try:
        frame = spark.read.parquet(parquet).cache()
        frame.count()
        name, options = strategy_options(strategy)
        curves = {}
        for run in args.runs.split(","):
            curve = Curve(task, test, target, min_epochs=task.epochs)
            sm = SparkModel(task.make_model(), strategy=name, num_workers=args.workers, seed=0, **options)
            curve.start()
            sm.fit(frame, epochs=math.ceil(args.max_epochs_factor * task.epochs), batch_size=task.batch_size,
                   verbose=0, callbacks=[callback(curve)])
            curves[run] = curve
        frame.unpersist()
        return curves
    finally:
        spark.stop()


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="mlp,cnn,regression,sequence")
    parser.add_argument("--strategies", default="averaging,allreduce,adag,easgd",
                        help="comma-separated; 'averaging' is the default strategy")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--master", default=None, help="default: local[WORKERS]")
    parser.add_argument("--tolerance", type=float, default=0.005, help="target = plain's final metric - this")
    parser.add_argument("--runs", default="cold,warm",
                        help="'cold' alone halves the time when only the gaps matter (both runs train the same model)")
    parser.add_argument("--max-epochs-factor", type=float, default=1.5)
    parser.add_argument("--png", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "time_to_accuracy.png"))
    parser.add_argument("--json", default=None, help="append one JSON line per run to this file")
    parser.add_argument("--in-process", action="store_true",
                        help="run every strategy's session in this process (a session restarted in a notebook) "
                             "instead of a fresh process each")
    args = parser.parse_args()
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it
    args.master = args.master or f"local[{args.workers}]"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"

    rows, plots = [], {}
    tmp = tempfile.TemporaryDirectory()
    for task_name in args.tasks.split(","):
        task = TASKS[task_name]
        train, test = task.make_data()
        plain = plain_fit(task, train, test)
        final = plain.scores[-1]
        target = final - args.tolerance
        plain_time = plain.time_to(target)
        parquet = write_parquet(*train, os.path.join(tmp.name, task_name))
        plots[task_name] = {"plain": plain, "target": target, "runs": {}}
        print(f"\n{task_name}: plain model.fit {task.epochs} epochs in {plain.times[-1]:.1f}s, "
              f"{task.metric} {final:.4f}; target {target:.4f} reached at {_fmt(plain_time)}s", flush=True)
        once = plain_fit_vectorized_once(task, train, test)
        once_time = once.time_to(target) if once is not None else None
        if once is not None:
            print(f"  plain, strings turned into ids once: {task.metric} {once.scores[-1]:.4f} after "
                  f"{task.epochs} epochs in {once.times[-1]:.1f}s; target reached at {_fmt(once_time)}s", flush=True)
        for strategy in args.strategies.split(","):
            curves = sparkeras_fits(task, strategy, parquet, test, target, args)
            for run, curve in curves.items():
                plots[task_name]["runs"][f"{strategy} ({run})"] = curve
                reached = curve.time_to(target)
                at_e = curve.scores[task.epochs - 1] if len(curve.scores) >= task.epochs else None
                row = {
                    "benchmark": "time_to_accuracy", "task": task_name, "strategy": strategy, "run": run,
                    "workers": args.workers, "master": args.master, "epochs": task.epochs,
                    "process": "shared" if args.in_process else "fresh",
                    "metric": task.metric, "plain_final": round(final, 4), "target": round(target, 4),
                    "plain_time_to_target_s": round(plain_time, 2),
                    "time_to_target_s": None if reached is None else round(reached, 2),
                    "ratio": None if reached is None else round(plain_time / reached, 2),
                    "ratio_vs_vectorized_once": None if reached is None or once_time is None
                    else round(once_time / reached, 2),
                    "metric_at_E": None if at_e is None else round(at_e, 4),
                    "gap_at_E_points": None if at_e is None else round(100 * (at_e - final), 2),
                    "epochs_run": len(curve.scores), "fixed_cost_s": round(curve.fixed_cost(), 2),
                    "epoch_s": round(statistics.median([b - a for a, b in zip(curve.times, curve.times[1:])]), 2),
                    "plain_epoch_s": round(statistics.median(
                        [b - a for a, b in zip([0.0] + plain.times, plain.times)]), 2),
                    "scores": [round(s, 4) for s in curve.scores], "machine": machine,
                }
                rows.append(row)
                versus_once = "" if once is None else f", {_fmt(row['ratio_vs_vectorized_once'], 2)} vs ids once"
                print(f"  {strategy:>10} {run}: target at {_fmt(reached)}s (ratio {_fmt(row['ratio'], 2)}{versus_once}), "
                      f"{task.metric}@E {_fmt(at_e, 4)} (gap {_fmt(row['gap_at_E_points'], 2)} pts), "
                      f"fixed {row['fixed_cost_s']:.1f}s, epoch {row['epoch_s']:.2f}s vs plain "
                      f"{row['plain_epoch_s']:.2f}s", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
    tmp.cleanup()
    _table(rows)
    _plot(plots, args)


def _table(rows: list[dict]) -> None:
    print("\n| task | strategy | run | time to target (s) | plain (s) | ratio | metric@E | gap (pts) | fixed (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['strategy']} | {r['run']} | {_fmt(r['time_to_target_s'])} | "
              f"{r['plain_time_to_target_s']:.1f} | {_fmt(r['ratio'], 2)} | {_fmt(r['metric_at_E'], 4)} | "
              f"{_fmt(r['gap_at_E_points'], 2)} | {r['fixed_cost_s']:.1f} |")


def _plot(plots: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plots), figsize=(6 * len(plots), 4.5), squeeze=False)
    for ax, (task_name, p) in zip(axes[0], plots.items()):
        ax.plot(p["plain"].times, p["plain"].scores, "k-o", label="plain model.fit", linewidth=2)
        for label, curve in p["runs"].items():
            ax.plot(curve.times, curve.scores, "--" if "warm" in label else "-", marker=".", label=label)
        ax.axhline(p["target"], color="grey", linestyle=":", label="target")
        ax.set_title(f"{task_name} ({args.workers} workers, {args.master})")
        ax.set_xlabel("wall time (s), evaluation excluded")
        ax.set_ylabel(TASKS[task_name].metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png, dpi=90)
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
