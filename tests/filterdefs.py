"""Filters for the filter-library tests, importable by worker processes.

Some behave (a numpy box mean, a typed-params filter); others misbehave the way
a user's filter might (a halo too small, a global statistic, writing into the
input, randomness), for ``check_filter`` to catch.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np

from filters import Chain, Filter, FilterError, filter
from filters.blur import GaussianBlur
from filters.color import Invert

__all__ = [
    "boxmean_np",
    "ShortHalo",
    "global_mean",
    "writes_input",
    "noisy",
    "wrong_dtype",
    "uint8_only",
    "false_pointwise",
    "Levels",
    "DEFAULT_LEVELS",
    "SOFTEN",
    "SOFTEN_BOX",
    "not_a_filter",
    "double_box",
    "half_mean",
    "thirds",
    "wrong_scale",
    "position_grid",
    "UPSCALE",
    "module_scaled",
]


def _box(tile: np.ndarray, radius: int) -> np.ndarray:
    """Box mean in float32 with edge-replicated borders, by shifted-slice sums."""
    k = 2 * radius + 1
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (tile.ndim - 2)
    p = np.pad(tile.astype(np.float32), pad, mode="edge")
    rows, cols = tile.shape[:2]
    acc = np.zeros(tile.shape, np.float32)
    for dr in range(k):
        for dc in range(k):
            acc += p[dr : dr + rows, dc : dc + cols]
    acc /= np.float32(k * k)
    if tile.dtype.kind == "f":
        return acc.astype(tile.dtype)
    return np.clip(np.rint(acc), 0, np.iinfo(tile.dtype).max).astype(tile.dtype)


@filter(halo=lambda radius=1: radius)
def boxmean_np(tile, *, radius=1):
    """Box mean, pure numpy, honest halo."""
    return _box(tile, radius)


@dataclasses.dataclass(frozen=True)
class ShortHalo(Filter):
    """A box mean of radius ``reach`` that declares only ``reach - 1``."""

    name = "shorthalo"
    reach: int = 2

    @property
    def halo(self) -> int:
        return self.reach - 1

    def apply(self, tile: np.ndarray) -> np.ndarray:
        return _box(tile, self.reach)


@filter(halo=0)
def global_mean(tile):
    """Subtracts the mean of whatever it is given: depends on the whole frame."""
    t = tile.astype(np.float32)
    top = 1.0 if tile.dtype.kind == "f" else float(np.iinfo(tile.dtype).max)
    out = np.clip(t - t.mean() + top / 2, 0, top)
    return out.astype(tile.dtype) if tile.dtype.kind == "f" else np.rint(out).astype(tile.dtype)


@filter(halo=1)
def writes_input(tile):
    """Zeroes its input in place."""
    tile[...] = 0
    return tile


@filter(halo=0)
def noisy(tile):
    """Adds fresh random noise on every call: not deterministic."""
    return (tile + np.random.default_rng().integers(0, 2, tile.shape)).astype(tile.dtype)


@filter(halo=0)
def wrong_dtype(tile):
    """Returns float64 whatever it gets."""
    return tile.astype(np.float64)


@filter(halo=1)
def uint8_only(tile):
    """Box mean that refuses anything but uint8."""
    if tile.dtype != np.uint8:
        raise TypeError(f"uint8_only: needs uint8, got {tile.dtype}")
    return _box(tile, 1)


@filter(halo=1, pointwise=True)
def false_pointwise(tile):
    """Claims to be pointwise while declaring a halo."""
    return tile.copy()


@dataclasses.dataclass(frozen=True)
class Levels(Filter):
    """Scale values by gain, optionally clipped: a filter with one param of each type."""

    name = "levels"
    pointwise = True

    gain: float = 1.0
    steps: int = 0
    clip: bool = True
    mode: str = "linear"

    def __post_init__(self) -> None:
        if self.mode not in ("linear", "square"):
            raise FilterError(f"levels: mode must be linear or square, got {self.mode!r}")

    def apply(self, tile: np.ndarray) -> np.ndarray:
        top = 1.0 if tile.dtype.kind == "f" else float(np.iinfo(tile.dtype).max)
        v = tile.astype(np.float32) / np.float32(top)
        if self.mode == "square":
            v = v * v
        v *= np.float32(self.gain)
        if self.steps:
            v = np.floor(v * self.steps) / self.steps
        if self.clip:
            v = np.clip(v, 0, 1)
        v *= np.float32(top)
        if tile.dtype.kind == "f":
            return v.astype(tile.dtype)
        return np.clip(np.rint(v), 0, top).astype(tile.dtype)


DEFAULT_LEVELS = Levels(gain=0.5)
SOFTEN = Chain([GaussianBlur(sigma=0.8), Invert()])
SOFTEN_BOX = boxmean_np(radius=2)


def not_a_filter(tile):
    """A plain function without @filter."""
    return tile


# -- filters that change the frame's size -------------------------------------


@filter(halo=lambda radius=1: radius, scale=2)
def double_box(tile, *, radius=1):
    """A box mean, then each pixel repeated 2x2: scale 2, halo ``radius`` input pixels."""
    return _box(tile, radius).repeat(2, axis=0).repeat(2, axis=1)


def _block_mean(tile: np.ndarray, q: int, p: int) -> np.ndarray:
    """Each q x q block (edge blocks clipped) -> p x p copies of its mean (scale p/q)."""
    rows, cols = tile.shape[:2]
    t = tile.astype(np.float32)
    blocks = (-(-rows // q), -(-cols // q))
    acc = np.zeros(blocks + tile.shape[2:], np.float32)
    count = np.zeros(blocks + (1,) * (tile.ndim - 2), np.float32)
    for dr in range(q):
        for dc in range(q):
            part = t[dr::q, dc::q]
            acc[: part.shape[0], : part.shape[1]] += part
            count[: part.shape[0], : part.shape[1]] += 1
    out = (acc / count).repeat(p, axis=0).repeat(p, axis=1)
    out = out[: max(1, (2 * rows * p + q) // (2 * q)), : max(1, (2 * cols * p + q) // (2 * q))]
    if tile.dtype.kind == "f":
        return out
    return np.rint(out).astype(tile.dtype)


@filter(scale=0.5)
def half_mean(tile):
    """Means of 2x2 blocks: scale 1/2, no halo."""
    return _block_mean(tile, 2, 1)


@filter(scale=lambda p=2, q=3: Fraction(p, q))
def thirds(tile, *, p=2, q=3):
    """Each q x q block becomes p x p copies of its mean: scale p/q from the params."""
    return _block_mean(tile, q, p)


@filter(scale=2)
def wrong_scale(tile):
    """Declares scale 2 but keeps the size."""
    return tile.copy()


@filter(scale=2)
def position_grid(tile):
    """Upscales x2 and marks the window's first row: depends on where the window starts."""
    out = tile.repeat(2, axis=0).repeat(2, axis=1)
    out[0] = 0
    return out


#: Read by ``module_scaled``'s scale at call time: a test changes it in its own process
#: only, so that a new worker process sees another scale than the caller.
UPSCALE = 2


@filter(scale=lambda: UPSCALE)
def module_scaled(tile):
    """Each pixel repeated ``UPSCALE`` x ``UPSCALE`` times, at the scale the module says now."""
    return tile.repeat(UPSCALE, axis=0).repeat(UPSCALE, axis=1)
