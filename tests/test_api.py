"""The public API as users meet it: filters written anywhere, a warm default engine, progress."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import tiler
from filters import filter

REPO = Path(__file__).resolve().parent.parent

# Filters written where workers cannot import them: in the main program of
# ``python -c``: a function, the call form, a closure, a lambda, a partial and
# a Filter class.
BY_VALUE = textwrap.dedent(
    """
    import dataclasses
    import functools
    import numpy as np
    import tiler
    from filters import Filter, filter, check_filter

    @dataclasses.dataclass(frozen=True)
    class Add(Filter):
        name = "add"
        pointwise = True
        by: int = 1

        def apply(self, tile):
            return tile + np.uint8(self.by)

    @filter(halo=1)
    def inv(tile):
        return ~tile

    def _add(tile, *, by=1):
        return tile + np.uint8(by)

    added = filter(halo=0)(_add)
    offset = 5
    closure = filter(halo=0)(lambda tile: tile + np.uint8(offset))
    partial = filter(halo=0, name="plus2")(functools.partial(_add, by=2))
    chain = [inv, added(by=3), closure, partial, Add(by=4)]
    check_filter(chain, dtypes=["uint8"], channels=[3])
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    out = tiler.process(frame, chain, workers=2, tile_size=50, inline_below=0, builtins_in_process=False)
    want = ~frame + np.uint8(14)
    print("same" if np.array_equal(out, want) else "differ")
    """
)


def test_filters_from_python_c_travel_by_value_to_the_workers():
    done = subprocess.run([sys.executable, "-c", BY_VALUE], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["same"]


def _default_pids() -> tuple[int, ...]:
    assert tiler._default is not None
    return tuple(tiler._default[2].pool.pids)


def test_calls_reuse_a_warm_default_engine_until_options_change():
    frame = np.random.default_rng(1).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    want = tiler.process(frame, "blur:sigma=2", workers=0)
    a = tiler.process(frame, "blur:sigma=2", workers=2, inline_below=0, builtins_in_process=False)
    pids = _default_pids()
    b = tiler.process(frame, "blur:sigma=2", workers=2, inline_below=0, builtins_in_process=False)
    assert _default_pids() == pids  # the same workers served both calls
    np.testing.assert_array_equal(a, want)
    np.testing.assert_array_equal(b, want)
    tiler.process(frame, "invert", workers=1, inline_below=0, builtins_in_process=False)
    assert len(_default_pids()) == 1 and not set(_default_pids()) & set(pids)
    tiler.shutdown()
    assert tiler._default is None


def test_an_interrupted_call_leaves_nothing_and_the_next_call_works():
    frame = np.random.default_rng(2).integers(0, 256, (300, 400), dtype=np.uint8)

    def interrupt(event):
        raise KeyboardInterrupt  # as Ctrl-C (or a kernel interrupt) mid-job

    with pytest.raises(KeyboardInterrupt):
        tiler.process(
            frame,
            "median:size=5",
            workers=2,
            inline_below=0,
            builtins_in_process=False,
            tile_size=20,
            progress=interrupt,
        )
    assert tiler._default is None  # stopped, rebuilt on the next call
    out = tiler.process(frame, "median:size=5", workers=2, inline_below=0, builtins_in_process=False, tile_size=20)
    np.testing.assert_array_equal(out, tiler.process(frame, "median:size=5", workers=0))


def test_a_failed_job_keeps_the_engine():
    @filter(halo=0)
    def boom(tile):
        raise RuntimeError("boom")

    frame = np.zeros((300, 300), np.uint8)
    tiler.process(frame, "invert", workers=2, inline_below=0, builtins_in_process=False)
    pids = _default_pids()
    with pytest.raises(tiler.FilterFailed, match="boom"):
        tiler.process(frame, boom, workers=2, inline_below=0, builtins_in_process=False)
    tiler.process(frame, "invert", workers=2, inline_below=0, builtins_in_process=False)
    assert set(_default_pids()) == set(pids)


def test_threads_calling_at_once_each_get_a_correct_result():
    frames = [np.full((300, 300), i, np.uint8) for i in range(4)]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        results[i] = tiler.process(frames[i], "invert", workers=1, inline_below=0, builtins_in_process=False)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((results[i] == 255 - i).all() for i in range(4))


def test_progress_true_shows_a_tqdm_bar_of_tiles(capsys):
    frame = np.zeros((300, 300), np.uint8)
    tiler.process(frame, "invert", workers=2, inline_below=0, builtins_in_process=False, tile_size=100, progress=True)
    err = capsys.readouterr().err
    assert "0/9 [" in err and "tile" in err  # the total is known from the first event
    tiler.process(frame, "invert", workers=2, inline_below=0, builtins_in_process=False, tile_size=100, progress=False)
    assert capsys.readouterr().err == ""
    tiler.process(
        frame, "invert", workers=2, inline_below=0, builtins_in_process=False, tile_size=100
    )  # stderr is not a terminal here
    assert capsys.readouterr().err == ""


def test_filters_by_value_run_on_a_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    from PIL import Image

    level = 3
    darker = filter(halo=0)(lambda tile: tile // np.uint8(level))  # a closure: it travels by value
    a = np.random.default_rng(3).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "in.png")
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as local,
        distributed.Client(local) as client,
    ):
        tiler.process_file(tmp_path / "in.png", tmp_path / "out.png", [darker, "invert"], client=client, workers=1)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), ~(a // 3))
