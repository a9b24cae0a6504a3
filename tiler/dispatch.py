"""The scheduler's two helpers: the book of tasks, and the wakeup of its loop.

:class:`TaskBook` knows every task of the frames in flight: those waiting to be
sent (``pending``), those a worker holds (``in_flight``) and how often each was
lost with a dead worker (``attempts``). :class:`Wakeup` is the self-pipe that
lets I/O threads post results to the scheduler's loop, which sleeps in one
``wait`` on the workers' pipes and this one.

    scheduler ──queue──> TaskBook.pending ──send──> TaskBook.in_flight ──reply/lost──> scheduler
    I/O thread ──post──> Wakeup ──take──> scheduler
"""

from __future__ import annotations

import os
import queue
import select
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["TaskBook", "Wakeup"]


class TaskBook:
    """Tasks of the frames in flight, each under a task id unique in this process.

    A task is whatever the scheduler sends (a tile range, a file step); a frame
    is the object it belongs to, ordered by its ``seq``.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Any, int, Any]] = []  # (frame, task_id, task) not sent yet
        self.in_flight: dict[int, tuple[Any, Any]] = {}  # task_id -> (frame, task) on a worker
        self.attempts: dict[int, int] = {}  # task_id -> times it was lost with a worker

    def queue(self, frame: Any, task_id: int, task: Any, *, attempts: int = 0) -> None:
        """Add a task to send (again, after ``attempts`` losses)."""
        self.pending.append((frame, task_id, task))
        if attempts:
            self.attempts[task_id] = attempts

    def in_order(self) -> Iterator[tuple[Any, int, Any]]:
        """The pending tasks, oldest frame first (frames finish in order)."""
        self.pending.sort(key=lambda p: p[0].seq)
        return iter(list(self.pending))

    def sending(self, frame: Any, task_id: int, task: Any) -> None:
        """Record a pending task as held by a worker; before the send, so that an
        interrupt in the middle of it still finds the task (and stops the workers)."""
        self.in_flight[task_id] = (frame, task)

    def sent(self, task_id: int) -> None:
        """The send succeeded: the task is no longer pending."""
        self.pending = [p for p in self.pending if p[1] != task_id]

    def unsent(self, task_id: int) -> None:
        """No worker could take the task now: it stays pending."""
        self.in_flight.pop(task_id, None)

    def drop_pending(self, frame: Any) -> int:
        """Forget the frame's tasks not sent yet; returns how many."""
        kept = [p for p in self.pending if p[0] is not frame]
        dropped = len(self.pending) - len(kept)
        self.pending = kept
        return dropped

    def answered(self, task_id: int) -> tuple[Any, Any] | None:
        """A worker answered: (frame, task), or None for a task no longer in the book."""
        self.attempts.pop(task_id, None)
        return self.in_flight.pop(task_id, None)

    def lost(self, task_id: int) -> tuple[Any, Any, int] | None:
        """A worker died holding the task: (frame, task, attempts so far), or None."""
        entry = self.in_flight.pop(task_id, None)
        if entry is None:
            return None
        return (*entry, self.attempts.pop(task_id, 0))

    def forget_in_flight(self) -> None:
        """The workers were stopped: no answer will come."""
        self.in_flight.clear()
        self.attempts.clear()


class Wakeup:
    """A self-pipe carrying events from other threads to the scheduler's loop.

    ``post`` from any thread queues an event and makes :attr:`reader` readable;
    ``take`` (in the loop) empties both. After :meth:`close`, posts are dropped.
    """

    def __init__(self) -> None:
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)  # a full pipe already wakes the loop: never block a poster
        self._lock = threading.Lock()
        self._closed = False

    @property
    def reader(self) -> int:
        """The file descriptor to wait on."""
        return self._r

    def post(self, event: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._events.put(event)
            try:
                os.write(self._w, b"x")
            except OSError:  # full: the loop wakes anyway
                pass

    def wait(self, timeout: float | None) -> bool:
        """Block until an event is posted or ``timeout`` passes; True if one was."""
        return bool(select.select([self._r], [], [], timeout)[0])

    def take(self) -> list[Any]:
        """Every event posted so far, in order."""
        try:
            while os.read(self._r, 4096):
                pass
        except BlockingIOError:
            pass
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        """Drop later posts and close the pipe (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.close(self._r)
            os.close(self._w)
