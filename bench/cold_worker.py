"""Cold Python workers: seconds each spends importing the backend, with and without Keras' optional extras.

``sparkeras.worker.runtime.configure`` imports TensorFlow and Keras in every
new Python worker with scikit-learn, matplotlib and IPython hidden (Keras
imports all three when they are installed, for features a worker never
uses). The baseline is the plain import, as a single process does it. Each
trial starts a fresh ``local[2]`` session, so both of its tasks run in new
Python workers, and the arms alternate so that a busy machine hurts both
alike. Prints each task's CPU and wall seconds in ``configure``, the means
and the ratio.

    python bench/cold_worker.py [--trials 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ["PYSPARK_PYTHON"] = sys.executable


def _probe(lean: bool):
    def run(_):
        import time

        from sparkeras.worker import runtime

        if not lean:
            runtime.KERAS_EXTRAS = ()  # hide nothing: the plain import
        cpu, wall = time.process_time(), time.time()
        runtime.configure("tensorflow", 1)
        yield round(time.process_time() - cpu, 2), round(time.time() - wall, 2)
    return run


def _trial(lean: bool) -> list[tuple[float, float]]:
    import sparkeras

    spark = sparkeras.get_spark("local[2]")
    spark.sparkContext.setLogLevel("OFF")
    try:
        return spark.sparkContext.parallelize(range(2), 2).mapPartitions(_probe(lean)).collect()
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"plain": [], "sparkeras": []}
    for _ in range(args.trials):
        for arm in walls:
            seconds = _trial(lean=arm == "sparkeras")
            print(f"{arm:>9}: (cpu s, wall s) per worker {seconds}", flush=True)
            walls[arm] += [wall for _, wall in seconds]
    plain, lean = statistics.mean(walls["plain"]), statistics.mean(walls["sparkeras"])
    print(f"mean wall per cold worker: plain import {plain:.2f} s, sparkeras {lean:.2f} s, ratio {plain / lean:.2f}")


if __name__ == "__main__":
    main()
