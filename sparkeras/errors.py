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


class ExecutorEnvironmentError(WorkerError):
    """An executor's Python cannot import what the tasks need: sparkeras itself, or a module of the user's.

    It fails the same way on every attempt, so a fit stops at once instead
    of relaunching its epoch.
    """


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
# An executor whose Python lacks sparkeras: its daemon cannot start, or a task cannot unpickle sparkeras' functions.
_NOT_ON_EXECUTOR = re.compile(r"No module named '(sparkeras(?:\.[\w.]+)?)'")
_MISSING_MODULE = re.compile(r"ModuleNotFoundError: No module named '([\w.]+)'")
_LOST_TASK = re.compile(r"Lost task [\d.]+ in stage [\d.]+ \(TID \d+\) \((\S+) executor (\S+)\)")
_WORKER_PYTHON = re.compile(r"^\s*(\S+): Error while finding module specification", re.MULTILINE)


def lacks_sparkeras(failure: BaseException) -> bool:
    """Whether a failed Spark job says an executor's Python cannot import sparkeras."""
    return _NOT_ON_EXECUTOR.search(str(failure)) is not None


def worker_error(exc: BaseException, doing: str) -> Exception:
    """A driver-side error for a failed Spark job, carrying the worker's traceback."""
    text = str(exc)
    found = _INPUT_ERROR.search(text)
    if found:
        return InputError(found.group(1).strip())
    missing = _NOT_ON_EXECUTOR.search(text)
    if missing:
        return ExecutorEnvironmentError(_not_on_executor(text, missing.group(1), doing))
    module = _MISSING_MODULE.fullmatch(failure_reason(exc)) if "Traceback" in text else None
    if module:  # the task's own error, not one it handled on the way
        return ExecutorEnvironmentError(
            f"The executors' Python cannot import module {module.group(1)!r}{_where(text)}: the tasks failed while "
            f"{doing}. The model's own classes or functions, or yours, come from it: ship it with the job "
            "(spark-submit --py-files, or spark.sparkContext.addPyFile(path) before the fit), or install it on "
            "every machine that runs executors.")
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


def _not_on_executor(text: str, module: str, doing: str) -> str:
    """What to do when an executor's Python cannot import sparkeras: where, and the two ways to get it there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = f" (the driver has {version('sparkeras')})"
    except PackageNotFoundError:
        ours = ""
    return (f"The executors' Python cannot import {module}{_where(text)}: "
            f"the tasks failed while {doing}. Install sparkeras on every machine that runs executors{ours}, or ship "
            "it with the job: spark-submit --py-files sparkeras.zip (then the driver imports it from that file "
            "too, and sparkeras leaves Spark's Python daemon as it is), or a packed environment (--archives "
            "env.tar.gz#env --conf spark.pyspark.python=./env/bin/python). A file added with addPyFile once "
            "the session runs comes too late for Python workers that fork from sparkeras.worker.daemon.")


def _where(text: str) -> str:
    """`` (executor 1 on host, Python /path)`` from a failed job's text, as much of it as Spark said."""
    lost, python = _LOST_TASK.search(text), _WORKER_PYTHON.search(text)
    where = [f"executor {lost.group(2)} on {lost.group(1)}"] if lost else []
    where += [f"Python {python.group(1)}"] if python else []
    return f" ({', '.join(where)})" if where else ""


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
