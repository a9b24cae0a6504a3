"""One 12 MP JPEG blurred end to end: the ``tileproc`` command against a five-line OpenCV script.

    python benchmarks/bench_still.py                 # 7 rounds
    python benchmarks/bench_still.py --repeats 3     # smoke run
    python benchmarks/bench_still.py --json out.json

The input is generated in a temporary folder: a photo-like 4000x3000 frame
stored sideways with EXIF Orientation 6 (as phones write it), quality 90 with
the standard Huffman tables, plus an ICC profile, XMP and DPI. Three commands,
each its own process, take turns (interleaved) ``--repeats`` times:

* ``opencv``: ``cv2.imread`` + ``cv2.GaussianBlur((17, 17), 2.0, BORDER_REFLECT_101)``
  + ``cv2.imwrite(quality 90)``; it drops the EXIF, ICC, XMP and DPI and writes its own tables;
* ``tileproc``: ``python -m tiler in.jpg -f blur:sigma=2 -o out.jpg`` (default workers);
* ``tileproc -w 0``: the same in one process.

It prints the median wall time of each (start of the process to its exit,
imports included), the ratio tileproc / OpenCV (at most 1.25 is the aim) and
the machine. Before timing, tileproc's output is checked: upright
(3000x4000), EXIF Orientation 1 with the camera tags kept, ICC, XMP and DPI
kept, the input's quantisation tables, and pixels within JPEG noise of the
input decoded, turned upright and blurred by OpenCV.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from benchkit import OtherLoad, say, synth_frame  # noqa: E402
from machine import describe, machine_info  # noqa: E402
from PIL import Image, ImageCms, ImageOps  # noqa: E402

OPENCV_SCRIPT = """\
import sys, cv2
img = cv2.imread(sys.argv[1])
out = cv2.GaussianBlur(img, (17, 17), 2.0, borderType=cv2.BORDER_REFLECT_101)
cv2.imwrite(sys.argv[2], out, [cv2.IMWRITE_JPEG_QUALITY, 90])
"""
XMP = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"/></x:xmpmeta>'
MAKE, MODEL = 0x010F, 0x0110


def make_input(path: Path) -> np.ndarray:
    """Write the sideways 12 MP test photo; return its upright pixels as Pillow decodes them."""
    stored = synth_frame(3000, 4000)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    exif[MAKE], exif[MODEL] = "tileproc", "bench_still"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(stored).save(path, "JPEG", quality=90, exif=exif, icc_profile=icc, xmp=XMP, dpi=(300, 300))
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im))


def check_output(out: Path, src: Path, upright: np.ndarray) -> float:
    """Raise SystemExit unless ``out`` kept what tileproc promises; return the mean difference from OpenCV's blur."""
    with Image.open(out) as im, Image.open(src) as ref:
        problems = []
        if im.size != (3000, 4000):
            problems.append(f"size {im.size}, expected upright 3000x4000")
        exif = im.getexif()
        if exif.get(0x0112, 1) != 1 or exif.get(MAKE) != "tileproc" or exif.get(MODEL) != "bench_still":
            problems.append(f"EXIF not kept as expected: {dict(exif)}")
        for key in ("icc_profile", "xmp"):
            if im.info.get(key) != ref.info.get(key):
                problems.append(f"{key} not kept")
        if tuple(round(d) for d in im.info.get("dpi", (0, 0))) != (300, 300):
            problems.append(f"dpi {im.info.get('dpi')}")
        if im.quantization != ref.quantization:
            problems.append("quantisation tables differ from the input's")
        got = np.asarray(im.convert("RGB")).astype(np.float32)
    want = cv2.GaussianBlur(upright, (17, 17), 2.0, borderType=cv2.BORDER_REFLECT_101).astype(np.float32)
    diff = float(np.abs(got - want).mean()) if got.shape == want.shape else float("inf")
    if diff > 2.0:
        problems.append(f"pixels differ from the blurred input by {diff:.2f} levels on average")
    if problems:
        raise SystemExit(f"{out}: " + "; ".join(problems))
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="rounds of the three commands (default 7)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)

    info = machine_info(("numpy", "opencv-python-headless", "pillow"))
    for line in describe(info):
        say(line)
    tmp = Path(tempfile.mkdtemp(prefix="bench_still_"))
    try:
        src = tmp / "in.jpg"
        upright = make_input(src)
        (tmp / "cv.py").write_text(OPENCV_SCRIPT)
        tp = [sys.executable, "-m", "tiler"]
        # Bytecode cached as for an installed package: without it every run would compile tileproc's modules.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        commands = {
            "opencv": [sys.executable, str(tmp / "cv.py"), str(src), str(tmp / "cv.jpg")],
            "tileproc": [*tp, str(src), "-f", "blur:sigma=2", "-o", str(tmp / "tp.jpg"), "--overwrite", "-q"],
            "tileproc -w 0": [*tp, str(src), "-f", "blur:sigma=2", "-o", str(tmp / "tp0.jpg"), "--overwrite", "-q"]
            + ["-w", "0"],
        }
        for cmd in commands.values():  # warm the page cache and check every command works
            subprocess.run(cmd, check=True, env=env)
        diffs = {name: check_output(tmp / name, src, upright) for name in ("tp.jpg", "tp0.jpg")}
        levels = ", ".join(f"{name} {d:.2f}" for name, d in diffs.items())
        say(f"outputs checked: upright, metadata and tables kept; mean difference from OpenCV's blur: {levels} levels")

        load = OtherLoad()
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, env=env)
                times[name].append(time.perf_counter() - t0)
        other = load.cores()
        info["loadavg_end"] = round(os.getloadavg()[0], 2)

        med = {name: statistics.median(v) for name, v in times.items()}
        say(f"\none 12 MP JPEG (4000x3000, EXIF orientation 6), blur:sigma=2, {args.repeats} rounds interleaved")
        say(f"{'command':<16}{'median s':>10}{'min s':>9}{'/ opencv':>10}")
        for name, v in times.items():
            say(f"{name:<16}{med[name]:>10.3f}{min(v):>9.3f}{med[name] / med['opencv']:>10.2f}")
        ratio = med["tileproc"] / med["opencv"]
        verdict = "met" if ratio <= 1.25 else "not met"
        say(f"aim: tileproc / opencv <= 1.25: {ratio:.2f}, {verdict}; other load during the runs: {other:.2f} cores")
        if args.json:
            record = {"machine": info, "seconds": times, "median": med, "other_load_cores": other}
            args.json.write_text(json.dumps(record, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
