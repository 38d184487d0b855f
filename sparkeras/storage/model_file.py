"""``.keras`` archives: recognising one before anything is loaded, and writing one quickly."""

from __future__ import annotations

import contextlib
import os
import re
import warnings
import zipfile
from typing import Any, Iterator

from sparkeras.errors import InputError

_ARCHIVE_MEMBERS = ("config.json", "metadata.json")


def check_model_archive(path: str, flag: str = "model") -> None:
    """Raise :class:`InputError` unless the local ``path`` is a readable ``.keras`` archive.

    A ``.keras`` file is a zip holding ``config.json`` and ``metadata.json``
    (and the weights); anything else (a truncated download, an HDF5 ``.h5``
    file, a SavedModel directory) is named as what it is, not as missing.
    """
    if not os.path.exists(path):
        raise InputError(f"No model file at {path!r} ({flag}); check the path.")
    if os.path.isdir(path):
        hint = " (it looks like a TensorFlow SavedModel)" if os.path.exists(os.path.join(path, "saved_model.pb")) \
            else ""
        raise InputError(f"{flag} {path!r} is a directory{hint}, not a .keras file; save the model with "
                         "model.save('name.keras').")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        raise InputError(f"{flag} {path!r} is a legacy HDF5 (.h5) model, not a .keras archive; load it with "
                         "keras.saving.load_model and save it again as name.keras.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"{flag} {path!r} is not a valid .keras archive ({exc}); it may be truncated or "
                         "not a Keras model. Save the model again with model.save('name.keras').") from None
    missing = [m for m in _ARCHIVE_MEMBERS if m not in names]
    if missing or broken is not None:
        what = f"it lacks {', '.join(missing)}" if missing else f"its member {broken!r} is corrupt"
        raise InputError(f"{flag} {path!r} is not a valid .keras archive ({what}). "
                         "Save the model again with model.save('name.keras').")


def archive_json(path: str, member: str) -> dict | None:
    """The JSON member ``member`` of the local ``.keras`` archive ``path``; ``None`` when it cannot be read.

    A missing or broken member is not an error here: Keras' own loader
    reports what is wrong with the file.
    """
    import json

    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read(member))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


_SKIPSET_TYPES = ("Operation", "Layer", "Functional", "Sequential", "Metric", "Optimizer", "Loss")


def save_keras(model: Any, path: str) -> None:
    """``model.save(path)``, without rebuilding Keras' reference objects on every save.

    Keras 3 (3.x through at least 3.15) caches the attribute sets that
    saving skips under ``saving_attr_skipset_<type>`` but looks them up
    under ``saving_attr_skiplist_<type>``, so every save builds a fresh
    ``Layer``, ``Metric``, ``CompileMetrics`` and ``Optimizer`` (with
    variables) only to list their attributes: 40% of saving an MLP, 6 of
    15 ms, paid on the fit's thread when a tracked fit ends. The sets are
    computed once and stored under the key Keras reads (its state is per
    thread, so once per thread); with a Keras that reads its own key this
    does nothing more. On JAX or PyTorch it does not import TensorFlow
    (:func:`sparkeras.serialization.tensorflow_left_unimported`).

    A compiled model whose optimizer was never built (the driver's copy
    before a fit, or a stage's model) gets its optimizer built first:
    saved with 2 of its variables, it loaded with Keras' warning "Skipping
    variable loading for optimizer ... because it has 10 variables whereas
    the saved optimizer has 2".
    """
    from sparkeras.serialization import ensure_optimizer_built, tensorflow_left_unimported

    if getattr(model, "built", False):
        ensure_optimizer_built(model)
    try:
        from keras.src.backend.common import global_state
        from keras.src.saving.saving_lib import get_attr_skipset
    except ImportError:  # another Keras layout: save as it does
        pass
    else:
        for kind in _SKIPSET_TYPES:
            key = f"saving_attr_skiplist_{kind}"
            if global_state.get_global_attribute(key) is None:
                try:
                    global_state.set_global_attribute(key, get_attr_skipset(kind))
                except Exception:  # noqa: BLE001 - a type this Keras does not know: it is never asked for
                    continue
    with tensorflow_left_unimported(), _compile_config_kept(model):
        model.save(path)


@contextlib.contextmanager
def _compile_config_kept(model: Any) -> Iterator[None]:
    """Put back the optimizer that Keras' legacy ``.h5`` saving takes out of the model's compile settings.

    Why. Keras 3 (through at least 3.15) writes an ``.h5`` file's training
    config by popping ``"optimizer"`` from the model's own compile config
    dict, not from a copy. The model then serializes without its optimizer,
    and every worker that rebuilds it from that config compiles it with
    Keras' default, RMSprop: an Elephas script that saved ``model.h5`` and
    went on with its ``SparkModel`` trained the next fit with another
    optimizer, and its predictions failed on a state of the wrong size.
    """
    config = getattr(getattr(model, "_compile_config", None), "config", None)
    optimizer = config.get("optimizer") if isinstance(config, dict) else None
    try:
        yield
    finally:
        if optimizer is not None and "optimizer" not in config:
            config["optimizer"] = optimizer


def load_keras(path: str, custom_objects: dict | None = None) -> Any:
    """``keras.saving.load_model(path)``, without Keras' warning about an optimizer that was never built.

    A model compiled and saved before any training (what ``sparkeras
    train --model`` is usually given) has an optimizer with only its step
    counter and learning rate; loading it warns "Skipping variable loading
    for optimizer ... because it has 10 variables whereas the saved
    optimizer has 2", although there was no state to lose. That warning is
    dropped when the saved count is exactly an unbuilt optimizer's; every
    other warning, that one with any other count included, is shown as
    Keras raised it.
    """
    import keras

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = keras.saving.load_model(path, custom_objects=custom_objects)
    for w in caught:
        if not _unbuilt_optimizer_skipped(str(w.message), model):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return model


def _unbuilt_optimizer_skipped(message: str, model: Any) -> bool:
    """Whether ``message`` is Keras' skip warning for a saved optimizer with no more variables than an unbuilt one."""
    found = re.search(r"Skipping variable loading for optimizer .* the saved optimizer has (\d+) variables", message)
    optimizer = getattr(model, "optimizer", None)
    if found is None or optimizer is None:
        return False
    try:
        unbuilt = type(optimizer).from_config(optimizer.get_config())
    except Exception:  # noqa: BLE001 - an optimizer that cannot be copied: keep the warning
        return False
    return int(found.group(1)) == len(unbuilt.variables)
