"""The reader's and writer's own YUV <-> RGB conversions (tiler/io/yuv.py) against exact ones written here.

Clips are generated with the bundled ffmpeg and stored losslessly (FFV1), so
the planes the reader converts are exactly those ffmpeg hands out as raw
bytes. The reference below converts those planes in float64 from the
standard's (Kr, Kb) constants: chroma sited at the centre of the luma samples
it covers, upsampled by Keys' cubic (a = -0.75, OpenCV's) with edges
repeated, then the matrix, rounded and clipped. The reader must agree with it
to within 2 levels everywhere.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiler.errors import InputError
from tiler.io import yuv
from tiler.io.video import VideoReader, VideoWriter, ffmpeg_exe, probe_video

KR_KB = {"bt709": (0.2126, 0.0722), "smpte170m": (0.299, 0.114), "bt470bg": (0.299, 0.114),
         "bt2020nc": (0.2627, 0.0593), "fcc": (0.30, 0.11), "smpte240m": (0.212, 0.087)}  # fmt: skip
SUB = {"yuv420p": (2, 2), "yuvj420p": (2, 2), "yuv422p": (2, 1), "yuvj422p": (2, 1), "yuv444p": (1, 1)}


def ff(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_clip(path: Path, pix_fmt: str, matrix: str, full: bool, size: str = "97x61", frames: int = 3) -> Path:
    """Saturated colour bars plus noise (sharp chroma edges), tagged; FFV1, or MJPEG for the yuvj formats
    (FFV1 stores those as yuv with a range tag). The reference reads the same decoded planes either way."""
    w, h = (int(v) for v in size.split("x"))
    src = f"testsrc2=size={w + w % 2}x{h + h % 2}:rate=10,crop={w}:{h}:0:0:exact=1,noise=alls=30:allf=t"  # (even sizes only)
    codec = ("-c:v", "mjpeg", "-q:v", "2") if pix_fmt.startswith("yuvj") else ("-c:v", "ffv1")
    ff("-f", "lavfi", "-i", src, "-frames:v", str(frames), *codec, "-pix_fmt", pix_fmt,
       "-colorspace", matrix, "-color_range", "pc" if full else "tv", str(path))  # fmt: skip
    return path


def raw_planes(path: Path, pix_fmt: str, w: int, h: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = subprocess.run(
        [ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", pix_fmt, "pipe:1"],
        capture_output=True,
        check=True,
    ).stdout
    sx, sy = SUB[pix_fmt]
    cw, ch = -(-w // sx), -(-h // sy)
    size = w * h + 2 * cw * ch
    frames = []
    for at in range(0, len(out), size):
        b = np.frombuffer(out[at : at + size], np.uint8)
        frames.append(
            (b[: w * h].reshape(h, w), b[w * h : w * h + cw * ch].reshape(ch, cw), b[w * h + cw * ch :].reshape(ch, cw))
        )
    return frames


def keys(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0)
    )


def upsample(c: np.ndarray, factor: int, n: int, axis: int) -> np.ndarray:
    """``n`` samples along ``axis`` from chroma centred on ``factor`` luma samples each."""
    if factor == 1:
        return c.astype(np.float64)
    m = c.shape[axis]
    x = (np.arange(n) + 0.5) / factor - 0.5  # luma sample j's position in chroma samples
    base = np.floor(x).astype(int)
    out = 0.0
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, m - 1)
        w = keys(x - (base + k))
        out = out + np.take(c.astype(np.float64), idx, axis=axis) * (w[:, None] if axis == 0 else w[None, :])
    return out


def exact_rgb(y, u, v, pix_fmt: str, matrix: str, full: bool) -> np.ndarray:
    h, w = y.shape
    sx, sy = SUB[pix_fmt]
    u = upsample(upsample(u, sy, h, 0), sx, w, 1)  # overshoots at sharp edges: only RGB is clipped, below
    v = upsample(upsample(v, sy, h, 0), sx, w, 1)
    kr, kb = KR_KB[matrix]
    kg = 1 - kr - kb
    full = full or pix_fmt.startswith("yuvj")
    yy = y.astype(np.float64) if full else (y - 16.0) * 255 / 219
    cb = (u - 128) * (1 if full else 255 / 224)
    cr = (v - 128) * (1 if full else 255 / 224)
    r = yy + 2 * (1 - kr) * cr
    b = yy + 2 * (1 - kb) * cb
    g = (yy - kr * r - kb * b) / kg
    return np.clip(np.stack([r, g, b], -1), 0, 255)


@pytest.mark.parametrize(
    "pix_fmt, matrix, full, size",
    [
        ("yuv420p", "bt709", False, "97x61"),  # odd both ways: the last chroma sample covers one luma sample
        ("yuv420p", "smpte170m", False, "96x64"),
        ("yuv420p", "bt470bg", True, "64x33"),
        ("yuvj420p", "bt470bg", True, "96x64"),  # MJPEG: JPEG's own matrix
        ("yuv422p", "bt2020nc", False, "97x61"),
        ("yuvj422p", "bt470bg", True, "80x48"),
        ("yuv444p", "fcc", False, "65x40"),
        ("yuv420p", "smpte240m", False, "96x64"),
        ("yuv420p", "bt709", False, "1501x97"),  # several strips of rows, the last one short
    ],
)
def test_reader_converts_planes_as_the_exact_conversion(tmp_path, pix_fmt, matrix, full, size):
    clip = make_clip(tmp_path / "clip.mkv", pix_fmt, matrix, full, size)
    info = probe_video(clip)
    assert info.pix_fmt == pix_fmt and info.color_matrix == matrix and f"{info.width}x{info.height}" == size
    with VideoReader(info) as reader:
        assert reader.planes is not None and reader.planes.pix_fmt == pix_fmt
        got = np.stack(list(reader))
    want = [exact_rgb(*p, pix_fmt, matrix, full) for p in raw_planes(clip, pix_fmt, info.width, info.height)]
    assert len(got) == len(want) == 3
    err = np.abs(got - np.stack(want))
    assert err.max() < 2.0, f"max {err.max():.2f} at {np.unravel_index(err.argmax(), err.shape)}"
    assert err.mean() < 0.4


def test_matrix_and_range_tags_change_the_colours(tmp_path):
    """The same planes read under two tags give two pictures (the tags are used, not a default)."""
    frames = {}
    for matrix, full in (("bt709", False), ("smpte170m", False), ("bt709", True)):
        clip = make_clip(tmp_path / f"{matrix}-{full}.mkv", "yuv420p", matrix, full, "96x64", frames=1)
        with VideoReader(probe_video(clip)) as reader:
            frames[matrix, full] = reader.read().astype(int)
    assert np.abs(frames["bt709", False] - frames["smpte170m", False]).max() > 10
    assert np.abs(frames["bt709", False] - frames["bt709", True]).max() > 10


def test_rotated_clip_is_converted_after_rotation(tmp_path):
    """A rotated clip: ffmpeg turns the planes, the frame comes out as displayed."""
    plain, turned = make_clip(tmp_path / "plain.mkv", "yuv420p", "bt709", False, "96x64", 2), tmp_path / "turned.mp4"
    ff("-i", str(plain), "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(tmp_path / "upright.mp4"))
    ff("-display_rotation", "90", "-i", str(tmp_path / "upright.mp4"), "-c", "copy", str(turned))
    info = probe_video(turned)
    assert info.rotation in (90, 270) and info.frame_shape == (96, 64, 3)
    with VideoReader(info) as reader:
        assert reader.planes is not None
        got = reader.read()
    y, u, v = raw_planes(turned, "yuv420p", info.width, info.height)[0]
    assert np.abs(got - exact_rgb(y, u, v, "yuv420p", "bt709", False)).max() < 2.0


@pytest.mark.parametrize(
    "pix_fmt, dtype",
    [("yuv420p10le", None), ("gray", None), ("rgb24", None), ("yuva420p", None), ("yuv420p", np.uint16)],
)
def test_other_formats_keep_ffmpegs_conversion(tmp_path, pix_fmt, dtype):
    clip = tmp_path / "clip.mkv"
    ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "2", "-c:v", "ffv1", "-pix_fmt", pix_fmt,
       str(clip))  # fmt: skip
    info = probe_video(clip)
    with VideoReader(info, dtype=dtype) as reader:
        assert reader.planes is None
        frames = list(reader)
    assert len(frames) == 2 and frames[0].shape == (48, 64, 3)


def test_planes_layout():
    p = yuv.planes_for("yuv420p", 97, 61, "bt709", False)
    assert p is not None and p.chroma_shape == (31, 49) and p.nbytes == 97 * 61 + 2 * 31 * 49
    assert yuv.planes_for("yuv422p", 97, 61, "bt709", False).chroma_shape == (61, 49)
    assert yuv.planes_for("nv12", 96, 64, "bt709", False) is None
    white = yuv.rgb_matrix("bt709", full_range=False) @ [235, 128, 128, 1]
    black = yuv.rgb_matrix("smpte170m", full_range=True) @ [0, 128, 128, 1]
    np.testing.assert_allclose(white, [255, 255, 255], atol=1e-9)
    np.testing.assert_allclose(black, [0, 0, 0], atol=1e-9)


def filters_of(writer: VideoWriter) -> str:
    cmd = writer.command()
    return cmd[cmd.index("-vf") + 1]


def exact_luma(rgb: np.ndarray, matrix: str, full: bool) -> np.ndarray:
    kr, kb = KR_KB[matrix]
    y = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2].astype(np.float64)
    return y if full else 16 + y * 219 / 255


def exact_planes(rgb: np.ndarray, pix_fmt: str, matrix: str, full: bool) -> tuple[np.ndarray, ...]:
    """Y, U, V from RGB in float64: the standard's equations, chroma averaged over the luma it covers."""
    kr, kb = KR_KB[matrix]
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    if not full:
        y, cb, cr = 16 + y * 219 / 255, cb * 224 / 255, cr * 224 / 255
    sx, sy = SUB[pix_fmt]
    h, w = y.shape

    def block_mean(c):
        return c.reshape(h // sy, sy, w // sx, sx).mean(axis=(1, 3))

    return y, 128 + block_mean(cb), 128 + block_mean(cr)


@pytest.mark.parametrize(
    "pix_fmt, matrix, full, size",
    [("yuv420p", "bt709", False, "96x64"), ("yuv420p", "smpte170m", True, "1500x98"), ("yuv422p", "bt2020nc", False, "66x35"),
     ("yuv444p", "fcc", False, "40x30")],
)  # fmt: skip
def test_writer_sends_planes_as_the_exact_conversion(tmp_path, pix_fmt, matrix, full, size):
    """Frames written losslessly (x264 at CRF 0) come back as the exact planes of the RGB sent, tags kept."""
    src = make_clip(tmp_path / "src.mkv", pix_fmt, matrix, full, size)
    info = probe_video(src)
    with VideoReader(info) as reader:
        frames = list(reader)
    dst = tmp_path / "out.mp4"
    with VideoWriter(dst, info, crf=0, preset="ultrafast", pix_fmt=pix_fmt) as writer:
        assert writer.encoder_plan.planes is not None and "scale=" not in filters_of(writer)
        for f in frames:
            writer.write(f)
    out = probe_video(dst)
    assert (out.pix_fmt.replace("yuvj", "yuv"), out.color_matrix, out.full_range) == (pix_fmt, matrix, full)
    got = raw_planes(dst, out.pix_fmt, info.width, info.height)  # H.264's decoder says yuvj for full range
    assert len(got) == len(frames) == 3
    for planes, rgb in zip(got, frames):
        for plane, want in zip(planes, exact_planes(rgb, pix_fmt, matrix, full)):
            err = np.abs(plane - np.clip(want, 0, 255))
            assert err.max() < 1.5 and err.mean() < 0.4, (err.max(), err.mean())


def test_writer_keeps_ffmpegs_conversion_where_a_chroma_block_is_split(tmp_path):
    """An odd size kept odd (FFV1) and 16-bit frames go to ffmpeg as RGB; the luma written is still exact."""
    src = make_clip(tmp_path / "src.mkv", "yuv420p", "bt709", False, "97x61", frames=2)
    info = probe_video(src)
    with VideoReader(info) as reader:
        frames = list(reader)
    cases = (("odd.mkv", np.uint8, "ffv1", "yuv420p", 1), ("deep.mp4", np.uint16, "libx264", "yuv420p10le", 4))
    for name, dtype, codec, pix_fmt, scale in cases:
        dst = tmp_path / name
        with VideoWriter(dst, info, dtype=dtype, codec=codec, crf=0, pix_fmt=pix_fmt, preset="ultrafast") as writer:
            assert writer.encoder_plan.planes is None and "scale=" in filters_of(writer)
            for f in frames:
                writer.write(f.astype(np.uint16) * 257 if dtype == np.uint16 else f)
        raw = subprocess.run(
            [ffmpeg_exe(), "-v", "error", "-i", str(dst), "-f", "rawvideo", "-pix_fmt", pix_fmt, "pipe:1"],
            capture_output=True,
            check=True,
        ).stdout
        samples = np.frombuffer(raw, np.uint16 if scale > 1 else np.uint8).reshape(2, -1)
        w, h = writer.size  # H.264 pads to even sizes
        luma = samples[:, : h * w].reshape(2, h, w)[:, :61, :97] / scale  # the Y plane of each frame
        for y, rgb in zip(luma, frames):
            assert np.abs(y - exact_luma(rgb, "bt709", False)).max() < 2  # a wrong matrix is 10+ levels off


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("code, name", [(8, "ycgco"), (10, "bt2020c"), (0, "gbr")])
def test_a_colour_matrix_tileproc_cannot_convert_is_refused_in_one_line(tmp_path, dtype, code, name):
    """YCgCo (H.264 matrix 8), BT.2020 constant luminance (10, not a matrix at all) and G, B, R stored as Y, U, V
    (0) are none of BT.601 or BT.709: reading them as either would be silently wrong."""
    plain, clip = tmp_path / "plain.mp4", tmp_path / f"{name}.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10", "-frames:v", "2", "-c:v", "libx264", "-pix_fmt", "yuv420p",
       str(plain))  # fmt: skip
    ff("-i", str(plain), "-c", "copy", "-bsf:v", f"h264_metadata=matrix_coefficients={code}", str(clip))
    info = probe_video(clip)
    assert info.color_matrix == name
    line = (f"{clip}: its colour matrix {name} is not supported "
            "(tileproc converts bt2020nc, bt470bg, bt601, bt709, fcc, smpte170m, smpte240m)")  # fmt: skip
    with pytest.raises(InputError) as err:
        VideoReader(info, dtype=dtype)
    assert str(err.value) == line
    out = tmp_path / "out.mp4"
    run = subprocess.run(
        [sys.executable, "-m", "tiler", str(clip), "-f", "invert", "-o", str(out)], capture_output=True, text=True
    )
    assert run.returncode != 0 and not out.exists()
    assert run.stderr.strip().splitlines() == [f"tileproc: error: {line}"]


def test_rotated_422_is_left_to_ffmpeg(tmp_path):
    """4:2:2 turned sideways has its chroma halved vertically, which no planar format holds: ffmpeg converts."""
    clip = make_clip(tmp_path / "plain.mkv", "yuv422p", "bt709", False, "64x48", 1)
    ff("-i", str(clip), "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv422p", str(tmp_path / "upright.mp4"))
    ff("-display_rotation", "90", "-i", str(tmp_path / "upright.mp4"), "-c", "copy", str(tmp_path / "turned.mp4"))
    upright, turned = probe_video(tmp_path / "upright.mp4"), probe_video(tmp_path / "turned.mp4")
    assert turned.rotation in (90, 270) and turned.pix_fmt == "yuv422p"
    with VideoReader(upright) as a, VideoReader(turned) as b:
        assert a.planes is not None and b.planes is None
        want, got = a.read(), b.read()
    want = np.rot90(want, 1 if turned.rotation == 270 else -1)
    assert np.abs(got.astype(int) - want).mean() < 1.0


def test_interlaced_420_keeps_each_fields_colour_both_ways(tmp_path):
    """In interlaced 4:2:0 each chroma line belongs to one field: red lines in the top field and blue in the bottom
    stay red and blue through reading and writing (converted field by field, by ffmpeg's scale)."""
    rows = np.where((np.arange(48) % 2 == 0)[:, None, None], [200, 30, 30], [30, 30, 200]).astype(np.uint8)
    frame = np.ascontiguousarray(np.broadcast_to(rows, (48, 64, 3)))
    raw, src = tmp_path / "rb.rgb", tmp_path / "interlaced.mp4"
    raw.write_bytes(frame.tobytes() * 2)
    ff("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x48", "-r", "25", "-i", str(raw), "-vf",
       "scale=interl=1:out_color_matrix=bt709:out_range=tv:flags=accurate_rnd,format=yuv420p,setfield=tff",
       "-c:v", "libx264", "-qp", "0", "-flags", "+ildct+ilme", "-field_order", "tt", "-colorspace", "bt709", str(src))  # fmt: skip
    info = probe_video(src)
    assert info.interlaced
    with VideoReader(info) as reader:
        assert reader.planes is None
        got = reader.read()
    assert np.abs(got.astype(int) - frame).max() <= 6
    out = tmp_path / "out.mp4"
    with VideoWriter(out, info, crf=0, preset="ultrafast") as writer:
        assert writer.encoder_plan.planes is None and "interl=1" in filters_of(writer)
        writer.write(got)
        writer.write(got)
    with VideoReader(probe_video(out)) as reader:
        back = reader.read()
    assert np.abs(back.astype(int) - frame).max() <= 8
