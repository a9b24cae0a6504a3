"""Built-in filters on threads in this process: a frame's tiles, no copies, no processes.

The built-in filters are OpenCV and numpy calls that release the GIL for all
but a few microseconds of each tile, so N threads over a frame's strips keep N
cores busy without sending a pixel anywhere: each tile's window is read where
the frame lies (the caller's array, or a slot) and its core written straight
into the output. That saves what worker processes cost a frame that is already
in this process (copying it into shared memory and the result out, dispatch,
starting the pool), which for a fast kernel is as much as the kernel itself
(benchmarks/README.md). Filter code that is not a built-in never runs here
(promise 10): its tiles go to the workers.

The threads are the same tiles as the workers' (:class:`tiler.geometry.TileGrid`,
:func:`tiler.worker.tile_result`), so the result is the same, bit for bit.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from tiler.geometry import TileGrid
from tiler.worker import ChainError, tile_result

if TYPE_CHECKING:
    import concurrent.futures

__all__ = ["TileThreads", "TileError"]


class TileError(Exception):
    """A filter failed on tile ``index``; the :class:`ChainError` is ``__cause__``."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


class TileThreads:
    """``n`` threads filtering the tiles of one frame at a time (started on first use).

    Examples
    --------
    >>> threads = TileThreads(2)                              # doctest: +SKIP
    >>> threads.run(chain.filters, grid, frame, out)          # doctest: +SKIP
    >>> threads.close()                                       # doctest: +SKIP
    """

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        self.n = n
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def run(self, chain: Sequence[Any], grid: TileGrid, src: np.ndarray, dst: np.ndarray) -> None:
        """Filter every tile of ``grid``: ``chain`` on its window of ``src``, the core into ``dst``.

        Returns when every tile is written, or raises :class:`TileError` for the
        first tile (in grid order) that failed, after the others have stopped:
        nothing writes into ``dst`` once this returns or raises, also on Ctrl-C.
        """
        reshapes = any(f.reshapes for f in chain)

        def one(index: int) -> None:
            tile = grid[index]
            try:
                dst[tile.core.slices] = tile_result(chain, src, tile, reshapes)
            except ChainError as exc:
                raise TileError(index) from exc

        if len(grid) == 1 or self.n == 1:
            for index in range(len(grid)):
                one(index)
            return
        import concurrent.futures  # on use: a job of small frames or without workers never needs it

        pool = self._start()
        futures = [pool.submit(one, index) for index in range(len(grid))]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)  # the running tiles end within one tile's time
            raise

    def _start(self) -> concurrent.futures.ThreadPoolExecutor:
        import concurrent.futures

        with self._lock:
            if self._pid != os.getpid():  # a forked child has none of the parent's threads
                self._pool, self._pid = None, os.getpid()
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(self.n, thread_name_prefix="tileproc-tiles")
            return self._pool

    def close(self) -> None:
        """Stop the threads (each finishes the tile it runs). Idempotent."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
