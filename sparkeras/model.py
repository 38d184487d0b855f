"""``SparkModel``: a compiled Keras model, trained and served on Spark."""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import tempfile
import time
from dataclasses import asdict, replace
from typing import Any, Mapping, Sequence

import numpy as np

from sparkeras.data.columns import ColumnMap, ColumnSpec, output_names, resolve_columns
from sparkeras.data.packing import PreparedData, pack_on_driver, prepare
from sparkeras.data.split import split_packed
from sparkeras.data.strings import for_packed_data, string_split
from sparkeras.data.weights import ClassWeights, check_class_weight, check_class_weight_fits, check_row_weights
from sparkeras.data.sources import (Dataset, as_dataset, check_weight_rows, describe_source, first_feature_shape,
                                    host_arrays, is_driver_data, is_pandas_on_spark, pandas_on_spark_frame,
                                    split_validation, validation_dataset, with_row_weights)
from sparkeras.errors import InputError
from sparkeras.inference.batch import predict_in_batches, scored_on_driver
from sparkeras.log import logger
from sparkeras.metric_values import from_json
from sparkeras.progress import ProgressBar, ProgressServer
from sparkeras.serialization import (ModelSpec, check_rebuilds, clone_live, copy_vocabularies, model_state,
                                     pack_arrays, refresh_derived_state, set_model_state, start_rebuild_check)
from sparkeras.session import (check_classic_session, check_executors_import_sparkeras, driver_host, get_spark,
                               is_spark_connect, jobs_run_locally, keras_backend, running_own_jobs,
                               start_workers_of_active_session)
from sparkeras.storage.model_file import check_model_archive, load_keras
from sparkeras.storage.outputs import (check_output, check_remote_output, hadoop_copy, is_remote,
                                       read_model_info, save_model_atomically)
from sparkeras.strategies import Strategy, get_strategy
from sparkeras.strategies.continuation import Continuation
from sparkeras.tracking.autolog import autologging_logger
from sparkeras.errors import worker_error
from sparkeras.training import (DriverValidation, FullCollectionsDeferred, MetricReader, TrainingJob, evaluate,
                                run_partitions, start_warm_up)
from sparkeras.worker import tasks
from sparkeras.worker.tasks import WorkerSpec, check_validation_freq


class SparkModel:
    """Train, evaluate and predict with a compiled Keras model on Spark.

    The data stays in Spark: each task streams its own partition, and only
    model states and metric totals travel to the driver.

    Args:
        model: a compiled ``keras.Model`` whose input shapes are known.
        strategy: a strategy name (``"averaging"``) or a
            :class:`~sparkeras.strategies.Strategy` object.
        num_workers: Spark tasks that train in parallel; defaults to one per
            task slot of the cluster (on a local master, at most one per core
            of this machine: ``local[8]`` on 2 cores trains with 2).
        custom_objects: custom layers, losses or metrics needed to rebuild the
            model on the workers (or register them with
            ``keras.saving.register_keras_serializable``).
        seed: seeds the per-epoch shuffling (random when left out) and
            which rows of Spark data ``validation_split`` holds out (0 when
            left out, so every fit of the same data holds out the same rows,
            as Keras' rule holds out the same last rows of numpy data).
        master: Spark master URL for an embedded session; ignored when a
            SparkSession is already active.
        balance_partitions: repartition Spark training data whose
            partitions are uneven (the largest more than 20% above an even
            share), since in a synchronous fit the largest one sets the pace,
            and deal training rows across the workers again when their shares
            hold different labels (data sorted by label), as Keras' ``fit``
            shuffles all rows (:mod:`sparkeras.data.label_mix`). ``False``
            keeps the data's own partitioning.
        **strategy_options: options for a strategy given by name
            (e.g. ``window=10`` for averaging every 10 batches).
    """

    _follows_autologging = True  # MLflow's autologging logs each fit; off for a search's trials, an ensemble's members

    def __init__(
        self,
        model: Any,
        strategy: str | Strategy = "averaging",
        num_workers: int | None = None,
        *,
        custom_objects: Mapping[str, Any] | None = None,
        seed: int | None = None,
        master: str | None = None,
        balance_partitions: bool = True,
        **strategy_options: Any,
    ) -> None:
        _check_model(model, compiled=False)
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 1):
            raise InputError(f"num_workers must be a positive integer, got {num_workers!r}.")
        self._model = model
        self.strategy = get_strategy(strategy, **strategy_options)
        self.num_workers = num_workers
        self.custom_objects = dict(custom_objects or {})
        self.seed = random.randrange(2**31) if seed is None else int(seed)
        self._split_seed = 0 if seed is None else int(seed)  # no validation row trains in a later fit
        self.master = master
        self.balance_partitions = bool(balance_partitions)
        self._continuation: Continuation | None = None  # what the next fit of this model continues from
        self._fit_columns: tuple[ColumnSpec, ColumnSpec] = ("features", "label")
        self.classes: list[str] | None = None
        """The class names of the labels, in class index order, when the training labels carried them
        (``read_images(..., labels="folder")``); saved with the model."""
        if master is None:
            start_workers_of_active_session()

    @property
    def model(self) -> Any:
        """The Keras model; after ``fit`` it holds the trained weights."""
        return self._model

    @property
    def fit_columns(self) -> tuple[ColumnSpec, ColumnSpec]:
        """The feature and label columns of the last ``fit`` (saved with the model, so a loaded one has its
        training's): what ``evaluate`` and ``predict`` read unless told otherwise."""
        return self._fit_columns

    @property
    def spark(self) -> Any:
        return get_spark(self.master)

    def _workers(self, spark: Any) -> int:
        """``num_workers``, else one per task slot: in local mode one per slot that has a core of its own
        (:func:`~sparkeras.session.local_slots`), on a cluster the registered slots (a session just started
        waits for its executors: :func:`registered_slots`). A cluster session that no executor joins is an
        error here, before any job (:func:`~sparkeras.barrier.no_executors`)."""
        from sparkeras.barrier import registered_slots, require_executors
        from sparkeras.session import is_local, local_slots

        sc = spark.sparkContext
        if is_local(sc.master):
            return self.num_workers or local_slots(sc)
        if self.num_workers:
            require_executors(sc)
            return self.num_workers
        return max(1, registered_slots(sc))

    def _spec(self, columns: ColumnMap, progress: Any = None, class_weight: ClassWeights | None = None,
              workers: int = 1) -> WorkerSpec:
        """What the tasks need; ``workers`` > 1 for training (see ``Strategy.averages_moving_statistics``)."""
        model = ModelSpec.from_model(self._trained_model(), self.custom_objects or None)
        if self.strategy.averages_moving_statistics:
            model = model.with_moving_statistics_for(workers)
        return WorkerSpec(model, columns, keras_backend(), self.seed, progress, class_weight)

    def _trained_model(self) -> Any:
        """The model the tasks train and score on packed data: the user's, or for string inputs its trunk.

        The trunk shares every layer, variable and the optimizer with the
        user's model (:mod:`sparkeras.data.strings`), so training it trains
        the user's model; callbacks, ``history`` and saving see the user's.
        """
        split = string_split(self._model, self.custom_objects or None)
        return self._model if split is None else split.trunk

    def _packed_columns(self, columns: ColumnMap) -> ColumnMap:
        """``columns`` as the data is packed for the tasks: string inputs as their layers' numbers."""
        return for_packed_data(self._model, columns, self.custom_objects or None)[1]

    def _dataset(self, spark: Any, data: Any, y: Any, x: Any, features_col: ColumnSpec,
                 label_col: ColumnSpec | None) -> Dataset:
        if x is not None and data is not None:
            raise InputError("Pass the data either positionally or as x=, not both.")
        return as_dataset(spark, x if x is not None else data, y, features_col=features_col, label_col=label_col)

    def fit(
        self,
        data: Any = None,
        y: Any = None,
        *,
        x: Any = None,
        epochs: int = 1,
        batch_size: int | None = 32,
        validation_data: Any = None,
        validation_split: float = 0.0,
        features_col: ColumnSpec = "features",
        label_col: ColumnSpec = "label",
        callbacks: Sequence[Any] | None = None,
        verbose: int | str = "auto",
        shuffle: bool = True,
        initial_epoch: int = 0,
        checkpoint_dir: str | None = None,
        class_weight: Mapping[int, float] | None = None,
        weight_col: str | None = None,
        sample_weight: Any = None,
        validation_freq: int | Sequence[int] = 1,
        validation_batch_size: int | None = None,
        steps_per_epoch: None = None,
        validation_steps: None = None,
    ) -> Any:
        """Train on ``data`` and return a ``keras.callbacks.History``.

        ``data`` is a Spark DataFrame, a Parquet path, an RDD of
        ``(features, label)`` pairs, a pandas DataFrame, or numpy features
        with ``y`` (also as ``x=``/``y=``). ``features_col`` and ``label_col``
        name the columns, or map model input/output names to columns.
        ``history.history`` has the per-epoch loss and compiled metrics, and
        their ``val_`` twins when there is validation data, scored after
        every epoch, or as ``validation_freq`` says (as in Keras: every
        ``n``-th epoch, or the listed epochs counted from 1), in batches of
        ``validation_batch_size`` rows when given (by default the fit's
        ``batch_size``, grown where rows are small, which changes no
        built-in metric).

        An epoch is one pass over the data, split among the workers, so
        Keras' ``steps_per_epoch`` and ``validation_steps`` are refused with
        what to do instead (:func:`_check_whole_passes`).

        ``checkpoint_dir`` (a local path or any Hadoop URI) keeps the state
        of the last completed epoch; a fit started again with the same
        directory and arguments, even by a new driver, resumes after it
        (:mod:`sparkeras.storage.checkpoint`), and ``history.restarts``
        records the resume.

        A second ``fit`` of the same model continues where the first
        stopped, as Keras continues its optimizer: the strategy's own state
        (averaging's outer momentum and the workers' optimizer states) is
        kept between the fits, unless the model's weights were changed in
        between (:mod:`sparkeras.strategies.continuation`).

        ``class_weight`` (``{class id: weight}``, as in Keras) weighs each
        training row's loss by its class, on the workers
        (:mod:`sparkeras.data.weights`); validation is not weighted.
        ``weight_col`` names a numeric column that weighs each row's loss and
        training metrics (Keras' ``sample_weight``; ``sample_weight=`` takes
        an array for numpy data), in place of ``class_weight``.
        """
        started = time.perf_counter()
        data, y, x, sample_weight, validation_data = (host_arrays(v) for v in (data, y, x, sample_weight,
                                                                                validation_data))
        _check_compiled(self._model, "fit")
        batch_size = 32 if batch_size is None else batch_size  # Keras' default for None
        _check_positive(epochs=epochs, batch_size=batch_size)
        _check_whole_passes(steps_per_epoch, validation_steps)
        if validation_batch_size is not None:
            _check_positive(validation_batch_size=validation_batch_size)
        verbose = check_verbose(verbose)
        check_classic_session(x if x is not None else data, "SparkModel.fit")
        weights = check_class_weight(class_weight)
        row_weights = check_row_weights(weight_col, sample_weight, x if x is not None else data, class_weight)
        if not 0.0 <= validation_split < 1.0:
            raise InputError(f"validation_split must be in [0, 1), got {validation_split}.")
        if isinstance(validation_data, tuple) and len(validation_data) == 1 and not _needs_labels(self._model):
            validation_data = validation_data[0]  # Keras' (x_val,) for a model that trains without labels
        _check_validation_tuple(validation_data)
        validation_freq = check_validation_freq(validation_freq)
        if not 0 <= initial_epoch < epochs:
            raise InputError(f"initial_epoch must be in [0, epochs), got {initial_epoch} with epochs={epochs}.")
        checkpoint_dir = checkpoint_dir or getattr(self.strategy, "checkpoint_dir", None)
        if checkpoint_dir:
            check_output(checkpoint_dir, kind="directory", flag="checkpoint_dir",
                         inputs=[p for p in (data, x) if isinstance(p, (str, os.PathLike))])
        self.strategy.check_model(self._model)
        _warn_of_an_unused_weight_average(self._model, self.strategy)
        spark = self.spark
        # data resolution runs Spark jobs too: the console bars stay paused over it
        with running_own_jobs(spark), FullCollectionsDeferred(), contextlib.ExitStack() as releases:
            history = self._fit(spark, releases, started, data, y, x, epochs, batch_size, validation_data,
                                validation_split, features_col, label_col, callbacks, verbose, shuffle,
                                initial_epoch, checkpoint_dir, weights, (weight_col, row_weights),
                                (validation_freq, validation_batch_size))
        self._fit_columns = (features_col, label_col)  # what evaluate and predict use unless told otherwise
        return history

    def _fit(self, spark: Any, releases: contextlib.ExitStack, started: float, data: Any, y: Any, x: Any,
             epochs: int, batch_size: int, validation_data: Any, validation_split: float,
             features_col: ColumnSpec, label_col: ColumnSpec, callbacks: Sequence[Any] | None, verbose: int,
             shuffle: bool, initial_epoch: int, checkpoint_dir: str | None,
             class_weight: ClassWeights | None = None, row_weights: tuple = (None, None),
             scoring: tuple[int | tuple[int, ...], int | None] = (1, None)) -> Any:
        """:meth:`fit` after its argument checks, with Spark's console bars paused; ``releases`` runs at its end.

        ``row_weights`` is ``(weight_col, sample_weight)``, and ``scoring``
        ``(validation_freq, validation_batch_size)``, checked.
        """
        validation_freq, validation_batch_size = scoring
        workers = self._workers(spark)
        carried, self._continuation = getattr(self, "_continuation", None), None
        x_data = x if x is not None else data
        weight_col, sample_weight = row_weights
        if validation_split and validation_data is None and _is_numpy(x_data):
            if sample_weight is not None:
                check_weight_rows(sample_weight, _rows(x_data))
            x_data, y, validation_data = _split_last(x_data, y, validation_split)
            if sample_weight is not None:  # the held-out rows' weights go unused: validation is not weighted
                sample_weight = sample_weight[:_rows(x_data)]
        dataset = with_row_weights(self._dataset(spark, None, y, x_data, features_col, label_col),
                                   weight_col, sample_weight)
        if dataset.label_col is None and _needs_labels(self._model):
            raise InputError("fit needs labels: pass y= with numpy features, or label_col= naming the label column.")
        val_dataset, held_out = None, 0.0
        if validation_data is not None:
            val_dataset = validation_dataset(spark, validation_data, dataset)
        elif validation_split and dataset.table is None and dataset.pairs is None:
            held_out = validation_split  # drawn from the packed rows (sparkeras.data.split)
        elif validation_split:
            dataset, val_dataset = split_validation(dataset, validation_split, self._split_seed)
        build_for_data(self._model, dataset)
        columns = resolve_columns(self._model, dataset.schema, dataset.features_col, dataset.label_col,
                                  dataset.weight_col)
        check_class_weight_fits(class_weight, columns)
        columns, trained = self._packed_columns(columns), self._trained_model()
        self.classes = label_classes(dataset.schema, dataset.label_col) or self.classes
        if val_dataset is not None:
            resolve_columns(self._model, val_dataset.schema, val_dataset.features_col, val_dataset.label_col)
            check_same_classes(label_classes(dataset.schema, dataset.label_col), val_dataset.schema,
                               val_dataset.label_col, "validation data")
        self.strategy.check_cluster(spark, workers)
        checkpoint, saved = self._checkpoint(spark, checkpoint_dir, batch_size, workers, class_weight,
                                             dataset.weight_col)
        if saved is not None:
            set_model_state(trained, saved.state)
            self.strategy.restore_checkpoint_state(saved.extra)
            initial_epoch = max(initial_epoch, saved.next_epoch)
        prepared: list[PreparedData] = []
        server = None
        job = None
        strategy_name = getattr(self.strategy, "name", type(self.strategy).__name__)
        if self._follows_autologging:
            automatic = autologging_logger(callbacks)
            callbacks = [*(callbacks or []), automatic] if automatic is not None else callbacks
        try:
            _fit_starting(callbacks, strategy_name)
            spec = self._spec(columns, class_weight=class_weight, workers=workers)
            plan = replace(self.strategy.worker_warm_up(spark, workers),
                           evaluation=val_dataset is not None or bool(held_out), batch_size=batch_size)
            warming = start_warm_up(spark, spec, workers, plan)
            rebuilt = start_rebuild_check(spec.model)
            train = prepare(dataset, columns, workers, balance=self.balance_partitions)
            prepared.append(train)
            validation = None
            if held_out:
                whole = train
                train, validation = split_packed(whole, columns.without_weights(), held_out, self._split_seed)
                if whole.files is None:  # Spark's cache: the sides hold copies, and can be computed again
                    prepared.remove(whole)
                    whole.release()  # a cached DataFrame's packing stays kept for a refit
                prepared += [train, validation]
                _check_both_sides(held_out, train.stats.rows, validation.stats.rows)
            rebuilt()
            if workers > train.stats.rows:
                raise InputError(
                    f"num_workers={workers} is larger than the {train.stats.rows} rows of the training data; "
                    f"use at most {train.stats.rows} workers.")
            if val_dataset is not None:
                validation = prepare(val_dataset, columns.without_weights(), workers, "validation data")
                prepared.append(validation)
            bar = ProgressBar(epochs, verbose)
            if verbose:
                server = ProgressServer(driver_host(spark), bar.report)
            job = TrainingJob(
                spark=spark, model=trained,
                spec=self._spec(columns, server.address if server else None, class_weight, workers),
                train=train, validation=validation, epochs=epochs, initial_epoch=initial_epoch,
                batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                callbacks=None, bar=bar, validation_freq=validation_freq,
                validation_batch_size=validation_batch_size,
                validation_rows=val_dataset if val_dataset is not None and val_dataset.table is not None else None)
            job.callbacks = _callback_list(
                callbacks, self._model, epochs=epochs, steps=max(job.steps_per_worker), verbose=verbose,
                fit_started=started, strategy=strategy_name,
                strategy_options=_options_used(self.strategy, workers), num_workers=workers, batch_size=batch_size,
                data=describe_source(x_data), train_rows=train.stats.rows,
                validation_rows=validation.stats.rows if validation else 0)
            job.checkpoint, job.strategy_state = checkpoint, self.strategy.checkpoint_state
            self.strategy.check(job)
            warming.join()
            self._model.stop_training = False
            setup_seconds = time.perf_counter() - started
            job.callbacks.on_train_begin()
            if callbacks:
                initial_epoch = _take_what_train_begin_restored(job, self._model, callbacks)
            if saved is not None:
                _resume_history(self._model.history, saved, job, checkpoint_dir)
            elif carried is not None:
                carried.resume(self.strategy, trained)
            if initial_epoch < epochs:
                self.strategy.fit(job)
                _finish_optimizer(trained, self.strategy)
            job.callbacks.on_train_end()
            self._continuation = Continuation.after_fit(self.strategy, trained)
        except BaseException as error:
            _fit_failed(job.callbacks.callbacks if job and job.callbacks else callbacks, error)
            raise
        finally:
            if server is not None:
                server.close()
            for p in prepared:
                p.release()
        history = self._model.history
        history.samples_per_second = job.samples_per_second
        history.strategy = repr(self.strategy)
        history.restarts = job.restarts
        history.setup_seconds = setup_seconds
        history.validation_epochs = job.validation_epochs
        history.epoch_figures = [asdict(f) for f in job.figures]
        for key, value in job.report.items():
            setattr(history, key, value)
        return history

    def _checkpoint(self, spark: Any, directory: str | None, batch_size: int, workers: int,
                    class_weight: ClassWeights | None = None, weight_col: str | None = None) -> tuple[Any, Any]:
        """The fit's checkpoint, and what it saved (``None`` for a fresh one)."""
        if not directory:
            return None, None
        from sparkeras.storage.checkpoint import EpochCheckpoint

        fingerprint = {"model": _architecture(self._model), "strategy": repr(self.strategy),
                       "batch_size": batch_size, "num_workers": workers}
        if class_weight is not None:  # absent otherwise, so checkpoints written before it still resume
            fingerprint["class_weight"] = [list(pair) for pair in class_weight]
        if weight_col is not None:
            fingerprint["weight_col"] = weight_col
        checkpoint = EpochCheckpoint(directory, fingerprint, spark)
        return checkpoint, checkpoint.load()

    def evaluate(
        self,
        data: Any = None,
        y: Any = None,
        *,
        x: Any = None,
        batch_size: int | None = 32,
        features_col: ColumnSpec | None = None,
        label_col: ColumnSpec | None = None,
        weight_col: str | None = None,
        sample_weight: Any = None,
        verbose: int | str = 0,
        return_dict: bool = True,
    ) -> dict[str, float] | float | list[float]:
        """The compiled loss and metrics over all rows, as Keras' ``evaluate`` gives them.

        ``features_col`` and ``label_col`` default to those of the last
        ``fit`` (``"features"`` and ``"label"`` before any). ``weight_col``
        (or ``sample_weight=`` for numpy data) weighs each row, as Keras'
        ``evaluate(sample_weight=...)`` does. Returns ``{name: value}``;
        ``return_dict=False`` gives Keras' default instead (the loss alone,
        or ``[loss, *metrics]``). ``verbose=1`` (or ``"auto"``) prints the
        figures and the time taken as one line once every row is scored;
        there is no per-batch bar, since the batches run on the executors
        (or, for numpy or pandas rows, often in this process:
        :func:`~sparkeras.inference.batch.scored_on_driver`).
        """
        _check_compiled(self._model, "evaluate")
        data, y, x, sample_weight = (host_arrays(v) for v in (data, y, x, sample_weight))
        batch_size = 32 if batch_size is None else batch_size
        _check_positive(batch_size=batch_size)
        verbose = check_verbose(verbose)
        if not isinstance(return_dict, bool):
            raise InputError(f"return_dict must be True or False, got {return_dict!r}.")
        started = time.perf_counter()
        features_col = self._fit_columns[0] if features_col is None else features_col
        label_col = self._fit_columns[1] if label_col is None else label_col
        check_classic_session(x if x is not None else data, "SparkModel.evaluate")
        sample_weight = check_row_weights(weight_col, sample_weight, x if x is not None else data)
        figures = self._evaluate(data, y, x, batch_size, features_col, label_col, weight_col, sample_weight)
        if verbose:
            line = " - ".join(f"{k}: {v:.4f}" for k, v in figures.items())
            print(f"evaluate: {line} ({time.perf_counter() - started:.1f} s)", flush=True)
        if return_dict:
            return figures
        values = list(figures.values())
        return values[0] if len(values) == 1 else values

    def _evaluate(self, data: Any, y: Any, x: Any, batch_size: int, features_col: ColumnSpec,
                  label_col: ColumnSpec, weight_col: str | None, sample_weight: Any) -> dict[str, float]:
        frame = x if x is not None else data
        spark = None if frame is None or is_driver_data(frame) else self.spark  # no session yet for driver rows
        dataset = with_row_weights(self._dataset(spark, data, y, x, features_col, label_col), weight_col, sample_weight)
        if dataset.label_col is None and _needs_labels(self._model):
            raise InputError("evaluate needs labels: pass y= with numpy features, or label_col=.")
        columns = self._packed_columns(resolve_columns(self._model, dataset.schema, dataset.features_col,
                                                       dataset.label_col, dataset.weight_col))
        check_same_classes(self.classes, dataset.schema, dataset.label_col, "evaluation data")
        trained = self._trained_model()
        if dataset.local and scored_on_driver(dataset.table, columns, jobs_run_locally(self.master)):
            return DriverValidation(columns, pack_on_driver(dataset, columns, "evaluation data"), keras_backend()) \
                .evaluate(trained, batch_size, MetricReader(trained, columns), scoring=False)
        spark = self.spark
        workers = self._workers(spark)
        spec = self._spec(columns)
        check_rebuilds(spec.model)
        with running_own_jobs(spark):
            prepared = prepare(dataset, columns, workers, "evaluation data")
            blob = spark.sparkContext.broadcast(pack_arrays(model_state(trained)))
            try:
                return evaluate(prepared, spec, blob, batch_size, MetricReader(trained, prepared.columns))
            finally:
                blob.unpersist()
                prepared.release()

    def predict(
        self,
        data: Any = None,
        *,
        x: Any = None,
        batch_size: int | None = 256,
        features_col: ColumnSpec | None = None,
        prediction_col: str = "prediction",
        verbose: int | str = 0,
    ) -> Any:
        """Predictions for every row; ``features_col`` defaults to the last ``fit``'s (``"features"`` before any).

        numpy or pandas in: a numpy array (a list or dict for multi-output
        models) in input order, scored in this process where that is faster
        (:func:`~sparkeras.inference.batch.scored_on_driver`). Spark
        DataFrame, RDD or Parquet path in: a DataFrame with every input
        column plus ``prediction_col`` (class probabilities as
        ``array<float>``, single-unit outputs as ``double``; one column per
        output, suffixed with the output name, for multi-output models). ``verbose=1`` (or ``"auto"``) prints the rows scored and the
        time taken for numpy or pandas input; a DataFrame's predictions are
        computed when an action reads them, so there is nothing to print then.
        """
        data, x = host_arrays(data), host_arrays(x)
        batch_size = 256 if batch_size is None else batch_size
        _check_positive(batch_size=batch_size)
        verbose = check_verbose(verbose)
        features_col = self._fit_columns[0] if features_col is None else features_col
        frame = x if x is not None else data
        if is_pandas_on_spark(frame):  # the predictions as pandas-on-Spark too, on the input's index
            indexed, back = pandas_on_spark_frame(frame)
            return back(self.predict(indexed, batch_size=batch_size, features_col=features_col,
                                     prediction_col=prediction_col))
        if is_spark_connect(frame):  # a UDF over the frame, in its own session: there is no SparkContext
            columns = resolve_columns(self._model, frame.schema, features_col, None)
            return self._predict_frame(frame, columns, batch_size, prediction_col)
        if frame is None or is_driver_data(frame):  # no session yet for rows the driver may score itself
            started = time.perf_counter()
            dataset = self._dataset(None, data, None, x, features_col, None)
            predictions = self._predict_local(dataset, batch_size)
            if verbose:
                print(f"predict: {dataset.table.num_rows:,} rows ({time.perf_counter() - started:.1f} s)", flush=True)
            return predictions
        spark = self.spark
        self._workers(spark)  # a cluster session no executor joins: an error now, not a lazy frame's hang
        check_executors_import_sparkeras(spark)  # and executors that lack sparkeras, as a fit checks
        dataset = self._dataset(spark, data, None, x, features_col, None)
        columns = resolve_columns(self._model, dataset.schema, dataset.features_col, None)
        return self._predict_frame(dataset.spark_frame(spark), columns, batch_size, prediction_col)

    def _predict_local(self, dataset: Dataset, batch_size: int) -> Any:
        """Driver-side rows' predictions: scored here where that is faster (:func:`scored_on_driver`), else by tasks."""
        columns = self._packed_columns(resolve_columns(self._model, dataset.schema, dataset.features_col, None))
        if scored_on_driver(dataset.table, columns, jobs_run_locally(self.master)):
            arrays = pack_on_driver(dataset, columns, "prediction data")
            return self._as_keras_outputs(predict_in_batches(self._trained_model(), columns, arrays, batch_size))
        spark = self.spark
        workers = self._workers(spark)
        spec = self._spec(columns)
        check_rebuilds(spec.model)
        with running_own_jobs(spark):
            prepared = prepare(dataset, columns, workers, "prediction data")
            blob = spark.sparkContext.broadcast(pack_arrays(model_state(self._trained_model())))
            try:
                results = run_partitions(
                    prepared, lambda it: tasks.predict_packed(spec, blob, batch_size, it), "predicting")
            finally:
                blob.unpersist()
                prepared.release()
        parts = [r.state for r in results if r.samples]
        return self._as_keras_outputs([np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))])

    def _as_keras_outputs(self, outputs: list[np.ndarray]) -> Any:
        """The model's outputs as Keras' ``predict`` returns them: one array, a dict by output name, or a list."""
        if len(outputs) == 1:
            return outputs[0]
        if isinstance(getattr(self._model, "_outputs_struct", None), Mapping):
            return dict(zip(output_names(self._model), outputs))
        return outputs

    def _predict_frame(self, frame: Any, columns: ColumnMap, batch_size: int, prediction_col: str) -> Any:
        from sparkeras.inference.udf import add_predictions, output_columns

        return add_predictions(frame, self._model, columns, output_columns(self._model, prediction_col), batch_size,
                               self.custom_objects, rename=f"pass another prediction_col= than {prediction_col!r}")

    def save(self, path: str, overwrite: bool = False) -> None:
        """Save the model (architecture, weights, optimizer state) as a ``.keras`` file.

        ``path`` may be local or any URI Hadoop can write (``hdfs://``, ``s3a://``...).
        It is written atomically (a temporary name, then a rename), and an
        existing file is replaced only with ``overwrite=True``.
        """
        info: dict[str, Any] = {}
        if self.classes:
            info["classes"] = self.classes
        if self._fit_columns != ("features", "label"):  # what evaluate and predict use after loading it
            info["columns"] = {"features": _plain_columns(self._fit_columns[0]),
                               "label": _plain_columns(self._fit_columns[1])}
        save_model_file(self._model, path, self.master, overwrite, info or None)

    @classmethod
    def load(cls, path: str, custom_objects: Mapping[str, Any] | None = None, **kwargs: Any) -> "SparkModel":
        """Load a model written by :meth:`save` (or any ``.keras`` file) into a new SparkModel."""
        model, info = load_model_and_info(path, custom_objects, kwargs.get("master"))
        loaded = cls(model, custom_objects=custom_objects, **kwargs)
        loaded.classes = info.get("classes") or None
        columns = info.get("columns")
        if isinstance(columns, dict):
            loaded._fit_columns = (columns.get("features", "features"), columns.get("label", "label"))
        return loaded


def _plain_columns(spec: Any) -> Any:
    """A column spec (a name, a list of names, or a dict of them) as JSON holds it."""
    if isinstance(spec, Mapping):
        return {str(k): _plain_columns(v) for k, v in spec.items()}
    if isinstance(spec, (list, tuple)):
        return [_plain_columns(v) for v in spec]
    return spec


def save_model_file(model: Any, path: str, master: str | None = None, overwrite: bool = False,
                    info: dict | None = None) -> None:
    """Write ``model`` as a ``.keras`` file to a local path or any Hadoop URI, atomically.

    The path is checked first (extension, directory, an existing file
    without ``overwrite``), so nothing is half-written.
    """
    check_output(path, kind="model", overwrite=overwrite, flag="path")
    spark = get_spark(master) if is_remote(path) else None
    if spark is not None:
        check_remote_output(spark, path, overwrite=overwrite, flag="path")
    try:
        save_model_atomically(model, path, spark, overwrite, info)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a Hadoop write error arrives as a Py4JJavaError
        raise worker_error(exc, f"writing {path}") from None


def load_model_file(path: str, custom_objects: Mapping[str, Any] | None = None, master: str | None = None) -> Any:
    """Read a ``.keras`` file from a local path or any Hadoop URI."""
    return load_model_and_info(path, custom_objects, master)[0]


def load_model_and_info(path: str, custom_objects: Mapping[str, Any] | None = None,
                        master: str | None = None) -> tuple[Any, dict]:
    """A ``.keras`` file's model and what sparkeras saved beside it (``classes``), local or any Hadoop URI."""

    def _load(local: str) -> tuple[Any, dict]:
        _import_own_layers(local)
        model = load_keras(local, custom_objects=dict(custom_objects or {}) or None)
        return model, read_model_info(local)

    if not is_remote(path):
        check_model_archive(path)
        return _load(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "model.keras")
        hadoop_copy(get_spark(master), path, local, upload=False)
        return _load(local)


def _import_own_layers(path: str) -> None:
    """Import the sparkeras modules whose registered layers a ``.keras`` file uses (an ensemble's vote, say).

    Keras finds a registered class only once its module was imported; a
    fresh process loading a saved ensemble has not imported it. Only
    sparkeras' own modules are imported here: a file cannot make the loader
    import arbitrary code.
    """
    from sparkeras.serialization import _custom_modules
    from sparkeras.storage.model_file import archive_json

    config = archive_json(path, "config.json")
    if config is None:
        return  # Keras' own loader reports what is wrong with the file
    for module in sorted(m for m in _custom_modules(config) if m.startswith("sparkeras.")):
        importlib.import_module(module)


def fresh_copy(
    model: Any,
    *,
    optimizer: str | None = None,
    loss: str | None = None,
    metrics: Sequence[str] | None = None,
    learning_rate: float | None = None,
    owner: str = "sparkeras",
) -> Any:
    """A new, compiled copy of ``model`` with the same initial weights, and optional compile overrides.

    Estimators (Spark ML, scikit-learn) train a copy per ``fit``, so every
    fold and grid point starts from the same weights and the user's model
    is never changed. The optimizer is rebuilt from its config, so no state
    carries over.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise InputError(f"{owner} needs a keras.Model, got {type(model).__name__}.")
    if not getattr(model, "compiled", False):
        raise InputError(f"{owner}'s model is not compiled: call model.compile(optimizer=..., loss=...) first.")
    copy = clone_live(model)
    copy_vocabularies(model, copy)
    copy.set_weights(model.get_weights())
    refresh_derived_state(copy)
    if optimizer is not None or loss is not None or metrics is not None:
        copy.compile(optimizer=keras.optimizers.get(optimizer) if optimizer is not None else copy.optimizer,
                     loss=loss if loss is not None else copy.loss,
                     metrics=list(metrics) if metrics is not None else copy._compile_config.config.get("metrics"))
    if learning_rate is not None:
        copy.optimizer.learning_rate = learning_rate
    return copy


def label_classes(schema: Any, label_col: Any) -> list[str] | None:
    """The class names a label column carries in its metadata, if any.

    ``read_images`` writes them as ``classes`` (the folders); Spark ML's
    ``StringIndexer`` as the nominal attribute's values (``ml_attr.vals``),
    in the order of the indices it gave.
    """
    if not isinstance(label_col, str) or label_col not in schema.fieldNames():
        return None
    metadata = schema[label_col].metadata or {}
    classes = metadata.get("classes")
    if classes is None and isinstance(metadata.get("ml_attr"), dict):
        classes = metadata["ml_attr"].get("vals")
    return [str(c) for c in classes] if isinstance(classes, list) and classes else None


def _indexed_by_string_indexer(schema: Any, label_col: Any) -> bool:
    return isinstance(label_col, str) and "ml_attr" in (schema[label_col].metadata or {})


def check_same_classes(expected: list[str] | None, schema: Any, label_col: Any, what: str) -> None:
    """Refuse labels that number the classes differently from ``expected`` (both from column metadata).

    ``read_images`` numbers a folder's classes in its own sorted order, so a
    validation or test folder that lacks one class shifts every index after
    it; a ``StringIndexer`` fitted on each set apart orders each set's labels
    by their own frequency. Either way the metrics would be silently wrong.
    """
    got = label_classes(schema, label_col)
    if expected and got and got != expected:
        fix = ("Index every set with the same fitted StringIndexerModel (fit it once, on the training data, and "
               "transform the others with it); a StringIndexer fitted on each set numbers the labels by that "
               "set's own frequencies." if _indexed_by_string_indexer(schema, label_col) else
               "Read it with read_images(..., classes=<the training classes>), which SparkModel.classes holds.")
        raise InputError(
            f"The {what}'s label column {label_col!r} numbers the classes {got[:10]}, but the model's classes are "
            f"{expected[:10]}; the same index would mean different classes. {fix}")


def _uses_weight_average(model: Any) -> bool:
    return bool(getattr(getattr(model, "optimizer", None), "use_ema", False))


def _finish_optimizer(model: Any, strategy: Strategy) -> None:
    """End the fit as Keras' ``fit`` ends: with ``use_ema``, the moving average of the weights replaces them.

    Keras calls ``optimizer.finalize_variable_values`` after the last epoch,
    before ``on_train_end``; a fit that skipped it saved the raw weights of
    an optimizer whose user asked for their average. Only where the driver
    holds the optimizer's state: the parameter-server rules' driver has no
    average to put in place (:func:`_warn_of_an_unused_weight_average`).
    """
    if _uses_weight_average(model) and strategy.driver_holds_optimizer_state:
        model.optimizer.finalize_variable_values(model.trainable_weights)


def _warn_of_an_unused_weight_average(model: Any, strategy: Strategy) -> None:
    if _uses_weight_average(model) and not strategy.driver_holds_optimizer_state:
        logger.warning("The optimizer's use_ema has no effect with the %r strategy: each worker keeps its own "
                       "optimizer, and the parameter server's center weights are the model. Use 'averaging' or "
                       "'allreduce' to train with the moving average of the weights.", strategy.name)


def _check_model(model: Any, compiled: bool = True) -> None:
    """Refuse what is not a ``keras.Model``, and with ``compiled`` one that cannot train or score a loss.

    A ``SparkModel`` made only to predict (a featurizer, a model loaded
    without its compile settings) needs no compile, as Keras' own
    ``predict`` does not: ``fit`` and ``evaluate`` check it there.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise InputError(f"SparkModel needs a keras.Model, got {type(model).__name__}.")
    if compiled and not is_compiled(model):
        raise InputError(
            "The model is not compiled: call model.compile(optimizer=..., loss=..., metrics=[...]) "
            "before passing it to SparkModel.")


def _check_compiled(model: Any, call: str) -> None:
    if not is_compiled(model):
        raise InputError(f"The model is not compiled, and SparkModel.{call} needs its loss: call "
                         "model.compile(optimizer=..., loss=..., metrics=[...]) first (predict works without).")


def _needs_labels(model: Any) -> bool:
    """Whether the model's loss reads labels.

    Keras' ``fit(x)`` trains without ``y`` when the loss needs none: a model
    compiled without one that adds its own (``add_loss``, activity
    regularizers), or one whose class computes it (its own ``compute_loss``
    or ``train_step``, as Keras' VAE example does). A compiled loss of the
    usual kind compares predictions with labels, so there they are asked for.
    """
    import keras

    own = type(model)
    return (getattr(model, "loss", None) is not None and own.train_step is keras.Model.train_step
            and own.compute_loss is keras.Model.compute_loss)


def is_compiled(model: Any) -> bool:
    return bool(getattr(model, "compiled", False)) and getattr(model, "optimizer", None) is not None


def build_for_data(model: Any, dataset: Dataset) -> None:
    """Build an unbuilt ``keras.Sequential`` for the data's rows, as Keras' ``fit`` builds it from its first batch.

    ``keras.Sequential([Dense(64), Dense(10)])`` with no ``keras.Input``
    trains with plain ``model.fit``, so it trains here too: the user's model
    is built for one row's shape (``(None, 784)`` for a 784-value column),
    which is what plain ``fit`` does to it. Any other model keeps its inputs.
    """
    import keras

    if not isinstance(model, keras.Sequential) or model.built:
        return
    shape = first_feature_shape(dataset)
    if shape is not None:
        model.build((None, *shape))


def _options_used(strategy: Strategy, workers: int) -> dict[str, Any]:
    """The strategy's options as this fit uses them: a window or warmup chosen by worker count resolved."""
    options = strategy.get_config()
    if options.get("window") is None and hasattr(strategy, "window_for"):
        options["window"] = strategy.window_for(workers)
    if "warmup_epochs" in options and options["warmup_epochs"] is None and hasattr(strategy, "warmup_for"):
        options["warmup_epochs"] = strategy.warmup_for(workers)
    return options


def check_verbose(verbose: Any) -> int:
    """Keras' ``verbose``: 0 (silent), 1 (a progress bar), 2 (one line per epoch) or ``"auto"`` (1)."""
    if verbose == "auto":
        return 1
    if isinstance(verbose, float) or verbose not in (0, 1, 2):  # True and False count as 1 and 0, as in Keras
        raise InputError(f"verbose must be 0 (silent), 1 (progress bar), 2 (one line per epoch) or 'auto', "
                         f"got {verbose!r}.")
    return int(verbose)


def _check_whole_passes(steps_per_epoch: Any, validation_steps: Any) -> None:
    """Refuse Keras' step limits, naming what does their job here.

    Keras needs ``steps_per_epoch`` for endless datasets, and Horovod users
    pass ``rows // (batch_size * workers)`` to split an epoch among workers;
    here an epoch is always one pass over the data, already split, so the
    usual value is the one a fit takes anyway. Shorter epochs come from
    fitting a part of the data: a second fit continues the first.
    """
    if steps_per_epoch is not None:
        raise InputError(
            f"steps_per_epoch={steps_per_epoch!r} is not supported: an epoch of SparkModel.fit is one pass over "
            f"the data, split among the workers (each runs ceil(its rows / batch_size) steps). Leave it out; for "
            f"shorter epochs fit a sample (df.sample(fraction=...)) or the parts of df.randomSplit([...]) in turn, "
            f"each fit continuing the last.")
    if validation_steps is not None:
        raise InputError(
            f"validation_steps={validation_steps!r} is not supported: validation scores every row of the "
            f"validation data. Leave it out, and pass a smaller validation set (validation_data=val_df.sample(...) "
            f"or val_df.limit(n)) to score fewer rows.")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")


def _is_numpy(data: Any) -> bool:
    return isinstance(data, (np.ndarray, Mapping, list, tuple))


def _rows(x: Any) -> int:
    """Rows of numpy features: an array, or a list or dict of arrays (one per model input)."""
    first = next(iter(x.values())) if isinstance(x, Mapping) else (x[0] if isinstance(x, (list, tuple)) else x)
    return len(first)


def _check_both_sides(fraction: float, train: int, validation: int) -> None:
    """A ``validation_split`` must leave rows on both sides (Spark data's is drawn at random, row by row)."""
    if not train or not validation:
        raise InputError(
            f"validation_split={fraction} of the {train + validation} rows held out {validation} and left {train} "
            "to train on; both sides need rows. Choose a fraction that leaves some on each side, or pass "
            "validation_data=.")


def _split_last(x: Any, y: Any, fraction: float) -> tuple[Any, Any, Any]:
    """Keras' validation_split: the last ``fraction`` of the rows, before shuffling."""
    def cut(v: Any, lo: int | None, hi: int | None) -> Any:
        if isinstance(v, Mapping):
            return {k: np.asarray(a)[lo:hi] for k, a in v.items()}
        if isinstance(v, (list, tuple)):
            return [np.asarray(a)[lo:hi] for a in v]
        return None if v is None else np.asarray(v)[lo:hi]

    split = int(_rows(x) * (1.0 - fraction))
    return cut(x, None, split), cut(y, None, split), (cut(x, split, None), cut(y, split, None))


def _architecture(model: Any) -> str:
    """What a checkpoint's state must match: layer types and variable shapes, the optimizer and the loss.

    Not the Keras config, which holds generated names (``dense_3``) that
    change with the number of models a process has built before.
    """
    import hashlib
    import json

    layers = [[type(layer).__name__, [list(v.shape) for v in layer.weights]] for layer in model.layers]
    described = [layers, type(model.optimizer).__name__, str(getattr(model, "loss", ""))]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def _resume_history(history: Any, saved: Any, job: TrainingJob, directory: str) -> None:
    """The History of a resumed fit starts with the epochs the checkpoint already holds."""
    history.history = {k: [from_json(value) for value in v] for k, v in saved.history.items()}
    history.epoch = list(range(saved.next_epoch))
    job.restarts.append({"attempt": 1, "resumed_at_epoch": saved.next_epoch + 1,
                         "reason": f"checkpoint in {directory}"})


def _check_validation_tuple(validation_data: Any) -> None:
    """Refuse a ``validation_data`` tuple that is not ``(x, y)``, before anything starts.

    Keras also takes ``(x, y, sample_weight)``; sparkeras scores validation
    rows unweighted (``validation_split`` leaves the held-out rows' weights
    out too), so it says so rather than reading the tuple as three feature
    arrays.
    """
    if not isinstance(validation_data, tuple) or len(validation_data) == 2:
        return
    if len(validation_data) == 3:
        raise InputError(
            "validation_data=(x, y, sample_weight): sparkeras scores validation rows unweighted, so it takes "
            "(x, y) only. Drop the weights, or score the weighted rows after the fit with "
            "SparkModel.evaluate(x, y, sample_weight=w).")
    raise InputError(f"validation_data is a tuple of {len(validation_data)} items; pass (x, y), or a DataFrame, "
                     "Parquet path or RDD with the training data's columns.")


def _fit_starting(callbacks: Sequence[Any] | None, strategy: str) -> None:
    """Tell the callbacks that track runs (``on_fit_start``) that a fit begins, before its data is read."""
    for callback in callbacks or []:
        hook = getattr(callback, "on_fit_start", None)
        if hook is not None:
            hook(strategy)


def _fit_failed(callbacks: Sequence[Any] | None, error: BaseException) -> None:
    """Tell the callbacks that track runs (``on_fit_failed``) that the fit raised, so no run stays open."""
    for callback in callbacks or []:
        hook = getattr(callback, "on_fit_failed", None)
        if hook is not None:
            hook(error)


def _take_what_train_begin_restored(job: TrainingJob, model: Any, callbacks: Sequence[Any]) -> int:
    """Take the weights and first epoch that ``on_train_begin`` callbacks restored, as Keras' ``fit`` does.

    Keras' ``BackupAndRestore`` loads an interrupted fit's weights and
    optimizer state in ``on_train_begin`` and sets the model's
    ``_initial_epoch``, which ``fit`` reads right after. The job had taken
    its state before the callbacks ran, so such a fit started over from its
    first weights and epoch. Returns the first epoch to train.
    """
    from sparkeras.epoch_callbacks import may_set_weights_at_train_begin

    if not may_set_weights_at_train_begin(callbacks):
        return job.initial_epoch  # no copy of the state to compare
    state = model_state(job.model)
    if any(not np.array_equal(now, before) for now, before in zip(state, job.state)):
        job.state = state
    job.initial_epoch = getattr(model, "_initial_epoch", None) or job.initial_epoch
    return job.initial_epoch


def _callback_list(callbacks: Sequence[Any] | None, model: Any, **params: Any) -> Any:
    """Keras' CallbackList, with the fit's description in every callback's ``params``.

    Besides Keras' own ``epochs``, ``steps`` and ``verbose``, a callback
    finds ``strategy``, ``strategy_options``, ``num_workers``,
    ``batch_size``, ``data``, ``train_rows``, ``validation_rows`` and
    ``fit_started`` (a ``time.perf_counter`` reading), which
    :class:`sparkeras.callbacks.MLflowLogger` logs. Keras' own callbacks
    read only the keys they know.

    Callbacks that track runs (``on_fit_start``) go last, whatever the
    user's order, and are shown the others (``watch_callbacks``): Keras
    calls ``on_train_end`` in list order, and ``EarlyStopping(
    restore_best_weights=True)`` sets the best epoch's weights there, so a
    tracker placed before it logged the last epoch's weights as the model.
    """
    import keras

    from sparkeras.epoch_callbacks import for_epoch_level
    from sparkeras.tracking.tensorboard import with_cluster_scalars

    given = for_epoch_level(callbacks or [])
    trackers = [c for c in given if hasattr(c, "on_fit_start")]
    others = [c for c in given if not hasattr(c, "on_fit_start")]
    for tracker in trackers:
        watch = getattr(tracker, "watch_callbacks", None)
        if watch is not None:
            watch(others)
    return keras.callbacks.CallbackList(
        with_cluster_scalars(others + trackers), add_history=True, add_progbar=False, model=model, **params)


__all__ = ["SparkModel"]
