"""Filters for engine tests, importable by worker processes.

Each misbehaves in one way a user's filter might: raising, crashing the
process, returning garbage, sleeping, or reaching further than it declares.
"""

from __future__ import annotations

import os
import random
import signal
import time

import cv2
import numpy as np

from filters import filter


@filter(halo=lambda radius=1: radius)
def boxmean(tile, *, radius=1):
    """Box mean with OpenCV's reflect-101 border: a well-behaved neighbourhood filter."""
    k = 2 * radius + 1
    return cv2.blur(tile, (k, k), borderType=cv2.BORDER_REFLECT_101).reshape(tile.shape)


@filter(halo=lambda radius=1: radius)
def numpy_boxsum(tile, *, radius=1):
    """A pure-numpy neighbourhood filter that holds the GIL (edge-replicated box mean)."""
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (tile.ndim - 2)
    padded = np.pad(tile.astype(np.float32), pad, mode="edge")
    acc = np.zeros(tile.shape, np.float32)
    h, w = tile.shape[:2]
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            acc += padded[dr : dr + h, dc : dc + w]
    acc /= (2 * radius + 1) ** 2
    if tile.dtype.kind == "f":
        return acc.astype(tile.dtype)
    return np.clip(np.rint(acc), 0, np.iinfo(tile.dtype).max).astype(tile.dtype)


@filter(halo=0, pointwise=True)
def negate(tile):
    if tile.dtype.kind == "f":
        return (1.0 - tile).astype(tile.dtype)
    return np.iinfo(tile.dtype).max - tile


@filter(halo=0)
def reaches_too_far(tile, *, radius=2):
    """Declares halo 0 but reads ``radius`` pixels around: tiled output differs."""
    k = 2 * radius + 1
    return cv2.blur(tile, (k, k), borderType=cv2.BORDER_REFLECT_101).reshape(tile.shape)


@filter(halo=1)
def raises(tile, *, message="boom"):
    raise RuntimeError(message)


class Unpicklable(Exception):
    def __init__(self, a, b):  # pickling rebuilds with one arg: fails
        super().__init__(a)
        self.b = b

    def __reduce__(self):
        raise TypeError("cannot pickle this exception")


@filter(halo=0)
def raises_unpicklable(tile):
    raise Unpicklable("odd", object())


@filter(halo=0)
def segfault(tile):
    os.kill(os.getpid(), signal.SIGSEGV)
    return tile


@filter(halo=0)
def bus_error(tile):
    os.kill(os.getpid(), signal.SIGBUS)
    return tile


@filter(halo=0)
def die_once(tile, *, marker=""):
    """SIGKILLs its worker the first time it runs (the marker file records it), then behaves."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return tile
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    return tile


@filter(halo=0)
def wrong_shape(tile):
    return tile[:-1] if tile.shape[0] > 1 else np.zeros((2,) + tile.shape[1:], tile.dtype)


@filter(halo=0)
def wrong_dtype(tile):
    return tile.astype(np.float64)


@filter(halo=0)
def not_an_array(tile):
    return [1, 2, 3]


@filter(halo=0)
def nan_out(tile):
    out = tile.astype(np.float32)
    out[...] = np.nan
    return out


@filter(halo=0)
def hangs(tile, *, seconds=3600.0):
    time.sleep(seconds)
    return tile


@filter(halo=lambda radius=1: radius)
def jittery_boxmean(tile, *, radius=1):
    """boxmean after sleeping 0-5 ms, to shuffle completion order."""
    time.sleep(random.random() * 0.005)
    return boxmean.func(tile, radius=radius)


@filter(halo=0)
def slow(tile, *, seconds=0.05):
    time.sleep(seconds)
    return tile


@filter(halo=0)
def report_threads(tile):
    """Fills the tile with OpenCV's thread count, or 255 if BLAS/OpenMP are not held to it."""
    n = cv2.getNumThreads()
    env = {os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    out = np.empty_like(tile)
    out[...] = n if env == {str(n)} else 255
    return out


import dataclasses  # noqa: E402

from filters import Filter  # noqa: E402


@dataclasses.dataclass(frozen=True)
class ApplyFunction(Filter):
    """A class filter whose parameter is a function: unpicklable when that is a lambda."""

    name = "apply_function"
    fn: object = None

    def apply(self, tile):
        return self.fn(tile)


@filter(halo=0)
def kill_if_marked(tile):
    """SIGKILLs its worker on a tile that holds the value 255 (a poisoned frame); else passes."""
    if (tile == 255).any():
        os.kill(os.getpid(), signal.SIGKILL)
    return tile


@filter(halo=0)
def announce_then_slow(tile, *, marker="", seconds=0.01):
    """Creates ``marker`` (once work has begun on a worker), then sleeps ``seconds`` per tile."""
    if marker and not os.path.exists(marker):
        open(marker, "a").close()
    time.sleep(seconds)
    return tile


@filter(halo=0)
def exits(tile):
    """Ends its process at once, as a filter calling ``os._exit`` would."""
    os._exit(3)
