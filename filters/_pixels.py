"""Pixel plumbing shared by the built-in filters (private to the package).

Everything here keeps one promise: a pixel's result is computed by the same
sequence of arithmetic operations wherever it sits in the array, so a filter
built from these helpers gives the same bits on a window as on the whole frame.
That rules out running sums, reductions over pixels (their grouping depends on
the array length) and library code whose vector body and scalar tail round
differently. Elementwise numpy operations are exactly rounded, so a sum of
shifted slices, added in a fixed order, is safe.

Border rule for linear filters: reflect without repeating the edge pixel
(``dcb|abcd|cba``), numpy's ``"reflect"`` and OpenCV's ``BORDER_REFLECT_101``,
which agree for any pad width.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from filters._cv2 import cv2
from filters.base import FilterError

__all__ = [
    "BORDER",
    "DTYPES",
    "peak",
    "check_tile",
    "map_color",
    "to_dtype",
    "pad_reflect",
    "symmetric_sum",
    "window_sum",
    "gaussian_weights",
    "gaussian_fixed",
    "gaussian_float",
    "check_number",
    "check_int",
]

BORDER = cv2.BORDER_REFLECT_101
DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_PEAK = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}


def peak(dtype: np.dtype) -> float:
    """The top of the nominal range: 255, 65535 or 1.0."""
    return _PEAK[np.dtype(dtype)]


def check_tile(name: str, tile: np.ndarray) -> None:
    """Raise :class:`FilterError` unless ``tile`` is a frame the built-ins accept."""
    if not isinstance(tile, np.ndarray):
        raise FilterError(f"{name}: expected a numpy array, got {type(tile).__name__}")
    if tile.ndim not in (2, 3) or (tile.ndim == 3 and not 1 <= tile.shape[2] <= 4):
        raise FilterError(f"{name}: expected shape (H, W) or (H, W, C) with C in 1..4, got {tile.shape}")
    if tile.dtype not in DTYPES:
        raise FilterError(f"{name}: dtype must be uint8, uint16 or float32, got {tile.dtype}; convert the frame first")


def map_color(tile: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``fn`` to the colour channels of ``tile``; alpha passes through.

    Alpha is the last channel when there are 2 or 4. ``fn`` gets a 2-D array
    for one colour channel and (H, W, 3) for three, may return (H, W) for
    (H, W, 1) as OpenCV does, and must not write into its argument (it may be a
    read-only view). The result is a new array shaped and typed like ``tile``.
    """
    if tile.ndim == 2:
        return fn(tile)
    h, w, c = tile.shape
    ncolor = c - 1 if c in (2, 4) else c
    color = tile[..., 0] if ncolor == 1 else tile[..., :ncolor]
    result = fn(color)
    if ncolor == c:
        return result.reshape(h, w, c)
    out = np.empty_like(tile)
    out[..., :ncolor] = result.reshape(h, w, ncolor)
    out[..., ncolor:] = tile[..., ncolor:]
    return out


def opencv_into(tile: np.ndarray, out: np.ndarray, kernel: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> bool:
    """Run ``kernel(x, dst)``, an OpenCV call on the colour channels ``x`` of ``tile`` given
    ``dst=``, straight into ``out``; False (nothing written) where OpenCV cannot write there
    (alpha, other shapes or dtypes, strides, ``out`` overlapping ``tile``): go through ``apply``."""
    channels = 1 if tile.ndim == 2 else tile.shape[2]
    if channels not in (1, 3) or out.shape != tile.shape or out.dtype != tile.dtype:
        return False
    if not out.flags.c_contiguous or not out.flags.writeable or np.may_share_memory(tile, out):
        return False
    x = tile if tile.ndim == 2 or channels == 3 else tile[..., 0]
    result = kernel(x, out.reshape(tile.shape[:2]) if channels == 1 else out)
    if not np.shares_memory(result, out):  # OpenCV allocated instead (it should not)
        out[...] = result.reshape(out.shape)
    return True


def to_dtype(values: np.ndarray, dtype: np.dtype, *, clip: bool = True) -> np.ndarray:
    """Float results back to ``dtype``: integers rounded half to even and clipped
    to the dtype's range; float32 clipped to [0, 1] when ``clip``. May reuse
    ``values`` as scratch space."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        values = values.astype(dtype, copy=False)
        return np.clip(values, 0.0, 1.0, out=values) if clip else values
    np.rint(values, out=values)
    np.clip(values, 0, _PEAK[dtype], out=values)
    return values.astype(dtype)


def pad_reflect(a: np.ndarray, pad: int, axis: int) -> np.ndarray:
    """``a`` padded by ``pad`` on both sides of ``axis``, reflecting (``cb|abc|ba``)."""
    widths = [(0, 0)] * a.ndim
    widths[axis] = (pad, pad)
    return np.pad(a, widths, mode="reflect")


def _take(a: np.ndarray, axis: int, start: int, n: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, start + n)
    return a[tuple(index)]


def symmetric_sum(padded: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Correlate a float32 array, padded by ``h = len(weights) - 1`` on both sides
    of ``axis``, with the symmetric kernel ``weights[h], ..., weights[0], ..., weights[h]``.

    Each output is ``w0*x[i] + w1*(x[i-1] + x[i+1]) + ...`` in that order, in
    float32, whatever its position.
    """
    h = len(weights) - 1
    n = padded.shape[axis] - 2 * h
    acc = _take(padded, axis, h, n) * weights[0]
    if h:
        tmp = np.empty_like(acc)
        for k in range(1, h + 1):
            np.add(_take(padded, axis, h - k, n), _take(padded, axis, h + k, n), out=tmp)
            tmp *= weights[k]
            acc += tmp
    return acc


def window_sum(padded: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Sums of ``k`` consecutive values along ``axis`` (output length = length - k + 1).

    Built from power-of-two block sums, so it costs O(log k) passes, and every
    output is added up by the same tree of operations: no running sum whose
    rounding would depend on where the array starts.
    """
    n = padded.shape[axis] - k + 1
    block, size, offset = padded, 1, 0
    out: np.ndarray | None = None
    bits = k
    while bits:
        if bits & 1:
            part = _take(block, axis, offset, n)
            out = part.copy() if out is None else np.add(out, part, out=out)
            offset += size
        bits >>= 1
        if bits:
            length = block.shape[axis] - size
            block = _take(block, axis, 0, length) + _take(block, axis, size, length)
            size *= 2
    assert out is not None
    return out


def gaussian_weights(sigma: float, halo: int) -> np.ndarray:
    """Normalised Gaussian taps ``w[0..halo]`` (centre first) as float32."""
    x = np.arange(halo + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w /= w[0] + 2.0 * w[1:].sum()
    return w.astype(np.float32)


def gaussian_fixed(x: np.ndarray, sigma: float, halo: int) -> np.ndarray:
    """Gaussian of a uint8 or uint16 array in OpenCV's 16-bit fixed point.

    Returns uint16; uint8 input is scaled by 256 first, so its result keeps 8
    more bits than OpenCV's own 8-bit path (whose kernel has only 8 fractional
    bits and is off by up to 2 steps). Integer arithmetic throughout: the same
    bits wherever a pixel sits.
    """
    if x.dtype == np.uint8:
        x = x.astype(np.uint16) * np.uint16(256)
    k = 2 * halo + 1
    return cv2.GaussianBlur(x, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=BORDER)


def gaussian_float(x: np.ndarray, sigma: float, halo: int) -> np.ndarray:
    """Separable Gaussian of a float32 array (2-D or (H, W, C)), reflect border."""
    w = gaussian_weights(sigma, halo)
    rows = symmetric_sum(pad_reflect(x, halo, 0), w, 0)
    return symmetric_sum(pad_reflect(rows, halo, 1), w, 1)


def check_number(
    name: str,
    param: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """``value`` as a float, or :class:`FilterError` naming the filter, param and range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FilterError(f"{name}: {param} must be a number, got {value!r}")
    v = float(value)
    ok = np.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v <= high
    if not ok:
        raise FilterError(f"{name}: {param} must be {_range(low, high, low_open)}, got {value}")
    return v


def check_int(name: str, param: str, value: object, *, low: int, high: int, odd: bool = False) -> int:
    """``value`` as an int, or :class:`FilterError` naming the filter, param and range."""
    what = "an odd integer" if odd else "an integer"
    integral = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not integral or not low <= value <= high or (odd and value % 2 == 0):  # type: ignore[operator]
        raise FilterError(f"{name}: {param} must be {what} in {low}..{high}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def _range(low: float | None, high: float | None, low_open: bool) -> str:
    op = ">" if low_open else ">="
    if low is not None and high is not None:
        return f"{op} {low:g} and <= {high:g}"
    if low is not None:
        return f"{op} {low:g}"
    if high is not None:
        return f"<= {high:g}"
    return "a finite number"
