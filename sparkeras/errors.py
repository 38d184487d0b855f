"""Errors sparkeras raises on the driver.

Every error a user can cause names the column, shape or value that is wrong
and says what to do about it, and is raised before any training starts.
"""

from __future__ import annotations

import re


class SparkerasError(Exception):
    """Base class of every error sparkeras raises on purpose."""


class InputError(SparkerasError, ValueError):
    """The data, the model or an argument cannot be used as given."""


class WorkerError(SparkerasError, RuntimeError):
    """A Spark task failed; the message carries the worker's own traceback."""


class ClusterCapacityError(SparkerasError, RuntimeError):
    """The cluster no longer has the task slots a synchronous fit needs; the message names what is missing."""


class FitCancelled(SparkerasError, RuntimeError):
    """Spark cancelled a fit's job at someone else's request (the user's job group or tags, all jobs).

    sparkeras relaunches a job that fails, but a cancelled one must stay
    cancelled: a notebook's "stop" cancels the cell's job group.
    """


_INPUT_ERROR = re.compile(r"sparkeras\.errors\.InputError: (.*)")
# Spark 4 names the error class; 3.5 says only how the job was cancelled.
_CANCELLED = re.compile(r"SPARK_JOB_CANCELLED|cancelled (?:as )?part of cancell(?:ed|ation of)")
_JVM_FRAMES = ("at org.apache", "at java.", "at scala.", "at jdk.", "at py4j.", "SQLSTATE:")
_EXCEPTION_LINE = re.compile(r"^:?\s*([\w.$]+(?:Error|Exception)): (.+)$")


def worker_error(exc: BaseException, doing: str) -> Exception:
    """A driver-side error for a failed Spark job, carrying the worker's traceback."""
    text = str(exc)
    found = _INPUT_ERROR.search(text)
    if found:
        return InputError(found.group(1).strip())
    if _CANCELLED.search(text):
        return FitCancelled(f"Spark cancelled the job while {doing} ({failure_reason(exc)}), so the fit stops "
                            "here instead of running it again. The model holds the state of the epochs "
                            "completed before it.")
    if "Traceback" not in text:
        if type(exc).__module__.startswith(("py4j", "pyspark")):  # an executor or a worker died: no traceback
            return WorkerError(f"A Spark task failed while {doing}: {failure_reason(exc)}")
        return exc if isinstance(exc, Exception) else RuntimeError(text)
    start = text.find("Traceback (most recent call last)")
    detail = text[start:] if start >= 0 else text
    lines = [ln for ln in detail.splitlines() if not ln.lstrip().startswith(_JVM_FRAMES)]
    return WorkerError(f"A Spark task failed while {doing}. The worker's traceback:\n" + "\n".join(lines).rstrip())


def failure_reason(exc: BaseException) -> str:
    """One line saying why a Spark job failed: its innermost exception message, never a JVM stack frame."""
    found = [m for m in map(_EXCEPTION_LINE.match, str(exc).splitlines()) if m]
    if not found:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        return lines[0] if lines else type(exc).__name__
    name, message = found[-1].groups()
    if name.startswith(("org.apache.", "java.", "py4j.")):  # a JVM class name tells a user nothing
        return message.strip()
    return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
