"""Resize through files: a folder of photos (upright, metadata kept, DPI adjusted) from the
command line, and a video (frames, rate and audio kept) from Python."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_pipeline_video import frames_of, make_clip, psnr

import tiler
from filters.registry import resolve
from tiler.cli import main
from tiler.io.video import probe_video

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
EXIF6 = SAMPLES / "landscape_exif-orient6.jpg"  # stored 1200x1800, displayed 1800x1200


def test_folder_resize_from_the_command_line(tmp_path):
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    (src / "exif6.jpg").write_bytes(EXIF6.read_bytes())
    with Image.open(EXIF6) as im:  # the same photo, with the pixel dimensions a camera writes
        exif = im.getexif()
        exif.get_ifd(0x8769).update({0xA002: 1200, 0xA003: 1800, 0x9003: "2020:01:02 03:04:05"})
        im.save(src / "camera.jpg", exif=exif, quality=90)
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (300, 500, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(src / "sub" / "rgba.png", dpi=(300, 300))
    deep = rng.integers(0, 65536, (90, 120), dtype=np.uint16)
    Image.fromarray(deep).save(src / "sub" / "deep.png")
    out = tmp_path / "out"

    assert main([str(src), "-f", "resize:width=600", "-o", str(out), "-q", "-w", "2"]) == 0

    with Image.open(out / "exif6.jpg") as im:  # resized upright, written upright
        assert im.size == (600, 400)
        assert im.getexif().get(0x0112, 1) == 1
        assert im.info.get("dpi") == (24, 24)  # 72 dpi over 1800 pixels -> 24 dpi over 600
        photo = np.asarray(im.convert("RGB")).astype(np.float64)
    with Image.open(out / "camera.jpg") as im:
        sub = im.getexif().get_ifd(0x8769)
        assert im.size == (600, 400) and (sub[0xA002], sub[0xA003]) == (600, 400)
        assert sub[0x9003] == "2020:01:02 03:04:05"  # the rest of the metadata kept
    with Image.open(EXIF6) as im:
        from PIL import ImageOps

        upright = np.asarray(ImageOps.exif_transpose(im).resize((600, 400), Image.BOX)).astype(np.float64)
    assert psnr(photo, upright) > 30  # the same picture, the same way up

    with Image.open(out / "sub" / "rgba.png") as im:
        assert im.size == (600, 360) and im.mode == "RGBA"
        assert tuple(round(d) for d in im.info["dpi"]) == (360, 360)
        np.testing.assert_array_equal(np.asarray(im), resolve("resize:width=600").apply(rgba))
    with Image.open(out / "sub" / "deep.png") as im:
        got = np.asarray(im)
        assert im.size == (600, 450) and got.dtype.itemsize == 2  # 16-bit stays 16-bit
        np.testing.assert_array_equal(got.astype(np.uint16), resolve("resize:width=600").apply(deep))


def test_filters_listing_shows_resize(capsys):
    assert main(["filters"]) == 0
    text = capsys.readouterr().out
    assert "resize" in text and "interp" in text


def test_video_resize_keeps_frames_rate_and_audio(tmp_path):
    src = make_clip(tmp_path / "in.mp4", size="96x64")
    dst = tmp_path / "out.mp4"
    assert tiler.process_video(src, dst, "resize:height=45", workers=2) == dst
    a, b = probe_video(src), probe_video(dst)
    assert b.fps == Fraction(24000, 1001) and b.frame_count == a.frame_count
    assert (b.height, b.width) in ((45, 68), (46, 68))  # 67.5 -> 68; an odd height padded for H.264
    assert [s.codec for s in b.audio] == ["aac"]
    assert abs(float(b.duration) - float(a.duration)) < 0.05
    want = [resolve("resize:height=45").apply(f) for f in frames_of(src)]
    got = [f[:45, :68] for f in frames_of(dst)]
    assert len(got) == len(want)
    # A tiny, sharp test pattern loses much to 4:2:0 H.264, so compare with the same frames
    # one pixel off: the output must be far closer to the resized frames than to those.
    err = np.mean([np.abs(g.astype(int) - w).mean() for g, w in zip(got, want)])
    off = np.mean([np.abs(g.astype(int) - np.roll(w, 1, axis=1)).mean() for g, w in zip(got, want)])
    assert err < 0.6 * off and min(psnr(g, w) for g, w in zip(got, want)) > 20


def test_array_api_and_a_gif_animation(tmp_path):
    frame = np.random.default_rng(1).integers(0, 256, (61, 83, 3), dtype=np.uint8)
    out = tiler.process(frame, "resize:scale=2,blur", workers=2, tile_size=16)
    np.testing.assert_array_equal(out, resolve("resize:scale=2,blur").apply(frame))

    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (0, 120, 240)]
    gif = tmp_path / "a.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=[80, 90, 100], loop=0)
    dst = tiler.process_file(gif, tmp_path / "b.gif", "resize:width=15", workers=1)
    with Image.open(dst) as im:
        assert im.size == (15, 10) and im.n_frames == 3


def test_video_resize_on_a_cluster_equals_a_local_run(tmp_path):
    """Cut into segments on two Dask workers: each segment is written at the new size and
    the joined video has the local run's size, frames and pixels (lossless)."""
    distributed = pytest.importorskip("distributed")
    from test_cluster import make_clip as make_cut_clip

    from tiler import cluster

    src = make_cut_clip(tmp_path / "in.mp4", seconds=2.0)
    local, remote = tmp_path / "local.mp4", tmp_path / "remote.mp4"
    lossless = dict(crf=0, preset="ultrafast")
    tiler.process_video(src, local, "resize:width=48", workers=1, **lossless)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
        distributed.Client(lc) as client,
    ):
        done = []
        cluster.process_video(
            client, src, remote, "resize:width=48", segment_frames=20, on_segment=done.append, **lossless
        )
    a, b = probe_video(local), probe_video(remote)
    assert len(done) >= 2 and sum(done) == probe_video(src).frame_count == b.frame_count == a.frame_count
    assert (b.width, b.height) == (a.width, a.height) == (48, 32)
    assert all(np.array_equal(g, w) for g, w in zip(frames_of(remote), frames_of(local)))


def test_an_output_larger_than_max_pixels_is_refused_before_any_work(tmp_path, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((100, 150, 3), np.uint8)).save(src)
    args = [str(src), "-f", "resize:scale=4", "-o", str(tmp_path / "b.png"), "--max-pixels", "100000"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the filters make a 600x400 frame (240,000 pixels), more than the limit" in err[0]
    assert not (tmp_path / "b.png").exists()
    assert main([*args[:-2], "--max-pixels", "240000", "-q"]) == 0  # at the limit: written
    with Image.open(tmp_path / "b.png") as im:
        assert im.size == (600, 400)


def test_a_video_upscaled_past_max_pixels_is_refused(tmp_path, capsys):
    src = make_clip(tmp_path / "in.mp4", seconds=0.2, audio=False)
    assert main([str(src), "-f", "resize:scale=10", "-o", str(tmp_path / "out.mp4"), "--max-pixels", "100000"]) == 1
    assert "the filters make a 960x640 frame" in capsys.readouterr().err
    assert not (tmp_path / "out.mp4").exists()


def test_a_resized_tiff_has_no_stale_shape_description(tmp_path):
    import tifffile

    src = tmp_path / "deep16.tif"
    tifffile.imwrite(
        src, np.random.default_rng(2).integers(0, 65536, (203, 311, 3), dtype=np.uint16), photometric="rgb"
    )
    assert main([str(src), "-f", "resize:width=622", "-o", str(tmp_path / "out.tif"), "-q"]) == 0
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        page = tif.pages[0]
        assert page.shape == (406, 622, 3) and page.dtype == np.uint16
        assert '"shape": [203, 311, 3]' not in (page.description or "")
        assert tif.series[0].shape == (406, 622, 3)
