"""Hyperparameter search on Spark, with Optuna as the engine.

Optuna samples and prunes; sparkeras runs the trials. The driver asks the
study for a trial and calls the user's ``build_model(trial)`` (so every
``trial.suggest_*`` runs against the real study), then trains the model on a
thread of its own. Several trials train at once, as many as the cluster has
task slots for.

- **One task per trial** (``workers_per_trial=1``, the default): the trial is
  one Spark job of one task, which runs Keras' own ``model.fit`` on the
  packed rows with the cores Spark gave it (:mod:`sparkeras.worker.trial`),
  so it trains exactly as a single process would. ``SparkModel.fit`` with
  one worker then ran a Spark job per epoch and another to score the
  validation rows; trials in one task cut ``bench/tuning.py``'s cold search
  from 64 s to 54 s on 2 cores, and warming the workers while the data is
  packed cut it to 49-53 s.
- **A distributed fit per trial** (``workers_per_trial > 1``): a
  :class:`~sparkeras.model.SparkModel` fit with any strategy.
- **Data once.** The data becomes cached DataFrames once
  (:class:`~sparkeras.data.frames.SharedFrames`), and the packing of a cached
  DataFrame is shared by every trial of the same input shapes
  (:mod:`sparkeras.data.reuse`): rows are shipped and packed once per
  search, not once per trial. Validation is scored exactly, every epoch.
- **Pruning.** Every epoch's logs reach the driver (sent by the trial's task
  to a signed :class:`~sparkeras.tune.reporting.TrialServer`, or at the end
  of a distributed fit's epoch), where the metric is reported to the trial
  and the pruner decides. A pruned trial stops after that epoch and frees
  its slots for the next one.
- **Failures.** An exception in ``build_model`` or in training, a lost
  executor the trial could not recover from, or a NaN loss marks the trial
  failed, with the reason in its ``fail_reason`` user attribute; the search
  goes on.
- **Resuming.** With ``storage`` (``sqlite:///search.db``) every trial is
  stored as it ends. ``n_trials`` counts the study's finished trials, so a
  search started again with ``load_if_exists=True`` runs only the trials it
  still lacks; trials that were running when the driver stopped are marked
  failed ("interrupted") and not counted.
"""

from __future__ import annotations

import copy
import math
import random
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from sparkeras.data.strings import for_packed_data
from sparkeras.data.weights import ClassWeights, check_class_weight, check_class_weight_fits, check_row_weights
from sparkeras.errors import InputError, SparkerasError
from sparkeras.metric_values import is_per_class
from sparkeras.session import check_classic_session
from sparkeras.tracking.autolog import autologging_logger, set_last_active_run
from sparkeras.tune.space import distributions, suggest

INTERRUPTED = "interrupted: the driver stopped while the trial ran"
_DIRECTIONS = ("minimize", "maximize")


def tune(
    build_model: Callable[[Any], Any],
    data: Any = None,
    y: Any = None,
    *,
    n_trials: int | None = None,
    timeout: float | None = None,
    metric: str = "val_loss",
    direction: str = "minimize",
    epochs: int = 10,
    batch_size: int = 32,
    validation_split: float = 0.2,
    validation_data: Any = None,
    sampler: Any = None,
    pruner: Any = None,
    storage: Any = None,
    study_name: str | None = None,
    load_if_exists: bool = False,
    workers_per_trial: int = 1,
    max_concurrent: int | None = None,
    features_col: Any = "features",
    label_col: Any = "label",
    search_space: Mapping[str, Any] | None = None,
    strategy: Any = "averaging",
    custom_objects: Mapping[str, Any] | None = None,
    seed: int | None = None,
    verbose: int = 1,
    tracking: Any = None,
    class_weight: Mapping[int, float] | None = None,
    weight_col: str | None = None,
    sample_weight: Any = None,
) -> Any:
    """Search hyperparameters with Optuna, training the trials concurrently on Spark; returns the ``optuna.Study``.

    Args:
        build_model: ``build_model(trial)`` returns a compiled Keras model,
            drawing its hyperparameters with ``trial.suggest_*``. With
            ``search_space``, it receives a dict of drawn values instead.
        data, y: anything :meth:`SparkModel.fit` takes (a DataFrame, a
            Parquet path, numpy ``x`` with ``y``...).
        n_trials: how many finished trials the study should hold (a resumed
            study runs only the rest). ``timeout``: seconds after which no
            new trial starts. At least one of the two is needed.
        metric, direction: what each trial's final epoch is scored by
            (``val_loss``, ``val_accuracy``, or a training metric), and
            whether lower or higher is better.
        epochs, batch_size: each trial's fit. A parameter named
            ``batch_size`` that the search draws (in ``search_space``, or by
            ``build_model``'s ``trial.suggest_int("batch_size", ...)``) is
            that trial's batch size instead, and :func:`best_model`'s.
        validation_split, validation_data: the held-out rows each epoch is
            scored on (``validation_data`` wins when both are given).
        sampler, pruner: Optuna's (default: ``TPESampler(seed=seed)`` and
            ``MedianPruner()``).
        storage, study_name, load_if_exists: as in ``optuna.create_study``;
            a database URL makes the search resumable.
        workers_per_trial: Spark tasks per trial (1: each trial is a
            single-worker fit, which trains exactly as ``model.fit``).
        max_concurrent: trials at once (default: the cluster's task slots
            divided by ``workers_per_trial``).
        strategy: each trial's training strategy, a name or a Strategy object
            (copied for each trial).
        search_space: ``{name: range}``, the simple case: a list of choices,
            ``(low, high)``, ``(low, high, "log")`` or an Optuna distribution.
        verbose: 1 prints a line as each trial ends; 0 is silent.
        tracking: a :class:`sparkeras.callbacks.MLflowLogger`: the search is
            one MLflow run (its settings, then the best value and params),
            and each trial a nested run with its params, every epoch's
            metrics and its end (``FINISHED``, ``KILLED`` when pruned,
            ``FAILED``). Default: the same where MLflow's Keras autologging
            is on (``mlflow.autolog()``), into your active run or a run of its
            own, which ``mlflow.last_active_run()`` then returns.
        class_weight: ``{class id: weight}`` for every trial's training loss,
            as in Keras' ``fit``.
        weight_col, sample_weight: a column of row weights (``sample_weight``:
            an array, for numpy data) for every trial's training loss, as in
            :meth:`SparkModel.fit`; validation is not weighted.
    """
    _check_arguments(build_model, n_trials, timeout, metric, direction, epochs, batch_size, validation_split,
                     validation_data, workers_per_trial, max_concurrent, verbose)
    check_classic_session(data, "sparkeras.tune")
    weights = check_class_weight(class_weight)
    row_weights = check_row_weights(weight_col, sample_weight, data, class_weight)
    if tracking is not None:
        from sparkeras.tracking.mlflow import MLflowLogger

        if not isinstance(tracking, MLflowLogger):
            raise InputError(f"tracking must be a sparkeras.callbacks.MLflowLogger, got {type(tracking).__name__}.")
    else:
        tracking = autologging_logger(())  # MLflow's autologging, where on, logs the search and its trials
    space = distributions(search_space) if search_space is not None else None
    optuna = _optuna()
    from sparkeras.barrier import registered_slots
    from sparkeras.data.frames import SharedFrames
    from sparkeras.session import get_spark, running_own_jobs
    from sparkeras.strategies import get_strategy

    get_strategy(copy.deepcopy(strategy))  # a bad strategy name fails here, before anything runs
    spark = get_spark()
    slots = registered_slots(spark.sparkContext, workers_per_trial * (max_concurrent or 1))
    if workers_per_trial > slots:
        raise InputError(f"workers_per_trial={workers_per_trial} is more than the cluster's {slots} task slots; "
                         f"use at most {slots}.")
    fitting = slots // workers_per_trial
    if max_concurrent is not None and max_concurrent > fitting:
        raise InputError(f"max_concurrent={max_concurrent} trials of {workers_per_trial} worker(s) each need "
                         f"{max_concurrent * workers_per_trial} task slots, but the cluster has {slots}; "
                         f"use at most {fitting}.")
    seed = random.randrange(2**31) if seed is None else int(seed)
    study = _open_study(optuna, storage, study_name, load_if_exists, direction, sampler, pruner, seed)
    with running_own_jobs(spark):  # the trials' stages are sparkeras' own, as a fit's are
        frames = SharedFrames(spark, data, y, validation_data=validation_data,
                              validation_split=0.0 if validation_data is not None else validation_split,
                              features_col=features_col, label_col=label_col, seed=seed,
                              weight_col=weight_col, sample_weight=row_weights)
        parent = None
        try:
            search = Search(study, build_model, frames, space=space, metric=metric, epochs=epochs,
                            batch_size=batch_size, workers_per_trial=workers_per_trial, strategy=strategy,
                            custom_objects=custom_objects, seed=seed, verbose=verbose, class_weight=weights)
            if tracking is not None:
                from sparkeras.data.sources import describe_source

                parent = search.track(tracking, {
                    "study_name": study.study_name, "n_trials": n_trials, "timeout": timeout, "metric": metric,
                    "direction": direction, "epochs": epochs, "batch_size": batch_size,
                    "workers_per_trial": workers_per_trial, "sampler": type(study.sampler).__name__,
                    "pruner": type(study.pruner).__name__, "data": describe_source(data)})
            search.run(n_trials, timeout, max_concurrent or fitting)
        except BaseException:
            if parent is not None:
                parent.end("FAILED")
            raise
        finally:
            frames.close()
    if parent is not None:
        search.close_tracking(parent)
        parent.wait()  # the trials' runs were queued before the search's end: all are in the store
        if parent.owned and tracking.autologging:
            set_last_active_run(parent.run_id)
    return study


def best_model(study: Any, build_model: Callable[[Any], Any], data: Any = None, y: Any = None, *,
               search_space: Mapping[str, Any] | None = None, strategy: Any = "averaging",
               num_workers: int | None = None, custom_objects: Mapping[str, Any] | None = None,
               **fit_options: Any) -> Any:
    """Build the study's best configuration and train it on ``data`` with any strategy; returns the SparkModel.

    ``fit_options`` go to :meth:`SparkModel.fit` (``epochs``, ``batch_size``, ...); a ``batch_size`` the
    search drew is the fit's unless ``fit_options`` names one.
    """
    optuna = _optuna()
    from sparkeras.model import SparkModel

    try:
        params = study.best_params
    except ValueError:
        raise InputError(f"Study {study.study_name!r} has no completed trial to retrain.") from None
    if search_space is not None:
        model = build_model(dict(params))
    else:
        model = build_model(optuna.trial.FixedTrial(params))
    if "batch_size" in params:
        fit_options.setdefault("batch_size", trial_batch_size(params, 32))
    spark_model = SparkModel(model, copy.deepcopy(strategy), num_workers, custom_objects=custom_objects)
    spark_model.fit(data, y, **fit_options)
    return spark_model


class Search:
    """Runs the trials of one search: asks, builds, trains and tells, on ``concurrency`` threads."""

    def __init__(self, study: Any, build_model: Callable[[Any], Any], frames: Any, *, space: Any, metric: str,
                 epochs: int, batch_size: int, workers_per_trial: int, strategy: Any,
                 custom_objects: Mapping[str, Any] | None, seed: int, verbose: int,
                 class_weight: ClassWeights | None = None) -> None:
        from sparkeras.tune.progress import SearchProgress

        self.study, self.build_model, self.frames, self.space = study, build_model, frames, space
        self.metric, self.epochs, self.batch_size = metric, epochs, batch_size
        self.workers_per_trial, self.strategy = workers_per_trial, strategy
        self.custom_objects, self.seed = custom_objects, seed
        self.class_weight = class_weight
        self.progress = SearchProgress(metric, verbose)
        self.lock = threading.RLock()  # every call into the study, and the trial budget
        self._remaining: int | None = None
        self._deadline: float | None = None
        self._error: BaseException | None = None
        self.server: Any = None  # the TrialServer of one-worker trials
        self.tracking: tuple[Any, Any] | None = None  # (MLflowLogger, the search's RunHandle)

    def track(self, tracking: Any, params: Mapping[str, Any]) -> Any:
        """Log the search as an MLflow run and each trial as its child; returns the search's run."""
        import mlflow

        from sparkeras.tracking.mlflow import RunHandle

        if tracking.tracking_uri is not None:
            mlflow.set_tracking_uri(tracking.tracking_uri)
        parent = RunHandle.start(tracking.experiment, tracking.run_name or f"sparkeras-tune-{params['study_name']}",
                                 tags={**tracking.tags, "sparkeras.search": "optuna"})
        parent.log(params=params)
        tracking.run = parent
        self.tracking = (tracking, parent)
        return parent

    def close_tracking(self, parent: Any) -> None:
        """The search's run ends with the best trial's value and params."""
        best = self._best()
        if best is not None:
            parent.log(metrics={f"best_{self.metric}": best[1]},
                       tags={"best_trial": best[0], **{f"best.{k}": v for k, v in self.study.best_trial.params.items()}})
        parent.end("FINISHED")

    def _trial_run(self, trial: Any) -> Any:
        from sparkeras.tracking.mlflow import RunHandle

        tracking, parent = self.tracking
        run = RunHandle.start(tracking.experiment, f"trial-{trial.number}", parent=parent.run_id,
                              tags={"optuna.trial": str(trial.number)}, reuse_active=False)
        run.log(params={**trial.params, "trial": trial.number})
        return run

    def run(self, n_trials: int | None, timeout: float | None, concurrency: int) -> None:
        import optuna

        states = optuna.trial.TrialState
        self._fail_interrupted()
        if n_trials is not None:
            done = [t for t in self.study.get_trials(deepcopy=False, states=(states.COMPLETE, states.PRUNED,
                                                                              states.FAIL))
                    if t.user_attrs.get("fail_reason") != INTERRUPTED]
            self._remaining = max(0, n_trials - len(done))
            if self._remaining == 0:
                return
        self._deadline = None if timeout is None else time.monotonic() + timeout
        first = self._next(check=True)
        if first is None:  # the timeout ran out before the first trial
            return
        if self.workers_per_trial == 1:
            from sparkeras.session import driver_host
            from sparkeras.tune.reporting import TrialServer

            self.server = TrialServer(driver_host(self.frames.train.sparkSession), self.lock)
            self._warm_up(first[1], concurrency)
        try:
            from pyspark import InheritableThread  # the trials' jobs keep the caller's job group

            threads = [InheritableThread(target=self._work, args=(first if i == 0 else None,),
                                         name=f"sparkeras-trial-{i}", daemon=True) for i in range(concurrency)]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        finally:
            if self.server is not None:
                self.server.close()
                self.server = None
        if self._error is not None:
            raise self._error

    # -- trials ---------------------------------------------------------------

    def _work(self, pending: tuple[Any, Any] | None) -> None:
        try:
            while True:
                if pending is None:
                    pending = self._next()
                    if pending is None:
                        return
                self._train(*pending)
                pending = None
        except BaseException as exc:  # noqa: BLE001 - a bug of ours: stop the search and raise it on the driver
            with self.lock:
                self._error = self._error or exc
                self._remaining = 0

    def _next(self, check: bool = False) -> tuple[Any, Any] | None:
        """The next trial and its built model, or ``None`` when the budget is spent.

        A trial whose ``build_model`` raises is recorded failed, and the next one is asked for.
        """
        while True:
            with self.lock:
                if self._remaining == 0 or (self._deadline is not None and time.monotonic() >= self._deadline):
                    return None
                if self._remaining is not None:
                    self._remaining -= 1
                trial = self.study.ask()
                try:
                    model = self._build(trial)
                except Exception as exc:  # noqa: BLE001 - the user's code; recorded, and the search goes on
                    reason = f"build_model raised {type(exc).__name__}: {exc}"
                    if self.tracking is not None:
                        run = self._trial_run(trial)
                        run.log(tags={"optuna.state": "FAIL", "fail_reason": reason})
                        run.end("FAILED")
                    self.progress.started()
                    self._fail(trial, reason)
                    continue
                if check:
                    try:
                        self._check_metric(model)
                    except InputError as exc:
                        self._tell_failed(trial, str(exc))
                        raise
                return trial, model

    def _build(self, trial: Any) -> Any:
        from sparkeras.data.sources import Dataset
        from sparkeras.model import _check_model, build_for_data

        model = self.build_model(suggest(trial, self.space) if self.space is not None else trial)
        _check_model(model)
        build_for_data(model, Dataset(self.frames.train, self.frames.features_col, self.frames.label_col))
        return model

    def _batch_size(self, trial: Any) -> int:
        """The trial's drawn ``batch_size`` where the search draws one (:func:`trial_batch_size`), else the search's."""
        return trial_batch_size(trial.params, self.batch_size)

    def _train(self, trial: Any, model: Any) -> None:
        from sparkeras.tune.reporting import TrialRecord

        self.progress.started()
        record = TrialRecord(trial, self.metric, self.epochs)
        if self.tracking is not None:
            record.run = self._trial_run(trial)
        try:
            if self.server is not None:
                self._train_in_task(record, model)
            else:
                self._train_distributed(record, model)
        except Exception as exc:  # noqa: BLE001 - recorded with its reason; the search goes on
            record.failure = record.failure or _reason(exc)
        self._tell(record)

    def _train_in_task(self, record: Any, model: Any) -> None:
        """One Spark task trains the trial with ``model.fit`` and reports each epoch (:mod:`sparkeras.worker.trial`)."""
        from sparkeras.data.columns import resolve_columns
        from sparkeras.data.packing import prepare
        from sparkeras.data.sources import Dataset
        from sparkeras.errors import worker_error
        from sparkeras.serialization import ModelSpec, model_state, pack_arrays
        from sparkeras.session import keras_backend
        from sparkeras.worker.tasks import WorkerSpec
        from sparkeras.worker.trial import TrialTask, run_trial

        frames, number = self.frames, record.trial.number
        columns = resolve_columns(model, frames.schema, frames.features_col, frames.label_col, frames.weight_col)
        check_class_weight_fits(self.class_weight, columns)
        model, columns = for_packed_data(model, columns, self.custom_objects)
        sc = frames.train.sparkSession.sparkContext
        prepared = []
        blob = None
        try:
            train = prepare(Dataset(frames.train, frames.features_col, frames.label_col), columns, 1)
            prepared.append(train)
            rows, validation_rows = train.blocks, 0
            if frames.validation is not None:
                val = prepare(Dataset(frames.validation, frames.features_col, frames.label_col),
                              columns.without_weights(), 1, "validation data")
                prepared.append(val)
                rows, validation_rows = rows.union(val.blocks), val.stats.rows
            if rows.getNumPartitions() > 1:
                rows = rows.coalesce(1)
            spec = WorkerSpec(ModelSpec.from_model(model, dict(self.custom_objects or {}) or None), columns,
                              keras_backend(), self.seed + number, class_weight=self.class_weight)
            task = TrialTask(spec, number, self.epochs, self._batch_size(record.trial), self.server.address,
                             train.stats.rows, validation_rows)
            blob = sc.broadcast(pack_arrays(model_state(model)))
            state = blob
            self.server.track(record)
            # A tag, not a job group: the user's group (a notebook cell's) must still cancel the trial.
            sc.setInterruptOnCancel(True)
            sc.setJobDescription(f"sparkeras trial {number}")
            sc.addJobTag(f"sparkeras-trial-{number}")
            try:
                rows.mapPartitions(lambda it: run_trial(task, state, it)).collect()
            except Exception as exc:  # noqa: BLE001 - translated: the worker's own error, not Spark's stack
                raise worker_error(exc, f"training trial {number}") from None
            finally:
                sc.removeJobTag(f"sparkeras-trial-{number}")
        finally:
            self.server.forget(record)
            if blob is not None:
                blob.unpersist()
            for p in prepared:
                p.release()

    def _warm_up(self, model: Any, workers: int) -> None:
        """Import the backend and build the first model in the Python workers while the data is packed.

        The same warm-up as a fit's (:func:`sparkeras.training.start_warm_up`):
        without it, cold workers import TensorFlow in the first trials, and
        the workers Spark started for packing the data do so again when the
        next trials land on them.
        """
        from sparkeras.data.columns import resolve_columns
        from sparkeras.serialization import ModelSpec
        from sparkeras.session import keras_backend
        from sparkeras.training import start_warm_up
        from sparkeras.worker.tasks import WorkerSpec

        columns = resolve_columns(model, self.frames.schema, self.frames.features_col, self.frames.label_col,
                                  self.frames.weight_col)
        model, columns = for_packed_data(model, columns, self.custom_objects)
        spec = WorkerSpec(ModelSpec.from_model(model, dict(self.custom_objects or {}) or None), columns,
                          keras_backend(), self.seed)
        start_warm_up(self.frames.train.sparkSession, spec, workers)

    def _train_distributed(self, record: Any, model: Any) -> None:
        """The trial is a :class:`SparkModel` fit over ``workers_per_trial`` tasks, judged on the driver."""
        from sparkeras.model import SparkModel
        from sparkeras.tune.reporting import trial_reporter

        fitter = SparkModel(model, copy.deepcopy(self.strategy), self.workers_per_trial,
                            custom_objects=self.custom_objects, seed=self.seed + record.trial.number)
        fitter._follows_autologging = False  # the search is the user's fit: trials are logged by `tracking=`
        fitter.fit(self.frames.train, validation_data=self.frames.validation, epochs=self.epochs,
                   batch_size=self._batch_size(record.trial), features_col=self.frames.features_col,
                   label_col=self.frames.label_col, callbacks=[trial_reporter(record, self.lock)], verbose=0,
                   class_weight=dict(self.class_weight) if self.class_weight else None,
                   weight_col=self.frames.weight_col)

    def _tell(self, record: Any) -> None:
        import optuna

        trial = record.trial
        if record.failure is None and record.last is None:
            record.failure = "the trial reported no epoch"
        if record.run is not None:
            status = "FAILED" if record.failure is not None else "KILLED" if record.pruned else "FINISHED"
            record.run.log(tags={"optuna.state": {"FAILED": "FAIL", "KILLED": "PRUNED"}.get(status, "COMPLETE"),
                                 **({"fail_reason": record.failure} if record.failure else {})})
            record.run.end(status)
        if record.failure is not None:
            self._fail(trial, record.failure)
            return
        with self.lock:
            if record.pruned:
                self._told(trial, state=optuna.trial.TrialState.PRUNED)
                detail = f"pruned after epoch {record.reported}, {self.metric}={record.last:.4g}"
                self.progress.finished(trial.number, "pruned", detail, self._best())
            else:
                self._told(trial, record.last)
                detail = f"{self.metric}={record.last:.4g} after {record.reported} epochs, {_params(trial)}"
                self.progress.finished(trial.number, "complete", detail, self._best())

    def _fail(self, trial: Any, reason: str) -> None:
        with self.lock:
            self._tell_failed(trial, reason)
            self.progress.finished(trial.number, "failed", reason, self._best())

    def _tell_failed(self, trial: Any, reason: str) -> None:
        import optuna

        trial.set_user_attr("fail_reason", reason)
        self._told(trial, state=optuna.trial.TrialState.FAIL)

    def _told(self, trial: Any, *args: Any, **kwargs: Any) -> None:
        """``study.tell``; a sampler that has run out of settings to try ends the search, as in ``optimize``.

        Why. Optuna's ``GridSampler`` calls ``study.stop()`` once its last
        point is taken, which only ``optimize`` allows: in the ask-and-tell
        loop here it raised ``RuntimeError`` after storing the trial, so a
        grid search failed at its end. No new trial starts after it.
        """
        try:
            self.study.tell(trial, *args, **kwargs)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise
            self._remaining = 0

    def _best(self) -> tuple[int, float] | None:
        try:
            best = self.study.best_trial
        except ValueError:  # no completed trial yet
            return None
        return best.number, best.value

    def _fail_interrupted(self) -> None:
        """Trials a stopped driver left running are failed, so the study can finish."""
        import optuna

        storage = self.study._storage
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
            storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)

    # -- checks ---------------------------------------------------------------

    def _check_metric(self, model: Any) -> None:
        """The metric must be one the fit reports for this model; checked on the first trial's model."""
        from sparkeras.data.columns import resolve_columns
        from sparkeras.training import MetricReader

        columns = resolve_columns(model, self.frames.schema, self.frames.features_col, self.frames.label_col)
        model, columns = for_packed_data(model, columns, self.custom_objects)
        MetricReader(model, columns)  # builds the compiled metrics without a step
        results = model.get_metrics_result()
        model.reset_metrics()
        names = list(results)
        available = names + ([f"val_{n}" for n in names] if self.frames.validation is not None else [])
        base = self.metric[4:] if self.metric.startswith("val_") and self.metric[4:] in results else self.metric
        if base in results and is_per_class(results[base]):
            raise InputError(f"metric={self.metric!r} has one value per class ({np.asarray(results[base]).size}), "
                             "and the search needs one number: compile the metric with average='macro' (or "
                             "'weighted', 'micro'), or choose another metric.")
        if self.metric not in available:
            hint = "" if self.frames.validation is not None or not self.metric.startswith("val_") else \
                " (there is no validation data: set validation_split or validation_data)"
            raise InputError(f"metric={self.metric!r} is not one the fit reports for this model{hint}; "
                             f"choose one of {available}.")


def trial_batch_size(params: Mapping[str, Any], default: int) -> int:
    """A trial's batch size: its drawn ``batch_size`` parameter where it has one, else ``default``.

    Why a parameter's name. The batch size is a fit's argument, not the
    model's, so ``build_model`` cannot set it; it is among the settings most
    often searched, and a ``search_space`` entry or a
    ``trial.suggest_int("batch_size", ...)`` is how Optuna users draw it.
    """
    value = params.get("batch_size", default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"the drawn batch_size must be a positive integer, got {value!r}.")
    return value


def _params(trial: Any) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())


def _reason(exc: BaseException) -> str:
    """One line: why the trial failed (the worker's exception, not the Spark stack)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if "Traceback" in str(exc) else lines[0]
    if isinstance(exc, SparkerasError) and "Traceback" not in str(exc):
        return line[:500]
    return (line if ":" in line.split(" ", 1)[0] else f"{type(exc).__name__}: {line}")[:500]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise InputError("sparkeras.tune needs Optuna; install it with: pip install 'sparkeras[tune]'") from None
    return optuna


def _open_study(optuna: Any, storage: Any, study_name: str | None, load_if_exists: bool, direction: str,
                sampler: Any, pruner: Any, seed: int) -> Any:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints its own lines
    try:
        return optuna.create_study(
            storage=storage, study_name=study_name, load_if_exists=load_if_exists, direction=direction,
            sampler=sampler if sampler is not None else optuna.samplers.TPESampler(seed=seed),
            pruner=pruner if pruner is not None else optuna.pruners.MedianPruner())
    except optuna.exceptions.DuplicatedStudyError:
        raise InputError(f"A study named {study_name!r} already exists in {storage!r}; pass load_if_exists=True "
                         "to resume it, or choose another study_name.") from None


def _check_arguments(build_model: Any, n_trials: Any, timeout: Any, metric: Any, direction: Any, epochs: Any,
                     batch_size: Any, validation_split: Any, validation_data: Any, workers_per_trial: Any,
                     max_concurrent: Any, verbose: Any) -> None:
    """Everything that needs neither Spark nor Keras, checked before either starts."""
    if not callable(build_model):
        raise InputError(f"build_model must be a function of an Optuna trial returning a compiled Keras model; "
                         f"got {type(build_model).__name__}.")
    if n_trials is None and timeout is None:
        raise InputError("Give n_trials, timeout or both: otherwise the search would never end.")
    for name, value in (("n_trials", n_trials), ("epochs", epochs), ("batch_size", batch_size),
                        ("workers_per_trial", workers_per_trial), ("max_concurrent", max_concurrent)):
        if value is None and name in ("n_trials", "max_concurrent"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if timeout is not None and (not isinstance(timeout, (int, float)) or not math.isfinite(timeout)
                                or timeout <= 0):
        raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if not isinstance(metric, str) or not metric:
        raise InputError(f"metric must name a metric the fit reports, such as 'val_loss'; got {metric!r}.")
    if direction not in _DIRECTIONS:
        raise InputError(f"direction must be 'minimize' or 'maximize', got {direction!r}.")
    if validation_data is None and not (isinstance(validation_split, (int, float)) and 0 <= validation_split < 1):
        raise InputError(f"validation_split must be in [0, 1), got {validation_split!r}.")
    if validation_data is None and not validation_split and metric.startswith("val_"):
        raise InputError(f"metric={metric!r} needs validation data: set validation_split or validation_data.")
    if verbose not in (0, 1, 2, True, False):
        raise InputError(f"verbose must be 0 or 1, got {verbose!r}.")
