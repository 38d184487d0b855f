"""Flags and steps that several ``sparkeras`` commands share: data, strategy, weights, tracking, the session.

Each ``check_*`` here needs neither Spark nor TensorFlow, so a command runs
them before either starts (:func:`sparkeras.cli.main.check_arguments`).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

from sparkeras.data.columns import split_columns

TRAINING_BATCH_HELP = "rows per step in each worker (default 32)"
SCORING_BATCH_HELP = "rows scored at once (default 256)"
WORKERS_HELP = "Spark tasks in parallel (default: one per task slot of the cluster; local[*]: one per core)"


def add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--master", help="Spark master URL (default: the active session, else local[*])")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and Spark logs")


def add_data_flags(p: argparse.ArgumentParser, data_help: str, images_help: str) -> None:
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help=data_help)
    data.add_argument("--images", help=images_help + "; decoded to the model's input size and channels")
    p.add_argument("--image-size", help="HxW the images are resized to, for a model whose input size is not "
                                        "fixed (default: the model's input size)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="an image file that cannot be decoded: stop, naming it (fail), or leave it out (skip)")


def add_validation_flags(p: argparse.ArgumentParser, scored: str, split_help: str) -> None:
    """``--validation PATH`` or ``--validation-split SHARE``: what ``scored`` (every epoch, the trials) is scored on."""
    p.add_argument("--validation", help=f"path of validation data to score {scored} on, in any format --data takes "
                                        "(with --images: a folder of class folders)")
    p.add_argument("--validation-split", type=float, default=None, metavar="SHARE", help=split_help)


def check_validation_flags(args: argparse.Namespace, scored: str) -> None:
    """At most one of ``--validation`` and ``--validation-split``, and a share strictly between 0 and 1."""
    from sparkeras.errors import InputError

    if args.validation and args.validation_split is not None:
        raise InputError(f"--validation and --validation-split both say what to score {scored} on; give one.")
    if args.validation_split is not None and not 0 < args.validation_split < 1:
        raise InputError(f"--validation-split must be between 0 and 1 (the share of the data held out), got "
                         f"{args.validation_split}.")


def strategy_options(args: argparse.Namespace) -> dict[str, object]:
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
        options[key.strip()] = json_or_text(value)
    return options


def check_strategy_flags(args: argparse.Namespace) -> None:
    """``--strategy`` names a strategy, and each ``--strategy-option`` is one of its arguments."""
    from sparkeras.errors import InputError
    from sparkeras.strategies import get_strategy

    options = strategy_options(args)
    try:
        get_strategy(args.strategy)
    except InputError as exc:
        raise InputError(f"--strategy: {exc}") from None
    try:
        get_strategy(args.strategy, **options)
    except InputError as exc:
        raise InputError(f"--strategy-option: {exc}") from None


def check_weight_flags(args: argparse.Namespace) -> None:
    """``--class-weight`` parses, and ``--weight-col`` is a column name that goes with ``--data``."""
    from sparkeras.errors import InputError

    class_weights(args)
    if args.weight_col is None:
        return
    from sparkeras.data.weights import check_row_weights

    if args.images:
        raise InputError("--weight-col names a column of --data; with --images there is none. Drop it, "
                         "or use --class-weight.")
    try:
        check_row_weights(args.weight_col, None, args.data, class_weights(args))
    except InputError as exc:
        raise InputError(f"--weight-col: {exc}") from None


def check_tracking(args: argparse.Namespace, inputs: list[str]) -> None:
    """``--mlflow-*`` needs MLflow installed and its server (if HTTP) answering; ``--tensorboard`` a folder that is
    not an input or a file."""
    from sparkeras.errors import InputError

    import importlib.util

    if args.mlflow_experiment is not None or args.mlflow_uri is not None:
        for flag, value in (("--mlflow-experiment", args.mlflow_experiment), ("--mlflow-uri", args.mlflow_uri)):
            if value is not None and not value.strip():
                raise InputError(f"{flag} needs a value.")
        if importlib.util.find_spec("mlflow") is None:  # sparkeras.tracking.mlflow would import Keras
            raise InputError("--mlflow-experiment and --mlflow-uri need MLflow: pip install 'sparkeras[tracking]'.")
        from sparkeras.tracking.servers import check_tracking_server

        uri = args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        check_tracking_server(uri, where="--mlflow-uri" if args.mlflow_uri else "MLFLOW_TRACKING_URI")
    if getattr(args, "tensorboard", None) is not None:
        from sparkeras.storage.outputs import check_output

        if importlib.util.find_spec("tensorboard") is None:
            raise InputError("--tensorboard needs TensorBoard: pip install 'sparkeras[tracking]'.")
        check_output(args.tensorboard, kind="directory", inputs=inputs, flag="--tensorboard")


def tracking_callbacks(args: argparse.Namespace, run_name: str) -> list:
    """``--mlflow-*`` and ``--tensorboard`` as the fit's callbacks; the MLflow run is called ``run_name``."""
    callbacks = []
    if args.mlflow_experiment is not None or args.mlflow_uri is not None:
        from sparkeras.callbacks import MLflowLogger

        callbacks.append(MLflowLogger(tracking_uri=args.mlflow_uri, experiment=args.mlflow_experiment,
                                      run_name=run_name))
    if getattr(args, "tensorboard", None) is not None:
        import keras

        callbacks.append(keras.callbacks.TensorBoard(log_dir=args.tensorboard))
    return callbacks


def report_tracking(callbacks: list, args: argparse.Namespace) -> None:
    """After the fit: where ``--mlflow-*`` logged the model, and how to open ``--tensorboard``'s files."""
    for callback in callbacks:
        if hasattr(callback, "model_uri"):
            print(f"mlflow run {callback.run.run_id}: model {callback.model_uri}")
    if getattr(args, "tensorboard", None) is not None:
        print(f"tensorboard: tensorboard --logdir {args.tensorboard}")


def class_weights(args: argparse.Namespace) -> dict[int, float] | None:
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


def image_size(args: argparse.Namespace) -> tuple[int, int] | None:
    from sparkeras.errors import InputError

    if not args.image_size:
        return None
    parts = args.image_size.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"--image-size must be HEIGHTxWIDTH in pixels, e.g. 224x224, got {args.image_size!r}.")
    return int(parts[0]), int(parts[1])


def read_image_folder(spark, args: argparse.Namespace, model, labels: str | None, folder: str | None = None,
                      classes: list[str] | None = None, stream: bool = False):
    """``--images``: the folder as read_images' DataFrame (``stream``: of the files that arrive), at the model's
    input size and channels."""
    from sparkeras.errors import InputError
    from sparkeras.images import read_images
    from sparkeras.images.decode import CHANNEL_MODES

    shape = tuple(model.inputs[0].shape[1:])
    if len(model.inputs) != 1 or len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in CHANNEL_MODES):
        raise InputError(f"--images needs a model with one input of shape (height, width, channels); {args.model} "
                         f"takes {[tuple(t.shape[1:]) for t in model.inputs]}.")
    size = image_size(args) or (shape[0], shape[1])
    if None in size:
        raise InputError(f"{args.model} takes images of any size; pass --image-size HEIGHTxWIDTH.")
    mode = CHANNEL_MODES[shape[-1] if len(shape) == 3 else 1]
    return read_images(spark, folder or args.images, size, mode, labels=labels, on_error=args.on_error,
                       classes=classes, stream=stream)


def skipped_files(args: argparse.Namespace, *frames: Any) -> tuple[list[str], bool]:
    """The image files the command left out (``--images`` with ``--on-error skip``), sorted, and whether there may
    be more than those (a frame's accumulator kept its cap of paths)."""
    if not args.images or args.on_error != "skip":
        return [], False
    from sparkeras.images import skipped_images
    from sparkeras.images.skipping import SKIPPED_KEPT

    lists = [skipped_images(f) for f in frames if f is not None]
    return sorted({p for found in lists for p in found}), any(len(found) >= SKIPPED_KEPT for found in lists)


def report_skipped(args: argparse.Namespace, *frames: Any) -> None:
    """With ``--images`` and ``--on-error skip``: one line on stderr naming the image files the command left out.

    Why. In Python, :func:`sparkeras.skipped_images` names them; a CLI user
    would otherwise learn neither that files were left out nor which. The
    paths come from the frames ``read_image_folder`` made, once the command's
    Spark jobs have read them.
    """
    paths, more = skipped_files(args, *frames)
    if not paths:
        return
    count = f"at least {len(paths)}" if more else str(len(paths))
    rest = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    print(f"sparkeras {args.command}: left out {count} image file{'s' if len(paths) > 1 else ''} that could not be "
          f"decoded (--on-error skip): {', '.join(repr(p) for p in paths[:3])}{rest}", file=sys.stderr)


def training_data(spark: Any, args: argparse.Namespace, sm: Any) -> tuple[Any, Any, Any, Any]:
    """``--data`` or ``--images`` and ``--validation`` as ``train`` and ``tune`` fit them: ``(data, validation,
    features, label)``.

    A table keeps its path where its labels are numbers (the workers read
    Parquet by path, and MLflow logs it), gets its numeric columns as the
    features where ``--features`` is not given, and its text labels
    numbered (:func:`class_ids`); image folders are read at the model's
    input, the validation folders numbered by the training folders, even
    where one lacks a class.
    """
    validation, features = args.validation, given_columns(args.features)
    if args.images:
        data = read_image_folder(spark, args, sm.model, "folder")
        if validation:
            validation = read_image_folder(spark, args, sm.model, "folder", validation,
                                           data.schema["label"].metadata["classes"])
        return data, validation, "image", "label"
    from sparkeras.data.sources import read_data

    frame = read_data(spark, args.data)
    if features is None:
        features = table_features(frame, args)
    data, validation = class_ids(spark, args, sm, frame, validation)
    return data, validation, features, args.label


def json_or_text(text: str) -> Any:
    """A flag's value as JSON reads it (``64``, ``0.5``, ``true``, ``null``), else the text itself (``adam``)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def start_session(args: argparse.Namespace):
    from sparkeras.errors import InputError
    from sparkeras.session import get_spark
    from sparkeras.worker.runtime import import_keras_quietly

    try:  # Keras is imported while the JVM starts
        spark = get_spark(args.master, alongside=functools.partial(import_keras_quietly, args.debug))
    except Exception as exc:  # noqa: BLE001 - a JVM that would not start: say why in one line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise InputError(f"Spark could not start with --master {args.master or 'local[*]'}: "
                         f"{lines[0] if lines else type(exc).__name__}") from None
    spark.sparkContext.setLogLevel("ERROR" if args.debug else "OFF")
    return spark


def given_columns(value: str | None) -> str | list[str] | None:
    """``--features`` as columns; ``None`` (not given) lets the model use the columns it was trained on."""
    return None if value is None else split_columns(value)


def table_features(frame: Any, args: argparse.Namespace) -> str | list[str]:
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


def class_ids(spark: Any, args: argparse.Namespace, sm: Any, frame: Any, validation: str | None
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
    check_class_count(sm.model, classes, args)
    shown = ", ".join(classes) if len(classes) <= 10 else f"{', '.join(classes[:5])}, ..., {classes[-1]}"
    print(f"classes: the {len(classes)} values of {args.label!r}, in sorted order ({shown})")
    data = with_class_ids(frame, args.label, classes)
    if validation:
        validation = with_class_ids(read_data(spark, validation), args.label, classes, "--validation")
    return data, validation


def check_class_count(model: Any, classes: list[str], args: argparse.Namespace) -> None:
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
