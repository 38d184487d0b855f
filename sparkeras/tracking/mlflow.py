"""MLflow tracking for fits, Spark ML stages and searches.

:class:`MLflowLogger` is a Keras callback that runs on the driver, where
``SparkModel.fit`` ends each epoch with the exact, all-worker figures. It
talks to the tracking store through ``MlflowClient`` with explicit run ids,
so it works from any thread (a search logs its trials from several) and
never disturbs the caller's own active run. The fit's description reaches
it through ``self.params`` (see ``sparkeras.model._callback_list``).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import tempfile
import time
from concurrent.futures import Future
from typing import Any, Callable, Mapping, Sequence

import keras

from sparkeras.errors import InputError
from sparkeras.log import logger
from sparkeras.metric_values import flat_numbers
from sparkeras.storage.model_file import save_keras
from sparkeras.tracking.servers import check_tracking_server
from sparkeras.worker.runtime import native_logs_wanted

_INSTALL = "MLflow is not installed: pip install 'sparkeras[tracking]' (or pip install mlflow-skinny)."
METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch
_FIT_PARAMS = ("strategy", "num_workers", "batch_size", "epochs", "data", "train_rows", "validation_rows")


def require_mlflow() -> None:
    """Fail early, naming the package to install, when MLflow is missing."""
    if importlib.util.find_spec("mlflow") is None:
        raise InputError(_INSTALL)


class _Writer:
    """One background thread that performs every MLflow store write of the process, in order.

    A write to a sqlite or remote store costs 10-20 ms; a fit that waited
    for each (its params, every epoch, the model, the end) spent several
    percent of a short fit on them. Queued here, they run while training
    goes on. Nothing is lost at exit: the queue is drained (for up to
    ``DRAIN_SECONDS``) before the interpreter stops.
    """

    DRAIN_SECONDS = 60.0

    def __init__(self) -> None:
        import atexit
        import queue
        import threading

        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="sparkeras-mlflow", daemon=True)
        self._thread.start()
        atexit.register(self.drain)

    def submit(self, write: Any) -> Any:
        """Queue ``write()``; returns an event set once it ran (failed or not)."""
        import threading

        done = threading.Event()
        self._queue.put((write, done))
        return done

    def _serve(self) -> None:
        while True:
            write, done = self._queue.get()
            try:
                write()
            except Exception as exc:  # noqa: BLE001 - reported, and the next writes still run
                logger.warning("MLflow logging failed: %s: %s", type(exc).__name__, exc)
            finally:
                done.set()

    def drain(self) -> None:
        self.submit(lambda: None).wait(self.DRAIN_SECONDS)


_WRITER: _Writer | None = None


def _writer() -> _Writer:
    global _WRITER
    if _WRITER is None:
        _WRITER = _Writer()
    return _WRITER


_EXPERIMENTS: dict[tuple[str, str], str] = {}  # (tracking URI, name) -> id, found or created once per process


def _experiment_id(client: Any, uri: str, name: str) -> str:
    key = (uri, name)
    if key not in _EXPERIMENTS:
        found = client.get_experiment_by_name(name)
        _EXPERIMENTS[key] = found.experiment_id if found is not None else client.create_experiment(name)
    return _EXPERIMENTS[key]


def _quiet_store_set_up() -> None:
    """Hold back MLflow's INFO lines about setting up a database store, unless debug output was asked for.

    A new sqlite store prints ``Creating initial MLflow database tables...``
    and ``Updating database tables`` to stderr, as start-up noise of the
    same kind as TensorFlow's banners; ``SPARKERAS_DEBUG=1`` (the CLI's
    ``--debug``) shows them again. Its warnings and errors still show.
    """
    if not native_logs_wanted():
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


class RunHandle:
    """One MLflow run, addressed by id through ``MlflowClient``: params, metric batches, the end.

    The fluent API (``mlflow.log_metric``) keeps the active run per
    thread; a search logs its trials' epochs from its server thread, so
    every call here names its run instead. Writes go through the
    process's background :class:`_Writer`, in order; :meth:`wait` returns
    once this run's are done.
    """

    WAIT_SECONDS = 300.0

    def __init__(self, client: Any, run_id: str, owned: bool, experiment_id: str) -> None:
        self.client, self.run_id, self.owned, self.experiment_id = client, run_id, owned, experiment_id
        self._last: Any = None  # the event of this run's latest queued write

    @classmethod
    def start(cls, experiment: str | None, run_name: str | None, parent: str | None = None,
              tags: Mapping[str, str] | None = None, reuse_active: bool = True) -> "RunHandle":
        """A new run in ``experiment`` (a child of ``parent``), or the caller's active run.

        With no experiment named and a run active in this thread (``with
        mlflow.start_run():`` around the fit), the fit logs into that run
        and leaves it open, as MLflow's autologging does.
        """
        return cls._opener(experiment, run_name, parent, tags, reuse_active)()

    @classmethod
    def start_soon(cls, experiment: str | None, run_name: str | None,
                   tags: Mapping[str, str] | None = None) -> "Future[RunHandle]":
        """:meth:`start`, with the store's writes on the background writer; the future holds the run or the error.

        Creating a run is one to three store writes (20-30 ms on sqlite).
        ``SparkModel.fit`` starts it before it reads the data, so it is done
        by the time training begins instead of adding to the fit.
        """
        open_run = cls._opener(experiment, run_name, None, tags, True)
        future: Future[RunHandle] = Future()

        def create() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(open_run())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the run
                    future.set_exception(exc)

        _writer().submit(create)
        return future

    @classmethod
    def _opener(cls, experiment: str | None, run_name: str | None, parent: str | None,
                tags: Mapping[str, str] | None, reuse_active: bool) -> "Callable[[], RunHandle]":
        """:meth:`start`, split where a thread may change: what the caller's thread holds is read now.

        MLflow keeps the active run per thread, so it is read here; the
        returned function makes the store calls and may run on any thread.
        """
        import mlflow

        _quiet_store_set_up()
        uri, active = mlflow.get_tracking_uri(), mlflow.active_run()
        check_tracking_server(uri, "MLflowLogger(tracking_uri=...), mlflow.set_tracking_uri or MLFLOW_TRACKING_URI")
        reuse = reuse_active and experiment is None and parent is None and active is not None
        all_tags = dict(tags or {})
        if parent is None and active is not None:
            parent = active.info.run_id
        if parent is not None:
            all_tags["mlflow.parentRunId"] = parent

        def open_run() -> RunHandle:
            from mlflow import MlflowClient

            client = MlflowClient(uri)
            if reuse:
                return cls(client, active.info.run_id, owned=False, experiment_id=active.info.experiment_id)
            if experiment is not None:
                experiment_id = _experiment_id(client, uri, experiment)
            elif active is not None:
                experiment_id = active.info.experiment_id
            else:
                from mlflow.tracking.fluent import _get_experiment_id

                experiment_id = _get_experiment_id() or "0"
            run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
            return cls(client, run.info.run_id, owned=True, experiment_id=experiment_id)

        return open_run

    def log(self, params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
            step: int = 0, tags: Mapping[str, Any] | None = None) -> int:
        """Queue params, finite metrics at ``step`` and tags, in as few store writes as MLflow's limits allow.

        Returns the metrics' timestamp (ms): a metric logged again with the
        same key, step, timestamp and value is the same point to the store.
        """
        from mlflow.entities import Param, RunTag

        now = int(time.time() * 1000)
        items = {
            "params": [Param(k, _text(v)) for k, v in (params or {}).items() if v is not None],
            "metrics": _metric_points(metrics, now, step),
            "tags": [RunTag(k, _text(v)) for k, v in (tags or {}).items()],
        }
        while any(items.values()):
            batch = {k: v[:100] for k, v in items.items()}  # MLflow's limit: 100 params or tags per batch
            items = {k: v[100:] for k, v in items.items()}
            self.submit(lambda batch=batch: self.client.log_batch(self.run_id, **batch))
        return now

    def log_points(self, points: list[Any]) -> None:
        """Queue metric points (``mlflow.entities.Metric``, each with its own step and time) in few writes."""
        self.submit(lambda: _log_metrics_now(self.client, self.run_id, points))

    def submit(self, write: Any) -> None:
        """Queue any write for this run, after the ones queued before it."""
        self._last = _writer().submit(write)

    def end(self, status: str = "FINISHED") -> None:
        """Queue the run's end if this handle started it (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self.owned:
            self.submit(lambda: self.client.set_terminated(self.run_id, status))

    def wait(self) -> None:
        """Return once every write queued for this run is done."""
        if self._last is not None and not self._last.wait(self.WAIT_SECONDS):
            raise TimeoutError(f"MLflow run {self.run_id}: the tracking store took more than "
                               f"{self.WAIT_SECONDS:.0f}s to take its writes; is it reachable?")


class MLflowLogger(keras.callbacks.Callback):
    """Log a ``SparkModel.fit`` to MLflow: its settings, every epoch's metrics, timings and the model.

    Pass it in ``callbacks=`` (or set ``mlflowExperiment`` on a
    ``KerasEstimator``). It logs:

    * params: the strategy and its options, ``num_workers``,
      ``batch_size``, ``epochs``, the data source and its row counts, the
      optimizer's config (``optimizer.*``) and the loss;
    * metrics at each epoch (step = epoch): the loss and compiled metrics
      with their ``val_`` twins, exactly as the History has them;
      ``epoch_seconds``; ``samples_per_second``; and once, at step 0,
      ``setup_seconds``, the fit's fixed cost (data packing, worker start)
      before the first epoch began;
    * the trained model as an MLflow Keras model named ``model`` (with
      ``log_model=True``); ``mlflow.pyfunc.load_model(logger.model_uri)``
      reloads and scores it (the URI is also the run's
      ``sparkeras.model_uri`` tag). Its metrics are those of the epoch whose
      weights it holds: after ``EarlyStopping(restore_best_weights=True)``
      the best epoch's, logged again one step after the last epoch with
      ``restored_epoch`` and ``stopped_epoch``, as MLflow's own Keras
      autologging does.

    The store writes run on a background thread while training goes on
    (each costs 10-20 ms on a sqlite store), in order, and are finished
    before the process exits. ``logger.wait()``, or reading
    ``logger.model_uri``, waits for them. Epochs shorter than
    ``FLUSH_SECONDS`` are written together, at most that long after they
    end (each point keeps its epoch's step and time): each write costs
    4-8 ms of the driver's CPU on a sqlite store, and where the workers
    keep every core busy (``local[2]`` on 2 cores) that CPU comes out of
    training.

    Args:
        tracking_uri: where to log (``sqlite:///mlflow.db``, a server URL);
            set as the process's MLflow tracking URI, as
            ``mlflow.set_tracking_uri`` does. Default: MLflow's own.
        experiment: the experiment's name, created if missing. Default: the
            active run's, or MLflow's current one.
        run_name: the run's name (default ``sparkeras-<strategy>``).
        log_model: log the trained model at the end of the fit.
        registered_model_name: also register the logged model under this
            name in MLflow's model registry, as a new version each fit
            (as ``mlflow.keras.log_model(registered_model_name=...)``);
            ``logger.registered_version`` is its number.
        tags: tags for a run the logger creates (not for your active run).

    With no ``experiment`` and an active run (``with mlflow.start_run():``)
    the fit logs into that run and leaves it open.
    """

    FLUSH_SECONDS = 5.0
    autologging = False  # made by MLflow's autologging (sparkeras.tracking.autolog), not by the user

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None, log_model: bool = True, registered_model_name: str | None = None,
                 tags: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for name, value in (("tracking_uri", tracking_uri), ("experiment", experiment), ("run_name", run_name),
                            ("registered_model_name", registered_model_name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise InputError(f"MLflowLogger's {name} must be a non-empty string, got {value!r}.")
        if registered_model_name is not None and not log_model:
            raise InputError(f"MLflowLogger(registered_model_name={registered_model_name!r}) registers the logged "
                             f"model, but log_model=False logs none: drop one of the two.")
        if tags is not None and not isinstance(tags, Mapping):
            raise InputError(f"MLflowLogger's tags must be a dict of names to values, got {tags!r}.")
        require_mlflow()
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.log_model = bool(log_model)
        self.registered_model_name = registered_model_name
        self.tags = {str(k): _text(v) for k, v in (tags or {}).items()}
        self._registered_version: int | None = None
        self.run: RunHandle | None = None
        self._model_uri: str | None = None
        self._epoch_started = 0.0
        self._figures: dict[str, float] = {}
        self._params: dict[str, Any] = {}
        self._last_logged: tuple[int, dict[str, Any], int | None] = (0, {}, None)  # the last epoch's: the model's
        self._logged_model: LoggedKerasModel | None = None  # created (PENDING) as training begins
        self._pending: Future[RunHandle] | None = None  # the run on_fit_start began
        self._held: list[Any] = []  # epochs' metric points not written yet (FLUSH_SECONDS)
        self._flushed_at = 0.0
        self._restorers: list[Any] = []  # the fit's EarlyStopping(restore_best_weights=True) callbacks
        self._epoch_logs: dict[int, dict[str, Any]] = {}

    @property
    def run_id(self) -> str | None:
        """The id of the run the last fit logged to."""
        return None if self.run is None else self.run.run_id

    def on_fit_start(self, strategy: str) -> None:
        """Called by ``SparkModel.fit`` before it reads the data: the run is created meanwhile, in the background.

        ``on_train_begin`` takes it, and raises there if the store refused
        it, before the first epoch. Under plain ``model.fit``, where this
        is not called, ``on_train_begin`` creates the run itself.
        """
        self.run = None
        self._restorers = []
        self._set_tracking_uri()
        self._pending = RunHandle.start_soon(self.experiment, self.run_name or f"sparkeras-{strategy}",
                                             tags=self._run_tags(strategy))

    def watch_callbacks(self, callbacks: Sequence[Any]) -> None:
        """Called by ``SparkModel.fit`` with the fit's other callbacks, to see which restore the best weights."""
        self._restorers = [c for c in callbacks
                           if isinstance(c, keras.callbacks.EarlyStopping) and c.restore_best_weights]

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        started = time.perf_counter()
        self._epoch_logs = {}
        self._registered_version = None
        params = dict(self.params or {})
        self.run = self._take_run(params.get("strategy", "fit"))
        setup = {"setup_seconds": started - float(params["fit_started"])} if "fit_started" in params else {}
        self._params = fit_params(params, self.model)
        self._last_logged = (0, {}, None)
        self._held, self._flushed_at = [], time.monotonic()
        self.run.log(params=self._params, metrics=setup, step=0)
        self._logged_model = LoggedKerasModel(self.run, params=self._params) if self.log_model else None

    def _take_run(self, strategy: str) -> RunHandle:
        """The run :meth:`on_fit_start` began, or a new one; an :class:`InputError` naming the store if it fails."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                return pending.result(timeout=RunHandle.WAIT_SECONDS)
            self._set_tracking_uri()
            return RunHandle.start(self.experiment, self.run_name or f"sparkeras-{strategy}",
                                   tags=self._run_tags(strategy))
        except TimeoutError:
            raise InputError(f"MLflowLogger waited {RunHandle.WAIT_SECONDS:.0f}s for the tracking store at "
                             f"{self._uri()!r} to create a run in experiment {self.experiment!r}; is it "
                             f"reachable?") from None
        except Exception as exc:  # noqa: BLE001 - MLflow's errors are many; the store is what to check
            raise InputError(f"MLflowLogger cannot start a run in experiment {self.experiment!r} at tracking URI "
                             f"{self._uri()!r}: {exc}") from None

    def _run_tags(self, strategy: str) -> dict[str, str]:
        return {**self.tags, "sparkeras.strategy": strategy}

    def _set_tracking_uri(self) -> None:
        if self.tracking_uri is not None:
            import mlflow

            mlflow.set_tracking_uri(self.tracking_uri)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch_started = time.perf_counter()

    def on_epoch_figures(self, figures: Any) -> None:
        """sparkeras' own epoch figures (:class:`sparkeras.training.EpochFigures`), before ``on_epoch_end``."""
        waits = [w["wait_seconds"] for w in figures.workers.values()]
        self._figures = {"samples_per_second": figures.samples / max(figures.seconds, 1e-9),
                         "max_wait_seconds": max(waits, default=0.0)}  # logged with the epoch's metrics

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.run is None:
            return
        metrics = {**dict(logs or {}), **self._figures, "epoch_seconds": time.perf_counter() - self._epoch_started}
        self._figures = {}
        timestamp = int(time.time() * 1000)
        self._last_logged = (epoch, metrics, timestamp)
        self._epoch_logs[epoch] = dict(logs or {})
        last = epoch == int((self.params or {}).get("epochs", 0)) - 1
        logged = self._logged_model
        if logged is not None and last and not self._restorers:
            # The last epoch's figures are the saved model's: written once, as the run's and the model's,
            # in the same write as the epochs held back.
            held, self._held = self._held, []
            self.run.submit(lambda: logged.link(epoch, metrics, timestamp, earlier=held))
            return
        self._held.extend(_metric_points(metrics, timestamp, epoch))
        if last or time.monotonic() - self._flushed_at >= self.FLUSH_SECONDS:
            self._flush()

    def _flush(self) -> None:
        """Queue the epochs' metrics held back since the last write."""
        held, self._held = self._held, []
        self._flushed_at = time.monotonic()
        if held and self.run is not None:
            self.run.log_points(held)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.run is None:
            return
        self._flush()  # a fit stopped early, before its last epoch
        if self._logged_model is not None:
            logged, (step, metrics, timestamp) = self._logged_model, self._last_logged
            self._logged_model = None
            restored = self._restored_epoch()
            if restored is not None and restored != step:  # the model holds an earlier epoch's weights
                metrics = {**self._epoch_logs[restored], "restored_epoch": restored, "stopped_epoch": step}
                step, timestamp = step + 1, int(time.time() * 1000)
            try:
                saved = SavedKerasFile.of(self.model)
            except Exception as exc:  # noqa: BLE001 - the fit succeeded; only the model cannot be logged
                logger.warning("MLflowLogger cannot log the model, as Keras cannot save it: %s: %s",
                               type(exc).__name__, exc)
                logged.fail()
            else:
                def finish() -> None:
                    self._model_uri = logged.finish(saved, step=step, metrics=metrics, timestamp=timestamp)
                    if self.registered_model_name is not None:
                        self._registered_version = register_model(logged, self.registered_model_name)

                self.run.submit(finish)
        self.run.end("FINISHED")

    def _restored_epoch(self) -> int | None:
        """The epoch whose weights an ``EarlyStopping`` set back at the end of the fit, if one did."""
        for callback in self._restorers:
            best = getattr(callback, "best_epoch", None)
            if callback.best_weights is not None and best is not None and int(best) in self._epoch_logs:
                return int(best)
        return None

    @property
    def model_uri(self) -> str | None:
        """Where the last fit's model was logged (``models:/...``), once its writes are done."""
        self.wait()
        return self._model_uri

    @property
    def registered_version(self) -> int | None:
        """The model registry version the last fit's model became (``registered_model_name``), once written."""
        self.wait()
        return self._registered_version

    def wait(self) -> None:
        """Return once everything the last fit logged is in the store.

        The writes run in the background while training goes on, and are
        finished before the process exits; call this before reading the
        run back in the same process.
        """
        if self.run is not None:
            self.run.wait()

    def on_fit_failed(self, error: BaseException) -> None:
        """Called by ``SparkModel.fit`` when the fit raises: the run ends ``FAILED``, with the reason.

        A fit that fails while reading its data, after :meth:`on_fit_start`
        began the run, ends that run the same way.
        """
        if self._pending is not None:
            try:
                self.run = self._take_run("fit")
            except InputError as exc:
                logger.warning("%s", exc)
                return
        if self.run is not None:
            try:
                self._flush()
                self.run.log(tags={"sparkeras.error": f"{type(error).__name__}: {error}"[:5000]})
                if self._logged_model is not None:
                    self._logged_model.fail()
                    self._logged_model = None
                self.run.end("FAILED")
            except Exception:  # noqa: BLE001 - the fit's own error is the one to raise
                logger.warning("MLflowLogger could not mark run %s failed", self.run.run_id)

    def log_spark_ml_model(self, stage: Any, artifact_path: str = "spark_ml_model") -> None:
        """Save a fitted Spark ML stage (``KerasModel``) into the run, reloadable with ``KerasModel.load``."""
        if self.run is None:
            raise InputError("MLflowLogger has no run yet: log the stage after the fit that trained it.")
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "stage")
            stage.save(path)
            self.run.client.log_artifacts(self.run.run_id, path, artifact_path)

    def _uri(self) -> str:
        import mlflow

        return self.tracking_uri or mlflow.get_tracking_uri()


def fit_params(params: Mapping[str, Any], model: Any) -> dict[str, Any]:
    """The MLflow params of a fit: its description, the strategy's options and the compile settings."""
    out = {k: params[k] for k in _FIT_PARAMS if k in params}
    for key, value in dict(params.get("strategy_options") or {}).items():
        out[f"strategy.{key}"] = value
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        out["optimizer"] = type(optimizer).__name__
        for key, value in optimizer.get_config().items():
            if key != "name" and (value is None or isinstance(value, (bool, int, float, str))):
                out[f"optimizer.{key}"] = value
    loss = getattr(model, "loss", None)
    if loss is not None:
        out["loss"] = loss if isinstance(loss, str) else getattr(loss, "name", type(loss).__name__)
    return out


class SavedKerasFile:
    """A Keras model saved to a ``.keras`` file, in the one role ``mlflow.keras.save_model`` gives a model.

    The model is logged in the background, after ``fit`` has returned and
    the caller may be training it further, so :meth:`of` fixes its weights
    on the fit's thread by saving it (9 ms for an MLP, with :func:`save_keras`),
    with its signature. MLflow's Keras flavor calls only ``model.save(path)`` on the
    model it is given (MLflow 3.x), so passing this moves the file into the
    flavor's directory instead of serializing the model a second time. (A
    copy of the config and weights, rebuilt on the writer thread, cost as
    much on the fit's thread and 10-18 ms more there.)
    """

    def __init__(self, path: str, directory: Any, signature: Any) -> None:
        self.path, self._directory, self.signature = path, directory, signature

    @classmethod
    def of(cls, model: Any) -> "SavedKerasFile":
        directory = tempfile.TemporaryDirectory(prefix="sparkeras-model-")
        try:
            path = os.path.join(directory.name, "model.keras")
            save_keras(model, path)
            return cls(path, directory, _signature(model))
        except BaseException:
            directory.cleanup()
            raise

    def save(self, path: str, **kwargs: Any) -> None:
        import shutil

        shutil.move(self.path, path)
        self.cleanup()

    def cleanup(self) -> None:
        self._directory.cleanup()


class _NoModelYet:
    """Stands for the model in ``mlflow.keras.save_model`` while the flavor's other files are made: saves nothing."""

    def save(self, path: str, **kwargs: Any) -> None:
        open(path, "wb").close()


class FlavorFiles:
    """The Keras flavor's files other than the model's own, uploaded while training goes on.

    ``mlflow.keras.save_model`` writes, beside the ``.keras`` file, the
    ``MLmodel`` description, the environment files and the Keras module's
    name; with the upload and the artifact store's lookup, that was 10-15 ms
    of the writer's CPU after ``fit`` returned, which the fit waited for. None
    of it depends on the weights, so :meth:`upload` makes and uploads it when
    the LoggedModel is created, and :meth:`complete` uploads only the
    ``.keras`` file and then the ``MLmodel`` (last, with the model's size).
    """

    def __init__(self, description: Any, data_bytes: int) -> None:
        self.description, self.data_bytes = description, data_bytes

    @classmethod
    def upload(cls, client: Any, model_id: str, description: Any) -> "FlavorFiles":
        import logging

        import mlflow
        from mlflow.models.model import MLMODEL_FILE_NAME

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model")
            warns = logging.getLogger("mlflow.keras.save")  # of the signature, which complete() adds
            level = warns.level
            warns.setLevel(logging.ERROR)  # setLevel, not the attribute: it also clears the logger's cached checks
            try:
                mlflow.keras.save_model(_NoModelYet(), path, mlflow_model=description, pip_requirements=_requirements())
            finally:
                warns.setLevel(level)
            os.remove(os.path.join(path, MLMODEL_FILE_NAME))
            os.remove(os.path.join(path, _KERAS_DATA, _KERAS_FILE))
            client.log_model_artifacts(model_id, path)
        return cls(description, int(description.model_size_bytes or 0))  # the data folder's other files

    def complete(self, client: Any, model_id: str, saved: SavedKerasFile) -> None:
        from mlflow.models.model import MLMODEL_FILE_NAME

        client.log_model_artifact(model_id, saved.path, _KERAS_DATA)
        self.description.signature = saved.signature
        self.description.model_size_bytes = self.data_bytes + os.path.getsize(saved.path)
        with tempfile.TemporaryDirectory() as tmp:
            self.description.save(os.path.join(tmp, MLMODEL_FILE_NAME))
            client.log_model_artifact(model_id, os.path.join(tmp, MLMODEL_FILE_NAME))


_KERAS_DATA, _KERAS_FILE = "data", "model.keras"  # where mlflow.keras.save_model puts the .keras file (MLflow 3.x)


def _metric_points(metrics: Mapping[str, Any] | None, timestamp: int, step: int, **ids: str) -> list[Any]:
    """MLflow ``Metric`` entities for the finite numbers among ``metrics`` (MLflow refuses NaN in some stores).

    A per-class metric (``F1Score``) is one metric per class, ``f1_score_0``...
    """
    from mlflow.entities import Metric

    return [Metric(k, v, timestamp, int(step), **ids) for k, v in flat_numbers(metrics).items() if math.isfinite(v)]


def _log_metrics_now(client: Any, run_id: str, points: list[Any]) -> None:
    """Write metric points in as few ``log_batch`` calls as MLflow's limit allows (on the writer thread)."""
    for start in range(0, len(points), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=points[start:start + METRICS_PER_BATCH])


class LoggedKerasModel:
    """An MLflow 3 LoggedModel of the Keras flavor, made in two steps: created as training begins, filled at its end.

    :meth:`__init__` queues the model's creation (``PENDING``, with the
    fit's ``params``) on the run's writer, so it is done while the workers
    train; :meth:`link` makes it the run's output with the metrics of the
    weights it will hold; :meth:`finish` saves the flavor's files, uploads
    them and marks it ``READY``, and
    :meth:`fail` marks it ``FAILED``. This is what
    ``mlflow.models.Model.log`` does, without what costs there: that reads
    the run back twice and every metric's whole history to link the
    metrics of one step, and resolves context tags (git, user) that the run
    already has. Logging an MLP on a sqlite store took 80-90 ms of CPU
    that way, all of it after the fit.

    The signature comes from the model's input and output shapes, and the
    requirements are the installed Keras and backend versions, so MLflow
    need not run the model in a subprocess to infer them (6 s). The
    flavor's files other than the ``.keras`` file and the ``MLmodel`` are
    made and uploaded right after the creation (:class:`FlavorFiles`).
    """

    def __init__(self, run: RunHandle, name: str = "model", params: Mapping[str, Any] | None = None) -> None:
        self.run, self.name = run, name
        self.model_id: str | None = None
        self.artifact_location: str | None = None
        self.linked = False  # the run's output, with its epoch's metrics
        self._flavor: FlavorFiles | None = None
        texts = {k: _text(v) for k, v in (params or {}).items() if v is not None}
        run.submit(lambda: self._create(texts))

    def _create(self, params: dict[str, str]) -> None:
        logged = self.run.client.create_logged_model(self.run.experiment_id, name=self.name,
                                                     source_run_id=self.run.run_id, params=params)
        self.model_id, self.artifact_location = logged.model_id, logged.artifact_location
        try:
            self._flavor = FlavorFiles.upload(self.run.client, self.model_id, self._description())
        except Exception as exc:  # noqa: BLE001 - finish() writes them all at the end instead
            logger.debug("the Keras flavor's files could not be prepared: %s", exc)

    def _description(self) -> Any:
        from mlflow.models import Model

        return Model(artifact_path=self.artifact_location, model_uuid=self.model_id, run_id=self.run.run_id,
                     model_id=self.model_id)

    @property
    def uri(self) -> str:
        return f"models:/{self.model_id}"

    def link(self, step: int, metrics: Mapping[str, Any] | None, timestamp: int | None = None,
             earlier: Sequence[Any] = ()) -> None:
        """On the writer thread: make the model the run's output at epoch ``step``, with that epoch's metrics.

        The ``metrics`` are written once, as the run's and the model's at
        ``timestamp`` (the run keeps one point per step), with the run's
        ``sparkeras.model_uri`` tag. ``MLflowLogger`` calls this as the
        last epoch ends, so at the fit's end only the files remain. The
        run's ``earlier`` metric points (epochs not written yet) go in the
        same write when MLflow's limit allows.
        """
        from mlflow.entities import LoggedModelOutput, RunTag

        client = self.run.client
        now = int(time.time() * 1000) if timestamp is None else timestamp
        if self.model_id is None:  # the run keeps its figures all the same
            _log_metrics_now(client, self.run.run_id, list(earlier) + _metric_points(metrics, now, step))
            raise RuntimeError("the LoggedModel was not created; see the warning logged before this one")
        client.log_outputs(self.run.run_id, [LoggedModelOutput(self.model_id, step=step)])
        points = _metric_points(metrics, now, step, run_id=self.run.run_id, model_id=self.model_id)
        earlier = list(earlier)
        if len(earlier) + len(points) > METRICS_PER_BATCH:
            _log_metrics_now(client, self.run.run_id, earlier)
            earlier = []
        client.log_batch(self.run.run_id, metrics=earlier + points, tags=[RunTag("sparkeras.model_uri", self.uri)])
        self.linked = True

    def finish(self, model: Any, step: int = 0, metrics: Mapping[str, Any] | None = None,
               timestamp: int | None = None) -> str:
        """Fill and finalize the model, on the writer thread; returns its ``models:/`` URI.

        ``model`` is a Keras model or a :class:`SavedKerasFile`. Unless
        :meth:`link` ran, the ``metrics`` of epoch ``step`` are linked first
        (see there).
        """
        import mlflow
        from mlflow.entities import LoggedModelStatus

        saved = model
        try:
            if not self.linked:
                self.link(step, metrics, timestamp)
            if not isinstance(saved, SavedKerasFile):
                saved = SavedKerasFile.of(model)
            if self._flavor is not None:
                self._flavor.complete(self.run.client, self.model_id, saved)
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "model")
                    mlflow.keras.save_model(saved, path, mlflow_model=self._description(), signature=saved.signature,
                                            pip_requirements=_requirements())
                    self.run.client.log_model_artifacts(self.model_id, path)
        except BaseException:
            self._failed()
            raise
        finally:
            if isinstance(saved, SavedKerasFile):
                saved.cleanup()
        self._finalize(LoggedModelStatus.READY)
        return self.uri

    def fail(self) -> None:
        """Queue marking the model ``FAILED`` (the fit that was to fill it raised)."""
        self.run.submit(self._failed)

    def _failed(self) -> None:
        """Mark the model ``FAILED``; the run's tag no longer points at it."""
        from mlflow.entities import LoggedModelStatus

        if self.linked:
            self.run.client.delete_tag(self.run.run_id, "sparkeras.model_uri")
        self._finalize(LoggedModelStatus.FAILED)

    def _finalize(self, status: Any) -> None:
        if self.model_id is not None:
            self.run.client.finalize_logged_model(self.model_id, status)


def register_model(logged: "LoggedKerasModel", name: str) -> int:
    """Register a logged model under ``name`` (created if missing) as a new version; returns its number.

    Through the run's own client rather than ``mlflow.register_model``,
    which prints its progress to stderr: this runs on the writer thread,
    while the fit's progress bar may be drawing.
    """
    from mlflow.exceptions import MlflowException

    client = logged.run.client
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(name, source=logged.uri, run_id=logged.run.run_id,
                                          model_id=logged.model_id)
    return int(version.version)


def log_keras_model(model: Any, run: RunHandle, name: str = "model", params: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, Any] | None = None, step: int = 0, timestamp: int | None = None) -> str:
    """Log ``model`` in ``run`` now, as a READY :class:`LoggedKerasModel`; returns its ``models:/`` URI."""
    logged = LoggedKerasModel(run, name, params)
    run.wait()
    return logged.finish(model, step=step, metrics=metrics, timestamp=timestamp)


def _signature(model: Any) -> Any:
    """The model's input and output tensor specs, for single-input, single-output models; else ``None``."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs, outputs = getattr(model, "inputs", None), getattr(model, "outputs", None)
    if not inputs or not outputs or len(inputs) != 1 or len(outputs) != 1:
        return None

    def spec(tensor: Any) -> Any:
        shape = tuple(-1 if d is None else int(d) for d in tensor.shape)
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        return Schema([TensorSpec(np.dtype(object) if dtype == "string" else np.dtype(dtype), shape)])

    return ModelSignature(inputs=spec(inputs[0]), outputs=spec(outputs[0]))


_BACKEND_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",), "torch": ("torch",)}


def _requirements() -> list[str]:
    """``keras==x`` and the backend's installed distribution (looked up by name: scanning every one costs 0.7 s)."""
    from importlib.metadata import PackageNotFoundError, version

    found = [f"keras=={version('keras')}"]
    for dist in _BACKEND_DISTRIBUTIONS.get(keras.backend.backend(), ()):
        try:
            found.append(f"{dist}=={version(dist)}")
            break
        except PackageNotFoundError:
            continue
    return found


def _text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."
