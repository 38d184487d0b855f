"""Cold start: a fresh Python process, from ``python script.py`` to a trained and scored model, sparkeras vs plain.

What a user times with ``time python train.py`` the first time in a day:
the interpreter, the imports, (for sparkeras) Spark's JVM and Python
workers, reading the training Parquet, the fit and scoring the test set,
and the process's exit. ``bench/time_to_accuracy.py`` times fits inside a
session that has already started; this one times the whole process.

Each round runs, in fresh processes and in turn:

* ``plain``: reads the Parquet with pyarrow into numpy and calls
  ``model.fit`` (the baseline);
* ``sparkeras``: ``get_spark("local[2]")``, ``SparkModel.fit`` on
  ``spark.read.parquet(...)`` with 2 workers (nothing cached, nothing
  collected);
* ``sparkeras-no-archive``: the same with
  ``SPARKERAS_CLASS_ARCHIVE=0``, so the driver JVM loads its classes from
  the jars (:mod:`sparkeras.class_archive`; the archive is built first if
  this machine has none).
* ``sparkeras-own-session``: the script imports sparkeras, starts its
  own ``SparkSession.builder.master("local[2]")`` session, reads, caches
  and counts the Parquet, then fits, as a notebook or a data engineer's
  script does.
* ``sparkeras-cli``: ``sparkeras train --model M.keras --data PARQUET
  --workers 2 --master local[2] --output OUT --quiet`` (its ``main``, in
  the timed process), then the saved model is loaded and scored. The
  compiled model was saved once, before the rounds.

``--arms`` picks some of them (the plain baseline always runs).

Both sides train ``--epochs`` epochs of the task's model (default: the mlp
task, 60,000 x 784, 3 epochs, batch 64) and score the same test rows.
Prints each run, the medians, the ratio plain / sparkeras, and one JSON
line.

    python bench/cold_start.py [--task mlp] [--epochs 3] [--rounds 3] [--arms sparkeras,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

COMMON = """
import json, sys, time
sys.path.insert(0, {here!r})
import numpy as np
from tasks import TASKS
task = TASKS[{task!r}]
test = np.load({test!r})
"""

PLAIN = COMMON + """
import pyarrow.parquet as pq
table = pq.read_table({parquet!r})
features = table.column("features").combine_chunks()
x = features.flatten().to_numpy().reshape(len(table), -1)
y = table.column("label").to_numpy()
model = task.make_model()
start = time.perf_counter()
model.fit(x, y, epochs={epochs}, batch_size=task.batch_size, verbose=0)
fit = time.perf_counter() - start
print(json.dumps({{"metric": task.score(model, test["x"], test["y"]), "fit_seconds": fit}}))
"""

SPARKERAS = COMMON + """
import sparkeras
spark = sparkeras.get_spark("local[2]")
frame = spark.read.parquet({parquet!r})
fitter = sparkeras.SparkModel(task.make_model(), num_workers=2, seed=0)
start = time.perf_counter()
fitter.fit(frame, epochs={epochs}, batch_size=task.batch_size, verbose=0)
fit = time.perf_counter() - start
print(json.dumps({{"metric": task.score(fitter.model, test["x"], test["y"]), "fit_seconds": fit}}))
"""

OWN_SESSION = COMMON + """
import sparkeras
from pyspark.sql import SparkSession
spark = SparkSession.builder.master("local[2]").getOrCreate()
spark.sparkContext.setLogLevel("ERROR")
frame = spark.read.parquet({parquet!r}).cache()
frame.count()
fitter = sparkeras.SparkModel(task.make_model(), num_workers=2, seed=0)
start = time.perf_counter()
fitter.fit(frame, epochs={epochs}, batch_size=task.batch_size, verbose=0)
fit = time.perf_counter() - start
print(json.dumps({{"metric": task.score(fitter.model, test["x"], test["y"]), "fit_seconds": fit}}))
"""

CLI = COMMON + """
from sparkeras.cli.main import main
start = time.perf_counter()
code = main(["train", "--model", {model!r}, "--data", {parquet!r}, "--features", "features", "--label", "label",
             "--epochs", "{epochs}", "--batch-size", str(task.batch_size), "--workers", "2", "--master", "local[2]",
             "--output", {output!r}, "--overwrite", "--quiet"])
fit = time.perf_counter() - start
assert code == 0, code
import keras
model = keras.saving.load_model({output!r})
print(json.dumps({{"metric": task.score(model, test["x"], test["y"]), "fit_seconds": fit}}))
"""

ARMS = {
    "plain": (PLAIN, {}),
    "sparkeras": (SPARKERAS, {"SPARKERAS_CLASS_ARCHIVE": "1"}),
    "sparkeras-no-archive": (SPARKERAS, {"SPARKERAS_CLASS_ARCHIVE": "0"}),
    "sparkeras-own-session": (OWN_SESSION, {}),
    "sparkeras-cli": (CLI, {}),
}


def run(script: str, extra_env: dict[str, str]) -> dict:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3", **extra_env)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"a run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "seconds": seconds}


def ensure_archive() -> float | None:
    """Build this machine's class archive now if it has none; the seconds it took, or None if it was there."""
    from sparkeras import class_archive

    path = class_archive.archive_path()
    if path is None or os.path.exists(path):
        return None
    start = time.perf_counter()
    class_archive.build(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mlp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    args = parser.parse_args()
    arms = {arm: ARMS[arm] for arm in ["plain", *args.arms.split(",")] if arm in ARMS}
    if unknown := set(args.arms.split(",")) - set(ARMS):
        parser.error(f"--arms: no arm {', '.join(sorted(unknown))}; there are {', '.join(ARMS)}")

    sys.path.insert(0, HERE)
    from tasks import TASKS
    from time_to_accuracy import write_parquet

    built = ensure_archive()
    if built is not None:
        print(f"built the class archive first: {built:.1f} s")
    task = TASKS[args.task]
    train, (x_test, y_test) = task.make_data()
    times: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        parquet = write_parquet(*train, tmp)
        test = os.path.join(tmp, "test.npz")
        np.savez(test, x=x_test, y=y_test)
        model = os.path.join(tmp, "untrained.keras")  # the command line's input: a saved, compiled model
        task.make_model().save(model)
        values = dict(here=HERE, task=args.task, test=test, parquet=parquet, epochs=args.epochs, model=model,
                      output=os.path.join(tmp, "trained.keras"))
        for round_ in range(args.rounds):
            for arm, (script, env) in arms.items():
                result = run(script.format(**values), env)
                times[arm].append(result)
                print(f"round {round_ + 1}  {arm:24}{result['seconds']:8.2f} s  (fit {result['fit_seconds']:.2f} s)"
                      f"  {task.metric} {result['metric']:.4f}", flush=True)
    medians = {arm: statistics.median(r["seconds"] for r in runs) for arm, runs in times.items()}
    plain = medians["plain"]
    print(f"\n{'':32}{'median (s)':>12}{'ratio':>8}{task.metric:>10}")
    for arm, runs in times.items():
        print(f"{arm:32}{medians[arm]:12.2f}{plain / medians[arm]:8.2f}{runs[-1]['metric']:10.4f}")
    print(json.dumps({
        "benchmark": "cold_start", "task": args.task, "epochs": args.epochs, "rounds": args.rounds,
        "rows": len(train[1]), "median_seconds": {a: round(s, 2) for a, s in medians.items()},
        "ratio": {a: round(plain / s, 2) for a, s in medians.items()},
        "metric": {a: round(r[-1]["metric"], 4) for a, r in times.items()},
        "archive_built_seconds": None if built is None else round(built, 1),
        "cores": os.cpu_count(), "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
