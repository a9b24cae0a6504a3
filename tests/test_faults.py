"""Workers that die, filters that raise or misbehave: the job fails fast, names the place, leaks nothing."""

import os
import signal
import time

import faultfilters as ff
import numpy as np
import pytest

from filters import Chain
from tiler.engine import Engine
from tiler.errors import FilterFailed, TileTimeout, WorkerDied

FRAME = np.random.default_rng(0).integers(0, 255, (200, 160, 3), dtype=np.uint8)


def run(chain, **options):
    options.setdefault("workers", 2)
    options.setdefault("inline_below", 0)
    with Engine(**options) as e:
        return e.process(FRAME, chain)


def test_filter_exception_comes_back_with_name_tile_and_traceback():
    t = time.monotonic()
    with pytest.raises(FilterFailed) as info:
        run([ff.boxmean, ff.raises(message="bad pixel")])
    assert time.monotonic() - t < 10
    msg = str(info.value)
    assert "filter 'raises'" in msg and "tile " in msg and "RuntimeError: bad pixel" in msg
    assert "faultfilters.py" in info.value.remote_traceback


def test_exception_that_cannot_be_pickled_is_reported():
    with pytest.raises(FilterFailed, match="raises_unpicklable.*Unpicklable: odd"):
        run(ff.raises_unpicklable)


@pytest.mark.parametrize(
    "bad, text",
    [
        (ff.wrong_shape, "expected uint8"),
        (ff.wrong_dtype, "float64"),
        (ff.not_an_array, "not a numpy array"),
    ],
)
def test_invalid_results_are_named(bad, text):
    with pytest.raises(FilterFailed, match=f"{bad.name}' returned an invalid result.*{text}"):
        run(bad)


def test_nan_is_an_invalid_result():
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        with pytest.raises(FilterFailed, match="NaN"):
            e.process(FRAME.astype(np.float32) / 255, ff.nan_out)


def test_segfaulting_filter_fails_the_job_after_one_retry():
    t = time.monotonic()
    with pytest.raises(WorkerDied, match=r"frame 0, tile.*worker process died \(killed by SIGSEGV\) 2 times"):
        run(ff.segfault)
    assert time.monotonic() - t < 15


def test_sigbus_names_shared_memory():
    with pytest.raises(WorkerDied, match=r"SIGBUS: shared memory ran out; is /dev/shm full\?"):
        run(ff.bus_error)


def test_worker_killed_once_is_retried_and_the_result_is_exact(tmp_path):
    out = run([ff.die_once(marker=str(tmp_path / "died")), ff.boxmean], tile_size=40)
    assert (tmp_path / "died").exists()
    np.testing.assert_array_equal(out, ff.boxmean(radius=1).apply(FRAME))


def test_worker_killed_from_outside_mid_job(tmp_path):
    with Engine(workers=2, inline_below=0, builtins_in_process=False, tile_size=20, retries=0) as e:
        e.process(FRAME, ff.negate)  # start the pool
        victim = e.pool.pids[0]
        frames = e.map_frames([FRAME] * 50, ff.slow(seconds=0.01))
        next(frames)
        os.kill(victim, signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(WorkerDied, match="killed by SIGKILL"):
            list(frames)
        assert time.monotonic() - t < 10


def test_hanging_filter_stopped_by_tile_timeout():
    t = time.monotonic()
    with pytest.raises(TileTimeout, match="1 s"):
        run(ff.hangs, tile_timeout=1.0)
    assert time.monotonic() - t < 10


def test_engine_recovers_after_a_failed_job():
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        with pytest.raises(FilterFailed):
            e.process(FRAME, ff.raises)
        out = e.process(FRAME, ff.boxmean)
    np.testing.assert_array_equal(out, ff.boxmean().apply(FRAME))


def test_halo_too_small_breaks_seams_which_is_why_halos_are_declared():
    out = run(ff.reaches_too_far, tile_size=16)
    assert not np.array_equal(out, Chain([ff.reaches_too_far]).apply(FRAME))


def test_only_the_poisoned_frame_fails_not_the_ones_queued_behind_it():
    from tiler.scheduler import Frame

    poison = np.full((64, 64), 255, np.uint8)
    good = np.zeros((64, 64), np.uint8)
    # One worker, one tile per frame: the good frame's task waits on the same worker behind the poison.
    with Engine(workers=1, frames_in_flight=2, tile_size=64, inline_below=0, builtins_in_process=False) as e:
        jobs = [
            Frame(f"f{i}", f.shape, f.dtype, source=f, target=np.empty_like(f))
            for i, f in enumerate([poison, good, good])
        ]
        done = [(frame.label, frame.error) for frame in e.run(jobs, ff.kill_if_marked)]
    assert [label for label, _ in done] == ["f0", "f1", "f2"]
    assert isinstance(done[0][1], WorkerDied) and "2 times" in str(done[0][1])
    assert done[1][1] is None and done[2][1] is None


def test_workers_unmap_slots_given_up_for_larger_frames():
    sizes = [200, 400, 600, 800]
    with Engine(workers=1, frames_in_flight=1, inline_below=0, builtins_in_process=False) as e:
        for _ in e.map_frames((np.zeros((s, s, 3), np.uint8) for s in sizes), ff.negate):
            pass
        (pid,) = e.pool.pids
        with open(f"/proc/{pid}/maps") as f:
            stale = [line for line in f if "tileproc_" in line and "(deleted)" in line]
    assert stale == []


def test_a_chain_workers_cannot_load_fails_each_frame_with_the_reason(tmp_path):
    mine = tmp_path / "vanishing.py"
    mine.write_text("from filters import filter\n\n@filter(halo=0)\ndef same(tile):\n    return tile\n")
    from filters.registry import resolve

    chain = resolve(f"{mine}:same")  # loaded here; then the file goes away before workers import it
    mine.unlink()
    frame = np.zeros((300, 300), np.uint8)
    with Engine(workers=1, inline_below=0, builtins_in_process=False) as e:
        for _ in range(2):
            with pytest.raises(FilterFailed, match="could not load the filter chain.*vanishing"):
                e.process(frame, chain)


def test_the_workers_traceback_is_the_cause_so_a_default_print_shows_it():
    import pickle
    import traceback

    from tiler.errors import RemoteTraceback

    with pytest.raises(FilterFailed) as info:
        run(ff.raises(message="bad pixel"))
    exc = info.value
    assert isinstance(exc.__cause__, RemoteTraceback)
    printed = "".join(traceback.format_exception(exc))
    assert 'faultfilters.py", line' in printed and "RuntimeError: bad pixel" in printed
    assert "The above exception was the direct cause" in printed
    assert "faultfilters.py" in exc.remote_traceback  # kept as text too
    again = pickle.loads(pickle.dumps(exc))  # crosses processes (a cluster) with its traceback
    assert str(again) == str(exc) and isinstance(again.__cause__, RemoteTraceback)


# -- dispatch never blocks on a busy worker -------------------------------------------

TESTS = os.path.dirname(os.path.abspath(__file__))
BIG_JOB = """
import sys, numpy as np, faultfilters as ff
from tiler.engine import Engine
frame = np.zeros((2160, 3840), np.uint8)  # 32,400 tiles of 16x16
with Engine(workers=1, tile_size=16, {options}) as e:
    try:
        e.process(frame, {chain})
    except Exception as exc:
        print(type(exc).__name__, exc)
"""


def run_script(code: str, **popen):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=TESTS)
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def test_tile_timeout_fires_while_a_huge_frame_is_queued_for_one_busy_worker():
    proc = run_script(BIG_JOB.format(options="tile_timeout=1.0", chain="ff.hangs"))
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith("TileTimeout") and "tile timeout" in out


def test_ctrl_c_mid_run_stops_at_once_and_leaves_nothing(tmp_path):
    marker = tmp_path / "started"
    proc = run_script(BIG_JOB.format(options="", chain=f"ff.announce_then_slow(marker={str(marker)!r})"))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), proc.communicate()[1]
        time.sleep(0.3)  # the parent is dispatching and waiting now
        proc.send_signal(signal.SIGINT)
        t = time.monotonic()
        _, err = proc.communicate(timeout=20)
        assert time.monotonic() - t < 10
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode in (-signal.SIGINT, 130, 1) and "KeyboardInterrupt" in err


def test_a_slow_frame_whose_tiles_each_keep_the_limit_does_not_time_out():
    # 16 tiles of 0.15 s on one worker, in batches of 4 (0.6 s each): the limit is per tile.
    frame = np.zeros((16, 8), np.uint8)
    with Engine(workers=1, tile_size=(1, 8), tile_timeout=0.4, inline_below=0, builtins_in_process=False) as e:
        out = e.process(frame, ff.slow(seconds=0.15))
    np.testing.assert_array_equal(out, frame)


# -- user code never runs in the caller's process ----------------------------------

SMALL_FRAMES = """
import numpy as np, faultfilters as ff, tiler
frame = np.zeros((64, 64, 3), np.uint8)
for bad in (ff.segfault, ff.exits, ff.hangs):
    try:
        tiler.process(frame, bad, workers=1, tile_timeout=1.0)
    except Exception as exc:
        print(bad.name, type(exc).__name__, flush=True)
print("still running", flush=True)
"""


def test_custom_filters_that_crash_exit_or_hang_on_small_frames_leave_the_caller_running():
    proc = run_script(SMALL_FRAMES)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert out.splitlines() == [
        "segfault WorkerDied",
        "exits WorkerDied",
        "hangs TileTimeout",
        "still running",
    ], err


@pytest.mark.parametrize("bad", ["raises", "segfault"])
def test_a_failed_run_prints_its_one_line_and_nothing_else(tmp_path, bad):
    import subprocess
    import sys

    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(FRAME).save(src)
    env = dict(os.environ, PYTHONPATH=TESTS)
    cmd = [
        sys.executable,
        "-m",
        "tiler",
        str(src),
        "-f",
        f"faultfilters:{bad}",
        "-w",
        "2",
        "-q",
        "-o",
        str(tmp_path / "o.png"),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"tileproc: error: {src}, tile ")
    assert not (tmp_path / "o.png").exists()
