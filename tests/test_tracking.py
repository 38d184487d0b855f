"""Tracking and monitoring: real MLflow stores, real TensorBoard event files, real PNGs, real Spark."""

from __future__ import annotations

import glob
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import blobs, mlp

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def _scalars(directory):
    """{tag: [(step, value)]} of every scalar in a TensorBoard run directory, read with TensorBoard's reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(directory), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
            out[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]
    return out


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

    tmp, uri, logger, sm, history, x = tracked
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


def test_keras_tensorboard_and_sparkeras_scalars_show_the_straggler(tracked):
    tmp, _, _, _, history, _ = tracked
    keras_train = _scalars(tmp / "tb" / "train")
    assert [s for s, _ in keras_train["epoch_loss"]] == [0, 1]
    np.testing.assert_allclose([v for _, v in keras_train["epoch_loss"]], history.history["loss"], rtol=1e-6)
    assert {"worker_0", "worker_1"} <= set(os.listdir(tmp / "tb" / "sparkeras"))
    fast, slow = (_scalars(tmp / "tb" / "sparkeras" / f"worker_{k}") for k in (0, 1))
    for tag in ("worker/samples_per_second", "worker/step_seconds", "worker/wait_seconds", "worker/bytes"):
        assert [s for s, _ in fast[tag]] == [0, 1] and [s for s, _ in slow[tag]] == [0, 1], tag
    # Epoch 1: worker 1 stalled 1.5 s; worker 0 waited for it at the next round.
    assert slow["worker/samples_per_second"][0][1] < fast["worker/samples_per_second"][0][1] / 3
    assert fast["worker/wait_seconds"][0][1] > 1.0 > slow["worker/wait_seconds"][0][1]
    assert fast["worker/bytes"][0][1] > 0
    cluster = _scalars(tmp / "tb" / "sparkeras")
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


def test_a_tracked_search_logs_each_trial_as_a_nested_run(spark, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    import sparkeras
    from sparkeras.callbacks import MLflowLogger

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    x, y = blobs(600, seed=5)
    study = sparkeras.tune(lambda p: mlp(hidden=p["hidden"]), x, y, n_trials=2, epochs=2, seed=0,
                           search_space={"hidden": [8, 24]}, verbose=0,
                           tracking=MLflowLogger(tracking_uri=uri, experiment="search", run_name="grid"))
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    parent = [r for r in runs if r.info.run_name == "grid"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert parent[0].data.params["n_trials"] == "2" and parent[0].data.params["pruner"] == "MedianPruner"
    assert parent[0].data.metrics["best_val_loss"] == pytest.approx(study.best_value)
    children = {r.data.params["trial"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert sorted(children) == ["0", "1"]
    for trial in study.trials:
        run = children[str(trial.number)]
        assert run.data.params["hidden"] == str(trial.params["hidden"]) and run.info.status == "FINISHED"
        val = [m.value for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert len(val) == 2 and val[-1] == pytest.approx(trial.value)


def test_estimator_logs_its_fitted_stage_reloadable_as_a_pipeline_stage(spark, tmp_path, monkeypatch):
    import mlflow

    from sparkeras.ml import KerasEstimator, KerasModel

    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    x, y = blobs(400, seed=6)
    df = spark.createDataFrame([(x[i].tolist(), int(y[i])) for i in range(len(x))], "features ARRAY<FLOAT>, label INT")
    fitted = KerasEstimator(model=mlp(), epochs=1, numWorkers=2, mlflowExperiment="estimators").fit(df)
    runs = mlflow.search_runs(experiment_names=["estimators"], output_format="list")
    assert len(runs) == 1 and runs[0].data.params["train_rows"] == "400" and "loss" in runs[0].data.metrics
    local = mlflow.artifacts.download_artifacts(run_id=runs[0].info.run_id, artifact_path="spark_ml_model",
                                                dst_path=str(tmp_path / "download"))
    stage = KerasModel.load(local)
    got = [r["probability"] for r in stage.transform(df.limit(20)).select("probability").collect()]
    want = [r["probability"] for r in fitted.transform(df.limit(20)).select("probability").collect()]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_tracking_arguments_are_checked_first():
    from sparkeras import InputError
    from sparkeras.callbacks import ClusterScalars, MLflowLogger

    with pytest.raises(InputError, match="MLflowLogger's experiment must be a non-empty string, got 3"):
        MLflowLogger(experiment=3)
    with pytest.raises(InputError, match="ClusterScalars needs a log directory path, got None"):
        ClusterScalars(None)


def test_library_messages_go_through_the_sparkeras_logger(caplog):
    from sparkeras.compat.elephas import SparkModel as ElephasModel

    with caplog.at_level(logging.WARNING, logger="sparkeras"):
        ElephasModel(mlp(), frequency="epoch", mode="synchronous", num_workers=2, custom_flag=1)
    assert [r.name for r in caplog.records] == ["sparkeras"]
    assert "SparkModel: ['custom_flag'] accepted for Elephas compatibility and ignored" in caplog.records[0].getMessage()


SHELL_LIKE = """
import os, sys, time
sys.path.insert(0, {tests!r})
from pyspark.sql import SparkSession
spark = (SparkSession.builder.master("local[2]").config("spark.ui.showConsoleProgress", "true")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
from conftest import blobs, mlp
import sparkeras
x, y = blobs(1200)
print("FIT", file=sys.stderr, flush=True)
sparkeras.SparkModel(mlp(), num_workers=2).fit(x, y, epochs=2, verbose=1)
print("AFTER", file=sys.stderr, flush=True)
spark.sparkContext.parallelize(range(2), 2).foreach(lambda _: time.sleep(1.5))
print("END", file=sys.stderr, flush=True)
"""


def test_spark_console_progress_is_off_during_a_fit_and_back_after():
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    done = subprocess.run([sys.executable, "-c", SHELL_LIKE.format(tests=os.path.dirname(os.path.abspath(__file__)))],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr
    during, after = err[err.index("FIT"):err.index("AFTER")], err[err.index("AFTER"):err.index("END")]
    assert "[Stage" not in during, during
    assert "[Stage" in after, after  # a fresh console bar once the fit is over
    assert done.stdout.count("Epoch 2/2") == 1
