"""The sparkeras command, run as a user would, in separate processes.

``train`` runs on ``local-cluster[2,1,1024]``: two executor JVMs with their own
Python workers, so nothing can lean on state shared with the driver process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs, mlp, tensorboard_scalars

pytestmark = pytest.mark.own_processes


def _cli(*args, timeout=600):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "sparkeras.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def files(spark, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    x, y = blobs(3000, dim=8, classes=4, seed=3)
    rows = [(i, x[i].tolist(), int(y[i])) for i in range(len(x))]
    spark.createDataFrame(rows, "id INT, pixels ARRAY<FLOAT>, digit INT").repartition(3) \
        .write.parquet(str(tmp / "train.parquet"))
    model = mlp(dim=8, classes=4, seed=0)
    model.save(str(tmp / "untrained.keras"))
    return tmp, x, y, model


def test_train_on_a_local_cluster_then_predict(files, spark):
    import keras

    tmp, x, y, untrained = files
    before = untrained.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    res = _cli("train", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "pixels", "--label", "digit", "--epochs", "3", "--batch-size", "32",
               "--workers", "2", "--master", "local-cluster[2,1,1024]", "--output", str(tmp / "trained.keras"),
               "--quiet", "--plot", str(tmp / "curves.png"), "--class-weight", "0=1,3=1.5")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "saved" in res.stdout and f"learning curves: {tmp / 'curves.png'}" in res.stdout
    from PIL import Image

    with Image.open(tmp / "curves.png") as png:  # two panels (loss, accuracy) and the staleness histogram
        assert png.format == "PNG" and png.size == (1500, 400)
    trained = keras.saving.load_model(str(tmp / "trained.keras"))
    after = trained.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert after > 0.85 > before

    # predict runs in this process, on the suite's session: the command as a process is covered above.
    from sparkeras.cli.main import main

    assert main(["predict", "--model", str(tmp / "trained.keras"), "--data", str(tmp / "train.parquet"),
                 "--features", "pixels", "--output", str(tmp / "pred.parquet")]) == 0
    out = spark.read.parquet(str(tmp / "pred.parquet"))
    assert out.columns == ["id", "pixels", "digit", "prediction", "prediction_class"]
    rows = out.select("id", "prediction", "prediction_class").collect()
    got = {r["id"]: np.argmax(r["prediction"]) for r in rows}
    want = trained.predict(x, verbose=0).argmax(1)
    assert len(got) == 3000 and all(got[i] == want[i] for i in range(0, 3000, 97))
    assert all(r["prediction_class"] == got[r["id"]] for r in rows)  # the class the scores give


def test_train_and_predict_on_a_folder_of_image_files(digit_images, tmp_path, spark, capsys):
    """--images: class folders in, the class names kept with the model and written beside each prediction.

    Run in this process, on the suite's session (no --master), to spare two process starts; the
    subprocess tests above cover the command as a separate process.
    """
    import keras

    from sparkeras.cli.main import main

    root, good, corrupt = digit_images
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(8, 3, activation="relu"), keras.layers.MaxPooling2D(),
                              keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(str(tmp_path / "cnn.keras"))
    rc = main(["train", "--model", str(tmp_path / "cnn.keras"), "--images", root, "--on-error", "skip",
               "--epochs", "4", "--workers", "2", "--output", str(tmp_path / "t.keras"), "--quiet",
               "--validation-split", "0.2"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    final = json.loads(out.out.split("final epoch: ")[1])
    assert final["accuracy"] > 0.8 and final["val_accuracy"] > 0.8, final  # a fifth of the files, held out
    assert (f"sparkeras train: left out 2 image files that could not be decoded (--on-error skip): "
            f"'file:{sorted(corrupt)[0]}', 'file:{sorted(corrupt)[1]}'\n") in out.err, out.err[-3000:]
    folder = os.path.join(root, "digit_3")
    rc = main(["predict", "--model", str(tmp_path / "t.keras"), "--images", folder, "--on-error", "skip",
               "--output", str(tmp_path / "p.parquet")])
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    assert "left out" not in err  # no file of digit_3 is corrupt
    out = spark.read.parquet(str(tmp_path / "p.parquet"))
    assert out.columns == ["path", "prediction", "prediction_class", "prediction_name"]
    rows = out.collect()
    assert len(rows) == sum(1 for p in good if "/digit_3/" in p)
    assert all(r.prediction_name == f"digit_{r.prediction_class}" for r in rows)
    assert np.mean([r.prediction_name == "digit_3" for r in rows]) > 0.8

    # A test folder with one class folder: numbered by the classes saved with the model, not its own (0).
    os.makedirs(tmp_path / "test")
    os.symlink(folder, tmp_path / "test" / "digit_3")
    assert main(["evaluate", "--model", str(tmp_path / "t.keras"), "--images", str(tmp_path / "test"),
                 "--on-error", "skip"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] > 0.8


def test_predict_on_image_files_gives_a_binary_classifiers_class(digit_images, tmp_path, spark, capsys):
    """One unit trained with binary crossentropy: ``prediction_class`` is 1 above a probability of 0.5,
    or above a logit of 0 when compiled ``from_logits=True``. Without ``--on-error skip`` the folder's
    corrupt file stops the prediction, named, with the flag that leaves it out."""
    import keras

    from sparkeras.cli.main import main

    root, _, corrupt = digit_images
    for logits in (False, True):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                                  keras.layers.Dense(1, activation=None if logits else "sigmoid")])
        model.compile("adam", keras.losses.BinaryCrossentropy(from_logits=logits))
        model.save(str(tmp_path / f"binary{logits}.keras"))
        out_path = str(tmp_path / f"binary{logits}.parquet")
        if not logits:
            assert main(["predict", "--model", str(tmp_path / "binaryFalse.keras"), "--images",
                         os.path.join(root, "digit_1"), "--output", out_path]) == 2
            error = capsys.readouterr().err
            assert f"image file 'file:{corrupt[1]}' (column 'image') could not be decoded" in error, error
            assert error.strip().endswith("Remove or replace the file, or read the images with --on-error skip to "
                                          "leave such files out."), error
            assert not os.path.exists(out_path)
        assert main(["predict", "--model", str(tmp_path / f"binary{logits}.keras"), "--images",
                     os.path.join(root, "digit_1"), "--on-error", "skip", "--output", out_path]) == 0
        left_out = f"sparkeras predict: left out 1 image file that could not be decoded (--on-error skip): " \
                   f"'file:{corrupt[1]}'"
        assert capsys.readouterr().err.strip().endswith(left_out)
        out = spark.read.parquet(out_path)
        assert out.columns == ["path", "prediction", "prediction_class"]
        rows = out.collect()
        cut = 0.0 if logits else 0.5
        assert rows and all(r.prediction_class == int(r.prediction > cut) for r in rows)
        assert 0 < np.mean([r.prediction_class for r in rows]) < 1, logits
        if logits:  # as files arrive, once the stream has read them
            assert main(["predict", "--model", str(tmp_path / "binaryTrue.keras"), "--images",
                         os.path.join(root, "digit_1"), "--on-error", "skip", "--stream",
                         "--output", str(tmp_path / "stream")]) == 0
            streamed = capsys.readouterr()
            assert streamed.err.strip().endswith(left_out)
            assert spark.read.parquet(str(tmp_path / "stream")).count() == len(rows)
            # The source read the undecodable file too; the count is of the rows written.
            assert f"scored {len(rows)} new rows into {tmp_path / 'stream'};" in streamed.out, streamed.out


def test_skipped_files_past_what_the_accumulator_keeps_are_counted_as_a_lower_bound(spark, tmp_path, capsys,
                                                                                     monkeypatch):
    from PIL import Image

    from sparkeras.cli.flags import report_skipped
    from sparkeras.images import read_images, skipping

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "good.png")
    for name in ("a.png", "b.png", "c.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    monkeypatch.setattr(skipping, "SKIPPED_KEPT", 2)  # the driver's merge of the tasks' paths keeps 2
    frame = read_images(spark, str(folder), (8, 8), "grayscale", labels=None, on_error="skip")
    assert frame.count() == 1
    report_skipped(argparse.Namespace(command="predict", images=str(folder), on_error="skip"), frame)
    assert capsys.readouterr().err == ("sparkeras predict: left out at least 2 image files that could not be decoded "
                                       f"(--on-error skip): 'file:{folder}/a.png', 'file:{folder}/b.png'\n")


def test_errors_are_one_clear_line_without_a_java_trace(files):
    tmp = files[0]
    res = _cli("predict", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "image", "--output", str(tmp / "x.parquet"), "--master", "local[1]")
    assert res.returncode == 2
    err = [ln for ln in res.stderr.splitlines() if ln.startswith("sparkeras")]
    assert err == ["sparkeras predict: error: Column 'image' (--features) is not in the data; the columns are "
                   "['id', 'pixels', 'digit']. Pass --features with one of them (an array or vector column), or "
                   "with a list of numeric columns, one per input value."]
    assert "at org.apache" not in res.stderr and "Traceback" not in res.stderr


CHECK_ONLY = """
import sys
from sparkeras.cli.main import main
rc = main(sys.argv[1:])
print("IMPORTED", "tensorflow" in sys.modules, "pyspark" in sys.modules, rc)
"""


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args,message", [
    (["--epochs", "0"], "--epochs must be a positive integer, got 0."),
    (["--workers", "0"], "--workers must be a positive integer, got 0."),
    (["--strategy", "fancy"], "--strategy: Unknown strategy 'fancy'; choose one of"),
    (["--model", "{tmp}/nope.keras"], "No model file at '{tmp}/nope.keras' (--model); check the path."),
    (["--model", "{tmp}/corrupt.keras"], "--model '{tmp}/corrupt.keras' is not a valid .keras archive"),
    (["--data", "{tmp}/nothing.parquet"], "No data at '{tmp}/nothing.parquet'; check the path."),
    (["--output", "{tmp}/trained_model"], "--output '{tmp}/trained_model' must end in .keras"),
    (["--output", "{tmp}/no/such/dir/m.keras"],
     "--output '{tmp}/no/such/dir/m.keras': the directory '{tmp}/no/such/dir' does not exist; create it first."),
    (["--output", "{tmp}/untrained.keras", "--model", "{tmp}/untrained.keras", "--overwrite"],
     "would write over the input '{tmp}/untrained.keras'"),
    (["--output", "{tmp}/exists.keras"], "--output '{tmp}/exists.keras' already exists; pass --overwrite"),
    (["--plot", "{tmp}/curves.jpg"], "--plot '{tmp}/curves.jpg' must end in .png; use '{tmp}/curves.jpg.png'."),
    (["--plot", "{tmp}/no/dir/c.png"],
     "--plot '{tmp}/no/dir/c.png': the directory '{tmp}/no/dir' does not exist; create it first."),
    (["--master", "spark//oops"], "--master 'spark//oops' is not a Spark master URL"),
    (["--images", "{tmp}/no-images"], "--images: '{tmp}/no-images' is not there; pass the folder that holds"),
    (["--images", "{tmp}", "--image-size", "32by32"], "--image-size must be HEIGHTxWIDTH in pixels, e.g. 224x224"),
    (["--master", "spark://127.0.0.1:{port}"], "--master: cannot reach the Spark master at 127.0.0.1:{port}"),
    (["--master", "k8s://127.0.0.1:{port}"], "--master: cannot reach the Kubernetes API server at 127.0.0.1:{port}"),
    (["--class-weight", "0=1,cat=2"], "--class-weight takes CLASS_ID=WEIGHT pairs separated by commas, e.g. "
                                      "0=1,1=9; got 'cat=2'."),
    (["--class-weight", "0=-1"], "--class-weight: class_weight[0] must be a finite number >= 0, got -1.0."),
    (["--class-weight", "0=2", "--weight-col", "w"], "--weight-col: class_weight cannot be combined with row "
                                                     "weights (weight_col/sample_weight), as in Keras' fit"),
    (["--images", "{tmp}", "--weight-col", "w"], "--weight-col names a column of --data; with --images there is "
                                                 "none."),
    (["--strategy-option", "window"], "--strategy-option takes KEY=VALUE, e.g. window=8; got 'window'."),
    (["--strategy", "adag", "--strategy-option", "speed=2"],
     "--strategy-option: Strategy 'adag' has no option 'speed'; its options are ['window', "),
    (["--tensorboard", "{tmp}/train.parquet/logs"], "--tensorboard '{tmp}/train.parquet/logs' would write over the "
                                                    "input '{tmp}/train.parquet'"),
    (["--tensorboard", "{tmp}/untrained.keras"], "--tensorboard '{tmp}/untrained.keras' would write over the input"),
    (["--mlflow-experiment", " "], "--mlflow-experiment needs a value."),
    (["--mlflow-uri", "http://127.0.0.1:{port}"], "No MLflow tracking server answers at 'http://127.0.0.1:{port}' "
                                                  "(connection refused); start it, or correct the tracking URI "
                                                  "(--mlflow-uri)."),
    (["--validation", "{tmp}/train.parquet", "--validation-split", "0.2"],
     "--validation and --validation-split both say what to score every epoch on; give one."),
    (["--validation-split", "1"], "--validation-split must be between 0 and 1 (the share of the data held out), "
                                  "got 1.0."),
    (["--custom-objects", "{tmp}/layers_gone.py"], "--custom-objects {tmp}/layers_gone.py: no such file."),
    (["--custom-objects", "no_such_layers"], "--custom-objects no_such_layers: no such module. Pass a Python file "
                                             "(layers.py) or the name of a module installed on the driver and the "
                                             "executors."),
    (["--custom-objects", "{tmp}/json.py"], "--custom-objects {tmp}/json.py: the module name 'json' is taken by "),
])
def test_argument_mistakes_fail_before_spark_or_tensorflow_start(files, args, message):
    _fails_before_spark_or_tensorflow(files[0], "train", args, message)


def test_every_flag_of_every_command_says_what_it_does():
    from sparkeras.cli.main import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    bare = [f"{name} {action.option_strings[-1]}" for name, command in commands.items()
            for action in command._actions if action.option_strings and not (action.help or "").strip()]
    assert set(commands) == {"demo", "train", "tune", "evaluate", "predict"}
    assert bare == []


def _fails_before_spark_or_tensorflow(tmp, command, args, message):
    from sparkeras.session import PROXY_VARIABLES

    (tmp / "corrupt.keras").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp / "exists.keras").write_bytes(b"precious")
    (tmp / "json.py").write_text("")  # a file named as a module of Python's own
    port = _free_port()
    base = {"--model": str(tmp / "untrained.keras"), "--data": str(tmp / "train.parquet"),
            "--output": str(tmp / "new.keras"), "--features": "pixels", "--label": "digit"}
    if command == "tune" and "--param" not in args:
        base["--param"] = "learning_rate=1e-3:1e-1:log"
    if command == "predict":
        del base["--label"]
        base["--output"] = str(tmp / "scores")
    given = [a.format(tmp=tmp, port=port) for a in args]
    if "--images" in given:
        del base["--data"]
    for flag, value in base.items():
        if flag not in given:
            given += [flag, value]
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}  # a k8s:// master is dialled
    env["PYSPARK_PYTHON"] = sys.executable
    res = subprocess.run([sys.executable, "-c", CHECK_ONLY, command, *given], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.stdout.strip().splitlines()[-1] == "IMPORTED False False 2", res.stdout + res.stderr
    assert res.stderr.startswith(f"sparkeras {command}: error: ") and message.format(tmp=tmp, port=port) \
        in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert (tmp / "exists.keras").read_bytes() == b"precious"


@pytest.mark.parametrize("args,message", [
    (["--param", "learning_rate"], "--param takes NAME=RANGE, e.g. learning_rate=1e-4:1e-1:log; got 'learning_rate'."),
    (["--param", "learning_rate=0.1:0.01"], "--param learning_rate=0.1:0.01: needs LOW < HIGH."),
    (["--param", "learning_rate=0:0.1:log"], "--param learning_rate=0:0.1:log: needs LOW < HIGH and LOW > 0 on a "
                                             "log scale."),
    (["--param", "rate=low:0.5"], "--param rate=low:0.5: 'low' is not a number; a range is LOW:HIGH of numbers."),
    (["--param", "units=8,,16"], "--param units=8,,16 has an empty choice"),
    (["--param", "a=1,2", "--param", "a=3,4"], "--param a is given twice; give each hyperparameter once."),
    (["--metric", "val_top5"], "--metric val_top5: say whether higher or lower is better with --direction"),
    (["--trials", "0"], "--trials must be a positive integer, got 0."),
    (["--storage", "search.db"], "--storage must be a database URL such as sqlite:///search.db, got 'search.db'."),
    (["--validation", "{tmp}/train.parquet", "--validation-split", "0.2"],
     "--validation and --validation-split both say what to score trials on; give one."),
    (["--output", "{tmp}/exists.keras"], "--output '{tmp}/exists.keras' already exists; pass --overwrite"),
    (["--strategy", "fancy"], "--strategy: Unknown strategy 'fancy'; choose one of"),
    (["--sampler", "grid", "--param", "units=8,16", "--param", "learning_rate=1e-3:1e-1"],
     "--sampler grid tries every combination of listed choices, but --param learning_rate is a range; list its "
     "choices (A,B,C) instead."),
])
def test_tune_mistakes_fail_before_spark_or_tensorflow_start(files, args, message):
    _fails_before_spark_or_tensorflow(files[0], "tune", args, message)


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{tmp}/ckpt"], "--checkpoint goes with --stream; add --stream, or drop --checkpoint."),
    (["--stream", "--trigger", "soon"], "--trigger must be available-now or an interval such as 30s or 5min, got "
                                        "'soon'."),
    (["--stream", "--checkpoint", "{tmp}/train.parquet/ckpt"], "--checkpoint '{tmp}/train.parquet/ckpt' would "
                                                               "write over the input"),
])
def test_predict_stream_mistakes_fail_before_spark_or_tensorflow_start(files, args, message):
    _fails_before_spark_or_tensorflow(files[0], "predict", args, message)


def test_tune_searches_the_saved_models_settings_resumes_and_saves_the_best_trained_again(files, spark, tmp_path,
                                                                                        capsys):
    """``tune`` draws optimizer and layer arguments of the ``--model`` file, keeps its trials in ``--storage``
    (a second run adds only the missing ones) and in MLflow, and saves the best configuration trained again,
    printing that saved model's own figures; names that are not in the model are refused, naming the ones
    that are."""
    import keras
    import optuna

    from sparkeras.cli.main import main
    from sparkeras.cli.tune import SavedModelSpace

    tmp, x, y, _ = files
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dropout(0.1, name="drop"), keras.layers.Dense(4, activation="softmax",
                                                                                           name="out")])
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "start.keras")

    # A trial's model: the file's weights where the drawn values keep their shapes, new ones where not.
    space = SavedModelSpace(model, ["learning_rate", "drop.rate", "hidden.units"])
    same = space.build({"learning_rate": 0.05, "drop.rate": 0.3, "hidden.units": 16})
    assert float(same.optimizer.learning_rate) == pytest.approx(0.05) and same.get_layer("drop").rate == 0.3
    assert isinstance(same.optimizer, keras.optimizers.Adam) and same.loss == model.loss
    for mine, theirs in zip(same.weights, model.weights):
        np.testing.assert_array_equal(np.asarray(mine), np.asarray(theirs))
    wider = SavedModelSpace(model, ["hidden.units", "optimizer"]).build({"hidden.units": 32, "optimizer": "sgd"})
    assert wider.get_layer("hidden").kernel.shape == (8, 32) and wider.get_layer("out").kernel.shape == (32, 4)
    assert type(wider.optimizer).__name__ == "SGD" and model.get_layer("hidden").units == 16

    val = tmp_path / "val.parquet"
    vx, vy = blobs(600, dim=8, classes=4, seed=3, sample_seed=11)
    spark.createDataFrame([(r.tolist(), int(c)) for r, c in zip(vx, vy)], "pixels ARRAY<FLOAT>, digit INT") \
        .write.parquet(str(val))
    storage = f"sqlite:///{tmp_path / 'search.db'}"
    args = ["tune", "--model", str(tmp_path / "start.keras"), "--data", str(tmp / "train.parquet"),
            "--validation", str(val), "--features", "pixels", "--label", "digit", "--param",
            "learning_rate=1e-4:0.1:log", "--param", "drop.rate=0:0.4", "--epochs", "2", "--metric", "val_accuracy",
            "--storage", storage, "--seed", "0", "--output", str(tmp_path / "best.keras")]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([*args, "--trials", "3", "--quiet", "--mlflow-uri", uri, "--mlflow-experiment", "cli-tune"]) == 0, \
        capsys.readouterr().err[-3000:]
    assert "mlflow run " in capsys.readouterr().out
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cli-tune").experiment_id])
    search = [r for r in runs if r.info.run_name == "sparkeras tune start.keras"]
    assert len(search) == 1 and "best_val_accuracy" in search[0].data.metrics
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == search[0].info.run_id) \
        == ["trial-0", "trial-1", "trial-2"]
    assert [r.info.run_name for r in runs if r.info.run_name.endswith(": best")] == ["sparkeras tune start.keras: best"]
    assert main([*args, "--trials", "4", "--overwrite"]) == 0
    out = capsys.readouterr().out
    trials = [ln.split()[1] for ln in out.splitlines() if ln.startswith("trial ")]
    assert trials == ["3"], out  # the study held 3 finished trials; the second run adds the fourth only
    study = optuna.load_study(study_name="sparkeras-tune-start", storage=storage)
    assert len(study.trials) == 4 and study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = study.best_trial
    assert f"best: trial {best.number}, val_accuracy=" in out

    saved = keras.saving.load_model(tmp_path / "best.keras")
    assert float(saved.optimizer.learning_rate) == pytest.approx(best.params["learning_rate"], rel=1e-6)
    assert saved.get_layer("drop").rate == pytest.approx(best.params["drop.rate"])
    final = json.loads(out.strip().splitlines()[-1].split("final epoch: ", 1)[1])
    figures = saved.evaluate(vx, vy, verbose=0, return_dict=True)
    assert final["val_accuracy"] == pytest.approx(figures["accuracy"], abs=1e-6)  # the saved model's, not the trial's
    assert final["val_loss"] == pytest.approx(figures["loss"], rel=1e-4)

    # A grid: every combination once, though two trials run at once; the best trains at its own batch size.
    grid = f"sqlite:///{tmp_path / 'grid.db'}"
    assert main(["tune", "--model", str(tmp_path / "start.keras"), "--data", str(tmp / "train.parquet"),
                 "--validation", str(val), "--features", "pixels", "--label", "digit", "--param", "drop.rate=0.1,0.3",
                 "--param", "batch_size=16,64", "--sampler", "grid", "--epochs", "1", "--storage", grid, "--quiet",
                 "--output", str(tmp_path / "grid.keras")]) == 0
    capsys.readouterr()
    study = optuna.load_study(study_name="sparkeras-tune-start", storage=grid)
    assert sorted((t.params["drop.rate"], t.params["batch_size"]) for t in study.trials) == \
        [(0.1, 16), (0.1, 64), (0.3, 16), (0.3, 64)]
    saved = keras.saving.load_model(tmp_path / "grid.keras")
    assert int(saved.optimizer.iterations) == -(-3000 // study.best_params["batch_size"])  # one epoch, one worker

    assert main(["tune", "--model", str(tmp_path / "start.keras"), "--data", str(tmp / "train.parquet"),
                 "--features", "pixels", "--label", "digit", "--param", "dense.units=8,16",
                 "--output", str(tmp_path / "no.keras")]) == 2
    assert "--param dense.units: the model has no layer 'dense'; its layers are hidden, drop, out." \
        in capsys.readouterr().err
    assert main(["tune", "--model", str(tmp_path / "start.keras"), "--data", str(tmp / "train.parquet"),
                 "--features", "pixels", "--label", "digit", "--param", "lr=1e-3:1e-2",
                 "--output", str(tmp_path / "no.keras")]) == 2
    assert "--param lr: not an argument of the model's optimizer (Adam: learning_rate," in capsys.readouterr().err
    assert not (tmp_path / "no.keras").exists()


def test_predict_stream_scores_each_arriving_file_once_across_runs(files, spark, tmp_path, capsys):
    """``predict --stream`` scores the files that arrived since its last run and adds them to ``--output``
    (Spark's file sink, resumed from ``--checkpoint``); an output that is not the stream's is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sparkeras.cli.main import main

    tmp, x, y, untrained = files
    incoming, out = tmp_path / "incoming", tmp_path / "scores"
    incoming.mkdir()

    def arrive(name, rows):
        pq.write_table(pa.table({"id": pa.array(rows, pa.int32()), "pixels": pa.array([x[i].tolist() for i in rows],
                                                                                     pa.list_(pa.float32()))}),
                       incoming / name)

    arrive("a.parquet", range(0, 300))
    arrive("b.parquet", range(300, 600))
    args = ["predict", "--model", str(tmp / "untrained.keras"), "--data", str(incoming), "--features", "pixels",
            "--output", str(out), "--stream"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    assert f"scored 600 new rows into {out}; the stream resumes from {out}.checkpoint" in capsys.readouterr().out
    arrive("c.parquet", range(600, 900))
    assert main(args) == 0
    assert "scored 300 new rows" in capsys.readouterr().out
    got = spark.read.parquet(str(out)).orderBy("id").toPandas()  # as the file sink's log lists its files
    assert got["id"].tolist() == list(range(900))
    want = untrained.predict(x[:900], verbose=0)
    np.testing.assert_allclose(np.stack(got["prediction"].to_numpy()), want, atol=1e-5)
    assert got["prediction_class"].tolist() == want.argmax(axis=1).tolist()

    assert main([*args[:-3], "--output", str(tmp_path / "other"), "--stream", "--overwrite"]) == 2
    assert "--overwrite does not go with --stream" in capsys.readouterr().err
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "part-0.parquet").write_bytes(b"someone's data")
    assert main([*args[:-3], "--output", str(tmp_path / "table"), "--stream"]) == 2
    assert "already holds data that is not this stream's" in capsys.readouterr().err
    assert (tmp_path / "table" / "part-0.parquet").read_bytes() == b"someone's data"


def test_predict_onto_its_own_input_is_refused_and_the_input_is_intact(files, spark):
    tmp = files[0]
    data = tmp / "train.parquet"
    before = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in data.iterdir())
    for output in (data, data / "scores", tmp):
        res = _cli("predict", "--model", str(tmp / "untrained.keras"), "--data", str(data), "--features",
                   "pixels", "--output", str(output), "--overwrite", timeout=120)
        assert res.returncode == 2
        assert res.stderr.startswith(f"sparkeras predict: error: --output {str(output)!r} would write over the "
                                     "input "), res.stderr
        assert len(res.stderr.strip().splitlines()) == 1
    assert sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in data.iterdir()) == before
    assert spark.read.parquet(str(data)).count() == 3000


def test_evaluate_prints_the_models_metrics(files, capsys):
    """``evaluate`` prints Keras' ``evaluate`` of the saved model on the data, as JSON; its mistakes come first."""
    from sparkeras.cli.main import main

    tmp, x, y, untrained = files
    rc = main(["evaluate", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "pixels", "--label", "digit"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    got = json.loads(out.out.strip().splitlines()[-1])
    want = untrained.evaluate(x, y, verbose=0, return_dict=True)
    assert set(got) == {"loss", "accuracy"}
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4) and got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-5)
    assert main(["evaluate", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
                 "--features", "pixels", "--label", "kind"]) == 2
    assert "Column 'kind' (--label) is not in the data" in capsys.readouterr().err


def test_train_with_strategy_options_mlflow_and_tensorboard(files, spark, tmp_path, capsys):
    """``--strategy-option`` reaches the strategy, ``--mlflow-*`` logs the run, ``--tensorboard`` writes Keras'
    epoch scalars and each worker's; run in this process, on the suite's session."""
    from mlflow import MlflowClient

    from sparkeras.cli.main import main

    tmp = files[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rc = main(["train", "--model", str(tmp / "untrained.keras"), "--data", str(tmp / "train.parquet"),
               "--features", "pixels", "--label", "digit", "--epochs", "2", "--workers", "2", "--strategy", "adag",
               "--strategy-option", "window=4", "--mlflow-uri", uri, "--mlflow-experiment", "cli",
               "--tensorboard", str(tmp_path / "tb"), "--output", str(tmp_path / "t.keras"), "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("cli").experiment_id])[0]
    assert run.info.run_id in out.out and f"tensorboard --logdir {tmp_path / 'tb'}" in out.out
    assert run.data.params["strategy"] == "adag" and run.data.params["strategy.window"] == "4"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [0, 1]
    assert len(tensorboard_scalars(tmp_path / "tb" / "train")["epoch_loss"]) == 2
    assert len(tensorboard_scalars(tmp_path / "tb" / "sparkeras" / "worker_1")["worker/samples_per_second"]) == 2


@pytest.mark.parametrize("command", ["demo", "train", "tune", "evaluate", "predict"])
def test_help(command):
    res = _cli(command, "--help", timeout=60)
    assert res.returncode == 0 and f"usage: sparkeras {command}" in res.stdout


AS_THE_PROGRAM = """
import atexit, sys
from sparkeras.cli.main import main
mark = sys.argv[1]
atexit.register(lambda: open(mark, "w").write("ran"))  # registered first: the interpreter runs it last
class Teardown:
    def __del__(self, path=mark + ".teardown", write=open):  # bound now: teardown clears the module's names
        write(path, "w").close()
kept = Teardown()
sys.argv = ["sparkeras", "predict", "--model", mark + ".missing.keras", "--data", "x", "--features", "f",
            "--output", "out.parquet"]
print("unflushed", end="")
sys.exit(main())
"""


def test_the_program_ends_after_its_exit_handlers_without_the_interpreters_teardown(tmp_path):
    mark = tmp_path / "mark"
    res = subprocess.run([sys.executable, "-c", AS_THE_PROGRAM, str(mark)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert res.returncode == 2 and res.stdout == "unflushed", (res.stdout, res.stderr)
    assert res.stderr.startswith("sparkeras predict: error: No model file at"), res.stderr
    assert mark.read_text() == "ran"  # every exit handler still ran
    assert not (tmp_path / "mark.teardown").exists()  # the module teardown, which took 1.6-1.9 s, did not


def test_demo_prints_json(tmp_path):
    res = _cli("demo", "--json", "--epochs", "3", "--output", str(tmp_path / "demo"), "--master", "local[2]")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(result) >= {"test_accuracy", "baseline_accuracy", "train_seconds", "baseline_seconds",
                           "samples_per_second"}
    assert result["test_accuracy"] > 0.7 and result["baseline_accuracy"] > 0.7
    assert os.path.getsize(result["plot"]) > 10_000 and os.path.exists(result["model"])
    # the CLI's own TensorFlow import prints none of its native start-up lines (--debug shows them)
    assert not [ln for ln in res.stderr.splitlines() if "absl::InitializeLog" in ln or "oneDNN" in ln], res.stderr


def test_a_csv_of_scalar_columns_trains_without_listing_them_and_the_model_remembers_them(files, tmp_path, capsys):
    """Without --features and without a 'features' column, every numeric column but the label is a feature, in
    the file's order; the choice is printed, saved with the model with the label column, and used by evaluate
    (without --label) and predict."""
    import keras
    import pandas as pd

    from sparkeras.cli.main import main

    tmp, x, y, _ = files
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    table.insert(3, "digit", y)  # the label between feature columns: it must be left out, the order kept
    table.to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "trained.keras"
    rc = main(["train", "--model", str(tmp / "untrained.keras"), "--data", str(tmp_path / "train.csv"), "--label", "digit",
               "--epochs", "3", "--batch-size", "32", "--workers", "2", "--output", str(model), "--quiet"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "features: the 8 numeric columns other than 'digit' (f0, f1, f2, ..., f7)" in out.out
    trained = keras.saving.load_model(str(model))
    assert trained.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] > 0.85

    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "train.csv")]) == 0  # its label too
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["accuracy"] == pytest.approx(trained.evaluate(x, y, verbose=0, return_dict=True)["accuracy"], abs=1e-5)
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "train.csv"),
                 "--output", str(tmp_path / "scored")]) == 0
    scored = pd.read_parquet(tmp_path / "scored")
    want = trained.predict(x, verbose=0).argmax(axis=1)
    assert (scored["prediction_class"].to_numpy() == want).mean() == 1.0


def test_a_table_whose_label_column_holds_class_names_trains_evaluates_and_predicts_by_name(files, tmp_path,
                                                                                               capsys):
    """A CSV names its classes in a string column: train numbers them in sorted order, prints and saves them;
    evaluate numbers a test file's labels the same way, and predict writes the names. Mistakes name the column."""
    import keras
    import pandas as pd

    from sparkeras.cli.main import main

    tmp, x, y, _ = files
    names = np.array(["north", "east", "west", "south"])[y]  # sorted: east, north, south, west
    ids = np.searchsorted(np.array(["east", "north", "south", "west"]), names)
    table = pd.DataFrame(x, columns=[f"Sepal.{i}" for i in range(x.shape[1])])  # R's dotted names
    table["direction"] = names
    table.iloc[:2500].to_csv(tmp_path / "train.csv", index=False)
    table.iloc[2500:][names[2500:] != "south"].to_csv(tmp_path / "valid.csv", index=False)  # lacks a class
    model = tmp_path / "trained.keras"
    common = ["--data", str(tmp_path / "train.csv"), "--label", "direction", "--epochs", "3", "--batch-size", "32",
              "--workers", "2", "--quiet"]
    rc = main(["train", "--model", str(tmp / "untrained.keras"), *common, "--validation", str(tmp_path / "valid.csv"),
               "--output", str(model)])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "classes: the 4 values of 'direction', in sorted order (east, north, south, west)" in out.out
    trained = keras.saving.load_model(str(model))
    assert trained.evaluate(x[2500:], ids[2500:], verbose=0, return_dict=True)["accuracy"] > 0.85
    from sparkeras import SparkModel

    assert SparkModel.load(str(model)).classes == ["east", "north", "south", "west"]

    table.iloc[2500:].to_csv(tmp_path / "test.csv", index=False)
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "test.csv")]) == 0  # the trained label
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    want = trained.evaluate(x[2500:], ids[2500:], verbose=0, return_dict=True)
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-5)
    assert main(["predict", "--model", str(model), "--data", str(tmp_path / "test.csv"),
                 "--output", str(tmp_path / "scored")]) == 0
    scored = pd.read_parquet(tmp_path / "scored")
    assert list(scored["direction"]) == list(names[2500:])  # the input columns as they were
    predicted = trained.predict(x[2500:], verbose=0).argmax(axis=1)
    assert list(scored["prediction_name"]) == list(np.array(["east", "north", "south", "west"])[predicted])
    capsys.readouterr()

    bad = table.iloc[2500:].copy()
    bad.loc[bad.index[:3], "direction"] = "up"
    bad.to_csv(tmp_path / "unseen.csv", index=False)
    assert main(["evaluate", "--model", str(model), "--data", str(tmp_path / "unseen.csv"), "--label", "direction"]) == 2
    assert ("Label column 'direction' of --data holds ['up'], which the model's classes ['east', 'north', 'south', "
            "'west'] do not include") in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp / "untrained.keras"), "--data", str(tmp_path / "test.csv"),
                 "--label", "direction"]) == 2
    assert "--label 'direction' holds text, but" in capsys.readouterr().err
    bad.loc[bad.index[:3], "direction"] = None
    bad.to_csv(tmp_path / "nulls.csv", index=False)
    assert main(["train", "--model", str(tmp / "untrained.keras"), *common[2:], "--data", str(tmp_path / "nulls.csv"),
                 "--output", str(tmp_path / "never.keras")]) == 2
    assert "Label column 'direction' of --data has rows without a label (null)" in capsys.readouterr().err
    three = tmp_path / "three.csv"
    table[names != "south"].to_csv(three, index=False)
    assert main(["train", "--model", str(tmp / "untrained.keras"), *common[2:], "--data", str(three),
                 "--output", str(tmp_path / "never.keras")]) == 2
    assert ("--label 'direction' holds 3 classes ['east', 'north', 'west'], but " in capsys.readouterr().err)
    assert not (tmp_path / "never.keras").exists()


def test_the_cli_imports_keras_with_the_collector_off_and_turns_it_back_on():
    import gc

    from sparkeras.worker.runtime import import_keras_quietly

    assert gc.isenabled()
    import_keras_quietly(debug=False)
    assert gc.isenabled()
    gc.disable()
    try:
        import_keras_quietly(debug=False)
        assert not gc.isenabled()  # a collector the caller turned off stays off
    finally:
        gc.enable()


def test_library_argument_names_in_errors_read_as_the_flags_typed():
    """An InputError names Python arguments; the CLI shows the flag instead, with its value after a space."""
    from sparkeras.cli.main import _one_line
    from sparkeras.errors import InputError

    said = ("strategy='easgd' trains in synchronous rounds, so its num_workers=4 tasks must run at the same time. "
            "Pass features_col= with one of them, or lower batch_size=512 (epochs=3; num_workers must be positive).")
    assert _one_line(InputError(said)) == (
        "strategy='easgd' trains in synchronous rounds, so its --workers 4 tasks must run at the same time. "
        "Pass --features with one of them, or lower --batch-size 512 (--epochs 3; --workers must be positive).")
    assert _one_line(ValueError("num_workers=4")) == "num_workers=4"  # only sparkeras' own input errors


CUSTOM_CODE = """
import keras


def squared_gap(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(keras.ops.one_hot(keras.ops.cast(y_true, "int32"), 4) - y_pred), axis=-1)


class Halve(keras.layers.Layer):  # not registered with Keras: found through --custom-objects alone
    def call(self, x):
        return x * 0.5
"""


def test_custom_layers_and_losses_come_from_a_python_file_on_the_driver_and_the_workers(files, spark, tmp_path,
                                                                                       capsys):
    """A model with a layer and a loss of the user's own, defined in a file: without ``--custom-objects`` the command
    names them and the flag in one line (Keras' own message ran to some 5,000 characters); with it, ``train``,
    ``evaluate`` and ``predict`` load the model, and the suite's Python workers, which never saw the file, import it
    as shipped."""
    import importlib.util

    import keras

    from sparkeras.cli.main import main

    tmp, x, y, _ = files
    code = tmp_path / "cli_custom_code.py"
    code.write_text(CUSTOM_CODE)
    spec = importlib.util.spec_from_file_location("cli_custom_code", code)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), module.Halve(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(4, activation="softmax")])
    model.compile("adam", module.squared_gap, metrics=["accuracy"])
    model.save(str(tmp_path / "custom.keras"))
    common = ["--data", str(tmp / "train.parquet"), "--features", "pixels", "--label", "digit"]
    train = ["train", "--model", str(tmp_path / "custom.keras"), *common, "--epochs", "3", "--workers", "2",
             "--output", str(tmp_path / "trained.keras"), "--quiet"]
    assert main(train) == 2
    assert capsys.readouterr().err.strip() == (
        f"sparkeras train: error: --model {tmp_path / 'custom.keras'} uses the class 'Halve' of module "
        "'cli_custom_code', which is not part of Keras. Pass the Python file that defines it: --custom-objects "
        "cli_custom_code.py.")
    flag = ["--custom-objects", str(code)]
    assert main(train + flag) == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "trained.keras"), *common, *flag]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trained = keras.saving.load_model(str(tmp_path / "trained.keras"),
                                      custom_objects={"Halve": module.Halve, "squared_gap": module.squared_gap})
    want = trained.evaluate(x, y, verbose=0, return_dict=True)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-5) and want["accuracy"] > 0.85, (got, want)
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-4)
    assert main(["predict", "--model", str(tmp_path / "trained.keras"), "--data", str(tmp / "train.parquet"),
                 "--features", "pixels", "--output", str(tmp_path / "scores"), *flag]) == 0, capsys.readouterr().err
    scores = spark.read.parquet(str(tmp_path / "scores")).select("pixels", "prediction_class").limit(200).collect()
    expected = trained.predict(np.array([r["pixels"] for r in scores]), verbose=0).argmax(1)
    assert [r["prediction_class"] for r in scores] == expected.tolist()
    # tune's trials rebuild the model from its config, the custom layer and loss included
    assert main(["tune", "--model", str(tmp_path / "custom.keras"), *common, "--param", "learning_rate=1e-3:1e-2:log",
                 "--trials", "2", "--epochs", "1", "--output", str(tmp_path / "tuned.keras"), "--quiet",
                 *flag]) == 0, capsys.readouterr().err[-3000:]
    assert "best: trial " in capsys.readouterr().out
    assert isinstance(keras.saving.load_model(str(tmp_path / "tuned.keras"), custom_objects={
        "Halve": module.Halve, "squared_gap": module.squared_gap}).layers[0], module.Halve)
