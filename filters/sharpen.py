"""Sharpening: unsharp mask."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from filters import _pixels as px
from filters.base import Filter

__all__ = ["Sharpen"]

_TRUNCATE = 4.0


@dataclasses.dataclass(frozen=True)
class Sharpen(Filter):
    """Unsharp mask: add back ``amount`` times the difference from a Gaussian blur.

    ``out = x + amount * (x - blur(x))``, where the difference is kept only
    where its size reaches ``threshold`` (so flat, noisy areas stay untouched).

    Parameters
    ----------
    sigma : float
        Standard deviation of the blur in pixels, > 0 and <= 100. The halo is
        ``ceil(4 * sigma)``, the reach of that blur.
    amount : float
        Strength, 0..100 (0 copies the frame).
    threshold : float
        Smallest difference that is sharpened, as a fraction of the full range
        (0..1, the same for every dtype).

    Notes
    -----
    Border: reflect without repeating the edge pixel. Computed in float32
    (the blur of uint8 frames carries 8 extra bits); integers are rounded and
    clipped to their range, float32 is clipped to [0, 1]. Alpha (the last of
    2 or 4 channels) passes through.

    Examples
    --------
    >>> import numpy as np
    >>> f = Sharpen(sigma=1.5, amount=0.8)
    >>> f.halo
    6
    >>> f.apply(np.full((3, 4), 0.5, np.float32)).max()  # flat stays flat
    np.float32(0.5)
    """

    name = "sharpen"

    sigma: float = 1.0
    amount: float = 1.0
    threshold: float = 0.0

    def __post_init__(self) -> None:
        n = self.name
        set_ = object.__setattr__
        set_(self, "sigma", px.check_number(n, "sigma", self.sigma, low=0, high=100, low_open=True))
        set_(self, "amount", px.check_number(n, "amount", self.amount, low=0, high=100))
        set_(self, "threshold", px.check_number(n, "threshold", self.threshold, low=0, high=1))

    @property
    def halo(self) -> int:
        return math.ceil(_TRUNCATE * self.sigma)

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        return px.map_color(tile, self._sharpen)

    def _sharpen(self, x: np.ndarray) -> np.ndarray:
        h = self.halo
        if x.dtype.kind == "f":
            blurred = px.gaussian_float(x, self.sigma, h)
        else:
            blurred = px.gaussian_fixed(x, self.sigma, h).astype(np.float32)
            if x.dtype == np.uint8:
                blurred *= np.float32(1 / 256)
        values = x.astype(np.float32)
        detail = np.subtract(values, blurred, out=blurred)
        if self.threshold > 0:
            detail[np.abs(detail) < np.float32(self.threshold * px.peak(x.dtype))] = 0
        detail *= np.float32(self.amount)
        values += detail
        return px.to_dtype(values, x.dtype)
