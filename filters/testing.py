"""Checks for filter authors: is my filter safe to run over tiles in worker processes?

:func:`check_filter` does, on small random frames, what the engine does on real
ones: cut the frame into tiles, run the filter on each tile grown by the
declared halo (clipped at the frame edge), keep the tile, and compare with the
filter run on the whole frame, bit for bit. Use it in your own tests::

    from filters.testing import check_filter

    def test_boxmean():
        check_filter(boxmean(radius=3))
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

import filters
from filters.base import Chain, FilterError, Stage
from filters.registry import Spec, resolve

__all__ = ["check_filter"]

_DTYPES = (np.uint8, np.uint16, np.float32)
_CHANNELS = (None, 1, 3, 4)
_SHAPES = ((1, 1), (1, 7), (3, 2), (13, 17), (31, 23), (24, 40))
_TILES = ((3, 4), (5, 7), (8, 3), (2, 9), (11, 13))
_MAX_EXTRA_HALO = 32


def check_filter(
    f: Spec,
    *,
    seed: int = 0,
    dtypes: Sequence[Any] = _DTYPES,
    channels: Sequence[int | None] = _CHANNELS,
    shapes: Sequence[tuple[int, int]] = _SHAPES,
) -> None:
    """Assert that a filter is safe to run over tiles in worker processes.

    Checks that it (or each filter of a chain) goes through the engine's own
    serialisation (:func:`filters.base.dumps`: by reference where another
    process can import it, else by value), loads in a new Python process as a
    worker would load it, with the same halo and scale there, and comes back
    giving the same results; that ``apply`` returns its input's shape and dtype,
    leaves its input alone (it gets read-only views) and is deterministic; and
    that its halo is honest: on random frames of every given dtype and channel
    count, cut into tiles of several sizes, each tile computed from its window
    (the tile grown by the halo, clipped at the frame edge) equals the same
    pixels of the whole-frame result, bit for bit. A filter that changes the
    frame's size must return ``round(size * scale)`` for its declared scale,
    and each output tile computed from the input window that its scale and
    halo give must equal the whole-frame result.

    Parameters
    ----------
    f : filter, filter function, Chain, spec string, or a list of them
        Anything :func:`filters.resolve` accepts.
    seed : int
        Seed of the random frames.
    dtypes : sequence of dtypes
        Frame dtypes to try; narrow it when the filter supports fewer.
    channels : sequence of int or None
        Channel counts to try; None means a 2-D (H, W) frame.
    shapes : sequence of (rows, cols)
        Frame sizes to try; a frame of about three halos across is added so
        that a large halo is exercised too.

    Raises
    ------
    AssertionError
        Naming the check that failed, the frame, and the fix. A too-small halo
        is reported with the first differing pixel and the halo that would
        have worked.

    Examples
    --------
    >>> from filters.blur import GaussianBlur
    >>> check_filter(GaussianBlur(sigma=1.5))
    >>> check_filter("boxblur:radius=2,invert", dtypes=["uint8"], channels=[3])
    """
    try:
        chain = resolve(f)
    except FilterError as exc:
        raise AssertionError(f"check_filter: {exc}") from None
    label = ",".join(_describe(x) for x in chain.filters)
    halo = chain.halo
    if isinstance(halo, bool) or not isinstance(halo, (int, np.integer)) or halo < 0:
        raise AssertionError(f"check_filter: {label}: halo must be an integer >= 0, got {halo!r}")
    for member in chain.filters:
        if member.pointwise and member.halo:
            raise AssertionError(
                f"check_filter: {_describe(member)} says it is pointwise but declares halo "
                f"{member.halo}; a pointwise filter reads only its own pixel: set halo 0 "
                "or pointwise=False"
            )
    copy = _check_pickle(chain, label)

    rng = np.random.default_rng(seed)
    cases = _cases(dtypes, channels, shapes, halo)
    checked: list[tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]] = []
    for i, (dtype, shape) in enumerate(cases):
        frame = _random_frame(rng, shape, dtype)
        whole = _apply(chain, frame, label)
        want = chain.output_shape(frame.shape)
        if whole.shape != want or whole.dtype != frame.dtype:
            raise AssertionError(
                f"check_filter: {label} returned {whole.dtype}{list(whole.shape)} for a {frame.dtype} frame "
                f"of shape {frame.shape}; its declared geometry says {frame.dtype}{list(want)}"
            )
        if i == 0:
            _check_same(label, "applying it twice", whole, _apply(chain, frame, label), frame)
            _check_same(label, "its unpickled copy", whole, _apply(copy, frame, label), frame)
        tiles = _tile_sizes(shape, i)
        checked.append((frame, whole, tiles))
        for tile in tiles:
            tiled = _tiled(chain, frame, halo, tile, label)
            if not _bits_equal(whole, tiled):
                # Finish generating the remaining cases, so that the halo
                # suggested in the message is one that passes all of them.
                for j in range(i + 1, len(cases)):
                    more = _random_frame(rng, cases[j][1], cases[j][0])
                    checked.append((more, _apply(chain, more, label), _tile_sizes(cases[j][1], j)))
                raise AssertionError(_seam_message(chain, label, frame, whole, tiled, tile, checked))


def _describe(f: Any) -> str:
    return f.describe() if hasattr(f, "describe") else str(f.name)


def _check_pickle(chain: Chain, label: str) -> Chain:
    try:
        blob = chain.check_picklable()
    except FilterError as exc:
        raise AssertionError(f"check_filter: {exc}") from None
    _load_in_fresh_process(blob, label, _geometry(chain.filters))
    return Chain(pickle.loads(blob))


# Loads a chain as a worker does: a new interpreter that has not imported the
# caller's modules, with the caller's import path (tileproc's own first).
_LOADER = """\
import pickle, sys
paths = pickle.loads(sys.stdin.buffer.read(int(sys.argv[1])))
sys.path[:] = paths
loaded = pickle.loads(sys.stdin.buffer.read())
shape = tuple(int(v) for v in sys.argv[2].split("x"))
sys.stdout.write(repr([(f.halo, tuple(f.output_shape(shape))) for f in loaded]))
"""

#: A frame size at which the loaded copy's geometry (halo, output size) is compared.
_PROBE_SHAPE = (97, 89)


def _geometry(filters: Sequence[Any]) -> str:
    """Each filter's halo and output size for :data:`_PROBE_SHAPE`, as the loader prints them."""
    return repr([(f.halo, tuple(f.output_shape(_PROBE_SHAPE))) for f in filters])


def _load_in_fresh_process(blob: bytes, label: str, geometry: str) -> None:
    """Raise AssertionError unless ``blob`` loads in a new Python process with the same
    ``geometry`` (each filter's halo and output size, :func:`_geometry`) as here."""
    home = os.path.dirname(os.path.dirname(os.path.abspath(filters.__file__)))
    paths = pickle.dumps([home] + [os.path.abspath(p or os.curdir) for p in sys.path])
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-c", _LOADER, str(len(paths)), "x".join(map(str, _PROBE_SHAPE))],
            input=paths + blob,
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssertionError(f"check_filter: {label}: could not start a Python process to load it ({exc})") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or [f"exit code {done.returncode}"]
        raise AssertionError(
            f"check_filter: {label}: a new worker process could not load it: {lines[-1]}. "
            "Define the filter in an importable module, or make what it uses picklable."
        )
    there = done.stdout.decode(errors="replace")
    if there != geometry:
        raise AssertionError(
            f"check_filter: {label}: a new worker process loads it with another geometry "
            f"(halo, output size of a {_PROBE_SHAPE[0]}x{_PROBE_SHAPE[1]} frame per filter): {there} there, "
            f"{geometry} here. Keep the halo and scale in the filter's params or its declaration, "
            "not in state set after it was made."
        )


def _cases(
    dtypes: Sequence[Any], channels: Sequence[int | None], shapes: Sequence[tuple[int, int]], halo: int
) -> list[tuple[np.dtype, tuple[int, ...]]]:
    if not dtypes or not channels or not shapes:
        raise AssertionError("check_filter: dtypes, channels and shapes must not be empty")
    # Every dtype and channel count gets one of the larger shapes and one of
    # the tiny ones (where kernels are bigger than the frame). Larger frames
    # come first: a seam found there says more about the halo needed.
    large = [s for s in shapes if s[0] * s[1] > 64] or list(shapes)
    tiny = [s for s in shapes if s[0] * s[1] <= 64]
    first: list[tuple[np.dtype, tuple[int, ...]]] = []
    last: list[tuple[np.dtype, tuple[int, ...]]] = []
    i = 0
    for dtype in map(np.dtype, dtypes):
        for ch in channels:
            extra = () if ch is None else (ch,)
            first.append((dtype, large[i % len(large)] + extra))
            if tiny:
                last.append((dtype, tiny[i % len(tiny)] + extra))
            i += 1
    # One frame wide enough that tiles see the whole halo on every side.
    big = (3 * halo + 7, 3 * halo + 11)
    if big[0] > max(r for r, _ in shapes) or big[1] > max(c for _, c in shapes):
        extra = () if channels[-1] is None else (channels[-1],)
        first.append((np.dtype(dtypes[0]), big + extra))
    return first + last


def _tile_sizes(shape: tuple[int, ...], i: int) -> list[tuple[int, int]]:
    rows, cols = shape[:2]
    sizes = [(1, 1)] if rows * cols <= 64 else []
    sizes.append(_TILES[i % len(_TILES)])
    sizes.append(_TILES[(i + 2) % len(_TILES)])
    sizes.append((max(1, rows // 3 + 1), max(1, cols // 2 + 1)))
    return sizes


def _random_frame(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if dtype.kind == "u":
        frame = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    else:
        # Values in [0, 1] whose exponents vary widely, so that rounding that
        # depends on where a pixel sits shows up.
        frame = rng.random(shape, dtype=np.float32)
        small = rng.random(shape) < 0.3
        frame[small] *= np.exp2(-rng.integers(1, 40, int(small.sum()))).astype(np.float32)
        frame = frame.astype(dtype)
    frame.flags.writeable = False
    return frame


def _apply(chain: Chain, frame: np.ndarray, label: str) -> np.ndarray:
    try:
        return chain.apply(frame)
    except ValueError as exc:
        if "read-only" in str(exc):
            raise AssertionError(
                f"check_filter: {label} wrote into its input ({exc}); the engine passes "
                "read-only views of the frame: work on a copy (np.array(tile)) instead"
            ) from exc
        raise _failed(label, frame, exc) from exc
    except Exception as exc:
        raise _failed(label, frame, exc) from exc


def _failed(label: str, frame: np.ndarray, exc: Exception) -> AssertionError:
    return AssertionError(
        f"check_filter: {label} failed on a {frame.dtype} frame of shape {frame.shape}: "
        f"{type(exc).__name__}: {exc}. If it supports only some dtypes or channel "
        "counts, pass dtypes=... or channels=... to check_filter."
    )


def _tiled(chain: Chain, frame: np.ndarray, halo: int, tile: tuple[int, int], label: str) -> np.ndarray:
    """The engine's way: each tile computed from its window, the core kept."""
    if chain.reshapes:
        return _tiled_reshaped(chain, frame, tile, label)
    rows, cols = frame.shape[:2]
    th, tw = tile
    out: np.ndarray | None = None
    for r in range(0, rows, th):
        for c in range(0, cols, tw):
            r1, c1 = min(rows, r + th), min(cols, c + tw)
            wr0, wc0 = max(0, r - halo), max(0, c - halo)
            window = frame[wr0 : min(rows, r1 + halo), wc0 : min(cols, c1 + halo)]
            result = _apply(chain, window, label)
            if out is None:
                out = np.empty(frame.shape, result.dtype)
            out[r:r1, c:c1] = result[r - wr0 : r1 - wr0, c - wc0 : c1 - wc0]
    assert out is not None
    return out


def _tiled_reshaped(chain: Chain, frame: np.ndarray, tile: tuple[int, int], label: str) -> np.ndarray:
    """Output tiles, each mapped back through every stage to its input window."""
    shape = chain.output_shape(frame.shape)
    out = np.empty(shape, frame.dtype)
    th, tw = tile
    for r in range(0, shape[0], th):
        for c in range(0, shape[1], tw):
            rect = (r, min(shape[0], r + th), c, min(shape[1], c + tw))
            stages = chain.plan(rect, frame.shape)
            x = frame[stages[0].window[0] : stages[0].window[1], stages[0].window[2] : stages[0].window[3]]
            for f, stage in zip(chain.filters, stages):
                x = _apply_stage(f, x, stage, label)
            out[r : rect[1], c : rect[3]] = x
    return out


def _apply_stage(f: Any, x: np.ndarray, stage: Stage, label: str) -> np.ndarray:
    try:
        return f.apply_rect(x, stage)
    except Exception as exc:
        raise _failed(label, x, exc) from exc


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}") if a.dtype.itemsize in (1, 2, 4, 8) else a


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b))


def _check_same(label: str, what: str, a: np.ndarray, b: np.ndarray, frame: np.ndarray) -> None:
    if not _bits_equal(a, b):
        raise AssertionError(
            f"check_filter: {label} gives different results from {what} on a {frame.dtype} "
            f"frame of shape {frame.shape}; a filter must be deterministic and keep all "
            "its settings in its params"
        )


def _whole_frame_halo(shape: tuple[int, ...], tile: tuple[int, int]) -> int:
    """The smallest halo at which every tile's window is the whole frame."""
    reach = 0
    for n, t in zip(shape[:2], tile):
        t = min(t, n)
        reach = max(reach, ((n - 1) // t) * t, n - t)
    return reach


def _seam_message(
    chain: Chain,
    label: str,
    frame: np.ndarray,
    whole: np.ndarray,
    tiled: np.ndarray,
    tile: tuple[int, int],
    checked: list[tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]],
) -> str:
    differ = _bits(whole) != _bits(tiled)
    if differ.ndim == 3:
        differ = differ.any(axis=2)
    row, col = (int(v) for v in np.argwhere(differ)[0])
    halo = chain.halo

    def passes(h: int) -> bool:
        return all(_bits_equal(w, _tiled(chain, f, h, t, label)) for f, w, ts in checked for t in ts)

    needed = (
        None if chain.reshapes else next((h for h in range(halo + 1, halo + _MAX_EXTRA_HALO + 1) if passes(h)), None)
    )
    if chain.reshapes:
        cause = (
            "Each output tile was computed from the input window that the declared scale "
            "and halo give; the filter reads further (declare a larger halo) or depends on "
            "where the window starts (compute each output pixel from its global position)."
        )
    elif needed is not None and needed < _whole_frame_halo(frame.shape, tile):
        cause = (
            f"The filter reads pixels further away than its halo of {halo}: it needs "
            f"halo >= {needed} here. Declare a larger halo."
        )
    else:
        reach = "windows as large as the whole frame" if needed else (f"no halo up to {halo + _MAX_EXTRA_HALO}")
        cause = (
            f"Only {reach} make the tiles match, so the result seems to "
            "depend on the whole frame (a global mean, min or max?), on the frame size or "
            "on the position, which tiles cannot reproduce; compute from a bounded "
            "neighbourhood and declare its halo."
        )
    return (
        f"check_filter: {label} is not seamless: on a {frame.dtype} frame of shape "
        f"{frame.shape} cut into {tile[0]}x{tile[1]} {'output ' if chain.reshapes else ''}tiles with halo {halo}, pixel "
        f"(row {row}, col {col}) is {tiled[row, col].tolist()} tiled but "
        f"{whole[row, col].tolist()} on the whole frame ({int(differ.sum())} of "
        f"{differ.size} pixels differ). {cause}"
    )
