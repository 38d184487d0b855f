"""The state of a fit after its last completed epoch, kept so a new driver can resume it.

With ``fit(..., checkpoint_dir=...)`` the driver writes, after every
completed epoch, one file holding everything the next epoch starts from:
the model's weights and optimizer state, the strategy's own state (the
outer optimizer's momentum, the parameter server's workers' local states
and counters), the History so far, and a fingerprint of the fit. A fit
started again with the same directory and arguments (a new notebook
kernel, a driver that was killed, ``spark-submit`` run again) resumes
after that epoch, as Horovod's ``run_id`` and Keras' ``BackupAndRestore``
do.

Why one file. The state and its metadata must change together, so they
are one file, written to a hidden temporary name and renamed over the
previous one (:mod:`sparkeras.storage.outputs`): a driver killed while
writing leaves the previous epoch's checkpoint intact. Arrays are stored
with the same pickle-free codec as on the wire. The file holds the
model's weights, so it is created with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkeras.errors import InputError
from sparkeras.metric_values import to_json
from sparkeras.serialization import pack_arrays, unpack_arrays
from sparkeras.storage.outputs import _hadoop, _local, _temporary_sibling, _commit

FILE_NAME = "sparkeras-checkpoint.skr"
_MAGIC = b"SKRC"
_HEAD = struct.Struct("<4sI")


@dataclass
class Saved:
    """What a checkpoint holds."""

    next_epoch: int
    state: list[np.ndarray]
    extra: dict[str, list[np.ndarray]] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def encode(saved: Saved) -> bytes:
    names = sorted(saved.extra)
    history = {k: [to_json(v) for v in values] for k, values in saved.history.items()}  # per-class values too
    meta = {"next_epoch": saved.next_epoch, "fingerprint": saved.fingerprint, "history": history,
            "sections": [["state", len(saved.state)]] + [[n, len(saved.extra[n])] for n in names]}
    head = json.dumps(meta).encode()
    arrays = list(saved.state) + [a for n in names for a in saved.extra[n]]
    return _HEAD.pack(_MAGIC, len(head)) + head + pack_arrays(arrays)


def decode(blob: bytes) -> Saved:
    magic, head_len = _HEAD.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a sparkeras checkpoint")
    meta = json.loads(blob[_HEAD.size:_HEAD.size + head_len])
    arrays = unpack_arrays(memoryview(blob)[_HEAD.size + head_len:])
    sections: dict[str, list[np.ndarray]] = {}
    at = 0
    for name, count in meta["sections"]:
        sections[name] = [np.array(a) for a in arrays[at:at + count]]
        at += count
    state = sections.pop("state")
    return Saved(int(meta["next_epoch"]), state, sections, meta.get("history", {}), meta.get("fingerprint", {}))


class EpochCheckpoint:
    """One fit's checkpoint in ``directory``: a local path or any Hadoop URI.

    Args:
        directory: where the checkpoint lives; created (0700) if missing.
        fingerprint: what identifies the fit (model, strategy, batch size,
            workers); a checkpoint of another fit is refused, not resumed.
        spark: the session, for Hadoop URIs.
    """

    def __init__(self, directory: str, fingerprint: dict[str, Any], spark: Any = None) -> None:
        self.directory = str(directory).rstrip("/") or "/"
        self.fingerprint = fingerprint
        self._spark = spark
        self._local_dir = _local(self.directory)
        self.path = (os.path.join(self._local_dir, FILE_NAME) if self._local_dir is not None
                     else f"{self.directory}/{FILE_NAME}")

    def load(self) -> Saved | None:
        """The saved state of this fit, ``None`` if there is none; a foreign or broken file raises."""
        blob = self._read()
        if blob is None:
            return None
        try:
            saved = decode(blob)
        except (ValueError, KeyError, struct.error) as exc:
            raise InputError(f"checkpoint_dir {self.directory!r} holds an unreadable checkpoint ({exc}); "
                             "delete it to start over.") from None
        different = sorted(k for k in set(saved.fingerprint) | set(self.fingerprint)
                           if saved.fingerprint.get(k) != self.fingerprint.get(k))
        if different:
            raise InputError(
                f"checkpoint_dir {self.directory!r} holds the state of a different fit (its {', '.join(different)} "
                "differ from this one's); pass another checkpoint_dir, or delete it to start over.")
        return saved

    def save(self, next_epoch: int, state: list[np.ndarray], extra: dict[str, list[np.ndarray]],
             history: dict[str, list[float]]) -> None:
        """Replace the checkpoint with the state after epoch ``next_epoch`` (1-based count of epochs done)."""
        blob = encode(Saved(next_epoch, state, extra, history, self.fingerprint))
        if self._local_dir is not None:
            self._save_local(blob)
        else:
            self._save_hadoop(blob)

    def _save_local(self, blob: bytes) -> None:
        os.makedirs(self._local_dir, mode=0o700, exist_ok=True)
        tmp = _temporary_sibling(self.path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def _save_hadoop(self, blob: bytes) -> None:
        jvm = self._spark.sparkContext._jvm
        fs, directory = _hadoop(self._spark, self.directory)
        permission = jvm.org.apache.hadoop.fs.permission.FsPermission
        if not fs.exists(directory):
            fs.mkdirs(directory, permission.valueOf("drwx------"))
        with tempfile.TemporaryDirectory() as work:
            staged = os.path.join(work, FILE_NAME)
            with open(staged, "wb") as f:
                f.write(blob)
            tmp = _temporary_sibling(self.path)
            fs.copyFromLocalFile(False, True, _hadoop(self._spark, staged)[1], _hadoop(self._spark, tmp)[1])
            fs.setPermission(_hadoop(self._spark, tmp)[1], permission.valueOf("-rw-------"))
            _commit(self._spark, tmp, self.path, overwrite=True)

    def _read(self) -> bytes | None:
        if self._local_dir is not None:
            try:
                with open(self.path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        fs, path = _hadoop(self._spark, self.path)
        if not fs.exists(path):
            return None
        with tempfile.TemporaryDirectory() as work:
            local = os.path.join(work, FILE_NAME)
            fs.copyToLocalFile(False, path, _hadoop(self._spark, local)[1], True)
            with open(local, "rb") as f:
                return f.read()
