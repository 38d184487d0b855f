"""Hyperparameter search: ``sparkeras.tune`` against plain Optuna with ``model.fit``, one run, same search.

The search: 16 trials of an MLP on a noisy 10-class problem (generated, no
download), over the learning rate (log scale), the hidden width and the
dropout rate, scored by validation accuracy after each epoch. Both train on
the first 80% of the rows and score the same last 20%, so their best
accuracies compare directly.

- **plain:** ``optuna.create_study(...).optimize(objective, n_trials)`` in this
  process, one trial after another, each a ``model.fit`` on numpy arrays
  using every core, with no pruning (what a single-machine user runs).
- **sparkeras:** ``sparkeras.tune`` from a Spark DataFrame on ``local[2]``:
  trials run concurrently, one task (one core) each, and Optuna's
  ``MedianPruner`` stops unpromising trials after an epoch.

Both use ``TPESampler(seed=...)``. sparkeras runs the search twice: cold (a
fresh session's Python workers, which import TensorFlow first) and warm (the
same search again on the running workers, as in a notebook or on a
long-lived cluster). Each time covers ``tune`` from the call to the returned
study. Prints a table and one JSON line, including trials per minute for each
run, the ratios to plain, and the best validation accuracy of each.

    python bench/tuning.py [--trials 16] [--rows 20000] [--epochs 6]

``--cross-validator`` measures Spark ML's ``CrossValidator`` over a
``KerasEstimator`` instead: a 2-fold grid of learning rates, fitted one grid
point after another (``parallelism=1``, each fit on every slot) and two at a
time (``parallelism=2``, each fit on its share of the slots), against plain
``model.fit`` per fold and grid point in this process. Both CV runs are warm
(a first fit has started the workers).

    python bench/tuning.py --cross-validator [--rows 20000] [--epochs 3]
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

FEATURES, CLASSES = 64, 10


def make_data(rows: int, seed: int = 0):
    """Noisy gaussian clusters: learnable, with room between a good and a bad configuration."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, rows)
    x = (centers[y] + 2.5 * rng.normal(size=(rows, FEATURES))).astype(np.float32)
    return x, y


def build(trial):
    import keras

    learning_rate = trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    units = trial.suggest_int("units", 8, 256, log=True)
    dropout = trial.suggest_float("dropout", 0.0, 0.5)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(units, activation="relu"),
        keras.layers.Dropout(dropout),
        keras.layers.Dense(units, activation="relu"),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def plain_search(x, y, trials: int, epochs: int, batch_size: int, seed: int):
    import optuna

    cut = int(len(x) * 0.8)

    def objective(trial):
        model = build(trial)
        history = model.fit(x[:cut], y[:cut], validation_data=(x[cut:], y[cut:]), epochs=epochs,
                            batch_size=batch_size, verbose=0)
        return history.history["val_accuracy"][-1]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.NopPruner())
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return study, time.perf_counter() - start


def sparkeras_search(spark, x, y, trials: int, epochs: int, batch_size: int, seed: int):
    import optuna
    import pyarrow as pa

    import sparkeras

    cut = int(len(x) * 0.8)  # the rows plain trains and validates on, so both score the same rows
    frame = spark.createDataFrame(pa.table({"features": list(x[:cut]), "label": y[:cut]}))
    validation = spark.createDataFrame(pa.table({"features": list(x[cut:]), "label": y[cut:]}))
    start = time.perf_counter()
    study = sparkeras.tune(build, frame, n_trials=trials, epochs=epochs, batch_size=batch_size,
                           validation_data=validation, metric="val_accuracy", direction="maximize", seed=seed,
                           verbose=1, sampler=optuna.samplers.TPESampler(seed=seed))
    return study, time.perf_counter() - start


CV_RATES = [1e-4, 1e-3, 1e-2, 3e-2]


def cv_model(learning_rate: float = 1e-3):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def plain_cross_validation(x, y, epochs: int, batch_size: int):
    """Plain Keras: every fold and grid point fitted in this process, one after another."""
    folds = np.arange(len(x)) % 2
    start = time.perf_counter()
    metrics = []
    for rate in CV_RATES:
        scores = []
        for fold in (0, 1):
            model = cv_model(rate)
            model.fit(x[folds != fold], y[folds != fold], epochs=epochs, batch_size=batch_size, verbose=0)
            scores.append(model.evaluate(x[folds == fold], y[folds == fold], verbose=0)[1])
        metrics.append(float(np.mean(scores)))
    return metrics, time.perf_counter() - start


def spark_cross_validation(frame, epochs: int, batch_size: int, parallelism: int):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    from sparkeras.ml import KerasEstimator

    estimator = KerasEstimator(model=cv_model(), epochs=epochs, batchSize=batch_size, seed=0)
    grid = ParamGridBuilder().addGrid(estimator.learningRate, CV_RATES).build()
    cv = CrossValidator(estimator=estimator, estimatorParamMaps=grid, numFolds=2, seed=0, parallelism=parallelism,
                        evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
    start = time.perf_counter()
    model = cv.fit(frame)
    return [float(m) for m in model.avgMetrics], time.perf_counter() - start


def cross_validator_main(args: argparse.Namespace) -> None:
    import keras
    import pyarrow as pa

    import sparkeras
    from sparkeras.ml import KerasEstimator

    x, y = make_data(args.rows)
    spark = sparkeras.get_spark("local[2]")
    spark.sparkContext.setLogLevel("OFF")
    frame = spark.createDataFrame(pa.table({"features": list(x), "label": y})).cache()
    KerasEstimator(model=cv_model(), epochs=1).fit(frame)  # starts the workers: both CV runs are warm
    plain, plain_s = plain_cross_validation(x, y, args.epochs, args.batch_size)
    runs = [("plain model.fit, sequential", plain, plain_s)]
    for parallelism in (1, 2):
        metrics, seconds = spark_cross_validation(frame, args.epochs, args.batch_size, parallelism)
        runs.append((f"CrossValidator parallelism={parallelism}", metrics, seconds))
    print(f"\n{'run':36} {'time (s)':>9} {'ratio':>6} {'best rate':>10} {'best acc':>9}  accuracy per rate")
    for name, metrics, seconds in runs:
        best = int(np.argmax(metrics))
        print(f"{name:36} {seconds:9.1f} {plain_s / seconds:6.2f} {CV_RATES[best]:10g} {metrics[best]:9.4f}  "
              f"{[round(m, 4) for m in metrics]}")
    print(json.dumps({
        "bench": "cross_validator", "rows": args.rows, "epochs": args.epochs, "rates": CV_RATES,
        **{f"{key}_seconds": round(run[2], 2) for key, run in zip(("plain", "sequential", "parallel"), runs)},
        "parallel_over_sequential": round(runs[1][2] / runs[2][2], 2),
        "best": [CV_RATES[int(np.argmax(run[1]))] for run in runs],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "keras": keras.__version__}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cross-validator", action="store_true",
                        help="measure CrossValidator(parallelism=2) over a KerasEstimator instead")
    args = parser.parse_args()
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()  # without TensorFlow's native start-up lines, as the CLI imports it
    if args.cross_validator:
        return cross_validator_main(args)

    import keras

    import sparkeras

    x, y = make_data(args.rows)
    spark = sparkeras.get_spark("local[2]")
    spark.sparkContext.setLogLevel("OFF")
    keras.utils.set_random_seed(args.seed)
    plain, plain_s = plain_search(x, y, args.trials, args.epochs, args.batch_size, args.seed)
    keras.utils.set_random_seed(args.seed)
    cold, cold_s = sparkeras_search(spark, x, y, args.trials, args.epochs, args.batch_size, args.seed)
    keras.utils.set_random_seed(args.seed)
    warm, warm_s = sparkeras_search(spark, x, y, args.trials, args.epochs, args.batch_size, args.seed)

    def states(study):
        names = [t.state.name for t in study.trials]
        return {s: names.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")}

    rows = [("plain (sequential, no pruning)", plain, plain_s),
            ("sparkeras cold (concurrent, median pruner)", cold, cold_s),
            ("sparkeras warm (concurrent, median pruner)", warm, warm_s)]
    print(f"\n{'run':44} {'time (s)':>9} {'trials/min':>11} {'ratio':>6} {'best val acc':>13} {'gap (pts)':>10}  states")
    for name, study, seconds in rows:
        print(f"{name:44} {seconds:9.1f} {60 * len(study.trials) / seconds:11.2f} {plain_s / seconds:6.2f} "
              f"{study.best_value:13.4f} {100 * (study.best_value - plain.best_value):+10.2f}  {states(study)}")
    print(json.dumps({
        "bench": "tuning", "trials": args.trials, "rows": args.rows, "epochs": args.epochs,
        "plain_seconds": round(plain_s, 2), "cold_seconds": round(cold_s, 2), "warm_seconds": round(warm_s, 2),
        "cold_ratio": round(plain_s / cold_s, 2), "warm_ratio": round(plain_s / warm_s, 2),
        "plain_best": round(plain.best_value, 4), "cold_best": round(cold.best_value, 4),
        "warm_best": round(warm.best_value, 4), "cold_states": states(cold), "warm_states": states(warm),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(), "keras": keras.__version__}))


if __name__ == "__main__":
    main()
