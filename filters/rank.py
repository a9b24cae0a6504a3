"""Rank filters: the median of each pixel's neighbourhood."""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from filters import _pixels as px
from filters._cv2 import cv2
from filters.base import Filter

__all__ = ["Median"]

# Elements (pixels x window) sorted at once by the numpy path: bounds its memory.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Median(Filter):
    """Median of the ``size`` x ``size`` square around each pixel, per channel.

    Parameters
    ----------
    size : int
        Side of the square, odd, 1..101; the halo is ``size // 2``. 1 copies the frame.

    Notes
    -----
    Border: replicate the edge pixel (``aaa|abc|ccc``). The result is always
    one of the input values, so nothing is rounded or clipped, for every dtype.
    uint8 (any size) and sizes 3 and 5 use OpenCV; uint16 and float32 with
    sizes above 5 use a slower numpy selection with the same border. Alpha
    (the last of 2 or 4 channels) passes through.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.zeros((5, 5), np.uint8); frame[2, 2] = 255
    >>> int(Median(size=3).apply(frame).max())
    0
    """

    name = "median"

    size: int = 3

    def __post_init__(self) -> None:
        px.check_int(self.name, "size", self.size, low=1, high=101, odd=True)
        object.__setattr__(self, "size", int(self.size))

    @property
    def halo(self) -> int:
        return self.size // 2

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        if self.size == 1:
            return tile.copy()
        return px.map_color(tile, self._median)

    def _median(self, x: np.ndarray) -> np.ndarray:
        if x.dtype == np.uint8 or self.size <= 5:
            return cv2.medianBlur(x, self.size)
        return _median_replicate(x, self.size)


def _median_replicate(x: np.ndarray, size: int) -> np.ndarray:
    """Median filter of a 2-D or (H, W, C) array with the edge pixel replicated.

    Sorts ``size * size`` values per pixel in blocks of pixels, so memory stays
    near ``_CHUNK_ELEMENTS`` items whatever the frame size.
    """
    r = size // 2
    pad = [(r, r), (r, r)] + [(0, 0)] * (x.ndim - 2)
    windows = sliding_window_view(np.pad(x, pad, mode="edge"), (size, size), axis=(0, 1))
    h, w = x.shape[:2]
    count = size * size
    mid = count // 2
    per_pixel = count * (x.shape[2] if x.ndim == 3 else 1)
    cols = min(w, max(1, _CHUNK_ELEMENTS // per_pixel))
    rows = min(h, max(1, _CHUNK_ELEMENTS // (per_pixel * cols)))
    out = np.empty(x.shape, x.dtype)
    for r0 in range(0, h, rows):
        for c0 in range(0, w, cols):
            block = windows[r0 : r0 + rows, c0 : c0 + cols]
            values = block.reshape(block.shape[:-2] + (count,))
            out[r0 : r0 + rows, c0 : c0 + cols] = np.partition(values, mid, axis=-1)[..., mid]
    return out
