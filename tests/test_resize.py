"""The resize filter: sizes, parameters, closeness to OpenCV and Pillow, every dtype and
channel count, and exactness by tiles through the engine at real-world ratios."""

from __future__ import annotations

import pickle

import cv2
import filterdefs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tiler
from filters import FilterError, Resize, check_filter, filter, resolve
from filters.base import dumps, plan_stages
from filters.resize import axis_weights
from tiler.engine import Engine
from tiler.geometry import chain_tiles
from tiler.worker import run_chain


def smooth_image(rng, shape, dtype=np.uint8):
    """A photo-like frame: random values blurred, so that resampling kernels matter."""
    noise = rng.random(shape).astype(np.float32)
    blurred = cv2.GaussianBlur(noise, (0, 0), 3).reshape(shape)
    blurred = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    if np.dtype(dtype).kind == "f":
        return blurred.astype(dtype)
    return np.rint(blurred * np.iinfo(dtype).max).astype(dtype)


# -- sizes and parameters ------------------------------------------------------------


@pytest.mark.parametrize(
    "params, shape, want",
    [
        ({"width": 1280}, (1080, 1920), (720, 1280)),
        ({"height": 720}, (1080, 1920), (720, 1280)),
        ({"height": 333}, (1080, 1920), (333, 592)),  # 591.99.. rounds to 592
        ({"width": 10, "height": 3}, (5, 7), (3, 10)),
        ({"scale": 0.5}, (5, 7), (3, 4)),  # 2.5 -> 3, 3.5 -> 4: halves up
        ({"scale": 2}, (5, 7), (10, 14)),
        ({"scale": 0.01}, (5, 7), (1, 1)),  # at least one pixel
        ({}, (5, 7), (5, 7)),
    ],
)
def test_output_shape(params, shape, want):
    f = Resize(**params)
    assert f.output_shape(shape) == want
    frame = np.zeros((*shape, 3), np.uint8)
    assert resolve(f.describe()).output_shape(frame.shape) == (*want, 3)
    assert f.apply(frame).shape == (*want, 3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resize:width=-1", r"^resize: width must be an integer in 0\.\.65536, got -1$"),
        ("resize:scale=0", r"^resize: scale must be > 0 and <= 64, got 0"),
        ("resize:width=100,scale=0.5", r"^resize: give width and/or height, or scale, not both"),
        ("resize:interp=bilinear", r"^resize: interp must be one of auto, area, linear, cubic, lanczos, nearest"),
    ],
)
def test_bad_parameters_are_refused_with_the_fix(spec, message):
    with pytest.raises(FilterError, match=message):
        resolve(spec)


def test_auto_picks_area_to_shrink_and_lanczos_to_enlarge():
    assert Resize(scale=0.5).kind((100, 100)) == "area"
    assert Resize(scale=1.5).kind((100, 100)) == "lanczos"
    assert Resize(width=50, height=300).kind((100, 100)) == "lanczos"  # more pixels


def test_axis_weights_are_normalised_and_read_only():
    for kind in ("area", "linear", "cubic", "lanczos", "nearest"):
        for n_in, n_out in ((1920, 1280), (1080, 333), (7, 16), (1, 5), (5, 1)):
            taps, weights = axis_weights(n_in, n_out, kind)
            assert taps.shape == weights.shape and len(taps) == n_out
            assert taps.min() >= 0 and taps.max() < n_in
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)
            assert not taps.flags.writeable and not weights.flags.writeable


# -- close to the references ---------------------------------------------------------


@pytest.mark.parametrize("size", [(1280, 720), (333, 187), (500, 400)])
def test_area_matches_opencv_inter_area_when_shrinking(size):
    img = smooth_image(np.random.default_rng(1), (1080 // 2, 1920 // 2, 3))
    w, h = size[0] // 2, size[1] // 2
    ours = Resize(width=w, height=h, interp="area").apply(img)
    ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    assert np.abs(ours.astype(int) - ref).mean() <= 0.05
    assert np.abs(ours.astype(int) - ref).max() <= 1


@pytest.mark.parametrize(
    "interp, pil", [("linear", Image.BILINEAR), ("cubic", Image.BICUBIC), ("lanczos", Image.LANCZOS)]
)
@pytest.mark.parametrize("width", [150, 777])
def test_convolution_kernels_match_pillow(interp, pil, width):
    img = smooth_image(np.random.default_rng(2), (300, 400, 3))
    ours = Resize(width=width, interp=interp).apply(img)
    h, w = ours.shape[:2]
    ref = np.asarray(Image.fromarray(img).resize((w, h), pil))
    # Pillow rounds to 8 bits between its two passes; within one step everywhere.
    assert np.abs(ours.astype(int) - ref).mean() <= 0.5
    assert np.abs(ours.astype(int) - ref).max() <= 1


@pytest.mark.parametrize(
    "interp, flag", [("linear", cv2.INTER_LINEAR), ("cubic", cv2.INTER_CUBIC), ("lanczos", cv2.INTER_LANCZOS4)]
)
def test_enlarging_is_within_a_step_of_opencv_too(interp, flag):
    img = smooth_image(np.random.default_rng(2), (300, 400, 3))
    ours = Resize(width=777, interp=interp).apply(img)
    ref = cv2.resize(img, (777, ours.shape[0]), interpolation=flag)
    assert np.abs(ours.astype(int) - ref).mean() <= 0.5


def test_nearest_matches_pillow_and_opencv_exact():
    img = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    ours = Resize(width=777, interp="nearest").apply(img)
    h, w = ours.shape[:2]
    np.testing.assert_array_equal(ours, np.asarray(Image.fromarray(img).resize((w, h), Image.NEAREST)))
    if int(cv2.__version__.split(".")[0]) >= 5:  # OpenCV 4's INTER_NEAREST_EXACT picks other samples at some sizes
        np.testing.assert_array_equal(ours, cv2.resize(img, (w, h), interpolation=cv2.INTER_NEAREST_EXACT))


# -- dtypes, channels, alpha -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [None, 1, 2, 3, 4])
@pytest.mark.parametrize("interp", ["area", "linear", "cubic", "lanczos", "nearest"])
def test_every_dtype_and_channel_count(dtype, channels, interp):
    rng = np.random.default_rng(5)
    shape = (40, 52) if channels is None else (40, 52, channels)
    img = smooth_image(rng, shape, dtype)
    img.flags.writeable = False
    for params in ({"scale": 0.45}, {"scale": 1.6}):
        out = Resize(interp=interp, **params).apply(img)
        want = Resize(**params).output_shape(shape[:2])
        assert out.shape == (*want, *shape[2:]) and out.dtype == img.dtype
        # Every channel (alpha included) is resized like a lone channel.
        for c in range(1 if channels is None else channels):
            lone = img if channels is None else np.ascontiguousarray(img[..., c])
            got = out if channels is None else out[..., c]
            np.testing.assert_array_equal(got, Resize(interp=interp, **params).apply(lone))
        top = 1.0 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
        assert out.min() >= 0 and out.max() <= top
        peak = float(img.max()) / top
        assert (
            abs(float(out.astype(np.float64).mean()) / top - float(img.astype(np.float64).mean()) / top) < 0.05 * peak
        )


def test_same_size_is_an_exact_copy():
    img = np.random.default_rng(6).random((9, 11, 4), dtype=np.float32)
    np.testing.assert_array_equal(Resize().apply(img), img)
    out = Resize(width=11, interp="lanczos").apply(img)
    np.testing.assert_array_equal(out, img)
    assert out is not img and not np.shares_memory(out, img)


# -- exact by tiles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "resize:scale=0.5",
        "resize:scale=2",
        "resize:width=7,interp=cubic",
        "resize:height=5,interp=lanczos",
        "resize:scale=1.7,interp=linear",
        "resize:scale=0.37,interp=nearest",
        "blur:sigma=2,resize:scale=0.5,sharpen",
        "resize:scale=2,median:size=3,resize:scale=0.3",
    ],
)
def test_check_filter_passes_resize_chains(spec):
    check_filter(spec)


def test_custom_scale_filters_are_checked():
    check_filter(filterdefs.double_box(radius=2))
    check_filter(filterdefs.half_mean)
    check_filter(filterdefs.thirds(p=3, q=2))
    check_filter([filterdefs.half_mean, "blur", filterdefs.double_box])
    with pytest.raises(AssertionError, match=r"expected uint8\[26, 34\] \(the input's size times its declared scale 2"):
        check_filter(filterdefs.wrong_scale)
    with pytest.raises(AssertionError, match=r"position_grid is not seamless: .* output tiles .* depends on where"):
        check_filter(filterdefs.position_grid)


def test_declared_scale_is_validated():
    assert filterdefs.thirds(p=1, q=1).scale is None  # same size: a plain filter
    assert filterdefs.thirds().output_shape((9, 10)) == (6, 7)
    with pytest.raises(FilterError, match=r"^thirds: scale must be > 0 and <= 64, got Fraction\(0, 1\)"):
        filterdefs.thirds(p=0)


def test_engine_is_exact_at_real_ratios():
    """1920 -> 1280, 1080 -> 333 and 2x, alone and after and before other filters, with tiles
    of several shapes really dispatched to two workers."""
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    small = frame[:270, :480]
    cases = [
        (frame, "resize:width=1280"),
        (frame, "resize:height=333,interp=lanczos"),
        (small, "resize:scale=2"),
        (small, "blur:sigma=2,resize:scale=0.5,sharpen"),
        (small, filterdefs.double_box(radius=1)),
    ]
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as engine:
        for img, spec in cases:
            chain = resolve(spec)
            want = chain.apply(img)
            for tile in (None, (97, 61), (64, 100_000)):
                engine.tile_shape = tile
                got = engine.process(img, chain)
                assert got.shape == want.shape and np.array_equal(got, want), (spec, tile)


def test_map_frames_resizes_every_frame_in_order():
    rng = np.random.default_rng(8)
    frames = [rng.integers(0, 65536, (60, 80, 4), dtype=np.uint16) for _ in range(5)]
    chain = resolve("resize:width=40,interp=cubic")
    with Engine(workers=2, inline_below=0, builtins_in_process=False, frames_in_flight=2, tile_size=16) as engine:
        outs = list(engine.map_frames(iter(frames), chain))
    assert [o.shape for o in outs] == [(30, 40, 4)] * 5
    for frame, out in zip(frames, outs):
        np.testing.assert_array_equal(out, chain.apply(frame))


def test_a_shape_filter_that_lies_fails_with_its_name():
    from tiler.errors import FilterFailed

    with Engine(workers=1, inline_below=0, builtins_in_process=False) as engine:
        with pytest.raises(FilterFailed, match=r"frame 0, tile 0: filter 'wrong_scale' raised: .*declared scale 2"):
            engine.process(np.zeros((20, 20), np.uint8), filterdefs.wrong_scale)


@pytest.fixture
def sent(monkeypatch):
    """A list that grows each time the scheduler dispatches work to its workers."""
    from tiler.scheduler import Scheduler

    calls: list[int] = []
    dispatch = Scheduler._dispatch
    monkeypatch.setattr(Scheduler, "_dispatch", lambda self: calls.append(1) or dispatch(self))
    return calls


def test_a_declared_scale_travels_by_value_to_new_processes_and_workers(sent):
    """A closure's scale (a number, or a function of the params) survives cloudpickle,
    check_filter's load in a new process and the workers, which the caller never replaces."""
    base = 2

    @filter(halo=1, scale=lambda k=base: k)
    def local_up(tile, *, k=base):  # a closure: it travels by value
        out = cv2.blur(tile, (3, 3), borderType=cv2.BORDER_REPLICATE).reshape(tile.shape)
        return out.repeat(k, axis=0).repeat(k, axis=1)

    up = local_up(k=3)
    assert up.scale == 3 and up.reshapes
    copy = pickle.loads(dumps(up))
    assert copy.scale == 3 and copy.output_shape((10, 7)) == (30, 21)
    check_filter(up, dtypes=["uint8"], channels=[None, 3])
    frame = np.random.default_rng(9).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    with Engine(workers=2, tile_size=16) as engine:  # a small frame: filter code still on a worker
        got = engine.process(frame, up)
    assert sent and got.shape == (270, 210, 3)
    np.testing.assert_array_equal(got, resolve(up).apply(frame))


def test_check_filter_compares_the_scale_a_new_process_loads(monkeypatch):
    check_filter(filterdefs.module_scaled, dtypes=["uint8"], channels=[None])
    monkeypatch.setattr(filterdefs, "UPSCALE", 3)  # here only: a worker still imports 2
    with pytest.raises(AssertionError, match=r"module_scaled: a new worker process loads it with another geometry"):
        check_filter(filterdefs.module_scaled, dtypes=["uint8"], channels=[None])


def test_small_resizes_run_inline_and_equal_the_workers(sent):
    """resize is a built-in: a small frame is filtered in the caller, like blur; the inline
    path counts the larger of the input and the output against the threshold."""
    frame = np.random.default_rng(10).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    with Engine(workers=2, inline_below=40 * 30 * 4, builtins_in_process=False) as engine:
        small = engine.process(frame, "blur:sigma=1,resize:scale=1.5")
        assert not sent  # 60 x 45 out: below the threshold, filtered here
        engine.process(frame, "resize:scale=2.5")
        assert sent  # 100 x 75 out: above it, by tiles on the workers
    with Engine(workers=2, inline_below=0, builtins_in_process=False, tile_size=16) as engine:
        tiled = engine.process(frame, "blur:sigma=1,resize:scale=1.5")
    assert small.shape == (60, 45, 3)
    np.testing.assert_array_equal(small, tiled)


def test_copy_free_calls_take_the_output_shape():
    """process(out=), arrays from Engine.empty (read where they are when the result fits
    their slot, copied through the ring when a resize makes it larger) and copy-free results."""
    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)
    with Engine(workers=2, inline_below=0, builtins_in_process=False, tile_size=32) as engine:
        for spec in ("resize:scale=0.5", "blur:sigma=1,resize:scale=2.5"):
            chain = resolve(spec)
            want = chain.apply(frame)
            out = np.empty(want.shape, np.uint8)
            assert engine.process(frame, chain, out=out) is out
            np.testing.assert_array_equal(out, want)
            shared = engine.empty(frame.shape, np.uint8)
            shared[...] = frame
            np.testing.assert_array_equal(engine.process(shared, chain), want)
            (view,) = engine.map_frames([shared], chain, copy=False)
            assert not view.flags.writeable
            np.testing.assert_array_equal(view, want)
            del view, shared
        with pytest.raises(ValueError, match=r"out: expected an array of shape \(60, 45, 3\) and dtype uint8"):
            engine.process(frame, "resize:scale=0.5", out=np.empty_like(frame))


@settings(max_examples=150, deadline=None)
@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    out=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    tile=st.tuples(st.integers(1, 50), st.integers(1, 50)),
    interp=st.sampled_from(["area", "linear", "cubic", "lanczos", "nearest"]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    channels=st.sampled_from([None, 1, 2, 3, 4]),
    before=st.sampled_from(["", "blur:sigma=1.2,", "boxblur:radius=2,"]),
    after=st.sampled_from(["", ",median:size=3", ",resize:scale=0.7"]),
)
def test_any_resize_chain_is_exact_by_output_tiles(size, out, tile, interp, dtype, channels, before, after):
    """The worker's own path: output cores from tiler.geometry, each computed from its
    input window stage by stage, equal the chain on the whole frame bit for bit."""
    chain = resolve(f"{before}resize:width={out[1]},height={out[0]},interp={interp}{after}")
    shape = size if channels is None else (*size, channels)
    rng = np.random.default_rng(sum(size) + sum(out))
    if dtype == np.float32:
        frame = rng.random(shape, dtype=np.float32)
    else:
        frame = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    want = chain.apply(frame)
    got = np.empty_like(want)
    for t in chain_tiles(chain.filters, frame.shape, tile):
        stages = plan_stages(chain.filters, (t.core.r0, t.core.r1, t.core.c0, t.core.c1), frame.shape)
        got[t.core.slices] = run_chain(chain.filters, frame[t.window.slices], stages)
    assert np.array_equal(got.view(f"u{got.dtype.itemsize}"), want.view(f"u{want.dtype.itemsize}"))


@pytest.mark.parametrize("shape", [(150, 150, 3), (1080, 1920, 3)])
def test_nearest_is_the_same_in_this_process_and_on_workers(shape):
    """The caller's own path (workers=0, small frames) reads the first stage's window, as a worker does."""
    x = np.random.default_rng(1).integers(0, 256, shape, np.uint8)
    for spec in ("resize:scale=0.5,interp=nearest", "resize:width=333,interp=nearest"):
        here = tiler.process(x, spec, workers=0)
        np.testing.assert_array_equal(
            here, tiler.process(x, spec, workers=2, tile_size=37, inline_below=0, builtins_in_process=False)
        )
        np.testing.assert_array_equal(here, resolve(spec).apply(x))
    half = tiler.process(x, "resize:scale=0.5,interp=nearest", workers=2)
    np.testing.assert_array_equal(half, np.asarray(Image.fromarray(x).resize(half.shape[1::-1], Image.NEAREST)))
