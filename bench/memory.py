"""Peak memory as the training data grows: sparkeras on a standalone cluster vs plain ``model.fit``.

A Parquet dataset of 784 float features and a class label is written at
``--scales`` times ``--base-mb`` megabytes (by default 1x, 2x and 4x of
1.25 times the JVM heap, so the largest is 5 times the driver's and each
executor's heap). For each size:

* **sparkeras**: a fresh driver process (JVM heap ``--heap``) fits an MLP
  784-128-10 for one epoch with ``averaging`` and 2 workers, reading the
  Parquet on a standalone cluster (a master and two one-core workers started
  here, executor heap ``--heap``). Its peaks are the driver's Python and JVM
  (``VmHWM``), and each executor's JVM plus its Python workers, sampled
  every 0.2 s.
* **plain**: a fresh process reads the same Parquet into numpy with pyarrow
  and runs ``model.fit`` for one epoch; its peak is ``ru_maxrss``.

The driver's peak must stay flat as the data grows: rows never reach the
driver. The ratio is the plain process's peak over the sparkeras driver's.
Prints a table and one JSON line.

    python bench/memory.py [--scales 1,2,4] [--base-mb 640] [--heap 512m]

Spark refuses heaps under 450 MB, so 512 MB is the smallest heap to test with.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))  # the suite's standalone cluster harness

FEATURES = 784
ROW_BYTES = FEATURES * 4 + 8

SPARKERAS = r"""
import json, os, resource, sys, time
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_SUBMIT_ARGS"] = "--driver-memory {heap} pyspark-shell"
import keras
import sparkeras
from pyspark import SparkContext
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master({url!r}).appName("sparkeras-memory-bench")
         .config("spark.executor.memory", {heap!r}).config("spark.executor.cores", "1")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
keras.utils.set_random_seed(7)
model = keras.Sequential([keras.Input(({features},)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
df = spark.read.parquet({path!r})
started = time.monotonic()
history = sparkeras.SparkModel(model, "averaging", num_workers=2).fit(df, epochs=1, batch_size=256, verbose=0)
seconds = time.monotonic() - started
jvm = SparkContext._gateway.proc.pid


def hwm(pid):
    with open(f"/proc/{{pid}}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


print("RESULT", json.dumps({{"python": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                            "jvm": hwm(jvm), "seconds": seconds,
                            "accuracy": history.history["accuracy"][-1]}}), flush=True)
"""

PLAIN = r"""
import json, resource, sys, time
import numpy as np
import pyarrow.parquet as pq
import keras
keras.utils.set_random_seed(7)
model = keras.Sequential([keras.Input(({features},)), keras.layers.Dense(128, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
started = time.monotonic()
table = pq.read_table({path!r})
x = table.column("features").combine_chunks().flatten().to_numpy().reshape(-1, {features})
y = table.column("label").to_numpy()
del table
history = model.fit(x, y, epochs=1, batch_size=256, verbose=0)
print("RESULT", json.dumps({{"python": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                            "seconds": time.monotonic() - started,
                            "accuracy": history.history["accuracy"][-1]}}), flush=True)
"""


def write_dataset(directory: str, megabytes: float, seed: int = 0, rows_per_file: int = 20_000) -> int:
    """A Parquet directory of about ``megabytes`` MB of a learnable 10-class problem; returns the row count.

    Written file by file, so this process never holds more than one file's rows.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = int(megabytes * 2**20 / ROW_BYTES)
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, FEATURES)).astype(np.float32)
    os.makedirs(directory)
    for i, start in enumerate(range(0, rows, rows_per_file)):
        n = min(rows_per_file, rows - start)
        y = rng.integers(0, 10, n)
        x = (centers[y] + 3.0 * rng.normal(size=(n, FEATURES)).astype(np.float32)) / 10.0
        offsets = pa.array(np.arange(0, x.size + 1, FEATURES, dtype=np.int32))
        features = pa.ListArray.from_arrays(offsets, pa.array(x.astype(np.float32).ravel()))
        pq.write_table(pa.table({"features": features, "label": pa.array(y)}),
                       os.path.join(directory, f"part-{i:05d}.parquet"), compression="none")
    return rows


def _children(pid: int, parents: dict[int, int]) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, parent in parents.items() if parent == p)
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS")), 0)
    except OSError:
        return 0


class ExecutorSampler:
    """Samples the resident memory of every executor JVM plus its Python workers; keeps each one's peak."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peaks = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from standalone import parent_pid

        while not self._stop.wait(self.interval):
            parents, executors = {}, []
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                pid = int(name)
                try:
                    parents[pid] = parent_pid(pid)
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if b"CoarseGrainedExecutorBackend" in f.read():
                            executors.append(pid)
                except (OSError, ValueError, IndexError):
                    continue
            for pid in executors:
                total = sum(_rss(p) for p in _children(pid, parents))
                self.peaks[pid] = max(self.peaks.get(pid, 0), total)

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join()
        return sorted(self.peaks.values(), reverse=True)


def _run(script: str, timeout: float = 1800) -> dict:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"the run printed no result:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="1,2,4")
    parser.add_argument("--base-mb", type=float, default=640.0, help="the 1x dataset's size in MB")
    parser.add_argument("--heap", default="512m", help="the driver's and each executor's JVM heap")
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]

    from standalone import StandaloneCluster

    mb = 2**20
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparkeras-memory-") as root:
        cluster = StandaloneCluster(root, workers=2, cores=1, memory="2g")
        try:
            for scale in scales:
                path = os.path.join(root, f"data-{scale:g}x")
                n = write_dataset(path, args.base_mb * scale)
                on_disk = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                sampler = ExecutorSampler()
                ours = _run(SPARKERAS.format(url=cluster.url, heap=args.heap, path=path, features=FEATURES))
                executors = sampler.stop()
                plain = _run(PLAIN.format(path=path, features=FEATURES))
                driver = ours["python"] + ours["jvm"]
                rows.append({"scale": scale, "rows": n, "data_mb": on_disk / mb,
                             "driver_python_mb": ours["python"] / mb, "driver_jvm_mb": ours["jvm"] / mb,
                             "driver_mb": driver / mb, "executor_peak_mb": [e / mb for e in executors[:2]],
                             "plain_mb": plain["python"] / mb, "ratio": plain["python"] / driver,
                             "sparkeras_s": ours["seconds"], "plain_s": plain["seconds"],
                             "sparkeras_accuracy": ours["accuracy"], "plain_accuracy": plain["accuracy"]})
                r = rows[-1]
                print(f"{scale:g}x: {n} rows, {r['data_mb']:.0f} MB; driver {r['driver_mb']:.0f} MB "
                      f"(python {r['driver_python_mb']:.0f}, jvm {r['driver_jvm_mb']:.0f}); executors "
                      f"{', '.join(f'{e:.0f}' for e in r['executor_peak_mb'])} MB; plain {r['plain_mb']:.0f} MB",
                      flush=True)
                shutil.rmtree(path)
        finally:
            cluster.stop()

    print(f"\nheap {args.heap} (driver and each executor); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    print("| data | rows | driver peak (Python + JVM) | executor peaks (JVM + Python workers) | plain model.fit peak "
          "| plain / driver | sparkeras fit s | plain fit s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scale']:g}x = {r['data_mb']:.0f} MB | {r['rows']:,} | {r['driver_mb']:.0f} MB "
              f"({r['driver_python_mb']:.0f} + {r['driver_jvm_mb']:.0f}) | "
              f"{' / '.join(f'{e:.0f}' for e in r['executor_peak_mb'])} MB | {r['plain_mb']:.0f} MB | "
              f"{r['ratio']:.2f} | {r['sparkeras_s']:.1f} | {r['plain_s']:.1f} |")
    print(json.dumps({"benchmark": "memory", "heap": args.heap, "rows": rows}))


if __name__ == "__main__":
    main()
