"""The driver's view of a running search: trials done, running, pruned and failed, and the best so far."""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO


class SearchProgress:
    """One line per finished trial, with the search's counts and its best value.

    Trials finish in any order, so the display is a log of lines rather than
    a bar redrawn in place; it is written under a lock, whole lines only.
    """

    def __init__(self, metric: str, verbose: int, stream: TextIO | None = None) -> None:
        self.metric = metric
        self.verbose = verbose
        self.stream = stream or sys.stdout
        self.counts = {"complete": 0, "running": 0, "pruned": 0, "failed": 0}
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self.counts["running"] += 1

    def finished(self, number: int, state: str, detail: str, best: tuple[int, float] | None) -> None:
        """Trial ``number`` ended in ``state`` (complete, pruned or failed); ``best`` is (trial, value)."""
        with self._lock:
            self.counts["running"] -= 1
            self.counts[state] += 1
            if not self.verbose:
                return
            c = self.counts
            best_text = "none yet" if best is None else f"{self.metric}={best[1]:.4g} (trial {best[0]})"
            self.stream.write(
                f"trial {number} {state}: {detail} | done {c['complete']}, running {c['running']}, "
                f"pruned {c['pruned']}, failed {c['failed']} | best {best_text}\n")
            self.stream.flush()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counts)
