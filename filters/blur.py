"""Smoothing filters: Gaussian blur and box blur.

Integer frames go through OpenCV, whose integer paths (fixed-point Gaussian,
integer box sums) give the same bits wherever a pixel sits; uint8 is blurred in
16-bit fixed point for accuracy. Float32 frames go
through exact-order numpy sums instead: OpenCV's float32 Gaussian rounds a pixel
differently depending on where it falls in its row (vector body or scalar
tail), which would show as seams between tiles.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from filters import _pixels as px
from filters._cv2 import cv2
from filters.base import Filter

__all__ = ["GaussianBlur", "BoxBlur"]


@dataclasses.dataclass(frozen=True)
class GaussianBlur(Filter):
    """Gaussian blur of standard deviation ``sigma``, cut at ``truncate`` sigmas.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels, > 0 and <= 100.
    truncate : float
        The kernel reaches ``ceil(truncate * sigma)`` pixels (the halo), > 0 and <= 10.

    Notes
    -----
    Border: reflect without repeating the edge pixel. uint8 is filtered in
    8-bit fixed point (within 2 steps of the exact value, as image tools
    commonly do for speed), uint16 in 16-bit fixed point (within 2 steps of
    65535); both rounded. float32 is computed in float32 and not
    clipped (a weighted average stays within the input's range). Alpha (the
    last of 2 or 4 channels) passes through.

    Examples
    --------
    >>> import numpy as np
    >>> f = GaussianBlur(sigma=2.0)
    >>> f.halo
    8
    >>> f.apply(np.zeros((4, 5, 3), np.uint8)).shape
    (4, 5, 3)
    """

    name = "blur"

    sigma: float = 1.0
    truncate: float = 4.0

    def __post_init__(self) -> None:
        sigma = px.check_number(self.name, "sigma", self.sigma, low=0, high=100, low_open=True)
        truncate = px.check_number(self.name, "truncate", self.truncate, low=0, high=10, low_open=True)
        object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "truncate", truncate)

    @property
    def halo(self) -> int:
        return math.ceil(self.truncate * self.sigma)

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        return px.map_color(tile, self._blur)

    def threaded(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(np.uint16))  # cv2.GaussianBlur: threaded

    def apply_into(self, tile: np.ndarray, out: np.ndarray) -> None:
        px.check_tile(self.name, tile)
        k = 2 * self.halo + 1

        def blur(x: np.ndarray, dst: np.ndarray) -> np.ndarray:  # _blur's call (uint16: gaussian_fixed's), into dst
            return cv2.GaussianBlur(x, (k, k), sigmaX=self.sigma, sigmaY=self.sigma, borderType=px.BORDER, dst=dst)

        if not (self.threaded(tile.dtype) and px.opencv_into(tile, out, blur)):
            super().apply_into(tile, out)

    def _blur(self, x: np.ndarray) -> np.ndarray:
        h = self.halo
        if x.dtype.kind == "f":
            return px.gaussian_float(x.astype(np.float32, copy=False), self.sigma, h)
        if x.dtype == np.uint8:
            # OpenCV's own 8-bit fixed point: 2.7x cheaper than the 16-bit path, within
            # 2 steps of the exact value, and the same bits wherever a pixel sits.
            k = 2 * h + 1
            return cv2.GaussianBlur(x, (k, k), sigmaX=self.sigma, sigmaY=self.sigma, borderType=px.BORDER)
        return px.gaussian_fixed(x, self.sigma, h)


@dataclasses.dataclass(frozen=True)
class BoxBlur(Filter):
    """Mean over the square of side ``2 * radius + 1`` around each pixel.

    Parameters
    ----------
    radius : int
        Half the side of the square, 0..1000; the halo. 0 copies the frame.

    Notes
    -----
    Border: reflect without repeating the edge pixel. uint8 and uint16 sum in
    integers and round the mean; float32 is computed in float32 and not clipped.
    Alpha (the last of 2 or 4 channels) passes through.

    Examples
    --------
    >>> import numpy as np
    >>> round(float(BoxBlur(radius=1).apply(np.eye(3, dtype=np.float32))[1, 1]), 4)
    0.3333
    """

    name = "boxblur"

    radius: int = 1

    def __post_init__(self) -> None:
        px.check_int(self.name, "radius", self.radius, low=0, high=1000)
        object.__setattr__(self, "radius", int(self.radius))

    @property
    def halo(self) -> int:
        return self.radius

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        if self.radius == 0:
            return tile.copy()
        return px.map_color(tile, self._blur)

    def _blur(self, x: np.ndarray) -> np.ndarray:
        r = self.radius
        k = 2 * r + 1
        if x.dtype.kind != "f":
            return cv2.blur(x, (k, k), borderType=px.BORDER)
        x = x.astype(np.float32, copy=False)
        rows = px.window_sum(px.pad_reflect(x, r, 0), k, 0)
        sums = px.window_sum(px.pad_reflect(rows, r, 1), k, 1)
        sums *= np.float32(1.0 / (k * k))
        return sums
