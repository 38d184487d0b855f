"""Learning curves as a PNG: ``sparkeras.plot_history``, ``sparkeras train --plot`` and the demo."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from sparkeras.errors import InputError
from sparkeras.metric_values import is_per_class


def plot_history(history: Any, path: str, *, baseline: Any = None,
                 labels: Sequence[str] = ("sparkeras", "plain model.fit"), title: str | None = None,
                 overwrite: bool = False) -> str:
    """Write learning curves of a fit to ``path`` (a ``.png``); returns the path.

    One panel per figure the fit reported: the loss and each compiled
    metric, training against validation (``val_``), over epochs, with
    labelled axes and a legend. ``baseline`` (another History, a plain
    ``model.fit``'s say) is drawn on the same panels, under ``labels[1]``.
    A parameter-server fit (``history.parameter_server``) gets one more
    panel: the histogram of its commits' staleness.

    ``history`` is a ``keras.callbacks.History`` or its ``.history`` dict.
    The file is written whole or not at all (a temporary name, then a
    rename), and an existing file is replaced only with ``overwrite=True``.
    """
    from sparkeras.storage.outputs import _temporary_sibling

    curves = _curves(history, "history")
    base = _curves(baseline, "baseline") if baseline is not None else None
    scored = list(getattr(history, "validation_epochs", None) or [])
    check_plot_path(path, overwrite)
    staleness = _staleness(history)
    names = [k for k in curves if not k.startswith(("val_", "worker_"))] or list(curves)
    figure = _figure(names, curves, base, labels, staleness, title, scored)
    tmp = _temporary_sibling(os.fspath(path)) + ".png"
    try:
        figure.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.fspath(path)


def check_plot_path(path: str, overwrite: bool = False, flag: str = "plot path", inputs: Sequence[str] = ()) -> None:
    """A plot goes to a new (or ``overwrite``) local ``.png`` file in an existing, writable directory."""
    from sparkeras.storage.outputs import check_output, is_remote

    if not str(path).lower().endswith(".png"):
        raise InputError(f"{flag} {path!r} must end in .png; use {str(path) + '.png'!r}.")
    if is_remote(os.fspath(path)):
        raise InputError(f"{flag} {path!r} is remote; plots are written to a local file path.")
    check_output(path, kind="plot", overwrite=overwrite, inputs=inputs, flag=flag)


def _curves(history: Any, name: str) -> dict[str, list[float]]:
    logs = getattr(history, "history", history)
    if not isinstance(logs, Mapping) or not logs:
        raise InputError(f"plot_history's {name} must be a keras History (what fit returns) or its .history dict "
                         f"with at least one metric, got {type(history).__name__}.")
    curves = {}
    for key, values in logs.items():
        if any(is_per_class(v) for v in values):  # F1Score's one value per class: drawn as their mean
            curves[f"{key} (class mean)"] = [float(np.mean(v)) for v in values]
        else:
            curves[str(key)] = [float(v) for v in values]
    return curves


def _staleness(history: Any) -> dict[int, int]:
    server = getattr(history, "parameter_server", None) or {}
    return {int(k): int(v) for k, v in dict(server.get("staleness") or {}).items()}


def _figure(names: list[str], curves: dict[str, list[float]], base: dict[str, list[float]] | None,
            labels: Sequence[str], staleness: dict[int, int], title: str | None, scored: Sequence[int] = ()) -> Any:
    """A Matplotlib figure drawn without pyplot, so no global backend or state is touched.

    ``scored``: the epochs (from 1) the fit's validation figures belong to,
    when ``validation_freq`` skipped some (``history.validation_epochs``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = len(names) + bool(staleness)
    figure = Figure(figsize=(5 * panels, 4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    ours, theirs = (list(labels) + ["sparkeras", "baseline"])[:2]
    for ax, name in zip(axes, names):
        for source, label, marker in ((curves, ours, "o"), (base, theirs, "s")):
            if source is None:
                continue
            for key, kind, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
                if key in source:
                    values = source[key]
                    epochs = (scored if source is curves and kind == "validation" and len(scored) == len(values)
                              else range(1, len(values) + 1))
                    ax.plot(list(epochs), values, marker + style, label=f"{label} {kind}",
                            alpha=1.0 if source is curves else 0.6)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.25 ticks on a short fit
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    if staleness:
        ax = axes[-1]
        ax.bar(list(staleness), list(staleness.values()), label="commits")
        low, high = min(staleness), max(staleness)
        if high - low <= 20:  # a tick per bar; one bar alone (a synchronous fit's 0) got -0.4 ... 0.4
            ax.set_xticks(range(low, high + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("staleness (server updates since the worker's last center)")
        ax.set_ylabel("commits")
        ax.set_title("parameter-server staleness")
        ax.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
