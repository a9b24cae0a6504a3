"""Frames in flight: load -> filter tiles -> store, with backpressure and order.

Each :class:`Frame` goes through three steps. Loading and storing are a
:class:`Step`: run in the parent (``Inline``), as a task on a worker
(``OnPool``: decoding and encoding image files), or on an I/O thread
(``OnThread``: feeding and draining ffmpeg, one thread per direction, in
order). Filtering is the chain over the frame's tiles, in batches on the
workers, or in the parent when every filter is a built-in (other filter code
never runs in the parent while there are workers): in one call for a frame too
small to be worth cutting, else on :class:`tiler.threads.TileThreads`, unless
the frame's file steps run on the workers anyway (a folder of images).

At most ``ring.size`` frames hold a slot at once (promise 3). Frames finish in
the order they came (promise 7), each with its ``error`` set if a step failed;
the caller decides whether one failure ends the run (a video) or not (a folder).

    frames ──> [slot] load ──> tiles ──> store (in order) ──> yield, free slot

Frames of arrays need none of the steps: a frame's ``source`` is copied into
its slot strip by strip, and each task is sent as soon as the rows its tile
windows read are in, so workers start on the first strips while the parent
copies the rest; the cores of each finished task are copied into the frame's
``target`` while the other tasks still run. A frame may also come with a slot
of its own (``pinned``, from :meth:`tiler.Engine.empty`): its pixels are
already shared and nothing is copied in. A result handed to the caller as a
view of its slot (``lease``) keeps the slot out of the ring until the caller
drops it (:class:`tiler.dispatch.Loans`).

The pool is started only when a frame needs it: a job whose frames are all
filtered here never starts a worker.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import queue
import threading
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from filters.base import Chain, Filter
from tiler import errors
from tiler.dispatch import Loans, TaskBook, Wakeup
from tiler.errors import TileprocError
from tiler.geometry import ONE_CALL_WORK, TileGrid, default_tile_shape, source_window, thread_tile_shape
from tiler.pool import WorkerPool
from tiler.sharedmem import FrameRing, FrameSlot, PrivateSlot
from tiler.threads import TileError, TileThreads
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

__all__ = ["Frame", "FrameState", "Inline", "OnPool", "OnThread", "IOThread", "Scheduler", "Progress", "built_in"]

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
    """A frame in flight. ``load`` returning False means the source has ended.

    ``source``, instead of ``load``: an array copied into the slot by strips, tiles
    sent as their rows arrive. ``target``: an array the cores of finished tiles are
    copied into (then ``store`` usually None). ``pinned``: a slot the caller owns,
    used instead of one of the ring's (its input already holds the frame). ``lease``:
    set by the caller before it takes the next frame, a weak reference to what views
    the slot; the slot is not reused while it lives.
    """

    label: str
    shape: tuple[int, ...]
    dtype: np.dtype
    load: Step | None = None
    store: Step | None = None
    error: BaseException | None = None
    value: Any = None  # what load / store returned, for the caller
    meta: Any = None  # the caller's own data
    out_shape: tuple[int, ...] | None = None  # the filtered frame's shape, when the chain changes it
    source: np.ndarray | None = None
    target: np.ndarray | None = None
    pinned: FrameSlot | None = None
    lease: weakref.ref | None = None

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
    pool : WorkerPool, callable or None
        Workers for tiles and pool steps; a callable returning one starts them
        when a frame first needs them; None runs everything in the parent.
    ring : FrameRing
        The frame slots; its size bounds the frames in flight.
    chain : Chain
        The filters to apply to every frame (``chain_blob``: its pickle, if already made).
    tile_shape : (int, int) or None
        Core tile size; None picks strips by :func:`default_tile_shape`.
    inline_below : int
        Frames with fewer pixels are filtered in the parent (dispatch would cost
        more), if every filter of the chain is one of tileproc's built-ins: other
        filter code never runs in this process while there are workers. Until the
        pool is started, such frames' pool steps (decoding, encoding) run here too.
    loans : Loans, optional
        Slots the caller's views hold (shared by the jobs of one engine).
    threads : TileThreads, optional
        Threads of this process that filter the tiles of frames when every filter
        of the chain is a built-in (used only then), unless the frame's file steps
        run on the workers.
    """

    def __init__(
        self,
        pool: WorkerPool | Callable[[], WorkerPool | None] | None,
        ring: FrameRing,
        chain: Chain,
        *,
        tile_shape: tuple[int, int] | None = None,
        inline_below: int = 0,
        retries: int = 1,
        tile_timeout: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        chain_blob: bytes | None = None,
        loans: Loans | None = None,
        threads: TileThreads | None = None,
    ):
        self.ring, self.chain = ring, chain
        self.has_workers = pool is not None
        self.pool: WorkerPool | None = pool if isinstance(pool, WorkerPool) else None
        self._start_pool = pool if callable(pool) else None
        self.loans = loans if loans is not None else Loans(ring)
        self.tile_shape, self.inline_below = tile_shape, inline_below
        self.retries, self.tile_timeout, self.progress = retries, tile_timeout, progress
        self._blob = chain_blob  # made when a task first needs it, if not given
        # The tile timeout is per tile: a worker reports (a Tick) after a tile once ``_tick`` s
        # passed since its last message, and is stopped when silent for ``_limit`` s. The tile
        # it runs then began at most ``_tick`` s after that last message, so it ran for longer
        # than ``tile_timeout``; a slow batch of tiles, each within the limit, never times out.
        self._tick = tile_timeout / 8 if tile_timeout is not None else None
        self._limit = tile_timeout + self._tick if tile_timeout is not None and self._tick is not None else None
        builtins = built_in(chain)
        self._inline_below = inline_below if builtins else 0
        self.threads = threads if self.has_workers and builtins else None
        self._book = TaskBook()
        self._inflight: list[Frame] = []
        self._wakeup = Wakeup()

    @functools.cached_property
    def chain_blob(self) -> bytes:
        """The chain pickled for the workers."""
        return self._blob if self._blob is not None else self.chain.check_picklable()

    @functools.cached_property
    def chain_key(self) -> str:
        return hashlib.sha1(self.chain_blob).hexdigest()

    # -- public ----------------------------------------------------------------

    def run(self, frames: Iterable[Frame]) -> Generator[Frame, None, None]:
        """Yield each frame, in order, once it is stored or has failed.

        The frame's slot views are valid until the next frame is requested.
        """
        frames = iter(frames)
        inflight: list[Frame] = []
        self._inflight = inflight
        exhausted = False
        seq = itertools.count()
        clean = False
        try:
            while True:
                self.loans.reclaim()
                while not exhausted and len(inflight) < self.ring.size and self.ring.available:
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
                if not inflight and not exhausted and not self.ring.available:
                    # Every slot is lent to the caller, who cannot drop any while it waits here.
                    if next(frames, None) is None:
                        exhausted = True
                        continue
                    raise TileprocError(self.loans.exhausted())
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
                if isinstance(frame.slot, PrivateSlot):
                    frame.slot.close()  # its memory lives while a view (an I/O thread's) does
                elif frame.pinned is None:
                    self.ring.discard(frame.slot)
                frame.slot = None

    # -- steps -----------------------------------------------------------------

    def _begin(self, frame: Frame) -> None:
        if frame.error is not None:  # failed before it needed a slot (e.g. probing)
            frame.state = FrameState.FINISHED
            return
        if self.chain.reshapes:
            frame.out_shape = self.chain.output_shape(frame.shape)
        if frame.pinned is not None and self._pinned_twice(frame):
            return
        if self._needs_no_slot(frame):
            frame.state = FrameState.LOADING
            self._filter(frame, frame.source)
            return
        try:
            if self._private(frame):
                frame.slot = PrivateSlot(frame.nbytes)
            else:
                frame.slot = frame.pinned or self.ring.acquire(frame.nbytes)
        except TileprocError as exc:
            frame.error = TileprocError(f"{frame.label}: {exc}")  # which file the space was for
            frame.state = FrameState.FINISHED
            return
        if self.ring.retired:  # segments given up for larger ones: workers unmap them too
            if self.pool is not None:
                for name in self.ring.retired:
                    self.pool.broadcast(Forget(name))
            self.ring.retired.clear()
        frame.slot_views = frame.slot.bind(frame.shape, frame.dtype, frame.out_shape)
        frame.state = FrameState.LOADING
        if frame.source is not None or frame.pinned is not None:
            self._filter(frame, frame.source)
        else:
            self._step(frame, frame.load, self._loaded)

    def _pinned_twice(self, frame: Frame) -> bool:
        """Fail both frames if ``frame``'s own slot is still in use by an earlier frame in flight
        (being filtered, or its result not yet handed over): whoever filled it again may have
        overwritten that frame's pixels."""
        for other in self._inflight:
            busy = other.state is not FrameState.FINISHED or other.target is None  # result still in it
            if other is not frame and other.slot is frame.pinned and busy:
                exc = TileprocError(
                    f"{other.label}: its array was given again as {frame.label} while still being "
                    "filtered; give each frame in flight its own array from Engine.empty "
                    "(rotate frames_in_flight + 1 of them)"
                )
                self._fail(other, exc)
                frame.error = exc
                frame.state = FrameState.FINISHED
                return True
        return False

    def _needs_no_slot(self, frame: Frame) -> bool:
        """Whether the frame goes from the caller's array to the caller's target here, with no
        steps: then it needs no slot."""
        plain = frame.load is None and frame.store is None and frame.pinned is None
        return plain and frame.source is not None and frame.target is not None and self._here(frame)

    def _private(self, frame: Frame) -> bool:
        """Whether the frame can live in this process's own memory: decoded, filtered and
        encoded here (its steps run inline), no worker ever sees it."""
        inline = isinstance(frame.load, Inline) and isinstance(frame.store, Inline | None)
        return inline and frame.pinned is None and self._here(frame)

    def _workers(self) -> WorkerPool:
        """The pool, started now if this is the first frame that needs it."""
        if self.pool is None:
            assert self._start_pool is not None  # with workers: a pool, or a way to start one
            self.pool = self._start_pool()
        assert self.pool is not None
        return self.pool

    def _small(self, frame: Frame) -> bool:
        """Whether the frame is filtered here in one call: without workers, or a chain of
        built-ins on a frame whose input and output are both too small to cut."""
        pixels = max(int(np.prod(s[:2])) for s in (frame.shape, frame.out_shape or frame.shape))
        return not self.has_workers or pixels < self._inline_below

    def _here(self, frame: Frame) -> bool:
        """Whether the frame is filtered in this process: small, or a chain of built-ins
        on threads, unless the frame's file steps run on the workers anyway."""
        if self._small(frame):
            return True
        on_pool = isinstance(frame.load, OnPool) or isinstance(frame.store, OnPool)
        return self.threads is not None and not on_pool

    def _step(self, frame: Frame, step: Step | None, then: Callable[[Frame, Any], None]) -> None:
        frame.after = then
        if step is None:
            then(frame, None)
        elif isinstance(step, Inline) or (isinstance(step, OnPool) and self.pool is None and self._small(frame)):
            assert frame.slot_views is not None  # a frame's steps run while it holds a slot
            src, dst = frame.slot_views
            try:
                value = step.fn(src, dst, *getattr(step, "args", ()))
            except Exception as exc:
                self._fail(frame, exc)
                return
            then(frame, value)
        elif isinstance(step, OnPool):
            self._workers()
            task_id = next(_task_ids)
            frame.waiting += 1
            assert frame.slot is not None and frame.slot.ref is not None  # bound: the frame holds its slot
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
        self._filter(frame)

    def _filter(self, frame: Frame, source: np.ndarray | None = None) -> None:
        """Filter the frame here, or queue its tiles; ``source`` is copied into the slot first,
        strip by strip, each task sent as soon as the rows its windows read are in."""
        frame.state = FrameState.TILING
        src, dst = frame.slot_views or (None, None)  # no slot: from source to target here
        height, width = frame.shape[:2]
        if self._here(frame):
            self._filter_here(frame, source, src, dst)
            return
        assert src is not None and dst is not None  # a frame for the workers holds a slot
        pool = self._workers()
        if self.chain.reshapes:
            # Cores are cut from the output frame; each worker maps a core back through
            # every stage of the chain to the input window it reads (filters.base.plan_stages).
            out_height, out_width = dst.shape[:2]
            tile_shape = self.tile_shape or default_tile_shape(out_height, out_width, pool.n, 0)
            frame.grid = TileGrid(out_height, out_width, tile_shape)
        else:
            tile_shape = self.tile_shape or default_tile_shape(height, width, pool.n, self.chain.halo)
            frame.grid = TileGrid(height, width, tile_shape, self.chain.halo)
        frame.tiles = len(frame.grid)
        # Tasks per frame: four per worker balance the load of a lone frame; with other frames
        # in flight, they balance it, and one task per worker costs the least dispatch.
        # A task is a range of tile indices: its message has the same size for 1 tile or 10,000.
        streaming = len(self._inflight) > 1
        per = max(1, -(-frame.tiles // (pool.n * (1 if streaming else 4))))
        copied = 0
        for start in range(0, frame.tiles, per):
            tiles = range(start, min(start + per, frame.tiles))
            if source is not None:
                rows = self._rows_read(frame, tiles)
                if rows > copied:
                    src[copied:rows] = source[copied:rows]
                    copied = rows
            frame.waiting += 1
            self._book.queue(frame, next(_task_ids), tiles)
            if source is not None:
                self._dispatch()  # the workers start on these rows while the rest is copied

    def _filter_here(self, frame: Frame, source: np.ndarray | None, src, dst) -> None:
        """The chain over the frame in this process: one call, or tiles on the threads."""
        out = dst if frame.target is None else frame.target
        if source is not None:  # read in place: the caller's array is not copied
            if np.may_share_memory(source, out):
                source = np.array(source)  # a window must not read a core already written (out=frame)
            source = source.view()
            source.flags.writeable = False
        window = src if source is None else source
        threads = self.threads  # None: one call (cutting would add only halos and copies)
        if self._small(frame) or threads is None or threads.n == 1:
            threads = None
        try:
            if threads is None:
                stages = full_plan(self.chain.filters, window.shape)
                if stages is not None:  # the first stage reads its own window of the frame (nearest: not from 0)
                    r0, r1, c0, c1 = stages[0].window
                    window = window[r0:r1, c0:c1]
                out[...] = run_chain(self.chain.filters, window, stages)
                frame.tiles = 1
            elif self._threaded_by_opencv(frame):
                self._whole_into(window, out)
                frame.tiles = 1
            else:
                frame.grid = self._thread_grid(frame, out.shape)
                frame.tiles = len(frame.grid)
                threads.run(self.chain.filters, frame.grid, window, out)
        except TileError as exc:
            assert isinstance(exc.__cause__, ChainError)  # TileThreads raises it from the tile's ChainError
            self._chain_failed(frame, f"{frame.label}, tile {exc.index}", exc.__cause__)
            return
        except ChainError as exc:
            self._chain_failed(frame, frame.label, exc)
            return
        self._emit(Progress("tiles", frame, frame.tiles))
        frame.state = FrameState.READY

    def _chain_failed(self, frame: Frame, where: str, exc: ChainError) -> None:
        cause = exc.__cause__
        assert cause is not None  # run_chain raises ChainError from the filter's exception
        tb = format_traceback(cause)
        self._fail(frame, errors.filter_failed(where, exc.name, exc.kind, describe_exception(cause), tb))

    def _whole_into(self, window: np.ndarray, out: np.ndarray) -> None:
        """A chain of built-ins on the whole frame, the last filter writing into ``out`` itself."""
        *first, last = self.chain.filters
        assert isinstance(last, Filter)  # a built-in
        x = run_chain(first, window) if first else window
        try:
            last.apply_into(x, out)
        except Exception as exc:
            raise ChainError(last.name, "error") from exc

    def _threaded_by_opencv(self, frame: Frame) -> bool:
        """Whether each filter of a same-size chain spreads one call over OpenCV's threads, and
        OpenCV has as many as this engine: then one call on the whole frame. Tiles on threads of
        the engine's own would each start OpenCV's (it runs only one such call at a time in
        parallel, the others serially), so one thread finishes early while the others still
        compete for the cores."""
        assert self.threads is not None  # only asked of frames for the threads
        if int(np.prod(frame.shape[:2])) * (self.chain.halo + 1) > ONE_CALL_WORK:
            return False  # one long call could not be interrupted (Ctrl-C waits for it): tiles can
        if self.chain.reshapes or not all(
            getattr(f, "threaded", lambda dtype: False)(frame.dtype) for f in self.chain.filters
        ):
            return False
        from filters._cv2 import cv2

        return cv2.getNumThreads() >= self.threads.n

    def _thread_grid(self, frame: Frame, out_shape: tuple[int, ...]) -> TileGrid:
        """Strips for the threads: the output frame's for a chain that changes the size."""
        assert self.threads is not None
        n = self.threads.n
        if self.chain.reshapes:
            tile_shape = self.tile_shape or thread_tile_shape(out_shape[0], out_shape[1], n, 0)
            return TileGrid(out_shape[0], out_shape[1], tile_shape)
        height, width = frame.shape[:2]
        tile_shape = self.tile_shape or thread_tile_shape(height, width, n, self.chain.halo)
        return TileGrid(height, width, tile_shape, self.chain.halo)

    def _rows_read(self, frame: Frame, tiles: range) -> int:
        """The input rows ``0:n`` that the windows of ``tiles`` (of ``frame.grid``) read.

        Row-major: the last tile's row of the grid reaches lowest. For a chain that
        changes the size, the grid cuts the output and each core's input window comes
        from its stages (the whole last row of tiles, in case a window depends on the column).
        """
        grid = frame.grid
        assert grid is not None  # set before tiles are queued
        if not self.chain.reshapes:
            return grid[tiles[-1]].window.r1
        row_start = max(tiles[0], tiles[-1] // grid.cols * grid.cols)
        return max(
            source_window(self.chain.filters, grid[i].core, frame.shape).r1 for i in range(row_start, tiles[-1] + 1)
        )

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
            if isinstance(frame.slot, PrivateSlot):
                frame.slot.close()  # its memory lives as long as a view of it does
            elif frame.pinned is None:
                if frame.lease is not None and frame.lease() is not None:
                    self.loans.hold(frame.slot, frame.lease)  # the caller still views it
                else:
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
        assert frame.slot is not None and frame.slot.ref is not None and frame.grid is not None  # tiles queued: bound
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
            assert frame.after is not None  # set by _step before the step runs
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
            if frame.target is not None and frame.state is FrameState.TILING:
                dst = frame.slot_views[1]
                for index in task:
                    core = frame.grid[index].core.slices
                    frame.target[core] = dst[core]
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
                    assert self.tile_timeout is not None  # only a tile timeout times a worker out
                    err: BaseException = errors.tile_timed_out(where, self.tile_timeout)
                else:
                    err = errors.worker_died(where, gone.exitcode, attempts + 1)
                self._settle(frame, None, err)

    def _emit(self, event: Progress) -> None:
        if self.progress is not None:
            self.progress(event)


def built_in(chain: Chain) -> bool:
    """Whether every filter of ``chain`` is one of tileproc's built-ins (exactly, not a subclass)."""
    from filters.registry import BUILTINS

    kinds = set(BUILTINS.values())
    return all(type(f) in kinds for f in chain.filters)


def _what(task: Any) -> str:
    """A task in words, for messages."""
    if isinstance(task, Call):
        return "a file step"
    return f"tile {task[0]}" if len(task) == 1 else f"tiles {task[0]}-{task[-1]}"
