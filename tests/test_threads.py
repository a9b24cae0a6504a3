"""Chains of built-in filters on threads of the caller's process (tiler/threads.py): the
same result as the whole frame, no worker started, no copy, each kind of job routed
where it runs best, and a failing tile reported with its index."""

import threading
from pathlib import Path

import numpy as np
import pytest
from faultfilters import boxmean
from PIL import Image

import tiler
from filters import Chain
from filters.registry import resolve
from tiler.engine import Engine
from tiler.geometry import TileGrid, thread_tile_shape
from tiler.threads import TileError, TileThreads
from tiler.worker import ChainError

DATA = Path(__file__).parent / "data"
RNG = np.random.default_rng(11)
FRAME = RNG.integers(0, 256, (400, 300, 3), dtype=np.uint8)  # 120,000 pixels: above INLINE_BELOW
SPEC = "blur:sigma=2,median:size=5,sharpen"
WANT = resolve(SPEC).apply(FRAME)


def tile_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tileproc-tiles")]


def test_a_builtin_chain_runs_on_threads_here_and_starts_no_worker():
    before = len(tile_threads())
    with Engine(workers=2) as e:
        out = e.process(FRAME, SPEC)
        assert np.array_equal(out, WANT)
        assert not e.started
        assert len(tile_threads()) - before == 2  # the engine's two threads did the tiles
    assert len(tile_threads()) == before  # closed with the engine


@pytest.mark.parametrize("tile", [None, 7, (50, 1000)])
def test_threads_give_the_workers_result_bit_for_bit(tile):
    frame = RNG.random((263, 197, 4), dtype=np.float32)  # above INLINE_BELOW
    with Engine(workers=2, tile_size=tile) as here, Engine(workers=2, tile_size=tile, builtins_in_process=False) as w:
        a, b = here.process(frame, SPEC), w.process(frame, SPEC)
        assert not here.started and w.started
    assert np.array_equal(a, b) and np.array_equal(a, resolve(SPEC).apply(frame))


def test_in_place_out_reads_no_result_as_input():
    frame = FRAME.copy()
    with Engine(workers=2) as e:
        assert e.process(frame, SPEC, out=frame) is frame
        assert list(e._ring) == []  # copied aside in this process's memory, not into shared memory
    assert np.array_equal(frame, WANT)


def test_views_and_arrays_from_empty_on_threads():
    with Engine(workers=2, frames_in_flight=2) as e:
        src = e.empty(FRAME.shape, FRAME.dtype)
        src[...] = FRAME
        assert np.array_equal(e.process(src, SPEC), WANT)
        frames = [FRAME, FRAME[::-1].copy(), FRAME]
        got = [np.array(v) for v in e.map_frames(frames, SPEC, copy=False)]
        assert not e.started
    for frame, out in zip(frames, got):
        assert np.array_equal(out, resolve(SPEC).apply(frame))


def test_a_resize_runs_on_threads_too():
    spec = "blur:sigma=1,resize:scale=0.37,interp=lanczos"
    with Engine(workers=2) as e:
        out = e.process(FRAME, spec)
        assert not e.started
    assert np.array_equal(out, resolve(spec).apply(FRAME))


def test_a_custom_filter_in_the_chain_sends_the_tiles_to_the_workers():
    chain = Chain([resolve("blur").filters[0], boxmean(radius=1)])
    with Engine(workers=2) as e:
        assert not e.in_process(chain) and e.in_process("blur")
        out = e.process(FRAME, chain)
        assert e.started
    assert np.array_equal(out, chain.apply(FRAME))


def test_a_tile_timeout_sends_builtins_to_the_workers():
    with Engine(workers=2, tile_timeout=30) as e:
        assert np.array_equal(e.process(FRAME, SPEC), WANT)
        assert e.started


def test_one_still_is_filtered_here_and_a_folder_on_the_workers(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(FRAME).save(src / name)
    with Engine(workers=2) as e:
        e.process_file(src / "a.png", tmp_path / "one.png", SPEC)
        assert not e.started  # decoded, filtered and encoded here: no worker to start
        e.process_folder(src, tmp_path / "out", SPEC)
        assert e.started  # many files: decoded and encoded on the workers, side by side
    for path in (tmp_path / "one.png", tmp_path / "out" / "a.png", tmp_path / "out" / "b.png"):
        assert np.array_equal(np.asarray(Image.open(path)), WANT)


def test_a_video_with_builtins_starts_no_worker(tmp_path):
    dst = tmp_path / "out.webm"
    with Engine(workers=2) as e:
        e.process_video(DATA / "bear_vp9_odd_161x121.webm", dst, "invert")
        assert not e.started
    assert dst.stat().st_size > 0


class _FailsOnRow:
    """Raises on the window that holds ``row`` (a stand-in for a filter that fails on one tile)."""

    name, halo, reshapes = "fails", 1, False

    def __init__(self, row: int):
        self.row = row

    def apply(self, tile):
        if tile[..., 0].min() <= self.row <= tile[..., 0].max():
            raise ValueError(f"row {self.row}")
        return tile


def test_a_failing_tile_is_reported_with_its_index_after_the_others_stopped():
    rows = np.repeat(np.arange(100, dtype=np.float32)[:, None, None], 3, axis=1)  # each pixel: its row
    out = np.zeros_like(rows)
    grid = TileGrid(100, 3, (10, 3), halo=1)
    threads = TileThreads(3)
    try:
        with pytest.raises(TileError) as info:
            threads.run([_FailsOnRow(55)], grid, rows, out)
    finally:
        threads.close()
    assert info.value.index == 5  # rows 50-59, the first (in grid order) whose window holds row 55
    assert isinstance(info.value.__cause__, ChainError) and info.value.__cause__.name == "fails"
    assert isinstance(info.value.__cause__.__cause__, ValueError)


def test_thread_strips_are_four_per_thread_and_bounded():
    assert thread_tile_shape(2160, 3840, 2, 8) == (270, 3840)
    assert thread_tile_shape(100, 50, 2, 0) == (32, 50)  # at least 32 rows
    assert thread_tile_shape(100, 50, 2, 30) == (60, 50)  # at least two halos
    rows, _ = thread_tile_shape(20000, 20000, 4, 2)  # 400 MP: strips of at most 4 Mi pixels
    assert rows * 20000 <= 4 * 1024 * 1024 and -(-20000 // rows) % 4 == 0


def test_module_functions_take_the_option():
    a = tiler.process(FRAME, SPEC, workers=2)
    b = tiler.process(FRAME, SPEC, workers=2, builtins_in_process=False)
    assert np.array_equal(a, WANT) and np.array_equal(b, WANT)


class _Double:
    name, halo, reshapes = "double", 0, False

    def apply(self, tile):
        return tile * 2


def test_threads_used_again_in_a_forked_child_are_its_own():
    """A forked child has none of its parent's threads: it starts its own instead of
    queueing tiles for threads that are not there (a hang). numpy only: OpenCV's own
    thread pool does not survive a fork."""
    import os
    import select

    frame = np.arange(64 * 8 * 3, dtype=np.float32).reshape(64, 8, 3)
    grid = TileGrid(64, 8, (8, 8))
    threads = TileThreads(2)
    out = np.zeros_like(frame)
    threads.run([_Double()], grid, frame, out)  # the parent's threads exist now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            mine = np.zeros_like(frame)
            threads.run([_Double()], grid, frame, mine)
            os.write(write, b"1" if np.array_equal(mine, frame * 2) else b"0")
        finally:
            os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 30)
    answer = os.read(read, 1) if ready else b""
    os.close(read)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    threads.close()
    assert answer == b"1" and np.array_equal(out, frame * 2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_apply_into_writes_what_apply_returns(dtype, channels):
    shape = (37, 53) if channels is None else (37, 53, channels)
    frame = RNG.random(shape, dtype=np.float32) if dtype == np.float32 else RNG.integers(0, 200, shape, dtype=dtype)
    for spec in ("blur:sigma=1.5", "invert", "gamma:gamma=2.2", "median:size=3"):
        f = resolve(spec).filters[0]
        out = np.full_like(frame, 7)
        f.apply_into(frame, out)
        assert np.array_equal(out, f.apply(frame)), spec
        strided = np.zeros((*shape[:1], shape[1] * 2, *shape[2:]), frame.dtype)[:, ::2]
        f.apply_into(frame, strided)  # not contiguous: through a copy
        assert np.array_equal(strided, f.apply(frame)), spec


@pytest.mark.parametrize("opencv_threads", [2, 1])
@pytest.mark.parametrize("channels", [3, 4])
def test_chains_opencv_threads_itself_run_in_one_call_into_the_output(channels, opencv_threads, monkeypatch):
    """blur and invert spread one call over OpenCV's threads: with as many of those as the
    engine's, one call on the whole frame; with fewer (a host that set cv2.setNumThreads(1)),
    tiles on the engine's threads."""
    import cv2

    monkeypatch.setattr(cv2, "getNumThreads", lambda: opencv_threads)
    frame = RNG.integers(0, 256, (400, 300, channels), dtype=np.uint8)
    spec = "blur:sigma=2,invert"
    with Engine(workers=2) as e:
        cuts = []
        run = e._threads.run
        monkeypatch.setattr(e._threads, "run", lambda *a: cuts.append(a) or run(*a))
        out = np.empty_like(frame)
        assert e.process(frame, spec, out=out) is out
        assert len(cuts) == (0 if opencv_threads == 2 else 1) and not e.started
    assert np.array_equal(out, resolve(spec).apply(frame))


def test_one_thread_filters_the_whole_frame_in_one_call(monkeypatch):
    with Engine(workers=1) as e:
        cuts = []
        monkeypatch.setattr(e._threads, "run", lambda *a: cuts.append(a))
        assert np.array_equal(e.process(FRAME, SPEC), WANT)
        assert cuts == [] and not e.started


def test_a_long_call_goes_by_tiles_so_that_ctrl_c_can_stop_it(monkeypatch):
    """blur:sigma=60 (halo 240) on 1.2 MP is too much work for one uninterruptible OpenCV call."""
    import cv2

    monkeypatch.setattr(cv2, "getNumThreads", lambda: 2)
    frame = RNG.integers(0, 256, (1200, 1000, 3), dtype=np.uint8)
    with Engine(workers=2) as e:
        cuts = []
        run = e._threads.run
        monkeypatch.setattr(e._threads, "run", lambda *a: cuts.append(a) or run(*a))
        out = e.process(frame, "blur:sigma=60")
        assert len(cuts) == 1  # tiles on the threads
        e.process(frame, "blur:sigma=2")
        assert len(cuts) == 1  # one call: 1.2 MP x 9
    assert np.array_equal(out, resolve("blur:sigma=60").apply(frame))
