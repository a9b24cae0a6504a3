"""What the engine's copies cost, and what avoiding them buys: 4K RGB uint8, one run.

    python benchmarks/bench_copies.py              # a few minutes on 2 cores
    python benchmarks/bench_copies.py --quick      # smoke run, < 1 minute

For ``blur:sigma=2``, ``boxblur:radius=4`` and ``median:size=5`` with N workers
(the CPUs this process may use), each way of handing frames to the engine is
timed against OpenCV on the whole frame with ``cv2.setNumThreads(N)``
(``GaussianBlur`` 17x17, ``blur`` 9x9, ``medianBlur`` 5; OpenCV threads only the
first of the three itself), interleaved in this run (baseline, variants,
baseline, ...). Two engines: the default, which runs chains of built-ins on N
threads of this process (``threads``), and one that sends their tiles to N
worker processes (``builtins_in_process=False``, ``workers``):

* ``process``: ``Engine.process(frame)``. On workers, copies by strips: tasks
  are sent as their rows arrive, and each finished task's rows copied out meanwhile;
* ``out=``: the same into a caller's array (no new array to fault in);
* ``empty + out=``: the frame filled into ``Engine.empty`` (no copy in);
* ``two copies`` (workers): the frame copied whole into a slot, then filtered,
  then the result copied whole into a new array (the engine's array path before
  strips, rebuilt here from :class:`tiler.scheduler.Frame` steps);
* ``stream``: throughput of ``map_frames`` over a stream of frames, copies
  (``copy=True``) against ``Engine.empty`` inputs and ``copy=False`` results.

Also the start of a job filtered entirely in this process (a 128x128 frame of
built-ins), with and without starting the workers first.

The table shows medians over the repeats: wall ms, the parent's CPU ms, the
CPU ms of the parent and its workers together (on a loaded machine the CPU
figures are steadier than wall times), and ratio = OpenCV wall time / tileproc
wall time (above 1: tileproc is faster).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from machine import cpu_model  # noqa: E402

from tiler import Engine  # noqa: E402
from tiler.pool import default_workers  # noqa: E402
from tiler.scheduler import Frame, Inline  # noqa: E402

CASES = {
    "blur:sigma=2": lambda a: cv2.GaussianBlur(a, (17, 17), 2.0, borderType=cv2.BORDER_REFLECT_101),
    "boxblur:radius=4": lambda a: cv2.blur(a, (9, 9), borderType=cv2.BORDER_REFLECT_101),
    "median:size=5": lambda a: cv2.medianBlur(a, 5),
}


WORKERS: list[int] = []  # the pids whose CPU counts with this process's


def workers_cpu() -> float:
    """CPU seconds the workers have run (the scheduler's nanosecond count, not 10 ms ticks)."""
    total = 0
    for pid in WORKERS:
        with open(f"/proc/{pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def timed(fn: Callable[[], object]) -> tuple[float, float, float]:
    """(wall, parent CPU, parent + workers CPU) seconds of one call."""
    w, c, k = time.perf_counter(), time.process_time(), workers_cpu()
    fn()
    parent = time.process_time() - c
    return time.perf_counter() - w, parent, parent + workers_cpu() - k


def two_copies(engine: Engine, frame: np.ndarray, chain: str) -> np.ndarray:
    """Copy in whole, filter, copy out whole: the array path without strips."""

    def load(src, dst):
        src[...] = frame

    def store(src, dst):
        return dst.copy()

    (done,) = engine.run([Frame("frame", frame.shape, frame.dtype, load=Inline(load), store=Inline(store))], chain)
    return done.value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and frames")
    parser.add_argument("--workers", type=int, default=default_workers())
    args = parser.parse_args(argv)
    repeats, stream = (5, 4) if args.quick else (15, 12)
    n = args.workers
    cv2.setNumThreads(n)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {n} workers; Python {platform.python_version()}")
    print(f"numpy {np.__version__}, OpenCV {cv2.__version__}; 4K RGB uint8, medians of {repeats}")
    print()
    print(f"{'job':<18} {'way':<24} {'wall ms':>8} {'parent CPU ms':>14} {'all CPU ms':>11} {'vs OpenCV':>10}")
    with Engine(workers=n) as here, Engine(workers=n, builtins_in_process=False) as engine:
        WORKERS[:] = engine.pool.pids
        shared = engine.empty(frame.shape, frame.dtype)
        shared[...] = frame
        out = np.empty_like(frame)
        # one more than in flight: the loop's variable still holds a result when its frame comes round
        inputs = [engine.empty(frame.shape, frame.dtype) for _ in range(engine.frames_in_flight + 1)]
        for a in inputs:
            a[...] = frame
        for chain, cv in CASES.items():
            np.testing.assert_array_equal(engine.process(frame, chain), two_copies(engine, frame, chain))
            np.testing.assert_array_equal(engine.process(frame, chain), here.process(frame, chain))
            ways: dict[str, Callable[[], object]] = {
                "OpenCV": lambda cv=cv: cv(frame),
                "threads: process": lambda c=chain: here.process(frame, c),
                "threads: out=": lambda c=chain: here.process(frame, c, out=out),
                "workers: two copies": lambda c=chain: two_copies(engine, frame, c),
                "workers: process": lambda c=chain: engine.process(frame, c),
                "workers: out=": lambda c=chain: engine.process(frame, c, out=out),
                "workers: empty + out=": lambda c=chain: engine.process(shared, c, out=out),
            }
            for way in ways.values():  # warm up: pool, slots, page faults
                way()
            times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in ways}
            for _ in range(repeats):
                for k, way in ways.items():
                    times[k].append(timed(way))

            def streamed(copy: bool, c=chain, on=engine) -> None:
                frames = [frame] * stream if copy else [inputs[i % len(inputs)] for i in range(stream)]
                for _ in on.map_frames(frames, c, copy=copy):
                    pass

            s_ways = {
                "OpenCV stream": lambda cv=cv: [cv(frame) for _ in range(stream)],
                "threads: stream": lambda: streamed(True, on=here),
                "workers: stream, copies": lambda: streamed(True),
                "workers: stream, none": lambda: streamed(False),
            }
            for way in s_ways.values():
                way()
            s_times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in s_ways}
            for _ in range(max(3, repeats // 3)):
                for k, way in s_ways.items():
                    s_times[k].append(timed(way))
            _rows(chain, times, "OpenCV", 1)
            _rows(chain, s_times, "OpenCV stream", stream)
    _start_rows(repeats)
    return 0


def _rows(chain: str, times: dict, baseline: str, per: int) -> None:
    base = statistics.median(t[0] for t in times[baseline])
    for k, ts in times.items():
        wall, cpu, every = (statistics.median(t[i] for t in ts) / per for i in range(3))
        ratio = base / per / wall
        print(f"{chain:<18} {k:<24} {wall * 1e3:8.1f} {cpu * 1e3:14.1f} {every * 1e3:11.1f} {ratio:9.2f}x")


def _start_rows(repeats: int) -> None:
    """A small job of built-ins, on a fresh engine: no workers started, or started first."""
    small = np.random.default_rng(1).integers(0, 256, (128, 128, 3), dtype=np.uint8)

    WORKERS.clear()

    def lazy() -> None:
        with Engine(workers=2) as e:
            e.process(small, "blur:sigma=2")

    def eager() -> None:
        with Engine(workers=2) as e:
            e.pool  # noqa: B018 - start the workers, as every job did before
            e.process(small, "blur:sigma=2")

    lazy(), eager()
    runs: dict[str, list[float]] = {"workers started": [], "no workers": []}
    for _ in range(max(3, repeats // 3)):
        runs["workers started"].append(timed(eager)[0])
        runs["no workers"].append(timed(lazy)[0])
    eager_ms, lazy_ms = (statistics.median(v) * 1e3 for v in runs.values())
    print()
    print(
        f"Engine(workers=2) + process(128x128, blur): workers started first {eager_ms:.1f} ms, "
        f"none started {lazy_ms:.1f} ms ({eager_ms / lazy_ms:.1f}x)"
    )


if __name__ == "__main__":
    raise SystemExit(main())
