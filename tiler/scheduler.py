"""Frames in flight: load -> filter tiles -> store, with backpressure and order.

Each :class:`Frame` goes through three steps. Loading and storing are a
:class:`Step`: run in the parent (``Inline``), as a task on a worker
(``OnPool``: decoding and encoding image files), or on an I/O thread
(``OnThread``: feeding and draining ffmpeg, one thread per direction, in
order). Filtering is the chain over the frame's tiles, in batches on the
workers, or in the parent for frames too small to be worth dispatching when
every filter is a built-in (other filter code never runs in the parent while
there are workers).

At most ``ring.size`` frames hold a slot at once (promise 3). Frames finish in
the order they came (promise 7), each with its ``error`` set if a step failed;
the caller decides whether one failure ends the run (a video) or not (a folder).

    frames ──> [slot] load ──> tiles ──> store (in order) ──> yield, free slot
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from filters.base import Chain
from tiler import errors
from tiler.dispatch import TaskBook, Wakeup
from tiler.errors import TileprocError
from tiler.geometry import TileGrid, default_tile_shape
from tiler.pool import WorkerPool
from tiler.sharedmem import FrameRing, FrameSlot
from tiler.worker import (
    Call,
    ChainError,
    Done,
    Failed,
    Forget,
    TileBatch,
    describe_exception,
    format_traceback,
    full_plan,
    release_frames,
    run_chain,
)

__all__ = ["Frame", "FrameState", "Inline", "OnPool", "OnThread", "IOThread", "Scheduler", "Progress"]

_task_ids = itertools.count(1)


@dataclass(frozen=True)
class Inline:
    """Run ``fn(src, dst)`` in the parent."""

    fn: Callable[[np.ndarray, np.ndarray], Any]


@dataclass(frozen=True)
class OnPool:
    """Run ``fn(src, dst, *args)`` on a worker (``fn`` at module level)."""

    fn: Callable[..., Any]
    args: tuple = ()


@dataclass(frozen=True)
class OnThread:
    """Run ``fn(src, dst)`` on an :class:`IOThread`, in submission order."""

    thread: IOThread
    fn: Callable[[np.ndarray, np.ndarray], Any]


Step = Inline | OnPool | OnThread


class FrameState(enum.Enum):
    """Where a frame is: NEW -> LOADING -> TILING -> READY -> STORING -> FINISHED,
    or FAILED (waiting for its outstanding tasks) -> FINISHED."""

    NEW = "new"
    LOADING = "loading"
    TILING = "tiling"
    READY = "ready"
    STORING = "storing"
    FAILED = "failed"
    FINISHED = "finished"


@dataclass(eq=False)
class Frame:
    """A frame in flight. ``load`` returning False means the source has ended."""

    label: str
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Step | None = None
    store: Step | None = None
    error: BaseException | None = None
    value: Any = None  # what load / store returned, for the caller
    meta: Any = None  # the caller's own data
    out_shape: tuple[int, ...] | None = None  # the filtered frame's shape, when the chain changes it

    # the scheduler's bookkeeping
    seq: int = -1
    slot: FrameSlot | None = None
    slot_views: tuple | None = None  # (src, dst) while the frame holds a slot
    state: FrameState = FrameState.NEW
    waiting: int = 0  # tasks or steps of this frame not yet answered
    after: Callable | None = None  # what to do when the running step answers
    tiles: int = 0
    grid: TileGrid | None = None
    eof: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes of the larger of the input and output frames."""
        pixels = max(int(np.prod(self.shape)), int(np.prod(self.out_shape or self.shape)))
        return pixels * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Progress:
    """An event for progress callbacks: ``kind`` is "tiles" or "frame"."""

    kind: str
    frame: Frame
    done: int = 1


class IOThread:
    """A thread running steps in order and posting each result back to the scheduler."""

    def __init__(self, name: str):
        self.name = name
        self._jobs: queue.Queue = queue.Queue()
        self._post: Callable | None = None
        self._thread = threading.Thread(target=self._run, name=f"tileproc-{name}", daemon=True)
        self._thread.start()

    def submit(self, frame: Frame, fn: Callable, post: Callable) -> None:
        self._jobs.put((frame, fn, post))

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            frame, fn, post = job
            views = frame.slot_views
            if views is None:  # the run ended and freed the frame's slot: nothing to do
                continue
            try:
                post(frame, fn(*views), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the scheduler
                post(frame, None, exc)

    def stop(self, timeout: float = 5.0) -> None:
        """Drop the jobs not started yet and wait for the one running (unblock it first)."""
        try:
            while True:
                self._jobs.get_nowait()
        except queue.Empty:
            pass
        self._jobs.put(None)
        self._thread.join(timeout)


class Scheduler:
    """Drives frames through a :class:`WorkerPool` and a :class:`FrameRing`.

    Parameters
    ----------
    pool : WorkerPool or None
        Workers for tiles and pool steps; None runs everything in the parent.
    ring : FrameRing
        The frame slots; its size bounds the frames in flight.
    chain : Chain
        The filters to apply to every frame (``chain_blob``: its pickle, if already made).
    tile_shape : (int, int) or None
        Core tile size; None picks strips by :func:`default_tile_shape`.
    inline_below : int
        Frames with fewer pixels are filtered in the parent (dispatch would cost
        more), if every filter of the chain is one of tileproc's built-ins: other
        filter code never runs in this process while there are workers.
    """

    def __init__(
        self,
        pool: WorkerPool | None,
        ring: FrameRing,
        chain: Chain,
        *,
        tile_shape: tuple[int, int] | None = None,
        inline_below: int = 0,
        retries: int = 1,
        tile_timeout: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        chain_blob: bytes | None = None,
    ):
        self.pool, self.ring, self.chain = pool, ring, chain
        self.tile_shape, self.inline_below = tile_shape, inline_below
        self.retries, self.tile_timeout, self.progress = retries, tile_timeout, progress
        if chain_blob is None:
            chain_blob = chain.check_picklable() if pool is not None else b""
        self.chain_blob = chain_blob
        self.chain_key = hashlib.sha1(self.chain_blob).hexdigest()
        # The tile timeout is per tile: a worker reports (a Tick) after a tile once ``_tick`` s
        # passed since its last message, and is stopped when silent for ``_limit`` s. The tile
        # it runs then began at most ``_tick`` s after that last message, so it ran for longer
        # than ``tile_timeout``; a slow batch of tiles, each within the limit, never times out.
        self._tick = tile_timeout / 8 if tile_timeout is not None else None
        self._limit = tile_timeout + self._tick if tile_timeout is not None else None
        self._inline_below = inline_below if _built_in(chain) else 0
        self._book = TaskBook()
        self._wakeup = Wakeup()

    # -- public ----------------------------------------------------------------

    def run(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """Yield each frame, in order, once it is stored or has failed.

        The frame's slot views are valid until the next frame is requested.
        """
        frames = iter(frames)
        inflight: list[Frame] = []
        exhausted = False
        seq = itertools.count()
        clean = False
        try:
            while True:
                while not exhausted and self.ring.available and len(inflight) < self.ring.size:
                    try:
                        frame = next(frames)
                    except StopIteration:
                        exhausted = True
                        break
                    frame.seq = next(seq)
                    inflight.append(frame)
                    self._begin(frame)
                self._store_in_order(inflight)
                while inflight and inflight[0].state is FrameState.FINISHED:
                    frame = inflight.pop(0)
                    if frame.eof:
                        exhausted = True
                        self._release(frame)
                        continue
                    try:
                        yield frame
                    finally:  # also when the caller stops here (an error, Ctrl-C)
                        self._release(frame)
                if exhausted and not inflight:
                    clean = True
                    return
                if not any(f.waiting for f in inflight):
                    continue  # nothing outstanding: everything so far ran in the parent
                self._dispatch()
                self._pump()
        finally:
            self._stop(inflight, clean)

    def _stop(self, inflight: list[Frame], clean: bool) -> None:
        for frame in inflight:
            if frame.slot is not None and frame.waiting == 0:
                self._release(frame)
        if not clean and self._book.in_flight and self.pool is not None:
            # Workers may still write into slots: stop them before slots are reused.
            self.pool.close(grace=0.0)
            self._book.forget_in_flight()
        self._wakeup.close()  # an I/O thread still running a step must not post any more
        for frame in inflight:
            if frame.slot is not None:
                # An I/O thread may still hold this slot: never hand it to another frame.
                release_frames(frame.error)
                frame.slot_views = None
                self.ring.discard(frame.slot)
                frame.slot = None

    # -- steps -----------------------------------------------------------------

    def _begin(self, frame: Frame) -> None:
        if frame.error is not None:  # failed before it needed a slot (e.g. probing)
            frame.state = FrameState.FINISHED
            return
        if self.chain.reshapes:
            frame.out_shape = self.chain.output_shape(frame.shape)
        try:
            frame.slot = self.ring.acquire(frame.nbytes)
        except TileprocError as exc:
            frame.error = exc
            frame.state = FrameState.FINISHED
            return
        if self.ring.retired:  # segments given up for larger ones: workers unmap them too
            if self.pool is not None:
                for name in self.ring.retired:
                    self.pool.broadcast(Forget(name))
            self.ring.retired.clear()
        frame.slot_views = frame.slot.bind(frame.shape, frame.dtype, frame.out_shape)
        frame.state = FrameState.LOADING
        self._step(frame, frame.load, self._loaded)

    def _step(self, frame: Frame, step: Step | None, then: Callable[[Frame, Any], None]) -> None:
        frame.after = then
        if step is None:
            then(frame, None)
        elif isinstance(step, Inline) or (isinstance(step, OnPool) and self.pool is None):
            src, dst = frame.slot_views
            try:
                value = step.fn(src, dst, *getattr(step, "args", ()))
            except Exception as exc:
                self._fail(frame, exc)
                return
            then(frame, value)
        elif isinstance(step, OnPool):
            task_id = next(_task_ids)
            frame.waiting += 1
            self._book.queue(frame, task_id, Call(task_id, frame.slot.ref, step.fn, step.args))
        else:
            frame.waiting += 1
            step.thread.submit(frame, step.fn, self._post)

    def _loaded(self, frame: Frame, value: Any) -> None:
        if value is False:
            frame.eof = True
            frame.state = FrameState.FINISHED
            return
        frame.value = value
        frame.state = FrameState.TILING
        src, dst = frame.slot_views
        height, width = frame.shape[:2]
        pixels = max(height * width, dst.shape[0] * dst.shape[1])  # a resize may make more than it reads
        if self.pool is None or pixels < self._inline_below:
            try:
                dst[...] = run_chain(self.chain.filters, src, full_plan(self.chain.filters, src.shape))
            except ChainError as exc:
                cause = exc.__cause__
                tb = format_traceback(cause)
                self._fail(frame, errors.filter_failed(frame.label, exc.name, exc.kind, describe_exception(cause), tb))
                return
            self._emit(Progress("tiles", frame, 1))
            frame.state = FrameState.READY
            return
        if self.chain.reshapes:
            # Cores are cut from the output frame; each worker maps a core back through
            # every stage of the chain to the input window it reads (filters.base.plan_stages).
            out_height, out_width = dst.shape[:2]
            tile_shape = self.tile_shape or default_tile_shape(out_height, out_width, self.pool.n, 0)
            frame.grid = TileGrid(out_height, out_width, tile_shape)
        else:
            tile_shape = self.tile_shape or default_tile_shape(height, width, self.pool.n, self.chain.halo)
            frame.grid = TileGrid(height, width, tile_shape, self.chain.halo)
        frame.tiles = len(frame.grid)
        # Tasks per frame: four per worker balance the load of a lone frame; with other frames
        # in flight, they balance it, and one task per worker costs the least dispatch.
        # A task is a range of tile indices: its message has the same size for 1 tile or 10,000.
        streaming = self.ring.in_use > 1
        per = max(1, -(-frame.tiles // (self.pool.n * (1 if streaming else 4))))
        for start in range(0, frame.tiles, per):
            frame.waiting += 1
            self._book.queue(frame, next(_task_ids), range(start, min(start + per, frame.tiles)))

    def _store_in_order(self, inflight: list[Frame]) -> None:
        """Start stores in frame order: a frame is stored only after every earlier one started."""
        for frame in inflight:
            if frame.state is FrameState.READY:
                frame.state = FrameState.STORING
                self._step(frame, frame.store, self._stored)
            if frame.state in (FrameState.LOADING, FrameState.TILING, FrameState.READY):
                break

    def _stored(self, frame: Frame, value: Any) -> None:
        if value is not None:
            frame.value = value
        frame.state = FrameState.FINISHED
        self._emit(Progress("frame", frame, 1))

    def _fail(self, frame: Frame, exc: BaseException) -> None:
        if frame.error is None:
            frame.error = exc
        frame.state = FrameState.FAILED
        frame.waiting -= self._book.drop_pending(frame)
        if frame.waiting == 0:
            frame.state = FrameState.FINISHED

    def _release(self, frame: Frame) -> None:
        release_frames(frame.error)  # a step's locals (views of the slot) die with its slot
        if frame.slot is not None:
            frame.slot_views = None
            self.ring.release(frame.slot)
            frame.slot = None

    # -- the pool --------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.pool is None:
            return
        for frame, task_id, task in self._book.in_order():
            self._book.sending(frame, task_id, task)
            if not self.pool.send(task_id, lambda chains, f=frame, i=task_id, t=task: self._message(f, i, t, chains)):
                self._book.unsent(task_id)
                return
            self._book.sent(task_id)

    def _message(self, frame: Frame, task_id: int, task: Any, chains: set):
        if isinstance(task, Call):
            return task, None
        blob = None if self.chain_key in chains else self.chain_blob
        return TileBatch(task_id, frame.slot.ref, self.chain_key, blob, frame.grid, task, self._tick), self.chain_key

    def _pump(self) -> None:
        if self.pool is None:
            replies, lost = [], []
            self._wakeup.wait(1.0)
        else:
            replies, lost, _ = self.pool.wait(1.0, [self._wakeup.reader], self._limit)
        for frame, value, exc in self._wakeup.take():
            frame.waiting -= 1
            self._settle(frame, value, exc)
        for reply in replies:
            self._reply(reply)
        for gone in lost:
            self._lost(gone)

    def _post(self, frame: Frame, value: Any, exc: BaseException | None) -> None:
        self._wakeup.post((frame, value, exc))

    def _settle(self, frame: Frame, value: Any, exc: BaseException | None) -> None:
        if frame.state is FrameState.FAILED:
            if frame.waiting == 0:
                frame.state = FrameState.FINISHED
            return
        if exc is not None:
            self._fail(frame, exc)
        elif frame.state is FrameState.TILING:
            if frame.waiting == 0:
                frame.state = FrameState.READY
        else:
            frame.after(frame, value)

    def _reply(self, reply: Done | Failed) -> None:
        entry = self._book.answered(reply.task_id)
        if entry is None:
            return
        frame, task = entry
        frame.waiting -= 1
        if isinstance(reply, Failed):
            self._settle(frame, None, self._error_for(frame, task, reply))
            return
        if not isinstance(task, Call):
            self._emit(Progress("tiles", frame, len(task)))
        self._settle(frame, reply.value, None)

    def _error_for(self, frame: Frame, task: Any, reply: Failed) -> BaseException:
        if isinstance(task, Call):
            return errors.step_failed(frame.label, reply.error_class, reply.text, reply.message)
        where = f"{frame.label}, tile {reply.tile}" if reply.tile is not None else frame.label
        return errors.filter_failed(where, reply.filter_name, reply.kind, reply.message, reply.traceback)

    def _lost(self, gone) -> None:
        for position, msg in enumerate(gone.tasks):
            entry = self._book.lost(msg.task_id)
            if entry is None:
                continue
            frame, task, attempts = entry
            if frame.state is FrameState.FAILED:
                frame.waiting -= 1
                self._settle(frame, None, None)
            elif position > 0:
                # Queued behind the task that killed (or stalled) the worker: it never ran.
                self._book.queue(frame, msg.task_id, task, attempts=attempts)
            elif attempts < self.retries and not gone.timed_out:
                self._book.queue(frame, msg.task_id, task, attempts=attempts + 1)
            else:
                frame.waiting -= 1
                where = f"{frame.label}, {_what(task)}"
                if gone.timed_out:
                    err: BaseException = errors.tile_timed_out(where, self.tile_timeout)
                else:
                    err = errors.worker_died(where, gone.exitcode, attempts + 1)
                self._settle(frame, None, err)

    def _emit(self, event: Progress) -> None:
        if self.progress is not None:
            self.progress(event)


def _built_in(chain: Chain) -> bool:
    """Whether every filter of ``chain`` is one of tileproc's built-ins (exactly, not a subclass)."""
    from filters.registry import BUILTINS

    kinds = set(BUILTINS.values())
    return all(type(f) in kinds for f in chain.filters)


def _what(task: Any) -> str:
    """A task in words, for messages."""
    if isinstance(task, Call):
        return "a file step"
    return f"tile {task[0]}" if len(task) == 1 else f"tiles {task[0]}-{task[-1]}"
