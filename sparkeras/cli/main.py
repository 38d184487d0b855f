"""The ``sparkeras`` command: ``demo``, ``train``, ``tune``, ``evaluate`` and ``predict``.

Errors are one clear line on stderr and a non-zero exit code; ``--debug``
shows the full traceback (and Spark's own logs). Every check that needs
neither Spark nor TensorFlow (numbers, the model file, the data's format,
the output path, the master URL) runs first, in well under a second, so a
typo never costs a Spark start-up, and a bad ``--output`` never costs a
finished fit. Messages name the command-line flags, not the Python
arguments behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Sequence

from sparkeras.cli import tune as tune_command
from sparkeras.cli.flags import (
    add_common_flags, add_data_flags, add_validation_flags, check_strategy_flags, check_tracking,
    check_validation_flags, check_weight_flags, class_weights, given_columns, image_size, read_image_folder,
    report_skipped, report_tracking, skipped_files, start_session, strategy_options, tracking_callbacks, training_data,
    SCORING_BATCH_HELP, TRAINING_BATCH_HELP, WORKERS_HELP)
from sparkeras.cli.custom_objects import add_custom_objects_flag, check_custom_objects, load_model
from sparkeras.cli.streaming import add_stream_flags, check_stream_flags, run_stream
from sparkeras.data.columns import quoted
from sparkeras.metric_values import rounded

EXIT_INPUT = 2
EXIT_FAILURE = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkeras", description="Train and serve Keras 3 models on Apache Spark.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small CNN on the bundled 8x8 digits with 2 workers",
                          description="Train a small CNN on scikit-learn's 8x8 digits on an embedded Spark "
                                      "with 2 workers, and compare with plain model.fit.")
    demo.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    demo.add_argument("--workers", type=int, default=2, help="Spark tasks that train in parallel (default 2)")
    demo.add_argument("--batch-size", type=int, default=32, help=TRAINING_BATCH_HELP)
    demo.add_argument("--output", default="sparkeras-demo", help="folder for the model and the plot")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_common_flags(demo)

    train = sub.add_parser("train", help="train a saved .keras model on Parquet data or image files",
                           description="Train a compiled .keras model on Parquet data, or on a folder of image "
                                       "files in one folder per class, and save the result.")
    train.add_argument("--model", required=True, help="compiled model, .keras file")
    add_custom_objects_flag(train)
    add_data_flags(train, "training data: Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                   "folder of image files, one folder per class (cats/001.jpg); the class names are saved with "
                   "the model")
    train.add_argument("--features", default=None,
                       help="feature column(s), comma separated; default: the column 'features', or where the data "
                            "has none, every numeric column but the label and weight columns, in the data's order "
                            "(a CSV of scalar columns, say); saved with the model for evaluate and predict")
    train.add_argument("--label", default="label",
                       help="label column; a column of class names (text) is numbered in sorted order, and the "
                            "names are saved with the model")
    train.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1, as Keras' fit)")
    train.add_argument("--batch-size", type=int, default=32, help=TRAINING_BATCH_HELP)
    train.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    train.add_argument("--strategy", default="averaging",
                       help="averaging (default), allreduce, or a parameter-server strategy: async, hogwild, "
                            "downpour, adag, dynsgd, easgd, aeasgd, eamsgd")
    train.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                       help="an option of the strategy, as its Python argument, e.g. window=8 (repeat for more)")
    add_validation_flags(train, "every epoch", "without --validation: hold out this share of --data (or --images) at "
                                               "random to score every epoch on, as Keras' validation_split; the "
                                               "saved model trains on the rest")
    train.add_argument("--output", required=True, help="where to write the trained .keras model")
    train.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    train.add_argument("--seed", type=int, default=None,
                       help="seed of the per-epoch shuffles (default: random) and of the rows --validation-split "
                            "holds out (default: the same rows every run)")
    train.add_argument("--class-weight", metavar="ID=WEIGHT,...",
                       help="weigh the training loss by class, as Keras' class_weight: e.g. 0=1,1=9")
    train.add_argument("--weight-col", metavar="COLUMN",
                       help="a numeric column of --data that weighs each row's loss (Keras' sample_weight)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--plot", help="write the learning curves (loss and metrics, train and validation) "
                                      "to this .png file")
    train.add_argument("--mlflow-experiment", metavar="NAME",
                       help="log the fit to this MLflow experiment: params, every epoch's metrics, the model")
    train.add_argument("--mlflow-uri", metavar="URI",
                       help="MLflow tracking URI (sqlite:///mlflow.db, a server URL); default: MLflow's own")
    train.add_argument("--tensorboard", metavar="DIR",
                       help="write TensorBoard event files here: Keras' epoch scalars, and each worker's under "
                            "DIR/sparkeras")
    add_common_flags(train)

    tune_command.add_tune_parser(sub)

    evaluate = sub.add_parser("evaluate", help="print a saved model's loss and metrics on labelled data",
                              description="Evaluate a .keras model's compiled loss and metrics over Parquet data "
                                          "or a folder of class folders, and print them as one JSON object.")
    evaluate.add_argument("--model", required=True, help="compiled model, .keras file")
    add_custom_objects_flag(evaluate)
    add_data_flags(evaluate, "labelled data: Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                   "folder of image files in class folders, numbered by the classes saved with the model")
    evaluate.add_argument("--features", default=None,
                          help="feature column(s), comma separated; default: those the model was trained on")
    evaluate.add_argument("--label", default=None,
                          help="label column; default: the one the model was trained on; class names (text) are "
                               "numbered by the classes saved with the model")
    evaluate.add_argument("--weight-col", metavar="COLUMN", help="a numeric column of --data that weighs each row")
    evaluate.add_argument("--batch-size", type=int, default=256, help=SCORING_BATCH_HELP)
    evaluate.add_argument("--workers", type=int, default=None, help=WORKERS_HELP)
    add_common_flags(evaluate)

    predict = sub.add_parser("predict", help="add a prediction column to Parquet data (or to files as they arrive)",
                             description="Predict with a .keras model over Parquet data; write Parquet "
                                         "with every input column plus the prediction column and, for a "
                                         "classifier, the class index (prediction_class) and, where the "
                                         "model saved its class names, the name (prediction_name).")
    predict.add_argument("--model", required=True, help=".keras file")
    add_custom_objects_flag(predict)
    add_data_flags(predict, "Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                   "folder of image files; the output has their path, the prediction and, for a model trained on "
                   "class folders or class names, the class name")
    predict.add_argument("--features", default=None,
                         help="feature column(s), comma separated; default: those the model was trained on")
    predict.add_argument("--output", required=True, help="Parquet path to write (never one of the inputs)")
    predict.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    predict.add_argument("--prediction-col", default="prediction",
                         help="name of the output column (default prediction)")
    predict.add_argument("--batch-size", type=int, default=256, help=SCORING_BATCH_HELP)
    add_stream_flags(predict)
    add_common_flags(predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``sparkeras`` command; ``argv`` defaults to the program's own arguments.

    As the program (no ``argv``), the process ends as soon as its exit
    handlers have run (:func:`exit_without_teardown`).
    """
    code = _run(argv)
    if argv is None:
        exit_without_teardown(code)
    return code


def exit_without_teardown(code: int) -> None:
    """When the interpreter exits, run every exit handler, flush, and end the process with ``code`` at once.

    Why. After its exit handlers, Python tears down its modules, and with
    TensorFlow loaded that took 1.6-1.9 s on 2 cores (a plain Keras script
    as well as ``sparkeras demo``), after the command had printed its
    result and written its files. Nothing of a command's outcome is left
    to that teardown: outputs are written and closed before the command
    returns, Spark's JVM exits when this process's end closes its stdin,
    and the exit handlers (TensorFlow's temporary files, logging, MLflow,
    the class-data archive's builder) still run, in their usual order.
    """
    import atexit

    def leave() -> None:
        atexit.unregister(leave)
        try:
            atexit._run_exitfuncs()  # every other handler, last registered first, as the interpreter runs them
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - a closed pipe (| head): nothing more to say
                    pass
            os._exit(code)

    atexit.register(leave)  # registered last, so the interpreter calls it first


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ["SPARKERAS_DEBUG"] = "1"  # workers show the backend's native start-up logs
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        check_arguments(args)
        if args.command == "demo":
            from sparkeras.cli.demo import run_demo

            return run_demo(args)
        return {"train": _train, "tune": tune_command.run_tune, "evaluate": _evaluate,
                "predict": _predict}[args.command](args)
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to explain
        if args.debug:
            raise
        from sparkeras.errors import InputError

        print(f"sparkeras {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT if isinstance(exc, InputError) else EXIT_FAILURE


# Python argument names in library messages, and the flags a CLI user typed for them.
_FLAGS = (("features_col=", "--features"), ("features_col", "--features"), ("label_col=", "--label"),
          ("label_col", "--label"), ("num_workers=", "--workers"), ("num_workers", "--workers"),
          ("batch_size=", "--batch-size"), ("batch_size", "--batch-size"), ("epochs=", "--epochs"),
          ("prediction_col=", "--prediction-col"), ("prediction_col", "--prediction-col"),
          ("validation_data", "--validation"), ("overwrite=True", "--overwrite"), ("metric=", "--metric"),
          ("workers_per_trial=", "--workers-per-trial"), ("workers_per_trial", "--workers-per-trial"),
          ("max_concurrent=", "--max-concurrent"), ("max_concurrent", "--max-concurrent"),
          ("on_error='skip'", "--on-error skip"))


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs neither Spark nor TensorFlow, before either starts."""
    from sparkeras.errors import InputError

    for flag in ("epochs", "workers", "batch_size"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise InputError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}.")
    if args.master:
        from sparkeras.session import check_master

        check_master(args.master)
    if args.command == "demo":
        return
    from sparkeras.data.sources import data_format
    from sparkeras.storage.model_file import check_model_archive
    from sparkeras.storage.outputs import check_output, is_remote

    if not is_remote(args.model):
        check_model_archive(args.model, "--model")
    check_custom_objects(args.custom_objects)
    validation = getattr(args, "validation", None)
    inputs = [args.model, args.data or args.images] + ([validation] if validation else [])
    if args.command == "evaluate":
        if args.images and args.weight_col is not None:
            raise InputError("--weight-col names a column of --data; with --images there is none. Drop it.")
        if args.weight_col is not None and not args.weight_col:
            raise InputError("--weight-col needs a column name.")
    if args.images:
        image_size(args)
        from sparkeras.images.reader import check_image_arguments

        for folder, flag in [(args.images, "--images")] + ([(validation, "--validation")] if validation else []):
            check_image_arguments(folder, (1, 1), "rgb", None, args.on_error, ("png",), flag)
    else:
        data_format(args.data)
        if validation:
            data_format(validation)
    if args.command == "tune":
        tune_command.check_tune_flags(args)
    if args.command == "train":
        check_validation_flags(args, "every epoch")
    if args.command in ("train", "tune"):
        check_strategy_flags(args)
        check_tracking(args, inputs)
        check_weight_flags(args)
        check_output(args.output, kind="model", overwrite=args.overwrite, inputs=inputs, flag="--output")
        if getattr(args, "plot", None):
            from sparkeras.tracking.plots import check_plot_path

            check_plot_path(args.plot, args.overwrite, "--plot", inputs + [args.output])
    elif args.command == "predict":
        check_stream_flags(args, inputs)
        if not args.stream:
            check_output(args.output, kind="table", overwrite=args.overwrite, inputs=inputs, flag="--output")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    from sparkeras.errors import InputError, WorkerError

    if isinstance(exc, WorkerError):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return f"{lines[0]} {lines[-1].strip()}" if len(lines) > 1 else text
    text = " ".join(text.split())
    if isinstance(exc, InputError):
        for name, flag in _FLAGS:
            # "num_workers=4" reads "--workers 4"; "pass features_col= with..." reads "pass --features with..."
            text = re.sub(re.escape(name) + (r"(?=[^\s,.;:)])" if name.endswith("=") else ""),
                          flag + (" " if name.endswith("=") else ""), text)
            text = text.replace(name, flag)
    return text


def _train(args: argparse.Namespace) -> int:
    from sparkeras.storage.outputs import check_remote_output

    spark = start_session(args)
    check_remote_output(spark, args.output, overwrite=args.overwrite, flag="--output")
    sm = load_model(spark, args, strategy=args.strategy, num_workers=args.workers, seed=args.seed,
                    **strategy_options(args))
    data, validation, features, label = training_data(spark, args, sm)
    callbacks = tracking_callbacks(args, f"sparkeras train {os.path.basename(args.model)}")
    history = sm.fit(data, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=validation, validation_split=args.validation_split or 0.0,
                     features_col=features,
                     label_col=label, verbose=0 if args.quiet else 1, class_weight=class_weights(args),
                     weight_col=args.weight_col, callbacks=callbacks)
    sm.save(args.output, overwrite=args.overwrite)
    final = {k: rounded(v[-1], 6) for k, v in history.history.items()}
    report_skipped(args, data, validation)
    print(f"saved {args.output}; final epoch: {json.dumps(final)}")
    report_tracking(callbacks, args)
    if args.plot:
        from sparkeras.tracking.plots import plot_history

        plot_history(history, args.plot, overwrite=args.overwrite,
                     title=f"{args.model} on {args.data or args.images}")  # --images leaves --data None
        print(f"learning curves: {args.plot}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    """Print the model's compiled loss and metrics on the data as one JSON object; image folders are numbered
    by the classes saved with the model."""
    spark = start_session(args)
    sm = load_model(spark, args, num_workers=args.workers)
    if args.images:
        data = read_image_folder(spark, args, sm.model, "folder", classes=sm.classes)
        metrics = sm.evaluate(data, features_col="image", label_col="label", batch_size=args.batch_size)
        report_skipped(args, data)
    else:
        label = args.label if args.label is not None else sm.fit_columns[1]
        metrics = sm.evaluate(_labelled_by_classes(spark, args, sm, label), features_col=given_columns(args.features),
                              label_col=label, batch_size=args.batch_size, weight_col=args.weight_col)
    print(json.dumps({k: rounded(v, 6) for k, v in metrics.items()}))
    return 0


def _labelled_by_classes(spark: Any, args: argparse.Namespace, sm: Any, label: Any) -> Any:
    """``--data`` for ``evaluate``: its path, or, where the ``label`` column holds text, numbered by the model's
    classes."""
    from sparkeras.data.labels import is_text_column, with_class_ids
    from sparkeras.data.sources import read_data
    from sparkeras.errors import InputError

    frame = read_data(spark, args.data)
    if not isinstance(label, str) or not is_text_column(frame, label):
        return args.data
    if not sm.classes:
        raise InputError(f"--label {label!r} holds text, but {args.model} was trained on class ids and saved "
                         "no class names; pass the column of class ids.")
    return with_class_ids(frame, label, sm.classes)


def _predict(args: argparse.Namespace) -> int:
    from sparkeras.errors import worker_error
    from sparkeras.storage.outputs import check_remote_output, write_table_atomically

    spark = start_session(args)
    if not args.stream:
        check_remote_output(spark, args.output, overwrite=args.overwrite, flag="--output")
    sm = load_model(spark, args)
    images = read_image_folder(spark, args, sm.model, None, stream=args.stream) if args.images else None
    if images is not None:
        out = sm.predict(images, features_col="image", batch_size=args.batch_size,
                         prediction_col=args.prediction_col).drop("image")
    else:
        from sparkeras.data.sources import read_data

        data = read_data(spark, args.data, stream=True) if args.stream else args.data
        out = sm.predict(data, features_col=given_columns(args.features), batch_size=args.batch_size,
                         prediction_col=args.prediction_col)
    out = _with_classes(out, sm, args.prediction_col)
    if args.stream:
        rc = run_stream(spark, out, args, left_out=lambda: skipped_files(args, images))
        report_skipped(args, images)
        return rc
    try:
        write_table_atomically(out, args.output, overwrite=args.overwrite, flag="--output")
    except Exception as exc:  # noqa: BLE001
        raise worker_error(exc, "predicting") from None
    report_skipped(args, images)
    print(f"wrote {args.output}")
    return 0


def _with_classes(out, sm, prediction_col: str):
    """``out`` with a classifier's class index (and, for a model trained on class folders, its name) added.

    Why. ``predict`` writes the model's scores, which a Parquet reader must
    then turn into classes by the model's own rule (the largest unit, or a
    sigmoid's 0.5); the class column applies that rule once, as
    ``KerasModel.transform``'s ``prediction`` does, for files and tables alike.
    A regression or a multi-label model gets no class column.
    """
    from pyspark.sql import functions as F

    from sparkeras.inference.udf import class_outputs

    classifier = class_outputs(sm.model, prediction_col)
    if classifier is None or classifier[0].multilabel:  # several labels per row: the scores say which
        return out
    scores = F.col(prediction_col)
    if classifier[0].width > 1:  # in SQL: before Spark 4.0, array_position takes no column as its value
        name = quoted(prediction_col)
        index = F.expr(f"array_position({name}, array_max({name})) - 1")
    else:  # one unit, binary crossentropy: class 1 above a probability of 0.5 (a logit of 0)
        index = scores > F.lit(0.0 if classifier[0].logits else 0.5)
    out = out.withColumn(f"{prediction_col}_class", index.cast("int"))
    if sm.classes:
        names = F.array(*[F.lit(c) for c in sm.classes])
        out = out.withColumn(f"{prediction_col}_name", F.element_at(names, F.col(f"{prediction_col}_class") + 1))
    return out


if __name__ == "__main__":
    sys.exit(main())
