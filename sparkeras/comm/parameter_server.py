"""The parameter server of asynchronous training, and the workers' client for it.

The driver runs one :class:`ParameterServer` for the length of a fit. It holds
the *center variable* (the float weights of the model) and applies the
commits workers send, using the rule of the chosen distributed optimizer
(:mod:`sparkeras.strategies.distributed`). It speaks the signed frames of
:mod:`sparkeras.comm.wire`: a JSON header and raw arrays, never pickles, each
frame signed with the fit's secret. The messages are:

``join``    a worker starts an epoch; the reply is the center, the server's
            version (updates applied so far) and the worker's own local state
            (its weights and optimizer state from the end of its previous
            epoch, or the fit's initial state).
``pull``    the reply is the center and its version.
``commit``  arrays shaped like the center; the server folds them in and
            replies with the center (or a bare acknowledgement when the worker
            asks for none). ``base`` is the version the worker last saw, so the
            server knows how stale the commit is; ``seq`` numbers a worker's
            commits so that one resent after a lost connection is not applied
            twice.
``done``    the worker has finished its epoch (synchronous rounds stop
            waiting for it).
``epoch_end`` a task that trains every epoch of the fit in one Spark job
            has finished its epoch: ``done``, with the task's report (its
            local state and metric states, its figures). The reply waits
            until every worker of the epoch has reported and the driver has
            published the epoch (:meth:`ParameterServer.epoch_reports`,
            :meth:`ParameterServer.answer_epoch`): stop, or the next
            epoch's run and learning rate.

Concurrency follows the rule: with ``rule.lock`` commits and pulls are
serialised; without it (hogwild) they run concurrently on the connection
threads. With ``rule.synchronous`` a commit waits until every worker still
training has committed its round, then all of the round's commits are applied
and every waiter gets the same new center. A synchronous epoch is abandoned
when Spark retries one of its tasks (a ``join`` from attempt 1 or later: the
peers' rounds no longer line up); the waiting workers are told so at once,
and the driver, which polls :meth:`ParameterServer.abandoned`, cancels the
epoch's job and runs the epoch again from its start
(:mod:`sparkeras.strategies.epochs`).
"""

from __future__ import annotations

import collections
import contextlib
import queue
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from sparkeras.comm.server import FrameServer, ServerAddress
from sparkeras.comm.wire import FrameError, Payload, payload_size, read_frame, write_frame
from sparkeras.errors import InputError
from sparkeras.serialization import pack_arrays, packed_parts, unpack_arrays


class Diverged(ValueError):
    """A commit of NaN or infinite values: the fit diverged, and a relaunch would only diverge again."""


class ServerRule(Protocol):
    """What the server needs from a distributed optimizer."""

    lock: bool
    synchronous: bool

    def apply(self, center: list[np.ndarray], commit: list[np.ndarray], staleness: int) -> None: ...

    def apply_round(self, center: list[np.ndarray], commits: list[list[np.ndarray]]) -> None: ...


@dataclass
class ServerStats:
    """What moved through the server during one fit (returned with the history)."""

    commits: int = 0
    pulls: int = 0
    joins: int = 0
    local_states_sent: int = 0  # joins that carried the worker's local state (not held by its task already)
    resent_commits: int = 0
    rejected_frames: int = 0
    refused_commits: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    staleness: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        """Thread-safe increments (hogwild commits run concurrently)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, Any]:
        stale = self.staleness
        total = sum(stale.values())
        return {
            "commits": self.commits, "pulls": self.pulls, "joins": self.joins,
            "local_states_sent": self.local_states_sent,
            "resent_commits": self.resent_commits, "rejected_frames": self.rejected_frames,
            "refused_commits": self.refused_commits, "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
            "staleness": {str(k): v for k, v in sorted(stale.items())},
            "mean_staleness": (sum(k * v for k, v in stale.items()) / total) if total else 0.0,
            "max_staleness": max(stale) if stale else 0,
        }


class ParameterServer:
    """The center variable, served to the workers of one fit.

    Args:
        host: the address to bind (the driver's address, not ``0.0.0.0``).
        rule: the distributed optimizer's server-side rule.
        center: the initial center (float weights), copied.
        initial_local: every worker's local state (packed arrays) until it
            has one of its own from a finished epoch.
        timeout: how long a synchronous round waits for the slowest worker.
        cut_after_commits: test hook; drop the connection once, right after
            applying that many commits and before replying.
    """

    def __init__(self, host: str, rule: ServerRule, center: Sequence[np.ndarray], initial_local: bytes,
                 timeout: float = 300.0, cut_after_commits: int | None = None) -> None:
        self.rule = rule
        self.center = [np.array(a, copy=True) for a in center]
        self.version = 0
        self.stats = ServerStats()
        self.timeout = timeout
        self._shapes = [(a.dtype, a.shape) for a in self.center]
        self._initial_local = initial_local
        self._local: dict[int, bytes | memoryview] = {}
        self._local_run: dict[int, int] = {}  # the epoch run each parked state was reported in (park's run)
        self._seen: dict[tuple[int, int], int] = {}  # (worker, attempt) -> last applied seq
        self._lock = threading.Lock()
        self._round = threading.Condition(self._lock)
        self._round_no = 0
        self._pending: dict[int, list[np.ndarray]] = {}
        self._active: set[int] = set()
        self._closed = False
        self._epoch_no = 0
        self._expected: set[int] = set()  # the workers of the current epoch run
        self._reports: dict[int, tuple[dict[str, Any], bytes]] = {}  # their epoch_end reports so far
        self._scored: dict[int, bytes] = {}  # their metric states of the center (rules that report it)
        self._ended: queue.Queue = queue.Queue()  # complete epochs, for the driver
        self._answers: dict[int, dict[str, Any]] = {}  # the driver's answer, by epoch run
        self._handed = 0  # the last epoch run handed to the driver
        self._abandoned: str | None = None
        # What a task Spark retries would break (it abandons the epoch run); None: it joins and goes on.
        self.retry_abandons: str | None = "a synchronous epoch" if rule.synchronous else None
        self._cut_after = cut_after_commits
        commit_limit = sum(a.nbytes for a in self.center) + (64 << 10)  # the arrays and their codec header
        report_limit = 2 * len(initial_local) + (1 << 20)  # a local state and the metric variables
        limits = {"commit": commit_limit, "epoch_end": report_limit, "center_scored": 1 << 20}
        self._server = FrameServer(host, self._handle, lambda h: limits.get(h.get("type"), 0),
                                   "sparkeras-parameter-server")
        self.address: ServerAddress = self._server.address

    # -- driver side -------------------------------------------------------

    def begin_epoch(self, workers: Sequence[int]) -> int:
        """The workers that will train this epoch: synchronous rounds wait for each of them.

        Returns the number of this run of the epoch, which its tasks send
        with every message. A task of an earlier run (a retry Spark started
        before the driver cancelled that run's job) is refused, so it can
        neither abandon nor join the rounds of the run that replaced it.
        """
        with self._lock:
            return self._begin(workers)

    def _begin(self, workers: Sequence[int]) -> int:
        self._active = set(workers)
        self._expected = set(workers)
        self._reports = {}
        self._scored = {}
        self._pending.clear()
        self._epoch_no += 1  # wakes any waiter left from a failed attempt
        self._abandoned = None
        self._round.notify_all()
        return self._epoch_no

    def epoch_reports(self, wait: float) -> tuple[int, dict[int, tuple[dict[str, Any], bytes]],
                                                  dict[int, bytes]] | None:
        """``(run, {worker: (header, payload)}, {worker: center's metric states})`` once every worker of an
        epoch run has reported its end (and scored the center, for rules that report it).

        ``None`` after ``wait`` seconds without one. Reports of an earlier
        run (one abandoned before the driver saw them) are dropped.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                run, reports, scored = self._ended.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if run == self._epoch_no:
                return run, reports, scored

    def answer_epoch(self, run: int, learning_rate: float | None = None,
                     next_workers: Sequence[int] | None = None) -> int | None:
        """Release the workers waiting at the end of epoch run ``run``: to stop, or to train the next epoch.

        With ``next_workers`` the next epoch's run begins (as
        :meth:`begin_epoch`) in the same step, so no waiter sees the run
        change before its answer; the workers train it at ``learning_rate``.
        Returns that run's number (``None`` when they stop).
        """
        with self._round:
            following = None if next_workers is None else self._begin(next_workers)
            self._answers[run] = {"stop": following is None, "run": following, "learning_rate": learning_rate}
            self._round.notify_all()
            return following

    def restore(self, center: Sequence[np.ndarray]) -> None:
        """Put back the center an epoch started from, before that epoch runs again."""
        with self._lock:
            for c, value in zip(self.center, center):
                c[...] = value

    def abandoned(self) -> str | None:
        """Why the current synchronous epoch cannot complete (``None`` while it can)."""
        with self._lock:
            return self._abandoned

    def park(self, local_states: dict[int, bytes | memoryview], run: int | None = None) -> None:
        """Keep each worker's local state from the epoch that just ended, for its next join.

        ``run``: the epoch run whose reports these states are, unchanged; a
        worker that still holds its report is then sent the center alone.
        """
        with self._lock:
            self._local.update(local_states)
            for worker in local_states:
                if run is None:
                    self._local_run.pop(worker, None)
                else:
                    self._local_run[worker] = run

    def parked(self) -> dict[int, bytes | memoryview]:
        """Each worker's parked local state (packed arrays), as :meth:`park` kept it."""
        with self._lock:
            return dict(self._local)

    def snapshot(self) -> list[np.ndarray]:
        with self._lock:
            return [np.array(a, copy=True) for a in self.center]

    def close(self) -> dict[str, Any]:
        """Stop serving (no thread or port outlives the fit); return the run's statistics."""
        with self._lock:
            self._closed = True
            self._round.notify_all()
        self._server.close()
        self.stats.rejected_frames = self._server.rejected
        return self.stats.as_dict()

    # -- protocol ----------------------------------------------------------

    def _handle(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes] | None:
        self.stats.add(bytes_in=len(payload))
        kind = header.get("type")
        try:
            if kind in ("epoch_end", "center_scored") and header.get("run") in self._answers:  # resent, reply lost
                return dict(self._answers[header["run"]]), b""
            self._check_run(header)
            if kind == "join":
                reply = self._join(int(header["worker"]), int(header["attempt"]), header.get("holds"))
            elif kind == "pull":
                self.stats.add(pulls=1)
                reply = self._center_reply()
            elif kind == "commit":
                reply = self._commit(header, payload)
            elif kind == "done":
                reply = self._done(int(header["worker"]))
            elif kind == "epoch_end":
                reply = self._epoch_end(header, payload)
            elif kind == "center_scored":
                reply = self._center_scored(header, payload)
            else:
                raise FrameError(f"unknown message type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            self.stats.add(refused_commits=int(kind == "commit"))
            reply = {"error": f"refused {kind!r} message: {exc}", "diverged": isinstance(exc, Diverged)}, b""
        self.stats.add(bytes_out=payload_size(reply[1]))
        return reply

    def _check_run(self, header: dict[str, Any]) -> None:
        if "run" not in header:
            return
        current = self._epoch_no  # one attribute read, atomic: hogwild's commits take no lock for it
        if int(header["run"]) != current:
            raise ValueError(f"worker {header.get('worker')}'s task belongs to run {header['run']} of the epoch, "
                             f"which was abandoned; run {current} replaced it")

    def _guarded(self) -> Any:
        """The server lock, unless the rule wants lock-free (hogwild) access to the center."""
        return self._lock if self.rule.lock else contextlib.nullcontext()

    def _center_reply(self) -> tuple[dict[str, Any], bytes]:
        with self._guarded():
            return {"version": self.version}, pack_arrays(self.center)

    def _join(self, worker: int, attempt: int, holds: int | None = None) -> tuple[dict[str, Any], Payload]:
        """The center and the worker's parked local state; the center alone where the worker ``holds`` that state.

        Why. A task that trains every epoch in one job (``OneJobFit``) has
        its model at the end of the last epoch, which is exactly the state
        it reported and the driver parked. Sending it back cost a model's
        weights and optimizer moments each way per epoch: 200 MB for a
        16.6M-weight MLP with Adam. ``holds`` is the epoch run of that
        report; the state parked for the worker must come from it.
        """
        with self._lock:
            self.stats.add(joins=1)
            if self.retry_abandons is not None and attempt > 0:
                self._abandoned = (f"worker {worker}'s task failed and Spark retried it (attempt {attempt + 1}) "
                                   f"in the middle of {self.retry_abandons}")
                self._round.notify_all()
                raise ValueError(self._abandoned)
            self._seen[(worker, attempt)] = -1
            center = pack_arrays(self.center)
            reply = {"version": self.version, "center_bytes": len(center)}
            if holds is not None and self._local_run.get(worker) == int(holds):
                return {**reply, "local": "held"}, center
            self.stats.add(local_states_sent=1)
            return reply, [center, self._local.get(worker, self._initial_local)]

    def _done(self, worker: int) -> tuple[dict[str, Any], bytes]:
        with self._lock:
            self._active.discard(worker)
            self._maybe_finish_round()
        return {"ok": True}, b""

    def _epoch_end(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        """Keep a worker's report of its epoch; hand the epoch to the driver once all are in; wait for the answer.

        For a rule that reports its center (``header["center"]``), the reply
        is the center once every worker has reported: the worker scores it
        on its partition and sends the metric states (``center_scored``),
        and the epoch goes to the driver once all have.
        """
        worker = int(header["worker"])
        with self._round:
            run = self._epoch_no
            self._active.discard(worker)
            self._maybe_finish_round()
            self._reports[worker] = (header, payload)
            self._round.notify_all()  # the workers waiting for the last report
            if header.get("center"):
                self._wait(run, worker, lambda: set(self._reports) >= self._expected, self._reports, "finish theirs")
                return {"version": self.version}, pack_arrays(self.center)
            return self._hand_over_and_wait(run, worker)

    def _center_scored(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        """A worker's metric states of the epoch's center on its partition; then as :meth:`_epoch_end`."""
        worker = int(header["worker"])
        with self._round:
            run = self._epoch_no
            self._scored[worker] = payload
            return self._hand_over_and_wait(run, worker)

    def _hand_over_and_wait(self, run: int, worker: int) -> tuple[dict[str, Any], bytes]:
        """Under the lock: hand the epoch to the driver once (when complete), then wait for its answer."""
        scoring = any(h.get("center") for h, _ in self._reports.values())
        if (set(self._reports) >= self._expected and (not scoring or set(self._scored) >= self._expected)
                and self._handed != run):  # once, even if a report is resent
            self._handed = run
            self._ended.put((run, dict(self._reports), dict(self._scored)))
        arrived, what = (self._scored, "score the center") if scoring else (self._reports, "finish theirs")
        self._wait(run, worker, lambda: run in self._answers, arrived, what)
        return dict(self._answers[run]), b""

    def _wait(self, run: int, worker: int, done: Any, arrived: dict[int, Any], what: str) -> None:
        """Under the lock: wait for ``done()`` up to ``timeout``; the error names the workers missing from
        ``arrived`` (to do ``what``), or else the driver's answer."""
        deadline = time.monotonic() + self.timeout
        while not done():
            if run in self._answers:
                return
            if self._closed or self._abandoned is not None or self._epoch_no != run:
                raise ValueError(f"epoch run {run} ended before the driver answered worker {worker}: "
                                 f"{self._abandoned or 'the fit stopped or restarted'}")
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(self._expected - set(arrived))
                raise ValueError(f"worker {worker} waited {self.timeout:.0f}s at the end of its epoch for "
                                 + (f"worker(s) {missing} to {what}" if missing else
                                    "the driver's answer (its callbacks and validation)"))
            self._round.wait(left)

    def _commit(self, header: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
        worker, attempt, seq = int(header["worker"]), int(header["attempt"]), int(header["seq"])
        base = int(header["base"])
        arrays = unpack_arrays(payload)
        if [(a.dtype, a.shape) for a in arrays] != self._shapes:
            raise ValueError("the committed arrays do not match the center's dtypes and shapes")
        if not all(np.isfinite(a).all() for a in arrays):
            raise Diverged("the commit holds NaN or infinite values; lower the learning rate")
        key = (worker, attempt)
        with self._lock:
            duplicate = self._seen.get(key, -1) >= seq
            if duplicate:
                self.stats.add(resent_commits=1)
            else:
                self._seen[key] = seq
        if not duplicate:
            if self.rule.synchronous:
                self._commit_round(worker, arrays)
            else:
                with self._guarded():
                    self._apply(arrays, base)
            if self._cut_after is not None and self.stats.commits >= self._cut_after:
                self._cut_after = None
                raise ConnectionAbortedError("test hook: connection cut after a commit")
        if header.get("reply") == "ack":
            return {"version": self.version}, b""
        return self._center_reply()

    def _apply(self, arrays: list[np.ndarray], base: int) -> None:
        staleness = max(0, self.version - base)
        self.rule.apply(self.center, arrays, staleness)
        with self.stats._lock:  # version and counts stay exact even for hogwild's racing commits
            self.version += 1
            self.stats.commits += 1
            self.stats.staleness[staleness] += 1

    def _commit_round(self, worker: int, arrays: list[np.ndarray]) -> None:
        """Wait until every active worker has committed this round, then apply the round at once."""
        with self._round:
            self._active.add(worker)
            self._pending[worker] = arrays
            my_round, my_epoch = self._round_no, self._epoch_no
            self._maybe_finish_round()
            deadline = time.monotonic() + self.timeout
            while self._round_no == my_round and not self._closed:
                if self._abandoned is not None or self._epoch_no != my_epoch:
                    raise ValueError(f"the synchronous round was abandoned: {self._abandoned or 'epoch restarted'}")
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(self._active - set(self._pending))
                    raise ValueError(f"synchronous round timed out after {self.timeout:.0f}s waiting for "
                                     f"worker(s) {missing}")
                self._round.wait(left)

    def _maybe_finish_round(self) -> None:
        if self._pending and set(self._pending) >= self._active:
            commits = [self._pending[worker] for worker in sorted(self._pending)]
            self.rule.apply_round(self.center, commits)
            with self.stats._lock:
                self.version += len(commits)
                self.stats.commits += len(commits)
                self.stats.staleness[0] += len(commits)
            self._pending.clear()
            self._round_no += 1
            self._round.notify_all()


class ParameterClient:
    """A worker's connection to the parameter server, which survives connection loss.

    A call that fails on the network reconnects with exponential backoff
    (0.1 s doubling up to 5 s, jittered) and sends the same frame again, for
    up to ``timeout`` seconds. Commits carry a sequence number, so a commit
    the server applied before the connection broke is not applied twice.

    A refused connection ends the call at once: the server's port is its
    own for one fit, so nothing will listen there again, and a task of a
    fit that ended (cancelled when the cluster lost slots) must free its
    slot now, not after ``timeout``.
    """

    def __init__(self, address: ServerAddress, worker: int, attempt: int, max_payload: int,
                 timeout: float = 300.0, run: int | None = None) -> None:
        self.address, self.worker, self.attempt, self.run = address, worker, attempt, run
        self.max_payload, self.timeout = max_payload, timeout
        self.reconnects = 0
        self.seconds = 0.0  # spent in calls: the wait a worker sees at the server
        self.bytes = 0  # payload bytes sent and received
        self._seq = 0
        self._conn: socket.socket | None = None

    def _connect(self) -> socket.socket:
        conn = socket.create_connection((self.address.host, self.address.port), timeout=self.timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def call(self, header: dict[str, Any], payload: Payload = b"", patience: float = 0.0
             ) -> tuple[dict[str, Any], bytes]:
        """Send one frame and read the reply, reconnecting as the class says.

        ``patience``: seconds more than ``timeout`` to wait for a reply
        that the server itself holds back for up to ``timeout`` (the end of
        an epoch), so that the server's error, which names what it waited
        for, arrives before this side gives up.
        """
        header = {"worker": self.worker, "attempt": self.attempt, **header}
        if self.run is not None:
            header["run"] = self.run
        started = time.perf_counter()
        deadline = time.monotonic() + self.timeout + patience
        delay = 0.1
        while True:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.settimeout(self.timeout + patience)
                write_frame(self._conn, self.address.secret, header, payload)
                reply, blob = read_frame(self._conn, self.address.secret, self.max_payload)
                self.seconds += time.perf_counter() - started
                self.bytes += payload_size(payload) + len(blob)
                break
            except ConnectionRefusedError:  # nothing listens there any more: retrying cannot help
                self._drop()
                raise ConnectionError(
                    f"the parameter server at {self.address.host}:{self.address.port} refused the connection: "
                    "the fit it served has ended, or its driver stopped") from None
            except (OSError, EOFError, FrameError) as exc:
                self._drop()
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(
                        f"lost the parameter server at {self.address.host}:{self.address.port} "
                        f"and could not reconnect within {self.timeout:.0f}s: {exc}") from None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)
                self.reconnects += 1
        if reply.get("diverged"):  # the same again on a relaunch: an error in the settings, not in the cluster
            raise InputError(f"Training diverged: the parameter server {reply['error']}.")
        if "error" in reply:
            raise RuntimeError(f"the parameter server {reply['error']}")
        return reply, blob

    def join(self, holds: int | None = None) -> tuple[list[np.ndarray], int, list[np.ndarray] | None]:
        """The center, its version, and this worker's local state (``None``: the state of run ``holds``,
        which the worker says it still has, is the one parked)."""
        reply, blob = self.call({"type": "join"} if holds is None else {"type": "join", "holds": holds})
        cut, view = int(reply["center_bytes"]), memoryview(blob)
        local = None if reply.get("local") == "held" else unpack_arrays(view[cut:])
        return _writable(view[:cut]), int(reply["version"]), local

    def pull(self) -> tuple[list[np.ndarray], int]:
        reply, blob = self.call({"type": "pull"})
        return _writable(blob), int(reply["version"])

    def commit(self, arrays: Sequence[np.ndarray], base: int, want_center: bool
               ) -> tuple[list[np.ndarray] | None, int]:
        """Send a commit; the new center (if asked for) and version."""
        self._seq += 1
        reply, blob = self.call({"type": "commit", "seq": self._seq, "base": base,
                                 "reply": "center" if want_center else "ack"}, packed_parts(arrays))
        return (_writable(blob) if want_center else None), int(reply["version"])

    def done(self) -> None:
        self.call({"type": "done"})
        self._drop()

    def end_epoch(self, samples: int, steps: int, state: bytes, metrics: bytes, figures: dict[str, float],
                  score_center: Any = None) -> dict[str, Any]:
        """Report the finished epoch (as :meth:`done` does), then wait for the driver's answer.

        The answer says whether to stop and, if not, the next epoch's run
        and learning rate. Each wait is bounded by the server's ``timeout``.
        With ``score_center`` (a function of the center's arrays that returns
        its packed metric states on this partition), the server first
        answers with the epoch's final center, once every worker reported;
        the scores go back before the driver's answer.
        """
        header = {"type": "epoch_end", "samples": samples, "steps": steps, "state_bytes": len(state),
                  "figures": figures, "center": score_center is not None}
        try:
            reply, blob = self.call(header, [state, metrics], patience=30.0)
            if score_center is not None and "stop" not in reply:  # not an answer resent
                reply, _ = self.call({"type": "center_scored"}, score_center(_writable(blob)), patience=30.0)
        finally:
            self._drop()
        return reply

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _writable(blob: bytes | bytearray | memoryview) -> list[np.ndarray]:
    """Decoded arrays a distributed optimizer's rule may modify in place.

    A large reply arrives in a writable buffer of its own (:func:`~sparkeras.comm.wire.read_frame`),
    so its arrays are writable, aligned views of it already; only those of
    a read-only ``bytes`` blob (or, from an older peer, unaligned) are copied.
    """
    return [a if a.flags.writeable and a.flags.aligned else a.copy() for a in unpack_arrays(blob)]
