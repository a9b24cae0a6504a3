"""Edge filters: Sobel gradient magnitude and emboss (3 x 3 stencils, halo 1)."""

from __future__ import annotations

import dataclasses

import numpy as np

from filters import _pixels as px
from filters._cv2 import cv2
from filters.base import Filter

__all__ = ["Edges", "Emboss"]


def _pad1(x: np.ndarray) -> np.ndarray:
    """float32 copy of ``x`` padded by one pixel on all four sides, reflecting."""
    pad = [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x.astype(np.float32, copy=False), pad, mode="reflect")


@dataclasses.dataclass(frozen=True)
class Edges(Filter):
    """Sobel gradient magnitude, per channel: bright where the image changes.

    ``out = scale * sqrt(gx**2 + gy**2) / 4``, where gx and gy are the 3 x 3
    Sobel derivatives; a full-range step edge gives full range at ``scale=1``.

    Parameters
    ----------
    scale : float
        Gain on the magnitude, > 0 and <= 100.

    Notes
    -----
    Halo 1. Border: reflect without repeating the edge pixel. Computed in
    float32; integers are rounded and clipped to their range, float32 is
    clipped to [0, 1]. Alpha (the last of 2 or 4 channels) passes through.

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.zeros((3, 4), np.uint8); frame[:, 2:] = 255
    >>> Edges().apply(frame)[1].tolist()
    [0, 255, 255, 0]
    """

    name = "edges"

    scale: float = 1.0

    def __post_init__(self) -> None:
        scale = px.check_number(self.name, "scale", self.scale, low=0, high=100, low_open=True)
        object.__setattr__(self, "scale", scale)

    @property
    def halo(self) -> int:
        return 1

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        return px.map_color(tile, self._edges)

    def _edges(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind == "f":
            # OpenCV's float32 Sobel rounds differently by position in a row.
            p = _pad1(x)
            right, left = p[:, 2:], p[:, :-2]
            dx = right - left
            gx = dx[:-2] + dx[2:]
            gx += 2 * dx[1:-1]
            below, above = p[2:], p[:-2]
            dy = below - above
            gy = dy[:, :-2] + dy[:, 2:]
            gy += 2 * dy[:, 1:-1]
        else:
            # Integer inputs: every intermediate is an exact small integer.
            gx = cv2.Sobel(x, cv2.CV_32F, 1, 0, ksize=3, borderType=px.BORDER)
            gy = cv2.Sobel(x, cv2.CV_32F, 0, 1, ksize=3, borderType=px.BORDER)
        gx *= gx
        gy *= gy
        gx += gy
        np.sqrt(gx, out=gx)
        gx *= np.float32(self.scale / 4)
        return px.to_dtype(gx, x.dtype)


@dataclasses.dataclass(frozen=True)
class Emboss(Filter):
    """Relief lit from the top left: adds ``strength`` times the diagonal derivative.

    The 3 x 3 kernel at ``strength=1`` is ``[[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]``;
    flat areas keep their value.

    Parameters
    ----------
    strength : float
        Depth of the relief, 0..10 (0 copies the frame).

    Notes
    -----
    Halo 1. Border: reflect without repeating the edge pixel. Computed in
    float32; integers are rounded and clipped to their range, float32 is
    clipped to [0, 1]. Alpha (the last of 2 or 4 channels) passes through.

    Examples
    --------
    >>> import numpy as np
    >>> Emboss().apply(np.full((2, 2), 7, np.uint16)).tolist()
    [[7, 7], [7, 7]]
    """

    name = "emboss"

    strength: float = 1.0

    def __post_init__(self) -> None:
        strength = px.check_number(self.name, "strength", self.strength, low=0, high=10)
        object.__setattr__(self, "strength", strength)

    @property
    def halo(self) -> int:
        return 1

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        return px.map_color(tile, self._emboss)

    def _emboss(self, x: np.ndarray) -> np.ndarray:
        p = _pad1(x)
        relief = p[2:, 2:] - p[:-2, :-2]
        relief *= 2
        relief += p[1:-1, 2:] - p[1:-1, :-2]
        relief += p[2:, 1:-1] - p[:-2, 1:-1]
        relief *= np.float32(self.strength)
        relief += p[1:-1, 1:-1]
        return px.to_dtype(relief, x.dtype)
