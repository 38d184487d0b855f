"""The ``sparkeras`` command: ``demo``, ``train``, ``evaluate`` and ``predict``.

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

from sparkeras.data.columns import quoted, split_columns
from sparkeras.metric_values import rounded

EXIT_INPUT = 2
EXIT_FAILURE = 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", help="Spark master URL (default: the active session, else local[*])")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and Spark logs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparkeras", description="Train and serve Keras 3 models on Apache Spark.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a small CNN on the bundled 8x8 digits with 2 workers",
                          description="Train a small CNN on scikit-learn's 8x8 digits on an embedded Spark "
                                      "with 2 workers, and compare with plain model.fit.")
    demo.add_argument("--epochs", type=int, default=8)
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--output", default="sparkeras-demo", help="folder for the model and the plot")
    demo.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _common(demo)

    train = sub.add_parser("train", help="train a saved .keras model on Parquet data or image files",
                           description="Train a compiled .keras model on Parquet data, or on a folder of image "
                                       "files in one folder per class, and save the result.")
    train.add_argument("--model", required=True, help="compiled model, .keras file")
    _data_flags(train, "training data: Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                "folder of image files, one folder per class (cats/001.jpg); the class names are saved with "
                "the model")
    train.add_argument("--features", default=None,
                       help="feature column(s), comma separated; default: the column 'features', or where the data "
                            "has none, every numeric column but the label and weight columns, in the data's order "
                            "(a CSV of scalar columns, say); saved with the model for evaluate and predict")
    train.add_argument("--label", default="label",
                       help="label column; a column of class names (text) is numbered in sorted order, and the "
                            "names are saved with the model")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--workers", type=int, default=None)
    train.add_argument("--strategy", default="averaging",
                       help="averaging (default), allreduce, or a parameter-server strategy: async, hogwild, "
                            "downpour, adag, dynsgd, easgd, aeasgd, eamsgd")
    train.add_argument("--strategy-option", action="append", default=[], metavar="KEY=VALUE",
                       help="an option of the strategy, as its Python argument, e.g. window=8 (repeat for more)")
    train.add_argument("--validation", help="path of validation data, in any format --data takes (with "
                                            "--images: a folder of class folders)")
    train.add_argument("--output", required=True, help="where to write the trained .keras model")
    train.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    train.add_argument("--seed", type=int, default=None)
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
    _common(train)

    evaluate = sub.add_parser("evaluate", help="print a saved model's loss and metrics on labelled data",
                              description="Evaluate a .keras model's compiled loss and metrics over Parquet data "
                                          "or a folder of class folders, and print them as one JSON object.")
    evaluate.add_argument("--model", required=True, help="compiled model, .keras file")
    _data_flags(evaluate, "labelled data: Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                "folder of image files in class folders, numbered by the classes saved with the model")
    evaluate.add_argument("--features", default=None,
                          help="feature column(s), comma separated; default: those the model was trained on")
    evaluate.add_argument("--label", default="label",
                          help="label column; class names (text) are numbered by the classes saved with the model")
    evaluate.add_argument("--weight-col", metavar="COLUMN", help="a numeric column of --data that weighs each row")
    evaluate.add_argument("--batch-size", type=int, default=256)
    evaluate.add_argument("--workers", type=int, default=None)
    _common(evaluate)

    predict = sub.add_parser("predict", help="add a prediction column to Parquet data",
                             description="Predict with a .keras model over Parquet data; write Parquet "
                                         "with every input column plus the prediction column and, for a "
                                         "classifier, the class index (prediction_class) and, where the "
                                         "model saved its class names, the name (prediction_name).")
    predict.add_argument("--model", required=True)
    _data_flags(predict, "Parquet (or CSV, JSON, ORC, Delta) path, any Hadoop URI",
                "folder of image files; the output has their path, the prediction and, for a model trained on "
                "class folders or class names, the class name")
    predict.add_argument("--features", default=None,
                         help="feature column(s), comma separated; default: those the model was trained on")
    predict.add_argument("--output", required=True, help="Parquet path to write (never one of the inputs)")
    predict.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    predict.add_argument("--prediction-col", default="prediction")
    predict.add_argument("--batch-size", type=int, default=256)
    _common(predict)
    return parser


def _data_flags(p: argparse.ArgumentParser, data_help: str, images_help: str) -> None:
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help=data_help)
    data.add_argument("--images", help=images_help + "; decoded to the model's input size and channels")
    p.add_argument("--image-size", help="HxW the images are resized to, for a model whose input size is not "
                                        "fixed (default: the model's input size)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="an image file that cannot be decoded: stop, naming it (fail), or leave it out (skip)")


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
        return {"train": _train, "evaluate": _evaluate, "predict": _predict}[args.command](args)
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
          ("validation_data", "--validation"), ("overwrite=True", "--overwrite"))


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
    validation = getattr(args, "validation", None)
    inputs = [args.model, args.data or args.images] + ([validation] if validation else [])
    if args.command == "evaluate":
        if args.images and args.weight_col is not None:
            raise InputError("--weight-col names a column of --data; with --images there is none. Drop it.")
        if args.weight_col is not None and not args.weight_col:
            raise InputError("--weight-col needs a column name.")
    if args.images:
        _image_size(args)
        from sparkeras.images.reader import check_image_arguments

        for folder, flag in [(args.images, "--images")] + ([(validation, "--validation")] if validation else []):
            check_image_arguments(folder, (1, 1), "rgb", None, args.on_error, ("png",), flag)
    else:
        data_format(args.data)
        if validation:
            data_format(validation)
    if args.command == "train":
        from sparkeras.strategies import get_strategy

        options = _strategy_options(args)
        try:
            get_strategy(args.strategy)
        except InputError as exc:
            raise InputError(f"--strategy: {exc}") from None
        try:
            get_strategy(args.strategy, **options)
        except InputError as exc:
            raise InputError(f"--strategy-option: {exc}") from None
        _check_tracking(args, inputs)
        _class_weight(args)
        if args.weight_col is not None:
            from sparkeras.data.weights import check_row_weights

            if args.images:
                raise InputError("--weight-col names a column of --data; with --images there is none. Drop it, "
                                 "or use --class-weight.")
            try:
                check_row_weights(args.weight_col, None, args.data, _class_weight(args))
            except InputError as exc:
                raise InputError(f"--weight-col: {exc}") from None
        check_output(args.output, kind="model", overwrite=args.overwrite, inputs=inputs, flag="--output")
        if args.plot:
            from sparkeras.tracking.plots import check_plot_path

            check_plot_path(args.plot, args.overwrite, "--plot", inputs + [args.output])
    elif args.command == "predict":
        check_output(args.output, kind="table", overwrite=args.overwrite, inputs=inputs, flag="--output")


def _strategy_options(args: argparse.Namespace) -> dict[str, object]:
    """``--strategy-option window=8 --strategy-option outer_momentum=0.9`` as keyword arguments.

    Values are read as JSON where they parse (numbers, ``true``, ``null``),
    and kept as text otherwise.
    """
    from sparkeras.errors import InputError

    options: dict[str, object] = {}
    for item in args.strategy_option:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InputError(f"--strategy-option takes KEY=VALUE, e.g. window=8; got {item!r}.")
        try:
            options[key.strip()] = json.loads(value)
        except ValueError:
            options[key.strip()] = value
    return options


def _check_tracking(args: argparse.Namespace, inputs: list[str]) -> None:
    """``--mlflow-*`` needs MLflow installed; ``--tensorboard`` a folder that is not an input or a file."""
    from sparkeras.errors import InputError

    import importlib.util

    if args.mlflow_experiment is not None or args.mlflow_uri is not None:
        for flag, value in (("--mlflow-experiment", args.mlflow_experiment), ("--mlflow-uri", args.mlflow_uri)):
            if value is not None and not value.strip():
                raise InputError(f"{flag} needs a value.")
        if importlib.util.find_spec("mlflow") is None:  # sparkeras.tracking.mlflow would import Keras
            raise InputError("--mlflow-experiment and --mlflow-uri need MLflow: pip install 'sparkeras[tracking]'.")
    if args.tensorboard is not None:
        from sparkeras.storage.outputs import check_output

        if importlib.util.find_spec("tensorboard") is None:
            raise InputError("--tensorboard needs TensorBoard: pip install 'sparkeras[tracking]'.")
        check_output(args.tensorboard, kind="directory", inputs=inputs, flag="--tensorboard")


def _tracking_callbacks(args: argparse.Namespace) -> list:
    callbacks = []
    if args.mlflow_experiment is not None or args.mlflow_uri is not None:
        from sparkeras.callbacks import MLflowLogger

        callbacks.append(MLflowLogger(tracking_uri=args.mlflow_uri, experiment=args.mlflow_experiment,
                                      run_name=f"sparkeras train {os.path.basename(args.model)}"))
    if args.tensorboard is not None:
        import keras

        callbacks.append(keras.callbacks.TensorBoard(log_dir=args.tensorboard))
    return callbacks


def _class_weight(args: argparse.Namespace) -> dict[int, float] | None:
    """``--class-weight 0=1,1=9`` as Keras' ``class_weight`` dict."""
    from sparkeras.data.weights import check_class_weight
    from sparkeras.errors import InputError

    if not args.class_weight:
        return None
    weights = {}
    for item in args.class_weight.split(","):
        key, _, value = item.partition("=")
        try:
            weights[int(key)] = float(value)
        except ValueError:
            raise InputError(f"--class-weight takes CLASS_ID=WEIGHT pairs separated by commas, e.g. 0=1,1=9; "
                             f"got {item.strip()!r}.") from None
    try:
        return dict(check_class_weight(weights))
    except InputError as exc:
        raise InputError(f"--class-weight: {exc}") from None


def _image_size(args: argparse.Namespace) -> tuple[int, int] | None:
    from sparkeras.errors import InputError

    if not args.image_size:
        return None
    parts = args.image_size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--image-size must be HEIGHTxWIDTH in pixels, e.g. 224x224, got {args.image_size!r}.")
    return int(parts[0]), int(parts[1])


def _read_images(spark, args: argparse.Namespace, model, labels: str | None, folder: str | None = None,
                 classes: list[str] | None = None):
    """``--images``: the folder as read_images' DataFrame, at the model's input size and channels."""
    from sparkeras.errors import InputError
    from sparkeras.images import read_images
    from sparkeras.images.decode import CHANNEL_MODES

    shape = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in CHANNEL_MODES):
        raise InputError(f"--images needs a model with one input of shape (height, width, channels); {args.model} "
                         f"takes {[tuple(t.shape[1:]) for t in model.inputs]}.")
    size = _image_size(args) or (shape[0], shape[1])
    if None in size:
        raise InputError(f"{args.model} takes images of any size; pass --image-size HEIGHTxWIDTH.")
    mode = CHANNEL_MODES[shape[-1] if len(shape) == 3 else 1]
    return read_images(spark, folder or args.images, size, mode, labels=labels, on_error=args.on_error,
                       classes=classes)


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


def _session(args: argparse.Namespace):
    from sparkeras.errors import InputError
    from sparkeras.session import get_spark
    from sparkeras.worker.runtime import import_keras_quietly

    try:
        spark = get_spark(args.master)
    except Exception as exc:  # noqa: BLE001 - a JVM that would not start: say why in one line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise InputError(f"Spark could not start with --master {args.master or 'local[*]'}: "
                         f"{lines[0] if lines else type(exc).__name__}") from None
    spark.sparkContext.setLogLevel("ERROR" if args.debug else "OFF")
    import_keras_quietly(args.debug)
    return spark


def _train(args: argparse.Namespace) -> int:
    from sparkeras import SparkModel
    from sparkeras.storage.outputs import check_remote_output

    spark = _session(args)
    check_remote_output(spark, args.output, overwrite=args.overwrite, flag="--output")
    sm = SparkModel.load(args.model, strategy=args.strategy, num_workers=args.workers, seed=args.seed,
                         **_strategy_options(args))
    data, validation = args.data, args.validation
    features, label = _given_columns(args.features), args.label
    if not args.images:
        from sparkeras.data.sources import read_data

        frame = read_data(spark, args.data)
        if features is None:
            features = _table_features(frame, args)
        data, validation = _class_ids(spark, args, sm, frame, validation)
    if args.images:
        data, features, label = _read_images(spark, args, sm.model, "folder"), "image", "label"
        if validation:  # numbered by the training folders, even where it lacks one
            validation = _read_images(spark, args, sm.model, "folder", validation,
                                      data.schema["label"].metadata["classes"])
    callbacks = _tracking_callbacks(args)
    history = sm.fit(data, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=validation, features_col=features,
                     label_col=label, verbose=0 if args.quiet else 1, class_weight=_class_weight(args),
                     weight_col=args.weight_col, callbacks=callbacks)
    sm.save(args.output, overwrite=args.overwrite)
    final = {k: rounded(v[-1], 6) for k, v in history.history.items()}
    print(f"saved {args.output}; final epoch: {json.dumps(final)}")
    for callback in callbacks:
        if hasattr(callback, "model_uri"):
            print(f"mlflow run {callback.run.run_id}: model {callback.model_uri}")
    if args.tensorboard is not None:
        print(f"tensorboard: tensorboard --logdir {args.tensorboard}")
    if args.plot:
        from sparkeras.tracking.plots import plot_history

        plot_history(history, args.plot, overwrite=args.overwrite, title=f"{args.model} on {args.data}")
        print(f"learning curves: {args.plot}")
    return 0


def _given_columns(value: str | None) -> str | list[str] | None:
    """``--features`` as columns; ``None`` (not given) lets the model use the columns it was trained on."""
    return None if value is None else split_columns(value)


def _table_features(frame: Any, args: argparse.Namespace) -> str | list[str]:
    """The feature columns of ``--data`` when ``--features`` is not given.

    A column called ``features`` (an array or a Spark ML vector) if there is
    one; otherwise every numeric column but the label and weight columns, in
    the data's order, as in a CSV of scalar columns, so a user need not list
    64 pixel columns by hand. The choice is printed and saved with the model.
    Only the schema is used here: the fit still reads ``--data`` by its path,
    which MLflow logs as the data source.
    """
    from pyspark.sql.types import NumericType

    if "features" in frame.columns:
        return "features"
    skip = {args.label, args.weight_col}
    numeric = [f.name for f in frame.schema.fields if isinstance(f.dataType, NumericType) and f.name not in skip]
    if not numeric:
        return "features"  # the usual error names the columns there are
    shown = ", ".join(numeric) if len(numeric) <= 6 else f"{', '.join(numeric[:3])}, ..., {numeric[-1]}"
    print(f"features: the {len(numeric)} numeric columns other than {args.label!r} ({shown})")
    return numeric if len(numeric) > 1 else numeric[0]


def _class_ids(spark: Any, args: argparse.Namespace, sm: Any, frame: Any, validation: str | None
               ) -> tuple[Any, Any]:
    """``--data`` and ``--validation`` for training: as given, or, where ``--label`` holds text, numbered.

    Why. A table names its classes in a string column more often than it
    numbers them, and a command-line user has no ``StringIndexer`` step to
    run first. The classes are the label's distinct values in sorted order,
    printed and saved with the model (:mod:`sparkeras.data.labels`), so
    that ``evaluate`` numbers its labels the same way and ``predict`` writes
    the class names. Numeric labels are left alone, and the data then keeps
    its path (the workers read Parquet by path, and MLflow logs it).
    """
    from sparkeras.data.labels import is_text_column, text_classes, with_class_ids
    from sparkeras.data.sources import read_data

    if not is_text_column(frame, args.label):
        return args.data, validation
    classes = text_classes(frame, args.label)
    _check_class_count(sm.model, classes, args)
    shown = ", ".join(classes) if len(classes) <= 10 else f"{', '.join(classes[:5])}, ..., {classes[-1]}"
    print(f"classes: the {len(classes)} values of {args.label!r}, in sorted order ({shown})")
    data = with_class_ids(frame, args.label, classes)
    if validation:
        validation = with_class_ids(read_data(spark, validation), args.label, classes, "--validation")
    return data, validation


def _check_class_count(model: Any, classes: list[str], args: argparse.Namespace) -> None:
    """Refuse a model whose output cannot name ``classes``: a regression, a multi-label model, or other widths."""
    from sparkeras.errors import InputError
    from sparkeras.inference.udf import class_outputs

    outputs = class_outputs(model, "prediction")
    width = None if outputs is None or outputs[0].multilabel else outputs[0].width
    if width is None:
        raise InputError(f"--label {args.label!r} holds text classes, but {args.model} is not a one-output "
                         "classifier (a softmax over the classes, or one sigmoid unit with binary crossentropy "
                         "for two); compile it as one, or pass a numeric --label.")
    if max(width, 2) != len(classes):
        raise InputError(f"--label {args.label!r} holds {len(classes)} classes {classes[:10]}, but {args.model} "
                         f"outputs {width} unit(s); give its last layer {len(classes)} units.")


def _evaluate(args: argparse.Namespace) -> int:
    """Print the model's compiled loss and metrics on the data as one JSON object; image folders are numbered
    by the classes saved with the model."""
    from sparkeras import SparkModel

    spark = _session(args)
    sm = SparkModel.load(args.model, num_workers=args.workers)
    if args.images:
        data = _read_images(spark, args, sm.model, "folder", classes=sm.classes)
        metrics = sm.evaluate(data, features_col="image", label_col="label", batch_size=args.batch_size)
    else:
        metrics = sm.evaluate(_labelled_by_classes(spark, args, sm), features_col=_given_columns(args.features),
                              label_col=args.label, batch_size=args.batch_size, weight_col=args.weight_col)
    print(json.dumps({k: rounded(v, 6) for k, v in metrics.items()}))
    return 0


def _labelled_by_classes(spark: Any, args: argparse.Namespace, sm: Any) -> Any:
    """``--data`` for ``evaluate``: its path, or, where ``--label`` holds text, numbered by the model's classes."""
    from sparkeras.data.labels import is_text_column, with_class_ids
    from sparkeras.data.sources import read_data
    from sparkeras.errors import InputError

    frame = read_data(spark, args.data)
    if not is_text_column(frame, args.label):
        return args.data
    if not sm.classes:
        raise InputError(f"--label {args.label!r} holds text, but {args.model} was trained on class ids and saved "
                         "no class names; pass the column of class ids.")
    return with_class_ids(frame, args.label, sm.classes)


def _predict(args: argparse.Namespace) -> int:
    from sparkeras import SparkModel
    from sparkeras.errors import worker_error
    from sparkeras.storage.outputs import check_remote_output, write_table_atomically

    spark = _session(args)
    check_remote_output(spark, args.output, overwrite=args.overwrite, flag="--output")
    sm = SparkModel.load(args.model)
    if args.images:
        out = sm.predict(_read_images(spark, args, sm.model, None), features_col="image",
                         batch_size=args.batch_size, prediction_col=args.prediction_col).drop("image")
    else:
        out = sm.predict(args.data, features_col=_given_columns(args.features), batch_size=args.batch_size,
                         prediction_col=args.prediction_col)
    out = _with_classes(out, sm, args.prediction_col)
    try:
        write_table_atomically(out, args.output, overwrite=args.overwrite, flag="--output")
    except Exception as exc:  # noqa: BLE001
        raise worker_error(exc, "predicting") from None
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
