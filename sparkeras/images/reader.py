"""``read_images``: a folder of image files (local, HDFS, S3...) as a DataFrame to train and score on.

Spark's own ``binaryFile`` source lists and reads the files of HDFS, S3 and
other Hadoop folders, and of streams; a local folder is listed here, by the
same rules, faster (:mod:`sparkeras.images.listing`).
The DataFrame holds each file's bytes, still encoded, so it is as small as
the files themselves and nothing is decoded until a fit or a prediction
needs the pixels (:mod:`sparkeras.images.decode`). The driver never holds
the pixels. Where the files are local, a fit or prediction lets its Python
workers open them instead (:mod:`sparkeras.images.local_files`).

The ``image`` column's metadata records the ``image_size`` and
``color_mode`` asked for and the column of the paths, so a fit checks them
against the model's input before any task runs and names a file that cannot
be decoded. With ``labels="folder"`` the class names, in sorted folder order
as in Keras' ``image_dataset_from_directory``, are in the ``label`` column's
metadata (``classes``), and a fit on it keeps them with the model.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

from sparkeras.errors import InputError
from sparkeras.images.decode import COLOR_MODES, IMAGE_EXTENSIONS, ImageGeometry
from sparkeras.images.listing import extension_cases, file_bytes, listed_images
from sparkeras.session import check_classic_session

ON_ERROR = ("fail", "skip")
LABELS = ("folder", None)
FILES_PER_PARTITION = 4096
BINARY_FILE_SCHEMA = "path STRING, modificationTime TIMESTAMP, length LONG, content BINARY"


def check_classes(classes: Any, labels: Any) -> list[str] | None:
    """``read_images``' ``classes``: ``None``, or unique folder names, and only with ``labels="folder"``."""
    if classes is None:
        return None
    if labels != "folder":
        raise InputError("classes= names the class folders, so it needs labels='folder'.")
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes \
            or not all(isinstance(c, str) and c for c in classes):
        raise InputError(f"classes must be a list of class folder names, in class index order (e.g. the training "
                         f"data's df.schema['label'].metadata['classes']), got {classes!r}.")
    twice = sorted({c for c in classes if list(classes).count(c) > 1})
    if twice:
        raise InputError(f"classes names {twice} more than once; each class folder has one index.")
    return list(classes)


def check_image_arguments(path: Any, image_size: Any, color_mode: str, labels: Any, on_error: str,
                          extensions: Sequence[str], what: str = "read_images") -> tuple[str, tuple[int, int]]:
    """Every check that needs neither Spark nor Pillow; returns the path and ``(height, width)``.

    ``what`` names the path in messages (the CLI's ``--images``).
    """
    from sparkeras.storage.outputs import _local, for_the_jvm

    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"read_images needs the path of a folder of images, got {type(path).__name__}.")
    path = os.fspath(path)
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in image_size)):
        raise InputError(f"image_size must be (height, width) in pixels, two positive integers, got {image_size!r}.")
    if color_mode not in COLOR_MODES:
        raise InputError(f"color_mode must be one of {sorted(COLOR_MODES)}, got {color_mode!r}.")
    if labels not in LABELS:
        raise InputError(f"labels must be 'folder' (the class is the name of each file's folder under {path!r}) "
                         f"or None, got {labels!r}.")
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be 'fail' (stop at the first file that cannot be decoded, naming it) or "
                         f"'skip' (leave such files out and count them), got {on_error!r}.")
    if isinstance(extensions, str) or not extensions or not all(isinstance(e, str) and e for e in extensions):
        raise InputError(f"extensions must be a list of file extensions such as ['png', 'jpg'], got {extensions!r}.")
    local = _local(path)
    if local is not None and not os.path.isdir(local):
        kind = "a file, not a folder" if os.path.exists(local) else "not there"
        raise InputError(f"{what}: {path!r} is {kind}; pass the folder that holds the images"
                         f"{' (in one folder per class)' if labels else ''}.")
    return for_the_jvm(path), (int(image_size[0]), int(image_size[1]))


def read_images(spark: Any, path: str, image_size: int | tuple[int, int], color_mode: str = "rgb",
                labels: str | None = "folder", on_error: str = "fail", *,
                extensions: Sequence[str] = IMAGE_EXTENSIONS, stream: bool = False,
                classes: Sequence[str] | None = None) -> Any:
    """Image files under ``path`` as a DataFrame of ``path``, ``image`` (the file's bytes) and ``label``.

    Args:
        spark: the SparkSession.
        path: a folder, local or any Hadoop URI (``hdfs://``, ``s3a://``); its
            files are found recursively.
        image_size: ``(height, width)`` the images are resized to when they
            are decoded (an int for a square); it must match the model's input.
        color_mode: ``"rgb"``, ``"grayscale"`` or ``"rgba"``: the channels the
            images are converted to.
        labels: ``"folder"``: each file's class is the folder directly under
            ``path`` that holds it (``cats/001.jpg``), as an int index into the
            sorted folder names (``df.schema["label"].metadata["classes"]``);
            ``None``: no ``label`` column (for prediction).
        on_error: what a file that cannot be decoded does. ``"fail"``: the fit
            or prediction that reads it stops with an error naming it.
            ``"skip"``: it is left out (this costs one more decode of every
            file), and :func:`skipped_images` names the files left out.
        extensions: the file extensions read (any case); other files are
            ignored.
        stream: a streaming DataFrame of the files that arrive under ``path``
            (``spark.readStream``), for ``KerasModel.transform`` or
            ``SparkModel.predict`` in a streaming query.
        classes: the class folder names in class index order, as Keras'
            ``image_dataset_from_directory(class_names=...)`` takes them. Pass
            the training data's (``train.schema["label"].metadata["classes"]``,
            or ``SparkModel.classes``) when reading validation or test
            folders: a folder of its own order would number the classes
            differently when one is missing. A folder not in the list is an
            error; a class without a folder is fine.

    Returns:
        a DataFrame with ``path`` (string), ``image`` (binary) and, with
        ``labels="folder"``, ``label`` (int). ``SparkModel.fit``,
        ``KerasEstimator``, ``KerasModel``, ``SparkModel.predict`` and the SQL
        function of ``register_udf`` take ``image`` as a model input.
    """
    path, size = check_image_arguments(path, image_size, color_mode, labels, on_error, extensions)
    classes = check_classes(classes, labels)
    check_classic_session(spark, "read_images", needs="lists the files and counts skipped ones through the JVM",
                          instead="read the files with spark.read.format('binaryFile') and pass its 'content' "
                                  "column to KerasModel.transform or SparkModel.predict as the image column")
    from pyspark.sql import functions as F

    root, classes = _class_folders(spark, path, extensions, classes) if labels == "folder" else ("", None)
    metadata = {"image_size": list(size), "color_mode": color_mode, "path_col": "path"}
    listed = None if stream else listed_images(spark, _qualified(spark, path)[1], extensions)
    if listed is not None:
        listed, files = listed
        if not files:
            raise _no_images(path, extensions)
        frame = listed.select(F.col("path"), file_bytes()(F.col("path")).alias("image", metadata=metadata))
    else:
        reader = spark.readStream.schema(BINARY_FILE_SCHEMA) if stream else spark.read
        glob = "*.{" + ",".join(extension_cases(extensions)) + "}"
        frame = (reader.format("binaryFile").option("pathGlobFilter", glob).option("recursiveFileLookup", "true")
                 .options(**RAW_LOCAL_FILES).load(path))
        frame = frame.select(F.col("path"), F.col("content").alias("image", metadata=metadata))
        if not stream:
            frame = _few_partitions(spark, frame, path, extensions)
    if classes is not None:
        frame = frame.select("*", _label(root, classes).alias("label", metadata={"classes": classes}))
    if on_error == "skip":
        from sparkeras.images.skipping import skip_undecodable

        frame = skip_undecodable(spark, frame, ImageGeometry(*size, COLOR_MODES[color_mode][1], "path"),
                                 by_path=listed is not None)
    return frame


# Local image files are read without Hadoop's checksum layer. Its ``LocalFileSystem`` looks for a
# ``.crc`` file beside each file it opens, which only files written through Hadoop have; this cost
# about a fifth of the JVM's ~90 us per file, and scoring 50,000 files of 256x256 pixels on 2 cores
# took 13.8-14.1 s this way against 14.5-14.7 s (bench/images.py). The options reach only this
# read's Hadoop configuration (Spark copies a file source's options into it) and only ``file:`` paths;
# the cache must be bypassed, or the session's cached checksum file system is handed back.
RAW_LOCAL_FILES = {"fs.file.impl": "org.apache.hadoop.fs.RawLocalFileSystem", "fs.file.impl.disable.cache": "true"}


def _qualified(spark: Any, path: str) -> Any:
    jvm = spark.sparkContext._jvm
    hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
    fs = hadoop_path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return fs, fs.makeQualified(hadoop_path)


def _class_folders(spark: Any, path: str, extensions: Sequence[str],
                   given: list[str] | None = None) -> tuple[str, list[str]]:
    """The qualified root and its class folders, sorted (or ``given``, which must hold every folder).

    Files lying directly under the root are an error.
    """
    fs, root = _qualified(spark, path)
    try:
        entries = list(fs.listStatus(root))
    except Exception as exc:  # noqa: BLE001 - a Py4J FileNotFoundException or permission error
        raise InputError(f"read_images could not list {path!r}: {str(exc).splitlines()[0]}") from None
    names = [(e.getPath().getName(), e.isDirectory()) for e in entries]
    visible = [(n, d) for n, d in names if not n.startswith((".", "_"))]
    wanted = {e.lower().lstrip(".") for e in extensions}
    loose = sorted(n for n, d in visible if not d and os.path.splitext(n)[1].lower().lstrip(".") in wanted)
    classes = sorted(n for n, d in visible if d)
    if loose:
        raise InputError(f"read_images(labels='folder'): {loose[0]!r} lies directly in {path!r}, not in a class "
                         f"folder{f' (and {len(loose) - 1} more files)' if len(loose) > 1 else ''}; move the images "
                         "into one folder per class, or pass labels=None.")
    if not classes:
        raise InputError(f"read_images(labels='folder'): {path!r} has no class folders; put the images in one "
                         "folder per class (cats/001.jpg, dogs/002.jpg), or pass labels=None.")
    if given is not None:
        unknown = [c for c in classes if c not in given]
        if unknown:
            raise InputError(f"read_images: the folder{'s' if len(unknown) > 1 else ''} {unknown} under {path!r} "
                             f"{'are' if len(unknown) > 1 else 'is'} not among classes={given}; its images have no "
                             "class the model knows. Remove the folder, or read it with the training data's classes.")
        classes = given
    return root.toString().rstrip("/") + "/", classes


def _label(root: str, classes: list[str]) -> Any:
    """Each file's class index, from the first folder of its path under ``root``, in Spark SQL (no Python)."""
    from pyspark.sql import functions as F

    under = F.substring(F.col("path"), len(root) + 1, 1 << 30)
    name = F.when(F.col("path").startswith(root), F.substring_index(under, "/", 1)) \
        .otherwise(F.element_at(F.split(F.col("path"), "/"), -2))
    index = F.create_map(*[item for i, c in enumerate(classes) for item in (F.lit(c), F.lit(i))])
    return F.coalesce(F.element_at(index, name), F.lit(-1)).cast("int")  # array_position takes no column before 4.0


def _few_partitions(spark: Any, frame: Any, path: str, extensions: Sequence[str]) -> Any:
    """The files in partitions of about ``FILES_PER_PARTITION`` files, and an error if there are none.

    Spark counts every file as at least ``openCostInBytes`` (4 MB), so
    50,000 small images made 1,563 partitions, and a task per 32 files
    spent more time starting than decoding. Partitions are merged
    (``coalesce``, no shuffle) down to one per ``FILES_PER_PARTITION``
    files, rounded up to a multiple of the cluster's default parallelism so
    that the last wave of tasks keeps every core busy. Scoring
    50,000 files on 2 cores took 11.3 s in partitions of 1,024 files and
    7.9 s in partitions of 4,096 (``bench/images.py``): each task has a
    fixed cost in the Python worker. Rows still stream through a task in
    Arrow batches, so a larger partition does not cost memory.
    """
    files = len(frame._jdf.inputFiles())  # one JVM call: DataFrame.inputFiles() fetched 50,000 names one by one (9 s)
    if files == 0:
        raise _no_images(path, extensions)
    slots = max(1, spark.sparkContext.defaultParallelism)
    target = slots * math.ceil(files / (FILES_PER_PARTITION * slots))  # whole waves: no core idles at the end
    # Never more partitions than Spark made (coalesce cannot add any), so there is no need to ask how
    # many it made: that plans the scan of every file, 0.11-0.17 s warm and 0.5-0.8 s cold for 50,000.
    return frame.coalesce(target)


def _no_images(path: str, extensions: Sequence[str]) -> InputError:
    return InputError(f"read_images found no image files ({', '.join(extensions)}) under {path!r}; check the "
                      "path, or pass extensions=[...] for other file types.")


def skipped_images(frame: Any, column: str = "image") -> list[str]:
    """The paths of the files that ``read_images(..., on_error="skip")`` left out of ``frame`` so far.

    Files are checked as Spark reads them, so this lists what the actions run
    on ``frame`` (or on a DataFrame derived from it) have met, sorted; at most
    1,000 paths are kept.
    """
    from sparkeras.images.skipping import skipped_paths

    key = (frame.schema[column].metadata or {}).get("skipped") if column in frame.columns else None
    return [] if key is None else skipped_paths(key)
