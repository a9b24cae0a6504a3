"""The scheduler's helpers: the book of tasks, the wakeup of its loop, the slots on loan.

:class:`TaskBook` knows every task of the frames in flight: those waiting to be
sent (``pending``), those a worker holds (``in_flight``) and how often each was
lost with a dead worker (``attempts``). :class:`Wakeup` is the self-pipe that
lets I/O threads post results to the scheduler's loop, which sleeps in one
``wait`` on the workers' pipes and this one. :class:`Loans` keeps the slots
whose output the caller still views out of the ring until the caller drops them.

    scheduler ──queue──> TaskBook.pending ──send──> TaskBook.in_flight ──reply/lost──> scheduler
    I/O thread ──post──> Wakeup ──take──> scheduler
"""

from __future__ import annotations

import os
import queue
import select
import threading
import weakref
from collections.abc import Iterator
from typing import Any

__all__ = ["TaskBook", "Wakeup", "Loans"]


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


class Loans:
    """Slots of a ring lent to the caller: its results are views of their output.

    A lent slot leaves the ring's rotation until every view of it is gone (its
    ``lease`` dies), so that no later frame overwrites what the caller still
    reads. Up to ``limit`` lent slots get a place of their own (the ring grows
    by one for each), so that frames keep flowing while the caller holds the
    latest results; past that, frames wait for the caller, and a run that
    would wait forever is told so (:meth:`exhausted`).

    Parameters
    ----------
    ring : FrameRing
        The ring the slots come from; ``ring.requested`` is the number of frames in flight.
    """

    def __init__(self, ring: Any) -> None:
        self.ring = ring
        self.limit = ring.requested  # frames in flight
        self._held: list[tuple[weakref.ref, Any]] = []

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, slot: Any, lease: weakref.ref) -> None:
        """Keep ``slot`` busy until ``lease`` dies."""
        self._held.append((lease, slot))
        self._resize()

    def reclaim(self) -> None:
        """Give back to the ring the slots no view holds any more."""
        if not self._held:
            return
        kept = []
        for lease, slot in self._held:
            if lease() is None:
                self.ring.release(slot)
            else:
                kept.append((lease, slot))
        if len(kept) != len(self._held):
            self._held = kept
            self._resize()

    def _resize(self) -> None:
        self.ring.lent = min(len(self._held), self.limit)

    def exhausted(self) -> str:
        """Why no frame can start: every slot is held by results the caller kept."""
        return (
            f"{len(self._held)} results handed back without a copy are still referenced and every "
            f"frame slot is taken; keep fewer at once ({self.limit}, frames_in_flight, always works), "
            "copy the ones you keep (np.array(result)), or ask for copies (copy=True)"
        )

    def forget(self) -> None:
        """The ring was closed: nothing to give back."""
        self._held.clear()
