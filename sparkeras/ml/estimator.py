"""``KerasEstimator`` and ``KerasModel``: a Keras model as a Spark ML pipeline stage.

The estimator's Params are what a data scientist tunes with ``ParamGridBuilder``
(epochs, batch size, learning rate, strategy...). ``fit`` trains a fresh copy
of the given Keras model (the same initial weights every time, so each
CrossValidator fold and grid point starts from the same point) with
:class:`~sparkeras.SparkModel`, and returns a ``KerasModel`` whose
``transform`` predicts in batches on the executors. Grid points that Spark's
tuning stages fit at once (``parallelism``) share the task slots.

Both stages save and load with Spark ML persistence, alone or inside a
fitted ``PipelineModel``. The directory holds Spark's usual ``metadata/``
(the Params as JSON) and the Keras model as ``model.keras``; nothing is
pickled. Custom layers, losses and metrics survive the round trip: registered
ones (``keras.saving.register_keras_serializable``) once their module is
imported where the stage is loaded, and others because the metadata records
where each was defined (``customObjects``: ``{"Halve": "my_layers:Halve"}``)
and the reader imports them, as ``PipelineModel.load`` takes no
``custom_objects``; a class of ``__main__`` must be defined again first.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from pyspark import keyword_only
from pyspark.ml import Estimator, Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasFeaturesCol, HasLabelCol, HasPredictionCol, HasRawPredictionCol, HasSeed,
                                     HasValidationIndicatorCol, HasWeightCol)
from pyspark.ml.util import DefaultParamsReader, DefaultParamsWriter, MLReadable, MLReader, MLWritable, MLWriter

from sparkeras.data.columns import split_columns
from sparkeras.errors import InputError
from sparkeras.log import logger as log
from sparkeras.ml.shares import SHARES
from sparkeras.serialization import custom_object_paths, import_custom_objects
from sparkeras.session import start_workers_of_active_session

MODEL_FILE = "model.keras"


class _InferenceParams(HasFeaturesCol, HasPredictionCol, HasRawPredictionCol):
    """Params shared by the estimator and the fitted model."""

    probabilityCol: Param[str] = Param(
        Params._dummy(), "probabilityCol",
        "column for the class probabilities (array<float>) of a model with several output units; "
        "empty to leave it out", typeConverter=TypeConverters.toString)
    batchSize: Param[int] = Param(Params._dummy(), "batchSize", "rows per batch", typeConverter=TypeConverters.toInt)

    def __init__(self) -> None:
        super().__init__()
        self._setDefault(featuresCol="features", predictionCol="prediction", probabilityCol="probability",
                         rawPredictionCol="rawPrediction", batchSize=32)

    def getProbabilityCol(self) -> str:
        return self.getOrDefault(self.probabilityCol)

    def getBatchSize(self) -> int:
        return self.getOrDefault(self.batchSize)


class _KerasStage(MLWritable, MLReadable):
    """Persistence shared by both stages: Params as Spark ML metadata, the Keras model as ``model.keras``."""

    _keras_model: Any

    def write(self) -> MLWriter:
        return _KerasWriter(self)

    @classmethod
    def read(cls) -> MLReader:
        return _KerasReader(cls)


class KerasEstimator(_InferenceParams, HasLabelCol, HasSeed, HasWeightCol, HasValidationIndicatorCol, Estimator,
                     _KerasStage):
    """Train a compiled Keras model on a DataFrame with sparkeras, as a Spark ML Estimator.

    Args:
        model: a compiled ``keras.Model``; each ``fit`` trains a copy of it.
        featuresCol / labelCol: input columns (a Vector, an array, or a numeric column);
            ``"a,b"`` gives one column per model input, or numeric columns assembled in order.
        predictionCol: the predicted class as a double (the largest of several output
            units; for one unit trained with binary crossentropy, 1.0 above a
            probability of 0.5), or, for a one-unit regression, the output itself.
        probabilityCol: a classifier's class probabilities (array<float>; ``[1 - p, p]``
            for one sigmoid unit; the softmax or sigmoid of logits for a model
            compiled with ``from_logits=True``); ``""`` leaves them out.
        rawPredictionCol: a binary classifier's class scores as a Spark ML
            ``Vector``, the column ``BinaryClassificationEvaluator`` reads by
            default: the model's outputs (its logits when compiled
            ``from_logits=True``), ``[1 - p, p]`` or ``[-z, z]`` for one unit;
            ``""`` leaves them out. A classifier of more classes has it only
            when this Param is set.
        epochs, batchSize, validationSplit: as in ``model.fit``.
        validationIndicatorCol: a boolean column that marks the validation rows,
            as in Spark ML's gradient-boosted trees: the fit trains on the other
            rows and reports ``val_`` metrics on these every epoch (in place of
            ``validationSplit``). Unset or ``""``: every row trains.
        numWorkers: Spark tasks that train together (0: one per task slot, on a local
            master at most one per core). When
            ``CrossValidator``/``TrainValidationSplit`` fit several grid points at once
            (``parallelism=k``), each fit trains on its share of the task slots instead,
            at most ``numWorkers`` (:mod:`sparkeras.ml.shares`).
        strategy: a sparkeras strategy name (``averaging``, ``allreduce``, ``adag``...).
        strategyOptions: that strategy's options, e.g. ``{"window": 12}``.
        learningRate, optimizer, loss, metrics: override the model's compile settings.
        classWeight: ``{class id: weight}``, Keras' ``class_weight``: each training
            row's loss is weighted by its label's class (for rare classes).
        weightCol: a numeric column that weighs each training row's loss, as Spark ML's
            ``weightCol`` and Keras' ``sample_weight`` do (not with ``classWeight``);
            unset or ``""``: every row weighs 1.
        mlflowExperiment: log each fit to a run in this MLflow experiment
            (:class:`sparkeras.callbacks.MLflowLogger`), with the fitted
            ``KerasModel`` saved under the run's ``spark_ml_model`` artifacts
            (reload it with ``KerasModel.load`` on the downloaded path).
        callbacks: Keras callbacks for each fit (``EarlyStopping`` with
            ``validationSplit``, ``ReduceLROnPlateau``, ``ModelCheckpoint``...),
            run on the driver at epoch level as in ``SparkModel.fit``. Each
            fit runs shallow copies, so grid points that ``CrossValidator``
            fits at once do not share their state. Callbacks are Python
            objects: ``save`` leaves them out, and says so in the log.
    """

    epochs: Param[int] = Param(Params._dummy(), "epochs", "training epochs", typeConverter=TypeConverters.toInt)
    numWorkers: Param[int] = Param(Params._dummy(), "numWorkers", "tasks that train together; 0 for one "
                                   "per task slot (at most one per core on a local master)",
                                   typeConverter=TypeConverters.toInt)
    validationSplit: Param[float] = Param(Params._dummy(), "validationSplit", "fraction of rows held out "
                                          "for validation", typeConverter=TypeConverters.toFloat)
    strategy: Param[str] = Param(Params._dummy(), "strategy", "sparkeras training strategy",
                                 typeConverter=TypeConverters.toString)
    strategyOptions: Param[dict] = Param(Params._dummy(), "strategyOptions", "options of the strategy")
    learningRate: Param[float] = Param(Params._dummy(), "learningRate", "overrides the optimizer's learning "
                                       "rate", typeConverter=TypeConverters.toFloat)
    optimizer: Param[str] = Param(Params._dummy(), "optimizer", "overrides the model's optimizer (a Keras "
                                  "optimizer name)", typeConverter=TypeConverters.toString)
    loss: Param[str] = Param(Params._dummy(), "loss", "overrides the model's loss (a Keras loss name)",
                             typeConverter=TypeConverters.toString)
    metrics: Param[list] = Param(Params._dummy(), "metrics", "overrides the model's metrics (Keras metric "
                                 "names)", typeConverter=TypeConverters.toListString)
    verbose: Param[int] = Param(Params._dummy(), "verbose", "0: quiet, 1: progress bar",
                                typeConverter=TypeConverters.toInt)
    classWeight: Param[dict] = Param(Params._dummy(), "classWeight", "Keras' class_weight: {class id: weight} "
                                     "for the training loss")
    mlflowExperiment: Param[str] = Param(Params._dummy(), "mlflowExperiment", "MLflow experiment that each fit "
                                         "logs a run to (params, metrics, model, fitted stage)",
                                         typeConverter=TypeConverters.toString)
    callbacks: Param[list] = Param(Params._dummy(), "callbacks", "Keras callbacks run at epoch level in each fit "
                                   "(not saved)", typeConverter=lambda value: _keras_callbacks(value))

    @keyword_only
    def __init__(self, *, model: Any = None, featuresCol: str = "features", labelCol: str = "label",
                 predictionCol: str = "prediction", probabilityCol: str = "probability",
                 rawPredictionCol: str = "rawPrediction", epochs: int = 1,
                 batchSize: int = 32, numWorkers: int = 0, validationSplit: float = 0.0,
                 strategy: str = "averaging", strategyOptions: dict | None = None,
                 learningRate: float | None = None, optimizer: str | None = None, loss: str | None = None,
                 metrics: list[str] | None = None, seed: int | None = None, verbose: int = 0,
                 classWeight: dict | None = None, weightCol: str | None = None,
                 validationIndicatorCol: str | None = None,
                 mlflowExperiment: str | None = None, callbacks: list | None = None) -> None:
        super().__init__()
        self._setDefault(labelCol="label", epochs=1, numWorkers=0, validationSplit=0.0, strategy="averaging",
                         strategyOptions={}, verbose=0, seed=0)
        kwargs = dict(self._input_kwargs)
        self._keras_model = kwargs.pop("model", None)
        self._set(**{k: v for k, v in kwargs.items() if v is not None})
        start_workers_of_active_session()

    def setParams(self, **params: Any) -> "KerasEstimator":
        return self._set(**params)

    def _fit(self, dataset: Any) -> "KerasModel":
        from sparkeras.barrier import worker_slots
        from sparkeras.model import SparkModel
        from sparkeras.session import check_classic_session

        check_classic_session(dataset, "KerasEstimator.fit")
        tracker = None
        if self.isDefined(self.mlflowExperiment):
            from sparkeras.tracking.mlflow import MLflowLogger

            tracker = MLflowLogger(experiment=self.getOrDefault(self.mlflowExperiment),
                                   run_name=f"KerasEstimator-{self.uid}")
        dataset, validation = self._validation_rows(dataset)
        keras_model = self._fresh_model()
        options = dict(self.getOrDefault(self.strategyOptions) or {})
        callbacks = [copy.copy(c) for c in (self.getOrDefault(self.callbacks) if self.isDefined(self.callbacks)
                                            else [])]
        with SHARES.claim(self.getOrDefault(self.numWorkers) or None,
                          lambda: worker_slots(dataset.sparkSession.sparkContext)) as workers:
            trainer = SparkModel(keras_model, self.getOrDefault(self.strategy), workers,
                                 seed=self.getOrDefault(self.seed), **options)
            history = trainer.fit(dataset, epochs=self.getOrDefault(self.epochs), batch_size=self.getBatchSize(),
                                  validation_split=self.getOrDefault(self.validationSplit),
                                  validation_data=validation, features_col=split_columns(self.getFeaturesCol()),
                                  label_col=self.getLabelCol(), verbose=self.getOrDefault(self.verbose),
                                  callbacks=callbacks + ([tracker] if tracker is not None else []),
                                  class_weight=self._class_weight(),
                                  weight_col=(self.getWeightCol() if self.isDefined(self.weightCol) else "") or None)
        fitted = KerasModel(model=keras_model)
        fitted.history = history
        self._copyValues(fitted)
        if trainer.classes:
            fitted._set(classes=trainer.classes)
        if tracker is not None:
            tracker.log_spark_ml_model(fitted)
            tracker.wait()  # the run is complete when fit returns
        return fitted

    def _validation_rows(self, dataset: Any) -> tuple[Any, Any]:
        """``(training rows, validation rows)`` as ``validationIndicatorCol`` marks them; ``(dataset, None)`` unset.

        Checked before any work: the column exists and is boolean, and
        ``validationSplit`` is not asked for as well.
        """
        from pyspark.sql.types import BooleanType

        column = self.getValidationIndicatorCol() if self.isDefined(self.validationIndicatorCol) else ""
        if not column:
            return dataset, None
        if column not in dataset.columns:
            raise InputError(f"validationIndicatorCol={column!r} is not a column of the training data; it has "
                             f"{', '.join(dataset.columns)}.")
        kind = dataset.schema[column].dataType
        if not isinstance(kind, BooleanType):
            raise InputError(f"validationIndicatorCol={column!r} has type {kind.simpleString()}; it must be boolean "
                             f"(true marks a validation row), e.g. F.col({column!r}) == 1.")
        if self.getOrDefault(self.validationSplit):
            raise InputError("Set either validationIndicatorCol or validationSplit, not both: "
                             f"validationIndicatorCol={column!r} already marks the validation rows.")
        from pyspark.sql import functions as F

        marked = F.coalesce(F.col(column), F.lit(False))  # a null marks no validation row
        return dataset.filter(~marked), dataset.filter(marked)

    def _class_weight(self) -> dict | None:
        """``classWeight`` with class ids as ints again: Spark ML's JSON metadata stores dict keys as strings."""
        if not self.isDefined(self.classWeight):
            return None
        given = self.getOrDefault(self.classWeight)
        if not isinstance(given, dict):
            return given  # refused, with its value, by SparkModel.fit
        return {int(k) if isinstance(k, str) and k.strip().isdigit() else k: v for k, v in given.items()}

    def _fresh_model(self) -> Any:
        """A copy of the model with its initial weights, compiled with this estimator's overrides."""
        from sparkeras.model import fresh_copy

        if self._keras_model is None:
            raise InputError("KerasEstimator needs a model: KerasEstimator(model=compiled_keras_model, ...).")
        overrides = {k: self.getOrDefault(getattr(self, k))
                     for k in ("optimizer", "loss", "metrics", "learningRate") if self.isDefined(getattr(self, k))}
        return fresh_copy(self._keras_model, optimizer=overrides.get("optimizer"), loss=overrides.get("loss"),
                          metrics=overrides.get("metrics"), learning_rate=overrides.get("learningRate"),
                          owner="KerasEstimator")


class KerasModel(_InferenceParams, Model, _KerasStage):
    """A trained Keras model as a Spark ML Transformer: batched prediction on the executors.

    ``transform`` keeps every input column and adds, for a classifier,
    ``predictionCol`` (the class as a double, as Spark ML's classifiers give
    it), ``probabilityCol`` (array<float>, one probability per class) and,
    for a binary classifier or when set, ``rawPredictionCol`` (a ``Vector``
    of class scores, as Spark ML's ``BinaryClassificationEvaluator`` reads
    by default);
    for a regression, ``predictionCol`` holds the output. A classifier has
    several output units, or one trained with binary crossentropy
    (:func:`sparkeras.inference.udf.class_outputs`); several units trained
    with binary crossentropy are multi-label, and ``predictionCol`` is then
    the ``array<double>`` of the labels above 0.5. A row whose features are
    null gets null prediction columns. Each Python worker loads the model
    once and reuses it.
    ``classes`` holds the class names of the training labels, in class index
    order, when they carried them (``read_images(..., labels="folder")``).
    """

    classes: Param[list] = Param(Params._dummy(), "classes", "class names of the labels, in class index order "
                                 "(from the training label column's metadata)", typeConverter=TypeConverters.toListString)

    @keyword_only
    def __init__(self, *, model: Any = None, featuresCol: str = "features", predictionCol: str = "prediction",
                 probabilityCol: str = "probability", rawPredictionCol: str = "rawPrediction",
                 batchSize: int = 256) -> None:
        super().__init__()
        self._setDefault(batchSize=256)
        kwargs = dict(self._input_kwargs)
        self._keras_model = kwargs.pop("model", None)
        self._set(**kwargs)
        start_workers_of_active_session()

    history: Any = None
    """The Keras ``History`` of the fit that made this model (``history.history``: each epoch's
    metrics; ``history.params``: epochs, batch size, workers...); ``None`` for a loaded model."""

    @property
    def model(self) -> Any:
        """The trained Keras model."""
        return self._keras_model

    def setParams(self, **params: Any) -> "KerasModel":
        return self._set(**params)

    def getClasses(self) -> list[str] | None:
        """The class names of the labels, in class index order, or ``None`` when the labels had none."""
        return self.getOrDefault(self.classes) if self.isDefined(self.classes) else None

    def _transform(self, dataset: Any) -> Any:
        from sparkeras.inference.batch import CLASS
        from sparkeras.inference.udf import add_predictions, class_outputs, output_columns

        model = self._keras_model
        if model is None:
            raise InputError("KerasModel has no Keras model: KerasModel(model=trained_keras_model).")
        prediction = self.getPredictionCol()
        outputs = (class_outputs(model, prediction, self.getProbabilityCol(), self._raw_prediction_col(model))
                   or output_columns(model, prediction))
        scored = add_predictions(dataset, model, split_columns(self.getFeaturesCol()), outputs, self.getBatchSize(),
                                 rename="name them with setPredictionCol, setProbabilityCol or setRawPredictionCol")
        classes = self.getClasses()
        if classes and outputs[0].kind == CLASS and not outputs[0].multilabel:
            # The names as StringIndexer writes them, so IndexToString(inputCol=prediction) needs no labels=.
            scored = scored.withMetadata(prediction, {"ml_attr": {"type": "nominal", "name": prediction,
                                                                  "vals": list(classes)}})
        return scored


    def _raw_prediction_col(self, model: Any) -> str:
        """``rawPredictionCol`` for a binary classifier, or when set; else ``""``.

        Why. Its reader in Spark ML is ``BinaryClassificationEvaluator``; for
        a classifier of more classes, making it by default cost 12% of
        ``transform``'s throughput (``bench/inference.py``, 10 classes: the
        JVM builds a ``Vector`` per row) for a column nothing reads.
        """
        from sparkeras.inference.udf import output_widths

        wanted = self.isSet(self.rawPredictionCol) or output_widths(model)[0] <= 2
        return self.getRawPredictionCol() if wanted else ""


class _KerasWriter(MLWriter):
    def __init__(self, instance: _KerasStage) -> None:
        super().__init__()
        self.instance = instance

    def saveImpl(self, path: str) -> None:
        from sparkeras import __version__
        from sparkeras.model import save_model_file

        if self.instance._keras_model is None:
            raise InputError(f"{type(self.instance).__name__} has no Keras model to save.")
        params = {p.name: v for p, v in self.instance._paramMap.items() if p.name != "callbacks"}
        if len(params) < len(self.instance._paramMap):
            log.warning("%s.save leaves out its callbacks (Python objects); set them again after loading.",
                        type(self.instance).__name__)
        # An empty paramMap would make Spark save every param, callbacks included.
        params = params or {"featuresCol": self.instance.getFeaturesCol()}
        extra: dict[str, Any] = {"sparkeras": __version__}
        custom = custom_object_paths(self.instance._keras_model)
        if custom:  # what the reader imports for Keras, as PipelineModel.load takes no custom_objects
            extra["customObjects"] = custom
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sc, extraMetadata=extra, paramMap=params)
        save_model_file(self.instance._keras_model, _join(path, MODEL_FILE))


def _keras_callbacks(value: Any) -> list:
    """The ``callbacks`` Param: a list of ``keras.callbacks.Callback`` objects, checked when set."""
    import keras

    items = list(value) if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(c, keras.callbacks.Callback) for c in items):
        raise InputError(f"callbacks must be a list of keras.callbacks.Callback objects, got {value!r}.")
    return items


class _KerasReader(MLReader):
    def __init__(self, cls: type) -> None:
        super().__init__()
        self.cls = cls

    def load(self, path: str) -> Any:
        from sparkeras.model import load_model_file

        metadata = DefaultParamsReader.loadMetadata(path, self.sc)
        custom = import_custom_objects(metadata.get("customObjects") or {}, f"The {self.cls.__name__} at {path}")
        instance = self.cls(model=load_model_file(_join(path, MODEL_FILE), custom_objects=custom or None))
        DefaultParamsReader.getAndSetParams(instance, metadata)
        instance._resetUid(metadata["uid"])
        return instance


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name if "://" in path else os.path.join(path, name)


__all__ = ["KerasEstimator", "KerasModel"]
