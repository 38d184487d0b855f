"""KerasTuner's ``build_model(hp)`` functions, searched by Optuna on Spark.

Why. KerasTuner is the Keras-native way to write a search space: a function
that builds a compiled model from ``hp.Int``, ``hp.Float``, ``hp.Choice``...
Its tuners run trials one after another in one process. A user who has such
a function should not have to rewrite it for Optuna to search it on Spark:
:func:`from_keras_tuner` wraps it into the ``build_model(trial)`` that
:func:`sparkeras.tune` takes, and each ``hp`` call becomes the Optuna draw of
the same range. The search, its sampler, pruner and storage are Optuna's;
KerasTuner itself is not needed.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, Iterator, Sequence

from sparkeras.errors import InputError

SAMPLINGS = ("linear", "log")


class HyperParameters:
    """KerasTuner's ``HyperParameters`` methods, each drawing from one Optuna trial.

    ``Int``, ``Float``, ``Choice``, ``Boolean`` and ``Fixed`` take
    KerasTuner's arguments and return the drawn value; ``values`` holds
    every value drawn so far, by name. A hyperparameter with
    ``parent_name``/``parent_values`` (or inside ``conditional_scope``) is
    drawn only when its parent's value is one of ``parent_values``, and is
    otherwise its ``default``, as in KerasTuner. ``sampling="log"`` with a
    ``step`` multiplies by ``step`` (KerasTuner's meaning), so it becomes a
    choice among ``min_value * step**k``. ``sampling="reverse_log"`` has no
    Optuna counterpart and is refused.
    """

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.values: dict[str, Any] = {}
        self._scopes: list[tuple[str, tuple]] = []

    def Int(self, name: str, min_value: int, max_value: int, step: int | None = None, sampling: str = "linear",
            default: int | None = None, parent_name: str | None = None,
            parent_values: Sequence[Any] | None = None) -> int | None:
        _check_range(name, min_value, max_value, sampling)
        if not self._active(parent_name, parent_values):
            return default
        if sampling == "log" and step not in (None, 1):
            choices = sorted({int(round(v)) for v in _geometric(min_value, max_value, step)})
            return self._draw(name, self.trial.suggest_categorical(name, choices))
        return self._draw(name, self.trial.suggest_int(name, int(min_value), int(max_value), step=int(step or 1),
                                                       log=sampling == "log"))

    def Float(self, name: str, min_value: float, max_value: float, step: float | None = None,
              sampling: str = "linear", default: float | None = None, parent_name: str | None = None,
              parent_values: Sequence[Any] | None = None) -> float | None:
        _check_range(name, min_value, max_value, sampling)
        if not self._active(parent_name, parent_values):
            return default
        if sampling == "log" and step is not None:
            return self._draw(name, self.trial.suggest_categorical(name, _geometric(min_value, max_value, step)))
        return self._draw(name, self.trial.suggest_float(name, float(min_value), float(max_value), step=step,
                                                         log=sampling == "log"))

    def Choice(self, name: str, values: Sequence[Any], ordered: bool | None = None, default: Any = None,
               parent_name: str | None = None, parent_values: Sequence[Any] | None = None) -> Any:
        if not isinstance(values, (list, tuple)) or not values:
            raise InputError(f"hp.Choice({name!r}) needs a non-empty list of values, got {values!r}.")
        if not self._active(parent_name, parent_values):
            return default
        return self._draw(name, self.trial.suggest_categorical(name, list(values)))

    def Boolean(self, name: str, default: bool = False, parent_name: str | None = None,
                parent_values: Sequence[Any] | None = None) -> bool:
        if not self._active(parent_name, parent_values):
            return default
        return self._draw(name, self.trial.suggest_categorical(name, [False, True]))

    def Fixed(self, name: str, value: Any, parent_name: str | None = None,
              parent_values: Sequence[Any] | None = None) -> Any:
        if self._active(parent_name, parent_values):
            self.values[name] = value
        return value

    def get(self, name: str) -> Any:
        """The value drawn for ``name``; a ``KeyError`` naming the drawn ones if there is none."""
        if name not in self.values:
            raise KeyError(f"no hyperparameter {name!r} was drawn; drawn: {sorted(self.values)}")
        return self.values[name]

    @contextlib.contextmanager
    def conditional_scope(self, parent_name: str, parent_values: Any) -> Iterator[None]:
        """Hyperparameters drawn inside are active only when ``parent_name``'s value is in ``parent_values``."""
        values = tuple(parent_values) if isinstance(parent_values, (list, tuple)) else (parent_values,)
        self._scopes.append((parent_name, values))
        try:
            yield
        finally:
            self._scopes.pop()

    def _active(self, parent_name: str | None, parent_values: Sequence[Any] | None) -> bool:
        conditions = list(self._scopes)
        if parent_name is not None:
            conditions.append((parent_name, tuple(parent_values or ())))
        return all(self.values.get(parent) in values for parent, values in conditions)

    def _draw(self, name: str, value: Any) -> Any:
        self.values[name] = value
        return value


def from_keras_tuner(build_model: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``build_model(hp)``, as KerasTuner takes it, as the ``build_model(trial)`` that :func:`sparkeras.tune` takes.

    ``sparkeras.tune(from_keras_tuner(build_model), df, n_trials=20, ...)``;
    ``sparkeras.best_model(study, from_keras_tuner(build_model), df, ...)``
    rebuilds the best trial's model the same way.
    """
    if not callable(build_model):
        raise InputError(f"from_keras_tuner needs a function build_model(hp), got {type(build_model).__name__}.")

    @functools.wraps(build_model)
    def build_from_trial(trial: Any) -> Any:
        return build_model(HyperParameters(trial))

    return build_from_trial


def _check_range(name: str, low: Any, high: Any, sampling: str) -> None:
    if sampling not in SAMPLINGS:
        raise InputError(f"hp {name!r}: sampling={sampling!r} has no Optuna counterpart; use one of {SAMPLINGS}.")
    if not low < high or (sampling == "log" and low <= 0):
        positive = " and min_value > 0 for log sampling" if sampling == "log" else ""
        raise InputError(f"hp {name!r}: needs min_value < max_value{positive}, got {low!r} and {high!r}.")


def _geometric(low: float, high: float, factor: float) -> list:
    """``low * factor**k`` up to ``high``: KerasTuner's log-scale range with a step."""
    if factor <= 1:
        raise InputError(f"a log-scale step multiplies, so it must be above 1, got {factor!r}.")
    count = int(math.floor(math.log(high / low, factor) + 1e-9)) + 1
    return [low * factor ** k for k in range(count)]


__all__ = ["HyperParameters", "from_keras_tuner"]
