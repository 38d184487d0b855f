"""Local image files opened by the workers that decode them, instead of read into rows by the JVM.

Why. Spark's ``binaryFile`` source opens and copies each file in the
executor's JVM, then hands the bytes to the Python worker through Arrow. For
small images that copy costs as much as a third of the decoding: for
50,000 files of 64x64 pixels on 2 cores, a JVM-only scan used 2.6-3.9 s of
CPU with the files' contents and 1.0-1.5 s with their paths alone, while
Python's own ``open`` and ``read`` of the same files cost 0.5 s. On 2 cores
the JVM's share is taken from the decoders. Scoring those files warm, in
rounds that switched this off and on in turn, took 5.74 s this way against
6.32 s (medians of 8), and 50,000 files of 256x256 pixels 11.64 s against
12.54 s (medians of 6).

So where a DataFrame's image column is, provably, the unchanged content of
the local file named in its path column, the tasks select the paths only
(Spark then never opens the files) and the worker reads each file as it
decodes it. Spark's own source still lists the files, splits them into
partitions and names them; only the copy moves. The proof, made on the
driver from the DataFrame's plan, before any task runs:

* the image column carries ``read_images``' metadata, which Spark keeps only
  for the column itself passed through (a computed column has none);
* its ``path_col`` is the ``path`` attribute of a ``binaryFile`` scan, not a
  column computed from it (``withColumn("path", ...)`` makes a new one);
* every relation the plan reads is a ``binaryFile`` scan of ``file:`` folders,
  so a union or join with other data, files on HDFS or S3, a cached
  DataFrame (whose bytes are already in memory) and a streaming one keep the
  bytes in the rows.

``read_images`` of a local folder lists the files itself
(:mod:`sparkeras.images.listing`); its relation of paths counts as such a
scan when its path attribute is one that listing recorded, and its
``image`` column (a UDF that reads each path's file) is then never run; so
does the path that ``on_error="skip"``'s filter passes on unchanged, which
the listing records too. A union of such a frame with itself is not
proved: Spark gives the second copy new attributes, so its bytes come
through the UDF.

Anything else, including a Spark version whose plan objects differ, keeps
the JVM's copy: the result is the same either way, only slower.
"""

from __future__ import annotations

import os
from typing import Any

from sparkeras.images.listing import expr_ids, is_listed


def opens_local_files(frame: Any, path_col: str) -> bool:
    """Whether the workers may read ``frame``'s image files themselves from ``path_col`` (see the module)."""
    if getattr(frame, "isStreaming", True) or not hasattr(frame, "_jdf"):
        return False  # Spark Connect frames have no JVM plan here
    try:
        plan = frame.select("*")._jdf.queryExecution().withCachedData()  # a fresh plan sees a later cache()
        leaves = plan.collectLeaves()
        application = frame.sparkSession.sparkContext.applicationId
        scanned_paths = set()
        for i in range(leaves.size()):
            leaf = leaves.apply(i)
            listed = {e for e in expr_ids(leaf.output(), "path") if is_listed(application, e)}
            if listed and leaf.output().size() == 1:  # read_images' own listing of a local folder
                scanned_paths |= listed
                continue
            if leaf.getClass().getSimpleName() != "LogicalRelation":
                return False
            relation = leaf.relation()
            if relation.fileFormat().toString() != "BINARYFILE":
                return False
            roots = relation.location().rootPaths()
            if any(roots.apply(j).toUri().getScheme() != "file" for j in range(roots.size())):
                return False
            scanned_paths |= expr_ids(leaf.output(), "path")
        paths = expr_ids(plan.output(), path_col)  # a scan's own, or one passed on by on_error="skip"
        return bool(scanned_paths) and bool(paths & scanned_paths or any(is_listed(application, e) for e in paths))
    except Exception:  # noqa: BLE001 - any plan this does not recognise keeps the bytes in the rows
        return False


def read_local_file(path: str) -> bytes:
    """The bytes of the file at a Hadoop ``file:`` path (``file:/a/b.png``, ``file:///a/b.png``).

    With ``os.read`` on the file's descriptor, not ``open().read()``: the
    buffered file object's set-up cost 10 us a file against 8 us
    (50,000 files of 64x64 pixels), a tenth of what decoding one costs.
    Reads of 64 KiB until one comes back empty, without asking the file's
    size first: ``os.fstat`` and its result object cost more than the last,
    empty read (20,000 such files, medians of 8 passes: 6.5 us a file against 7.6 us).
    """
    if path.startswith("file://"):
        path = path[len("file://"):]
        path = path[path.find("/"):]  # after an authority, which local paths leave empty
    elif path.startswith("file:"):
        path = path[len("file:"):]
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        parts = [os.read(fd, 1 << 16)]
        while parts[-1]:  # to the end: a short read need not be the last on every file system
            parts.append(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 2 else b"".join(parts)
