"""Test hooks: stop a worker at an exact point of an epoch, so that the suite's fault tests can kill it there.

Killing a process "during the second epoch" from outside is a race: epochs
of small test problems last a fraction of a second, and a Python worker
killed between two tasks fails nothing (Spark forks another). A strategy
whose ``hold_once`` is set makes one worker write its process id to a
marker file at a chosen point and then sleep, so the test kills a task that
is certainly running: the Python worker itself, its executor's JVM, or the
Worker daemon above it. Nothing here runs unless a test sets the hook.
"""

from __future__ import annotations

import os
import time
from typing import Optional, Tuple

Hold = Optional[Tuple[int, int, str, float]]  # (epoch, worker, marker file, seconds)


def hold_once(hook: Hold, epoch: int, worker: int) -> None:
    """If ``hook`` names this epoch and worker and its marker does not exist yet: write the pid, then sleep."""
    if hook is None or (hook[0], hook[1]) != (epoch, worker) or os.path.exists(hook[2]):
        return
    partial = f"{hook[2]}.{os.getpid()}"
    with open(partial, "w") as marker:
        marker.write(str(os.getpid()))
    os.replace(partial, hook[2])
    time.sleep(hook[3])


def fail_once(hook: Optional[Tuple[int, str]], epoch: int, partition: int) -> None:
    """``hook = (epoch, marker file)``: partition 0's task raises once, in that epoch (a parameter-server fit)."""
    if hook and partition == 0 and epoch == hook[0] and not os.path.exists(hook[1]):
        open(hook[1], "w").close()
        raise RuntimeError("test hook: the task fails once after a commit")
