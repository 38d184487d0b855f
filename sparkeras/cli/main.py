"""The ``sparkeras`` command: ``demo``, ``train`` and ``predict``.

Errors are one clear line on stderr and a non-zero exit code; ``--debug``
shows the full traceback (and Spark's own logs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from sparkeras.data.columns import split_columns

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

    train = sub.add_parser("train", help="train a saved .keras model on Parquet data",
                           description="Train a compiled .keras model on Parquet data and save the result.")
    train.add_argument("--model", required=True, help="compiled model, .keras file")
    train.add_argument("--data", required=True, help="Parquet path (any Hadoop URI)")
    train.add_argument("--features", default="features", help="feature column(s), comma separated")
    train.add_argument("--label", default="label", help="label column")
    train.add_argument("--epochs", type=int, default=1)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--workers", type=int, default=None)
    train.add_argument("--strategy", default="averaging")
    train.add_argument("--validation", help="Parquet path of validation data")
    train.add_argument("--output", required=True, help="where to write the trained .keras model")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _common(train)

    predict = sub.add_parser("predict", help="add a prediction column to Parquet data",
                             description="Predict with a .keras model over Parquet data; write Parquet "
                                         "with every input column plus the prediction column.")
    predict.add_argument("--model", required=True)
    predict.add_argument("--data", required=True)
    predict.add_argument("--features", default="features", help="feature column(s), comma separated")
    predict.add_argument("--output", required=True, help="Parquet path to write")
    predict.add_argument("--prediction-col", default="prediction")
    predict.add_argument("--batch-size", type=int, default=256)
    _common(predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if args.command == "demo":
            from sparkeras.cli.demo import run_demo

            return run_demo(args)
        return _train(args) if args.command == "train" else _predict(args)
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to explain
        if args.debug:
            raise
        from sparkeras.errors import InputError

        print(f"sparkeras {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INPUT if isinstance(exc, InputError) else EXIT_FAILURE


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    from sparkeras.errors import WorkerError

    if isinstance(exc, WorkerError):
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return f"{lines[0]} {lines[-1].strip()}" if len(lines) > 1 else text
    return " ".join(text.split())


def _session(args: argparse.Namespace):
    from sparkeras.session import get_spark

    spark = get_spark(args.master)
    spark.sparkContext.setLogLevel("ERROR" if args.debug else "OFF")
    return spark


def _train(args: argparse.Namespace) -> int:
    from sparkeras import SparkModel

    _session(args)
    sm = SparkModel.load(args.model, strategy=args.strategy, num_workers=args.workers, seed=args.seed)
    history = sm.fit(args.data, epochs=args.epochs, batch_size=args.batch_size,
                     validation_data=args.validation, features_col=split_columns(args.features),
                     label_col=args.label, verbose=0 if args.quiet else 1)
    sm.save(args.output)
    final = {k: round(v[-1], 6) for k, v in history.history.items()}
    print(f"saved {args.output}; final epoch: {json.dumps(final)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from sparkeras import SparkModel

    _session(args)
    sm = SparkModel.load(args.model)
    from sparkeras.errors import worker_error

    out = sm.predict(args.data, features_col=split_columns(args.features), batch_size=args.batch_size,
                     prediction_col=args.prediction_col)
    try:
        out.write.mode("overwrite").parquet(args.output)
    except Exception as exc:  # noqa: BLE001
        raise worker_error(exc, "predicting") from None
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
