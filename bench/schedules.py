"""Learning-rate schedules sized for ``model.fit``, trained by sparkeras' workers as they are and with their steps divided.

A ``LearningRateSchedule`` runs on the optimizer's step count. With N
workers each takes ``1 / N`` of ``model.fit``'s steps per epoch (model
averaging: its share of the rows; all-reduce: N times larger steps), so a
schedule whose ``decay_steps`` were sized for ``model.fit``
(``epochs * rows // batch_size``) gets ``1 / N`` of the way. This script
measures what that does to the model at equal epochs, against the same
schedule with its steps divided by N (the README's advice), on the
benchmark tasks of ``bench/tasks.py``:

* ``cosine``: Adam under ``CosineDecay(1e-3, decay_steps)`` to zero at the
  last step;
* ``warmup``: ``CosineDecay`` from 1e-4 warmed up to 2e-3 over the first
  epoch, then decayed to zero.

Every run starts from the task's model with the same seed, from numpy rows
on ``local[2]``; the metric is the task's own on its test rows, scored
after the fit. The plain ``model.fit`` of the same schedule runs in the same
process first.

    python bench/schedules.py [--tasks mlp,cnn,regression] [--schedules cosine,warmup] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

EPOCHS = {"mlp": 6, "cnn": 4, "regression": 6, "sequence": 4}


def schedule(kind: str, total_steps: int, epoch_steps: int, divide: int):
    import keras

    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(1e-3, total_steps // divide)
    return keras.optimizers.schedules.CosineDecay(
        1e-4, (total_steps - epoch_steps) // divide, warmup_target=2e-3, warmup_steps=epoch_steps // divide)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mlp,cnn,regression")
    parser.add_argument("--schedules", default="cosine,warmup")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--strategies", default="averaging,allreduce")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import keras

    import sparkeras
    import tasks as bench_tasks
    from sparkeras import SparkModel

    sparkeras.get_spark(f"local[{max(2, args.workers)}]")  # the session every SparkModel below uses
    rows = []
    for name in args.tasks.split(","):
        task = bench_tasks.TASKS[name]
        (x, y), (x_test, y_test) = task.make_data()
        epochs, batch = EPOCHS.get(name, task.epochs), task.batch_size
        epoch_steps = len(x) // batch
        for kind in args.schedules.split(","):
            def model(divide: int):
                built = task.make_model()
                built.compile(keras.optimizers.Adam(schedule(kind, epochs * epoch_steps, epoch_steps, divide)),
                              built.loss)
                return built

            plain = model(1)
            started = time.perf_counter()
            plain.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
            plain_score = task.score(plain, x_test, y_test)
            print(f"{name} {kind}: plain {plain_score:.4f} ({time.perf_counter() - started:.1f} s)", flush=True)
            for strategy in args.strategies.split(","):
                scores = {}
                for divide in (1, args.workers):
                    fitted = SparkModel(model(divide), strategy=strategy, num_workers=args.workers, seed=0)
                    fitted.fit(x, y, epochs=epochs, batch_size=batch, verbose=0)
                    scores[divide] = task.score(fitted.model, x_test, y_test)
                    final_rate = float(fitted.model.optimizer.learning_rate)
                    rows.append({"task": name, "schedule": kind, "strategy": strategy, "workers": args.workers,
                                 "steps_divided_by": divide, "metric": scores[divide], "plain": plain_score,
                                 "final_rate": final_rate})
                sign = 1 if task.higher_is_better else -1
                print(f"{name} {kind} {strategy}: as given {scores[1]:.4f} ({sign * (scores[1] - plain_score) * 100:+.2f}),"
                      f" steps / {args.workers} {scores[args.workers]:.4f} "
                      f"({sign * (scores[args.workers] - plain_score) * 100:+.2f})", flush=True)
    print("\n| task | schedule | strategy | plain | as given (gap) | steps / N (gap) |\n|---|---|---|---|---|---|")
    for i in range(0, len(rows), 2):
        given, divided = rows[i], rows[i + 1]
        gap = [(r["metric"] - r["plain"]) * 100 for r in (given, divided)]
        print(f"| {given['task']} | {given['schedule']} | {given['strategy']} | {given['plain']:.4f} | "
              f"{given['metric']:.4f} ({gap[0]:+.2f}) | {divided['metric']:.4f} ({gap[1]:+.2f}) |")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)


if __name__ == "__main__":
    main()
