"""Colour operations: pointwise (halo 0), so the engine may skip overlap for them.

Each works on values scaled to [0, 1] (uint8 / 255, uint16 / 65535, float32 as
is). Integer frames go through a lookup table computed once per filter and
dtype in float64, then rounded and clipped; float32 frames are computed per
pixel and clipped to [0, 1]. Alpha (the last of 2 or 4 channels) passes through.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from filters import _pixels as px
from filters._cv2 import cv2
from filters.base import Filter

__all__ = ["Grayscale", "Invert", "Contrast", "Gamma", "Threshold"]


@dataclasses.dataclass(frozen=True)
class _Curve(Filter):
    """A pointwise filter given by a curve on [0, 1], applied to each colour channel."""

    pointwise = True

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        return px.map_color(tile, self._map)

    def threaded(self, dtype: np.dtype) -> bool:
        return np.dtype(dtype) == np.uint8  # cv2.LUT: threaded

    def apply_into(self, tile: np.ndarray, out: np.ndarray) -> None:
        px.check_tile(self.name, tile)

        def lut(x: np.ndarray, dst: np.ndarray) -> np.ndarray:
            return cv2.LUT(x, _lookup_table(self, x.dtype.str), dst=dst)

        if not (self.threaded(tile.dtype) and px.opencv_into(tile, out, lut)):
            super().apply_into(tile, out)

    def _map(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind == "f":
            return px.to_dtype(self._curve(x.astype(np.float32)), x.dtype)
        table = _lookup_table(self, x.dtype.str)
        if x.dtype == np.uint8:
            return cv2.LUT(x, table)
        return np.take(table, x)

    def _curve(self, v: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The curve on a fresh float array of values in [0, 1]; may work in place."""
        raise NotImplementedError


@functools.lru_cache(maxsize=64)
def _lookup_table(f: _Curve, dtype: str) -> np.ndarray:
    top = px.peak(np.dtype(dtype))
    values = np.arange(int(top) + 1, dtype=np.float64) / top
    return px.to_dtype(f._curve(values) * top, np.dtype(dtype))


@dataclasses.dataclass(frozen=True)
class Grayscale(Filter):
    """Luma (Rec. 601: 0.299 R + 0.587 G + 0.114 B) written to all three colour channels.

    The frame keeps its shape; frames with fewer than three channels are
    already grey and come back unchanged. Computed in float32; integers are
    rounded and clipped to their range, float32 is clipped to [0, 1]. Alpha
    (a 4th channel) passes through. Pointwise, halo 0.

    Examples
    --------
    >>> import numpy as np
    >>> Grayscale().apply(np.array([[[255, 0, 0]]], np.uint8)).tolist()
    [[[76, 76, 76]]]
    """

    name = "grayscale"
    pointwise = True

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        if tile.ndim == 2 or tile.shape[2] < 3:
            return tile.copy()
        rgb = tile[..., :3].astype(np.float32)
        luma = rgb[..., 0] * np.float32(0.299)
        luma += rgb[..., 1] * np.float32(0.587)
        luma += rgb[..., 2] * np.float32(0.114)
        out = np.empty_like(tile)
        out[..., :3] = px.to_dtype(luma, tile.dtype)[..., None]
        out[..., 3:] = tile[..., 3:]
        return out


@dataclasses.dataclass(frozen=True)
class Invert(_Curve):
    """Negative: ``1 - v`` on each colour channel (255 - x for uint8).

    Pointwise, halo 0; alpha passes through. Integers are exact; float32 is
    clipped to [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> Invert().apply(np.array([[0, 200]], np.uint8)).tolist()
    [[255, 55]]
    """

    name = "invert"

    def _curve(self, v: np.ndarray) -> np.ndarray:
        return np.subtract(1, v, out=v)


@dataclasses.dataclass(frozen=True)
class Contrast(_Curve):
    """Brightness and contrast: ``(v - 0.5) * contrast + 0.5 + brightness``.

    Parameters
    ----------
    brightness : float
        Offset as a fraction of the full range, -1..1.
    contrast : float
        Slope around mid-grey, 0..10 (1 leaves the frame as it is, 0 makes it flat grey).

    Notes
    -----
    Pointwise, halo 0; alpha passes through. Integers are rounded and clipped
    to their range, float32 is clipped to [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> round(float(Contrast(brightness=0.1).apply(np.array([[0.5]], np.float32))[0, 0]), 3)
    0.6
    """

    name = "contrast"

    brightness: float = 0.0
    contrast: float = 1.0

    def __post_init__(self) -> None:
        n = self.name
        set_ = object.__setattr__
        set_(self, "brightness", px.check_number(n, "brightness", self.brightness, low=-1, high=1))
        set_(self, "contrast", px.check_number(n, "contrast", self.contrast, low=0, high=10))

    def _curve(self, v: np.ndarray) -> np.ndarray:
        v -= 0.5
        v *= self.contrast
        v += 0.5 + self.brightness
        return v


@dataclasses.dataclass(frozen=True)
class Gamma(_Curve):
    """Gamma correction: ``v ** (1 / gamma)``, so gamma > 1 brightens the mid-tones.

    Parameters
    ----------
    gamma : float
        > 0 and <= 100 (1 leaves the frame as it is).

    Notes
    -----
    Pointwise, halo 0; alpha passes through. Computed in float64; integers are
    rounded and clipped to their range, float32 is clipped to [0, 1].

    Examples
    --------
    >>> import numpy as np
    >>> Gamma(gamma=2.0).apply(np.array([[0, 64, 255]], np.uint8)).tolist()
    [[0, 128, 255]]
    """

    name = "gamma"

    gamma: float = 1.0

    def __post_init__(self) -> None:
        value = px.check_number(self.name, "gamma", self.gamma, low=0, high=100, low_open=True)
        object.__setattr__(self, "gamma", value)

    def _curve(self, v: np.ndarray) -> np.ndarray:
        # A fresh contiguous float64 array, so every element takes the same
        # code path through np.power.
        wide = np.clip(v, 0.0, 1.0, out=v).astype(np.float64)
        return np.power(wide, 1.0 / self.gamma, out=wide)


@dataclasses.dataclass(frozen=True)
class Threshold(_Curve):
    """Binarise each colour channel: full where ``v >= level``, else 0.

    Parameters
    ----------
    level : float
        Cut as a fraction of the full range, 0..1.

    Notes
    -----
    Pointwise, halo 0; alpha passes through. Output is 0 or the top of the
    range (255, 65535, 1.0).

    Examples
    --------
    >>> import numpy as np
    >>> Threshold(level=0.5).apply(np.array([[127, 128]], np.uint8)).tolist()
    [[0, 255]]
    """

    name = "threshold"

    level: float = 0.5

    def __post_init__(self) -> None:
        value = px.check_number(self.name, "level", self.level, low=0, high=1)
        object.__setattr__(self, "level", value)

    def _curve(self, v: np.ndarray) -> np.ndarray:
        return (v >= self.level).astype(v.dtype)
