"""tiler.launcher: workers start without touching the host and without its ``__main__``.

Promise 9: tileproc changes nothing process-wide in its host, even for a moment.
The host-facing cases run as the user would: ``python -c``, a script on stdin,
a script without a main guard, the CLI from a folder holding a ``filters/`` of
its own, and a daemon process (as Dask's workers are).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np

import tiler
from tiler.engine import Engine
from tiler.launcher import zygote_pids

FRAME = np.arange(400 * 400, dtype=np.uint32).astype(np.uint8).reshape(400, 400)
SCRIPT = textwrap.dedent(
    """
    import numpy as np, tiler
    frame = np.arange(400 * 400, dtype=np.uint32).astype(np.uint8).reshape(400, 400)
    out = tiler.process(frame, "invert", workers=2, tile_size=100)
    print("ok", int((out == 255 - frame).all()))
    """
)


def run_python(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, **kw)


def assert_clean(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok", "1"], r.stdout + r.stderr[-2000:]
    assert r.stderr == "", r.stderr[-2000:]


def _mp_state() -> tuple:
    from multiprocessing import forkserver

    return (
        dict(multiprocessing.current_process()._config),
        tuple(getattr(forkserver._forkserver, "_preload_modules", None) or ()),
        multiprocessing.get_start_method(allow_none=True),
    )


def test_a_host_thread_sees_no_change_to_environment_or_multiprocessing_during_runs():
    env0, mp0 = dict(os.environ), _mp_state()
    seen: list[str] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if dict(os.environ) != env0:
                seen.append("environment changed")
            if _mp_state() != mp0:
                seen.append("multiprocessing state changed")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for threads in (1, 2):  # a fresh launcher for each thread count
            with Engine(workers=2, threads=threads, inline_below=0, builtins_in_process=False, tile_size=100) as e:
                np.testing.assert_array_equal(e.process(FRAME, "invert"), 255 - FRAME)
    finally:
        stop.set()
        watcher.join()
        sys.setswitchinterval(old)
    assert seen == []
    assert dict(os.environ) == env0 and _mp_state() == mp0


def test_workers_get_their_thread_limits_without_the_host_having_them():
    import faultfilters as ff

    assert "OMP_NUM_THREADS" not in os.environ or os.environ["OMP_NUM_THREADS"] != "3"
    with Engine(workers=1, threads=3, inline_below=0, builtins_in_process=False) as e:
        assert set(np.unique(e.process(np.zeros((64, 64), np.uint8), ff.report_threads))) == {3}


def test_python_dash_c_works():
    assert_clean(run_python(["-c", SCRIPT]))


def test_a_script_on_stdin_works():
    assert_clean(run_python(["-"], input=SCRIPT))


def test_a_script_without_a_main_guard_works(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(SCRIPT)
    assert_clean(run_python([str(script)], cwd=tmp_path))


def test_a_daemon_process_starts_workers_and_stays_a_daemon():
    code = (
        "import multiprocessing as mp\nmp.current_process()._config['daemon'] = True  # as Dask starts its workers\n"
        + SCRIPT
        + "print(mp.current_process()._config['daemon'])\n"
    )
    r = run_python(["-c", code])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok", "1", "True"], r.stdout + r.stderr[-2000:]


def test_cli_from_a_folder_with_its_own_filters_package(tmp_path):
    from PIL import Image

    (tmp_path / "filters").mkdir()  # the user's own, as a namespace folder...
    (tmp_path / "filters" / "notes.txt").write_text("mine")
    Image.fromarray(FRAME).save(tmp_path / "a.png")
    r = subprocess.run(
        [sys.executable, "-m", "tiler", "a.png", "-f", "invert", "-w", "2", "--tile-size", "100", "-q"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr == ""
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.tileproc.png")), 255 - FRAME)


def test_worker_start_is_a_fork_of_the_warm_launcher():
    """Why starting a pool is cheap: workers are forked from one warm launcher (numpy, OpenCV and the
    filters already imported), which a second engine reuses, instead of starting interpreters."""

    def parent(pid: int) -> int:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])

    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        e.process(FRAME, "invert")
        first = {parent(pid) for pid in e.pool.pids}
        (launcher,) = first
        assert launcher in zygote_pids() and launcher != os.getpid()
    with Engine(workers=2, inline_below=0, builtins_in_process=False) as e:
        e.process(FRAME, "invert")
        assert {parent(pid) for pid in e.pool.pids} == first  # the same warm launcher, not a new one
    with Engine(workers=2, inline_below=0, builtins_in_process=False, start_method="spawn") as e:
        e.process(FRAME, "invert")
        assert {parent(pid) for pid in e.pool.pids} == {os.getpid()}  # spawn: fresh interpreters of this process


def test_module_level_api_still_works_in_process():
    np.testing.assert_array_equal(tiler.process(FRAME, "invert", workers=2, tile_size=100), 255 - FRAME)
