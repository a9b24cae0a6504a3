"""Cutting a frame into tiles: core rectangles that cover it once, halo windows around them.

Pure numpy-free arithmetic on rows and columns; no I/O, no processes.

A tile's *core* is the part of the output it owns. Its *window* is the core
grown by the chain's halo on every side and clipped at the frame edge: the
pixels a worker reads. Because windows are clipped, border handling happens
only at the true frame edge, inside the filters, exactly as on the whole frame.

When a filter of the chain changes the frame's size, cores are cut from the
*output* frame and each core is mapped back through every stage of the chain,
scale then halo in that stage's own pixels, to the input window it needs
(:func:`chain_tiles`; the per-stage arithmetic is the filters' own, in
:func:`filters.base.plan_stages`, which the filter library's checks share).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from filters.base import output_shape, plan_stages

__all__ = [
    "Rect",
    "Tile",
    "TileGrid",
    "default_tile_shape",
    "MAX_STRIP_PIXELS",
    "thread_tile_shape",
    "THREAD_STRIP_PIXELS",
    "ONE_CALL_WORK",
    "chain_output_shape",
    "source_window",
    "chain_tiles",
]


@dataclass(frozen=True)
class Rect:
    """Rows ``r0:r1`` and columns ``c0:c1`` (half-open)."""

    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.r1 - self.r0, self.c1 - self.c0)

    @property
    def slices(self) -> tuple[slice, slice]:
        return (slice(self.r0, self.r1), slice(self.c0, self.c1))

    def relative_to(self, outer: Rect) -> Rect:
        """This rectangle in the coordinates of ``outer`` (which contains it)."""
        return Rect(self.r0 - outer.r0, self.r1 - outer.r0, self.c0 - outer.c0, self.c1 - outer.c0)


@dataclass(frozen=True)
class Tile:
    """One unit of work: ``core`` is written, ``window`` is read (both in frame coordinates)."""

    index: int
    core: Rect
    window: Rect

    @property
    def core_in_window(self) -> Rect:
        return self.core.relative_to(self.window)


MAX_STRIP_PIXELS = 512 * 1024


def default_tile_shape(height: int, width: int, workers: int, halo: int) -> tuple[int, int]:
    """Full-width strips: at least four per worker, at most :data:`MAX_STRIP_PIXELS` each,
    at least ``max(32, 2*halo)`` rows.

    Strips keep every window contiguous in memory and the halo overhead low
    (2*halo rows per strip); four per worker balance the load of one frame;
    capping a strip's size keeps a filter's temporaries in cache
    (benchmarks/README.md). The scheduler batches strips into tasks.
    """
    strips = max(1, workers * 4, -(-height * width // MAX_STRIP_PIXELS))
    rows = math.ceil(height / strips)
    rows = max(rows, 32, 2 * halo)
    return (min(rows, max(height, 1)), max(width, 1))


# Strips on threads (tiler.threads). Larger strips cut the halo rows computed twice, but
# OpenCV threads some kernels itself (GaussianBlur) while others run serially, so a
# thread whose strip got OpenCV's help finishes early: four strips per thread let it take
# another. 4K RGB uint8, 2 threads, ms per frame (two runs), against cv2 on the whole
# frame with its default 2 threads (13.4 / 11.6 / 8.1):
#   rows per strip    1080       540        360        270        180
#   blur:sigma=2      16.2 14.3  15.3 14.7  15.0 14.4  15.0 14.4  16.2 15.6
#   boxblur:radius=4   7.1  7.1   6.6  6.8   6.1  6.2   6.1  6.0   6.2  6.2
#   median:size=5      5.3  5.3   5.1  5.2   5.0  5.0   5.0  5.0   5.0  5.1
THREAD_STRIP_PIXELS = 4 * 1024 * 1024
# A chain OpenCV threads itself runs as one call on the whole frame (tiler.scheduler), which
# Ctrl-C cannot interrupt: only while its work, pixels x (halo + 1), stays below this. 4K RGB
# at blur:sigma=2 is 75 Mi of it (13 ms on 2 cores), so one call stays under about 50 ms;
# past it (a 100 MP frame, a blur of sigma 60) the frame goes by tiles, between which it can stop.
ONE_CALL_WORK = 256 * 1024 * 1024


def thread_tile_shape(height: int, width: int, threads: int, halo: int) -> tuple[int, int]:
    """Full-width strips for :mod:`tiler.threads`: four per thread, more (a multiple of
    ``threads``) when each would pass :data:`THREAD_STRIP_PIXELS` (bounding the filters'
    temporaries), at least ``max(32, 2*halo)`` rows.

    Examples
    --------
    >>> thread_tile_shape(2160, 3840, 2, 8)
    (270, 3840)
    """
    per_thread = max(4, -(-height * width // (threads * THREAD_STRIP_PIXELS)))
    rows = max(math.ceil(height / (threads * per_thread)), 32, 2 * halo)
    return (min(rows, max(height, 1)), max(width, 1))


class TileGrid:
    """Core tiles of ``tile_shape`` covering an ``height x width`` frame exactly once.

    Parameters
    ----------
    height, width : int
        Frame size in pixels.
    tile_shape : (int, int)
        Core size in rows and columns; edge tiles are smaller. Larger than the
        frame means one tile.
    halo : int
        How far the chain reaches; windows are cores grown by it, clipped to the frame.

    Examples
    --------
    >>> grid = TileGrid(5, 7, (2, 4), halo=1)
    >>> len(grid), grid[0].window
    (6, Rect(r0=0, r1=3, c0=0, c1=5))
    """

    def __init__(self, height: int, width: int, tile_shape: tuple[int, int], halo: int = 0):
        th, tw = tile_shape
        if th < 1 or tw < 1:
            raise ValueError(f"tile size must be >= 1 pixel, got {th}x{tw}")
        if halo < 0:
            raise ValueError(f"halo must be >= 0, got {halo}")
        self.height, self.width = height, width
        self.tile_shape = (min(th, max(height, 1)), min(tw, max(width, 1)))
        self.halo = halo
        self.rows = math.ceil(height / self.tile_shape[0]) if height else 0
        self.cols = math.ceil(width / self.tile_shape[1]) if width else 0

    def __len__(self) -> int:
        return self.rows * self.cols

    def __getitem__(self, index: int) -> Tile:
        if not 0 <= index < len(self):
            raise IndexError(index)
        th, tw = self.tile_shape
        i, j = divmod(index, self.cols)
        r0, c0 = i * th, j * tw
        core = Rect(r0, min(r0 + th, self.height), c0, min(c0 + tw, self.width))
        h = self.halo
        window = Rect(
            max(core.r0 - h, 0),
            min(core.r1 + h, self.height),
            max(core.c0 - h, 0),
            min(core.c1 + h, self.width),
        )
        return Tile(index, core, window)

    def __iter__(self) -> Iterator[Tile]:
        return (self[i] for i in range(len(self)))


def chain_output_shape(filters: Sequence[Any], shape: Sequence[int]) -> tuple[int, ...]:
    """The frame shape that ``filters`` make of a frame of ``shape`` (channels kept).

    Examples
    --------
    >>> from filters.registry import resolve
    >>> chain_output_shape(resolve("resize:width=960").filters, (1080, 1920, 3))
    (540, 960, 3)
    """
    return output_shape(filters, shape)


def source_window(filters: Sequence[Any], core: Rect, shape: Sequence[int]) -> Rect:
    """The input window an output ``core`` needs, through every stage of ``filters``.

    Examples
    --------
    >>> from filters.registry import resolve
    >>> source_window(resolve("blur:sigma=1,resize:scale=0.5").filters, Rect(0, 2, 0, 2), (8, 8))
    Rect(r0=0, r1=8, c0=0, c1=8)
    """
    stages = plan_stages(filters, (core.r0, core.r1, core.c0, core.c1), shape)
    return Rect(*stages[0].window)


def chain_tiles(filters: Sequence[Any], shape: Sequence[int], tile_shape: tuple[int, int]) -> list[Tile]:
    """Output cores of ``tile_shape`` covering the chain's output frame once, each with
    the input window it is computed from (for a chain that changes the frame's size)."""
    out = chain_output_shape(filters, shape)
    grid = TileGrid(out[0], out[1], tile_shape)
    return [Tile(t.index, t.core, source_window(filters, t.core, shape)) for t in grid]
