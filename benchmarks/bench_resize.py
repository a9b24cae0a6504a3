"""A folder of 12 MP JPEGs resized to 1920 wide: tileproc against process pools over Pillow and OpenCV.

    python benchmarks/bench_resize.py                       # 12 photos, 3 repeats
    python benchmarks/bench_resize.py --files 4 --repeats 1 # smoke run
    python benchmarks/bench_resize.py --workers 16 --json out.json

Three ways to do the same job, N = the CPUs this process may use:

* tileproc: ``Engine(N).process_folder(src, out, "resize:width=1920")``
  (``area`` when shrinking: OpenCV's INTER_AREA weights, exact by tiles);
* Pillow: ``ProcessPoolExecutor(N)`` over the files, each
  ``ImageOps.exif_transpose`` + ``resize((1920, h), Image.BOX)`` + save;
* OpenCV: ``ProcessPoolExecutor(N)`` over the files, each ``cv2.imread``
  (which applies the EXIF orientation) + ``cv2.resize(INTER_AREA)`` + ``imwrite``.

Every JPEG is quality 90; a third of them are stored sideways with EXIF
Orientation 6, as phones write them. The variants take turns (interleaved) and
the table shows images per second and ratios against each baseline, with the
machine that made them. The visual check: every output must be upright
(1920x1440 for every photo), its colours within a few levels of Pillow's on
average, and a contact sheet of the three outputs of the first rotated photo
is written beside the JSON (``--sheet``) for a look.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from bench_images import machine  # noqa: E402
from benchkit import OtherLoad, interleaved, synth_frame  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from tiler import Engine  # noqa: E402

WIDTH = 1920


def pillow_file(src: str, dst: str) -> int:
    with Image.open(src) as im:
        up = ImageOps.exif_transpose(im)
        h = round(up.height * WIDTH / up.width)
        up.resize((WIDTH, h), Image.BOX).save(dst, "JPEG", quality=90)
    return 1


def opencv_init() -> None:
    cv2.setNumThreads(1)


def opencv_file(src: str, dst: str) -> int:
    img = cv2.imread(src, cv2.IMREAD_COLOR)  # applies the EXIF orientation
    h = round(img.shape[0] * WIDTH / img.shape[1])
    cv2.imwrite(dst, cv2.resize(img, (WIDTH, h), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return 1


def make_photos(folder: Path, files: int) -> list[str]:
    """``files`` 4000x3000 JPEGs; every third stored sideways with EXIF Orientation 6."""
    base = synth_frame(3000, 4000)
    names = []
    for i in range(files):
        frame = np.ascontiguousarray(np.roll(base, (37 * i, 53 * i), axis=(0, 1)))
        name = f"img{i:02d}.jpg"
        if i % 3 == 1:
            exif = Image.Exif()
            exif[0x0112] = 6  # the viewer turns it 90 degrees clockwise
            Image.fromarray(np.ascontiguousarray(np.rot90(frame, 1))).save(folder / name, quality=90, exif=exif)
        else:
            Image.fromarray(frame).save(folder / name, quality=90)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=12)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", type=Path)
    p.add_argument("--sheet", type=Path, help="contact sheet PNG (default: beside --json, else none)")
    args = p.parse_args(argv)
    n = args.workers
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores_usable']} usable cores; {n} workers", flush=True)
    ctx = mp.get_context("forkserver")
    load = OtherLoad()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "photos"
        src.mkdir()
        names = make_photos(src, args.files)
        outs = {k: tmp / k for k in ("tileproc", "pillow", "opencv")}
        for d in outs.values():
            d.mkdir()
        with Engine(workers=n) as engine:
            engine.process(synth_frame(64, 64), "resize:scale=0.5")  # workers started

            def tileproc_run() -> int:
                report = engine.process_folder(src, outs["tileproc"], f"resize:width={WIDTH}", overwrite=True)
                if not report.ok:
                    raise SystemExit(f"tileproc failed: {report.failed[0].error}")
                return len(report.results)

            with (
                cf.ProcessPoolExecutor(n, mp_context=ctx) as pil_pool,
                cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=opencv_init) as cv_pool,
            ):
                srcs = [str(src / m) for m in names]

                def pillow_run() -> int:
                    return sum(pil_pool.map(pillow_file, srcs, [str(outs["pillow"] / m) for m in names]))

                def opencv_run() -> int:
                    return sum(cv_pool.map(opencv_file, srcs, [str(outs["opencv"] / m) for m in names]))

                times = interleaved(
                    {"pillow": pillow_run, "opencv": opencv_run, "tileproc": tileproc_run}, args.repeats
                )
        other = load.cores()
        per_s = {k: 1.0 / statistics.median(v) for k, v in times.items()}
        # The visual check: upright sizes everywhere, colours close to Pillow's.
        shapes = {k: {np.asarray(Image.open(d / m)).shape for m in names} for k, d in outs.items()}
        diffs = [
            float(
                np.abs(
                    np.asarray(Image.open(outs["tileproc"] / m).convert("RGB"), np.int16)
                    - np.asarray(Image.open(outs["pillow"] / m).convert("RGB"), np.int16)
                ).mean()
            )
            for m in names
        ]
        upright = all(s == {(1440, WIDTH, 3)} for s in shapes.values())
        sheet_path = args.sheet or (args.json.with_suffix(".png") if args.json else None)
        if sheet_path is not None:
            rotated = names[1 if len(names) > 1 else 0]
            thumbs = [np.asarray(Image.open(outs[k] / rotated).convert("RGB").resize((480, 360))) for k in outs]
            Image.fromarray(np.concatenate(thumbs, axis=1)).save(sheet_path)
    rows = [
        ("tileproc resize:width=1920", per_s["tileproc"]),
        ("ProcessPoolExecutor + Pillow (exif_transpose, BOX)", per_s["pillow"]),
        ("ProcessPoolExecutor + OpenCV (imread, INTER_AREA)", per_s["opencv"]),
    ]
    print(f"\n{args.files} JPEGs 4000x3000 -> {WIDTH} wide, {n} processes, medians of {args.repeats}")
    print("| variant | images/s | tileproc ratio |\n|---|---:|---:|")
    for label, v in rows:
        print(f"| {label} | {v:.2f} | {per_s['tileproc'] / v:.2f}x |")
    print(
        f"\nupright outputs everywhere: {'yes' if upright else 'NO: ' + str(shapes)}; "
        f"mean |tileproc - Pillow| per image: {max(diffs):.2f} levels at most; "
        f"other load during the run: {other:.2f} cores"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": info, "images_per_s": per_s, "upright": upright, "diff_max": max(diffs), "other": other},
                indent=2,
            )
        )
    return 0 if upright and max(diffs) < 4 else 1


if __name__ == "__main__":
    sys.exit(main())
