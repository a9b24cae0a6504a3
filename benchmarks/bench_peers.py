"""tileproc against the libraries a user would reach for instead, on a custom filter, side by side.

    python benchmarks/bench_peers.py                  # 4K RGB, N = usable CPUs; 7 minutes on a busy 2-core machine
    python benchmarks/bench_peers.py --quick          # smoke run: 1080p, one chunk height each, < 60 s
    python benchmarks/bench_peers.py --json out.json  # also every timing as JSON

Two custom filters (benchmarks/benchfilters.py), each run over a stream of
3840x2160 RGB uint8 frames with N processes or threads:

* ``numpy_boxmean``: a 5x5 box mean as shifted float32 adds on whole tiles
  (ufunc-heavy; numpy releases the GIL inside its larger loops);
* ``rowloop_boxmean``: the same 5x5 mean as a Python loop over rows, about ten
  small numpy calls per row (GIL-bound: threads cannot overlap it).

Peers, each handed the same filter function (``f.apply``) and its halo:

* ``dask threads``: ``dask.array.from_array(frame, chunks=(rows, W, C))
  .map_overlap(f.apply, depth=(halo, 0, 0), boundary="none")``, computed with
  the threaded scheduler and ``num_workers=N``;
* ``dask processes``: the same graph on the multiprocessing scheduler with a
  kept ``ProcessPoolExecutor(N)`` (spawn), so no pool start is timed;
* ``skimage apply_parallel``: ``skimage.util.apply_parallel(f.apply, frame,
  chunks, depth, mode="none")`` with ``num_workers=N`` (dask threads inside);
* ``joblib loky``: the frame copied into a memmap in /dev/shm, full-width
  strips filtered by ``joblib.Parallel(n_jobs=N, backend="loky")`` workers
  straight into an output memmap, the result copied out (tileproc also copies
  in and out). The workers and the memmaps are kept across frames.

Every peer is tuned: each chunk height of a sweep (1 to 16 chunks per worker)
is timed on the stream, and the best is kept; the table shows it. Every
result (each peer at each height, and tileproc) is checked equal to the filter
applied to the whole frame, bit for bit, before anything is timed. Then
tileproc (``Engine(workers=N).map_frames``, its default strips) and each peer
at its best height take turns, ``--repeats`` rounds; medians. Ratio = peer
time / tileproc time: above 1, tileproc is faster.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchfilters, importable by every worker
sys.path.insert(0, str(HERE.parent))

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
from benchfilters import numpy_boxmean, rowloop_boxmean, strip_into  # noqa: E402
from benchkit import OtherLoad, check_same, drain, interleaved, med_ms, say, stream_of, synth_frame  # noqa: E402
from joblib import Parallel, delayed  # noqa: E402
from machine import describe, machine_info  # noqa: E402
from skimage.util import apply_parallel  # noqa: E402

from tiler import Engine  # noqa: E402

__all__ = ["PEERS", "Peers", "tune", "FILTERS"]

PEERS = ("dask threads", "dask processes", "skimage apply_parallel", "joblib loky")
FILTERS = {"numpy box5": numpy_boxmean(radius=2), "rowloop box5 (GIL-bound)": rowloop_boxmean(radius=2)}
PACKAGES = ("numpy", "opencv-python-headless", "dask", "scikit-image", "joblib")


class Peers:
    """The peers with ``n`` workers each, their pools and buffers kept across frames."""

    def __init__(self, n: int) -> None:
        self.n = n
        # spawn: a child forked after OpenCV started its threads can deadlock in OpenCV
        self._executor = cf.ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"))
        list(self._executor.map(abs, range(n)))  # started before anything is timed
        self._parallel = Parallel(n_jobs=n, backend="loky")
        self._parallel.__enter__()
        self._parallel(delayed(abs)(i) for i in range(n))
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._folder = Path(tempfile.mkdtemp(prefix="tileproc-bench-peers-", dir=shm))
        self._maps: dict[tuple, tuple[np.memmap, np.memmap]] = {}

    def close(self) -> None:
        self._parallel.__exit__(None, None, None)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._maps.clear()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> Peers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, peer: str, f, frame: np.ndarray, rows: int) -> np.ndarray:
        """``f`` over ``frame`` by ``peer`` in full-width chunks of ``rows`` rows."""
        if peer == "joblib loky":
            return self._joblib(f, frame, rows)
        if peer == "skimage apply_parallel":
            with dask.config.set(num_workers=self.n):
                return apply_parallel(
                    f.apply, frame, chunks=(rows, *frame.shape[1:]), depth=f.halo, mode="none", dtype=frame.dtype
                )
        chunks = da.from_array(frame, chunks=(rows, *frame.shape[1:]))
        depth = {0: f.halo, **{axis: 0 for axis in range(1, frame.ndim)}}
        lazy = chunks.map_overlap(f.apply, depth=depth, boundary="none", dtype=frame.dtype)
        if peer == "dask threads":
            return lazy.compute(scheduler="threads", num_workers=self.n)
        if peer == "dask processes":
            return lazy.compute(scheduler="processes", pool=self._executor)
        raise ValueError(f"unknown peer {peer!r}; one of {', '.join(PEERS)}")

    def _joblib(self, f, frame: np.ndarray, rows: int) -> np.ndarray:
        key = (frame.shape, frame.dtype.str)
        if key not in self._maps:
            i = len(self._maps)
            self._maps[key] = tuple(
                np.memmap(self._folder / f"{name}{i}", dtype=frame.dtype, shape=frame.shape, mode="w+")
                for name in ("in", "out")
            )
        src, dst = self._maps[key]
        src[...] = frame
        h = frame.shape[0]
        self._parallel(delayed(strip_into)(f, src, dst, top, min(h, top + rows)) for top in range(0, h, rows))
        return np.array(dst)


def chunk_heights(height: int, n: int, per_worker: tuple[int, ...]) -> list[int]:
    """Chunk heights giving about ``k * n`` full-width chunks for each ``k``."""
    return sorted({-(-height // (k * n)) for k in per_worker}, reverse=True)


def tune(
    peers: Peers, f, frames: list[np.ndarray], heights: list[int], repeats: int, names: tuple[str, ...] = PEERS
) -> dict[str, dict]:
    """Each peer's best chunk height over the stream: {peer: {"rows", "seconds", "sweep"}}.

    Every height's result is checked equal to ``f`` on the whole frame first.
    """
    want = f.apply(frames[0])
    best = {}
    for peer in names:
        for rows in heights:
            check_same(f"{peer}, {rows} rows, {f}", peers.run(peer, f, frames[0], rows), want)
        times = interleaved(
            {
                rows: (lambda rows=rows: sum(1 for fr in frames if peers.run(peer, f, fr, rows) is not None))
                for rows in heights
            },
            repeats,
        )
        sweep = {rows: med_ms(t) / 1e3 for rows, t in times.items()}
        rows = min(sweep, key=sweep.get)
        best[peer] = {"rows": rows, "seconds": sweep[rows], "sweep": sweep}
    return best


def race(
    engine: Engine, peers: Peers, f, frames: list[np.ndarray], best: dict[str, dict], repeats: int
) -> dict[str, list[float]]:
    """tileproc and each peer at its best height, taking turns: seconds per frame."""
    check_same(f"tileproc, {f}", next(iter(engine.map_frames(frames[:1], f))), f.apply(frames[0]))
    variants: dict[str, Callable[[], int]] = {"tileproc": lambda: drain(engine.map_frames(frames, f))}
    for peer, b in best.items():
        variants[peer] = lambda peer=peer, rows=b["rows"]: sum(
            1 for fr in frames if peers.run(peer, f, fr, rows) is not None
        )
    return interleaved(variants, repeats)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1080p, one chunk height, 1 repeat (< 60 s)")
    ap.add_argument("--workers", type=int, default=None, help="N (default: usable CPUs)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds of the race (default 5; quick 1)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    n = args.workers or len(os.sched_getaffinity(0))
    if args.quick:
        height, width, n_frames, per_worker, repeats, sweep_repeats = 1080, 1920, 2, (4,), args.repeats or 1, 1
    else:
        height, width, n_frames, per_worker, repeats, sweep_repeats = 2160, 3840, 4, (1, 2, 4, 8, 16), 5, 2
        repeats = args.repeats or repeats
    info = machine_info(PACKAGES)
    say("tileproc benchmark: bench_peers.py" + (" --quick (ratios not meaningful)" if args.quick else ""))
    for line in describe(info):
        say(line)
    heights = chunk_heights(height, n, per_worker)
    say(
        f"  frames {height}x{width}x3 uint8 (synthetic), stream of {n_frames}; N = {n}; chunk heights swept "
        f"{heights} ({sweep_repeats} round(s)); race: medians of {repeats} rounds\n"
    )
    t_start = time.perf_counter()
    frames = stream_of(synth_frame(height, width), n_frames)
    results = {}
    with Engine(workers=n) as engine, Peers(n) as peers:
        engine.process(frames[0], "invert")  # the pool started
        for name, f in FILTERS.items():
            load = OtherLoad()
            best = tune(peers, f, frames, heights, sweep_repeats)
            times = race(engine, peers, f, frames, best, repeats)
            results[name] = {"best": best, "times": times, "others_cores": load.cores()}
            say(f"{name}: done (other processes used {results[name]['others_cores']:.2f} of {n} cores meanwhile)")
    info["loadavg_end"] = round(os.getloadavg()[0], 2)
    info["seconds"] = round(time.perf_counter() - t_start, 1)

    say()
    head = f"{'filter':26} {'peer':24} {'best rows':>9} {'peer ms':>9} {'tileproc ms':>12} {'ratio':>7}"
    say(head)
    say("-" * len(head))
    for name, r in results.items():
        tp = med_ms(r["times"]["tileproc"])
        for peer in PEERS:
            ms = med_ms(r["times"][peer])
            say(f"{name:26} {peer:24} {r['best'][peer]['rows']:9d} {ms:9.1f} {tp:12.1f} {ms / tp:6.2f}x")
        best_peer = min(PEERS, key=lambda p: med_ms(r["times"][p]))
        ratio = med_ms(r["times"][best_peer]) / tp
        say(
            f"{'':26} best peer: {best_peer}, ratio {ratio:.2f}x (target >= 1.2x: {'met' if ratio >= 1.2 else 'not met'})"
        )
    say("\nchunk-height sweeps, ms per frame (rows: ms):")
    for name, r in results.items():
        for peer in PEERS:
            sweep = ", ".join(f"{rows}: {1e3 * s:.1f}" for rows, s in r["best"][peer]["sweep"].items())
            say(f"  {name}, {peer}: {sweep}")
    say(
        f"\nall results equal to the filter on the whole frame; {info['seconds']} s; "
        f"load average {info['loadavg_start']} -> {info['loadavg_end']}"
    )
    if args.json:
        out = {
            "machine": info,
            "config": {"height": height, "width": width, "frames": n_frames, "workers": n, "repeats": repeats},
            "results": results,
        }
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
