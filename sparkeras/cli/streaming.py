"""``sparkeras predict --stream``: score files as they arrive, with Spark's Structured Streaming.

A data engineer's scoring job watches a folder that new files land in:
each run (``--trigger available-now``) scores the files that arrived since
the last one and stops, as a scheduled job does; ``--trigger 30s`` keeps
scoring a micro-batch every 30 seconds until it is stopped (Ctrl-C or
SIGTERM, which end the query cleanly). What has been scored is kept in
``--checkpoint``, so each file is scored exactly once across runs, and
Spark's file sink adds the predictions to ``--output`` in whole files,
listed in its ``_spark_metadata`` log, which readers of ``--output`` follow.

The output is therefore appended to, never replaced: ``--overwrite`` does
not apply, an existing ``--output`` must be this stream's own (it has the
log, and ``--checkpoint`` exists), and neither path may be or lie in an
input.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
from typing import Any, Callable

from sparkeras.errors import InputError

AVAILABLE_NOW = "available-now"
_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|seconds?|m|min|minutes?)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60,
                 "minutes": 60}


def add_stream_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stream", action="store_true",
                   help="score the files that arrive in --data (or --images) with Structured Streaming, appending "
                        "to --output; each file is scored once across runs (see --checkpoint)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="with --stream: where the stream records what it has scored (default: OUTPUT.checkpoint)")
    p.add_argument("--trigger", default=AVAILABLE_NOW, metavar="WHEN",
                   help="with --stream: available-now (default: score what has arrived, then stop) or an interval "
                        "such as 30s or 5min (score a micro-batch each interval until stopped)")


def checkpoint_of(args: argparse.Namespace) -> str:
    return args.checkpoint or args.output.rstrip("/") + ".checkpoint"


def trigger_seconds(trigger: str) -> float | None:
    """``None`` for ``available-now``, else the interval in seconds; an :class:`InputError` for anything else."""
    if trigger == AVAILABLE_NOW:
        return None
    match = _INTERVAL.match(trigger)
    if not match or float(match.group(1)) <= 0:
        raise InputError(f"--trigger must be {AVAILABLE_NOW} or an interval such as 30s or 5min, got {trigger!r}.")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def check_stream_flags(args: argparse.Namespace, inputs: list[str]) -> None:
    """``--stream``'s flags, and its output and checkpoint paths, before Spark or TensorFlow start."""
    from sparkeras.storage.outputs import _local, check_output

    if not args.stream:
        for flag, value, default in (("--checkpoint", args.checkpoint, None), ("--trigger", args.trigger,
                                                                               AVAILABLE_NOW)):
            if value != default:
                raise InputError(f"{flag} goes with --stream; add --stream, or drop {flag}.")
        return
    if args.overwrite:
        raise InputError("--overwrite does not go with --stream: a stream adds to --output and resumes from "
                         "--checkpoint. Give a new --output (and --checkpoint) to start again.")
    trigger_seconds(args.trigger)
    checkpoint = checkpoint_of(args)
    check_output(checkpoint, kind="directory", inputs=inputs + [args.output], flag="--checkpoint")
    check_output(args.output, kind="directory", inputs=inputs + [checkpoint], flag="--output")
    local, kept = _local(args.output), _local(checkpoint)
    if local is not None and os.path.exists(local) and os.listdir(local):
        if not os.path.isdir(os.path.join(local, "_spark_metadata")) or kept is None or not os.path.isdir(kept):
            raise InputError(f"--output {args.output!r} already holds data that is not this stream's (no "
                             f"_spark_metadata log, or no --checkpoint {checkpoint!r} to resume from); give another "
                             "--output.")


def run_stream(spark: Any, frame: Any, args: argparse.Namespace,
               left_out: Callable[[], tuple[list[str], bool]] | None = None) -> int:
    """Write ``frame`` (a streaming DataFrame of predictions) to ``--output`` and report as it goes.

    Spark's progress counts the rows the source read; ``left_out`` names
    those the predictions then left out (image files that could not be
    decoded, and whether there may be more), so the last line counts the
    rows written.
    """
    every = trigger_seconds(args.trigger)
    writer = frame.writeStream.format("parquet").option("checkpointLocation", checkpoint_of(args)) \
        .queryName(f"sparkeras-predict-{os.getpid()}")
    writer = writer.trigger(availableNow=True) if every is None else writer.trigger(processingTime=f"{every} seconds")
    query = writer.start(args.output)
    stop = _StopRequest()
    reported, rows = -1, 0

    def report() -> None:
        nonlocal reported, rows
        for progress in query.recentProgress:  # an idle trigger reports the next batch's id with no rows
            if progress["batchId"] > reported and progress["numInputRows"]:
                reported = progress["batchId"]
                rows += progress["numInputRows"]
                print(f"batch {reported}: read {progress['numInputRows']} rows ({rows} this run)", flush=True)

    try:
        while query.isActive and not stop.asked:
            query.awaitTermination(0.5)
            report()
        if stop.asked:
            query.stop()
        report()
    finally:
        stop.restore()
    if query.exception() is not None:
        from sparkeras.errors import worker_error

        raise worker_error(query.exception(), "predicting")
    skipped, more = left_out() if left_out is not None else ([], False)
    scored = f"{'at most ' if more else ''}{rows - len(skipped)}"
    print(f"scored {scored} new rows into {args.output}; the stream resumes from {checkpoint_of(args)}")
    return 0


class _StopRequest:
    """Ctrl-C or SIGTERM (a scheduler stopping the job) asks the query to stop after its micro-batch.

    Why a flag. The handlers run on the main thread, which waits in a call
    into the JVM; pyspark's own SIGINT handler calls the JVM from there, and
    py4j then failed with "reentrant call" tracebacks. The loop that waits
    for the query stops it once its call has returned.
    """

    def __init__(self) -> None:
        self.asked = False
        self._before: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._before[sig] = signal.signal(sig, self._ask)
            except ValueError:  # not the main thread: the caller's own handling stands
                pass

    def _ask(self, *_: Any) -> None:
        self.asked = True

    def restore(self) -> None:
        for sig, before in self._before.items():
            signal.signal(sig, before)
