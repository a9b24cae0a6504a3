"""tileproc against the obvious alternatives on 4K photo-like frames, one run, side by side.

    python benchmarks/bench_images.py                 # full run, a few minutes
    python benchmarks/bench_images.py --quick         # smoke run, 1080p, < 30 s
    python benchmarks/bench_images.py --json out.json

Cases (N = the CPUs this process may use):

a. a custom pure-numpy filter that holds the GIL (5x5 box mean as shifted
   float32 adds, benchmarks/benchfilters.py): tileproc with 1 and N workers
   against the function on the whole frame in this process; throughput over a
   stream of frames (``Engine.map_frames``) and single-frame latency
   (``Engine.process``).
b. built-in ``blur``, ``boxblur`` and ``median`` with N workers against the
   OpenCV call on the whole frame with ``cv2.setNumThreads(N)``.
c. a naive ``multiprocessing.Pool.map`` over pickled strips with halo against
   tileproc, same filter, same number of processes.
d. a folder of 4K JPEGs through ``Engine.process_folder`` against a
   ``ProcessPoolExecutor(N)`` mapping read -> blur -> write over the files.

Every pair is timed interleaved (baseline, tileproc, baseline, ...) in this
run; the table shows medians and ratio = baseline time / tileproc time (above
1 means tileproc is faster). tileproc times include what a user pays: copying
the frame into shared memory and the result out into a new array.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchfilters, importable by every worker
sys.path.insert(0, str(HERE.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from benchfilters import blur_file, numpy_boxmean, pool_init, strip_task  # noqa: E402
from benchkit import OtherLoad, check_same, drain, interleaved, med_ms, proc_stats, say, stream_of, synth_frame  # noqa: E402
from machine import cpu_model

import filters  # noqa: E402
from tiler import Engine  # noqa: E402
from tiler.geometry import TileGrid, default_tile_shape  # noqa: E402

SIGMA = 2.0  # the blur of cases b and d
BOX_RADIUS = 2  # boxblur: 5x5
MEDIAN_SIZE = 5

# -- the machine -----------------------------------------------------------------


def machine() -> dict:
    import PIL

    return {
        "cpu": cpu_model(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cores_total": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_start": os.getloadavg()[0],
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
    }


# -- timing ------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    baseline: str
    base_ms: float
    tileproc_ms: float
    target: float | None  # minimum ratio, None: for information
    unit: str = "ms/frame"
    note: str = ""
    others_cores: float | None = None  # CPU used by other processes while the case ran
    base_all: list = field(default_factory=list)
    tileproc_all: list = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.base_ms / self.tileproc_ms

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio >= self.target


# -- cases -------------------------------------------------------------------------


def case_a(frame, frames, engines, n, repeats) -> list[Row]:
    """The GIL-holding numpy filter: 1 and N workers against the function in this process."""
    f = numpy_boxmean(radius=2)
    want = f.apply(frame)
    for w, e in engines.items():
        check_same(f"a: {w} worker(s)", e.process(frame, f), want)
        check_same(f"a: {w} worker(s), stream", next(iter(e.map_frames(frames[:1], f))), f.apply(frames[0]))

    grid = TileGrid(*frame.shape[:2], default_tile_shape(*frame.shape[:2], n, f.halo), f.halo)

    def tiled_here(fr):
        out = np.empty_like(fr)
        for t in grid:
            out[t.core.slices] = f.apply(fr[t.window.slices])[t.core_in_window.slices]
        return out

    check_same("a: tiled in-process", tiled_here(frame), want)
    rows = []
    stream = interleaved(
        {
            "direct": lambda: sum(1 for fr in frames if f.apply(fr) is not None),
            "tiled": lambda: sum(1 for fr in frames if tiled_here(fr) is not None),
            **{f"tp{w}": (lambda e=e: drain(e.map_frames(frames, f))) for w, e in engines.items()},
        },
        repeats,
    )
    latency = interleaved(
        {
            "direct": lambda: f.apply(frame) is not None,
            **{f"tp{w}": (lambda e=e: e.process(frame, f) is not None) for w, e in engines.items()},
        },
        2 * repeats,
    )
    base = "numpy fn, whole frame, 1 process"
    for kind, times in (("stream", stream), ("latency", latency)):
        for w in engines:
            target = 1 / 1.1 if w == 1 else 1.8
            rows.append(
                Row(
                    f"a numpy box5 {kind}, {w} worker{'s' if w > 1 else ''}",
                    base,
                    med_ms(times["direct"]),
                    med_ms(times[f"tp{w}"]),
                    target,
                    base_all=times["direct"],
                    tileproc_all=times[f"tp{w}"],
                    unit="ms/frame" if kind == "stream" else "ms",
                )
            )
    rows.append(
        Row(
            "a numpy box5 stream, same strips in 1 process (info)",
            base,
            med_ms(stream["direct"]),
            med_ms(stream["tiled"]),
            None,
            note="cache effect of strips alone, no workers",
            base_all=stream["direct"],
            tileproc_all=stream["tiled"],
        )
    )
    # Where the time goes: CPU and minor page faults per frame, once more over the stream.
    parts = []
    for label, run, pids in (
        ("in-process function", lambda: sum(1 for fr in frames if f.apply(fr) is not None), []),
        *(
            (f"tileproc {w} worker{'s' if w > 1 else ''}", (lambda e=e: drain(e.map_frames(frames, f))), e.pool.pids)
            for w, e in engines.items()
        ),
    ):
        before = [proc_stats(p) for p in (os.getpid(), *pids)]
        run()
        after = [proc_stats(p) for p in (os.getpid(), *pids)]
        cpu = [(b[0] - a[0]) / len(frames) for a, b in zip(before, after)]
        faults = [(b[1] - a[1]) / len(frames) for a, b in zip(before, after)]
        text = f"{label}: this process {cpu[0]:.0f} ms CPU, {faults[0] / 1e3:.1f}k page faults per frame"
        if pids:
            text += f"; workers {sum(cpu[1:]):.0f} ms CPU, {sum(faults[1:]) / 1e3:.1f}k page faults per frame"
        parts.append(text)
    rows[-1].note += "\n    " + "\n    ".join(parts)
    return rows


def case_b(frame, frames, engine, n, repeats) -> list[Row]:
    """Built-in filters on N workers against OpenCV's own threads on the whole frame."""
    cv2.setNumThreads(n)
    blur = filters.GaussianBlur(sigma=SIGMA)
    k = 2 * blur.halo + 1
    box = filters.BoxBlur(radius=BOX_RADIUS)
    kb = 2 * BOX_RADIUS + 1
    med = filters.Median(size=MEDIAN_SIZE)
    cases = [
        (
            "blur",
            f"blur:sigma={SIGMA:g}",
            blur,
            lambda fr: cv2.GaussianBlur(fr, (k, k), SIGMA, sigmaY=SIGMA, borderType=cv2.BORDER_REFLECT_101),
            f"cv2.GaussianBlur {k}x{k}, {n} threads",
            0.8,
        ),
        (
            "boxblur",
            f"boxblur:radius={BOX_RADIUS}",
            box,
            lambda fr: cv2.blur(fr, (kb, kb), borderType=cv2.BORDER_REFLECT_101),
            f"cv2.blur {kb}x{kb}, {n} threads",
            1.0,
        ),
        (
            "median",
            f"median:size={MEDIAN_SIZE}",
            med,
            lambda fr: cv2.medianBlur(fr, MEDIAN_SIZE),
            f"cv2.medianBlur {MEDIAN_SIZE}, {n} threads",
            1.0,
        ),
    ]
    rows = []
    try:
        for name, spec, flt, ocv, base, target in cases:
            got = engine.process(frame, flt)
            check_same(f"b: {name} vs the filter on the whole frame", got, flt.apply(frame))
            check_same(f"b: {name} vs OpenCV", got, ocv(frame))  # the same arithmetic: a fair race
            note = ""
            stream = interleaved(
                {
                    "cv": lambda: sum(1 for fr in frames if ocv(fr) is not None),
                    "tp": lambda: drain(engine.map_frames(frames, flt)),
                },
                repeats,
            )
            latency = interleaved(
                {
                    "cv": lambda: ocv(frame) is not None,
                    "tp": lambda: engine.process(frame, flt) is not None,
                },
                2 * repeats,
            )
            for kind, times in (("stream", stream), ("latency", latency)):
                rows.append(
                    Row(
                        f"b {spec} {kind}, {n} workers",
                        base,
                        med_ms(times["cv"]),
                        med_ms(times["tp"]),
                        target,
                        unit="ms/frame" if kind == "stream" else "ms",
                        note=note,
                        base_all=times["cv"],
                        tileproc_all=times["tp"],
                    )
                )
    finally:
        cv2.setNumThreads(1)
    return rows


def case_c(frame, frames, engine, pool, n, repeats) -> list[Row]:
    """A naive Pool.map over pickled strips (with halo) against tileproc, same filter."""
    f = numpy_boxmean(radius=2)
    halo = f.halo
    pieces = 4 * n

    def naive(fr):
        h = fr.shape[0]
        bounds = [round(i * h / pieces) for i in range(pieces + 1)]
        tasks = []
        for r0, r1 in zip(bounds, bounds[1:]):
            w0 = max(0, r0 - halo)
            tasks.append((f, fr[w0 : min(h, r1 + halo)], r0 - w0, r1 - r0))
        return np.concatenate(pool.map(strip_task, tasks, chunksize=1), axis=0)

    check_same("c: Pool.map vs whole frame", naive(frame), f.apply(frame))
    stream = interleaved(
        {
            "pool": lambda: sum(1 for fr in frames if naive(fr) is not None),
            "tp": lambda: drain(engine.map_frames(frames, f)),
        },
        repeats,
    )
    latency = interleaved(
        {
            "pool": lambda: naive(frame) is not None,
            "tp": lambda: engine.process(frame, f) is not None,
        },
        2 * repeats,
    )
    base = f"mp.Pool({n}).map, {pieces} pickled strips"
    return [
        Row(
            f"c numpy box5 stream, {n} workers",
            base,
            med_ms(stream["pool"]),
            med_ms(stream["tp"]),
            1.0,
            base_all=stream["pool"],
            tileproc_all=stream["tp"],
        ),
        Row(
            f"c numpy box5 latency, {n} workers",
            base,
            med_ms(latency["pool"]),
            med_ms(latency["tp"]),
            1.0,
            unit="ms",
            base_all=latency["pool"],
            tileproc_all=latency["tp"],
        ),
    ]


def case_d(frame, engine, n, files, repeats, tmp: Path, ctx) -> list[Row]:
    """A folder of JPEGs: tileproc's process_folder against ProcessPoolExecutor over the files."""
    from PIL import Image

    src = tmp / "jpegs"
    src.mkdir()
    for i, fr in enumerate(stream_of(frame, files)):
        Image.fromarray(fr).save(src / f"img{i:02d}.jpg", "JPEG", quality=90)
    out_tp, out_pp = tmp / "out_tileproc", tmp / "out_pool"
    out_pp.mkdir()
    names = sorted(p.name for p in src.iterdir())
    spec = f"blur:sigma={SIGMA:g}"

    def tileproc_run():
        report = engine.process_folder(src, out_tp, spec, overwrite=True)
        if not report.ok:
            raise SystemExit(f"d: tileproc failed: {report.failed[0].error}")
        return len(report.results)

    rows = []
    # One OpenCV thread per process: N processes on N cores (measured faster
    # than OpenCV's default of one thread per core in each process).
    with cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=pool_init, initargs=(1,)) as ex:
        list(ex.map(pool_init, [1] * n))  # started and warm

        def pool_run():
            return len(
                list(
                    ex.map(
                        blur_file, [str(src / m) for m in names], [str(out_pp / m) for m in names], [SIGMA] * len(names)
                    )
                )
            )

        times = interleaved({"pool": pool_run, "tp": tileproc_run}, repeats)
    same = all(np.array_equal(np.asarray(Image.open(out_tp / m)), np.asarray(Image.open(out_pp / m))) for m in names)
    size_tp = sum((out_tp / m).stat().st_size for m in names)
    size_pp = sum((out_pp / m).stat().st_size for m in names)
    rows.append(
        Row(
            f"d folder {files} JPEG {spec}, {n} workers",
            f"ProcessPoolExecutor({n}) over files",
            med_ms(times["pool"]),
            med_ms(times["tp"]),
            1.0,
            unit="ms/image",
            note=f"images/s: baseline {1e3 / med_ms(times['pool']):.2f}, tileproc {1e3 / med_ms(times['tp']):.2f}; "
            f"decoded outputs {'identical' if same else 'DIFFER'}; bytes {size_pp} vs {size_tp}",
            base_all=times["pool"],
            tileproc_all=times["tp"],
        )
    )
    return rows


def case_s(frame, n, repeats) -> list[dict]:
    """Small frames: the engine's parent-side shortcut against dispatching tiles.

    Frames under ``tiler.engine.INLINE_BELOW`` pixels are filtered in the parent
    (OpenCV with its default threads, one per core); this times both paths
    at each size, on a stream of 8 crops, to check where the constant sits.
    """
    from tiler.engine import INLINE_BELOW

    chains = {
        "numpy box5": numpy_boxmean(radius=2),
        f"blur:sigma={SIGMA:g}": filters.GaussianBlur(sigma=SIGMA),
        f"median:size={MEDIAN_SIZE}": filters.Median(size=MEDIAN_SIZE),
    }
    results = []
    cv2.setNumThreads(n)
    pool, inline = Engine(workers=n, inline_below=0), Engine(workers=n, inline_below=1 << 62)
    try:
        for side in (128, 192, 256, 384, 512):
            crops = [np.ascontiguousarray(frame[7 * i : 7 * i + side, 11 * i : 11 * i + side]) for i in range(8)]
            for name, c in chains.items():
                for e in (pool, inline):
                    drain(e.map_frames(crops[:2], c))
                t = interleaved(
                    {
                        "pool": lambda: drain(pool.map_frames(crops, c)),
                        "inline": lambda: drain(inline.map_frames(crops, c)),
                    },
                    repeats,
                )
                results.append(
                    {
                        "side": side,
                        "chain": name,
                        "pool_ms": med_ms(t["pool"]),
                        "inline_ms": med_ms(t["inline"]),
                        "default": "inline" if side * side < INLINE_BELOW else "pool",
                    }
                )
    finally:
        pool.close()
        inline.close()
        cv2.setNumThreads(1)
    return results


def small_table(results: list[dict]) -> str:
    from tiler.engine import INLINE_BELOW

    out = [
        f"small frames, ms/frame over a stream of 8 (INLINE_BELOW = {INLINE_BELOW} px):",
        f"  {'frame':9} {'chain':15} {'tiles on workers':>16} {'in the parent':>14} {'parent faster by':>16}  default",
    ]
    for r in results:
        out.append(
            f"  {r['side']}x{r['side']:<5} {r['chain']:15} {r['pool_ms']:16.2f} {r['inline_ms']:14.2f} "
            f"{r['pool_ms'] / r['inline_ms']:15.2f}x  {r['default']}"
        )
    return "\n".join(out)


# -- report --------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ("case", "baseline", "baseline ms", "tileproc ms", "ratio", "target", "met?")
    lines = []
    for r in rows:
        lines.append(
            (
                r.case,
                r.baseline,
                f"{r.base_ms:.1f}",
                f"{r.tileproc_ms:.1f}",
                f"{r.ratio:.2f}x",
                "-" if r.target is None else f">= {r.target:.2f}x",
                "-" if r.met is None else ("yes" if r.met else "NO"),
            )
        )
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    out = [fmt(head), "-+-".join("-" * w for w in widths)]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1080p, few frames and repeats (< 30 s)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--workers", type=int, default=None, help="N (default: usable CPUs)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per variant")
    ap.add_argument("--cases", default="abcds", help="which cases to run, e.g. 'ab' (s: small frames)")
    args = ap.parse_args(argv)

    n = args.workers or len(os.sched_getaffinity(0))
    if args.quick:
        height, width, n_frames, files, repeats = 1080, 1920, 4, 3, args.repeats or 2
    else:
        height, width, n_frames, files, repeats = 2160, 3840, 12, 10, args.repeats or 7
    cv2.setNumThreads(1)

    info = machine()
    say("tileproc benchmark: bench_images.py" + (" --quick (ratios not meaningful)" if args.quick else ""))
    for k in (
        "cpu",
        "cores_usable",
        "cores_total",
        "python",
        "numpy",
        "opencv",
        "pillow",
        "platform",
        "date",
        "loadavg_start",
        "OPENBLAS_CORETYPE",
    ):
        say(f"  {k:18} {info[k]}")
    say(
        f"  frame {height}x{width}x3 uint8 (synthetic, seed 2024); stream of {n_frames} frames; "
        f"N = {n}; medians of {repeats} repeats (latency: {2 * repeats})"
    )
    say()

    t_start = time.perf_counter()
    frame = synth_frame(height, width)
    frames = stream_of(frame, n_frames)
    rows: list[Row] = []
    small: list[dict] = []
    # Baseline pools are spawned, not forked: a child forked after OpenCV started its
    # threads can deadlock in OpenCV (seen here in cv2.setNumThreads).
    spawn = mp.get_context("spawn")
    pool = spawn.Pool(n) if "c" in args.cases else None
    tmp = Path(tempfile.mkdtemp(prefix="tileproc-bench-"))
    engines = {1: Engine(workers=1), n: Engine(workers=n)} if n > 1 else {1: Engine(workers=1)}
    try:
        for e in engines.values():
            e.process(frame, "invert")  # start the pool
        loads = {}
        for key, title, run in (
            ("a", "custom numpy filter", lambda: case_a(frame, frames, engines, n, repeats)),
            ("b", "built-ins against OpenCV threads", lambda: case_b(frame, frames, engines[n], n, repeats)),
            ("c", "naive multiprocessing.Pool", lambda: case_c(frame, frames, engines[n], pool, n, repeats)),
            ("d", "folder of JPEGs", lambda: case_d(frame, engines[n], n, files, max(2, repeats // 2), tmp, spawn)),
        ):
            if key in args.cases:
                load = OtherLoad()
                case_rows = run()
                loads[key] = load.cores()
                for r in case_rows:
                    r.others_cores = loads[key]
                rows += case_rows
                say(f"{key}. {title}: done (other processes used {loads[key]:.2f} of {n} cores meanwhile)")
        if "s" in args.cases:
            load = OtherLoad()
            small = case_s(frame, n, max(3, repeats // 2))
            loads["s"] = load.cores()
            say(
                f"s. small frames, in the parent or on the workers: done "
                f"(other processes used {loads['s']:.2f} of {n} cores meanwhile)"
            )
    finally:
        for e in engines.values():
            e.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(tmp, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()[0]
    info["seconds"] = round(time.perf_counter() - t_start, 1)

    say()
    say(table(rows))
    say()
    for r in rows:
        if r.note:
            say(f"  {r.case}: {r.note}")
    if small:
        say()
        say(small_table(small))
    targets = [r for r in rows if r.met is not None]
    others = ", ".join(f"{k} {v:.2f}" for k, v in loads.items())
    say(
        f"\ntargets met: {sum(r.met for r in targets)}/{len(targets)}; {info['seconds']} s; "
        f"cores used by other processes per case: {others} (of {n}); "
        f"load average {info['loadavg_start']:.2f} -> {info['loadavg_end']:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "config": {
                        "height": height,
                        "width": width,
                        "frames": n_frames,
                        "files": files,
                        "repeats": repeats,
                        "workers": n,
                        "quick": args.quick,
                    },
                    "rows": [{**asdict(r), "ratio": r.ratio, "met": r.met} for r in rows],
                    "small_frames": small,
                    "others_cores": loads,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
