"""Streaming pixels: the bundled ffmpeg through pipes (tileproc's reader and writer) against PyAV in process.

    python benchmarks/bench_video_io.py            # 1080p H.264, 60 frames, 5 rounds (medians)
    python benchmarks/bench_video_io.py --quick    # 640x360, 30 frames, 3 rounds

Decode: every frame to an RGB (H, W, 3) uint8 buffer. ``pipe``: ``VideoReader.readinto``
(ffmpeg decodes and hands over the yuv420p planes, which tiler/io/yuv.py converts into the
buffer); ``pipe, ffmpeg's conversion``: the same reader with that turned off
(``reader.planes = None``: ffmpeg converts with swscale's exact path, the bytes land in the
buffer), as for the formats tiler/io/yuv.py leaves to ffmpeg; ``pyav``:
``container.decode`` with FFmpeg's frame threads, then swscale's exact conversion (the
reader's filter string for the formats it leaves to ffmpeg: accurate rounding, full chroma,
the source's matrix) in a PyAV filter graph, to compare with the second row; for context, PyAV's default ``frame.to_ndarray(format="rgb24")``, a faster but
coarser conversion that tileproc does not use.
Encode: the same frames to H.264 (libx264, CRF 18, preset veryfast, yuv420p) in MP4.
``pipe``: ``VideoWriter``; ``pyav``: ``VideoFrame.from_ndarray`` -> ``stream.encode`` -> ``mux``.
Cases are interleaved, one of each per round; the table shows medians and the ratio
PyAV / pipe measured in the same run, with the machine that made them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model  # noqa: E402

from tiler.io.video import VideoReader, VideoWriter, _decode_filters, ffmpeg_exe, probe_video  # noqa: E402


def make_clip(path: Path, size: str, frames: int) -> None:
    subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s={size}:r=30", "-frames:v", str(frames),
         "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )  # fmt: skip


def decode_pipe(info, own_conversion: bool = True) -> np.ndarray:
    buf = np.empty(info.frame_shape, np.uint8)
    r = VideoReader(info)
    if not own_conversion:
        r.planes = None  # ffmpeg converts to rgb24 itself (swscale, exact flags)
    with r:
        while r.readinto(buf):
            pass
    return buf


def decode_pyav(info) -> np.ndarray:
    """PyAV decoding, converted to RGB by the reader's own filters (accurate swscale, the source's matrix)."""
    with av.open(str(info.path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=s)]
        for part in _decode_filters(info, np.dtype(np.uint8)).split(","):
            name, _, options = part.partition("=")
            chain.append(graph.add(name, options or None))
        chain.append(graph.add("buffersink"))
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        graph.configure()
        for frame in c.decode(s):
            graph.push(frame)
            out = graph.pull().to_ndarray()
    return out


def decode_pyav_plain(info) -> np.ndarray:
    """Context: PyAV's default RGB conversion (swscale's fast path, not what tileproc needs)."""
    with av.open(str(info.path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for frame in c.decode(s):
            out = frame.to_ndarray(format="rgb24")
    return out


def encode_pipe(info, frames: np.ndarray, dst: Path) -> None:
    with VideoWriter(dst, info, preset="veryfast", overwrite=True, audio_from=None) as w:
        for f in frames:
            w.write(f)


def encode_pyav(info, frames: np.ndarray, dst: Path) -> None:
    with av.open(str(dst), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=info.fps, options={"crf": "18", "preset": "veryfast"})
        s.width, s.height, s.pix_fmt = info.width, info.height, "yuv420p"
        s.thread_type = "AUTO"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    size, n, rounds = ("640x360", 30, 3) if args.quick else ("1920x1080", 60, 5)
    with tempfile.TemporaryDirectory() as d:
        clip = Path(d) / "clip.mp4"
        make_clip(clip, size, n)
        info = probe_video(clip)
        with VideoReader(info) as r:
            frames = np.stack(list(r))
        cases = {
            "decode pipe": lambda: decode_pipe(info),
            "decode pipe, ffmpeg's conversion": lambda: decode_pipe(info, own_conversion=False),
            "decode pyav": lambda: decode_pyav(info),
            "decode pyav, default conversion": lambda: decode_pyav_plain(info),
            "encode pipe": lambda: encode_pipe(info, frames, Path(d) / "a.mp4"),
            "encode pyav": lambda: encode_pyav(info, frames, Path(d) / "b.mp4"),
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        cpu: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(rounds):
            for name, run in cases.items():
                c, t = os.times(), time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
                c1 = os.times()  # this process and its reaped children (ffmpeg)
                cpu[name].append(sum(c1[:4]) - sum(c[:4]))
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; PyAV {av.__version__}; {size}, {n} frames, {rounds} rounds")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        c = statistics.median(cpu[k])
        print(f"{k:<34} {v * 1000 / n:8.2f} ms/frame, CPU {c * 1000 / n:6.2f} ms/frame  (medians of {rounds})")
    swscale = med["decode pipe, ffmpeg's conversion"]
    print(f"decode, swscale both ways: pyav / pipe = {med['decode pyav'] / swscale:.2f}")
    print(f"encode: pyav / pipe = {med['encode pyav'] / med['encode pipe']:.2f}")
    mine, theirs = "decode pipe", "decode pipe, ffmpeg's conversion"
    print(f"the reader's own conversion: {med[theirs] / med[mine]:.2f}x the speed of ffmpeg's,", end=" ")
    print(f"{statistics.median(cpu[theirs]) / statistics.median(cpu[mine]):.2f}x less CPU")


if __name__ == "__main__":
    main()
