"""Errors sparkeras raises on the driver.

Every error a user can cause names the column, shape or value that is wrong
and says what to do about it, and is raised before any training starts.
"""

from __future__ import annotations


class SparkerasError(Exception):
    """Base class of every error sparkeras raises on purpose."""


class InputError(SparkerasError, ValueError):
    """The data, the model or an argument cannot be used as given."""


class WorkerError(SparkerasError, RuntimeError):
    """A Spark task failed; the message carries the worker's own traceback."""
