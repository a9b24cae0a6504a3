"""What going through a Dask cluster costs: a folder of 4K JPEGs, local engine vs LocalCluster.

    python benchmarks/bench_cluster.py                 # 8 images of 3840x2160, 5 rounds
    python benchmarks/bench_cluster.py --quick         # 4 images of 1920x1080, 2 rounds
    python benchmarks/bench_cluster.py --json out.json

Both sides run the same job, ``tiler.process_folder(src, out, "blur:sigma=2",
overwrite=True)``, on this machine:

* local: one :class:`tiler.Engine` with one worker per CPU, kept for every
  round (``engine.process_folder``), as the cluster keeps its workers' engines;
* cluster: a LocalCluster of two Dask worker processes (one thread each), each
  filtering with its own local engine of cores // 2 workers, files as tasks
  (``tiler.process_folder(..., client=client)``).

The rounds are interleaved (local, cluster, local, ...) after one untimed
warm-up of each (the cluster's first job starts the engines on its workers;
the cluster's own start is reported apart). Images per second are medians;
ratio = cluster / local throughput (below 1: the cost of going through the
cluster on one machine; the gain comes from adding machines). A second case,
tiny PNGs through ``invert``, shows the fixed cost of one file as a task.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
from machine import cpu_model
from PIL import Image  # noqa: E402

import tiler  # noqa: E402
from tiler import cluster  # noqa: E402
from tiler.pool import default_workers  # noqa: E402

CHAIN = "blur:sigma=2"


def machine() -> dict:
    import distributed

    return {
        "cpu": cpu_model(),
        "cores_usable": default_workers(),
        "cores_total": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "distributed": distributed.__version__,
        "platform": platform.platform(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like RGB frame: smooth gradients, a few hard shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.float32)
    img[..., 0] = 180 + 60 * np.cos(3 * x + seed) * (1 - y)
    img[..., 1] = 120 + 80 * np.sin(5 * y + 2 * x)
    img[..., 2] = 200 * (1 - 0.5 * y) + 30 * np.cos(7 * x * y)
    for _ in range(30):
        r0, c0 = rng.integers(0, height), rng.integers(0, width)
        img[r0 : r0 + height // 10, c0 : c0 + width // 12] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(folder: Path, n: int, height: int, width: int) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(photo(height, width, i)).save(folder / f"photo{i:02d}.jpg", quality=90)


def timed(src: Path, out: Path, n: int, chain: str, rounds: int, engine, client) -> dict:
    """One case: warm-ups, then ``rounds`` interleaved timings of the local engine and the cluster."""

    def local() -> None:
        report = engine.process_folder(src, out / "local", chain, overwrite=True)
        assert report.ok, report.failed

    def on_cluster() -> None:
        report = tiler.process_folder(src, out / "cluster", chain, overwrite=True, client=client)
        assert report.ok, report.failed

    variants = (("local", local), ("cluster", on_cluster))
    first = {}
    for name, run in variants:  # warm-up, not in the medians
        t = time.perf_counter()
        run()
        first[name] = time.perf_counter() - t
    times: dict[str, list[float]] = {"local": [], "cluster": []}
    for _ in range(rounds):
        for name, run in variants:
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    for path in (out / "local").iterdir():
        assert path.read_bytes() == (out / "cluster" / path.name).read_bytes(), path.name
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    return {
        "images": n,
        "chain": chain,
        "seconds": times,
        "first_job_seconds": first,
        "images_per_second": rate,
        "ratio": rate["cluster"] / rate["local"],
    }


def show(title: str, result: dict) -> None:
    print(title)
    print(f"  {'':10}{'images/s':>10}{'median s':>10}{'best s':>8}{'worst s':>9}{'first job s':>13}")
    for k in ("local", "cluster"):
        t = result["seconds"][k]
        print(
            f"  {k:10}{result['images_per_second'][k]:10.2f}{statistics.median(t):10.2f}{min(t):8.2f}"
            f"{max(t):9.2f}{result['first_job_seconds'][k]:13.2f}"
        )
    print(f"  ratio cluster/local throughput: {result['ratio']:.2f}  (outputs identical)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="4 images of 1920x1080, 2 rounds")
    p.add_argument("--images", type=int, help="images in the folder (default 8)")
    p.add_argument("--rounds", type=int, help="timed rounds of each (default 5)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    args = p.parse_args(argv)
    n = args.images or (4 if args.quick else 8)
    rounds = args.rounds or (2 if args.quick else 5)
    height, width = (1080, 1920) if args.quick else (2160, 3840)
    tiny = 50 if args.quick else 200

    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores_usable']} usable cores of {info['cores_total']}, "
        f"Python {info['python']}, distributed {info['distributed']}; load average {info['load_average_1min']}"
    )
    work = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    try:
        make_folder(work / "photos", n, height, width)
        (work / "tiny").mkdir()
        for i in range(tiny):
            Image.fromarray(photo(64, 64, i)).save(work / "tiny" / f"t{i:03d}.png")
        start = time.perf_counter()
        client = cluster.connect("local:2")
        startup = time.perf_counter() - start
        engine = tiler.Engine()
        try:
            photos = timed(work / "photos", work / "out_photos", n, CHAIN, rounds, engine, client)
            small = timed(work / "tiny", work / "out_tiny", tiny, "invert", rounds, engine, client)
        finally:
            engine.close()
            client.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{rounds} interleaved rounds after a warm-up; LocalCluster start {startup:.1f} s, not counted")
    show(f"{n} JPEGs of {width}x{height}, {CHAIN!r}:", photos)
    show(f"{tiny} PNGs of 64x64, 'invert' (the per-task cost):", small)
    per_task = (1 / small["images_per_second"]["cluster"] - 1 / small["images_per_second"]["local"]) * 1000
    print(f"  extra time per file through the cluster: {per_task:.1f} ms")
    print(f"load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": info,
                    "rounds": rounds,
                    "cluster_start_seconds": startup,
                    "photos": {"size": [width, height], **photos},
                    "tiny": small,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
