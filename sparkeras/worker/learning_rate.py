"""Learning-rate scaling for large global batches, with warmup.

With K workers each taking batches of ``b`` rows, a synchronous step sees a
global batch of ``K*b`` rows and an epoch has K times fewer steps. At the
user's learning rate the model then moves less per epoch than ``model.fit``
with batches of ``b``: measured on an MLP with Adam and two workers, 4
accuracy points behind after 3 epochs.

The rule that restores the progress depends on the optimizer:

* SGD and momentum SGD: scale linearly, ``lr * K`` (Goyal et al. 2017,
  "Accurate, Large Minibatch SGD"), as Horovod recommends.
* Adaptive optimizers (Adam, AdamW, RMSprop, Adagrad...): scale by
  ``sqrt(K)`` (Malladi et al. 2022, "On the SDEs and Scaling Rules for
  Adaptive Gradient Algorithms"). Their step is normalised by the gradient's
  second moment, so a K-times larger batch, whose gradient noise is K times
  smaller, matches the small-batch trajectory at ``sqrt(K)``. Measured with
  Adam on an MLP, 4 workers: the linear rule ran ahead early, then ended 1.2
  points below ``model.fit`` at equal epochs; the square-root rule stayed
  within 0.5 points at every epoch.
* Except the Adam family (a first moment: Adam, AdamW, Nadam, Adamax,
  Lion) with at most :data:`ADAPTIVE_LINEAR_UP_TO` workers: linearly, as
  model averaging scales it, reached over a first epoch above 2 workers.
  The square-root rule matches the small-batch trajectory only where the
  steps are many and noisy; a model with few steps per epoch falls one or
  more epochs behind (see the constant).

The scaled rate is reached by a linear warmup from the user's rate over the
first ``warmup_epochs`` (Goyal et al.), which keeps the first steps, taken
from a random initialisation, from diverging.
"""

from __future__ import annotations

import math
from typing import Any, Callable

RULES = ("auto", "linear", "sqrt", "none")

ADAPTIVE_OPTIMIZERS = frozenset(
    ["adam", "adamw", "adamax", "nadam", "rmsprop", "adagrad", "adadelta", "adafactor", "lion", "lamb", "ftrl",
     "muon"])


def check_rule(rule: str | None) -> str:
    """The normalised rule name; an InputError-worthy ValueError for an unknown one."""
    name = "none" if rule is None or rule is False else str(rule).lower()
    if name not in RULES:
        raise ValueError(f"learning_rate_scaling must be one of {list(RULES)} (or None), got {rule!r}")
    return name


def is_adaptive(optimizer: Any) -> bool:
    """Whether ``optimizer`` normalises its steps by gradient statistics (Adam and its family)."""
    return type(optimizer).__name__.lower() in ADAPTIVE_OPTIMIZERS or any(
        cls.__name__.lower() in ADAPTIVE_OPTIMIZERS for cls in type(optimizer).__mro__[1:])


ADAPTIVE_AUTO = "auto-adaptive"
""":func:`local_rate_rule`'s answer for Adam and its kin with a first moment (``beta_1``: Adam, AdamW,
Adamax, Nadam, Lion) and a constant rate: how far their workers' rate grows depends on the worker count
(:data:`ADAPTIVE_WARMUP_ABOVE`)."""

ADAPTIVE_WARMUP_ABOVE = 2
"""The most workers that start at their scaled rate by default; more reach it over a first-epoch warmup.

The rule for model averaging's Adam family and elastic averaging's
adaptive optimizers (:meth:`~sparkeras.strategies.distributed.EASGD.rate_factor`).

Under ``"auto"`` model averaging trains Adam and its kin at N times the
rate with no outer momentum (Goyal et al.'s linear rule). Measured with
``bench/convergence_study.py`` (BENCHMARKS.md, "Averaging's default for
Adam with 2 workers" and "Four and eight Adam workers: the linear rule
after a warmup"): with 2 workers the linear rule was within 0.6 points
(or 0.7%) of one process on every problem but an RMSprop regression, while
the outer momentum lost 3 points on a noisy Conv1D classifier and 3% on an
autoencoder, models that first have to leave a plateau. With 4 workers,
Adam at 4 times its rate from the first step cost the benchmark CNN 6.8-7.6
points for good, but ramped up to it over the first epoch, as Goyal et al.
warm up large-batch SGD, the CNN ended level with one worker (+0.5 points
at seed 1, -0.24 over seeds 2 and 3, against -1.4 and -1.6), and
every problem tried was closer to one worker than with the outer momentum
(``1 - 1/N``, the rule before): digits -0.3 against -1.1 points, a noisy
Conv1D classifier -2.9 against -26, an LSTM regression -46% against -182%
of its error. Elastic averaging, which has no outer momentum, has a rule
of its own (:func:`sparkeras.strategies.distributed.elastic_rate_rule`,
:meth:`~sparkeras.strategies.distributed.EASGD.rate_factor`). Optimizers
without a first moment to smooth their steps (RMSprop, Adagrad) are not
scaled: the one such problem measured, the RMSprop regression, ended 5.3%
above plain's error with the linear rule in Spark against 1.0% below with
averaging's momentum.
"""


def adam_family(optimizer: Any) -> bool:
    """Whether ``optimizer`` is adaptive with a first moment (``beta_1``): Adam, AdamW, Nadam, Adamax, Lion."""
    return is_adaptive(optimizer) and hasattr(optimizer, "beta_1")


def local_rate_rule(optimizer: Any) -> str | None:
    """``learning_rate_scaling="auto"`` for workers that each train their own copy between exchanges.

    Model averaging and elastic averaging both move the shared model by
    about one worker's move per round, while the round used N workers'
    rows; workers at a multiple of the rate restore the progress per epoch.
    ``"linear"`` (N times) for optimizers that do not normalise their steps
    (SGD, with or without momentum), :data:`ADAPTIVE_AUTO` for the Adam
    family (each strategy says how far: model averaging N times, reached
    over a first epoch's warmup above :data:`ADAPTIVE_WARMUP_ABOVE` workers, elastic averaging
    :meth:`~sparkeras.strategies.distributed.EASGD.rate_factor`), ``None``
    (the user's rate) for RMSprop, Adagrad and the like, and for a
    schedule, which is not in the state the workers are handed.
    """
    import keras

    if not isinstance(getattr(optimizer, "learning_rate", None), keras.Variable):
        return None
    if not is_adaptive(optimizer):
        return "linear"
    return ADAPTIVE_AUTO if adam_family(optimizer) else None


def check_constant_rate(strategy: str, optimizer: Any, fix: str) -> None:
    """Refuse a rate rule on an optimizer whose rate follows a schedule: the schedule is not in the state the
    workers are handed, so their rate cannot be a multiple of it. ``strategy`` names the setting, ``fix`` ends
    the message."""
    import keras

    from sparkeras.errors import InputError

    if not isinstance(getattr(optimizer, "learning_rate", None), keras.Variable):
        raise InputError(
            f"{strategy} scales a constant learning rate, but the model's optimizer ({type(optimizer).__name__}) "
            f"follows a schedule. Compile it with a number as learning_rate{fix}")


ADAPTIVE_LINEAR_UP_TO = 4
"""The most all-reduce workers whose Adam-family rate grows linearly under ``"auto"``; more get ``sqrt(N)``.

With N workers all-reduce takes ``1 / N`` of ``model.fit``'s steps per
epoch. At ``sqrt(N)`` times Adam's rate that left models with few steps
behind: a two-input, two-output model on 4,800 rows ended its fourth
epoch at 0.888 held-out accuracy with 2 workers and 0.806 with 4, against
plain's 0.961; at N times the rate, 0.966 and 0.965. Simulated exactly
(``bench/convergence_study.py --allreduce``), on the seven Adam held-out
problems of ``bench/more_problems.py`` twice the rate with 2 workers
ended ahead of ``sqrt`` on five (a Conv1D classifier 0.673 against
0.647, plain 0.651; an LSTM regression's error 0.0041 against 0.0081,
plain 0.0103; digits 0.958 against 0.947), level on one, and on the last
both ended above plain; with 4 workers 4 times the rate, reached over
the first epoch (:data:`ADAM_FAMILY_WARMUP_EPOCHS`), ended ahead on six
of the seven over two seeds (a token classifier 0.1-0.4 points behind)
and on the sequence and CNN tasks (the CNN 0.885 against 0.873, plain
0.886). The cost: the label-noise MLP, which overfits after its
eighth epoch, peaks sooner and higher, and so ends its tenth below plain
instead of level: 0.6-1.0 points with 2 workers, 2.3 with 4
(BENCHMARKS.md, "All-reduce's Adam family at twice the rate with 2
workers" and "All-reduce's Adam family at 4 times the rate with 4
workers"). More than 4 workers were not measured and keep ``sqrt(N)``.
"""

ADAM_FAMILY_WARMUP_EPOCHS = 1.0
"""All-reduce's default warmup for the Adam family's linear rule above 2 workers, as model averaging's.

Reached over a quarter epoch, 4 times Adam's rate left a token classifier
1.9 points behind one process (0.895 against 0.915); over one epoch, 0.5
(0.910). Up to 2 workers, and for every other rule, the warmup stays
:data:`DEFAULT_WARMUP_EPOCHS`."""

DEFAULT_WARMUP_EPOCHS = 0.25
"""All-reduce's warmup otherwise: against a whole epoch, the first epochs were ahead and the last as close to
``model.fit`` (BENCHMARKS.md, "The learning-rate warmup: a quarter epoch instead of one")."""


def auto_rule(optimizer: Any, workers: int) -> str:
    """What ``"auto"`` means for all-reduce: ``"linear"`` for SGD and for the Adam family up to
    :data:`ADAPTIVE_LINEAR_UP_TO` workers, ``"sqrt"`` for other adaptive optimizers and more workers."""
    if not is_adaptive(optimizer):
        return "linear"
    return "linear" if adam_family(optimizer) and workers <= ADAPTIVE_LINEAR_UP_TO else "sqrt"


def allreduce_warmup_epochs(setting: float | None, rule: str, optimizer: Any, workers: int) -> float:
    """All-reduce's warmup in epochs: ``setting`` if given; else :data:`ADAM_FAMILY_WARMUP_EPOCHS` where
    ``"auto"`` scales the Adam family linearly above :data:`ADAPTIVE_WARMUP_ABOVE` workers, else
    :data:`DEFAULT_WARMUP_EPOCHS`."""
    if setting is not None:
        return setting
    linear_adam = rule == "auto" and adam_family(optimizer) and auto_rule(optimizer, workers) == "linear"
    return ADAM_FAMILY_WARMUP_EPOCHS if linear_adam and workers > ADAPTIVE_WARMUP_ABOVE else DEFAULT_WARMUP_EPOCHS


def scale_factor(rule: str, optimizer: Any, workers: int) -> float:
    """How much the learning rate grows with ``workers`` workers under ``rule``."""
    rule = check_rule(rule)
    if rule == "none" or workers <= 1:
        return 1.0
    if rule == "auto":
        rule = auto_rule(optimizer, workers)
    return math.sqrt(workers) if rule == "sqrt" else float(workers)


def warmup_factor(step: float, scale: float, warmup_steps: int) -> float:
    """The multiplier of the user's learning rate after ``step`` steps: 1 rising linearly to ``scale``."""
    if warmup_steps <= 0:
        return scale
    return 1.0 + (scale - 1.0) * min(1.0, max(0.0, step) / warmup_steps)


class ScaledRate:
    """An optimizer's own learning rate times a warmup factor whose settings live in variables.

    Why variables. A traced update reads the learning rate once, when it is
    traced. With the scale, warmup and start held in variables, one traced
    update serves every fit of the model, whatever its number of workers, so
    a worker traces it ahead of the fit (while the data is packed) instead
    of in the fit's first step (0.15-0.35 s on the benchmark models). Kept on
    the optimizer (outside Keras' variable tracking, so the model's state is
    unchanged) and installed only while a fit runs; between fits it is
    neutral (scale 1), so an update traced with it gives the user's rate.
    """

    def __init__(self, optimizer: Any) -> None:
        import keras

        self.optimizer, self.base = optimizer, optimizer._learning_rate
        # The scale is kept as scale - 1, rounded once from the double: the arithmetic of a constant scale.
        self.excess, self.warmup_steps, self.start = (
            keras.Variable(value, dtype="float32", trainable=False, name=f"sparkeras_rate_{name}")
            for value, name in ((0.0, "excess"), (0.0, "warmup"), (0.0, "start")))

    @property
    def settings(self) -> tuple[Any, Any, Any]:
        """The variables of the scale (less one), the warmup's steps and its first step."""
        return self.excess, self.warmup_steps, self.start

    @classmethod
    def of(cls, optimizer: Any) -> "ScaledRate":
        """The optimizer's one ``ScaledRate``, made on first use."""
        found = optimizer.__dict__.get("_sparkeras_scaled_rate")
        if found is None:
            found = optimizer.__dict__["_sparkeras_scaled_rate"] = cls(optimizer)
        return found

    def __call__(self) -> Any:
        import keras
        from keras import ops

        base, optimizer = self.base, self.optimizer
        if isinstance(base, keras.optimizers.schedules.LearningRateSchedule):
            rate = base(optimizer._iterations)
        elif isinstance(base, keras.Variable) or not callable(base):
            rate = base
        else:
            rate = base()
        done = ops.cast(optimizer._iterations, "float32") - self.start
        ramp = ops.where(self.warmup_steps > 0, ops.clip(done / ops.maximum(self.warmup_steps, 1.0), 0.0, 1.0), 1.0)
        return rate * (1.0 + self.excess * ramp)

    def install(self, scale: float = 1.0, warmup_steps: int = 0, start: int = 0) -> Callable[[], None]:
        """Make the optimizer use ``lr * warmup_factor(iterations - start)``; returns what undoes it."""
        self.excess.assign(float(scale) - 1.0)
        self.warmup_steps.assign(float(max(0, warmup_steps)))
        self.start.assign(float(start))
        self.optimizer._learning_rate = self

        def restore() -> None:
            self.excess.assign(0.0)
            self.warmup_steps.assign(0.0)
            self.optimizer._learning_rate = self.base

        return restore


def scale_learning_rate(optimizer: Any, scale: float, warmup_steps: int, start: int) -> Callable[[], None]:
    """Make ``optimizer`` use ``lr * warmup_factor(iterations - start)``; returns a function that undoes it.

    Works for a constant rate and for a ``LearningRateSchedule`` (the schedule
    is scaled). The optimizer's ``learning_rate`` variable, part of the
    model's saved state, keeps the user's value.
    """
    return ScaledRate.of(optimizer).install(scale, warmup_steps, start)
