"""Filters and task functions for the benchmarks, importable by worker processes.

``numpy_boxmean`` is "the custom filter a user writes": pure numpy on whole
tiles (no OpenCV, no threads inside); its large ufunc loops let threads overlap
a little, but most of its time holds the GIL, so the way to use more than one
core is more than one process. ``rowloop_boxmean`` is the GIL-bound kind: a
Python loop over rows with small numpy calls in each row, so the interpreter
holds the GIL nearly all the time. ``strip_into`` is the task of the joblib
peer (memmapped strips). ``strip_task`` and ``blur_file``
are the per-task functions of the naive baselines (``multiprocessing.Pool``
over pickled strips, ``ProcessPoolExecutor`` over files); they live here, at
module level, so that any start method can import them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from filters import filter

__all__ = ["numpy_boxmean", "rowloop_boxmean", "logged_rowloop", "strip_task", "strip_into", "blur_file", "pool_init"]


@filter(halo=lambda radius=2: radius)
def numpy_boxmean(tile: np.ndarray, *, radius: int = 2) -> np.ndarray:
    """Mean over the (2r+1) x (2r+1) square, as shifted float32 adds (separable).

    Border: reflect without repeating the edge pixel. Each output pixel is the
    same sequence of float32 operations wherever it sits, so tiles match the
    whole frame bit for bit. Integer frames are rounded half to even and clipped.
    """
    r = int(radius)
    k = 2 * r + 1
    h, w = tile.shape[:2]
    pad = [(r, r), (r, r)] + [(0, 0)] * (tile.ndim - 2)
    x = np.pad(tile.astype(np.float32), pad, mode="reflect")
    rows = x[0:h].copy()
    for d in range(1, k):
        rows += x[d : d + h]
    acc = rows[:, 0:w].copy()
    for d in range(1, k):
        acc += rows[:, d : d + w]
    acc *= np.float32(1.0 / (k * k))
    if tile.dtype.kind == "f":
        return acc
    np.rint(acc, out=acc)
    np.clip(acc, 0, np.iinfo(tile.dtype).max, out=acc)
    return acc.astype(tile.dtype)


@filter(halo=lambda radius=2: radius)
def rowloop_boxmean(tile: np.ndarray, *, radius: int = 2, block: int = 128) -> np.ndarray:
    """Mean over the (2r+1) x (2r+1) square, one row at a time in a Python loop (integer frames).

    A running sum of column sums goes down the rows; each output row is then
    summed across in blocks of ``block`` pixels, a few small numpy calls per
    block. numpy releases the GIL only inside loops over more than 500 values,
    so with blocks of 128 RGB pixels (384 values) the whole filter holds the
    GIL but for the two full-row updates of the running sum: threads cannot
    overlap it, as with any filter whose time goes to the interpreter.
    Integer arithmetic, rounded half up, so any tiling gives the same bits.
    Border: reflect without repeating the edge pixel.
    """
    if tile.dtype.kind != "u":
        raise TypeError(f"rowloop_boxmean: unsigned integer frames only, got {tile.dtype}")
    r = int(radius)
    k = 2 * r + 1
    area = k * k
    h, w = tile.shape[:2]
    x = np.pad(tile, [(r, r), (r, r)] + [(0, 0)] * (tile.ndim - 2), mode="reflect")
    out = np.empty_like(tile)
    cols = x[:k].sum(axis=0, dtype=np.int32)  # column sums over the first output row's window
    for i in range(h):
        if i:
            cols += x[i + k - 1]
            cols -= x[i - 1]
        for c0 in range(0, w, block):
            c1 = min(w, c0 + block)
            acc = cols[c0:c1].copy()
            for d in range(1, k):
                acc += cols[c0 + d : c1 + d]
            acc += area // 2
            acc //= area
            out[i, c0:c1] = acc
    return out


@filter(halo=lambda radius=2, log="": radius)
def logged_rowloop(tile: np.ndarray, *, radius: int = 2, log: str = "") -> np.ndarray:
    """``rowloop_boxmean`` that appends one line per call to the file ``log``:
    pid, start and end (``time.perf_counter``), CPU seconds, rows (for profiles)."""
    t0, c0 = time.perf_counter(), time.thread_time()
    out = rowloop_boxmean(radius=radius).apply(tile)
    c1, t1 = time.thread_time(), time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()} {t0:.6f} {t1:.6f} {c1 - c0:.6f} {tile.shape[0]}\n")
    return out


def strip_task(task: tuple) -> np.ndarray:
    """One strip of the naive ``Pool.map`` baseline: (filter, window, core rows) -> core."""
    f, window, top, rows = task
    return f.apply(window)[top : top + rows]


def strip_into(f, src: np.ndarray, dst: np.ndarray, top: int, bottom: int) -> None:
    """One task of the joblib peer: filter rows ``top:bottom`` of ``src`` (with the
    filter's halo) into the same rows of ``dst``; both are memmaps the workers share."""
    h = src.shape[0]
    w0, w1 = max(0, top - f.halo), min(h, bottom + f.halo)
    dst[top:bottom] = f.apply(np.asarray(src[w0:w1]))[top - w0 : bottom - w0]


def pool_init(threads: int) -> None:
    """ProcessPoolExecutor initializer: OpenCV threads per process."""
    import cv2

    cv2.setNumThreads(threads)


def blur_file(src: str, dst: str, sigma: float) -> int:
    """The per-file code of the folder baseline: read with Pillow, tileproc's own
    Gaussian on the whole image, write a JPEG with the source's tables and
    subsampling (as tileproc does), atomically (temporary name, rename).
    Returns the bytes written."""
    from PIL import Image, JpegImagePlugin

    from filters import GaussianBlur

    with Image.open(src) as im:
        qtables = im.quantization
        subsampling = JpegImagePlugin.get_sampling(im)
        pixels = np.asarray(im.convert("RGB"))
    out = GaussianBlur(sigma=sigma).apply(pixels)
    tmp = Path(dst).with_name(f".{Path(dst).name}.{os.getpid()}.tmp")
    Image.fromarray(out).save(tmp, "JPEG", qtables=qtables, subsampling=subsampling, optimize=True)
    os.replace(tmp, dst)
    return os.path.getsize(dst)
