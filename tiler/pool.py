"""The parent side of the workers: start, feed, watch and stop them.

Each worker has its own duplex pipe, so the parent always knows which tasks a
worker holds: when a worker dies (SIGKILL, segfault, OOM) its sentinel wakes
:meth:`WorkerPool.wait`, the pool starts a replacement and hands the lost tasks
back to the scheduler, which retries or fails them -- never a hang.

Workers are forked from tileproc's own zygote (:mod:`tiler.launcher`): a
process with numpy, OpenCV and the filters preloaded with one thread each, and
an environment given to it explicitly, so starting a pool costs milliseconds
per worker and changes nothing in the host process.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tiler import platform
from tiler.worker import Tick, worker_main

__all__ = ["WorkerPool", "default_workers", "Lost"]


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    return platform.cpu_count()


@dataclass
class _Handle:
    process: Any
    conn: Any
    tasks: OrderedDict[int, Any] = field(default_factory=OrderedDict)
    chains: set = field(default_factory=set)
    busy_since: float = 0.0  # when the task at the head of its queue started


@dataclass(frozen=True)
class Lost:
    """Tasks a dead (or timed-out) worker held, and how it ended."""

    tasks: tuple
    exitcode: int | None
    timed_out: bool = False


class WorkerPool:
    """``n`` persistent worker processes, each fed through its own pipe, at most ``depth`` tasks deep."""

    def __init__(self, n: int, *, threads: int = 1, start_method: str | None = None, depth: int = 2):
        if n < 1:
            raise ValueError(f"workers must be >= 1, got {n}")
        self.n, self.threads, self.depth = n, threads, depth
        if start_method not in (None, "forkserver", "spawn"):
            raise ValueError(f"start method must be 'forkserver' or 'spawn', got {start_method!r}")
        self._spawn = start_method == "spawn"
        self._workers: list[_Handle] = []
        self._closed = False
        try:
            for _ in range(n):
                self._workers.append(self._start())
        except BaseException:
            self.close()
            raise

    def _start(self) -> _Handle:
        import multiprocessing.connection as mpc  # workers start here: their imports too

        from tiler import launcher

        parent, child = mpc.Pipe(duplex=True)
        try:
            p = launcher.start_worker(
                worker_main, child, (os.getpid(), self.threads), threads=self.threads, spawn=self._spawn
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        return _Handle(p, parent)

    # -- feeding -------------------------------------------------------------

    def send(self, task_id: int, message_for) -> bool:
        """Give a task to the least loaded worker; ``message_for(has_chain)`` builds the message.

        Returns False when no worker can take it now: every worker is ``depth``
        tasks deep, or the message carries a filter chain (of any size) and the
        least loaded worker is not idle. Either way this never blocks on a busy
        worker: task messages are a few hundred bytes and at most ``depth`` are
        outstanding per worker, far below what its pipe buffers, and a large
        message goes only to a worker waiting in ``recv``.
        """
        w = min(self._workers, key=lambda w: len(w.tasks))
        if len(w.tasks) >= self.depth:
            return False
        msg, chain_key = message_for(w.chains)
        if w.tasks and getattr(msg, "chain_blob", None) is not None:
            return False
        if not w.tasks:
            w.busy_since = time.monotonic()
        w.tasks[task_id] = msg
        if chain_key is not None:
            w.chains.add(chain_key)
        try:
            w.conn.send(msg)
        except (BrokenPipeError, OSError):
            pass  # its sentinel reports the death on the next wait()
        return True

    def broadcast(self, message) -> None:
        """Send a small message (a few dozen bytes) to every worker."""
        for w in self._workers:
            with contextlib.suppress(BrokenPipeError, OSError):
                w.conn.send(message)

    # -- watching ------------------------------------------------------------

    def wait(self, timeout: float | None, extra: list | tuple = (), tile_timeout: float | None = None):
        """Block until a reply, a death or ``extra`` is ready.

        Returns (replies, lost, extra_ready) where replies are the workers'
        Done/Failed messages and lost a list of :class:`Lost`. A worker that
        sent nothing (no reply, no :class:`Tick`) for ``tile_timeout`` seconds
        while holding a task is stopped and its tasks are lost, timed out.
        """
        by_conn = {w.conn: w for w in self._workers}
        by_sentinel = {w.process.sentinel: w for w in self._workers}
        if tile_timeout is not None:
            now = time.monotonic()
            deadlines = [w.busy_since + tile_timeout - now for w in self._workers if w.tasks]
            if deadlines:
                timeout = max(0.0, min([*deadlines, timeout if timeout is not None else float("inf")]))
        from multiprocessing.connection import wait

        ready = wait([*by_conn, *by_sentinel, *extra], timeout)
        replies, lost, extra_ready = [], [], []
        for obj in ready:
            if obj in by_conn:
                w = by_conn[obj]
                while w.conn.poll():
                    try:
                        reply = w.conn.recv()
                    except (EOFError, OSError):
                        break
                    w.busy_since = time.monotonic()
                    if isinstance(reply, Tick):  # a tile done: its timer restarts
                        continue
                    w.tasks.pop(reply.task_id, None)
                    replies.append(reply)
            elif obj not in by_sentinel:
                extra_ready.append(obj)
        for obj in ready:
            if obj in by_sentinel and by_sentinel[obj] in self._workers:
                lost.append(self._replace(by_sentinel[obj], timed_out=False))
        if tile_timeout is not None:
            now = time.monotonic()
            for w in list(self._workers):
                if w.tasks and now - w.busy_since > tile_timeout:
                    lost.append(self._replace(w, timed_out=True))
        return replies, lost, extra_ready

    def _replace(self, w: _Handle, *, timed_out: bool) -> Lost:
        exitcode = _stop(w, grace=0.0)
        self._workers.remove(w)
        lost = Lost(tuple(w.tasks.values()), exitcode, timed_out)
        if not self._closed:
            self._workers.append(self._start())
        return lost

    # -- stopping ------------------------------------------------------------

    def close(self, *, grace: float = 2.0) -> None:
        """Stop every worker: ask, then terminate, then kill.

        Idempotent, and safe to call again after an interrupted close: a worker
        leaves the pool only once it is stopped. Never blocks on a worker's full
        pipe: the request to stop is a non-blocking write, and a worker that
        cannot read it is terminated after ``grace`` seconds.
        """
        self._closed = True  # no replacements from here on
        for w in self._workers:
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(w.conn.fileno(), False)
                w.conn.send(None)
        deadline = time.monotonic() + grace
        while self._workers:
            w = self._workers[0]
            _stop(w, grace=max(0.0, deadline - time.monotonic()))
            self._workers.remove(w)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop(w: _Handle, grace: float) -> int | None:
    """Stop one worker (join, terminate, kill) and return its exit code; again after
    an interrupted stop, it finishes the job (the exit code is then unknown)."""
    p = w.process
    try:
        if grace > 0:
            p.join(grace)
        if p.is_alive():
            p.terminate()
            p.join(1.0)
        if p.is_alive():
            p.kill()
            p.join(1.0)
        exitcode = p.exitcode
    except ValueError:  # closed by an earlier stop
        exitcode = None
    with contextlib.suppress(Exception):
        w.conn.close()
    with contextlib.suppress(Exception):
        p.close()
    return exitcode
