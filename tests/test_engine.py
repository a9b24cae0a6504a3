"""The engine on arrays: seamless, deterministic, bounded, and its API."""

import numpy as np
import pytest
from faultfilters import boxmean, jittery_boxmean, negate, numpy_boxsum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from filters import Chain, filter
from tiler.engine import Engine, check_frame


def frame_of(rng, shape, dtype):
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)


@pytest.fixture
def engine2():
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        yield e


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    channels=st.sampled_from([None, 1, 3, 4]),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32]),
    tile=st.integers(1, 50),
    r1=st.integers(0, 4),
    r2=st.integers(0, 3),
)
def test_chain_over_tiles_equals_chain_on_whole_frame(engine2, h, w, channels, dtype, tile, r1, r2):
    rng = np.random.default_rng(h * 1000 + w)
    shape = (h, w) if channels is None else (h, w, channels)
    frame = frame_of(rng, shape, dtype)
    chain = Chain([boxmean(radius=r1), numpy_boxsum(radius=r2), negate])
    engine2.tile_shape = (tile, tile)
    out = engine2.process(frame, chain)
    assert out.dtype == frame.dtype and out.shape == frame.shape
    np.testing.assert_array_equal(out, chain.apply(frame))


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("tile", [None, 1, 7, 64, (5, 300)])
def test_workers_and_tile_sizes_give_identical_bytes(workers, tile):
    rng = np.random.default_rng(1)
    frame = frame_of(rng, (23, 41, 3), np.uint8)
    chain = [jittery_boxmean(radius=3), boxmean(radius=1)]
    with Engine(workers=workers, tile_size=tile, inline_below=0, builtins_in_process=False) as e:
        out = e.process(frame, chain)
    np.testing.assert_array_equal(out, Chain(chain).apply(frame))


def test_map_frames_keeps_order_and_bounds_look_ahead():
    rng = np.random.default_rng(2)
    frames = [frame_of(rng, (40, 50, 3), np.uint8) for _ in range(12)]
    taken = []

    def source():
        for i, f in enumerate(frames):
            taken.append(i)
            yield f

    with Engine(workers=2, frames_in_flight=3, inline_below=0, builtins_in_process=False) as e:
        results = e.map_frames(source(), boxmean(radius=2))
        first = next(results)
        assert len(taken) <= 4  # at most frames_in_flight (+ the one being checked) read ahead
        rest = list(results)
    expected = [boxmean(radius=2).apply(f) for f in frames]
    for got, want in zip([first, *rest], expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_frames_of_changing_size_and_dtype_in_one_stream():
    rng = np.random.default_rng(3)
    frames = [
        frame_of(rng, s, d)
        for s, d in [
            ((10, 10), np.uint8),
            ((80, 33, 4), np.uint16),
            ((5, 200, 3), np.float32),
            ((80, 33, 4), np.uint16),
        ]
    ]
    with Engine(workers=2, frames_in_flight=2, inline_below=0, builtins_in_process=False) as e:
        outs = list(e.map_frames(frames, [boxmean(radius=2), negate]))
    for f, o in zip(frames, outs):
        np.testing.assert_array_equal(o, Chain([boxmean(radius=2), negate]).apply(f))


def test_small_frames_of_built_in_chains_are_filtered_in_the_parent_and_agree(monkeypatch):
    from tiler.engine import resolve_chain
    from tiler.scheduler import Scheduler, built_in

    assert built_in(resolve_chain("blur:sigma=2,invert"))
    assert not built_in(resolve_chain([boxmean, "invert"]))
    rng = np.random.default_rng(4)
    frame = frame_of(rng, (30, 30, 3), np.uint8)
    sent = []
    dispatch = Scheduler._dispatch
    monkeypatch.setattr(Scheduler, "_dispatch", lambda self: sent.append(1) or dispatch(self))
    with Engine(workers=2) as e:
        small = e.process(frame, "blur:sigma=2")
        assert not sent  # a small frame of built-ins: filtered here
        e.process(frame, boxmean(radius=2))
        assert sent  # other filter code always runs on a worker
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        tiled = e.process(frame, "blur:sigma=2")
    np.testing.assert_array_equal(small, tiled)


def test_unconfigured_filter_function_uses_defaults(engine2):
    frame = np.arange(64, dtype=np.uint8).reshape(8, 8)
    engine2.tile_shape = (3, 3)
    np.testing.assert_array_equal(engine2.process(frame, boxmean), boxmean(radius=1).apply(frame))


def test_bad_frames_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="float32"):
        check_frame(np.zeros((4, 4), np.float64))
    with pytest.raises(ValueError, match="C in 1..4"):
        check_frame(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        check_frame(np.zeros((0, 4), np.uint8))
    with pytest.raises(TypeError, match="numpy array"):
        check_frame([[1, 2]])


def make_closure_filter(offset):
    @filter(halo=0)
    def local(tile):
        return tile + np.uint8(offset)

    return local


def test_filter_defined_in_a_function_travels_by_value_to_the_workers():
    frame = np.zeros((300, 300), np.uint8)
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        assert (e.process(frame, make_closure_filter(7)) == 7).all()


def test_bad_engine_options():
    with pytest.raises(ValueError, match="tile size"):
        Engine(tile_size=0)
    with pytest.raises(ValueError, match="frames in flight"):
        Engine(frames_in_flight=0)
    with pytest.raises(ValueError, match="workers"):
        Engine(workers=-1)


def test_engine_reuses_one_pool_for_many_calls():
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        e.process(np.zeros((50, 50), np.uint8), negate)
        pids = e.pool.pids
        for _ in range(3):
            e.process(np.zeros((70, 20, 3), np.uint16), negate)
        assert e.pool.pids == pids


def test_closing_never_swaps_the_callers_signal_handlers():
    """Promise 9: not even for the moment of cleanup (a host thread watches the handlers)."""
    import signal
    import threading

    def mine(*args):
        pass

    seen: set = set()
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, mine)
    term = signal.getsignal(signal.SIGTERM)

    def watch():
        while not stop.is_set():
            seen.add((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        frame = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        for _ in range(3):
            with Engine(workers=2, inline_below=0, builtins_in_process=False) as engine:
                engine.process(frame, "blur")
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGINT, previous)
    assert seen == {(mine, term)}


def test_an_interrupt_during_close_still_releases_everything(monkeypatch):
    """Ctrl-C arriving mid-cleanup: the cleanup finishes (the leak fixture checks), then it is raised."""
    engine = Engine(workers=2, inline_below=0, builtins_in_process=False)
    engine.process(np.zeros((300, 400, 3), np.uint8), "invert")
    real_close = engine._ring.close
    calls = []

    def interrupted_once():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_close()

    monkeypatch.setattr(engine._ring, "close", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        engine.close()
    assert len(calls) == 2 and not engine.started
