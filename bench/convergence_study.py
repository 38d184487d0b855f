"""Convergence study: K simulated workers in one process, to choose averaging's defaults by measurement.

Each worker is a copy of the model with its own optimizer, trained on its own
contiguous slice with sparkeras' traced window loop
(:class:`sparkeras.worker.local_steps.LocalSteps`). After every window the
workers' mean move goes through sparkeras' :class:`~sparkeras.strategies.averaging.OuterStep`,
exactly the arithmetic of ``strategy="averaging"`` without Spark, so a grid
of settings runs in seconds. ``--allreduce`` instead trains one process
with the global batch ``K * batch`` (what all-reduce computes) under a
learning-rate rule and warmup. Prints the test metric after every epoch.

    python bench/convergence_study.py mlp '{"K": 2, "window": 32, "momentum": 0.5}' '{"K": 2, "window": 1000, "momentum": 0}'
    python bench/convergence_study.py --allreduce mlp '{"K": 4, "rule": "sqrt", "warmup_epochs": 1}'
    python bench/convergence_study.py --allreduce mlp '{"K": 4, "rule": "auto", "warmup_epochs": 1, "anneal_to": 1}'
    python bench/convergence_study.py --ps mlp '{"K": 2, "rule": "adag"}' '{"K": 2, "rule": "easgd", "rate_factor": 1}'
    python bench/convergence_study.py --seeds 1,2,3 --workers 2,4 mlp cnn signal autoencoder

``--seeds`` compares averaging's ways to the N-fold step, each with its
default window, over several seeds, on benchmark tasks and the held-out
problems of ``bench/more_problems.py``: ``default`` (workers at the user's
rate, outer momentum ``1 - 1/N``: the library's rule for RMSprop and
schedules, and for the Adam family from 3 workers on until the forty-third
stop; the name predates that), ``linear`` (workers at N times the rate, no
outer momentum: ``learning_rate_scaling="linear"``, the rule for SGD and for
2 Adam workers), ``goyal`` (``linear``, the workers' rate ramped linearly,
window by window, from the user's over the first epoch: the rule for the
Adam family from 3 workers on, ``warmup_epochs``), ``sqrt`` (workers at
``sqrt(N)`` times the rate, outer momentum ``1 - 1/sqrt(N)``), ``anneal``
(``linear`` at first, moving to ``default`` over the first epoch) and
``warmup`` (``default`` at first, moving geometrically to ``linear`` over
the first epoch, the outer momentum keeping the step N-fold). Each seed
reorders every worker's rows (and, for the held-out problems, draws other
initial weights); one worker with no momentum is the reference. It prints
each run, then the mean gap to the reference and its range over the seeds.

``--ps`` runs a parameter-server rule (:mod:`sparkeras.strategies.distributed`)
with its own ``commit``/``fold``/``apply``: synchronous rules in rounds,
asynchronous ones round-robin, so every commit is ``K - 1`` updates stale,
as with K equally fast workers. ``STUDY_VARIANTS=file.py`` imports a file
first, so a rule it registers in ``DISTRIBUTED_OPTIMIZERS`` can be tried
without changing sparkeras. The workers train at the rule's own multiple of
the rate (``rate_factor``: twice Adam's for ``easgd`` with 2 workers, the
window's 8 for ``adag``), reached over its warmup (``warmup_for``), or at
``"rate_factor"`` times it when the setting gives one.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from tasks import TASKS, Task  # noqa: E402


class _Columns:
    """One feature array and one label array, as sparkeras' ColumnMap arranges them."""

    features, labels = [0], [1]

    def x(self, arrays):
        return arrays[0]

    def y(self, arrays):
        return arrays[0]

    def data(self, arrays):
        return arrays[0], arrays[1]


def _workers(task: Task, x, y, K: int, optimizer=None, rate_factor: float = 1.0):
    """The task's model, and K copies of it, each with its own optimizer and contiguous slice of the rows.

    Each copy's optimizer is the model's own (``optimizer`` replaces it), at
    ``rate_factor`` times its learning rate.
    """
    import keras

    from sparkeras.worker.local_steps import LocalSteps

    base = task.make_model()
    n = len(x) // K
    workers = []
    for k in range(K):
        m = keras.models.clone_model(base)
        m.compile(optimizer=(optimizer and optimizer()) or type(base.optimizer).from_config(base.optimizer.get_config()),
                  loss=base.loss)
        m.optimizer.learning_rate.assign(float(np.asarray(m.optimizer.learning_rate)) * rate_factor)
        m.set_weights(base.get_weights())
        workers.append((m, LocalSteps(m, [x[k * n:(k + 1) * n], y[k * n:(k + 1) * n]], _Columns(), "tensorflow")))
    return base, n, workers


def averaging(task: Task, data, K: int, window: int, momentum: float, nesterov: bool = True,
              outer_learning_rate: float = 1.0, report: str = "center", rate_factor: float = 1.0,
              seed: int = 0, anneal_epochs: float = 0.0, anneal_from: float | None = None,
              ramp: str = "geometric") -> list[float]:
    """``report="center"`` scores the look-ahead center; ``"iterate"`` the center less it (``OuterStep.iterate``).

    The strategy reports the iterate when an epoch has at least ``2 K``
    rounds (``ModelAveraging.reports_iterate``), else the center. The
    workers train at ``rate_factor`` times the model's rate; ``seed`` orders
    their rows. With ``anneal_epochs`` the workers instead start at ``K``
    times the rate with no outer momentum and move, geometrically over that
    many epochs, to ``rate_factor`` times it and ``momentum``; the outer
    momentum is ``1 - s / K`` at the workers' factor ``s``, so the step
    stays ``K``-fold throughout (the ``anneal`` rule of ``--rules``).
    ``anneal_from`` starts the workers at that factor instead of ``K``
    (``1``, with ``rate_factor=K``: the outer momentum first, the linear
    rule after, the ``warmup`` rule of ``--rules``). ``ramp="linear"`` moves
    the factor linearly, window by window, with no outer momentum at any
    point: Goyal et al.'s warmup of the linear rule (``--rules goyal``).
    """
    from sparkeras.strategies.averaging import OuterStep

    (x, y), test = data
    base, n, workers = _workers(task, x, y, K, rate_factor=rate_factor)
    center = [np.array(w) for w in base.get_weights()]
    outer = OuterStep(momentum, outer_learning_rate, nesterov, [v.trainable for v in base.weights])
    steps = -(-n // task.batch_size)
    rate = float(np.asarray(workers[0][0].optimizer.learning_rate)) / rate_factor  # the model's own
    scores = []
    for epoch in range(task.epochs):
        orders = [np.random.default_rng([seed, epoch, k]).permutation(n) for k in range(K)]
        for start in range(0, steps, window):
            if anneal_epochs:
                done = min(1.0, (epoch * steps + start) / (anneal_epochs * steps))
                first = K if anneal_from is None else anneal_from
                if ramp == "linear":
                    factor = first + (rate_factor - first) * done
                    outer.momentum = 0.0
                else:
                    factor = first ** (1 - done) * rate_factor ** done
                    outer.momentum = 1 - factor / K
            moves = []
            for (m, local), order in zip(workers, orders):
                if anneal_epochs:
                    m.optimizer.learning_rate.assign(rate * factor)
                m.set_weights(center)
                local.train(order, task.batch_size, start, min(window, steps - start))
                moves.append([w - c for w, c in zip(m.get_weights(), center)])
            outer(center, [np.mean(parts, axis=0) for parts in zip(*moves)])
        base.set_weights(outer.iterate(center) if report == "iterate" else center)
        scores.append(round(task.score(base, *test), 4))
    return scores


def allreduce(task: Task, data, K: int, rule: str, warmup_epochs: float, anneal_to: float | None = None) -> list[float]:
    """One process with the global batch under ``rule`` (``scale_factor``'s), reached over ``warmup_epochs``.

    ``anneal_to`` (tried, not adopted; BENCHMARKS.md, "All-reduce's rate
    annealed back") moves the scaled rate, epoch by epoch after the first,
    linearly to ``anneal_to`` times the user's rate in the last epoch.
    """
    import keras

    from sparkeras.worker.learning_rate import scale_factor, scale_learning_rate
    from sparkeras.worker.local_steps import LocalSteps

    (x, y), test = data
    keras.utils.set_random_seed(0)  # the held-out problems' models draw their weights unseeded
    model = task.make_model()
    batch = task.batch_size * K
    steps = -(-len(x) // batch)
    scale = scale_factor(rule, model.optimizer, K)
    scale_learning_rate(model.optimizer, scale, int(warmup_epochs * steps), 0)
    local = LocalSteps(model, [x, y], _Columns(), "tensorflow")
    scores = []
    for epoch in range(task.epochs):
        if anneal_to is not None and epoch > 0:
            scale_learning_rate(model.optimizer, scale + (anneal_to - scale) * epoch / (task.epochs - 1), 0, 0)
        local.train(np.random.default_rng([0, epoch]).permutation(len(x)), batch, 0, steps)
        scores.append(round(task.score(model, *test), 4))
    return scores


def parameter_server(task: Task, data, K: int, rule: str, rate_factor: float | None = None,
                     **options) -> list[float]:
    """The workers train at ``rate_factor`` times the model's learning rate, by default the rule's own
    factor for K workers (``rate_factor``), reached over the rule's warmup (``warmup_for``: elastic
    averaging's adaptive optimizers from 3 workers on, ADAG's quarter epoch)."""
    from sparkeras.strategies.distributed import DISTRIBUTED_OPTIMIZERS

    strategy = DISTRIBUTED_OPTIMIZERS[rule](**options)
    strategy.check_model(task.make_model())
    strategy._num_workers = K  # what EASGD.check sets from the job: its default alpha and window
    strategy.window = strategy.window_for(K)
    rate_factor = strategy.rate_factor(K) if rate_factor is None else rate_factor
    (x, y), test = data
    base, n, workers = _workers(task, x, y, K, strategy.local_optimizer, rate_factor)
    center = [np.array(w) for w in base.get_weights()]
    strategy._trainable = tuple(v.trainable for v in base.weights)  # as the driver records it (ADAG's commit)
    version, seen = 0, [(list(center), 0) for _ in range(K)]
    steps = -(-n // task.batch_size)
    window = steps if strategy.window == "epoch" else int(strategy.window)
    rates = [float(np.asarray(m.optimizer.learning_rate)) for m, _ in workers]  # the rule's multiple of the model's
    warmup = strategy.warmup_for(K)
    strategy._ramp = (rate_factor, warmup, steps)  # as the driver records it (rate_ramp)
    scores = []
    for epoch in range(task.epochs):
        orders = [np.random.default_rng([0, epoch, k]).permutation(n) for k in range(K)]
        for k, (m, _) in enumerate(workers):
            m.set_weights(strategy.fold(m.get_weights(), [np.array(c) for c in center], None))
            seen[k] = ([np.array(c) for c in center], version)
        for start in range(0, steps, window):
            count = min(window, steps - start)
            share = strategy.rate_ramp(epoch, start)  # a warmup's share of the workers' rate, as the workers take it
            for (m, _), rate in zip(workers, rates):
                m.optimizer.learning_rate.assign(rate * share)
            if strategy.synchronous:
                sent = []
                for (m, local), order in zip(workers, orders):
                    local.train(order, task.batch_size, start, count)
                    sent.append(strategy.commit(m.get_weights(), center, count))
                strategy.apply_round(center, sent)
                for (m, _), s in zip(workers, sent):
                    m.set_weights(strategy.fold(m.get_weights(), [np.array(c) for c in center], s))
                continue
            for k, ((m, local), order) in enumerate(zip(workers, orders)):
                local.train(order, task.batch_size, start, count)
                weights = m.get_weights()
                if strategy.pull_first:
                    seen[k] = ([np.array(c) for c in center], version)
                s = strategy.commit(weights, seen[k][0], count)
                strategy.apply(center, s, version - seen[k][1])
                version += 1
                fresh = [np.array(c) for c in center]
                m.set_weights(strategy.fold(weights, seen[k][0] if strategy.pull_first else fresh, s))
                seen[k] = (fresh, version)
        base.set_weights(center)
        scores.append(round(task.score(base, *test), 4))
    return scores


def study_task(name: str) -> Task:
    """A benchmark task, or a held-out problem of ``bench/more_problems.py`` with its own metric."""
    if name in TASKS:
        return TASKS[name]
    import more_problems

    problem = more_problems.PROBLEMS[name]

    def data():
        x, y = problem.make_data(np.random.default_rng(0))
        cut = int(0.8 * len(x))
        return (x[:cut], y[:cut]), (x[cut:], y[cut:])

    return Task(name, data, problem.make_model, problem.metric, problem.epochs, problem.batch_size,
                problem.higher_is_better)


def compare_rules(names: list[str], seeds: list[int], workers: list[int], rules: list[str]) -> None:
    """Averaging's rules against one worker, over seeds: each run, then the mean gap and its range."""
    import keras

    from sparkeras.strategies.averaging import ModelAveraging

    gaps: dict[tuple[str, int, str], list[float]] = {}
    for name in names:
        task = study_task(name)
        data = task.make_data()
        for seed in seeds:
            def run(K: int, rule: str) -> list[float]:
                keras.utils.set_random_seed(seed)
                rate = {"linear": float(K), "sqrt": float(np.sqrt(K)), "warmup": float(K),
                        "goyal": float(K)}.get(rule, 1.0)  # the workers' factor
                window = int(ModelAveraging().window_for(K))
                momentum = 1.0 - rate / K  # the outer momentum makes the rest of the N-fold step
                return averaging(task, data, K, window, momentum, report="iterate" if K > 1 else "center",
                                 rate_factor=rate, seed=seed,
                                 anneal_epochs=1.0 if rule in ("anneal", "warmup", "goyal") else 0.0,
                                 anneal_from=1.0 if rule in ("warmup", "goyal") else None,
                                 ramp="linear" if rule == "goyal" else "geometric")

            reference = run(1, "default")
            print(json.dumps({"task": name, "seed": seed, "K": 1, "curve": reference}), flush=True)
            for K in workers:
                for rule in rules:
                    curve = run(K, rule)
                    print(json.dumps({"task": name, "seed": seed, "K": K, "rule": rule, "curve": curve}), flush=True)
                    mine, plain = curve[-1], reference[-1]
                    bounded = task.higher_is_better and plain <= 1.0
                    gaps.setdefault((name, K, rule), []).append(
                        100 * (mine - plain) if bounded else 100 * (mine / plain - 1) * (1 if task.higher_is_better else -1))
    print("gap to one worker at the last epoch, mean [min, max] over the seeds; points, or percent of its error "
          "for metrics that are not scores in [0, 1]; positive is better")
    print("| task | workers | " + " | ".join(rules) + " |")
    print("|---|---|" + "---|" * len(rules))
    for name in names:
        for K in workers:
            cells = [f"{np.mean(g):+.2f} [{min(g):+.1f}, {max(g):+.1f}]" for g in (gaps[(name, K, r)] for r in rules)]
            print(f"| {name} | {K} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    from sparkeras.worker.runtime import import_keras_quietly

    import_keras_quietly()
    args = sys.argv[1:]
    if args and args[0] == "--seeds":
        import argparse

        parser = argparse.ArgumentParser()
        parser.add_argument("--seeds", default="1,2,3")
        parser.add_argument("--workers", default="2,4")
        parser.add_argument("--rules", default="default,linear")
        parser.add_argument("tasks", nargs="+")
        options = parser.parse_args(args)
        compare_rules(options.tasks, [int(s) for s in options.seeds.split(",")],
                      [int(k) for k in options.workers.split(",")], options.rules.split(","))
        return
    studies = {"--allreduce": allreduce, "--ps": parameter_server}
    study = studies.get(args[0], averaging) if args else averaging
    args = args[1:] if study is not averaging else args
    if os.environ.get("STUDY_VARIANTS"):  # extra rules to try, registered by importing a file
        import importlib.util
        spec = importlib.util.spec_from_file_location("variants", os.environ["STUDY_VARIANTS"])
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    task = study_task(args[0])
    data = task.make_data()
    for setting in args[1:]:
        print(task.name, setting, study(task, data, **json.loads(setting)), flush=True)


if __name__ == "__main__":
    main()
