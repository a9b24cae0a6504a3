"""The engine's copies: frames in shared memory, results into the caller's arrays or
lent as views, copies pipelined by strips, and a pool started only when needed."""

import gc
import os

import numpy as np
import pytest
from faultfilters import boxmean, negate
from leaks import shm_entries

from filters import Chain
from tiler.engine import Engine
from tiler.errors import TileprocError
from tiler.scheduler import Scheduler

FRAME = np.random.default_rng(7).integers(1, 256, (96, 80, 3), dtype=np.uint8)
CHAIN = Chain([boxmean(radius=2), negate])
WANT = CHAIN.apply(FRAME)


def mapped_by_workers(engine: Engine) -> set[str]:
    names = set()
    for pid in engine.pool.pids:
        with open(f"/proc/{pid}/maps") as f:
            names |= {line.split("/")[-1].split()[0] for line in f if "tileproc_" in line}
    return names


# -- engine.empty: frames the workers read where they are ----------------------------


def test_a_frame_from_empty_is_filtered_in_place_by_the_workers():
    with Engine(workers=2, tile_size=16, inline_below=0, builtins_in_process=False) as e:
        before = shm_entries()
        frame = e.empty(FRAME.shape, FRAME.dtype)
        (segment,) = shm_entries() - before
        assert frame.flags.writeable and frame.flags.c_contiguous
        assert frame.shape == FRAME.shape and frame.dtype == FRAME.dtype
        frame[...] = FRAME
        np.testing.assert_array_equal(e.process(frame, CHAIN), WANT)
        assert os.path.basename(segment) in mapped_by_workers(e)  # the workers read the caller's array itself
        frame[...] = WANT  # refilled and filtered again, in the same segment
        np.testing.assert_array_equal(e.process(frame, CHAIN), CHAIN.apply(WANT))
        assert shm_entries() - before == {segment}


def test_a_frame_from_empty_is_not_copied_into_a_slot(monkeypatch):
    copied = []
    filter_ = Scheduler._filter
    monkeypatch.setattr(
        Scheduler, "_filter", lambda self, f, source=None: copied.append(source) or filter_(self, f, source)
    )
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        frame = e.empty(FRAME.shape, FRAME.dtype)
        frame[...] = FRAME
        e.process(frame, CHAIN)
        e.process(frame[:50], CHAIN)  # a view of it is an ordinary array: copied
    assert copied[0] is None and copied[1] is not None


def test_frames_from_empty_in_a_stream_and_the_segments_freed_when_dropped():
    with Engine(workers=2, frames_in_flight=2, inline_below=0, builtins_in_process=False) as e:
        before = shm_entries()
        frames = [e.empty((40, 30), np.uint16) for _ in range(3)]
        for i, f in enumerate(frames):
            f[...] = i * 1000 + np.arange(1200, dtype=np.uint16).reshape(40, 30)
        outs = list(e.map_frames(frames, CHAIN))
        for f, o in zip(frames, outs, strict=True):
            np.testing.assert_array_equal(o, CHAIN.apply(f))
        view = frames[0][::2]
        del frames, f
        e.process(np.zeros((20, 20), np.uint8), negate)  # the engine frees what is gone at its next call
        assert len(shm_entries() - before) == 2  # a ring slot, and the array a view still holds
        assert int(view[0, 0]) == 0
    assert view.sum() > 0  # still readable after close: its memory lives as long as it does


def test_empty_refuses_what_the_engine_cannot_filter():
    with Engine(workers=0) as e:
        with pytest.raises(ValueError, match="float32"):
            e.empty((4, 4), np.float64)
        with pytest.raises(ValueError, match="C in 1..4"):
            e.empty((4, 4, 5))
    with pytest.raises(TileprocError, match="closed"):
        e.empty((4, 4))


def test_a_frame_from_empty_given_again_while_in_flight_fails_loudly():
    with Engine(workers=2, frames_in_flight=3, inline_below=0, builtins_in_process=False) as e:
        buf = e.empty((64, 64), np.uint8)

        def refilled():
            for i in range(4):
                buf[...] = i  # overwrites the frame still being filtered
                yield buf

        with pytest.raises(TileprocError, match="frame 0: its array was given again as frame 1"):
            list(e.map_frames(refilled(), negate))
        with pytest.raises(TileprocError, match="frame 0: its array was given again as frame 1"):
            list(e.map_frames(refilled(), negate, copy=False))
        buf[...] = 9
        assert [int(o[0, 0]) for o in e.map_frames([buf], negate)] == [246]  # one at a time is fine


# -- results into the caller's array ---------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_process_writes_into_out_even_in_place(workers):
    with Engine(workers=workers, tile_size=16, inline_below=0, builtins_in_process=False) as e:
        out = np.zeros_like(FRAME)
        assert e.process(FRAME, CHAIN, out=out) is out
        np.testing.assert_array_equal(out, WANT)
        mine = FRAME.copy()
        e.process(mine, CHAIN, out=mine)  # rows are read before any tile lands
        np.testing.assert_array_equal(mine, WANT)
        shared = e.empty(FRAME.shape, FRAME.dtype)
        shared[...] = FRAME
        e.process(shared, CHAIN, out=shared)
        np.testing.assert_array_equal(shared, WANT)


def test_process_refuses_an_out_that_does_not_fit():
    with Engine(workers=0) as e:
        with pytest.raises(ValueError, match=r"out: expected an array of shape \(96, 80, 3\)"):
            e.process(FRAME, CHAIN, out=np.zeros((96, 80), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            e.process(FRAME, CHAIN, out=np.zeros(FRAME.shape, np.uint16))
        ro = np.zeros_like(FRAME)
        ro.flags.writeable = False
        with pytest.raises(ValueError, match="read-only"):
            e.process(FRAME, CHAIN, out=ro)


# -- results lent as views of the slots --------------------------------------------------


def test_views_without_copies_are_read_only_and_stay_right_while_kept():
    frames = [np.full((30, 20), i, np.uint8) for i in range(6)]
    with Engine(workers=2, frames_in_flight=2, inline_below=0, builtins_in_process=False) as e:
        seen = []
        for view in e.map_frames(frames, negate, copy=False):  # the loop variable holds one
            assert not view.flags.writeable
            seen.append(int(view[0, 0]))
        assert seen == [255 - i for i in range(6)]
        del view
        kept = list(e.map_frames(frames[:4], negate, copy=False))  # up to 2 x frames in flight
        gc.collect()
        assert [int(v.min()) for v in kept] == [255, 254, 253, 252]  # none overwritten
        with pytest.raises(TileprocError, match="still referenced"):
            list(e.map_frames(frames, negate, copy=False))
        del kept
        assert int(next(e.map_frames(frames, negate, copy=False))[0, 0]) == 255  # slots came back


def test_a_lent_view_of_a_frame_from_empty_must_be_dropped_before_it_is_filtered_again():
    with Engine(workers=1, inline_below=0, builtins_in_process=False) as e:
        frame = e.empty((8, 8), np.uint8)
        frame[...] = 3
        (first,) = e.map_frames([frame], negate, copy=False)
        assert int(first[0, 0]) == 252
        with pytest.raises(TileprocError, match="frame 0: the result of this array's previous frame"):
            list(e.map_frames([frame], negate, copy=False))
        with pytest.raises(TileprocError, match="frame: the result of this array's previous frame"):
            e.process(frame, negate, out=np.empty_like(frame))
        del first
        (again,) = e.map_frames([frame], negate, copy=False)
        assert int(again[0, 0]) == 252


# -- copies pipelined by strips ----------------------------------------------------------------


def test_workers_start_before_the_whole_frame_is_copied(monkeypatch):
    seen = []
    dispatch = Scheduler._dispatch

    def spy(self):
        dispatch(self)
        for frame, _ in self._book.in_flight.values():
            seen.append(int((frame.slot_views[0][-1] != 0).all()))  # is the last row in yet?

    monkeypatch.setattr(Scheduler, "_dispatch", spy)
    with Engine(workers=2, tile_size=(8, 80), inline_below=0, builtins_in_process=False) as e:
        np.testing.assert_array_equal(e.process(FRAME, CHAIN), WANT)
    assert seen[0] == 0 and seen[-1] == 1  # the first task went out while rows were still missing


# -- the pool starts when a frame needs it -----------------------------------------------------


def test_jobs_filtered_in_this_process_start_no_workers(tmp_path):
    from PIL import Image

    small = FRAME[:50, :50]
    src = tmp_path / "small.png"
    Image.fromarray(small).save(src)
    with Engine(workers=2) as e:
        out = e.process(small, "invert")
        list(e.map_frames([small] * 3, "blur:sigma=1"))
        e.process_file(src, tmp_path / "out.png", "invert")
        assert not e.started
        np.testing.assert_array_equal(out, 255 - small)
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), 255 - small)
        e.process(small, negate)  # not a built-in: only ever on a worker
        assert e.started


def test_empty_where_shared_memory_cannot_hold_the_frame_uses_the_disk(monkeypatch):
    """As for the engine's own slots: one warning, a frame on disk, the same result."""
    from tiler import platform
    from tiler.errors import TileprocWarning

    real = platform.free_bytes
    monkeypatch.setattr(platform, "free_bytes", lambda folder: 0 if folder == "/dev/shm" else real(folder))
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        with pytest.warns(TileprocWarning, match="files in"):
            frame = e.empty(FRAME.shape, FRAME.dtype)
        frame[...] = FRAME
        np.testing.assert_array_equal(e.process(frame, CHAIN), WANT)


def test_a_tile_timeout_needs_workers():
    with pytest.raises(ValueError, match="a tile timeout needs worker processes"):
        Engine(workers=0, tile_timeout=1)
