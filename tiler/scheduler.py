"""Frames in flight: load -> filter tiles -> store, with backpressure and order.

Each :class:`Frame` goes through three steps. Loading and storing are a
:class:`Step`: run in the parent (``Inline``), as a task on a worker
(``OnPool``: decoding and encoding image files), or on an I/O thread
(``OnThread``: feeding and draining ffmpeg, one thread per direction, in
order). Filtering is the chain over the frame's tiles, in batches on the
workers, or in the parent for frames too small to be worth dispatching.

At most ``ring.size`` frames hold a slot at once (promise 3). Frames finish in
the order they came (promise 7), each with its ``error`` set if a step failed;
the caller decides whether one failure ends the run (a video) or not (a folder).

    frames ──> [slot] load ──> tiles ──> store (in order) ──> yield, free slot
"""

from __future__ import annotations

import hashlib
import itertools
import os
import queue
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from filters.base import Chain
from tiler import errors
from tiler.errors import FilterFailed, TileprocError, TileTimeout, WorkerDied, WorkerError
from tiler.geometry import TileGrid, chain_tiles, default_tile_shape
from tiler.pool import WorkerPool
from tiler.sharedmem import FrameRing, FrameSlot
from tiler.worker import Call, ChainError, Done, Failed, Forget, TileBatch, describe_exception, full_plan, run_chain

__all__ = ["Frame", "Inline", "OnPool", "OnThread", "IOThread", "Scheduler", "Progress"]

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
    state: str = "new"  # loading -> tiling -> ready -> storing -> finished; or failed -> finished
    waiting: int = 0  # tasks or steps of this frame not yet answered
    after: Callable | None = None  # what to do when the running step answers
    tiles: int = 0
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
        Frames with fewer pixels are filtered in the parent (dispatch would cost more).
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
        self._pending: list[tuple[Frame, int, Any]] = []  # (frame, task_id, task) to dispatch
        self._tasks: dict[int, tuple[Frame, Any]] = {}  # on a worker: task_id -> (frame, task)
        self._attempts: dict[int, int] = {}  # task_id -> times it was lost with a worker
        self._events: queue.Queue = queue.Queue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._post_lock = threading.Lock()
        self._closed = False

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
                while not exhausted and self.ring.available:
                    try:
                        frame = next(frames)
                    except StopIteration:
                        exhausted = True
                        break
                    frame.seq = next(seq)
                    inflight.append(frame)
                    self._begin(frame)
                self._store_in_order(inflight)
                while inflight and inflight[0].state == "finished":
                    frame = inflight.pop(0)
                    if frame.eof:
                        exhausted = True
                        self._release(frame)
                        continue
                    yield frame
                    self._release(frame)
                if exhausted and not inflight:
                    clean = True
                    return
                if not any(f.waiting for f in inflight):
                    continue  # nothing outstanding: everything so far ran in the parent
                self._dispatch()
                self._pump()
        finally:
            for frame in inflight:
                if frame.slot is not None and frame.waiting == 0:
                    self._release(frame)
            if not clean and self._tasks and self.pool is not None:
                # Workers may still write into slots: stop them before slots are reused.
                self.pool.close(grace=0.0)
                self._tasks.clear()
            with self._post_lock:  # an I/O thread still running a step must not post any more
                self._closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)
            for frame in inflight:
                if frame.slot is not None:
                    # An I/O thread may still hold this slot: never hand it to another frame.
                    frame.slot_views = None
                    self.ring.discard(frame.slot)
                    frame.slot = None

    # -- steps -----------------------------------------------------------------

    def _begin(self, frame: Frame) -> None:
        if frame.error is not None:  # failed before it needed a slot (e.g. probing)
            frame.state = "finished"
            return
        if self.chain.reshapes:
            frame.out_shape = self.chain.output_shape(frame.shape)
        try:
            frame.slot = self.ring.acquire(frame.nbytes)
        except TileprocError as exc:
            frame.error = exc
            frame.state = "finished"
            return
        if self.ring.retired:  # segments given up for larger ones: workers unmap them too
            if self.pool is not None:
                for name in self.ring.retired:
                    self.pool.broadcast(Forget(name))
            self.ring.retired.clear()
        frame.slot_views = frame.slot.bind(frame.shape, frame.dtype, frame.out_shape)
        frame.state = "loading"
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
            self._pending.append((frame, task_id, Call(task_id, frame.slot.ref, step.fn, step.args)))
        else:
            frame.waiting += 1
            step.thread.submit(frame, step.fn, self._post)

    def _loaded(self, frame: Frame, value: Any) -> None:
        if value is False:
            frame.eof = True
            frame.state = "finished"
            return
        frame.value = value
        frame.state = "tiling"
        src, dst = frame.slot_views
        height, width = frame.shape[:2]
        if self.pool is None or height * width < self.inline_below:
            try:
                dst[...] = run_chain(self.chain.filters, src, full_plan(self.chain.filters, src.shape))
            except ChainError as exc:
                cause = exc.__cause__
                self._fail(
                    frame,
                    _filter_failed(
                        frame.label,
                        exc.name,
                        exc.kind,
                        describe_exception(cause),
                        "".join(traceback.format_exception(cause)),
                    ),
                )
                return
            self._emit(Progress("tiles", frame, 1))
            frame.state = "ready"
            return
        if self.chain.reshapes:
            out_height, out_width = dst.shape[:2]
            tile_shape = self.tile_shape or default_tile_shape(out_height, out_width, self.pool.n, 0)
            tiles = chain_tiles(self.chain.filters, (height, width), tile_shape)
        else:
            tile_shape = self.tile_shape or default_tile_shape(height, width, self.pool.n, self.chain.halo)
            tiles = list(TileGrid(height, width, tile_shape, self.chain.halo))
        frame.tiles = len(tiles)
        # Tasks per frame: four per worker balance the load of a lone frame; with other frames
        # in flight, they balance it, and one task per worker costs the least dispatch.
        streaming = self.ring.in_use > 1
        per = max(1, -(-len(tiles) // (self.pool.n * (1 if streaming else 4))))
        for start in range(0, len(tiles), per):
            frame.waiting += 1
            self._pending.append((frame, next(_task_ids), tuple(tiles[start : start + per])))

    def _store_in_order(self, inflight: list[Frame]) -> None:
        """Start stores in frame order: a frame is stored only after every earlier one started."""
        for frame in inflight:
            if frame.state == "ready":
                frame.state = "storing"
                self._step(frame, frame.store, self._stored)
            if frame.state in ("loading", "tiling", "ready"):
                break

    def _stored(self, frame: Frame, value: Any) -> None:
        if value is not None:
            frame.value = value
        frame.state = "finished"
        self._emit(Progress("frame", frame, 1))

    def _fail(self, frame: Frame, exc: BaseException) -> None:
        if frame.error is None:
            frame.error = exc
        frame.state = "failed"
        dropped = [p for p in self._pending if p[0] is frame]
        self._pending = [p for p in self._pending if p[0] is not frame]
        frame.waiting -= len(dropped)
        if frame.waiting == 0:
            frame.state = "finished"

    def _release(self, frame: Frame) -> None:
        if frame.slot is not None:
            frame.slot_views = None
            self.ring.release(frame.slot)
            frame.slot = None

    # -- the pool --------------------------------------------------------------

    def _dispatch(self) -> None:
        if self.pool is None:
            return
        self._pending.sort(key=lambda p: p[0].seq)  # oldest frame first: frames finish in order
        while self._pending:
            frame, task_id, task = self._pending[0]
            self._tasks[task_id] = (frame, task)  # before sending: an interrupt mid-send still sees it
            if not self.pool.send(task_id, lambda chains, f=frame, i=task_id, t=task: self._message(f, i, t, chains)):
                del self._tasks[task_id]
                return
            self._pending.pop(0)

    def _message(self, frame: Frame, task_id: int, task: Any, chains: set):
        if isinstance(task, Call):
            return task, None
        blob = None if self.chain_key in chains else self.chain_blob
        return TileBatch(task_id, frame.slot.ref, self.chain_key, blob, task), self.chain_key

    def _pump(self) -> None:
        extra = [self._wake_r]
        if self.pool is None:
            replies, lost = [], []
            ready = extra if self._wait_fd(1.0) else []
        else:
            replies, lost, ready = self.pool.wait(1.0, extra, self.tile_timeout)
        if ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        while True:
            try:
                frame, value, exc = self._events.get_nowait()
            except queue.Empty:
                break
            frame.waiting -= 1
            self._settle(frame, value, exc)
        for reply in replies:
            self._reply(reply)
        for gone in lost:
            self._lost(gone)

    def _wait_fd(self, timeout: float | None) -> bool:
        import select

        return bool(select.select([self._wake_r], [], [], timeout)[0])

    def _post(self, frame: Frame, value: Any, exc: BaseException | None) -> None:
        with self._post_lock:
            if self._closed:
                return
            self._events.put((frame, value, exc))
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def _settle(self, frame: Frame, value: Any, exc: BaseException | None) -> None:
        if frame.state == "failed":
            if frame.waiting == 0:
                frame.state = "finished"
            return
        if exc is not None:
            self._fail(frame, exc)
        elif frame.state == "tiling":
            if frame.waiting == 0:
                frame.state = "ready"
        else:
            frame.after(frame, value)

    def _reply(self, reply: Done | Failed) -> None:
        entry = self._tasks.pop(reply.task_id, None)
        if entry is None:
            return
        self._attempts.pop(reply.task_id, None)
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
            # Decoding or encoding raised: tileproc's own errors name the file already.
            cls = getattr(errors, reply.error_class, None)
            if isinstance(cls, type) and issubclass(cls, TileprocError) and cls is not errors.FilterFailed:
                return cls(reply.text)
            return TileprocError(f"{frame.label}: {reply.message}")
        where = f"{frame.label}, tile {reply.tile}" if reply.tile is not None else frame.label
        return _filter_failed(where, reply.filter_name, reply.kind, reply.message, reply.traceback)

    def _lost(self, gone) -> None:
        for position, msg in enumerate(gone.tasks):
            task_id = msg.task_id
            entry = self._tasks.pop(task_id, None)
            if entry is None:
                continue
            frame, task = entry
            attempts = self._attempts.pop(task_id, 0)
            if frame.state == "failed":
                frame.waiting -= 1
                self._settle(frame, None, None)
                continue
            if position > 0:
                # Queued behind the task that killed (or stalled) the worker: it never ran.
                if attempts:
                    self._attempts[task_id] = attempts
                self._pending.append((frame, task_id, task))
                continue
            if attempts < self.retries and not gone.timed_out:
                self._attempts[task_id] = attempts + 1
                self._pending.append((frame, task_id, task))
                continue
            frame.waiting -= 1
            what = (
                "a file step"
                if isinstance(task, Call)
                else (f"tile {task[0].index}" if len(task) == 1 else f"tiles {task[0].index}-{task[-1].index}")
            )
            if gone.timed_out:
                err: WorkerError = TileTimeout(
                    f"{frame.label}, {what}: no result after {self.tile_timeout:g} s (tile timeout); worker stopped"
                )
            else:
                err = WorkerDied(
                    f"{frame.label}, {what}: worker process died ({_exit_text(gone.exitcode)})"
                    + (f" {attempts + 1} times" if attempts else "")
                )
            self._settle(frame, None, err)

    def _emit(self, event: Progress) -> None:
        if self.progress is not None:
            self.progress(event)


def _filter_failed(where: str, name: str | None, kind: str, message: str, tb: str) -> FilterFailed:
    if kind == "load":
        return FilterFailed(f"{where}: a worker could not load the filter chain: {message}", tb)
    who = f"filter {name!r}" if name else "worker"
    verb = "returned an invalid result" if kind == "invalid" else "raised"
    return FilterFailed(f"{where}: {who} {verb}: {message}", tb)


def _exit_text(code: int | None) -> str:
    if code is None:
        return "unknown exit"
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            return f"killed by signal {-code}"
        if name == "SIGBUS":
            return "killed by SIGBUS: shared memory ran out; is /dev/shm full?"
        return f"killed by {name}"
    return f"exit code {code}"
