"""Resize: a filter that changes the frame's size, exactly the same by tiles as on the whole frame.

The resize is separable: rows first, then columns. For each axis, every output
pixel has its own taps (input indices) and weights, computed once for the
whole axis from the global coordinate and the two sizes, never from where a
tile starts; a tile takes its rows of that table. Each output value is then
``w0*x0 + w1*x1 + ...`` in float32, in the same order wherever it sits, so a
tile's pixels equal the whole frame's bit for bit.

Kernels:

* ``area``: each output pixel averages the input area it covers, weighted by
  overlap (OpenCV's ``INTER_AREA`` when shrinking, which most users expect; the
  default when the frame shrinks).
* ``linear``, ``cubic`` (a = -0.5), ``lanczos`` (3 lobes): Pillow's
  convolution resampling. The kernel is stretched by the shrink factor when
  shrinking (antialiased), taps beyond the frame are dropped and the weights
  renormalised. ``lanczos`` is the default when the frame grows. Pillow's
  rather than OpenCV's because OpenCV's linear and cubic do not widen the
  kernel when shrinking (they alias); when enlarging both agree within a step.
* ``nearest``: the input pixel under the output pixel's centre (Pillow,
  OpenCV's ``INTER_NEAREST_EXACT``).

Why by hand: ``cv2.resize`` on a window is not exact by tiles (its fixed-point
weights and coordinate rounding depend on the window's own size and origin),
and Pillow resamples uint8 through an 8-bit intermediate and has no
multi-channel 16-bit or float modes. The weights here follow those libraries'
definitions so that results are within a step of theirs.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction

import numpy as np

from filters import _pixels as px
from filters.base import Filter, FilterError, Rect4, Stage, scaled_size

__all__ = ["Resize", "INTERPOLATIONS", "axis_weights"]

INTERPOLATIONS = ("auto", "area", "linear", "cubic", "lanczos", "nearest")
_SUPPORT = {"linear": 1.0, "cubic": 2.0, "lanczos": 3.0}
_MAX_SIZE = 1 << 16


def _linear(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < 3.0, np.sinc(x) * np.sinc(x / 3.0), 0.0)


_KERNELS = {"linear": _linear, "cubic": _cubic, "lanczos": _lanczos}


@functools.lru_cache(maxsize=32)
def axis_weights(n_in: int, n_out: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Taps and weights of every output pixel along one axis.

    Returns ``(taps, weights)``, both of shape ``(n_out, K)``: output pixel
    ``o`` is ``sum(weights[o, k] * x[taps[o, k]] for k in range(K))``. Rows
    with fewer taps are padded with weight 0 on a tap they already use. The
    arrays are read-only (cached).

    Examples
    --------
    >>> taps, w = axis_weights(4, 2, "area")
    >>> taps.tolist(), w.tolist()
    ([[0, 1], [2, 3]], [[0.5, 0.5], [0.5, 0.5]])
    """
    o = np.arange(n_out, dtype=np.int64)
    if kind == "nearest":
        # In float64 as Pillow and OpenCV compute it, so that ties fall the same way.
        taps = np.minimum(np.floor((o + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)[:, None]
        weights = np.ones((n_out, 1))
    elif kind == "area":
        # Output pixel o covers [o*n_in, (o+1)*n_in) in units of 1/n_out input pixels.
        first = o * n_in // n_out
        last = -(-(o + 1) * n_in // n_out)  # exclusive
        k = int((last - first).max())
        taps = np.minimum(first[:, None] + np.arange(k), last[:, None] - 1)
        lo = np.maximum(o[:, None] * n_in, taps * n_out)
        hi = np.minimum((o[:, None] + 1) * n_in, (taps + 1) * n_out)
        weights = np.maximum(hi - lo, 0) / n_in
        weights[taps != first[:, None] + np.arange(k)] = 0.0
    else:
        scale = n_in / n_out
        stretch = max(scale, 1.0)
        support = _SUPPORT[kind] * stretch
        centre = (o + 0.5) * scale
        first = np.maximum(np.floor(centre - support + 0.5), 0).astype(np.int64)
        last = np.minimum(np.floor(centre + support + 0.5), n_in).astype(np.int64)
        last = np.maximum(last, first + 1)
        k = int((last - first).max())
        grid = first[:, None] + np.arange(k)
        valid = grid < last[:, None]
        weights = _KERNELS[kind]((grid - centre[:, None] + 0.5) / stretch)
        weights = np.where(valid, weights, 0.0)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0.0, 1.0, total)
        taps = np.where(valid, grid, first[:, None])
    taps = np.ascontiguousarray(taps, dtype=np.intp)
    weights = np.ascontiguousarray(weights, dtype=np.float32)
    taps.flags.writeable = False
    weights.flags.writeable = False
    return taps, weights


@dataclasses.dataclass(frozen=True)
class Resize(Filter):
    """Resize the frame to ``width`` x ``height``, or by ``scale``.

    Parameters
    ----------
    width, height : int
        Output size in pixels, 0..65536. Either alone keeps the aspect ratio
        (the other side rounded, at least 1). 0 means "from the other side".
    scale : float
        Output size over input size on both axes (rounded, halves up, at least
        1 pixel), > 0 and <= 64, when neither width nor height is given. The
        default 1.0 keeps the size.
    interp : str
        ``auto`` (``area`` when the frame shrinks, ``lanczos`` when it grows),
        ``area``, ``linear``, ``cubic``, ``lanczos`` or ``nearest``. See the
        module notes for the kernels and which library each follows.

    Notes
    -----
    Every channel is resized alike, alpha included (straight alpha). Integer
    frames are computed in float32, rounded half to even and clipped; float32
    frames are computed in float32 and clipped to 0..1 for ``cubic`` and
    ``lanczos``, whose ringing overshoots. Taps beyond the frame edge are not
    read: the edge needs no padding rule. An axis whose size is kept is copied.

    Examples
    --------
    >>> import numpy as np
    >>> Resize(width=4).output_shape((6, 8))
    (3, 4)
    >>> Resize(scale=0.5).apply(np.zeros((6, 8, 3), np.uint8)).shape
    (3, 4, 3)
    """

    name = "resize"
    reshapes = True

    width: int = 0
    height: int = 0
    scale: float = 1.0
    interp: str = "auto"

    def __post_init__(self) -> None:
        width = px.check_int(self.name, "width", self.width, low=0, high=_MAX_SIZE)
        height = px.check_int(self.name, "height", self.height, low=0, high=_MAX_SIZE)
        scale = px.check_number(self.name, "scale", self.scale, low=0, high=64, low_open=True)
        if (width or height) and scale != 1.0:
            raise FilterError(
                f"{self.name}: give width and/or height, or scale, not both (got width={width}, "
                f"height={height}, scale={scale:g})"
            )
        if self.interp not in INTERPOLATIONS:
            raise FilterError(f"{self.name}: interp must be one of {', '.join(INTERPOLATIONS)}, got {self.interp!r}")
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)
        object.__setattr__(self, "scale", scale)

    # -- geometry --------------------------------------------------------------

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        rows, cols = int(shape[0]), int(shape[1])
        if self.width and self.height:
            return (self.height, self.width)
        if self.width:
            return (scaled_size(rows, Fraction(self.width, cols)), self.width)
        if self.height:
            return (self.height, scaled_size(cols, Fraction(self.height, rows)))
        s = Fraction(self.scale).limit_denominator(1 << 20)
        return (scaled_size(rows, s), scaled_size(cols, s))

    def kind(self, shape: tuple[int, int]) -> str:
        """The kernel used for an input of ``shape``: ``interp``, or what ``auto`` picks."""
        if self.interp != "auto":
            return self.interp
        out = self.output_shape(shape)
        return "area" if out[0] * out[1] < shape[0] * shape[1] else "lanczos"

    def source_rect(self, rect: Rect4, shape: tuple[int, int]) -> Rect4:
        out = self.output_shape(shape)
        kind = self.kind(shape)
        spans = []
        for o0, o1, n_in, n_out in ((rect[0], rect[1], shape[0], out[0]), (rect[2], rect[3], shape[1], out[1])):
            if n_in == n_out:
                spans += [o0, o1]
                continue
            taps = axis_weights(n_in, n_out, kind)[0][o0:o1]
            spans += [int(taps.min()), int(taps.max()) + 1]
        return tuple(spans)  # type: ignore[return-value]

    # -- pixels ----------------------------------------------------------------

    def apply(self, tile: np.ndarray) -> np.ndarray:
        px.check_tile(self.name, tile)
        out = self.output_shape(tile.shape[:2])
        whole = (0, tile.shape[0], 0, tile.shape[1])
        return self.apply_rect(tile, Stage(tile.shape[:2], whole, (0, out[0], 0, out[1])))

    def apply_rect(self, x: np.ndarray, stage: Stage) -> np.ndarray:
        px.check_tile(self.name, x)
        shape = stage.shape
        out = self.output_shape(shape)
        kind = self.kind(shape)
        (r0, r1, c0, c1), window = stage.rect, stage.window
        rows = _axis(shape[0], out[0], kind, r0, r1, window[0])
        cols = _axis(shape[1], out[1], kind, c0, c1, window[2])
        keep_rows = slice(r0 - window[0], r1 - window[0])
        keep_cols = slice(c0 - window[2], c1 - window[2])
        if kind == "nearest" or (rows is None and cols is None):
            y = x[keep_rows] if rows is None else x[rows[0][:, 0]]
            return np.array(y[:, keep_cols] if cols is None else y[:, cols[0][:, 0]], order="C")
        y = x[keep_rows] if rows is None else _pass(x, *rows, axis=0)
        y = y[:, keep_cols] if cols is None else _pass(y, *cols, axis=1)
        y = y.astype(np.float32, copy=False)
        return px.to_dtype(y, x.dtype, clip=kind in ("cubic", "lanczos"))


def _axis(n_in: int, n_out: int, kind: str, o0: int, o1: int, start: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Taps (relative to a window starting at ``start``) and weights of outputs ``o0:o1``;
    None when the axis keeps its size."""
    if n_in == n_out:
        return None
    taps, weights = axis_weights(n_in, n_out, kind)
    return taps[o0:o1] - start, weights[o0:o1]


def _pass(y: np.ndarray, taps: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """``sum_k weights[:, k] * y[taps[:, k]]`` along ``axis``, in k order, in float32.

    ``y`` may be an integer array: each gathered term is converted on the fly,
    so the window is never copied whole to float32.
    """
    shape = [1] * y.ndim
    shape[axis] = len(taps)
    acc: np.ndarray | None = None
    term: np.ndarray | None = None
    for k in range(taps.shape[1]):
        gathered = np.take(y, taps[:, k], axis=axis)
        w = weights[:, k].reshape(shape)
        if acc is None:
            acc = np.multiply(gathered, w, dtype=np.float32)
            continue
        if term is None:
            term = np.empty_like(acc)
        np.multiply(gathered, w, out=term, dtype=np.float32)
        acc += term
    assert acc is not None
    return acc
