"""Hyperparameter search with Optuna and ensembles, on real Spark and real Keras."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import blobs, mlp
import sparkeras
from sparkeras import InputError

optuna = pytest.importorskip("optuna")

DIM, CLASSES = 8, 4


def _data(n: int = 1500, seed: int = 5, noise: float = 1.6):
    return blobs(n, dim=DIM, classes=CLASSES, noise=noise, seed=seed)


def _model(learning_rate: float, units: int, seed: int = 1, saturate: bool = False):
    import keras

    keras.utils.set_random_seed(seed)
    init = keras.initializers.Constant(1e38) if saturate else "glorot_uniform"
    model = keras.Sequential([
        keras.Input((DIM,)),
        keras.layers.Dense(units, activation="relu", kernel_initializer=init),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _from_trial(trial):
    units = trial.suggest_int("units", 1, 64)
    if units == 13:
        raise ValueError("13 units are unlucky")
    return _model(trial.suggest_float("learning_rate", 1e-5, 1.0, log=True), units, saturate=units == 7)


@pytest.mark.parametrize("options, words", [
    ({"n_trials": 0}, "n_trials must be a positive integer, got 0"),
    ({}, "Give n_trials, timeout or both"),
    ({"n_trials": 2, "search_space": {}}, "search_space must be a non-empty dict"),
    ({"n_trials": 2, "search_space": {"lr": (0.1, 0.01)}}, "search_space['lr'] = (0.1, 0.01) needs low < high"),
    ({"n_trials": 2, "search_space": {"units": "many"}}, "search_space['units'] = 'many' is not a range"),
    ({"n_trials": 2, "direction": "up"}, "direction must be 'minimize' or 'maximize'"),
    ({"n_trials": 2, "validation_split": 0.0}, "metric='val_loss' needs validation data"),
    ({"n_trials": 2, "timeout": -1}, "timeout must be a positive number"),
    ({"n_trials": 2, "class_weight": [1.0, 2.0]}, "class_weight must be a dict {class id: weight}"),
    ({"n_trials": 2, "weight_col": "w"}, "weight_col='w' names a column, but the data is numpy arrays"),
])
def test_bad_arguments_are_named_before_spark_starts(options, words):
    with pytest.raises(InputError) as err:
        sparkeras.tune(lambda trial: None, np.zeros((4, DIM)), np.zeros(4), **options)
    assert words in str(err.value)


def test_a_trials_task_splits_its_input_into_training_then_validation_rows():
    from sparkeras.worker.trial import split_blocks

    block = lambda rows, name: (rows, (name,), {})  # noqa: E731 - (rows, blobs, stats), as packed
    train, held_out = split_blocks(iter([block(40, "t0"), block(24, "t1"), block(16, "v0")]), 64, 16)
    assert [b[1] for b in train] == [("t0",), ("t1",)] and [b[1] for b in held_out] == [("v0",)]
    train, held_out = split_blocks(iter([block(64, "t0")]), 64, 0)
    assert len(train) == 1 and held_out == []
    with pytest.raises(RuntimeError, match="read 64 training and 40 validation rows, expected 64 and 16"):
        split_blocks(iter([block(64, "t0"), block(40, "v0")]), 64, 16)


def test_trials_can_be_distributed_fits_of_several_workers(spark):
    x, y = _data(600)
    study = sparkeras.tune(lambda p: _model(p["learning_rate"], 16), x, y, search_space={"learning_rate": [3e-3, 1e-2]},
                           n_trials=2, epochs=2, workers_per_trial=2, verbose=0, seed=2)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert [t.user_attrs["epochs"] for t in study.trials] == [2, 2]
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)
    assert study.best_value < 1.0  # val_loss of a learnt 4-class problem (chance is 1.39)


def test_bad_settings_for_the_cluster_or_model_fail_before_any_trial_trains(spark):
    x, y = _data(200)
    with pytest.raises(InputError, match="workers_per_trial=3 is more than the cluster's 2 task slots"):
        sparkeras.tune(_from_trial, x, y, n_trials=2, workers_per_trial=3)
    with pytest.raises(InputError, match=r"max_concurrent=3 trials of 1 worker\(s\) each need 3 task slots"):
        sparkeras.tune(_from_trial, x, y, n_trials=2, max_concurrent=3)
    storage = optuna.storages.InMemoryStorage()
    with pytest.raises(InputError) as err:
        sparkeras.tune(lambda t: _model(1e-3, 8), x, y, n_trials=2, metric="val_f1", storage=storage,
                       study_name="bad-metric", verbose=0)
    assert "metric='val_f1' is not one the fit reports" in str(err.value)
    assert "'val_accuracy'" in str(err.value)
    trials = optuna.load_study(study_name="bad-metric", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL"]  # the one trial asked for the check; none trained

    def per_class(trial):
        import keras

        model = _model(1e-3, 8)
        model.compile("adam", "categorical_crossentropy", metrics=[keras.metrics.F1Score()])
        return model

    with pytest.raises(InputError, match=r"^metric='val_f1_score' has one value per class \(4\), and the search "
                                         r"needs one number: compile the metric with average='macro'"):
        sparkeras.tune(per_class, x, np.eye(CLASSES, dtype="float32")[y], n_trials=1, metric="val_f1_score",
                       validation_split=0.2, verbose=0)
    assert "val_f1" in trials[0].user_attrs["fail_reason"]


def _grid_accuracy(x, y, learning_rate: float, units: int, epochs: int) -> float:
    """Plain model.fit on the search's split (the last 20% of rows held out, as Keras does)."""
    cut = int(len(x) * 0.8)
    model = _model(learning_rate, units)
    model.fit(x[:cut], y[:cut], epochs=epochs, batch_size=32, verbose=0)
    return model.evaluate(x[cut:], y[cut:], verbose=0, return_dict=True)["accuracy"]


def test_a_concurrent_search_finds_a_configuration_as_good_as_the_full_grids_best(spark):
    from sparkeras.data.reuse import PACKED

    x, y = _data(700)
    space = {"learning_rate": [1e-4, 3e-3, 3e-2], "units": [2, 8, 32]}
    PACKED.clear()
    study = sparkeras.tune(lambda p: _model(p["learning_rate"], p["units"]), x, y, search_space=space, n_trials=8,
                           epochs=3, metric="val_accuracy", direction="maximize", seed=3, verbose=0)
    states = [t.state.name for t in study.trials]
    assert len(states) == 8 and set(states) <= {"COMPLETE", "PRUNED"}, states
    # The data was packed once for the whole search: every later fit reused the training and validation packing.
    assert PACKED.hits == 2 * (8 - 1)
    assert len(PACKED) == 0  # and dropped once the search ended
    grid = {(lr, u): _grid_accuracy(x, y, lr, u, 3) for lr in space["learning_rate"] for u in space["units"]}
    found = grid[(study.best_params["learning_rate"], study.best_params["units"])]
    assert found >= max(grid.values()) - 0.01, (study.best_params, grid)
    assert study.best_value > 0.6  # a learnable problem, learnt


def test_the_pruner_stops_a_bad_trial_early_and_failures_are_recorded_with_their_reasons(spark, tmp_path,
                                                                                          monkeypatch):
    from mlflow import MlflowClient

    from sparkeras.callbacks import MLflowLogger

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    x, y = _data(800)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="prune")
    for params in ({"learning_rate": 3e-3, "units": 32}, {"learning_rate": 1e-2, "units": 16},
                   {"learning_rate": 1e-5, "units": 1}, {"learning_rate": 3e-3, "units": 13},
                   {"learning_rate": 3e-3, "units": 7}):
        study.enqueue_trial(params)
    sparkeras.tune(_from_trial, x, y, n_trials=5, epochs=3, storage=storage, study_name="prune",
                   load_if_exists=True, max_concurrent=1, verbose=0,
                   pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                   tracking=MLflowLogger(tracking_uri=uri, experiment="search", run_name="prune"))
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "FAIL"]
    assert [t.user_attrs.get("epochs") for t in trials[:3]] == [3, 3, 1]
    assert sorted(trials[2].intermediate_values) == [0]  # it reported one epoch and stopped
    assert "ValueError: 13 units are unlucky" in trials[3].user_attrs["fail_reason"]
    assert trials[4].user_attrs["fail_reason"] == "loss is nan after epoch 1"

    # Tracked: the search is one MLflow run, each trial a nested run that ends as the trial did.
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search").experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "prune"]
    assert parent.info.status == "FINISHED" and parent.data.params["n_trials"] == "5"
    assert parent.data.params["pruner"] == "MedianPruner" and parent.data.tags["best_trial"] in ("0", "1")
    best = min(t.value for t in trials[:2])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best)
    children = {int(r.data.params["trial"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert [children[i].info.status for i in range(5)] == ["FINISHED", "FINISHED", "KILLED", "FAILED", "FAILED"]
    assert children[3].data.tags["fail_reason"] == trials[3].user_attrs["fail_reason"]
    assert children[0].data.params["units"] == "32"
    for i, epochs in ((0, 3), (2, 1)):
        logged = [m.value for m in client.get_metric_history(children[i].info.run_id, "val_loss")]
        assert len(logged) == epochs and logged == pytest.approx([trials[i].intermediate_values[e]
                                                                   for e in range(epochs)])


RESUME = """
import json, os, sys
os.environ["PYSPARK_PYTHON"] = sys.executable
sys.path.insert(0, {tests!r})
import sparkeras
from test_tune import _data, _from_trial
sparkeras.get_spark("local[1]").sparkContext.setLogLevel("OFF")  # one slot: one cold worker to start
x, y = _data(400)
study = sparkeras.tune(_from_trial, x, y, n_trials=2, epochs=2, storage={url!r}, study_name="resume",
                       load_if_exists=True, verbose=0, seed=7)
print(json.dumps([[t.number, t.state.name, t.value, str(t.datetime_complete), t.user_attrs.get("fail_reason")]
                  for t in study.trials]))
from sparkeras.ml import KerasModel
stage = KerasModel.load({stage!r})  # a vote ensemble, saved with Spark ML persistence
print(json.dumps(stage.model.predict(x[:5], verbose=0).tolist()))
"""


@pytest.mark.own_processes
def test_a_study_in_sqlite_resumes_in_a_new_process_without_rerunning_finished_trials(spark, tmp_path):
    """Also: a vote ensemble saved as a Spark ML stage loads in that fresh process (its layer is found)."""
    url = f"sqlite:///{tmp_path / 'search.db'}"
    x, y = _data(400)
    study = sparkeras.tune(_from_trial, x, y, n_trials=1, epochs=2, storage=url, study_name="resume",
                           verbose=0, seed=7)
    before = [[t.number, t.state.name, t.value, str(t.datetime_complete)] for t in study.trials]
    study.ask()  # a trial the driver was running when it stopped
    from sparkeras.ensemble.ensemble import combine_members
    from sparkeras.ml import KerasModel

    voting = combine_members([_model(1e-3, 4, seed=s) for s in (1, 2, 3)], "vote")
    stage = str(tmp_path / "vote-stage")
    KerasModel(model=voting).write().save(stage)
    script = RESUME.format(tests=os.path.dirname(os.path.abspath(__file__)), url=url, stage=stage)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(json.loads(done.stdout.strip().splitlines()[-1]), voting.predict(x[:5], verbose=0))
    after = json.loads(done.stdout.strip().splitlines()[-2])
    assert [t[:4] for t in after[:1]] == before  # the finished trial, untouched
    assert after[1][1] == "FAIL" and after[1][4].startswith("interrupted")
    assert len(after) == 3 and after[2][1] in ("COMPLETE", "PRUNED", "FAIL")  # one more makes two finished


def test_an_ensemble_beats_its_average_member_and_scores_the_same_everywhere(spark, tmp_path):
    x, y = _data(900, seed=9, noise=2.2)
    x_test, y_test = blobs(600, dim=DIM, classes=CLASSES, noise=2.2, seed=9, sample_seed=99)
    ensemble = sparkeras.Ensemble(_model(1e-2, 32), members=3, data_sampling="bootstrap", seed=4)
    histories = ensemble.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert len(histories) == 3 and all(len(h.history["loss"]) == 6 for h in histories)
    members = [m.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"] for m in ensemble.members]
    assert len({round(a, 4) for a in members}) > 1  # seeds and samples made different members
    combined = ensemble.evaluate(x_test, y_test)["accuracy"]
    assert combined > float(np.mean(members)), (combined, members)

    expected = ensemble.model.predict(x_test, verbose=0)
    np.testing.assert_allclose(expected, np.mean([m.predict(x_test, verbose=0) for m in ensemble.members], axis=0),
                               atol=1e-5)
    np.testing.assert_allclose(ensemble.predict(x_test), expected, atol=1e-5)
    frame = spark.createDataFrame([(i, x_test[i].tolist()) for i in range(len(x_test))], ["id", "features"])
    frame.createOrReplaceTempView("ensemble_rows")
    sparkeras.register_udf(spark, "ensemble_scores", ensemble.model)
    rows = spark.sql("SELECT id, ensemble_scores(features) AS s FROM ensemble_rows ORDER BY id").collect()
    np.testing.assert_allclose([r.s for r in rows], expected, atol=1e-5)

    path = str(tmp_path / "ensemble.keras")
    ensemble.save(path)
    loaded = sparkeras.Ensemble.load(path)
    assert len(loaded.members) == 3 and loaded.combine == "mean"
    np.testing.assert_allclose(loaded.model.predict(x_test, verbose=0), expected, atol=1e-6)


def test_a_partitioned_voting_ensemble_trains_each_member_on_its_own_rows(spark):
    x, y = _data(600, seed=3)
    ensemble = sparkeras.Ensemble(lambda: _model(1e-2, 16), members=2, data_sampling="partition", combine="vote",
                                  seed=5)
    histories = ensemble.fit(x, y, epochs=2, verbose=0)
    assert [len(h.history["loss"]) for h in histories] == [2, 2]
    shares = ensemble.predict(x[:50])
    assert set(np.round(shares.sum(axis=1), 5)) == {1.0}  # vote shares
    assert set(np.unique(shares)) <= {0.0, 0.5, 1.0}  # two members: each class gets 0, 1 or 2 votes
    assert ensemble.evaluate(x, y)["accuracy"] > 0.5


def test_class_and_row_weights_reach_every_ensemble_member(spark):
    """A rare class: each weighted member, and so the ensemble, finds far more of it than unweighted ones."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    y = ((x[:, 0] + 0.8 * rng.normal(size=3000)) > 1.6).astype(np.int64)  # about 8% positives
    ratio = float((y == 0).sum() / (y == 1).sum())

    def recall(**weights):
        ensemble = sparkeras.Ensemble(lambda: mlp(dim=8, classes=2, seed=3), members=2, data_sampling="partition",
                                      seed=5)
        ensemble.fit(x, y, epochs=3, verbose=0, **weights)
        return float(np.mean(ensemble.predict(x[y == 1]).argmax(axis=1) == 1))

    plain = recall()
    assert recall(class_weight={0: 1.0, 1: ratio}) > plain + 0.2
    assert recall(sample_weight=np.where(y == 1, ratio, 1.0)) > plain + 0.2


def test_a_search_with_only_a_timeout_stops_starting_trials_when_it_runs_out(spark):
    x, y = _data(300)
    study = sparkeras.tune(lambda p: _model(p["learning_rate"], 8), x, y, search_space={"learning_rate": [1e-3, 1e-2]},
                           timeout=2.0, epochs=1, verbose=0, seed=1)
    assert len(study.trials) >= 1
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)  # running trials were finished
    starts = [t.datetime_start for t in study.trials]
    assert (max(starts) - min(starts)).total_seconds() <= 2.5  # none started after the 2 s
    spent = sparkeras.tune(lambda p: _model(p["learning_rate"], 8), x, y, search_space={"learning_rate": [1e-3]},
                           timeout=1e-9, epochs=1, verbose=0)
    assert spent.trials == []  # out of time before the first trial: an empty study, not an error



def test_mlflows_autologging_logs_a_search_as_tracking_does_and_leaves_its_trials_fits_alone(spark, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("autologged-search").experiment_id
    x, y = _data(300)
    try:
        mlflow.keras.autolog(extra_tags={"team": "risk"})
        study = sparkeras.tune(lambda p: _model(p["learning_rate"], 8), x, y, n_trials=2, epochs=1, verbose=0,
                               search_space={"learning_rate": [1e-3, 1e-2]}, seed=1, workers_per_trial=2)
    finally:
        mlflow.keras.autolog(disable=True)
    search = mlflow.last_active_run()
    assert search.info.status == "FINISHED" and search.data.tags["sparkeras.search"] == "optuna"
    assert search.data.tags["team"] == "risk" and search.data.tags["mlflow.autologging"] == "keras"
    runs = MlflowClient(uri).search_runs([experiment])
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == search.info.run_id]
    assert len(runs) == 3 and len(trials) == 2  # the search and its trials: no run for each trial's fit
    assert sorted(float(r.data.params["learning_rate"]) for r in trials) == \
        sorted(t.params["learning_rate"] for t in study.trials)


def test_a_majority_vote_counts_each_members_most_probable_class():
    from sparkeras.ensemble.layers import MajorityVote

    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    b = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1]], dtype="float32")
    c = np.array([[0.1, 0.8, 0.1], [0.1, 0.5, 0.4]], dtype="float32")
    shares = np.asarray(MajorityVote()([a, b, c]))
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3, 0], [0, 2 / 3, 1 / 3]], atol=1e-6)
    binary = np.asarray(MajorityVote()([np.array([[0.9]]), np.array([[0.2]]), np.array([[0.6]])]))
    np.testing.assert_allclose(binary, [[2 / 3]], atol=1e-6)


@pytest.mark.parametrize("options, words", [
    ({"members": 0}, "members must be a positive integer, got 0"),
    ({"data_sampling": "random"}, "data_sampling must be one of ['partition', 'bootstrap'], got 'random'"),
    ({"combine": "max"}, "combine must be one of ['mean', 'vote'], got 'max'"),
])
def test_bad_ensemble_settings_are_named(options, words):
    with pytest.raises(InputError) as err:
        sparkeras.Ensemble(lambda: None, **options)
    assert words in str(err.value)


def test_a_drawn_batch_size_is_each_trials_batch_and_the_best_models(spark):
    """A parameter named ``batch_size`` sets each trial's batch: with plain SGD for one epoch, batches of 8 take 32
    times the steps of 256 and reach a far lower loss (both trials trained at the search's 32 before); the best
    model is then trained at the best trial's batch."""
    import math

    import keras
    import optuna

    x, y = _data(800)

    def build(params):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(CLASSES, activation="softmax")])
        model.compile(keras.optimizers.SGD(0.02), "sparse_categorical_crossentropy")
        return model

    space = {"batch_size": [8, 256]}
    study = sparkeras.tune(build, x, y, search_space=space, n_trials=2, epochs=1, batch_size=32, verbose=0, seed=0,
                           sampler=optuna.samplers.GridSampler(space), pruner=optuna.pruners.NopPruner())
    loss = {t.params["batch_size"]: t.value for t in study.trials}
    assert sorted(loss) == [8, 256] and loss[8] < loss[256] - 0.2, loss
    best = sparkeras.best_model(study, build, x, y, search_space=space, num_workers=1, epochs=1, verbose=0)
    assert int(best.model.optimizer.iterations) == math.ceil(len(x) / 8)


@pytest.mark.parametrize("workers_per_trial", [1, 2], ids=["one-task-trials", "distributed-trials"])
def test_class_and_row_weights_apply_to_every_trial(spark, workers_per_trial):
    """Scored by the validation recall of a rare class: the weighted search's trial finds far more of it."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    y = ((x[:, 0] + 0.8 * rng.normal(size=3000)) > 1.6).astype(np.int64)  # about 8% positives

    def build(trial):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(1, activation="sigmoid")])
        model.compile(keras.optimizers.Adam(trial.suggest_float("learning_rate", 1e-3, 1e-3)), "binary_crossentropy",
                      metrics=[keras.metrics.Recall(name="recall")])
        return model

    def recall(**options):
        study = sparkeras.tune(build, x, y, n_trials=1, epochs=3, metric="val_recall", direction="maximize",
                               workers_per_trial=workers_per_trial, verbose=0, seed=0, **options)
        return study.best_value

    ratio = float((y == 0).sum() / (y == 1).sum())
    plain = recall()
    assert recall(class_weight={0: 1.0, 1: ratio}) > plain + 0.2
    assert recall(sample_weight=np.where(y == 1, ratio, 1.0)) > plain + 0.2  # row weights, held-out rows unweighted


def test_keras_tuner_hyperparameters_draw_the_same_ranges_from_optuna():
    """Each ``hp`` call of a KerasTuner build function is the Optuna draw of the same range; conditional ones are
    drawn only under their parent's values; a log range with a step multiplies; what Optuna cannot draw is named."""
    from sparkeras.tune import HyperParameters

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(8):
        hp = HyperParameters(study.ask())
        units = hp.Int("units", 32, 256, step=32)
        rate = hp.Float("learning_rate", 1e-4, 1e-1, sampling="log")
        width = hp.Int("width", 8, 128, step=2, sampling="log")  # KerasTuner: 8, 16, 32, 64, 128
        kind = hp.Choice("kind", ["dense", "conv"])
        with hp.conditional_scope("kind", ["conv"]):
            kernel = hp.Int("kernel", 2, 5, default=0)
        dropout = hp.Boolean("dropout")
        rate_of_dropout = hp.Float("rate", 0.1, 0.5, step=0.1, parent_name="dropout", parent_values=[True])
        assert hp.Fixed("epochs", 3) == 3 and hp.get("epochs") == 3
        assert units in range(32, 257, 32) and 1e-4 <= rate <= 1e-1 and width in (8, 16, 32, 64, 128)
        distributions = hp.trial.distributions
        assert distributions["learning_rate"].log and distributions["units"].step == 32
        assert (kernel in range(2, 6)) == (kind == "conv") and ("kernel" in distributions) == (kind == "conv")
        assert (rate_of_dropout is not None) == dropout and ("rate" in hp.values) == dropout
        assert set(hp.values) == {"units", "learning_rate", "width", "kind", "dropout", "epochs"} | \
            ({"kernel"} if kind == "conv" else set()) | ({"rate"} if dropout else set())
    hp = HyperParameters(study.ask())
    for call, message in [(lambda: hp.Int("u", 1, 9, sampling="reverse_log"), "sampling='reverse_log' has no Optuna"),
                          (lambda: hp.Float("r", 1.0, 1.0), r"hp 'r': needs min_value < max_value, got 1.0 and 1.0"),
                          (lambda: hp.Float("r", 0.0, 1.0, sampling="log"), "min_value > 0 for log sampling"),
                          (lambda: hp.Choice("c", []), r"hp.Choice\('c'\) needs a non-empty list"),
                          (lambda: hp.get("missing"), "no hyperparameter 'missing' was drawn")]:
        with pytest.raises((InputError, KeyError), match=message):
            call()


def test_a_keras_tuner_build_function_is_searched_and_its_best_model_rebuilt(spark):
    x, y = _data(400)

    def build(hp):
        return _model(hp.Choice("learning_rate", [3e-3, 3e-2]), hp.Int("units", 8, 32, step=8))

    study = sparkeras.tune(sparkeras.from_keras_tuner(build), x, y, n_trials=2, epochs=2, verbose=0, seed=4)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    assert all(set(t.params) == {"learning_rate", "units"} for t in study.trials)
    best = sparkeras.best_model(study, sparkeras.from_keras_tuner(build), x, y, epochs=1, verbose=0)
    assert best.model.layers[0].units == study.best_params["units"]
    assert float(best.model.optimizer.learning_rate) == pytest.approx(study.best_params["learning_rate"])
    with pytest.raises(InputError, match="from_keras_tuner needs a function build_model"):
        sparkeras.from_keras_tuner("build")
