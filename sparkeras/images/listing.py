"""Local image folders listed by Python on the driver, instead of by Hadoop's file index.

Why. For a local folder, Spark's ``binaryFile`` source spends most of its
time outside the bytes: Hadoop lists the files on the driver, one thread,
with a status and several ``stat`` calls per file and a ``Path`` each
(0.6-1.0 s for 50,000 files on 2 cores, while Python's ``os.scandir``
takes 0.1 s), and each task then asks the file system for every file's
status again (0.55-0.65 s of a warm scoring run, paths alone). Scoring
50,000 files of 64x64 pixels warm took 3.5-4.3 s with the folder listed
here against 4.9-6.2 s through ``binaryFile`` (``bench/images.py``'s work,
rounds in turn in one session).

So ``read_images`` of a local folder (not streamed) lists it here, with
the rules Spark's listing applies (names starting with ``_`` or ``.`` are
hidden, ``*._COPYING_`` files are skipped, extensions matched as
``binaryFile``'s ``pathGlobFilter`` matches them, links to files and
folders followed), and makes a DataFrame of the paths, named as Spark
names them (``file:/...``). Its ``image`` column reads each file's bytes
with a Python UDF, so the frame is still every file's content to any
query; a fit or prediction that the plan proves reads that column
unchanged (:mod:`sparkeras.images.local_files`) reads the files in its own
workers instead and never runs the UDF. The paths' attribute ids are
recorded here (:func:`is_listed`), per Spark application, which is what
that proof checks.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterator, Sequence

from sparkeras.errors import InputError

_LISTED: set[tuple[str, int]] = set()  # (applicationId, exprId) of the path attributes made here
# A local relation is split into one partition per core, and each task carries its share of the paths: past
# this many a task (about 5 MB of paths), the paths are dealt into more partitions, one shuffle of the paths alone.
MAX_PATHS_PER_TASK = 65536


def hidden(name: str) -> bool:
    """Whether Spark's file listing leaves ``name`` out (``HadoopFSUtils.shouldFilterOutPathName``)."""
    if name.startswith(("_common_metadata", "_metadata")):
        return False
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def extension_cases(extensions: Sequence[str]) -> list[str]:
    """Each extension in lower and in upper case, sorted: what ``binaryFile``'s glob of them matches."""
    return sorted({v for e in extensions for v in (e.lower().lstrip("."), e.upper().lstrip("."))})


def image_files(folder: str, suffixes: tuple[str, ...]) -> Iterator[str]:
    """The files under ``folder`` whose names end with one of ``suffixes``, sorted, links followed, each folder once."""
    seen: set[tuple[int, int]] = set()

    def walk(path: str) -> Iterator[str]:
        info = os.stat(path)
        if (info.st_dev, info.st_ino) in seen:  # a link back up the tree
            return
        seen.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(path) as entries:
                found = sorted((e.name, e) for e in entries if not hidden(e.name))
        except OSError as exc:  # as Hadoop's listing, a folder that cannot be read stops the read
            raise InputError(f"read_images could not list the folder {path!r} ({type(exc).__name__}: "
                             f"{exc.strerror or exc}); let this user read it, or move it out of {folder!r}.") from None
        for name, entry in found:
            try:
                if entry.is_dir():
                    yield from walk(entry.path)
                elif entry.is_file() and name.endswith(suffixes):
                    yield entry.path
            except OSError:  # gone, or a broken link: Hadoop's listing skips it too
                continue

    yield from walk(folder)


def listed_images(spark: Any, root: Any, extensions: Sequence[str]) -> tuple[Any, int] | None:
    """The image files under the qualified Hadoop ``root``: a DataFrame of ``path`` and its row count.

    ``None`` where ``root`` is not a local (``file:``) folder.

    ``extensions`` match in lower or upper case, as ``read_images``' glob
    does. No files is not an error here: the caller names the folder and
    what it looked for.
    """
    uri = root.toUri()
    if uri.getScheme() != "file":
        return None
    import pyarrow as pa
    import pyspark

    folder = uri.getPath()
    prefix = root.toString().rstrip("/")
    suffixes = tuple("." + e for e in extension_cases(extensions))
    paths = [prefix + p[len(folder.rstrip("/")):] for p in image_files(folder, suffixes)]
    table = pa.table({"path": pa.array(paths, pa.string())})
    if int(pyspark.__version__.split(".")[0]) >= 4:
        frame = spark.createDataFrame(table)  # a local relation, whatever the session's Arrow setting
    else:  # Spark 3.5 takes pandas (and would read an Arrow table as a list of columns)
        frame = spark.createDataFrame(table.to_pandas(), "path string")
    record_paths(frame)
    slots = max(1, spark.sparkContext.defaultParallelism)
    if len(paths) > MAX_PATHS_PER_TASK * slots:
        frame = frame.repartition(math.ceil(len(paths) / MAX_PATHS_PER_TASK))
    return frame, len(paths)


def expr_ids(attributes: Any, name: str) -> set[int]:
    """The ids of the attributes called ``name`` in a JVM plan's output (a Scala ``Seq``)."""
    found = set()
    for i in range(attributes.size()):
        attribute = attributes.apply(i)
        if attribute.name() == name:
            found.add(int(attribute.exprId().id()))
    return found


def record_paths(frame: Any) -> None:
    """Record ``frame``'s ``path`` attribute as the listing's: made here, or passed through unchanged from it."""
    application = frame.sparkSession.sparkContext.applicationId
    for expr_id in expr_ids(frame._jdf.queryExecution().analyzed().output(), "path"):
        _LISTED.add((application, expr_id))


def is_listed(application: str, expr_id: int) -> bool:
    """Whether the path attribute ``expr_id`` of ``application`` is one :func:`listed_images` made."""
    return (application, expr_id) in _LISTED


def file_bytes() -> Any:
    """A Python UDF (Arrow-batched): the bytes of the local file at each ``file:`` path of a string column."""
    from pyspark.sql.functions import udf

    from sparkeras.images.local_files import read_local_file

    return udf(read_local_file, "binary", useArrow=True)
