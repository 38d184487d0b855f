"""``sparkeras tune``: search a saved model's hyperparameters on Spark, then train the best one and save it.

A command-line user has a compiled ``.keras`` file, not a ``build_model``
function, so each ``--param NAME=RANGE`` names what to change in that file:

- ``learning_rate``, or any other argument of the model's optimizer
  (``beta_1``, ``weight_decay``); ``optimizer`` itself (``adam,sgd``) makes
  each trial a new optimizer of the drawn kind, given those of the other
  drawn values that it takes (``learning_rate`` always);
- ``LAYER.ARGUMENT``, an argument of the named layer (``dropout.rate``,
  ``dense.units``), as its ``get_config()`` holds it;
- ``batch_size``, each trial's batch (and the best's), in place of
  ``--batch-size``.

Each trial's model is the file's, made again with the drawn values
(``keras.models.clone_model``) and compiled as the file was. A layer whose
weights keep their shapes keeps the file's weights, so a search over rates
or regularization compares settings from the same start (and tunes the
fine-tuning of a trained model); a layer whose shapes a drawn value changes
starts from its initializers, as a new model would.

The search is :func:`sparkeras.tune` (Optuna: TPE sampling, median
pruning, trials in parallel, resumable with ``--storage``). The best
configuration is then trained again on ``--data`` with the same validation
and, unless ``--workers`` says otherwise, as many workers as its trial had
(:func:`sparkeras.best_model`), and saved to ``--output``; the figures
printed last are that saved model's, not the trial's: the trials keep no
weights, and a search's best value is biased upwards by the choosing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

from sparkeras.cli.custom_objects import add_custom_objects_flag
from sparkeras.cli.flags import (TRAINING_BATCH_HELP, add_common_flags, add_data_flags, add_validation_flags,
                                 check_validation_flags, json_or_text)
from sparkeras.errors import InputError

RANGE_HELP = ("LOW:HIGH (integers if both are), LOW:HIGH:log for a log scale, or choices separated by commas "
              "(A,B,C)")
_MAXIMIZED = ("acc", "auc", "precision", "recall", "f1", "r2", "iou")
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler"}
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}


def add_tune_parser(sub: Any) -> None:
    tune = sub.add_parser(
        "tune", help="search a saved .keras model's hyperparameters, then train the best and save it",
        description="Search hyperparameters of a compiled .keras model with Optuna, training the trials in "
                    "parallel on Spark; then train the best configuration on --data and save it. "
                    "Each --param names an optimizer argument (learning_rate), 'optimizer' itself, "
                    "LAYER.ARGUMENT (dropout.rate, dense.units), or batch_size.")
    tune.add_argument("--model", required=True, help="compiled model, .keras file: the starting point of every trial")
    add_custom_objects_flag(tune)
    add_data_flags(tune, "training data: Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                   "folder of image files, one folder per class (cats/001.jpg)")
    tune.add_argument("--param", action="append", default=[], metavar="NAME=RANGE", required=True,
                      help=f"a hyperparameter and its range: {RANGE_HELP}; e.g. learning_rate=1e-4:1e-1:log, "
                           "dense.units=32,64,128 (repeat for more)")
    tune.add_argument("--trials", type=int, default=10, help="trials to finish (a resumed study runs only the rest)")
    tune.add_argument("--timeout", type=float, default=None, help="seconds after which no new trial starts")
    tune.add_argument("--metric", default=None,
                      help="what a trial is scored by at its last epoch (default: val_loss, or loss without "
                           "validation), e.g. val_accuracy")
    tune.add_argument("--direction", choices=("minimize", "maximize"), default=None,
                      help="default: minimize losses and errors, maximize accuracy, AUC, precision, recall")
    tune.add_argument("--sampler", choices=tuple(SAMPLERS), default="tpe",
                      help="how settings are drawn: tpe (Optuna's default, learns from the trials so far), random, "
                           "or grid (every combination of the choices once, in a random order; each --param then "
                           "lists its choices A,B,C)")
    tune.add_argument("--pruner", choices=tuple(PRUNERS), default="median",
                      help="which trials stop early: median (below the median of the others at the same epoch), "
                           "hyperband, or none")
    tune.add_argument("--features", default=None, help="feature column(s), comma separated (as for train)")
    tune.add_argument("--label", default="label", help="label column (as for train)")
    tune.add_argument("--epochs", type=int, default=10, help="epochs of each trial, and of the best's training")
    tune.add_argument("--batch-size", type=int, default=32, help=TRAINING_BATCH_HELP)
    add_validation_flags(tune, "trials", "without --validation: the share of --data held out to score trials "
                                         "(default 0.2)")
    tune.add_argument("--workers-per-trial", type=int, default=1,
                      help="Spark tasks per trial (1: each trial trains as model.fit does, in one task)")
    tune.add_argument("--max-concurrent", type=int, default=None,
                      help="trials at once (default: the cluster's task slots / --workers-per-trial)")
    tune.add_argument("--workers", type=int, default=None,
                      help="workers for training the best configuration (default: --workers-per-trial, so it "
                           "trains as its trial did)")
    tune.add_argument("--strategy", default="averaging", help="strategy of distributed trials and of the best's "
                                                             "training (as for train)")
    tune.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                      help="an option of the strategy, e.g. window=8 (repeat for more)")
    tune.add_argument("--storage", metavar="URL",
                      help="Optuna storage (sqlite:///search.db): trials are kept as they end, and the same "
                           "command run again resumes the study")
    tune.add_argument("--study-name", default=None, help="default: sparkeras-tune-<model file name>")
    tune.add_argument("--output", required=True, help="where to write the best configuration's trained .keras model")
    tune.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    tune.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    tune.add_argument("--class-weight", metavar="ID=WEIGHT,...",
                      help="weigh the training loss by class, as Keras' class_weight: e.g. 0=1,1=9")
    tune.add_argument("--weight-col", metavar="COLUMN", help="a numeric column of --data that weighs each row's loss")
    tune.add_argument("--quiet", action="store_true", help="no line per trial and no progress bar")
    tune.add_argument("--mlflow-experiment", metavar="NAME",
                      help="log the search (a run, with a nested run per trial) and the best model to MLflow")
    tune.add_argument("--mlflow-uri", metavar="URI", help="MLflow tracking URI; default: MLflow's own")
    add_common_flags(tune)


def parse_ranges(items: list[str]) -> dict[str, Any]:
    """``--param`` values as :func:`sparkeras.tune`'s ``search_space``: ``(low, high[, "log"])`` or a list."""
    space: dict[str, Any] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            raise InputError(f"--param takes NAME=RANGE, e.g. learning_rate=1e-4:1e-1:log; got {item!r}.")
        if name in space:
            raise InputError(f"--param {name} is given twice; give each hyperparameter once.")
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise InputError(f"--param {name}={spec}: a range is LOW:HIGH or LOW:HIGH:log.")
            bounds = [_number(p, name, spec) for p in parts[:2]]
            if not bounds[0] < bounds[1] or (len(parts) == 3 and bounds[0] <= 0):
                raise InputError(f"--param {name}={spec}: needs LOW < HIGH"
                                 f"{' and LOW > 0 on a log scale' if len(parts) == 3 else ''}.")
            space[name] = tuple(bounds) + (("log",) if len(parts) == 3 else ())
        else:
            space[name] = [json_or_text(v.strip()) for v in spec.split(",")]
            if any(v == "" for v in space[name]):
                raise InputError(f"--param {name}={spec} has an empty choice; separate the choices by single commas.")
    return space


def _number(text: str, name: str, spec: str) -> int | float:
    try:
        value = json.loads(text.strip())
    except ValueError:
        value = None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise InputError(f"--param {name}={spec}: {text.strip()!r} is not a number; a range is LOW:HIGH of numbers.")
    return value


def direction_for(metric: str) -> str:
    """``minimize`` for losses and errors; ``maximize`` for accuracy, AUC and the like; else ask for it."""
    name = metric.lower().removeprefix("val_")
    if name.endswith("loss") or "error" in name or name in ("mse", "mae", "mape", "msle"):
        return "minimize"
    if any(word in name for word in _MAXIMIZED):
        return "maximize"
    raise InputError(f"--metric {metric}: say whether higher or lower is better with --direction maximize "
                     "or --direction minimize.")


def check_tune_flags(args: argparse.Namespace) -> None:
    """The checks of ``tune``'s own flags that need neither Spark nor TensorFlow."""
    parse_ranges(args.param)
    if args.trials is not None and args.trials < 1:
        raise InputError(f"--trials must be a positive integer, got {args.trials}.")
    if args.timeout is not None and not args.timeout > 0:
        raise InputError(f"--timeout must be a positive number of seconds, got {args.timeout}.")
    for flag, value in (("--workers-per-trial", args.workers_per_trial), ("--max-concurrent", args.max_concurrent)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be a positive integer, got {value}.")
    check_validation_flags(args, "trials")
    metric = metric_of(args)
    if args.direction is None:
        direction_for(metric)
    if args.sampler == "grid":
        ranges = [name for name, spec in parse_ranges(args.param).items() if not isinstance(spec, list)]
        if ranges:
            raise InputError(f"--sampler grid tries every combination of listed choices, but --param {ranges[0]} is "
                             "a range; list its choices (A,B,C) instead.")
    if args.storage is not None and "://" not in args.storage:
        raise InputError(f"--storage must be a database URL such as sqlite:///search.db, got {args.storage!r}.")


def metric_of(args: argparse.Namespace) -> str:
    return args.metric or "val_loss"


class SavedModelSpace:
    """The trials' models: the ``--model`` file's model with each draw's values, compiled as the file was.

    ``names`` are checked against the model before the search starts, so a
    misspelt layer or argument is named with the ones there are, instead of
    failing every trial.
    """

    def __init__(self, model: Any, names: list[str], custom_objects: dict[str, Any] | None = None) -> None:
        self.model, self.custom_objects = model, custom_objects
        self.layers: dict[str, dict[str, str]] = {}  # layer name -> {search name: argument}
        self.optimizer: dict[str, str] = {}  # search name -> optimizer argument
        for name in names:
            self._plan(name)

    def _plan(self, name: str) -> None:
        if name in ("optimizer", "batch_size"):  # the batch is the fit's: sparkeras.tune draws it per trial
            return
        layer, dot, argument = name.rpartition(".")
        if dot:
            try:
                config = self.model.get_layer(layer).get_config()
            except ValueError:
                shown = ", ".join(sub.name for sub in self.model.layers)
                raise InputError(f"--param {name}: the model has no layer {layer!r}; its layers are {shown}.") from None
            if argument not in config or argument == "name":
                raise InputError(f"--param {name}: layer {layer!r} has no argument {argument!r}; its arguments are "
                                 f"{', '.join(k for k in config if k != 'name')}.")
            self.layers.setdefault(layer, {})[name] = argument
            return
        config = self.model.optimizer.get_config()
        if name not in config or name == "name":
            raise InputError(f"--param {name}: not an argument of the model's optimizer "
                             f"({type(self.model.optimizer).__name__}: "
                             f"{', '.join(k for k in config if k != 'name')}), nor LAYER.ARGUMENT of a layer.")
        self.optimizer[name] = name

    def check_optimizers(self, space: dict[str, Any]) -> None:
        """``--param optimizer=...`` choices are optimizers Keras knows by name."""
        import keras

        choices = space.get("optimizer")
        if choices is None:
            return
        if not isinstance(choices, list):
            raise InputError("--param optimizer takes names separated by commas, e.g. optimizer=adam,sgd.")
        for choice in choices:
            try:
                keras.optimizers.get(choice)
            except (ValueError, TypeError):
                raise InputError(f"--param optimizer: {choice!r} is not a Keras optimizer; use names such as adam, "
                                 "adamw, sgd, rmsprop.") from None

    def build(self, params: dict[str, Any]) -> Any:
        """The trial's compiled model for ``params`` (search name -> drawn value)."""
        import keras

        with keras.saving.custom_object_scope(self.custom_objects or {}):  # --custom-objects' own layers and losses
            return self._build(params)

    def _build(self, params: dict[str, Any]) -> Any:
        import keras

        changes = {layer: {arg: params[name] for name, arg in args.items()} for layer, args in self.layers.items()}

        def remade(layer: Any) -> Any:
            return type(layer).from_config({**layer.get_config(), **changes.get(layer.name, {})})

        model = keras.models.clone_model(self.model, clone_function=remade)
        for layer in self.model.layers:
            mine = model.get_layer(layer.name)
            if [tuple(w.shape) for w in mine.weights] == [tuple(w.shape) for w in layer.weights]:
                mine.set_weights(layer.get_weights())
        optimizer = keras.optimizers.get(params["optimizer"]) if "optimizer" in params else self.model.optimizer
        config = optimizer.get_config()
        config.update({arg: params[name] for name, arg in self.optimizer.items() if arg in config})
        compiled = self.model.get_compile_config()
        compiled["optimizer"] = keras.optimizers.serialize(type(optimizer).from_config(config))
        model.compile_from_config(compiled)
        return model


def run_tune(args: argparse.Namespace) -> int:
    """Search, train the best configuration, save it, and print what was found and what was saved."""
    import sparkeras
    from sparkeras.cli.custom_objects import load_model
    from sparkeras.cli.flags import (
        class_weights, report_skipped, report_tracking, start_session, strategy_options, tracking_callbacks,
        training_data)
    from sparkeras.metric_values import rounded
    from sparkeras.storage.outputs import check_remote_output
    from sparkeras.strategies import get_strategy

    spark = start_session(args)
    check_remote_output(spark, args.output, overwrite=args.overwrite, flag="--output")
    loaded = load_model(spark, args)
    space = parse_ranges(args.param)
    models = SavedModelSpace(loaded.model, list(space), loaded.custom_objects)
    models.check_optimizers(space)
    data, validation, features, label = training_data(spark, args, loaded)
    split = 0.0 if validation else (0.2 if args.validation_split is None else args.validation_split)
    metric = metric_of(args)
    direction = args.direction or direction_for(metric)
    strategy = get_strategy(args.strategy, **strategy_options(args))
    name = os.path.basename(args.model)
    tracking = None
    if args.mlflow_experiment is not None or args.mlflow_uri is not None:
        from sparkeras.callbacks import MLflowLogger

        tracking = MLflowLogger(tracking_uri=args.mlflow_uri, experiment=args.mlflow_experiment,
                                run_name=f"sparkeras tune {name}")
    common = dict(batch_size=args.batch_size, validation_data=validation, validation_split=split,
                  features_col=features, label_col=label, class_weight=class_weights(args),
                  weight_col=args.weight_col)
    study = sparkeras.tune(
        models.build, data, search_space=space, sampler=_sampler(args.sampler, space, args.seed),
        pruner=_pruner(args.pruner, args.epochs), n_trials=_trials(args, space), timeout=args.timeout, metric=metric,
        direction=direction, epochs=args.epochs, workers_per_trial=args.workers_per_trial,
        max_concurrent=args.max_concurrent, storage=args.storage,
        study_name=args.study_name or (f"sparkeras-tune-{name.removesuffix('.keras')}" if args.storage else None),
        load_if_exists=args.storage is not None, strategy=strategy, seed=args.seed,
        verbose=0 if args.quiet else 1, tracking=tracking, custom_objects=loaded.custom_objects, **common)
    try:
        best = study.best_trial
    except ValueError:
        raise InputError(f"no trial of the search finished, so there is no best configuration to train; "
                         f"{_failures(study)}") from None
    chosen = ", ".join(f"{k}={_shown(v)}" for k, v in best.params.items())
    print(f"best: trial {best.number}, {metric}={rounded(best.value, 6)} with {chosen}")
    print(f"training the best configuration on {args.data or args.images} for {args.epochs} epoch(s)")
    if split:
        common.pop("validation_data")
    else:
        common.pop("validation_split")
    if "batch_size" in space:  # the best trial's own batch, not --batch-size
        common.pop("batch_size")
    callbacks = tracking_callbacks(args, f"sparkeras tune {name}: best")
    best_model = sparkeras.best_model(
        study, models.build, data, search_space=space, strategy=strategy,
        num_workers=args.workers or args.workers_per_trial, epochs=args.epochs, verbose=0 if args.quiet else 1,
        callbacks=callbacks, custom_objects=loaded.custom_objects, **common)
    best_model.classes = best_model.classes or loaded.classes
    best_model.save(args.output, overwrite=args.overwrite)
    final = {k: rounded(v[-1], 6) for k, v in best_model.model.history.history.items()}
    report_skipped(args, data, validation)
    print(f"saved {args.output}; final epoch: {json.dumps(final)}")
    report_tracking(callbacks, args)
    return 0


def _sampler(name: str, space: dict[str, Any], seed: int | None) -> Any:
    """``--sampler`` as an Optuna sampler, seeded with ``--seed``."""
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(space, seed=seed)
    return getattr(optuna.samplers, SAMPLERS[name])(seed=seed)


def _trials(args: argparse.Namespace, space: dict[str, Any]) -> int:
    """``--trials``, and with ``--sampler grid`` at most the grid's size.

    Why. Trials run concurrently, and Optuna's grid sampler, asked for a
    trial while the last point is still training, draws a point again: a
    grid of 4 ran 5 trials.
    """
    if args.sampler != "grid":
        return args.trials
    return min(args.trials, math.prod(len(choices) for choices in space.values()))


def _pruner(name: str, epochs: int) -> Any:
    """``--pruner`` as an Optuna pruner; Hyperband's budget is the trials' epochs."""
    import optuna

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return getattr(optuna.pruners, PRUNERS[name])()


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _failures(study: Any) -> str:
    """Why the trials failed, as the study recorded it (the first reason), or what to change."""
    reasons = [t.user_attrs.get("fail_reason") for t in study.trials if t.user_attrs.get("fail_reason")]
    if reasons:
        return f"{len(reasons)} failed, the first with: {reasons[0]}"
    return "every trial was pruned or none started before --timeout; raise --trials or --timeout."
