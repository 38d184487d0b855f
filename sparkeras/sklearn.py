"""scikit-learn estimators that train on Spark: ``KerasClassifier`` and ``KerasRegressor``.

SystemML's Keras2DML ("mllearn") let a scikit-learn user call ``fit(X, y)``
and ``predict(X)`` while the work ran on the cluster. These classes do the
same with sparkeras: ``fit`` trains a fresh copy of the Keras model with
:class:`~sparkeras.SparkModel` (any strategy), and ``predict`` runs on the
executors, or in this process where it is faster
(:func:`~sparkeras.inference.batch.scored_on_driver`): a fitted estimator
unpickled in a service scores without starting Spark. They follow
scikit-learn's estimator contract (parameters stored as given,
``get_params``/``set_params``, ``clone``), so ``Pipeline``,
``cross_val_score`` and ``GridSearchCV`` work. Keep ``n_jobs=1`` in those:
Spark already runs every fit in parallel.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from sparkeras.data.columns import trained_on_logits
from sparkeras.errors import InputError

ModelSource = Any  # a compiled keras.Model, or a callable that returns one
MODEL_ROUTE = "model__"  # set_params(model__hidden=64): an argument of the model-building function


class _SparkKerasBase(BaseEstimator):
    """Shared by the classifier and the regressor: build, train on Spark, predict on Spark.

    Args:
        model: a compiled ``keras.Model`` (each ``fit`` trains a copy from its
            initial weights), or a callable returning a compiled model. The
            callable may take ``X`` and ``y`` (the training data, ``y``
            encoded as the model will see it) and any of ``model_kwargs``.
        epochs, batch_size, validation_split: as in ``model.fit``.
        strategy: a sparkeras strategy name (``"averaging"``, ``"adag"``...).
        strategy_options: that strategy's options, e.g. ``{"window": 8}``.
        num_workers: Spark tasks that train together (default: one per task slot, on a
            local master at most one per core).
        learning_rate: overrides the optimizer's learning rate.
        model_kwargs: keyword arguments for a callable ``model``.
        build_fn: the callable under the name Keras' old scikit-learn wrappers
            (and scikeras, deprecated) gave it; pass ``model`` or ``build_fn``.
        **model_params: more arguments of the callable ``model``, each a
            parameter of its own, as scikeras and Keras' old wrappers take them:
            ``KerasClassifier(build, model__hidden=64)`` or
            ``KerasClassifier(build_fn=build, hidden=64)``. ``get_params``
            lists them, and ``set_params`` and ``GridSearchCV`` grids
            (``{"model__hidden": [32, 64]}``, or ``{"hidden": ...}`` where
            ``build`` takes ``hidden``) set them. They override
            ``model_kwargs``; a name the callable does not take is refused at
            ``fit``, with the estimator's own parameters suggested for a typo.
        custom_objects: custom Keras objects needed to rebuild the model on the workers.
        seed: seeds shuffling and the validation split.
        verbose: 0 quiet, 1 progress bar.
        class_weight: classifiers only, as in scikit-learn's classifiers: a dict
            ``{label value: weight}`` or ``"balanced"`` (``n_rows / (n_classes *
            rows of the class)``); the training loss weighs each row by its class.
    """

    def __init__(
        self,
        model: ModelSource = None,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        validation_split: float = 0.0,
        strategy: str = "averaging",
        strategy_options: Mapping[str, Any] | None = None,
        num_workers: int | None = None,
        learning_rate: float | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        custom_objects: Mapping[str, Any] | None = None,
        seed: int | None = 0,
        verbose: int = 0,
        class_weight: Mapping[Any, float] | str | None = None,
        build_fn: Callable[..., Any] | None = None,
        **model_params: Any,
    ) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.validation_split = validation_split
        self.strategy = strategy
        self.strategy_options = strategy_options
        self.num_workers = num_workers
        self.learning_rate = learning_rate
        self.model_kwargs = model_kwargs
        self.custom_objects = custom_objects
        self.seed = seed
        self.verbose = verbose
        self.class_weight = class_weight
        self.build_fn = build_fn
        self._model_params: tuple[str, ...] = ()
        self._set_model_params(model_params)

    def _set_model_params(self, params: Mapping[str, Any]) -> None:
        """Keep the builder's arguments as attributes under the names given (``model__hidden``, ``hidden``)."""
        for key, value in params.items():
            setattr(self, key, value)
        self._model_params = tuple(dict.fromkeys((*self._model_params, *params)))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters, the builder's arguments given as parameters included (so clones keep them)."""
        params = super().get_params(deep=deep)
        params.update({key: getattr(self, key) for key in self._model_params})
        return params

    def set_params(self, **params: Any) -> "_SparkKerasBase":
        """Set parameters; ``model__<name>`` and the builder's own argument names set the model-building function's.

        scikeras, the wrapper most Keras users searched with, routes a
        builder's arguments as ``model__<name>``, and Keras' old wrappers took
        them by their plain names, so grids written for either run here
        unchanged. scikit-learn alone would read ``model__hidden`` as a
        parameter of an estimator inside ``model`` and fail with
        "'function' object has no attribute 'set_params'".
        """
        own = set(super().get_params(deep=False))
        taken = _builder_arguments(self.model if self.model is not None else self.build_fn)
        mine = {key: value for key, value in params.items()
                if key not in own and (key.startswith(MODEL_ROUTE) or key in self._model_params or key in taken)}
        self._set_model_params(mine)
        return super().set_params(**{key: value for key, value in params.items() if key not in mine})

    def _builder_kwargs(self) -> dict[str, Any]:
        """What the model-building function is called with: ``model_kwargs``, then the parameters given for it."""
        kwargs = dict(self.model_kwargs or {})
        for key in self._model_params:
            kwargs[key[len(MODEL_ROUTE):] if key.startswith(MODEL_ROUTE) else key] = getattr(self, key)
        return kwargs

    def __sklearn_clone__(self) -> "_SparkKerasBase":
        """A fresh, unfitted estimator with the same parameters.

        The model is shared rather than deep-copied: ``fit`` never changes
        it (it trains a copy), and Keras models do not deep-copy reliably.
        """
        return type(self)(**self.get_params(deep=False))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True
        return tags

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "_SparkKerasBase":
        """Train a fresh copy of the model on ``X`` and ``y`` with sparkeras, on Spark.

        ``sample_weight`` weighs each row's loss; with ``class_weight`` as
        well, a row weighs the product of the two, as in scikit-learn's
        classifiers (Keras alone refuses both).
        """
        from sparkeras.data.weights import check_row_weights, row_weights
        from sparkeras.model import SparkModel

        x = _features(X)
        weights = check_row_weights(None, sample_weight, x)
        target = self._encode_target(np.asarray(y), len(x))
        keras_model = self._build(x, target)
        self._check_output(keras_model)
        class_weight = self._class_weights(target)
        if weights is not None and class_weight is not None:
            weights, class_weight = weights * row_weights(target, tuple(class_weight.items())), None
        trainer = SparkModel(keras_model, self.strategy, self.num_workers, seed=self.seed,
                             custom_objects=self.custom_objects, **dict(self.strategy_options or {}))
        history = trainer.fit(x, target, epochs=self.epochs, batch_size=self.batch_size,
                              validation_split=self.validation_split, verbose=self.verbose,
                              class_weight=class_weight, sample_weight=weights)
        self.model_ = keras_model
        self.history_ = dict(history.history)
        self.n_features_in_ = x.shape[1] if x.ndim == 2 else int(np.prod(x.shape[1:]))
        return self

    def _build(self, x: np.ndarray, y: np.ndarray) -> Any:
        import keras

        from sparkeras.model import fresh_copy

        name = type(self).__name__
        if self.model is not None and self.build_fn is not None:
            raise InputError(f"{name} was given both model and build_fn; pass the model or its function once, "
                             "as model.")
        source = self.model if self.model is not None else self.build_fn
        if source is None:
            raise InputError(f"{name} needs a model: {name}(model=compiled_keras_model).")
        kwargs = self._builder_kwargs()
        if isinstance(source, keras.Model):
            if kwargs:
                raise InputError(
                    f"{sorted(kwargs)} (given as model_kwargs, model__ or other keyword parameters) need a function "
                    f"that builds the model; {name} was given a compiled keras.Model. Pass the function instead: "
                    f"{name}(build_model, model_kwargs={{...}}).")
        else:
            if not callable(source):
                raise InputError(f"model must be a compiled keras.Model or a callable returning one, "
                                 f"got {type(source).__name__}.")
            source = _call_builder(source, x, y, kwargs, sorted(super().get_params(deep=False)))
        return fresh_copy(source, learning_rate=self.learning_rate, owner=type(self).__name__)

    def _predict_raw(self, X: Any) -> np.ndarray:
        from sparkeras.model import SparkModel

        check_is_fitted(self, "model_")
        x = _features(X)
        width = x.shape[1] if x.ndim == 2 else int(np.prod(x.shape[1:]))
        if width != self.n_features_in_:
            raise InputError(f"X has {width} features, but {type(self).__name__} was fitted with "
                             f"{self.n_features_in_}; pass the same columns as in fit.")
        out = SparkModel(self.model_, num_workers=self.num_workers, custom_objects=self.custom_objects,
                         seed=self.seed).predict(x, batch_size=max(256, self.batch_size))
        return np.asarray(out)

    def _encode_target(self, y: np.ndarray, rows: int) -> np.ndarray:
        raise NotImplementedError

    def _class_weights(self, target: np.ndarray) -> dict[int, float] | None:
        """``class_weight`` keyed by what the model sees (class indices)."""
        if self.class_weight is not None:
            raise InputError(f"class_weight applies to classifiers; {type(self).__name__} has no classes.")
        return None

    def _check_output(self, model: Any) -> None:
        raise NotImplementedError


class KerasClassifier(ClassifierMixin, _SparkKerasBase):
    """A scikit-learn classifier that trains a Keras model on Spark.

    Labels may be any values (strings, ints); ``classes_`` keeps them in
    sorted order and the model sees their indices ``0..k-1``. The model needs
    one softmax-style output of ``k`` units (``sparse_categorical_crossentropy``
    takes the indices as they are; ``categorical_crossentropy`` is swapped for
    it, the same loss on indices), or, for two classes, one sigmoid unit with
    ``binary_crossentropy``. ``predict_proba`` returns one column per class.

    Multi-label, as scikit-learn's ``MLPClassifier`` takes it: ``y`` is a
    ``(rows, labels)`` indicator matrix of 0 and 1, the model has one sigmoid
    unit per label (or logits) trained with ``binary_crossentropy``,
    ``predict`` returns the indicator matrix (each label above 0.5) and
    ``predict_proba`` each label's probability.
    """

    def _encode_target(self, y: np.ndarray, rows: int) -> np.ndarray:
        if len(y) != rows:
            raise InputError(f"X has {rows} rows but y has {len(y)}; they must match.")
        self._multilabel = y.ndim == 2
        if self._multilabel:
            return self._encode_indicators(y)
        if y.ndim != 1:
            raise InputError(f"y must be one label per row (shape ({rows},)), or a ({rows}, labels) indicator "
                             f"matrix for multi-label, got shape {y.shape}.")
        self.classes_, indices = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise InputError(f"y has a single class {self.classes_.tolist()}; a classifier needs at least two.")
        return indices.astype(np.int64)

    def _encode_indicators(self, y: np.ndarray) -> np.ndarray:
        values = np.unique(y)
        if not np.issubdtype(y.dtype, np.number) or not np.isin(values, (0, 1)).all():
            raise InputError(f"A 2-D y is a multi-label indicator matrix and must hold only 0 and 1; it holds "
                             f"{values[:10].tolist()}. For one label per row pass a 1-D y.")
        self.classes_ = np.arange(y.shape[1])
        return y.astype(np.float32)

    def _class_weights(self, target: np.ndarray) -> dict[int, float] | None:
        given = self.class_weight
        if given is None:
            return None
        if self._multilabel:
            raise InputError("class_weight needs one class per row; with a multi-label y, weigh rows with "
                             "fit(X, y, sample_weight=...) instead.")
        if isinstance(given, str) and given == "balanced":
            counts = np.bincount(target, minlength=len(self.classes_))
            return {i: len(target) / (len(counts) * n) for i, n in enumerate(counts)}
        if not isinstance(given, Mapping):
            raise InputError(f"class_weight must be a dict {{label: weight}} or 'balanced', got {given!r}.")
        index = {label: i for i, label in enumerate(self.classes_.tolist())}
        unknown = [label for label in given if label not in index]
        if unknown:
            raise InputError(f"class_weight names labels {unknown} that y does not have; its classes are "
                             f"{self.classes_.tolist()[:10]}.")
        return {index[label]: weight for label, weight in given.items()}

    def _check_output(self, model: Any) -> None:
        from sparkeras.data.columns import loss_name, trained_on_binary_crossentropy

        units = _output_units(model)
        k = len(self.classes_)
        if self._multilabel:
            loss = loss_name(model, 0)
            if units != k or not trained_on_binary_crossentropy(model):
                raise InputError(
                    f"y is a multi-label indicator matrix of {k} labels, so the model needs {k} sigmoid units "
                    f"trained with binary_crossentropy; it has {units} unit(s) and the loss {loss or None!r}.")
            self._binary = False
            return
        if units == 1 and k == 2:
            self._binary = True
            return
        if units != k:
            raise InputError(
                f"y has {k} classes {self.classes_.tolist()[:10]}, but the model's output has {units} unit(s); "
                f"give it {k} units (softmax), or 1 sigmoid unit for two classes.")
        self._binary = False
        loss = str(getattr(model.loss, "name", model.loss) or "")
        if "categorical" in loss and "sparse" not in loss:
            import keras

            sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=trained_on_logits(model))
            model.compile(optimizer=model.optimizer, loss=sparse, metrics=model.get_compile_config().get("metrics"))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per entry of ``classes_`` (through the sigmoid or softmax for logits)."""
        from sparkeras.inference.batch import class_probabilities

        raw = self._predict_raw(X).reshape(len(_features(X)), -1)
        return class_probabilities(raw, trained_on_logits(self.model_), getattr(self, "_multilabel", False))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row, as a value of ``classes_``; for multi-label, the indicator matrix."""
        proba = self.predict_proba(X)
        if getattr(self, "_multilabel", False):
            return (proba > 0.5).astype(np.int64)
        return self.classes_[proba.argmax(axis=1)]


class KerasRegressor(RegressorMixin, _SparkKerasBase):
    """A scikit-learn regressor that trains a Keras model on Spark.

    ``y`` is one target per row or a ``(rows, targets)`` array; the model's
    output has as many units. ``score`` is R², as for every scikit-learn regressor.
    """

    def _encode_target(self, y: np.ndarray, rows: int) -> np.ndarray:
        if len(y) != rows:
            raise InputError(f"X has {rows} rows but y has {len(y)}; they must match.")
        if not np.issubdtype(y.dtype, np.number):
            raise InputError(f"y must be numeric for a regressor, got dtype {y.dtype}.")
        self._targets = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
        return y.astype(np.float32)

    def _check_output(self, model: Any) -> None:
        units = _output_units(model)
        if units != self._targets:
            raise InputError(f"y has {self._targets} target(s) per row, but the model's output has {units} unit(s).")

    def predict(self, X: Any) -> np.ndarray:
        raw = self._predict_raw(X)
        return raw.reshape(len(raw)) if self._targets == 1 else raw.reshape(len(raw), -1)


def _features(X: Any) -> np.ndarray:
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    x = np.asarray(X)
    if x.ndim < 2:
        raise InputError(f"X must have one row per sample (2-D or more), got shape {x.shape}; "
                         "reshape a single feature with X.reshape(-1, 1).")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
        raise InputError(f"X must be numeric, got dtype {x.dtype}; encode categorical columns first.")
    return x.astype(np.float32, copy=False)


def _output_units(model: Any) -> int:
    outputs = list(model.outputs)
    if len(outputs) != 1:
        raise InputError(f"The scikit-learn estimators take a model with one output; this one has {len(outputs)}.")
    return int(np.prod([d or 1 for d in outputs[0].shape[1:]]))


def _builder_arguments(build: Any) -> set[str]:
    """The argument names a model-building function declares, but ``X`` and ``y`` (none for a compiled model)."""
    if build is None or not callable(build) or hasattr(build, "layers"):
        return set()
    try:
        params = inspect.signature(build).parameters
    except (TypeError, ValueError):
        return set()
    return {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"X", "y"}


def _call_builder(build: Callable[..., Any], x: np.ndarray, y: np.ndarray, kwargs: dict[str, Any],
                  own: Sequence[str] = ()) -> Any:
    """Call a model-building function with what it accepts of ``X``, ``y`` and ``kwargs``.

    A name it does not take is refused, naming the estimator's own
    parameter it looks like (``epoch`` for ``epochs``): given to the
    constructor, a misspelt parameter lands here rather than failing there.
    """
    import difflib

    params = inspect.signature(build).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    offered = {"X": x, "y": y, **kwargs}
    unknown = [k for k in kwargs if k not in params and not takes_any]
    if unknown:
        hints = [f"{k!r} looks like the parameter {close[0]!r}" for k in unknown
                 for close in [difflib.get_close_matches(k, own, n=1)] if close]
        raise InputError(f"{unknown} (given as model_kwargs, model__ or other keyword parameters) are not arguments "
                         f"of {getattr(build, '__name__', build)}{inspect.signature(build)}"
                         + (f"; {'; '.join(hints)}." if hints else "."))
    return build(**{k: v for k, v in offered.items() if takes_any or k in params})


__all__ = ["KerasClassifier", "KerasRegressor"]
