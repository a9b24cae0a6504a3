"""How tileproc scales with cores: 1, 2, 4, 8 and N workers against OpenCV's threads, the peers and ffmpeg.

    python benchmarks/scaling.py                   # 4K stream + 1080p video; a few minutes on 16 cores
    python benchmarks/scaling.py --quick           # smoke run: 1080p frames, 360p video, < 60 s on 2 cores
    python benchmarks/scaling.py --json out.json   # also every timing as JSON
    python benchmarks/scaling.py --counts 1,16     # other worker counts

N = the CPUs this process may use; the counts are 1, 2, 4, 8 and N, capped at
N. Each count runs in a fresh child process pinned to its first n CPUs
(``sched_setaffinity``, inherited by every worker, peer pool and ffmpeg it
starts), so every row measures n cores, whatever the machine has. Rows, on a
stream of 3840x2160 RGB uint8 frames (frames per second, medians of rounds in
which tileproc and its baseline take turns):

* ``numpy box5``: ``benchfilters.numpy_boxmean`` (a user's numpy filter);
* ``rowloop box5``: ``benchfilters.rowloop_boxmean`` (a GIL-bound user filter);
  baseline for both: the best of the peers (dask threads, skimage
  ``apply_parallel``, joblib/loky over memmapped strips; see bench_peers.py),
  each at the better of two chunk heights (1 and 4 chunks per worker);
* ``blur:sigma=2``, ``boxblur:radius=4``, ``median:size=5`` (built-ins) against
  ``cv2.GaussianBlur`` 17x17, ``cv2.blur`` 9x9 and ``cv2.medianBlur`` 5 on the
  whole frame with ``cv2.setNumThreads(n)``;
* ``video blur:sigma=2``: ``tiler.process_video`` on a 1920x1080 H.264 clip
  (CRF 20, preset medium) against ``ffmpeg -vf gblur=sigma=2`` with the same
  libx264 settings and ``-threads n``.

Results are checked equal where the arithmetic is the same (the custom filters
against every peer; the built-ins against OpenCV where tileproc uses the same
kernel: the "same" column). Then the targets, judged at N: box blur and median
at >= 8x a single-threaded OpenCV call (set for 16 cores), blur >= 1.2x
OpenCV's N threads, the numpy filter at N workers >= 0.6 N x its one-worker
throughput.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # benchfilters, importable by every worker
sys.path.insert(0, str(HERE.parent))

PACKAGES = ("numpy", "opencv-python-headless", "pillow", "imageio-ffmpeg", "dask", "scikit-image", "joblib")
BUILTINS = {  # row: (tileproc chain, OpenCV baseline's name)
    "blur:sigma=2": "cv2.GaussianBlur 17x17",
    "boxblur:radius=4": "cv2.blur 9x9",
    "median:size=5": "cv2.medianBlur 5",
}
CUSTOM = ("numpy box5", "rowloop box5")
VIDEO = "video blur:sigma=2"
CRF, PRESET = 20, "medium"


def opencv_call(chain: str, threads: int):
    """The OpenCV whole-frame call that does what ``chain`` does, with ``threads`` threads."""
    import cv2

    cv2.setNumThreads(threads)
    reflect = cv2.BORDER_REFLECT_101
    return {
        "blur:sigma=2": lambda fr: cv2.GaussianBlur(fr, (17, 17), 2.0, sigmaY=2.0, borderType=reflect),
        "boxblur:radius=4": lambda fr: cv2.blur(fr, (9, 9), borderType=reflect),
        "median:size=5": lambda fr: cv2.medianBlur(fr, 5),
    }[chain]


def ffmpeg_gblur(src: Path, dst: Path, threads: int) -> list[str]:
    """``ffmpeg -vf gblur=sigma=2`` with tileproc's x264 settings and ``-threads n`` for the encoder."""
    from tiler.io.video import ffmpeg_exe

    return [
        ffmpeg_exe(),
        *("-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(src), "-vf", "gblur=sigma=2"),
        *("-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF), "-pix_fmt", "yuv420p", "-threads", str(threads)),
        *("-an", str(dst)),
    ]


def make_clip(path: Path, width: int, height: int, seconds: float) -> int:
    """A noisy H.264 test pattern at 30 fps (no audio); returns its frame count."""
    from tiler.io.video import ffmpeg_exe

    source = f"testsrc2=size={width}x{height}:rate=30:duration={seconds},noise=alls=8:allf=t+u"
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
        + ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return round(30 * seconds)


# -- one worker count, in a child process pinned to n CPUs ---------------------------------


def child(n: int, config: dict) -> dict:
    """Every row for ``n`` workers; this process is already pinned to ``n`` CPUs."""
    import numpy as np
    from bench_peers import Peers, chunk_heights, tune
    from benchfilters import numpy_boxmean, rowloop_boxmean
    from benchkit import OtherLoad, check_same, drain, interleaved, med_ms, stream_of, synth_frame

    import tiler
    from tiler import Engine

    repeats = config["repeats"]
    frames = stream_of(synth_frame(config["height"], config["width"]), config["frames"])
    rows: list[dict] = []
    load = OtherLoad()
    with Engine(workers=n) as engine, Peers(n) as peers:
        engine.process(frames[0], "invert")  # the pool started
        heights = chunk_heights(config["height"], n, (1, 4))
        for name, f in zip(CUSTOM, (numpy_boxmean(radius=2), rowloop_boxmean(radius=2))):
            best = tune(peers, f, frames, heights, 1, ("dask threads", "skimage apply_parallel", "joblib loky"))
            peer = min(best, key=lambda p: best[p]["seconds"])
            check_same(f"{name}, {n} workers", engine.process(frames[0], f), f.apply(frames[0]))
            t = interleaved(
                {
                    "tileproc": lambda: drain(engine.map_frames(frames, f)),
                    "baseline": lambda: sum(
                        1 for fr in frames if peers.run(peer, f, fr, best[peer]["rows"]) is not None
                    ),
                },
                repeats,
            )
            rows.append(_row(name, n, t, f"{peer}, {best[peer]['rows']} rows", True, med_ms))
        for chain, base in BUILTINS.items():
            ocv = opencv_call(chain, n)
            got = engine.process(frames[0], chain)
            want = ocv(frames[0])
            same = bool(np.array_equal(got, want))
            if not same:  # another kernel than OpenCV's: say how far apart, time anyway
                same = f"max diff {int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max())}"
            t = interleaved(
                {
                    "tileproc": lambda: drain(engine.map_frames(frames, chain)),
                    "baseline": lambda: sum(1 for fr in frames if ocv(fr) is not None),
                },
                repeats,
            )
            rows.append(_row(chain, n, t, f"{base}, {n} thread{'s' if n > 1 else ''}", same, med_ms))
    if config.get("clip"):
        src, clip_frames = Path(config["clip"]), config["clip_frames"]
        with tempfile.TemporaryDirectory(prefix="tileproc-bench-scaling-") as tmp:
            dst_tp, dst_ff = Path(tmp) / "tileproc.mp4", Path(tmp) / "ffmpeg.mp4"

            def tileproc_video() -> int:
                tiler.process_video(src, dst_tp, "blur:sigma=2", workers=n, crf=CRF, preset=PRESET, overwrite=True)
                return clip_frames

            def ffmpeg_video() -> int:
                subprocess.run(ffmpeg_gblur(src, dst_ff, n), check=True, stdin=subprocess.DEVNULL)
                return clip_frames

            t = interleaved({"tileproc": tileproc_video, "baseline": ffmpeg_video}, config["video_repeats"])
            rows.append(_row(VIDEO, n, t, f"ffmpeg gblur, -threads {n}", "n/a: gblur is IIR", med_ms))
    others = round(load.cores(), 2)
    for r in rows:
        r["others_cores"] = others
    return {"n": n, "rows": rows}


def _row(case: str, n: int, times: dict, baseline: str, same, med_ms) -> dict:
    return {
        "case": case,
        "workers": n,
        "tileproc_fps": 1e3 / med_ms(times["tileproc"]),
        "baseline": baseline,
        "baseline_fps": 1e3 / med_ms(times["baseline"]),
        "same": same,
        "tileproc_s": times["tileproc"],
        "baseline_s": times["baseline"],
    }


# -- the parent: one child per count, then the table ------------------------------------------


def targets(rows: list[dict], n: int) -> list[tuple[str, float, float, str]]:
    """(target, measured, needed, note) at the largest count."""
    at = {(r["case"], r["workers"]): r for r in rows}
    out = []
    note16 = "" if n == 16 else f" (set for 16 cores; here N = {n})"
    for chain in ("boxblur:radius=4", "median:size=5"):
        if (chain, n) in at and (chain, 1) in at:
            got = at[chain, n]["tileproc_fps"] / at[chain, 1]["baseline_fps"]
            out.append((f"{chain} at N workers vs a single-threaded OpenCV call", got, 8.0, note16))
    if ("blur:sigma=2", n) in at:
        r = at["blur:sigma=2", n]
        out.append((f"blur:sigma=2 stream vs OpenCV's {n} threads", r["tileproc_fps"] / r["baseline_fps"], 1.2, ""))
    if ("numpy box5", n) in at and ("numpy box5", 1) in at:
        got = at["numpy box5", n]["tileproc_fps"] / at["numpy box5", 1]["tileproc_fps"]
        out.append((f"numpy box5, {n} workers vs 1 worker", got, 0.6 * n, ""))
    return out


def report(rows: list[dict], info: dict, n: int) -> list[str]:
    head = f"{'workers':>7}  {'case':20} {'tileproc fps':>12}  {'baseline':44} {'fps':>8} {'ratio':>7}  same"
    lines = [head, "-" * (len(head) + 14)]
    for r in rows:
        ratio = r["tileproc_fps"] / r["baseline_fps"]
        lines.append(
            f"{r['workers']:>7}  {r['case']:20} {r['tileproc_fps']:12.2f}  {r['baseline']:44} "
            f"{r['baseline_fps']:8.2f} {ratio:6.2f}x  {'yes' if r['same'] is True else r['same']}"
        )
    lines += ["", "targets (at N):"]
    for what, got, need, note in targets(rows, n):
        lines.append(f"  {what}: {got:.2f}x, target >= {need:.2f}x: {'met' if got >= need else 'not met'}{note}")
    others = sorted({(r["workers"], r["others_cores"]) for r in rows})
    lines.append("cores used by other processes while each count ran: " + ", ".join(f"{w}: {c}" for w, c in others))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1080p frames, 360p video, 1 round (< 60 s)")
    ap.add_argument("--counts", help="worker counts, comma-separated (default 1,2,4,8,N capped at N)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per row (default 3; quick 1)")
    ap.add_argument("--no-video", action="store_true", help="skip the video row")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write every timing as JSON")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    missing = [m for m in ("dask", "skimage", "joblib") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"scaling.py: the peers need the bench extra (pip install -e '.[bench]'): {', '.join(missing)} missing")
        return 2
    if args.child:
        n, config_path = int(args.child[0]), Path(args.child[1])
        config = json.loads(config_path.read_text())
        os.sched_setaffinity(0, config["cpus"][:n])
        config_path.with_suffix(f".{n}.out").write_text(json.dumps(child(n, config)))
        return 0

    from benchkit import say
    from machine import describe, machine_info

    cpus = sorted(os.sched_getaffinity(0))
    big_n = len(cpus)
    counts = [int(c) for c in args.counts.split(",")] if args.counts else [c for c in (1, 2, 4, 8) if c < big_n]
    counts = sorted({c for c in counts if 1 <= c <= big_n} | ({big_n} if not args.counts else set()))
    n = max(counts)
    if args.quick:
        config = {"height": 1080, "width": 1920, "frames": 3, "repeats": args.repeats or 1, "video_repeats": 1}
        clip_size = (640, 360, 1.0)
    else:
        config = {"height": 2160, "width": 3840, "frames": 8, "repeats": args.repeats or 3, "video_repeats": 3}
        clip_size = (1920, 1080, 4.0)  # 120 frames: the probe and the encoders' start and flush weigh little
    info = machine_info(PACKAGES, ffmpeg=True)
    say("tileproc benchmark: scaling.py" + (" --quick (numbers not meaningful)" if args.quick else ""))
    for line in describe(info):
        say(line)
    t_start = time.perf_counter()
    all_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tileproc-bench-scaling-") as tmp:
        config["cpus"] = cpus
        if not args.no_video:
            clip = Path(tmp) / "clip.mp4"
            config["clip"], config["clip_frames"] = str(clip), make_clip(clip, *clip_size)
        say(
            f"  frames {config['height']}x{config['width']}x3 uint8, stream of {config['frames']}, "
            f"medians of {config['repeats']} rounds; video "
            + ("skipped" if args.no_video else f"{clip_size[0]}x{clip_size[1]} H.264, {config['clip_frames']} frames, ")
            + ("" if args.no_video else f"CRF {CRF} {PRESET}, {config['video_repeats']} rounds")
            + f"; counts {counts}\n"
        )
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(config))
        for c in counts:
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(c), str(config_path)],
                check=True,
                stdin=subprocess.DEVNULL,
            )
            result = json.loads(config_path.with_suffix(f".{c}.out").read_text())
            all_rows += result["rows"]
            say(
                f"  {c} worker{'s' if c > 1 else ''} on {c} CPU{'s' if c > 1 else ''}: {time.perf_counter() - t0:.0f} s"
            )
    all_rows.sort(key=lambda r: ((*CUSTOM, *BUILTINS, VIDEO).index(r["case"]), r["workers"]))
    info["loadavg_end"] = round(os.getloadavg()[0], 2)
    info["seconds"] = round(time.perf_counter() - t_start, 1)
    say()
    for line in report(all_rows, info, n):
        say(line)
    say(f"{info['seconds']} s; load average {info['loadavg_start']} -> {info['loadavg_end']}")
    if args.json:
        config.pop("clip", None)
        args.json.write_text(json.dumps({"machine": info, "config": config, "rows": all_rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
