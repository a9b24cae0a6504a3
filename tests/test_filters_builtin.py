"""Built-in filters: each against a small independent reference, its border
rule, dtypes and channel layouts, alpha, parameter validation, and
whole-frame == tiled, bit for bit."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import filters.rank
from filters import (
    BoxBlur,
    Contrast,
    Edges,
    Emboss,
    FilterError,
    Gamma,
    GaussianBlur,
    Grayscale,
    Invert,
    Median,
    Sharpen,
    Threshold,
    resolve,
)
from filters.registry import BUILTINS

DTYPES = [np.uint8, np.uint16, np.float32]
# None: a 2-D frame; otherwise the channel count.
LAYOUTS = [None, 1, 2, 3, 4]


# --------------------------------------------------------------------------
# References: float64, per 2-D channel, written from the definitions.


def top(dtype) -> float:
    return 1.0 if np.dtype(dtype).kind == "f" else float(np.iinfo(dtype).max)


def reflect101(i: int, n: int) -> int:
    """Index ``i`` folded into 0..n-1 as ``dcb|abcd|cba``."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    i = abs(i) % period
    return i if i < n else period - i


def replicate(i: int, n: int) -> int:
    return min(max(i, 0), n - 1)


def neighbours(x: np.ndarray, r: int, border) -> np.ndarray:
    """(2r+1, 2r+1, H, W): value at offset (a - r, b - r) from each pixel."""
    h, w = x.shape
    rows = np.array([[border(i + a, h) for i in range(h)] for a in range(-r, r + 1)])
    cols = np.array([[border(j + b, w) for j in range(w)] for b in range(-r, r + 1)])
    return x[rows[:, None, :, None], cols[None, :, None, :]]


def correlate(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    r = kernel.shape[0] // 2
    return np.einsum("ab,abij->ij", kernel, neighbours(x.astype(np.float64), r, reflect101))


def gauss_kernel(sigma: float, truncate: float) -> np.ndarray:
    h = int(np.ceil(sigma * truncate))
    g = np.exp(-0.5 * (np.arange(-h, h + 1) / sigma) ** 2)
    g /= g.sum()
    return np.outer(g, g)


def ref_gauss(x, sigma=1.0, truncate=4.0):
    return correlate(x, gauss_kernel(sigma, truncate))


def ref_box(x, radius=1):
    k = 2 * radius + 1
    return correlate(x, np.full((k, k), 1.0 / (k * k)))


def ref_median(x, size=3):
    stack = neighbours(x.astype(np.float64), size // 2, replicate)
    return np.median(stack.reshape(-1, *x.shape), axis=0)


def ref_sharpen(x, sigma=1.0, amount=1.0, threshold=0.0):
    v = x.astype(np.float64)
    detail = v - ref_gauss(x, sigma, 4.0)
    detail[np.abs(detail) < threshold * top(x.dtype)] = 0
    return v + amount * detail


def ref_edges(x, scale=1.0):
    kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)
    return scale * np.hypot(correlate(x, kx), correlate(x, kx.T)) / 4


def ref_emboss(x, strength=1.0):
    d = np.array([[-2, -1, 0], [-1, 0, 1], [0, 1, 2]], float)
    return x.astype(np.float64) + strength * correlate(x, d)


def per_channel(ref, tile: np.ndarray, **params) -> np.ndarray:
    """Reference result for a frame: colour channels through ``ref``, alpha kept, as float64."""
    if tile.ndim == 2:
        return ref(tile, **params)
    c = tile.shape[2]
    ncolor = c - 1 if c in (2, 4) else c
    out = tile.astype(np.float64)
    for i in range(ncolor):
        out[..., i] = ref(tile[..., i], **params)
    return out


def finish(values: np.ndarray, dtype, clip: bool = True) -> np.ndarray:
    """Reference rounding: round half to even and clip for integers; clip floats to [0, 1]."""
    if np.dtype(dtype).kind == "f":
        return np.clip(values, 0, 1) if clip else values
    return np.clip(np.rint(values), 0, top(dtype))


def random_frame(rng, shape, dtype) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


def shape_of(layout, rows=9, cols=11):
    return (rows, cols) if layout is None else (rows, cols, layout)


def assert_close(got: np.ndarray, want: np.ndarray, dtype, int_tol=1, float_tol=1e-5):
    assert got.dtype == np.dtype(dtype)
    tol = float_tol if np.dtype(dtype).kind == "f" else int_tol
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max(initial=0) <= tol, f"max difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


# --------------------------------------------------------------------------
# Each neighbourhood filter against its reference.

# (filter, reference, reference params, clipped?, (uint8, uint16) tolerance in
# steps). OpenCV's fixed-point Gaussian is within 2 steps of the exact value,
# in 8 bits (blur on uint8) as in 16.
NEIGHBOURHOOD = [
    (GaussianBlur(), ref_gauss, {}, False, (2, 2)),
    (GaussianBlur(sigma=0.6, truncate=3.0), ref_gauss, {"sigma": 0.6, "truncate": 3.0}, False, (2, 2)),
    (GaussianBlur(sigma=2.5), ref_gauss, {"sigma": 2.5}, False, (2, 2)),
    (BoxBlur(radius=1), ref_box, {"radius": 1}, False, (1, 1)),
    (BoxBlur(radius=3), ref_box, {"radius": 3}, False, (1, 1)),
    (Sharpen(), ref_sharpen, {}, True, (1, 3)),
    (Sharpen(sigma=1.5, amount=0.7), ref_sharpen, {"sigma": 1.5, "amount": 0.7}, True, (1, 3)),
    (Edges(), ref_edges, {}, True, (1, 1)),
    (Edges(scale=2.5), ref_edges, {"scale": 2.5}, True, (1, 1)),
    (Emboss(), ref_emboss, {}, True, (1, 1)),
    (Emboss(strength=0.3), ref_emboss, {"strength": 0.3}, True, (1, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: f"c{c}")
@pytest.mark.parametrize("f, ref, params, clip, tol", NEIGHBOURHOOD, ids=[c[0].describe() for c in NEIGHBOURHOOD])
def test_neighbourhood_filter_matches_reference(f, ref, params, clip, tol, dtype, layout):
    rng = np.random.default_rng(7)
    frame = random_frame(rng, shape_of(layout), dtype)
    want = finish(per_channel(ref, frame, **params), dtype, clip)
    got = f.apply(frame)
    assert got.shape == frame.shape
    assert_close(got, want, dtype, int_tol=tol[1] if dtype == np.uint16 else tol[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", [None, 3, 4])
@pytest.mark.parametrize("size", [1, 3, 5, 7, 9])
def test_median_matches_reference_exactly(size, layout, dtype):
    rng = np.random.default_rng(size)
    frame = random_frame(rng, shape_of(layout, 10, 13), dtype)
    want = per_channel(ref_median, frame, size=size)
    got = Median(size=size).apply(frame)
    assert got.dtype == frame.dtype
    np.testing.assert_array_equal(got, want.astype(frame.dtype))


def test_median_numpy_path_matches_opencv_path_and_chunks(monkeypatch):
    # The numpy selection used for uint16/float32 above size 5 must share
    # OpenCV's border rule: compare both on the same uint8 data.
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (23, 19, 3), dtype=np.uint8)
    monkeypatch.setattr(filters.rank, "_CHUNK_ELEMENTS", 500)  # many small blocks
    for size in (7, 11):
        via_numpy = filters.rank._median_replicate(frame, size)
        np.testing.assert_array_equal(via_numpy, Median(size=size).apply(frame))


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (2, 2), (3, 2, 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_frames_smaller_than_the_kernel(shape, dtype):
    rng = np.random.default_rng(0)
    frame = random_frame(rng, shape, dtype)
    cases = [
        (GaussianBlur(sigma=2.0), ref_gauss, {"sigma": 2.0}, False),
        (BoxBlur(radius=4), ref_box, {"radius": 4}, False),
        (Edges(), ref_edges, {}, True),
        (Emboss(), ref_emboss, {}, True),
    ]
    for f, ref, params, clip in cases:
        want = finish(per_channel(ref, frame, **params), dtype, clip)
        tol = 2 if dtype == np.uint16 or f.name == "blur" else 1  # the fixed-point Gaussians
        assert_close(f.apply(frame), want, dtype, int_tol=tol)
    for size in (3, 9):
        want = per_channel(ref_median, frame, size=size).astype(dtype)
        np.testing.assert_array_equal(Median(size=size).apply(frame), want)


def test_sharpen_threshold_leaves_small_differences():
    rng = np.random.default_rng(5)
    frame = (0.5 + 0.01 * rng.standard_normal((16, 16))).astype(np.float32)
    frame[8:, :] += 0.3  # one strong edge
    got = Sharpen(threshold=0.05).apply(frame)
    detail = frame - ref_gauss(frame)
    far = np.abs(np.abs(detail) - 0.05) > 1e-4  # not on the threshold itself
    want = finish(ref_sharpen(frame, threshold=0.05), np.float32)
    np.testing.assert_allclose(got[far], want[far], atol=1e-5)
    assert np.array_equal(got[np.abs(detail) < 0.049], frame[np.abs(detail) < 0.049])


def test_edges_of_a_full_step_are_full_range():
    frame = np.zeros((4, 6), np.uint16)
    frame[:, 3:] = 65535
    assert Edges().apply(frame)[:, 2:4].min() == 65535
    assert Edges().apply(frame)[:, 0].max() == 0


# --------------------------------------------------------------------------
# Colour operations.

CURVES = [
    (Invert(), lambda v: 1 - v),
    (Contrast(brightness=0.1, contrast=1.6), lambda v: (v - 0.5) * 1.6 + 0.5 + 0.1),
    (Contrast(brightness=-0.3), lambda v: v - 0.3),
    (Gamma(gamma=2.2), lambda v: np.clip(v, 0, 1) ** (1 / 2.2)),
    (Gamma(gamma=0.5), lambda v: np.clip(v, 0, 1) ** 2),
    (Threshold(level=0.4), lambda v: (v >= 0.4).astype(float)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: f"c{c}")
@pytest.mark.parametrize("f, curve", CURVES, ids=[c[0].describe() for c in CURVES])
def test_curve_matches_formula(f, curve, dtype, layout):
    rng = np.random.default_rng(11)
    frame = random_frame(rng, shape_of(layout), dtype)
    scale = top(dtype)
    want = per_channel(lambda x: curve(x.astype(np.float64) / scale) * scale, frame)
    got = f.apply(frame)
    assert f.pointwise and f.halo == 0
    if isinstance(f, Threshold) and np.dtype(dtype).kind == "f":
        # float32 frames compare in float32: no tolerance, check exactly
        np.testing.assert_array_equal(got, finish(want, dtype))
    else:
        assert_close(got, finish(want, dtype), dtype, float_tol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda c: f"c{c}")
def test_grayscale(dtype, layout):
    rng = np.random.default_rng(2)
    frame = random_frame(rng, shape_of(layout), dtype)
    got = Grayscale().apply(frame)
    assert got.shape == frame.shape and got.dtype == frame.dtype
    if layout is None or layout < 3:
        np.testing.assert_array_equal(got, frame)
        return
    rgb = frame[..., :3].astype(np.float64)
    luma = finish(rgb @ np.array([0.299, 0.587, 0.114]), dtype)
    for i in range(3):
        assert_close(got[..., i], luma, dtype, float_tol=1e-6)
    np.testing.assert_array_equal(got[..., 3:], frame[..., 3:])


def test_invert_is_exact_on_integers():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(Invert().apply(x), 255 - x)
    y = np.arange(0, 65536, 7, dtype=np.uint16)[None, :]
    np.testing.assert_array_equal(Invert().apply(y), 65535 - y)


def test_threshold_levels_per_dtype():
    assert Threshold(level=0.5).apply(np.array([[127, 128]], np.uint8)).tolist() == [[0, 255]]
    assert Threshold(level=0.0).apply(np.array([[0]], np.uint16)).tolist() == [[65535]]
    assert Threshold(level=1.0).apply(np.array([[0.999, 1.0]], np.float32)).tolist() == [[0.0, 1.0]]


# --------------------------------------------------------------------------
# Contract: alpha, shapes, dtypes, views, params.

ALL_DEFAULTS = [cls() for cls in BUILTINS.values()]
SOME_SETTINGS = ALL_DEFAULTS + [
    GaussianBlur(sigma=1.7, truncate=2.0),
    BoxBlur(radius=0),
    BoxBlur(radius=4),
    Median(size=7),
    Sharpen(sigma=2.0, amount=1.5, threshold=0.02),
    Contrast(brightness=0.2, contrast=0.5),
    Gamma(gamma=2.2),
]


def _id(f):
    return f.describe()


@pytest.mark.parametrize("f", ALL_DEFAULTS, ids=_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_alpha_passes_through(f, dtype):
    rng = np.random.default_rng(4)
    for channels in (2, 4):
        frame = random_frame(rng, (7, 8, channels), dtype)
        out = f.apply(frame)
        assert out.shape == frame.shape and out.dtype == frame.dtype
        np.testing.assert_array_equal(out[..., -1], frame[..., -1])


@pytest.mark.parametrize("f", SOME_SETTINGS, ids=_id)
def test_read_only_strided_views_are_left_alone(f):
    rng = np.random.default_rng(6)
    big = random_frame(rng, (20, 24, 4), np.uint16)
    big.flags.writeable = False
    before = big.copy()
    view = big[3:17:1, 5:21, :3]  # not contiguous, read-only
    out = f.apply(view)
    np.testing.assert_array_equal(big, before)
    np.testing.assert_array_equal(out, f.apply(np.ascontiguousarray(view)))
    assert out is not view and not np.shares_memory(out, big)


@pytest.mark.parametrize("f", ALL_DEFAULTS, ids=_id)
def test_rejects_unsupported_frames(f):
    with pytest.raises(FilterError, match=rf"^{f.name}: dtype must be uint8, uint16 or float32, got float64"):
        f.apply(np.zeros((4, 4), np.float64))
    with pytest.raises(FilterError, match=rf"^{f.name}: expected shape .* got \(4, 4, 5\)"):
        f.apply(np.zeros((4, 4, 5), np.uint8))


@pytest.mark.parametrize("f", SOME_SETTINGS, ids=_id)
def test_pickles_and_describes(f):
    assert pickle.loads(pickle.dumps(f)) == f
    (again,) = resolve(f.describe()).filters
    assert again == f and again.halo == f.halo


def test_halos():
    assert GaussianBlur().halo == 4
    assert GaussianBlur(sigma=2.5, truncate=3.0).halo == 8
    assert GaussianBlur(sigma=0.1).halo == 1
    assert BoxBlur(radius=5).halo == 5
    assert Median(size=7).halo == 3
    assert Sharpen(sigma=1.5).halo == 6
    assert Edges().halo == Emboss().halo == 1
    for cls in (Grayscale, Invert, Contrast, Gamma, Threshold):
        assert cls().pointwise and cls().halo == 0
    for cls in (GaussianBlur, BoxBlur, Median, Sharpen, Edges, Emboss):
        assert not cls().pointwise


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: GaussianBlur(sigma=-3), r"^blur: sigma must be > 0 and <= 100, got -3$"),
        (lambda: GaussianBlur(sigma=0), r"^blur: sigma must be > 0"),
        (lambda: GaussianBlur(sigma=float("nan")), r"^blur: sigma must be > 0 and <= 100, got nan$"),
        (lambda: GaussianBlur(truncate=11), r"^blur: truncate must be > 0 and <= 10, got 11$"),
        (lambda: GaussianBlur(sigma="2"), r"^blur: sigma must be a number, got '2'$"),
        (lambda: BoxBlur(radius=-1), r"^boxblur: radius must be an integer in 0\.\.1000, got -1$"),
        (lambda: BoxBlur(radius=2.5), r"^boxblur: radius must be an integer in 0\.\.1000, got 2\.5$"),
        (lambda: BoxBlur(radius=True), r"^boxblur: radius must be an integer"),
        (lambda: Median(size=4), r"^median: size must be an odd integer in 1\.\.101, got 4$"),
        (lambda: Median(size=103), r"^median: size must be an odd integer in 1\.\.101, got 103$"),
        (lambda: Sharpen(amount=-1), r"^sharpen: amount must be >= 0 and <= 100, got -1$"),
        (lambda: Sharpen(threshold=1.5), r"^sharpen: threshold must be >= 0 and <= 1, got 1\.5$"),
        (lambda: Edges(scale=0), r"^edges: scale must be > 0 and <= 100, got 0$"),
        (lambda: Emboss(strength=-0.5), r"^emboss: strength must be >= 0 and <= 10, got -0\.5$"),
        (lambda: Contrast(brightness=2), r"^contrast: brightness must be >= -1 and <= 1, got 2$"),
        (lambda: Contrast(contrast=-1), r"^contrast: contrast must be >= 0 and <= 10, got -1$"),
        (lambda: Gamma(gamma=0), r"^gamma: gamma must be > 0 and <= 100, got 0$"),
        (lambda: Threshold(level=-0.1), r"^threshold: level must be >= 0 and <= 1, got -0\.1$"),
    ],
)
def test_bad_params_are_rejected_with_the_range(make, message):
    with pytest.raises(FilterError, match=message):
        make()


def test_params_are_normalised():
    assert GaussianBlur(sigma=2).sigma == 2.0 and isinstance(GaussianBlur(sigma=2).sigma, float)
    assert GaussianBlur(sigma=2) == GaussianBlur(sigma=2.0)
    assert BoxBlur(radius=np.int64(3)).radius == 3 and type(BoxBlur(radius=np.int64(3)).radius) is int


# --------------------------------------------------------------------------
# Seamless: tiles with their halo give the whole-frame result, bit for bit.


def tiled(f, frame: np.ndarray, tile: tuple[int, int]) -> np.ndarray:
    """The engine's procedure in miniature: window = tile grown by the halo, clipped."""
    rows, cols = frame.shape[:2]
    halo = f.halo
    out = np.empty_like(frame)
    for r in range(0, rows, tile[0]):
        for c in range(0, cols, tile[1]):
            r1, c1 = min(rows, r + tile[0]), min(cols, c + tile[1])
            wr, wc = max(0, r - halo), max(0, c - halo)
            window = frame[wr : min(rows, r1 + halo), wc : min(cols, c1 + halo)]
            out[r:r1, c:c1] = f.apply(window)[r - wr : r1 - wr, c - wc : c1 - wc]
    return out


def awkward_frame(rng, shape, dtype) -> np.ndarray:
    """Random values; floats with widely varying exponents, where rounding
    that depends on a pixel's position in its row would show."""
    frame = random_frame(rng, shape, dtype)
    if np.dtype(dtype).kind == "f":
        small = rng.random(shape) < 0.4
        frame[small] *= np.exp2(-rng.integers(1, 40, int(small.sum()))).astype(np.float32)
    frame.flags.writeable = False
    return frame


SEAM_SHAPES = [(1, 1), (1, 9), (7, 1), (2, 2), (5, 3), (13, 17), (29, 23)]
SEAM_TILES = [(1, 1), (2, 3), (4, 4), (5, 8), (11, 7), (64, 64)]
SEAM_FILTERS = SOME_SETTINGS + [
    resolve("blur:sigma=1.2,sharpen:amount=0.5,median:size=5,edges,gamma:gamma=1.8"),
]


@pytest.mark.parametrize("f", SEAM_FILTERS, ids=lambda f: f.describe() if hasattr(f, "describe") else f.name)
def test_whole_frame_equals_tiles_bit_for_bit(f):
    rng = np.random.default_rng(17)
    for dtype in DTYPES:
        for layout in (None, 1, 3, 4):
            for i, (rows, cols) in enumerate(SEAM_SHAPES):
                shape = (rows, cols) if layout is None else (rows, cols, layout)
                frame = awkward_frame(rng, shape, dtype)
                whole = f.apply(frame)
                assert whole.shape == frame.shape and whole.dtype == frame.dtype
                tiles = SEAM_TILES if rows * cols <= 100 else SEAM_TILES[1:]
                for tile in tiles[i % 2 :: 2]:
                    got = tiled(f, frame, tile)
                    bits = f"u{frame.dtype.itemsize}"
                    assert np.array_equal(got.view(bits), whole.view(bits)), (
                        f"{dtype.__name__} {shape} tiles {tile}: "
                        f"{int((got.view(bits) != whole.view(bits)).sum())} values differ"
                    )


def test_large_halo_over_a_frame_wider_than_three_halos():
    rng = np.random.default_rng(23)
    f = GaussianBlur(sigma=3.0)  # halo 12
    for dtype in DTYPES:
        frame = awkward_frame(rng, (45, 53, 3), dtype)
        whole = f.apply(frame)
        for tile in ((7, 9), (16, 16)):
            got = tiled(f, frame, tile)
            assert np.array_equal(got.view(f"u{got.itemsize}"), whole.view(f"u{got.itemsize}"))
