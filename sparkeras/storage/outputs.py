"""Checking output paths before work starts, and writing outputs atomically.

A user's input is never written over, and a finished fit is never lost to a
bad ``--output``: every output path is checked before Spark or TensorFlow
starts (:func:`check_output`), and written to a hidden temporary name next
to its target, then renamed into place (:func:`save_model_atomically`,
:func:`write_table_atomically`). A writer killed half-way leaves only a
hidden ``.<name>.tmp-*`` entry, which Spark's and Hadoop's readers skip,
and the previous output, if any, intact.

Local paths are checked here without Spark; paths with a URI scheme
(``hdfs://``, ``s3a://``) go through Hadoop's ``FileSystem`` once a session
exists (:func:`check_remote_output`).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any, Iterable
from urllib.parse import urlparse

from sparkeras.errors import InputError

MODEL_EXTENSION = ".keras"


def is_remote(path: str) -> bool:
    """True for a URI Hadoop resolves (``hdfs://``, ``s3a://``, ``file:``); ``C:`` is a drive, not a scheme."""
    return len(urlparse(str(path)).scheme) > 1


def _local(path: str) -> str | None:
    """The absolute, resolved local path of ``path`` (``file:`` URIs included); ``None`` for remote ones."""
    path = os.fspath(path)
    parsed = urlparse(path)
    if parsed.scheme == "file":
        path = parsed.path
    elif is_remote(path):
        return None
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def for_the_jvm(path: str) -> str:
    """``path`` as Spark should read it: a relative local path made absolute from Python's working folder.

    Python and the JVM each have a working folder, and a script or notebook
    that changes Python's (``os.chdir``) leaves the JVM's where it was, so
    Spark would look for a relative path that Python's checks found elsewhere.
    """
    path = os.fspath(path)
    if is_remote(path) or os.path.isabs(os.path.expanduser(path)):
        return path
    return os.path.abspath(os.path.expanduser(path))


def _normal_uri(path: str) -> str:
    return str(path).rstrip("/")


def _contains(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip(os.sep + "/") + (os.sep if os.sep in outer else "/"))


def check_output(path: str, *, kind: str, overwrite: bool = False, inputs: Iterable[str] = (),
                 flag: str = "output") -> None:
    """Refuse an output path that would lose data or fail after the work is done.

    Args:
        path: where the output will be written.
        kind: ``"model"`` (a ``.keras`` file), ``"plot"`` (a ``.png``
            file), ``"table"`` (a Parquet directory) or ``"directory"`` (a
            checkpoint directory, reused).
        overwrite: allow replacing an existing output.
        inputs: paths the job reads; the output may not be one of them, hold
            one, or lie inside one.
        flag: how the user named the path (``--output``, ``path``), for the
            message.
    """
    path = os.fspath(path)
    if not str(path).strip():
        raise InputError(f"{flag} is empty; give the path to write.")
    if kind == "model" and not str(path).endswith(MODEL_EXTENSION):
        raise InputError(f"{flag} {path!r} must end in {MODEL_EXTENSION} (Keras saves models only as .keras "
                         f"archives); use {path.rstrip('/') + MODEL_EXTENSION!r}.")
    _check_not_an_input(path, inputs, flag)
    local = _local(path)
    if local is None:
        return  # checked with Hadoop once Spark runs: check_remote_output
    parent = os.path.dirname(local)
    if not os.path.isdir(parent):
        raise InputError(f"{flag} {path!r}: the directory {parent!r} does not exist; create it first.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path!r}: the directory {parent!r} is not writable.")
    if kind == "directory":
        if os.path.exists(local) and not os.path.isdir(local):
            raise InputError(f"{flag} {path!r} is a file, not a directory.")
        return
    if os.path.exists(local) and not overwrite:
        raise InputError(f"{flag} {path!r} already exists; pass --overwrite (overwrite=True / mode='overwrite') "
                         "to replace it, or choose another path.")
    if kind in ("model", "plot") and os.path.isdir(local):
        raise InputError(f"{flag} {path!r} is a directory; give a {'.keras' if kind == 'model' else '.png'} "
                         "file path.")


def _check_not_an_input(path: str, inputs: Iterable[str], flag: str) -> None:
    out_local = _local(path)
    for source in inputs:
        if source is None:
            continue
        src_local = _local(os.fspath(source))
        if out_local is not None and src_local is not None:
            a, b = out_local, src_local
        else:
            a, b = _normal_uri(path), _normal_uri(os.fspath(source))
        if _contains(a, b) or _contains(b, a):
            raise InputError(f"{flag} {path!r} would write over the input {source!r}; "
                             "write the output to another path.")


def check_remote_output(spark: Any, path: str, *, overwrite: bool, flag: str = "output") -> None:
    """The existence check of :func:`check_output` for a Hadoop URI, through the session's ``FileSystem``."""
    if not is_remote(path) or _local(path) is not None:
        return
    fs, hpath = _hadoop(spark, path)
    if fs.exists(hpath) and not overwrite:
        raise InputError(f"{flag} {path!r} already exists; pass --overwrite (overwrite=True / mode='overwrite') "
                         "to replace it, or choose another path.")


def _hadoop(spark: Any, path: str) -> tuple[Any, Any]:
    sc = spark.sparkContext
    hpath = sc._jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(sc._jsc.hadoopConfiguration()), hpath


def hadoop_copy(spark: Any, src: str, dst: str, upload: bool) -> None:
    """Copy a local file to a Hadoop URI (``upload``) or back, through the session's ``FileSystem``."""
    from sparkeras.errors import worker_error

    fs, remote = _hadoop(spark, dst if upload else src)
    local = _hadoop(spark, src if upload else dst)[1]
    try:
        if upload:
            fs.copyFromLocalFile(False, True, local, remote)
        else:
            fs.copyToLocalFile(False, remote, local, True)
    except Exception as exc:  # noqa: BLE001 - a Hadoop error arrives as a Py4JJavaError
        raise worker_error(exc, f"copying {src} to {dst}") from None


def _temporary_sibling(path: str) -> str:
    """A hidden name in the same directory (so a rename is atomic), which readers skip."""
    head, name = os.path.split(str(path).rstrip("/"))
    hidden = f".{name}.tmp-{uuid.uuid4().hex[:12]}"
    return f"{head}/{hidden}" if is_remote(path) else os.path.join(head, hidden)


SPARKERAS_MEMBER = "sparkeras.json"


def save_model_atomically(model: Any, path: str, spark: Any = None, overwrite: bool = True,
                          info: dict | None = None) -> None:
    """``model.save`` to a temporary sibling, then rename it to ``path``; a failure leaves ``path`` as it was.

    ``info`` (what sparkeras knows of the model beyond Keras, such as the
    class names of its labels) is written into the archive as
    ``sparkeras.json``, which Keras' loader ignores.
    """
    local = _local(path)
    if local is not None:
        tmp = _temporary_sibling(local) + MODEL_EXTENSION
        try:
            _save(model, tmp, info)
            if not overwrite and os.path.exists(local):
                raise InputError(f"{path!r} already exists; pass overwrite=True to replace it.")
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    with tempfile.TemporaryDirectory() as work:
        staged = os.path.join(work, "model.keras")
        _save(model, staged, info)
        fs, _ = _hadoop(spark, path)
        tmp = _temporary_sibling(path)
        try:
            fs.copyFromLocalFile(False, True, _hadoop(spark, staged)[1], _hadoop(spark, tmp)[1])
            _commit(spark, tmp, path, overwrite)
        finally:
            _delete(spark, tmp)


def _save(model: Any, path: str, info: dict | None) -> None:
    from sparkeras.storage.model_file import save_keras

    save_keras(model, path)
    if info:
        import json
        import zipfile

        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(SPARKERAS_MEMBER, json.dumps(info))


def read_model_info(path: str) -> dict:
    """The ``sparkeras.json`` of a local ``.keras`` archive; ``{}`` when there is none."""
    from sparkeras.storage.model_file import archive_json

    return archive_json(path, SPARKERAS_MEMBER) or {}


def write_table_atomically(frame: Any, path: str, overwrite: bool = False, flag: str = "output") -> None:
    """Write ``frame`` as Parquet at ``path``: to a hidden sibling first, renamed into place when complete."""
    spark = frame.sparkSession
    path = for_the_jvm(path)
    tmp = _temporary_sibling(path)
    try:
        frame.write.parquet(tmp)
        _commit(spark, tmp, path, overwrite, flag)
    except BaseException:
        _wait_for_running_tasks(spark)
        raise
    finally:
        _delete(spark, tmp)


def _wait_for_running_tasks(spark: Any, deadline_seconds: float = 30.0) -> None:
    """After a failed write, let the job's other tasks stop before its temporary output is deleted.

    Spark fails the job at its first failed task, while the others may still
    be writing; one that ends after the delete leaves the hidden directory
    behind (seen on Spark 3.5). Waits until no stage has running tasks, at
    most ``deadline_seconds``: the cleanup is best effort, the error is the user's.
    """
    import time

    tracker = spark.sparkContext.statusTracker()
    end = time.monotonic() + deadline_seconds
    while time.monotonic() < end:
        stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
        if not any(s is not None and s.numActiveTasks for s in stages):
            return
        time.sleep(0.05)


def _delete(spark: Any, path: str) -> None:
    fs, hpath = _hadoop(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def _commit(spark: Any, tmp: str, path: str, overwrite: bool, flag: str = "output") -> None:
    """Move a complete temporary output onto its target; an existing target is moved aside first, then removed.

    Hadoop's rename does not replace, so replacing takes two renames; the
    old output is deleted only after the new one is in place.
    """
    fs, target = _hadoop(spark, path)
    aside = None
    if fs.exists(target):
        if not overwrite:
            raise InputError(f"{flag} {path!r} already exists; pass --overwrite to replace it.")
        aside = _temporary_sibling(path) + ".old"
        if not fs.rename(target, _hadoop(spark, aside)[1]):
            raise OSError(f"could not move the existing {path!r} aside to replace it")
    if not fs.rename(_hadoop(spark, tmp)[1], target):
        if aside is not None:
            fs.rename(_hadoop(spark, aside)[1], target)
        raise OSError(f"could not rename the finished output into {path!r}")
    if aside is not None:
        _delete(spark, aside)
