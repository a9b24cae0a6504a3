"""What a video on object storage costs: staging in and uploading out, against filtering it from local disk.

    python benchmarks/bench_staging.py            # 1280x720 H.264, 10 s, 3 rounds
    python benchmarks/bench_staging.py --quick    # 640x360, 4 s, 1 round

An S3 API runs on loopback (moto's server, in this process); s3fs talks to
it over HTTP as to any S3 endpoint. Rounds, interleaved after a warm-up:

* local: ``tiler.process_video(src, out, "blur:sigma=2")`` on local files;
* s3: the same from ``s3://bench/clip.mp4`` to ``s3://bench/out.mp4``: the
  source is staged once into a local workspace and the output uploaded when
  complete.

Also timed alone: the staging copy (``get_file``) and the upload
(``put_file``) of the same bytes. Ratios are medians against the local run
of the same round. Loopback has no network latency and a fast disk behind
it, so the staging ratios here are a floor: over a real network, add
size / bandwidth for each of the two transfers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_model  # noqa: E402

import tiler  # noqa: E402
from tiler.io.video import ffmpeg_exe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    size, seconds, rounds = ("640x360", 4, 1) if args.quick else ("1280x720", 10, 3)
    import fsspec
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"endpoint_url": f"http://{host}:{port}"}
    fs = fsspec.filesystem("s3", **options)
    fs.mkdir("bench")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clip.mp4"
        subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds}"]
            + ["-c:v", "libx264", "-pix_fmt", "yuv420p", str(src)],
            check=True,
        )
        fs.put_file(str(src), "bench/clip.mp4")
        mb = src.stat().st_size / 1e6
        times: dict[str, list[float]] = {"local": [], "s3": [], "get": [], "put": []}

        def timed(key, fn):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)

        job = dict(workers=None, overwrite=True, preset="ultrafast")
        for r in range(rounds + 1):
            timed("local", lambda: tiler.process_video(src, Path(tmp) / "out.mp4", "blur:sigma=2", **job))
            timed(
                "s3",
                lambda: tiler.process_video(
                    "s3://bench/clip.mp4", "s3://bench/out.mp4", "blur:sigma=2", storage_options=options, **job
                ),
            )
            timed("get", lambda: fs.get_file("bench/clip.mp4", str(Path(tmp) / "copy.mp4")))
            timed("put", lambda: fs.put_file(str(Path(tmp) / "out.mp4"), "bench/copy.mp4"))
            if r == 0:  # warm-up
                for v in times.values():
                    v.clear()
    server.stop()
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"video: {size}, {seconds} s at 30 fps, {mb:.1f} MB H.264; {rounds} rounds, medians")
    print("| case | seconds | / local run |")
    print("|---|---:|---:|")
    for key, label in (
        ("local", "local disk -> local disk"),
        ("s3", "s3:// -> s3:// (staged in, uploaded out)"),
        ("get", "staging copy alone (get_file)"),
        ("put", "upload alone (put_file)"),
    ):
        print(f"| {label} | {median[key]:.2f} | {median[key] / median['local']:.2f}x |")


if __name__ == "__main__":
    main()
