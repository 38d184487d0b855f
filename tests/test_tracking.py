"""Tracking and monitoring: real MLflow stores, real TensorBoard event files, real PNGs, real Spark."""

from __future__ import annotations

import glob
import http.server
import logging
import os

import numpy as np
import pytest
from conftest import blobs, mlp, tensorboard_scalars

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


@pytest.fixture(scope="module")
def tracked(spark, tmp_path_factory):
    """One averaging fit with MLflow and Keras' TensorBoard, whose worker 1 stalls 1.5 s in epoch 1."""
    import keras

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    tmp = tmp_path_factory.mktemp("tracking")
    here = os.getcwd()
    os.chdir(tmp)  # MLflow puts a sqlite store's artifacts under ./mlruns
    uri = f"sqlite:///{tmp}/mlflow.db"
    x, y = blobs(1600, seed=4)
    logger = MLflowLogger(tracking_uri=uri, experiment="fits")
    board = keras.callbacks.TensorBoard(str(tmp / "tb"))
    sm = SparkModel(mlp(), "averaging", 2, seed=0, window=4)
    sm.strategy.hold_once = (0, 1, str(tmp / "held"), 1.5)
    try:
        history = sm.fit(x, y, epochs=2, batch_size=32, validation_split=0.25, verbose=0, callbacks=[logger, board])
        yield tmp, uri, logger, sm, history, x
    finally:
        os.chdir(here)


def test_mlflow_run_holds_params_epoch_metrics_timings_and_a_reloadable_model(tracked):
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    tmp, uri, logger, sm, history, x = tracked
    logger.wait()  # the store writes run in the background
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy"] == "averaging" and run.data.params["num_workers"] == "2"
    assert run.data.params["strategy.window"] == "4" and run.data.params["batch_size"] == "32"
    assert run.data.params["epochs"] == "2" and run.data.params["data"] == "numpy arrays"
    assert run.data.params["train_rows"] == "1200" and run.data.params["validation_rows"] == "400"
    assert run.data.params["optimizer"] == "Adam" and float(run.data.params["optimizer.learning_rate"]) == \
        pytest.approx(0.001)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        logged = [(m.step, m.value) for m in client.get_metric_history(logger.run_id, key)]
        assert logged == [(0, history.history[key][0]), (1, history.history[key][1])], key
    epochs = [m.value for m in client.get_metric_history(logger.run_id, "epoch_seconds")]
    assert len(epochs) == 2 and epochs[0] > 1.5  # epoch 1 waited for the stalled worker
    setup = client.get_metric_history(logger.run_id, "setup_seconds")
    assert len(setup) == 1 and setup[0].value == pytest.approx(history.setup_seconds, abs=0.5)
    reloaded = mlflow.pyfunc.load_model(logger.model_uri)
    np.testing.assert_allclose(reloaded.predict(x[:50]), sm.model.predict(x[:50], verbose=0), atol=1e-6)
    # The LoggedModel is ready, is the run's output, and carries the figures of the weights it holds:
    # the last epoch's metrics (not the first's) and the fit's params.
    logged = client.get_logged_model(logger.model_uri.split("/")[-1])
    assert logged.status == LoggedModelStatus.READY and logged.source_run_id == logger.run_id
    assert [o.model_id for o in client.get_run(logger.run_id).outputs.model_outputs] == [logged.model_id]
    linked = {m.key: (m.step, m.value) for m in logged.metrics}
    assert linked["val_loss"] == (1, history.history["val_loss"][1]), linked
    assert linked["accuracy"] == (1, history.history["accuracy"][1]), linked
    assert logged.params["strategy"] == "averaging" and logged.params["batch_size"] == "32"
    # The flavor's files, uploaded while training went on, are those mlflow.keras.save_model writes, and
    # the MLmodel, written last, has the signature and the size of the weights saved at the end.
    from mlflow.models import Model

    local = mlflow.artifacts.download_artifacts(logger.model_uri, dst_path=str(tmp / "downloaded"))
    mlflow.keras.save_model(sm.model, str(tmp / "reference"))
    files = lambda root: sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    assert files(local) == files(str(tmp / "reference")), files(local)
    described, reference = Model.load(os.path.join(local, "MLmodel")), Model.load(str(tmp / "reference" / "MLmodel"))
    assert described.flavors == reference.flavors and described.model_id == logged.model_id
    spec = described.signature.inputs.to_dict()[0]["tensor-spec"]
    assert spec["dtype"] == "float32" and list(spec["shape"]) == [-1, x.shape[1]]
    data = os.path.join(local, "data")
    assert described.model_size_bytes == sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))


def test_the_logged_model_and_its_metrics_are_the_restored_epochs(tracked):
    """``EarlyStopping(restore_best_weights=True)`` sets the best epoch's weights as the fit ends. The logger,
    even listed before it, logs that model, with that epoch's metrics one step after the last epoch and
    ``restored_epoch``/``stopped_epoch``, as MLflow's Keras autologging does. Before, the logger saved the last
    epoch's weights under the last epoch's metrics while the fit returned the restored model."""
    import keras
    import mlflow
    from mlflow import MlflowClient

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    _, uri, _, _, _, x = tracked
    y = blobs(1600, seed=4)[1]
    logger = MLflowLogger(tracking_uri=uri, experiment="restored")
    # The highest training loss is the first epoch's, so it is "best", and patience 2 stops after epoch 3.
    best_first = keras.callbacks.EarlyStopping(monitor="loss", mode="max", patience=2, restore_best_weights=True)
    sm = SparkModel(mlp(), "averaging", 2, seed=0)
    history = sm.fit(x, y, epochs=8, batch_size=64, verbose=0, callbacks=[logger, best_first])
    assert history.epoch == [0, 1, 2] and best_first.best_epoch == 0
    reloaded = mlflow.pyfunc.load_model(logger.model_uri)
    np.testing.assert_allclose(reloaded.predict(x[:50]), sm.model.predict(x[:50], verbose=0), atol=1e-6)
    client = MlflowClient(uri)
    logged = client.get_logged_model(logger.model_uri.split("/")[-1])
    linked = {m.key: (m.step, m.value) for m in logged.metrics}
    assert linked["loss"] == (3, history.history["loss"][0]), linked
    assert linked["restored_epoch"] == (3, 0) and linked["stopped_epoch"] == (3, 2), linked
    steps = [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "loss")]
    assert steps == [(e, history.history["loss"][e]) for e in range(3)] + [(3, history.history["loss"][0])]
    assert client.get_run(logger.run_id).data.params["strategy.window"] == "32"  # chosen for 2 workers, logged


def test_a_failed_fit_ends_its_run_and_its_model_failed(tracked):
    import keras
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("stopped by the user's callback")

    tmp, uri, _, _, _, x = tracked
    logger = MLflowLogger(tracking_uri=uri, experiment="failures")
    sm = SparkModel(mlp(), "averaging", 2, seed=0)
    with pytest.raises(RuntimeError, match="stopped by the user's callback"):
        sm.fit(x[:400], np.zeros(400, dtype="int64"), epochs=2, batch_size=64, verbose=0,
               callbacks=[logger, Interrupt()])
    logger.wait()
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["sparkeras.error"] == "RuntimeError: stopped by the user's callback"
    assert "sparkeras.model_uri" not in run.data.tags and logger.model_uri is None
    # The model created as training began is marked FAILED, not left PENDING.
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.source_run_id, m.status) for m in models] == [(logger.run_id, LoggedModelStatus.FAILED)]


def test_a_fit_that_fails_while_reading_its_data_ends_the_run_it_began(tracked):
    """The run is created in the background from the fit's start, so a failure before training still ends it."""
    from mlflow import MlflowClient

    from sparkeras import InputError, SparkModel
    from sparkeras.callbacks import MLflowLogger

    tmp, uri, _, _, _, x = tracked
    logger = MLflowLogger(tracking_uri=uri, experiment="data-failures")
    with pytest.raises(InputError, match="num_workers=2 is larger than the 1 rows of the training data"):
        SparkModel(mlp(), "averaging", 2, seed=0).fit(x[:1], np.zeros(1, dtype="int64"), epochs=1, verbose=0,
                                                      callbacks=[logger])
    logger.wait()
    run = MlflowClient(uri).get_run(logger.run_id)
    assert run.info.status == "FAILED" and run.info.run_name == "sparkeras-averaging"
    assert run.data.tags["sparkeras.error"].startswith("InputError: num_workers=2 is larger than the 1 rows")


def test_a_store_that_refuses_the_run_stops_the_fit_before_training(tracked):
    import keras

    from sparkeras import InputError, SparkModel
    from sparkeras.callbacks import MLflowLogger

    tmp, uri, _, _, _, x = tracked
    (tmp / "not-a-directory").write_text("")
    bad = f"sqlite:///{tmp}/not-a-directory/mlflow.db"
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    stopped = []

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            stopped.append(epoch)

    try:
        with pytest.raises(InputError, match=r"MLflowLogger cannot start a run in experiment 'refused' at tracking "
                                             r"URI 'sqlite:///.*/not-a-directory/mlflow.db': "):
            SparkModel(model, "averaging", 2, seed=0).fit(
                x[:400], np.zeros(400, dtype="int64"), epochs=1, verbose=0,
                callbacks=[MLflowLogger(tracking_uri=bad, experiment="refused"), Epochs()])
    finally:
        import mlflow

        mlflow.set_tracking_uri(uri)  # MLflow's URI is the process's; the other tests log to the fixture's store
    assert stopped == [] and all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_tracking_server_that_does_not_answer_stops_the_fit_before_it_reads_its_data(tracked):
    """MLflow itself retries a refused connection for minutes (249 s measured); the fit asks once and says so."""
    import threading

    import keras

    from sparkeras import InputError, SparkModel
    from sparkeras.callbacks import MLflowLogger
    from sparkeras.tracking.servers import check_tracking_server

    _, uri, _, _, _, x = tracked
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet) as server:
        port = server.server_port  # a port no one listens at once the server is closed
        threading.Thread(target=server.serve_forever, daemon=True).start()
        check_tracking_server(f"http://127.0.0.1:{port}")  # any HTTP answer (here 501) is a server
        server.shutdown()
    began = []

    class Began(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            began.append(True)

    try:
        with pytest.raises(InputError) as failed:
            SparkModel(mlp(), "averaging", 2, seed=0).fit(
                x[:400], np.zeros(400, dtype="int64"), epochs=1, verbose=0,
                # another spelling of the URI that answered above, so it is asked again, not taken as answered
                callbacks=[MLflowLogger(tracking_uri=f"http://127.0.0.1:{port}/", experiment="e"), Began()])
    finally:
        import mlflow

        mlflow.set_tracking_uri(uri)
    assert str(failed.value) == (f"No MLflow tracking server answers at 'http://127.0.0.1:{port}/' (connection "
                                 "refused); start it, or correct the tracking URI (MLflowLogger(tracking_uri=...), "
                                 "mlflow.set_tracking_uri or MLFLOW_TRACKING_URI).")
    assert began == []


def test_a_tracking_server_that_takes_the_connection_but_never_replies_is_named(monkeypatch):
    """A port held by a hung process, or by something that is not MLflow, takes the connection and says nothing:
    MLflow's requests would each wait 120 s, retried, while the fit waits for its run."""
    import socket
    import time

    from sparkeras import InputError
    from sparkeras.tracking import servers

    monkeypatch.setattr(servers, "ANSWER_SECONDS", 0.5)  # the wait; the default is 10 s
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel takes connections; no one reads them
        port = silent.getsockname()[1]
        began = time.monotonic()
        with pytest.raises(InputError) as failed:
            servers.check_tracking_server(f"http://127.0.0.1:{port}", where="--mlflow-uri")
    assert time.monotonic() - began < 5
    assert str(failed.value) == (f"No MLflow tracking server answers at 'http://127.0.0.1:{port}' (it took the "
                                 "connection but sent no reply within 0.5s); start it, or correct the tracking URI "
                                 "(--mlflow-uri).")


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # no request lines on stderr
        pass


def test_a_fit_inside_the_callers_active_run_logs_into_it_and_leaves_it_open(tracked):
    import mlflow
    from mlflow import MlflowClient

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    tmp, uri, _, _, _, x = tracked
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("callers")
    logger = MLflowLogger(log_model=False)
    with mlflow.start_run(run_name="notebook") as mine:
        SparkModel(mlp(), "averaging", 2, seed=0).fit(x[:400], np.zeros(400, dtype="int64"), epochs=1,
                                                      batch_size=64, verbose=0, callbacks=[logger])
        logger.wait()
        assert logger.run_id == mine.info.run_id
        assert MlflowClient(uri).get_run(mine.info.run_id).info.status == "RUNNING"
    run = MlflowClient(uri).get_run(mine.info.run_id)
    assert run.info.status == "FINISHED" and run.data.params["strategy"] == "averaging"
    assert [m.step for m in MlflowClient(uri).get_metric_history(mine.info.run_id, "loss")] == [0]



def test_mlflows_autologging_logs_a_fit_as_it_logs_model_fit_and_keeps_its_rules(tracked, caplog):
    """``mlflow.keras.autolog()`` patches ``keras.Model.fit``, which a sparkeras fit never calls on the driver."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.utils.autologging_utils.safety import _AutologgingSessionManager

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    tmp, uri, _, _, _, x = tracked
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("autologged").experiment_id
    client = MlflowClient(uri)
    y = (x[:, 0] > 0).astype("int64")

    def fit(**options):
        model = SparkModel(mlp(), "averaging", 2, seed=0)
        return model, model.fit(x[:400], y[:400], epochs=2, batch_size=64, verbose=0, **options)

    def runs():
        return len(client.search_runs([experiment]))

    try:
        mlflow.keras.autolog(registered_model_name="blobs", extra_tags={"team": "risk"})
        model, history = fit()
        run = mlflow.last_active_run()  # MLflow's documented way to reach an autologged run: complete on return
        assert run.info.status == "FINISHED" and run.info.experiment_id == experiment
        assert run.data.tags["mlflow.autologging"] == "keras" and run.data.tags["team"] == "risk"
        assert run.data.params["strategy"] == "averaging" and run.data.params["epochs"] == "2"
        assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == history.history["loss"]
        uri_of_model = run.data.tags["sparkeras.model_uri"]
        (version,) = client.search_model_versions("name='blobs'")
        assert int(version.version) == 1 and version.run_id == run.info.run_id
        assert version.source == uri_of_model
        np.testing.assert_allclose(mlflow.pyfunc.load_model(uri_of_model).predict(x[:8]),
                                   model.model.predict(x[:8], verbose=0), atol=1e-6)
        fit()
        assert sorted(int(v.version) for v in client.search_model_versions("name='blobs'")) == [1, 2]

        mlflow.keras.autolog(log_models=False, exclusive=True)
        with mlflow.start_run() as mine:  # exclusive: nothing goes into the user's own run
            fit()
        assert client.get_run(mine.info.run_id).data.params == {}
        fit()
        unlogged = mlflow.last_active_run()
        assert unlogged.info.run_id != mine.info.run_id and "sparkeras.model_uri" not in unlogged.data.tags
        assert unlogged.data.params["strategy"] == "averaging"

        before = runs()
        with _AutologgingSessionManager.start_session("sklearn"):  # inside GridSearchCV.fit, say: sklearn's to log
            fit()
        assert runs() == before
        mine = MLflowLogger(log_model=False, experiment="autologged")
        fit(callbacks=[mine])  # the user's own logger, and no second run
        assert runs() == before + 1 and mine.run_id is not None

        mlflow.set_tracking_uri(f"sqlite:///{tmp}/no/such/folder/mlflow.db")  # as MLflow's: trouble only warns
        with caplog.at_level(logging.WARNING, logger="sparkeras"):
            _, history = fit()
        assert len(history.history["loss"]) == 2 and "MLflow autologging cannot log this fit" in caplog.text
    finally:
        mlflow.set_tracking_uri(uri)
        mlflow.keras.autolog(disable=True)
    before = runs()
    fit()
    assert runs() == before


UNSAVEABLE = """
import keras


@keras.saving.register_keras_serializable("sparkeras_tests")
class Unsaveable(keras.layers.Layer):  # ships to workers by config and weights; only .keras files fail
    def call(self, x):
        return x

    def save_own_variables(self, store):
        raise OSError("the disk is full")
"""


def test_a_model_keras_cannot_save_leaves_the_fit_and_marks_the_model_failed(tracked, spark, caplog):
    import logging
    import sys

    import keras
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    tmp, uri, _, _, _, x = tracked
    module = tmp / "sparkeras_unsaveable.py"
    module.write_text(UNSAVEABLE)
    sys.path.insert(0, str(tmp))
    spark.sparkContext.addPyFile(str(module))
    try:
        from sparkeras_unsaveable import Unsaveable
    finally:
        sys.path.remove(str(tmp))
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((16,)), Unsaveable(), keras.layers.Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    logger = MLflowLogger(tracking_uri=uri, experiment="unsaveable")
    with caplog.at_level(logging.WARNING, logger="sparkeras"):
        history = SparkModel(model, "averaging", 2, seed=0).fit(
            x[:400], np.zeros(400, dtype="int64"), epochs=1, batch_size=64, verbose=0, callbacks=[logger])
    assert len(history.history["loss"]) == 1  # the fit returns its model all the same
    assert "MLflowLogger cannot log the model, as Keras cannot save it: OSError: the disk is full" in caplog.text
    logger.wait()
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and logger.model_uri is None
    assert "sparkeras.model_uri" not in run.data.tags  # set as the last epoch ended, removed with the model
    assert [m.step for m in client.get_metric_history(logger.run_id, "loss")] == [0]
    models = client.search_logged_models(experiment_ids=[client.get_run(logger.run_id).info.experiment_id])
    assert [m.status for m in models] == [LoggedModelStatus.FAILED]


def test_keras_tensorboard_and_sparkeras_scalars_show_the_straggler(tracked):
    tmp, _, _, _, history, _ = tracked
    keras_train = tensorboard_scalars(tmp / "tb" / "train")
    assert [s for s, _ in keras_train["epoch_loss"]] == [0, 1]
    np.testing.assert_allclose([v for _, v in keras_train["epoch_loss"]], history.history["loss"], rtol=1e-6)
    assert {"worker_0", "worker_1"} <= set(os.listdir(tmp / "tb" / "sparkeras"))
    fast, slow = (tensorboard_scalars(tmp / "tb" / "sparkeras" / f"worker_{k}") for k in (0, 1))
    for tag in ("worker/samples_per_second", "worker/step_seconds", "worker/wait_seconds", "worker/bytes"):
        assert [s for s, _ in fast[tag]] == [0, 1] and [s for s, _ in slow[tag]] == [0, 1], tag
    # Epoch 1: worker 1 stalled 1.5 s; worker 0 waited for it at the next round. The ratio was 2.8 on a machine
    # busy with other work (so both workers' own steps were slow), and above 3 otherwise.
    assert slow["worker/samples_per_second"][0][1] < fast["worker/samples_per_second"][0][1] / 2
    assert fast["worker/wait_seconds"][0][1] > 1.0 > slow["worker/wait_seconds"][0][1]
    assert fast["worker/bytes"][0][1] > 0
    cluster = tensorboard_scalars(tmp / "tb" / "sparkeras")
    assert {"cluster/samples_per_second", "cluster/epoch_seconds", "cluster/bytes", "staleness/mean"} <= set(cluster)
    assert history.epoch_figures[0]["workers"][1]["seconds"] > 1.5


def test_plot_history_writes_curves_and_the_staleness_histogram(tracked):
    from PIL import Image

    from sparkeras import InputError, plot_history

    tmp, _, _, _, history, _ = tracked
    path = tmp / "curves.png"
    assert plot_history(history, str(path)) == str(path)
    with Image.open(path) as png:  # loss, accuracy and the staleness histogram: three 500-pixel panels
        assert png.format == "PNG" and png.size == (1500, 400)
        assert len(set(png.convert("RGB").getdata())) > 50  # drawn, not blank
    with pytest.raises(InputError, match=r"plot path '.*curves.png' already exists; pass --overwrite"):
        plot_history(history, str(path))
    with pytest.raises(InputError, match=r"plot path '.*curves.jpg' must end in .png; use '.*curves.jpg.png'"):
        plot_history(history, str(tmp / "curves.jpg"))
    with pytest.raises(InputError, match="plot_history's history must be a keras History"):
        plot_history({}, str(tmp / "empty.png"))
    assert not os.path.exists(tmp / "empty.png") and not glob.glob(str(tmp / ".*tmp*"))


def test_epoch_and_staleness_axes_are_marked_in_whole_numbers():
    """A 3-epoch fit's curves had ticks at epochs 1.25, 1.5, ..., and a synchronous fit's one staleness bar
    (every commit at 0) at -0.4 ... 0.4."""
    from sparkeras.tracking.plots import _figure

    figure = _figure(["loss"], {"loss": [1.0, 0.6, 0.4], "val_loss": [1.1, 0.7, 0.5]}, None, ("sparkeras", "plain"),
                     {0: 6}, "a title")
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    assert [ax.get_title() for ax in figure.axes] == ["loss", "parameter-server staleness"]


@pytest.mark.parametrize("flush_seconds, writes", [(60.0, 2), (0.0, 5)])
def test_short_epochs_are_written_together_each_at_its_own_step(tracked, monkeypatch, flush_seconds, writes):
    """Epochs shorter than FLUSH_SECONDS go to the store in one write, with the last epoch's link."""
    from mlflow import MlflowClient

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    _, uri, _, _, _, x = tracked
    calls = []
    real = MlflowClient.log_batch

    def counted(self, run_id, *args, **kwargs):
        calls.append(len(kwargs.get("metrics") or []))
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", counted)  # the real store write, counted
    logger = MLflowLogger(tracking_uri=uri, experiment="batched")
    monkeypatch.setattr(logger, "FLUSH_SECONDS", flush_seconds)
    history = SparkModel(mlp(), "averaging", 2, seed=0).fit(x[:400], np.zeros(400, dtype="int64"), epochs=4,
                                                            batch_size=64, verbose=0, callbacks=[logger])
    logger.wait()
    assert len(calls) == writes, calls  # params and setup; then the link alone, or each epoch and the link
    client = MlflowClient(uri)
    for key in ("loss", "accuracy", "epoch_seconds"):
        points = sorted(client.get_metric_history(logger.run_id, key), key=lambda m: m.step)
        assert [m.step for m in points] == [0, 1, 2, 3], key
        assert all(a.timestamp <= b.timestamp for a, b in zip(points, points[1:])), key
        if key != "epoch_seconds":
            assert [m.value for m in points] == pytest.approx(history.history[key]), key
    assert client.get_logged_model(logger.model_uri.split("/")[-1]).status.name == "READY"


def test_a_new_store_is_set_up_without_mlflow_start_up_lines(tracked, tmp_path, capfd):
    import logging

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    _, uri, _, _, _, x = tracked
    seen = []

    class Seen(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    watcher = Seen()
    logging.getLogger("mlflow.store.db.utils").addHandler(watcher)  # sees what reaches MLflow's own handler
    try:
        logger = MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/new.db", experiment="quiet", log_model=False)
        SparkModel(mlp(), "averaging", 2, seed=0).fit(x[:400], np.zeros(400, dtype="int64"), epochs=1,
                                                      batch_size=64, verbose=0, callbacks=[logger])
        logger.wait()
    finally:
        logging.getLogger("mlflow.store.db.utils").removeHandler(watcher)
        import mlflow

        mlflow.set_tracking_uri(uri)
    assert os.path.exists(tmp_path / "new.db")
    assert not [m for m in seen if "database tables" in m], seen
    assert "database tables" not in capfd.readouterr().err


def test_a_model_with_a_string_input_is_logged_and_its_pyfunc_scores_a_frame_of_strings(tracked, tmp_path,
                                                                                       monkeypatch):
    """The signature of a ``keras.Input(shape=(), dtype="string")`` model is an object tensor (Keras predicts
    strings from object arrays): logging it failed with numpy's "data type 'string' not understood"."""
    import keras
    import mlflow
    import pandas as pd

    from sparkeras import SparkModel
    from sparkeras.callbacks import MLflowLogger

    _, uri, _, _, _, _ = tracked
    monkeypatch.chdir(tmp_path)  # the new store's artifacts go under ./mlruns
    texts = np.array(["good fun film", "bad dull plot", "great story", "awful boring actor"] * 40, dtype=object)
    labels = np.array([1, 0, 1, 0] * 40)
    keras.utils.set_random_seed(0)
    vectorize = keras.layers.TextVectorization(max_tokens=20, output_sequence_length=3)
    vectorize.adapt(texts)
    text = keras.Input(shape=(), dtype="string", name="text")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(1, activation="sigmoid")(pooled))
    model.compile("adam", "binary_crossentropy")
    logger = MLflowLogger(tracking_uri=f"sqlite:///{tmp_path}/strings.db", experiment="text")
    try:
        sm = SparkModel(model, "averaging", 2, seed=0)
        sm.fit(texts, labels, epochs=1, batch_size=16, verbose=0, callbacks=[logger])
        logger.wait()
        assert logger.model_uri is not None
        reloaded = mlflow.pyfunc.load_model(logger.model_uri)
        frame = pd.DataFrame({"text": ["good fun film", "awful boring actor", "great plot"]})
        want = sm.model.predict(frame["text"].to_numpy(dtype=object), verbose=0)
        np.testing.assert_allclose(np.asarray(reloaded.predict(frame)).reshape(want.shape), want, atol=1e-6)
        assert str(reloaded.metadata.get_input_schema()) == "[Tensor('object', (-1,))]"
    finally:
        mlflow.set_tracking_uri(uri)


def test_tracking_arguments_are_checked_first():
    from sparkeras import InputError
    from sparkeras.callbacks import ClusterScalars, MLflowLogger

    with pytest.raises(InputError, match="MLflowLogger's experiment must be a non-empty string, got 3"):
        MLflowLogger(experiment=3)
    with pytest.raises(InputError, match=r"registered_model_name='m'\) registers the logged model, but "
                                         r"log_model=False logs none"):
        MLflowLogger(log_model=False, registered_model_name="m")
    with pytest.raises(InputError, match="MLflowLogger's tags must be a dict of names to values, got 'team'"):
        MLflowLogger(tags="team")
    with pytest.raises(InputError, match="ClusterScalars needs a log directory path, got None"):
        ClusterScalars(None)
