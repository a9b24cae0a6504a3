"""The Engine: one worker pool and one ring of shared frame slots, reused for many jobs.

``Engine`` owns the processes and the shared memory (and frees them on
``close``, on an exception, on Ctrl-C); :mod:`tiler.pipeline` knows the order
of the stages for arrays, image files, folders and videos.

Arrays and copies. An ordinary array is copied into a frame slot (strip by
strip, the workers starting on the first strips) and its result copied out
(tile by tile, as the workers finish them): two copies in the parent. Each can
be avoided:

* in: :meth:`Engine.empty` gives an array in shared memory that the caller
  fills; passed back to :meth:`Engine.process` or :meth:`Engine.map_frames`,
  the workers read it where it is;
* out: ``process(..., out=array)`` writes into the caller's array (no new
  array, no page faults), and ``map_frames(..., copy=False)`` yields read-only
  views of the slots themselves. Such a view keeps its slot out of use until
  it is dropped; keeping more than twice ``frames_in_flight`` of them at once
  is an error that says so, never a silent overwrite.

Built-in filters run here. They are OpenCV and numpy calls that release the
GIL, so a chain made only of them is run on threads of this process over the
frame's strips (:mod:`tiler.threads`): the frame is read where it lies and the
result written where it goes, with no copy and no worker. Other filter code
runs on the workers (promise 10), and so do the tiles of frames whose file
steps run there anyway (a folder of images, decoded and encoded by the workers).

The workers start when a frame first needs them: a job filtered entirely in
this process (built-in filters) starts none.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from filters.base import Chain
from tiler.dispatch import Loans
from tiler.errors import TileprocError
from tiler.pool import WorkerPool, default_workers
from tiler.scheduler import Frame, Inline, Progress, Scheduler, built_in
from tiler.sharedmem import FrameRing, FrameSlot, sweep_stale_segments
from tiler.threads import TileThreads
from tiler.worker import Forget

__all__ = ["Engine", "resolve_chain", "DTYPES", "INLINE_BELOW"]

DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
# Frames with fewer pixels than this are filtered in the parent process when the chain
# is made of built-ins only (other filter code never runs in the caller's process while
# there are workers): below it, dispatching tiles costs more than the work (see
# benchmarks/README.md, small frames). Medians of 15 calls of Engine.process on RGB uint8,
# parent vs 2 workers, on a shared 2-core Linux VM under load:
#   side   invert        blur:sigma=2  median:size=5  sharpen       edges
#   128    0.06/0.57 ms  0.13/0.67 ms  0.17/0.61 ms   0.25/1.14 ms  0.12/0.68 ms
#   200    0.08/2.21     0.37/1.25     0.26/0.93      0.79/1.27     0.20/1.04
#   256    0.11/1.48     0.44/1.40     0.33/1.12      1.20/1.68     0.28/1.25
#   384    0.18/1.03     0.77/1.79     0.50/1.34      6.50/2.14     0.56/1.64
# The parent wins up to 256x256 for every built-in; sharpen crosses over before 384x384,
# so 200x200 keeps a margin.
# Cheap pointwise chains are not special-cased: on 4K frames with 2 workers, tiles
# ran as fast as the parent for invert and gamma (12.5 vs 12.9 ms, 12.0 vs 12.8 ms)
# and twice as fast for grayscale (31.7 vs 66.3 ms); the frame copies dominate both.
INLINE_BELOW = 200 * 200


def resolve_chain(chain: Any) -> Chain:
    """A :class:`filters.Chain` from a spec string, a filter, or a list of them."""
    if isinstance(chain, Chain):
        return chain
    from filters.registry import resolve

    return resolve(chain)


def check_frame(frame: Any, label: str = "frame") -> np.ndarray:
    """``frame`` as an array the engine accepts, or a ValueError saying what is wrong and how to fix it."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{label}: expected a numpy array, got {type(frame).__name__}")
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and not 1 <= frame.shape[2] <= 4):
        raise ValueError(f"{label}: expected shape (H, W) or (H, W, C) with C in 1..4, got {frame.shape}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"{label}: empty frame {frame.shape}")
    if frame.dtype not in DTYPES:
        raise ValueError(
            f"{label}: dtype {frame.dtype} is not supported; use uint8, uint16 or float32 "
            "(e.g. frame.astype(np.float32))"
        )
    return frame


class Engine:
    """A pool of workers and shared frame buffers, kept for many frames and files.

    Parameters
    ----------
    workers : int, optional
        Worker processes; default one per CPU this process may use. 0 filters
        in this process (no pool; for debugging).
    tile_size : int or (int, int), optional
        Core tile size in pixels (rows, columns); default full-width strips,
        about four per worker.
    frames_in_flight : int, optional
        Frames being read, filtered and written at once (default 4). Memory is
        about ``2 * frames_in_flight`` frames.
    threads : int
        Threads each worker may use inside numpy, OpenCV and BLAS (default 1).
    retries : int
        Times a task lost with a dead worker is retried before the frame fails.
    tile_timeout : float, optional
        Seconds a worker may spend on one tile before it is stopped and the
        frame fails (default: no limit); each tile of a batch has its own.
    progress : callable, optional
        Called in this process with :class:`tiler.scheduler.Progress` events.
    builtins_in_process : bool
        True (default): a chain made only of built-in filters runs on ``workers``
        threads of this process (no copies, no worker processes) unless a
        ``tile_timeout`` is set or the frames' files are decoded on the workers
        (folders). False: its tiles go to the workers like any filter's.

    Examples
    --------
    >>> with Engine(workers=2) as engine:               # doctest: +SKIP
    ...     out = engine.process(frame, "blur:sigma=3")
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        tile_size: int | tuple[int, int] | None = None,
        frames_in_flight: int | None = None,
        threads: int = 1,
        start_method: str | None = None,
        retries: int = 1,
        tile_timeout: float | None = None,
        progress: Callable[[Progress], None] | None = None,
        inline_below: int = INLINE_BELOW,
        builtins_in_process: bool = True,
    ):
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if isinstance(tile_size, (int, np.integer)):
            tile_size = (int(tile_size), int(tile_size))
        if tile_size is not None and (len(tile_size) != 2 or min(tile_size) < 1):
            raise ValueError(f"tile size must be >= 1 pixel, got {tile_size}")
        self.tile_shape = tile_size
        self.frames_in_flight = 4 if frames_in_flight is None else int(frames_in_flight)
        if self.frames_in_flight < 1:
            raise ValueError(f"frames in flight must be >= 1, got {frames_in_flight}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if tile_timeout is not None and tile_timeout <= 0:
            raise ValueError(f"tile timeout must be > 0 seconds, got {tile_timeout}")
        if tile_timeout is not None and self.workers == 0:
            raise ValueError(
                "a tile timeout needs worker processes: with workers=0 filters run in this process, "
                "where a tile cannot be stopped"
            )
        self.threads, self.start_method = threads, start_method
        self.retries, self.tile_timeout = retries, tile_timeout
        self.progress, self.inline_below = progress, inline_below
        self._pool: WorkerPool | None = None
        # Built-in chains on threads here; a tile timeout asks for tiles that can be stopped.
        threaded = builtins_in_process and self.workers and tile_timeout is None
        self._threads = TileThreads(self.workers) if threaded else None
        sweep_stale_segments()  # what killed runs left, before this engine takes any space
        self._ring = FrameRing(self.frames_in_flight)
        self._pins = FrameRing(1)  # where Engine.empty's frames are made (shared memory, else disk)
        self._loans = Loans(self._ring)
        self._pinned: dict[str, tuple[weakref.ref, FrameSlot]] = {}  # Engine.empty's slots
        self._lent: dict[str, weakref.ref] = {}  # their outputs handed back as views
        self._closed = False

    # -- lifecycle -------------------------------------------------------------

    @property
    def pool(self) -> WorkerPool | None:
        """The worker pool, started on first use (None with ``workers=0``)."""
        if self._closed:
            raise TileprocError("engine is closed")
        if self.workers and (self._pool is None or self._pool._closed):
            sweep_stale_segments()
            self._pool = WorkerPool(self.workers, threads=self.threads, start_method=self.start_method)
        return self._pool

    @property
    def started(self) -> bool:
        """Whether the worker processes are running (they start when a frame first needs them)."""
        return self._pool is not None and not self._pool._closed

    def close(self) -> None:
        """Stop the workers and free the shared memory. Idempotent.

        Arrays from :meth:`empty` and views from ``map_frames(copy=False)`` stay
        readable after this (their memory lives until they are dropped), but
        nothing shares them any more.
        """
        self._closed = True
        _finish(
            self._close_pool,
            self._close_threads,
            self._ring.close,
            self._loans.forget,
            self._close_pinned,
            self._pins.close,
        )

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.close()  # safe to call again after an interrupted close
            self._pool = None

    def _close_threads(self) -> None:
        if self._threads is not None:
            self._threads.close()

    def _close_pinned(self) -> None:
        while self._pinned:
            _, (_, slot) = self._pinned.popitem()
            slot.close()
        self._lent.clear()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; close() is the contract
        with contextlib.suppress(Exception):
            if not self._closed:
                self.close()

    # -- running frames --------------------------------------------------------

    def scheduler(self, chain: Chain) -> Scheduler:
        """A :class:`Scheduler` over this engine's pool and ring for one job.

        The chain is checked for pickling before the pool starts: a filter the
        workers cannot import is refused before any process exists. A chain of
        built-ins is pickled only if its tiles go to the workers after all.
        """
        blob = chain.check_picklable() if self.workers and not self.in_process(chain) else None
        if self._closed:
            raise TileprocError("engine is closed")
        self._free_pinned()
        pool = None
        if self.workers:
            pool = self._pool if self.started else (lambda: self.pool)
        return Scheduler(
            pool,
            self._ring,
            chain,
            chain_blob=blob,
            tile_shape=self.tile_shape,
            inline_below=self.inline_below,
            retries=self.retries,
            tile_timeout=self.tile_timeout,
            progress=self.progress,
            loans=self._loans,
            threads=self._threads,
        )

    def in_process(self, chain: Any) -> bool:
        """Whether ``chain`` is filtered in this process (no workers, or built-ins on threads)."""
        return not self.workers or (self._threads is not None and built_in(resolve_chain(chain)))

    def run(self, frames: Iterable[Frame], chain: Any) -> Iterator[Frame]:
        """Drive :class:`Frame` objects through load -> filter -> store; yield them in order.

        A frame's slot (``frame.slot_views``) is valid until the next one is requested.
        """
        chain = resolve_chain(chain)
        with contextlib.closing(self.scheduler(chain).run(frames)) as done:
            yield from done

    def empty(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray:
        """A new, uninitialised frame in shared memory, for the caller to fill.

        Given to :meth:`process` or :meth:`map_frames`, it is filtered where it
        is: the workers read it without a copy. It stays valid as long as it is
        referenced (even after :meth:`close`); its shared memory is freed when
        the array and every view of it are gone, or when the engine closes.
        Do not write to it while it is being filtered (in ``map_frames``: until
        its result is yielded).

        Parameters
        ----------
        shape : tuple of int
            ``(H, W)`` or ``(H, W, C)`` with C in 1..4.
        dtype : dtype
            uint8, uint16 or float32.

        Returns
        -------
        numpy.ndarray
            A writable, C-contiguous array of ``shape`` and ``dtype``.

        Examples
        --------
        >>> frame = engine.empty((2160, 3840, 3), np.uint8)     # doctest: +SKIP
        >>> camera.read_into(frame)                             # doctest: +SKIP
        >>> out = engine.process(frame, "blur:sigma=2")         # doctest: +SKIP
        """
        shape = tuple(int(n) for n in shape)
        check_frame(np.broadcast_to(np.zeros((), np.dtype(dtype)), shape), "empty")  # no allocation
        if self._closed:
            raise TileprocError("engine is closed")
        self._free_pinned()
        dtype = np.dtype(dtype)
        slot = self._pins.create_slot(int(np.prod(shape)) * dtype.itemsize)
        src, _ = slot.bind(shape, dtype)
        shared = _Shared(src, slot, self)
        self._pinned[slot.name] = (weakref.ref(shared), slot)
        return np.asarray(shared)

    def _pinned_slot(self, frame: np.ndarray, label: str = "frame", chain: Chain | None = None) -> FrameSlot | None:
        """The slot of ``frame`` if it is exactly an array from :meth:`empty` of this engine and
        has room for ``chain``'s result (a larger result, from a resize, goes through the ring);
        refused if the result of its last frame is still viewed (it would be overwritten)."""
        base = frame.base
        if not isinstance(base, _Shared) or base.engine() is not self or base.slot.name not in self._pinned:
            return None
        if frame.__array_interface__["data"][0] != base.address or frame.shape != base.shape:
            return None
        if frame.dtype != base.dtype or not frame.flags.c_contiguous:
            return None
        if (
            chain is not None
            and int(np.prod(chain.output_shape(frame.shape))) * frame.dtype.itemsize > base.slot.capacity
        ):
            return None
        lease = self._lent.get(base.slot.name)
        if lease is not None and lease() is not None:
            raise TileprocError(
                f"{label}: the result of this array's previous frame (map_frames(copy=False)) is "
                "still referenced and would be overwritten; drop it or copy it first"
            )
        return base.slot

    def _free_pinned(self) -> None:
        """Unlink the segments of arrays from :meth:`empty` that are gone (workers unmap them)."""
        for name, (shared, slot) in list(self._pinned.items()):
            if shared() is None:
                del self._pinned[name]
                self._lent.pop(name, None)
                slot.close()
                if self.started and self._pool is not None:
                    self._pool.broadcast(Forget(name))

    def map_frames(self, frames: Iterable[np.ndarray], chain: Any, *, copy: bool = True) -> Iterator[np.ndarray]:
        """Filter any iterable of frames, yielding results in order with several in flight.

        Look-ahead is bounded by ``frames_in_flight``: at most that many frames
        are taken from ``frames`` before the first result is yielded.

        Parameters
        ----------
        frames : iterable of numpy.ndarray
            Frames; those from :meth:`empty` are read where they are (no copy).
        chain : str, Filter, Chain or list
            The filters.
        copy : bool
            True (default): each result is a new array. False: each result is a
            read-only view of the engine's shared memory, no copy made. It stays
            valid while it is referenced (its slot is not reused meanwhile). Up to
            ``frames_in_flight`` such results may be kept at once; more than twice
            that raises :class:`TileprocError`; copy those you keep (``np.array(view)``).
            The result of an array from :meth:`empty` lies beside it, in its own
            shared memory: it must be dropped before that array is given again
            (else :class:`TileprocError`), so rotate ``frames_in_flight + 1`` of them.

        Examples
        --------
        >>> for out in engine.map_frames(frames, "invert"):   # doctest: +SKIP
        ...     save(out)
        """
        chain = resolve_chain(chain)

        def jobs():
            for i, frame in enumerate(frames):
                frame = check_frame(frame, f"frame {i}")
                label = f"frame {i}"
                pinned = self._pinned_slot(frame, label, chain)
                target = np.empty(chain.output_shape(frame.shape), frame.dtype) if copy else None
                source = None if pinned is not None else frame
                yield Frame(label, frame.shape, frame.dtype, source=source, target=target, pinned=pinned)

        for frame in self.run(jobs(), chain):
            if frame.error is not None:
                raise frame.error
            if copy:
                assert frame.target is not None  # made above when copying
                yield frame.target
                continue
            assert frame.slot_views is not None and frame.slot is not None  # a stored frame holds its slot
            shared = _Shared(frame.slot_views[1], frame.slot, self, readonly=True)
            frame.lease = weakref.ref(shared)
            if frame.pinned is not None:
                self._lent[frame.pinned.name] = frame.lease
            view = np.asarray(shared)
            del shared
            yield view
            del view  # before the next frame is asked for: only the caller's references count

    def process(self, frame: np.ndarray, chain: Any, *, out: np.ndarray | None = None) -> np.ndarray:
        """Filter one frame; returns a new array of the same dtype, or ``out``; of the same
        shape unless the chain changes the size (``resize``, an upscaling model).

        Parameters
        ----------
        frame : numpy.ndarray
            ``(H, W)`` or ``(H, W, C)``, uint8, uint16 or float32. An array from
            :meth:`empty` is read where it is (no copy).
        chain : str, Filter, Chain or list
            The filters.
        out : numpy.ndarray, optional
            A writable array of the result's shape (``Chain.output_shape``) and the
            frame's dtype to write the result into (it may be ``frame`` itself).

        Examples
        --------
        >>> out = engine.process(np.zeros((64, 64, 3), np.uint8), "invert")   # doctest: +SKIP
        >>> engine.process(frame, "blur:sigma=2", out=result)                 # doctest: +SKIP
        """
        check_frame(frame)
        if out is None:
            (result,) = self.map_frames([frame], chain)
            return result
        chain = resolve_chain(chain)
        shape = chain.output_shape(frame.shape)
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != frame.dtype:
            got = f"{out.shape} {out.dtype}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"out: expected an array of shape {shape} and dtype {frame.dtype}, got {got}")
        if not out.flags.writeable:
            raise ValueError("out: the array is read-only")
        pinned = self._pinned_slot(frame, chain=chain)
        if pinned is not None and np.shares_memory(out, frame):
            # Workers still read the frame while finished tiles would land in it: copy at the end.
            job = Frame("frame", frame.shape, frame.dtype, pinned=pinned, store=Inline(_copy_into(out)))
        else:
            source = None if pinned is not None else frame
            job = Frame("frame", frame.shape, frame.dtype, source=source, target=out, pinned=pinned)
        for done in self.run([job], chain):
            if done.error is not None:
                raise done.error
        return out

    # The file-level jobs: their stages live in tiler.pipeline.
    def process_file(self, src, dst, chain: Any, **options):
        """Filter one image or video file; ``dst`` None means ``name.tileproc.ext`` beside it.

        Returns the output path. See :func:`tiler.process_file` for the options.
        """
        from tiler import pipeline

        return pipeline.process_file(self, src, dst, chain, **options)

    def process_folder(self, src, dst, chain: Any, **options):
        """Filter every image and video under ``src`` into ``dst``; returns a per-file Report."""
        from tiler import pipeline

        return pipeline.process_folder(self, src, dst, chain, **options)

    def process_video(self, src, dst, chain: Any, **options):
        """Filter a video file frame by frame; returns the output path."""
        from tiler import pipeline

        return pipeline.process_video(self, src, dst, chain, **options)


class _Shared:
    """What numpy arrays of the engine's shared memory have as ``base``.

    It keeps the slot's mapping alive for them (and every view of them, whose
    ``base`` numpy sets to this same object), and its death tells the engine
    they are all gone.
    """

    def __init__(self, view: np.ndarray, slot: FrameSlot, engine: Engine, *, readonly: bool = False):
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], readonly)
        self.__array_interface__ = interface
        self.address, self.shape, self.dtype = interface["data"][0], view.shape, view.dtype
        self.slot, self.engine = slot, weakref.ref(engine)
        self._view = view  # holds the mapping


def _copy_into(out: np.ndarray):
    def store(src: np.ndarray, dst: np.ndarray) -> None:
        out[...] = dst

    return store


def _finish(*steps: Callable[[], None]) -> None:
    """Run every cleanup step to the end, even through a Ctrl-C or SIGTERM arriving during one.

    The caller's signal handlers are never swapped (promise 9): an exception a
    handler raises mid-step (KeyboardInterrupt, a SIGTERM handler's) is held, the
    step runs again (each is safe to repeat), and the first exception is raised
    once everything is released.
    """
    first: BaseException | None = None
    for step in steps:
        for _ in range(3):
            try:
                step()
                break
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the cleanup
                if first is None:
                    first = exc
    if first is not None:
        raise first
