"""An Elephas-compatible front: an Elephas script runs on sparkeras by changing its imports.

    from sparkeras.compat.elephas import SparkModel, to_simple_rdd   # was: from elephas... import ...

It offers Elephas 7's names and arguments (``SparkModel``,
``AsynchronousSparkModel``, ``SparkMLlibModel``, ``ElephasEstimator``,
``ElephasTransformer``, ``load_spark_model``, the RDD and DataFrame helpers)
and runs them with sparkeras' strategies, so the training is exact where
Elephas' was approximate and nothing is pickled over the network.

How Elephas' ``mode`` and ``frequency`` map onto sparkeras strategies:

============  ===========  ==================================================
mode          frequency    sparkeras strategy
============  ===========  ==================================================
synchronous   epoch        ``averaging``: average every window (32 batches for 2 workers), outer momentum step
                           (with SGD: workers at N times the rate, moves averaged)
synchronous   batch        ``allreduce``: sum gradients every batch (barrier mode)
asynchronous  epoch        ``async`` with its default window (4 batches)
asynchronous  batch        ``async`` with ``window=1``
hogwild       epoch/batch  ``hogwild``, windows as for ``async``
============  ===========  ==================================================

Accuracy matters more than literal fidelity here. Elephas' asynchronous
workers with ``frequency='epoch'`` push one whole-epoch update each, computed
from weights that are an epoch stale, and the server adds them all; that is
why Elephas 7.3 ends far below plain Keras on small models. sparkeras
exchanges every few batches instead, and lands where plain Keras does. With
more than 2 workers it also damps stale commits, DynSGD's rule (see
:class:`sparkeras.strategies.distributed.Asynchronous`), which Elephas' whole
stale commits needed there.

Accepted but ignored (with a warning): ``parameter_server_mode`` and
``port`` (sparkeras' parameter server binds a port chosen at bind time and
speaks signed frames), and any other keyword Elephas would have stored.
"""

from __future__ import annotations

import enum
import json
import os
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from sparkeras.errors import InputError, WorkerError
from sparkeras.log import logger
from sparkeras.ml.estimator import _KerasStage
from sparkeras.serialization import refresh_derived_state
from sparkeras.storage.model_file import save_keras

MODES = ("synchronous", "asynchronous", "hogwild")
FREQUENCIES = ("epoch", "batch")
_CONFIG_SUFFIX = ".sparkeras.json"


def strategy_for(mode: Any, frequency: Any) -> tuple[str, dict[str, Any]]:
    """The sparkeras strategy name and options for an Elephas ``mode`` and ``frequency``."""
    mode, frequency = _choice(mode, MODES, "mode"), _choice(frequency, FREQUENCIES, "frequency")
    if mode == "synchronous":
        return ("averaging", {}) if frequency == "epoch" else ("allreduce", {})
    return ("async" if mode == "asynchronous" else "hogwild"), ({"window": 1} if frequency == "batch" else {})


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    text = str(value.value if isinstance(value, enum.Enum) else value).lower()
    if text not in allowed:
        raise InputError(f"Unknown Elephas {name} {value!r}; choose one of {list(allowed)}.")
    return text


def _warn_ignored(names: Iterable[str], where: str) -> None:
    names = sorted(names)
    if names:
        logger.warning("%s: %s accepted for Elephas compatibility and ignored by sparkeras.", where, names)


class SparkModel:
    """Elephas' ``SparkModel``: train a compiled Keras model on an RDD of ``(features, label)`` pairs.

    Elephas 7 made ``SparkModel`` synchronous; older scripts pass ``mode=``
    and ``frequency=`` to it, which is accepted (see the module docstring for
    the mapping). ``fit`` trains ``master_network`` in place.
    """

    default_mode = "synchronous"

    def __init__(self, model: Any, num_workers: int | None = None, custom_objects: Mapping[str, Any] | None = None,
                 batch_size: int = 32, *args: Any, mode: Any = None, frequency: Any = "epoch",
                 **kwargs: Any) -> None:
        from sparkeras.model import _check_model

        _check_model(model)
        if args:
            _warn_ignored([f"positional argument {i + 5}" for i in range(len(args))], type(self).__name__)
        _warn_ignored(kwargs, type(self).__name__)
        self._master_network = model
        self.mode = _choice(mode or self.default_mode, MODES, "mode")
        self.frequency = _choice(frequency, FREQUENCIES, "frequency")
        self.strategy, self.strategy_options = strategy_for(self.mode, self.frequency)
        self.num_workers = num_workers
        self.custom_objects = dict(custom_objects or {})
        self.batch_size = batch_size
        self._training_histories: list[dict[str, list[float]]] = []

    @property
    def master_network(self) -> Any:
        return self._master_network

    @master_network.setter
    def master_network(self, network: Any) -> None:
        self._master_network = network

    @property
    def training_histories(self) -> list[dict[str, list[float]]]:
        """One Keras history dict per ``fit``."""
        return self._training_histories

    def get_config(self) -> dict[str, Any]:
        return {"num_workers": self.num_workers, "batch_size": self.batch_size, "mode": self.mode,
                "frequency": self.frequency}

    def _trainer(self) -> Any:
        from sparkeras.model import SparkModel as Trainer

        return Trainer(self._master_network, self.strategy, self.num_workers, custom_objects=self.custom_objects,
                       **self.strategy_options)

    def fit(self, rdd: Any, epochs: int = 1, batch_size: int | None = None, verbose: int = 0,
            validation_split: float = 0.0, **kwargs: Any) -> None:
        """Train on an RDD of ``(features, label)`` pairs (or anything ``sparkeras.SparkModel.fit`` takes)."""
        passed = {k: kwargs.pop(k) for k in ("callbacks", "shuffle", "validation_data", "class_weight") if k in kwargs}
        _warn_ignored(kwargs, f"{type(self).__name__}.fit")
        history = self._trainer().fit(rdd, epochs=epochs, batch_size=batch_size or self.batch_size,
                                      verbose=verbose, validation_split=validation_split, **passed)
        self._training_histories.append(dict(history.history))

    def predict(self, data: Any) -> np.ndarray:
        """Predictions for a numpy array, or an RDD of feature rows, in row order."""
        from pyspark import RDD

        trainer = self._trainer()
        if not isinstance(data, RDD):
            return trainer.predict(np.asarray(data), batch_size=max(self.batch_size, 256))
        frame = trainer.predict(data.map(lambda row: row[0] if _is_pair(row) else row),
                                batch_size=max(self.batch_size, 256))
        return np.asarray([r[0] for r in frame.select("prediction").collect()])

    def evaluate(self, x_test: Any, y_test: Any, **kwargs: Any) -> float | list[float]:
        """The loss, or ``[loss, *metrics]`` when the model has metrics, as Elephas returns them."""
        batch_size = kwargs.pop("batch_size", self.batch_size)
        _warn_ignored([k for k in kwargs if k != "verbose"], f"{type(self).__name__}.evaluate")
        values = list(self._trainer().evaluate(np.asarray(x_test), np.asarray(y_test), batch_size=batch_size).values())
        return values[0] if len(values) == 1 else values

    def save(self, file_name: str, overwrite: bool = False, to_hadoop: bool = False) -> None:
        """Save the model as ``.keras`` (or legacy ``.h5``), locally or on Hadoop, with the Elephas settings beside it."""
        _check_suffix(file_name)
        path = _hadoop_path(file_name, to_hadoop)
        if not overwrite and "://" not in path and os.path.exists(path):
            raise InputError(f"{file_name!r} exists; pass overwrite=True to replace it.")
        config = json.dumps({"class_name": type(self).__name__, "config": self.get_config()})
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, os.path.basename(file_name))
            save_keras(self._master_network, local)
            with open(local + _CONFIG_SUFFIX, "w") as handle:
                handle.write(config)
            for suffix in ("", _CONFIG_SUFFIX):
                _copy(local + suffix, path + suffix, upload=True)


class AsynchronousSparkModel(SparkModel):
    """Elephas' ``AsynchronousSparkModel``: ``mode`` ``'asynchronous'`` (default) or ``'hogwild'``."""

    default_mode = "asynchronous"

    def __init__(self, model: Any, num_workers: int | None = None, custom_objects: Mapping[str, Any] | None = None,
                 batch_size: int = 32, mode: Any = "asynchronous", frequency: Any = "epoch",
                 parameter_server_mode: str | None = None, port: int | None = None, *args: Any,
                 **kwargs: Any) -> None:
        ignored = {k: v for k, v in (("parameter_server_mode", parameter_server_mode), ("port", port))
                   if v is not None}
        super().__init__(model, num_workers, custom_objects, batch_size, *args, mode=mode, frequency=frequency,
                         **ignored, **kwargs)


class SparkMLlibModel(SparkModel):
    """Elephas' ``SparkMLlibModel``: train on an RDD of MLlib ``LabeledPoint``s."""

    def fit(self, labeled_points: Any, epochs: int = 10, batch_size: int = 32, verbose: int = 0,
            validation_split: float = 0.1, categorical: bool = False, nb_classes: int | None = None) -> None:
        super().fit(lp_to_simple_rdd(labeled_points, categorical, nb_classes), epochs=epochs, batch_size=batch_size,
                    verbose=verbose, validation_split=validation_split)

    train = fit

    def predict(self, mllib_data: Any) -> Any:
        """Predict one MLlib ``Vector`` (returns a Vector) or the rows of a ``Matrix`` (returns a Matrix)."""
        from pyspark.mllib.linalg import Matrices, Matrix, Vector, Vectors

        if isinstance(mllib_data, Vector):
            return Vectors.dense(np.asarray(self._master_network.predict_on_batch(mllib_data.toArray()[None]))[0])
        if isinstance(mllib_data, Matrix):
            out = np.asarray(self._master_network.predict_on_batch(mllib_data.toArray()))
            return Matrices.dense(out.shape[0], out.shape[1], out.ravel(order="F"))
        raise InputError(f"SparkMLlibModel.predict takes an MLlib Vector or Matrix, got {type(mllib_data).__name__}.")


def load_spark_model(file_name: str, from_hadoop: bool = False) -> SparkModel:
    """Load what :meth:`SparkModel.save` wrote, as the same class with the same settings.

    A legacy ``.h5`` file, which Elephas scripts save, is read by Keras'
    own loader; ``.keras`` as sparkeras reads every model file.
    """
    from sparkeras.model import load_model_file
    from sparkeras.storage.model_file import load_keras

    _check_suffix(file_name)
    path = _hadoop_path(file_name, from_hadoop)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(file_name))
        _copy(path, local, upload=False)
        model = load_keras(local) if local.endswith(".h5") else load_model_file(local)
        saved: dict[str, Any] = {"class_name": "SparkModel", "config": {}}
        try:
            _copy(path + _CONFIG_SUFFIX, local + _CONFIG_SUFFIX, upload=False)
            with open(local + _CONFIG_SUFFIX) as handle:
                saved = json.load(handle)
        except (InputError, WorkerError, OSError, ValueError):  # a plain Keras file: Elephas' defaults
            pass
    classes = {c.__name__: c for c in (SparkModel, AsynchronousSparkModel, SparkMLlibModel)}
    return classes.get(saved.get("class_name"), SparkModel)(model, **saved.get("config", {}))


def _check_suffix(file_name: str) -> None:
    if not str(file_name).endswith((".keras", ".h5")):
        raise InputError(f"File name must end with '.keras' or '.h5', got {file_name!r}.")


def _hadoop_path(file_name: str, hadoop: bool) -> str:
    """Elephas' ``to_hadoop=True`` means the cluster's default file system: make that explicit for Hadoop."""
    if hadoop and "://" not in file_name:
        from sparkeras.session import get_spark

        conf = get_spark().sparkContext._jsc.hadoopConfiguration()
        return conf.get("fs.defaultFS").rstrip("/") + "/" + file_name.lstrip("/")
    return file_name


def _copy(src: str, dst: str, upload: bool) -> None:
    import shutil

    from sparkeras.session import get_spark
    from sparkeras.storage.outputs import hadoop_copy

    remote = dst if upload else src
    if "://" in remote:
        hadoop_copy(get_spark(), src, dst, upload=upload)
    else:
        if not os.path.exists(src):
            raise InputError(f"No file at {src!r}.")
        shutil.copyfile(src, dst)


# --- RDD and DataFrame helpers (elephas.utils.rdd_utils, elephas.ml.adapter) ---------------------------------

def _is_pair(row: Any) -> bool:
    return isinstance(row, tuple) and len(row) == 2


def to_simple_rdd(sc: Any, features: Any, labels: Any) -> Any:
    """An RDD of ``(features, label)`` pairs from numpy arrays, spread over the default parallelism.

    On a local master that is at most one partition per core
    (:func:`sparkeras.session.default_parallelism`). Elephas' examples start
    ``local[8]`` whatever the machine, and each partition's task needs a
    Python worker: on 2 cores, the README script's first fit took
    28.6-30.9 s with 8 partitions and pyspark's daemon, 7.3-8.4 s with 2
    and sparkeras' (``bench/elephas_example.py --bare-context``).
    """
    from sparkeras.session import default_parallelism

    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels):
        raise InputError(f"features has {len(features)} rows but labels has {len(labels)}; they must match.")
    return sc.parallelize(list(zip(features, labels)), default_parallelism(sc))


def to_labeled_point(sc: Any, features: Any, labels: Any, categorical: bool = False) -> Any:
    """An RDD of MLlib ``LabeledPoint``s; one-hot labels (``categorical=True``) become class indices."""
    from pyspark.mllib.linalg import Vectors
    from pyspark.mllib.regression import LabeledPoint

    from sparkeras.session import default_parallelism

    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels):
        raise InputError(f"features has {len(features)} rows but labels has {len(labels)}; they must match.")
    points = [LabeledPoint(float(np.argmax(y)) if categorical else float(y), Vectors.dense(np.ravel(x)))
              for x, y in zip(features, labels)]
    return sc.parallelize(points, default_parallelism(sc))


def lp_to_simple_rdd(lp_rdd: Any, categorical: bool = False, nb_classes: int | None = None) -> Any:
    """``(features, label)`` pairs from ``LabeledPoint``s; ``categorical=True`` one-hot encodes the labels."""
    if not categorical:
        return lp_rdd.map(lambda lp: (lp.features.toArray(), lp.label))
    classes = int(nb_classes or lp_rdd.map(lambda lp: lp.label).max() + 1)
    return lp_rdd.map(lambda lp: (lp.features.toArray(), np.eye(classes, dtype=np.float32)[int(lp.label)]))


def from_labeled_point(rdd: Any, categorical: bool = False, nb_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Collect ``LabeledPoint``s to numpy ``(features, labels)`` on the driver (for small data)."""
    features = np.asarray(rdd.map(lambda lp: lp.features.toArray()).collect())
    labels = np.asarray(rdd.map(lambda lp: lp.label).collect(), dtype="int32")
    if categorical:
        labels = np.eye(int(nb_classes or labels.max() + 1), dtype=np.float32)[labels]
    return features, labels


def to_data_frame(sc: Any, features: Any, labels: Any, categorical: bool = False) -> Any:
    """A DataFrame with a ``features`` Vector column and a double ``label`` (the class index if one-hot)."""
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession

    features, labels = np.asarray(features), np.asarray(labels)
    rows = [(Vectors.dense(np.ravel(x)), float(np.argmax(y)) if categorical else float(y))
            for x, y in zip(features, labels)]
    return SparkSession.builder.getOrCreate().createDataFrame(rows, ["features", "label"])


def from_data_frame(df: Any, categorical: bool = False, nb_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Collect a ``features``/``label`` DataFrame to numpy on the driver (for small data)."""
    rows = df.select("features", "label").collect()
    features = np.asarray([r.features.toArray() for r in rows])
    labels = np.asarray([r.label for r in rows])
    if categorical:
        labels = np.eye(int(nb_classes or labels.max() + 1), dtype=np.float32)[labels.astype(int)]
    return features, labels


def df_to_simple_rdd(df: Any, categorical: bool = False, nb_classes: int | None = None,
                     features_col: str = "features", label_col: str = "label") -> Any:
    """``(features, label)`` pairs from a DataFrame's Vector and label columns."""
    pairs = df.select(features_col, label_col).rdd.map(lambda r: (r[0].toArray(), r[1]))
    if not categorical:
        return pairs
    classes = int(nb_classes or df.agg({label_col: "max"}).first()[0] + 1)
    return pairs.map(lambda p: (p[0], np.eye(classes, dtype=np.float32)[int(p[1])]))


# --- Spark ML stages (elephas.ml_model) --------------------------------------------------------------------

# Param name: (setter/getter suffix, default, meaning). The names are Elephas'.
_ESTIMATOR_PARAMS: dict[str, tuple[str, Any, str]] = {
    "keras_model_config": ("keras_model_config", None, "the Keras model as JSON (model.to_json())"),
    "optimizer_config": ("optimizer_config", None, "the optimizer (keras.optimizers.serialize); default Adam"),
    "mode": ("mode", "asynchronous", "synchronous, asynchronous or hogwild"),
    "frequency": ("frequency", "epoch", "epoch or batch"),
    "loss": ("loss", None, "a Keras loss name"),
    "metrics": ("metrics", [], "Keras metric names"),
    "epochs": ("epochs", 10, "training epochs"),
    "batch_size": ("batch_size", 32, "rows per batch"),
    "validation_split": ("validation_split", 0.1, "fraction of rows held out for validation"),
    "categorical": ("categorical_labels", True, "labels are class indices of a classifier"),
    "nb_classes": ("nb_classes", 10, "number of classes"),
    "num_workers": ("num_workers", 0, "tasks that train together (0: one per task slot, on a local master "
                                      "at most one per core)"),
    "verbose": ("verbosity", 0, "0 quiet, 1 progress bar"),
    "inference_batch_size": ("inference_batch_size", 256, "rows per prediction batch"),
    "featuresCol": ("features_col", "features", "features column"),
    "labelCol": ("label_col", "label", "label column"),
    "outputCol": ("output_col", "prediction", "prediction column"),
}
_TRANSFORMER_PARAMS = ("keras_model_config", "inference_batch_size", "featuresCol", "labelCol", "outputCol")


def _with_params(names: Iterable[str]):
    """Add Elephas' Params and their ``set_*``/``get_*`` methods to a stage class."""
    def decorate(cls: type) -> type:
        for name in names:
            suffix, _, doc = _ESTIMATOR_PARAMS[name]
            setattr(cls, name, Param(Params._dummy(), name, doc))
            setattr(cls, f"set_{suffix}", lambda self, value, _n=name: self._set(**{_n: value}))
            setattr(cls, f"get_{suffix}", lambda self, _n=name: self.getOrDefault(_n))
        return cls
    return decorate


class _ElephasStage(Params):
    _param_names: tuple[str, ...] = ()
    custom_objects: dict[str, Any]

    def _init_params(self, kwargs: dict[str, Any]) -> None:
        self._setDefault(**{n: _ESTIMATOR_PARAMS[n][1] for n in self._param_names
                            if _ESTIMATOR_PARAMS[n][1] is not None})
        self.custom_objects = dict(kwargs.pop("custom_objects", None) or {})
        unknown = [k for k in kwargs if k not in self._param_names]
        if unknown:
            raise InputError(f"{type(self).__name__} has no parameter(s) {unknown}; it takes {list(self._param_names)}.")
        self._set(**kwargs)

    def set_params(self, **kwargs: Any) -> Any:
        return self._set(**kwargs)

    def set_custom_objects(self, custom_objects: Mapping[str, Any]) -> Any:
        self.custom_objects = dict(custom_objects or {})
        return self

    def get_custom_objects(self) -> dict[str, Any]:
        return self.custom_objects

    def getFeaturesCol(self) -> str:
        return self.getOrDefault("featuresCol")

    def getLabelCol(self) -> str:
        return self.getOrDefault("labelCol")

    def getOutputCol(self) -> str:
        return self.getOrDefault("outputCol")

    # Elephas' stages keep Spark 2's camelCase setters (its ml_pipeline_otto example calls them).
    def setFeaturesCol(self, value: str) -> Any:
        return self._set(featuresCol=value)

    def setLabelCol(self, value: str) -> Any:
        return self._set(labelCol=value)

    def setOutputCol(self, value: str) -> Any:
        return self._set(outputCol=value)


@_with_params(_ESTIMATOR_PARAMS)
class ElephasEstimator(Estimator, _ElephasStage, DefaultParamsReadable, DefaultParamsWritable):
    """Elephas' ``ElephasEstimator``: Elephas' Params and setters, trained by sparkeras.

    Give the model as ``keras_model_config`` (``model.to_json()``), or pass a
    compiled model first (``ElephasEstimator(model, epochs=...)``, as in
    Elephas' README). With ``categorical=True`` the label column holds class
    indices: ``categorical_crossentropy`` is then trained as its sparse twin
    (the same loss, without one-hot encoding each row).
    """

    _param_names = tuple(_ESTIMATOR_PARAMS)

    def __init__(self, model: Any = None, **kwargs: Any) -> None:
        super().__init__()
        if model is not None:
            config = model.get_compile_config() if getattr(model, "compiled", False) else {}
            kwargs.setdefault("keras_model_config", model.to_json())
            if config.get("optimizer") is not None:
                import keras

                kwargs.setdefault("optimizer_config", keras.optimizers.serialize(model.optimizer))
            if isinstance(config.get("loss"), str):
                kwargs.setdefault("loss", config["loss"])
            if config.get("metrics"):
                kwargs.setdefault("metrics", [m for m in config["metrics"] if isinstance(m, str)])
        self._init_params(kwargs)

    def get_config(self) -> dict[str, Any]:
        return {n: self.getOrDefault(n) for n in self._param_names if self.isDefined(n)}

    def _keras(self, categorical_labels: bool) -> Any:
        import keras

        config = self.getOrDefault("keras_model_config") if self.isDefined("keras_model_config") else None
        if not config:
            raise InputError("ElephasEstimator needs the model: set_keras_model_config(model.to_json()).")
        loss = self.getOrDefault("loss") if self.isDefined("loss") else None
        if not loss:
            raise InputError("ElephasEstimator needs a loss: set_loss('categorical_crossentropy') (or another).")
        if categorical_labels and loss in ("categorical_crossentropy", "CategoricalCrossentropy"):
            loss = "sparse_categorical_crossentropy"
        optimizer = self.getOrDefault("optimizer_config") if self.isDefined("optimizer_config") else None
        model = keras.models.model_from_json(config, custom_objects=self.custom_objects or None)
        model.compile(optimizer=keras.optimizers.get(optimizer or "adam"), loss=loss,
                      metrics=list(self.getOrDefault("metrics") or []))
        return model

    def _fit(self, dataset: Any) -> "ElephasTransformer":
        from pyspark.sql import types as T

        from sparkeras.ml.estimator import KerasEstimator

        label = self.getOrDefault("labelCol")
        scalar_labels = label in dataset.columns and isinstance(dataset.schema[label].dataType, T.NumericType)
        strategy, options = strategy_for(self.getOrDefault("mode"), self.getOrDefault("frequency"))
        trainer = KerasEstimator(
            model=self._keras(self.getOrDefault("categorical") and scalar_labels),
            featuresCol=self.getOrDefault("featuresCol"), labelCol=label, epochs=self.getOrDefault("epochs"),
            batchSize=self.getOrDefault("batch_size"), numWorkers=self.getOrDefault("num_workers") or 0,
            validationSplit=self.getOrDefault("validation_split"), strategy=strategy, strategyOptions=options,
            verbose=self.getOrDefault("verbose"), probabilityCol="")
        fitted = trainer.fit(dataset)
        return ElephasTransformer(model=fitted.model, featuresCol=self.getOrDefault("featuresCol"),
                                  labelCol=label, outputCol=self.getOrDefault("outputCol"),
                                  inference_batch_size=self.getOrDefault("inference_batch_size"),
                                  custom_objects=self.custom_objects)


@_with_params(_TRANSFORMER_PARAMS)
class ElephasTransformer(Model, _ElephasStage, _KerasStage):
    """Elephas' ``ElephasTransformer``: ``transform`` adds ``outputCol``.

    As in Elephas, ``outputCol`` holds the model's output: the class
    probabilities (an array) for a classifier, a double for a one-unit
    regressor. Build it from a trained model (``model=``), or from Elephas'
    ``keras_model_config`` plus ``weights``.
    """

    _param_names = _TRANSFORMER_PARAMS

    def __init__(self, model: Any = None, weights: list[np.ndarray] | None = None, **kwargs: Any) -> None:
        super().__init__()
        kwargs.pop("model_type", None)  # inferred from the model's output
        self.history = kwargs.pop("history", [])
        self._init_params(kwargs)
        if model is None and self.isDefined("keras_model_config"):
            import keras

            model = keras.models.model_from_json(self.getOrDefault("keras_model_config"),
                                                 custom_objects=self.custom_objects or None)
            if weights is not None:
                model.set_weights(weights)
                refresh_derived_state(model)
        self._keras_model = model
        if model is not None and not self.isDefined("keras_model_config"):
            self._set(keras_model_config=model.to_json())

    @property
    def weights(self) -> list[np.ndarray]:
        return self._keras_model.get_weights()

    def get_model(self) -> Any:
        return self._keras_model

    def _transform(self, dataset: Any) -> Any:
        from sparkeras.inference.udf import add_predictions, output_columns

        model = self._keras_model
        if model is None:
            raise InputError("ElephasTransformer has no model: pass model= or keras_model_config= and weights=.")
        return add_predictions(dataset, model, self.getOrDefault("featuresCol"), output_columns(model, self.getOrDefault("outputCol")),
                               self.getOrDefault("inference_batch_size"), self.custom_objects,
                               rename="pass another outputCol")

    def save(self, path: str) -> None:
        """Save with Spark ML persistence (a directory); :func:`load_ml_transformer` reads it back."""
        self.write().overwrite().save(path)


def load_ml_estimator(path: str) -> ElephasEstimator:
    """Load an :class:`ElephasEstimator` saved with ``estimator.save(path)``."""
    from pyspark.ml.util import DefaultParamsReader

    return DefaultParamsReader(ElephasEstimator).load(path)


def load_ml_transformer(path: str) -> ElephasTransformer:
    """Load an :class:`ElephasTransformer` saved with ``transformer.save(path)``."""
    return ElephasTransformer.load(path)


__all__ = ["AsynchronousSparkModel", "ElephasEstimator", "ElephasTransformer", "SparkMLlibModel", "SparkModel",
           "df_to_simple_rdd", "from_data_frame", "from_labeled_point", "load_ml_estimator", "load_ml_transformer",
           "load_spark_model", "lp_to_simple_rdd", "strategy_for", "to_data_frame", "to_labeled_point",
           "to_simple_rdd"]
