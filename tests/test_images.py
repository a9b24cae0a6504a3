"""tiler.io.images: probe, read, write; modes, formats, orientation, metadata, bad inputs, atomic writes."""

from __future__ import annotations

import io
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms, ImageOps

from tiler.errors import InputError, OutputError, OutputExists
from tiler.io import images, png, webp
from tiler.io._image import palette_image
from tiler.io.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageInfo,
    check_image_output,
    output_name,
    probe_image,
    read_image,
    write_animation,
    write_image,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
EXIF6_JPEG = SAMPLES / "landscape_exif-orient6.jpg"
ANIMATED_GIF = SAMPLES / "people_animated_480x270.gif"

H, W = 20, 28  # small, non-square, so a wrong transpose cannot pass


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def rand(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng(seed).integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def smooth(shape, seed=0) -> np.ndarray:
    """A smooth uint8 image that lossy codecs keep close."""
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    chans = shape[2] if len(shape) == 3 else 1
    out = np.stack([(x * 255 // max(1, shape[1] - 1) + 60 * c + 17 * seed) % 256 for c in range(chans)], axis=-1)
    out = (out + y[..., None] * 3) % 256
    return out.astype(np.uint8).reshape(shape)


def save(im: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    im.save(path, fmt, **kw)
    return path


def temps_in(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tileproc-" in p.name]


def roundtrip(a: np.ndarray, src: Path, dst: Path, **kw) -> tuple[ImageInfo, np.ndarray, ImageInfo, np.ndarray]:
    info = probe_image(src)
    got = read_image(info)
    write_image(got, dst, info, **kw)
    info2 = probe_image(dst)
    return info, got, info2, read_image(info2)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


# ---------------------------------------------------------------------------
# constants, ImageInfo, names


def test_constants():
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"}
    assert DEFAULT_MAX_PIXELS == 178_956_970


def test_info_is_frozen_and_picklable(tmp_path):
    p = save(Image.fromarray(rand((H, W, 3))), tmp_path / "a.png")
    info = probe_image(p)
    assert pickle.loads(pickle.dumps(info)) == info
    with pytest.raises(Exception):
        info.shape = (1, 1)  # type: ignore[misc]
    assert (info.height, info.width, info.channels, info.nbytes) == (H, W, 3, H * W * 3)


def test_output_name_never_the_input(tmp_path):
    assert output_name("shots/photo.jpg") == Path("shots/photo.tileproc.jpg")
    assert output_name("photo.jpg", ext="png", folder="out") == Path("out/photo.tileproc.png")
    assert output_name("photo.jpg", ext=".tif", tag="blur") == Path("photo.blur.tif")
    again = output_name(output_name("a.png"))
    assert again == Path("a.tileproc.tileproc.png")
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            output_name("a.png", tag=bad)


# ---------------------------------------------------------------------------
# modes: every Pillow mode a user meets


def _mode_fixture(mode: str, tmp_path: Path):
    """(file, expected array) for a source mode."""
    r = rng(1)
    if mode == "1":
        bits = r.integers(0, 2, (H, W)).astype(bool)
        im = Image.fromarray(bits.astype(np.uint8) * 255).convert("1", dither=Image.Dither.NONE)
        return save(im, tmp_path / "m1.png"), bits.astype(np.uint8) * 255
    if mode == "L":
        a = rand((H, W))
        return save(Image.fromarray(a), tmp_path / "l.png"), a
    if mode == "L+tRNS":
        a = rand((H, W))
        a[0, :3] = 7
        a[a == 7] = 7
        expected = np.stack([a, np.where(a == 7, 0, 255).astype(np.uint8)], axis=-1)
        return save(Image.fromarray(a), tmp_path / "lt.png", transparency=7), expected
    if mode == "LA":
        a = rand((H, W, 2))
        return save(Image.fromarray(a), tmp_path / "la.png"), a
    if mode in ("P", "P+tRNS"):
        pal = rand((16, 3), seed=2)
        idx = r.integers(0, 16, (H, W)).astype(np.uint8)
        im = palette_image(idx, pal)
        if mode == "P":
            return save(im, tmp_path / "p.png"), pal[idx]
        alpha = np.full(16, 255, np.uint8)
        alpha[3] = 0
        alpha[5] = 100
        im = palette_image(idx, np.concatenate([pal, alpha[:, None]], axis=1))
        return save(im, tmp_path / "pt.png"), np.concatenate([pal, alpha[:, None]], axis=1)[idx]
    if mode == "PA":
        pal = rand((8, 3), seed=3)
        idx = r.integers(0, 8, (H, W)).astype(np.uint8)
        al = rand((H, W), seed=4)
        im = Image.merge("PA", [palette_image(idx, pal), Image.fromarray(al)])
        im.putpalette(pal.tobytes())
        return save(im, tmp_path / "pa.tif"), np.concatenate([pal[idx], al[..., None]], axis=-1)
    if mode == "RGB":
        a = rand((H, W, 3))
        return save(Image.fromarray(a), tmp_path / "rgb.png"), a
    if mode == "RGBA":
        a = rand((H, W, 4))
        return save(Image.fromarray(a), tmp_path / "rgba.png"), a
    if mode == "RGBX":
        a = rand((H, W, 3))
        im = Image.fromarray(a).convert("RGBX")
        return save(im, tmp_path / "rgbx.tif"), a
    if mode == "CMYK":
        cmyk = Image.fromarray(rand((H, W, 4))).convert("RGBA")
        im = Image.frombytes("CMYK", (W, H), cmyk.tobytes())
        return save(im, tmp_path / "cmyk.tif"), np.asarray(im.convert("RGB"))
    if mode == "YCbCr":
        im = Image.fromarray(smooth((H, W, 3))).convert("YCbCr")
        return save(im, tmp_path / "ycc.tif"), np.asarray(im.convert("RGB"))
    if mode in ("I;16", "I;16B"):
        a = rand((H, W), np.uint16)
        a[0, 0], a[0, 1] = 65535, 0
        im = Image.fromarray(a)
        if mode == "I;16B":
            im = Image.frombytes("I;16B", (W, H), a.astype(">u2").tobytes())
            return save(im, tmp_path / "i16b.tif"), a
        return save(im, tmp_path / "i16.png"), a
    if mode == "I":
        a = r.integers(-(2**31), 2**31 - 1, (H, W)).astype(np.int32) // 256  # exact in float32
        a[0, 0] = -5
        lo, hi = float(a.min()), float(a.max())  # int32 reads as its data range mapped to 0..1
        return save(Image.fromarray(a), tmp_path / "i32.tif"), ((a - lo) / (hi - lo)).astype(np.float32)
    if mode == "F":
        a = (r.standard_normal((H, W)) * 1000).astype(np.float32)
        a[0, 0] = np.float32(1e-30)
        lo, hi = float(a.min()), float(a.max())  # float outside 0..1: its data range mapped to 0..1
        return save(Image.fromarray(a), tmp_path / "f.tif"), ((a.astype(np.float64) - lo) / (hi - lo)).astype(
            np.float32
        )
    raise AssertionError(mode)


# source mode -> (probed shape suffix, dtype, mode written back by the same format)
MODES = {
    "1": ((), np.uint8, "1"),
    "L": ((), np.uint8, "L"),
    "L+tRNS": ((2,), np.uint8, "LA"),
    "LA": ((2,), np.uint8, "LA"),
    "P": ((3,), np.uint8, "P"),
    "P+tRNS": ((4,), np.uint8, "P"),
    "PA": ((4,), np.uint8, "RGBA"),
    "RGB": ((3,), np.uint8, "RGB"),
    "RGBA": ((4,), np.uint8, "RGBA"),
    "RGBX": ((3,), np.uint8, "RGB"),
    "CMYK": ((3,), np.uint8, "RGB"),
    "YCbCr": ((3,), np.uint8, "RGB"),
    "I;16": ((), np.uint16, "I;16"),
    "I;16B": ((), np.uint16, "I;16"),
    "I": ((), np.float32, "I"),
    "F": ((), np.float32, "F"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_policy_round_trip(mode, tmp_path):
    src, expected = _mode_fixture(mode, tmp_path)
    suffix, dtype, back_mode = MODES[mode]
    info = probe_image(src)
    assert info.shape == (H, W, *suffix)
    assert info.dtype == dtype
    got = read_image(info)
    assert got.dtype == dtype and got.shape == info.shape
    np.testing.assert_array_equal(got, expected)

    dst = tmp_path / ("out" + src.suffix)
    write_image(got, dst, info)
    with Image.open(dst) as im:
        assert im.mode == back_mode
    again = read_image(probe_image(dst))
    np.testing.assert_array_equal(again, expected)


def test_binary_mode_written_as_gray_once_filtered(tmp_path):
    src, expected = _mode_fixture("1", tmp_path)
    info = probe_image(src)
    blurred = (expected // 2 + 10).astype(np.uint8)  # no longer 0/255: keep every value
    for ext in (".png", ".tif", ".bmp"):
        write_image(blurred, tmp_path / f"b{ext}", info)
        with Image.open(tmp_path / f"b{ext}") as im:
            assert im.mode == "L"
        np.testing.assert_array_equal(read_image(probe_image(tmp_path / f"b{ext}")), blurred)


def test_palette_with_many_colours_written_as_rgb(tmp_path):
    src, expected = _mode_fixture("P", tmp_path)
    info = probe_image(src)
    many = rand((H, W, 3), seed=9)  # 560 pixels, > 256 colours
    write_image(many, tmp_path / "many.png", info)
    with Image.open(tmp_path / "many.png") as im:
        assert im.mode == "RGB"
    np.testing.assert_array_equal(read_image(probe_image(tmp_path / "many.png")), many)


def test_unsupported_mode_is_refused(tmp_path):
    p = save(Image.new("LAB", (W, H)), tmp_path / "lab.tif")
    with pytest.raises(InputError, match=r"lab\.tif: unsupported TIFF colour model CIELAB"):
        probe_image(p)


def test_cmyk_jpeg_reads_as_rgb_and_writes_rgb(tmp_path):
    cmyk = Image.frombytes("CMYK", (W, H), smooth((H, W, 4)).tobytes())
    src = save(cmyk, tmp_path / "c.jpg", quality=95)
    info = probe_image(src)
    assert info.mode == "CMYK" and info.shape == (H, W, 3) and info.icc_profile is None
    got = read_image(info)
    with Image.open(src) as im:
        np.testing.assert_array_equal(got, np.asarray(im.convert("RGB")))
    write_image(got, tmp_path / "c2.jpg", info)
    with Image.open(tmp_path / "c2.jpg") as im:
        assert im.mode == "RGB"


def test_int32_reads_as_its_data_range_and_writes_back_int32(tmp_path):
    src, expected = _mode_fixture("I", tmp_path)
    info = probe_image(src)
    assert info.mode == "I" and info.bits == 32 and info.sample_dtype == np.int32
    assert read_image(info)[0, 0] == expected[0, 0]
    with pytest.raises(OutputError, match="cannot store 32-bit float"):
        write_image(read_image(info), tmp_path / "i.png", info)
    assert temps_in(tmp_path) == [] and not (tmp_path / "i.png").exists()
    write_image(read_image(info), tmp_path / "i.tif", info)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "i.tif"), tifffile.imread(src))


# ---------------------------------------------------------------------------
# formats


LOSSLESS = [".png", ".tif", ".bmp", ".webp"]


@pytest.mark.parametrize("ext", LOSSLESS + [".gif"])
def test_lossless_formats_round_trip_rgb(ext, tmp_path):
    a = rand((H, W, 3)) if ext != ".gif" else rand((16, 3))[rng(5).integers(0, 16, (H, W))]
    src = save(Image.fromarray(a), tmp_path / "a.png")
    info = probe_image(src)
    write_image(read_image(info), tmp_path / f"o{ext}", info)
    out = probe_image(tmp_path / f"o{ext}")
    assert out.format == images._EXT_FORMAT[ext]
    np.testing.assert_array_equal(read_image(out), a)


def test_jpeg_round_trip_is_close(tmp_path):
    a = smooth((64, 96, 3))
    info, got, info2, again = roundtrip(a, save(Image.fromarray(a), tmp_path / "a.jpg", quality=90), tmp_path / "b.jpg")
    assert info2.format == "JPEG" and info2.quality == info.quality == 90
    assert info2.jpeg_subsampling == info.jpeg_subsampling
    assert psnr(got, again) > 30


@pytest.mark.parametrize("quality", [30, 50, 75, 90, 95])
def test_jpeg_quality_estimate(quality, tmp_path):
    p = save(Image.fromarray(smooth((16, 16, 3))), tmp_path / "q.jpg", quality=quality)
    assert abs(probe_image(p).quality - quality) <= 2


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_output_keeps_the_inputs_huffman_choice(progressive, tmp_path):
    # Huffman coding is lossless: the same picture saved with standard and with
    # optimised tables decodes to the same pixels, so the two outputs differ
    # only by the tables tileproc chose for them.
    a = rand((96, 128, 3), seed=3)
    plain = save(Image.fromarray(a), tmp_path / "plain.jpg", quality=90)
    tuned = save(Image.fromarray(a), tmp_path / "tuned.jpg", quality=90, optimize=True, progressive=progressive)
    infos = {name: probe_image(tmp_path / f"{name}.jpg") for name in ("plain", "tuned")}
    assert not infos["plain"].jpeg_optimized and infos["tuned"].jpeg_optimized
    assert plain.stat().st_size > tuned.stat().st_size
    pixels = {name: read_image(info) for name, info in infos.items()}
    np.testing.assert_array_equal(pixels["plain"], pixels["tuned"])
    for name, info in infos.items():
        write_image(pixels["plain"], tmp_path / f"out_{name}.jpg", info)
    out_plain, out_tuned = tmp_path / "out_plain.jpg", tmp_path / "out_tuned.jpg"
    assert out_plain.stat().st_size > out_tuned.stat().st_size
    assert not probe_image(out_plain).jpeg_optimized and probe_image(out_tuned).jpeg_optimized
    assert probe_image(out_tuned).progressive == progressive
    with Image.open(out_plain) as p, Image.open(out_tuned) as t:
        np.testing.assert_array_equal(np.asarray(p), np.asarray(t))
        assert p.quantization == t.quantization
    # the standard tables are the ones Pillow writes by default, byte for byte
    info = infos["plain"]
    Image.fromarray(pixels["plain"]).save(
        tmp_path / "ref.jpg", qtables=[list(q) for q in info.jpeg_qtables], subsampling=info.jpeg_subsampling
    )
    assert out_plain.read_bytes() == (tmp_path / "ref.jpg").read_bytes()


def test_jpeg_from_another_format_uses_standard_huffman_tables(tmp_path):
    a = rand((64, 80, 3), seed=4)
    info = probe_image(save(Image.fromarray(a), tmp_path / "a.png"))
    write_image(a, tmp_path / "a.jpg", info)
    assert not probe_image(tmp_path / "a.jpg").jpeg_optimized
    Image.fromarray(a).save(tmp_path / "opt.jpg", quality=95, optimize=True)
    assert (tmp_path / "a.jpg").stat().st_size > (tmp_path / "opt.jpg").stat().st_size


def test_jpeg_huffman_scan_of_odd_files(tmp_path):
    from tiler.io.jpeg import huffman_optimized

    a = smooth((16, 16))
    gray = save(Image.fromarray(a), tmp_path / "g.jpg")
    gray_opt = save(Image.fromarray(a), tmp_path / "go.jpg", optimize=True)
    assert not huffman_optimized(gray) and huffman_optimized(gray_opt)
    (tmp_path / "cut.jpg").write_bytes(gray_opt.read_bytes()[:40])  # ends inside the headers
    assert not huffman_optimized(tmp_path / "cut.jpg")
    assert not huffman_optimized(tmp_path / "missing.jpg")
    data = bytearray(gray_opt.read_bytes())
    data[2:2] = b"\xff\xff\xff"  # fill bytes before a marker are allowed
    (tmp_path / "fill.jpg").write_bytes(bytes(data))
    assert huffman_optimized(tmp_path / "fill.jpg")


def test_jpeg_quality_from_png_source_and_override(tmp_path):
    a = smooth((32, 32, 3))
    info = probe_image(save(Image.fromarray(a), tmp_path / "a.png"))
    write_image(a, tmp_path / "d.jpg", info)
    write_image(a, tmp_path / "q.jpg", info, quality=60)
    assert probe_image(tmp_path / "d.jpg").quality == 95
    assert probe_image(tmp_path / "q.jpg").quality == 60
    jinfo = probe_image(save(Image.fromarray(a), tmp_path / "s.jpg", quality=75))
    write_image(a, tmp_path / "w.webp", jinfo)
    assert not probe_image(tmp_path / "w.webp").lossless
    with pytest.raises(ValueError, match="quality"):
        write_image(a, tmp_path / "x.jpg", info, quality=0)


def test_alpha_kept_where_the_format_allows(tmp_path):
    a = rand((H, W, 4))
    info = probe_image(save(Image.fromarray(a), tmp_path / "a.png"))
    for ext in (".png", ".tif", ".webp"):
        write_image(a, tmp_path / f"o{ext}", info)
        np.testing.assert_array_equal(read_image(probe_image(tmp_path / f"o{ext}")), a)
    # JPEG and BMP: composited over white
    expected = (a[..., :3].astype(np.uint32) * a[..., 3:] + 255 * (255 - a[..., 3:].astype(np.uint32)) + 127) // 255
    write_image(a, tmp_path / "o.bmp", info)
    np.testing.assert_array_equal(read_image(probe_image(tmp_path / "o.bmp")), expected.astype(np.uint8))
    write_image(a, tmp_path / "o.jpg", info)
    assert probe_image(tmp_path / "o.jpg").shape == (H, W, 3)
    # GIF: alpha < 128 is transparent
    write_image(a, tmp_path / "o.gif", info)
    g = read_image(probe_image(tmp_path / "o.gif"))
    np.testing.assert_array_equal(g[..., 3], np.where(a[..., 3] < 128, 0, 255))


def test_gray_alpha_to_webp_and_gif(tmp_path):
    a = rand((H, W, 2))
    info = probe_image(save(Image.fromarray(a), tmp_path / "la.png"))
    write_image(a, tmp_path / "o.webp", info)
    got = read_image(probe_image(tmp_path / "o.webp"))
    np.testing.assert_array_equal(got[..., 0], a[..., 0])
    np.testing.assert_array_equal(got[..., 3], a[..., 1])


def test_unknown_extension_and_animation_to_still_format_refused(tmp_path):
    info = probe_image(ANIMATED_GIF)
    with pytest.raises(OutputError, match=r"o\.xyz: unknown image format"):
        check_image_output(info, tmp_path / "o.xyz")
    with pytest.raises(OutputError, match="cannot hold an animation"):
        check_image_output(info, tmp_path / "o.jpg")
    assert check_image_output(info, tmp_path / "o.webp") == "WEBP"
    assert check_image_output(info, tmp_path / "o.png") == "PNG"  # APNG


# ---------------------------------------------------------------------------
# 16-bit


def _rgb16(channels: int) -> np.ndarray:
    a = rand((H, W, channels), np.uint16, seed=channels)
    a[0, 0] = 65535
    a[0, 1] = 0
    return a


@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_stays_16bit(channels, ext, tmp_path):
    a = _rgb16(channels)
    src = tmp_path / f"s{ext}"
    assert cv2.imwrite(str(src), a[..., [2, 1, 0, 3][:channels]])
    info = probe_image(src)
    assert (info.shape, info.dtype, info.bits) == ((H, W, channels), np.uint16, 16)
    got = read_image(info)
    np.testing.assert_array_equal(got, a)
    for out_ext in (".png", ".tif"):
        dst = tmp_path / f"o{out_ext}"
        write_image(got, dst, info, overwrite=True)
        back = probe_image(dst)
        assert (back.dtype, back.bits) == (np.uint16, 16)
        np.testing.assert_array_equal(read_image(back), a)
        # an independent decoder agrees
        np.testing.assert_array_equal(cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)[..., [2, 1, 0, 3][:channels]], a)


def test_16bit_gray_and_gray_alpha(tmp_path):
    g = _rgb16(1)[..., 0]
    info = probe_image(save(Image.fromarray(g), tmp_path / "src.png"))
    assert (info.shape, info.dtype, info.mode) == ((H, W), np.uint16, "I;16")
    for ext in (".png", ".tif"):
        write_image(read_image(info), tmp_path / f"g{ext}", info)
        np.testing.assert_array_equal(read_image(probe_image(tmp_path / f"g{ext}")), g)
    la = _rgb16(2)
    (tmp_path / "la.png").write_bytes(png.encode_png16(la))
    info = probe_image(tmp_path / "la.png")
    assert (info.shape, info.dtype, info.mode, info.bits) == ((H, W, 2), np.uint16, "LA", 16)
    np.testing.assert_array_equal(read_image(info), la)
    write_image(la, tmp_path / "la2.png", info)
    np.testing.assert_array_equal(read_image(probe_image(tmp_path / "la2.png")), la)
    write_image(la, tmp_path / "la2.tif", info)  # 16-bit gray+alpha TIFF (tifffile reads and writes it)
    np.testing.assert_array_equal(read_image(probe_image(tmp_path / "la2.tif")), la)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "la2.tif"), la)


def test_16bit_to_8bit_formats_scales(tmp_path):
    a = _rgb16(3)
    (tmp_path / "s.png").write_bytes(png.encode_png16(a))
    info = probe_image(tmp_path / "s.png")
    write_image(a, tmp_path / "o.bmp", info)
    got = read_image(probe_image(tmp_path / "o.bmp"))
    np.testing.assert_array_equal(got, np.round(a / 257).astype(np.uint8))
    assert got[0, 0].tolist() == [255, 255, 255]


# ---------------------------------------------------------------------------
# orientation


UPRIGHT = {  # stored pixels -> what a viewer shows, for each EXIF orientation
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: np.rot90(a, 2),
    4: lambda a: a[::-1],
    5: lambda a: np.rot90(a, 1)[::-1],  # transpose
    6: lambda a: np.rot90(a, -1),  # 90 degrees clockwise
    7: lambda a: np.rot90(a, -1)[::-1],  # transverse
    8: lambda a: np.rot90(a, 1),  # 90 degrees counter-clockwise
}


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4), (5, 7, 6), (1, 9, 3)])
def test_orient_into_every_orientation(shape, dtype):
    from tiler.io._image import orient_into

    stored = (rng(1).random(shape) * 250).astype(dtype)
    for orientation, upright in UPRIGHT.items():
        want = upright(stored)
        out = np.full(want.shape, 7, dtype)
        assert orient_into(stored, orientation, out) is out
        np.testing.assert_array_equal(out, want)
    # a strided input and a wider output type go through numpy, same pixels
    strided = stored[::-1][::2]
    want = np.rot90(strided, -1)
    np.testing.assert_array_equal(orient_into(strided, 6, np.empty(want.shape, np.float64)), want)


@pytest.mark.parametrize("mode", ["L", "RGB", "1", "CMYK"])
def test_packed_pixels_equal_pillows_array(mode):
    from tiler.io._image import packed_pixels

    im = Image.fromarray(rand((H, W, 3), seed=2)).convert(mode)
    im = im.convert("RGB") if mode == "CMYK" else im.convert("L") if mode == "1" else im
    want = np.asarray(im)
    np.testing.assert_array_equal(packed_pixels(im), want)
    out = np.zeros(want.shape, np.uint8)
    assert packed_pixels(im, out) is out
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="C-contiguous"):
        packed_pixels(im, np.zeros((W, H, 3), np.uint8))
    with pytest.raises(ValueError, match="mode L or RGB"):
        packed_pixels(im.convert("RGBA"))


def _exif_with(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "TestCam"
    ex[0x8769] = {0x9003: "2024:01:02 03:04:05"}
    return ex.tobytes()


def _oriented_file(kind: str, orientation: int, folder: Path) -> tuple[Path, np.ndarray]:
    """A file of ``kind`` whose stored pixels carry an EXIF orientation; returns (file, stored)."""
    if kind == "png":
        stored = rand((H, W, 3), seed=orientation)
        return save(Image.fromarray(stored), folder / "o.png", exif=_exif_with(orientation)), stored
    if kind == "png16":
        stored = rand((H, W, 3), np.uint16, seed=orientation)
        chunks = png.png_metadata_chunks(exif=_exif_with(orientation))
        (folder / "o.png").write_bytes(png.encode_png16(stored, chunks))
        return folder / "o.png", stored
    dtype = np.uint16 if kind == "tif16" else np.uint8  # TIFF: the tag sits in the image's own IFD
    stored = rand((H, W, 3), dtype, seed=orientation)
    tags = [(274, 3, 1, orientation, True), (271, 2, 0, "TestCam", True)]
    tifffile.imwrite(folder / "o.tif", stored, photometric="rgb", metadata=None, extratags=tags)
    return folder / "o.tif", stored


@pytest.mark.parametrize("kind", ["png", "png16", "tif", "tif16"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(orientation, kind, tmp_path):
    src, stored = _oriented_file(kind, orientation, tmp_path)
    info = probe_image(src)
    assert info.orientation == orientation
    expected = UPRIGHT[orientation](stored)
    assert info.shape == expected.shape
    got = read_image(info)
    np.testing.assert_array_equal(got, expected)
    slot = np.zeros(info.shape, info.dtype)  # as the engine reads: into a frame buffer of its own
    assert read_image(info, out=slot) is slot
    np.testing.assert_array_equal(slot, expected)
    if kind == "png":
        with Image.open(src) as im:
            np.testing.assert_array_equal(got, np.asarray(ImageOps.exif_transpose(im)))
    if orientation == 6:  # the stored bottom-left pixel shows at the top-left
        assert got[0, 0].tolist() == stored[-1, 0].tolist()
    dst = tmp_path / ("up" + src.suffix)
    write_image(got, dst, info)
    with Image.open(dst) as im:
        assert im.getexif().get(0x0112, 1) == 1
        assert im.getexif()[0x010F] == "TestCam"
    out = probe_image(dst)
    assert out.orientation == 1
    np.testing.assert_array_equal(read_image(out), expected)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_on_jpeg(orientation, tmp_path):
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:16, :24] = (255, 0, 0)  # one red quadrant, top-left as stored
    src = save(Image.fromarray(stored), tmp_path / "o.jpg", exif=_exif_with(orientation), quality=95)
    got = read_image(probe_image(src))
    expected = UPRIGHT[orientation](stored)
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected).mean() < 3


def test_sample_exif6_jpeg_reads_upright_and_writes_orientation_1(tmp_path):
    info = probe_image(EXIF6_JPEG)
    assert (info.height, info.width) == (1200, 1800) and info.orientation == 6
    got = read_image(info)
    with Image.open(EXIF6_JPEG) as im:
        assert im.size == (1200, 1800)  # stored portrait
        reference = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(got, reference)
    dst = tmp_path / output_name(EXIF6_JPEG).name
    write_image(got, dst, info)
    with Image.open(dst) as im:
        assert im.size == (1800, 1200)
        assert im.getexif().get(0x0112, 1) == 1
    out = probe_image(dst)
    assert out.orientation == 1 and out.shape == (1200, 1800, 3)
    assert out.quality == info.quality  # the source's own tables
    assert psnr(read_image(out), got) > 35


def test_xmp_orientation_reset(tmp_path):
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'
    src = save(Image.fromarray(rand((H, W, 3))), tmp_path / "x.jpg", xmp=xmp)
    info = probe_image(src)
    assert info.orientation == 6 and b'tiff:Orientation="1"' in info.xmp
    write_image(read_image(info), tmp_path / "o.png", info)
    assert probe_image(tmp_path / "o.png").orientation == 1


# ---------------------------------------------------------------------------
# metadata


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".webp"])
def test_icc_dpi_exif_kept(ext, tmp_path):
    a = smooth((H, W, 3))
    src = save(Image.fromarray(a), tmp_path / "s.png", icc_profile=SRGB, dpi=(300, 150), exif=_exif_with(1))
    info = probe_image(src)
    assert info.icc_profile == SRGB
    write_image(read_image(info), tmp_path / f"o{ext}", info)
    out = probe_image(tmp_path / f"o{ext}")
    assert out.icc_profile == SRGB
    if ext != ".webp":
        assert out.dpi == pytest.approx((300, 150), abs=0.05)
    with Image.open(tmp_path / f"o{ext}") as im:
        ex = im.getexif()
        assert ex.get(0x010F) == "TestCam"
        assert ex.get_ifd(0x8769).get(0x9003) == "2024:01:02 03:04:05"


def test_icc_dropped_when_colour_model_changes(tmp_path):
    gray_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray_icc = gray_icc[:16] + b"GRAY" + gray_icc[20:]
    info = probe_image(save(Image.fromarray(rand((H, W))), tmp_path / "g.png", icc_profile=gray_icc))
    write_image(read_image(info), tmp_path / "o.webp", info)  # WebP has no gray: RGB
    assert probe_image(tmp_path / "o.webp").icc_profile is None
    write_image(read_image(info), tmp_path / "o.png", info)
    assert probe_image(tmp_path / "o.png").icc_profile == gray_icc


def test_png_text_kept(tmp_path):
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("Title", "tiles")
    meta.add_itxt("Comment", "naïve")
    info = probe_image(save(Image.fromarray(rand((H, W, 3))), tmp_path / "t.png", pnginfo=meta))
    write_image(read_image(info), tmp_path / "o.png", info)
    assert dict(probe_image(tmp_path / "o.png").text) == {"Title": "tiles", "Comment": "naïve"}


def test_tiff_exif_to_jpeg_and_back(tmp_path):
    a = smooth((H, W, 3))
    info = probe_image(save(Image.fromarray(a), tmp_path / "s.tif", exif=_exif_with(3)))
    assert info.orientation == 3
    write_image(read_image(info), tmp_path / "o.jpg", info)
    with Image.open(tmp_path / "o.jpg") as im:
        ex = im.getexif()
        assert (ex[0x0112], ex[0x010F]) == (1, "TestCam")
        assert 256 not in ex and 273 not in ex  # no TIFF layout tags in EXIF
        assert ex.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"


# ---------------------------------------------------------------------------
# animations


def test_sample_gif_probe():
    info = probe_image(ANIMATED_GIF)
    assert (info.format, info.n_frames, info.shape, info.dtype, info.loop) == ("GIF", 23, (270, 480, 4), np.uint8, 0)
    with Image.open(ANIMATED_GIF) as im:
        assert im.n_frames == 23
        durations = []
        for k in range(im.n_frames):
            im.seek(k)
            durations.append(im.info["duration"])
    assert info.durations == tuple(durations)
    assert set(info.durations) == {80, 90}


def test_sample_gif_round_trip_keeps_frames_durations_loop(tmp_path):
    info = probe_image(ANIMATED_GIF)
    frames = [read_image(info, frame=k) for k in range(info.n_frames)]
    with Image.open(ANIMATED_GIF) as im:
        for k in (0, 7, 22):
            im.seek(k)
            np.testing.assert_array_equal(frames[k], np.asarray(im.convert("RGBA")))
    dst = tmp_path / "o.gif"
    write_animation(iter(frames), dst, info)
    out = probe_image(dst)
    assert (out.n_frames, out.durations, out.loop, out.shape) == (23, info.durations, 0, info.shape)
    for k in range(out.n_frames):
        np.testing.assert_array_equal(read_image(out, frame=k), frames[k])
    ok, decoded = cv2.imdecodemulti(np.fromfile(dst, np.uint8), cv2.IMREAD_UNCHANGED)
    if ok and len(decoded) == 23:  # an independent decoder shows the same frames
        np.testing.assert_array_equal(decoded[5][..., [2, 1, 0]], frames[5][..., :3])


def test_frames_out_of_order(tmp_path):
    info = probe_image(ANIMATED_GIF)
    seq = [read_image(info, frame=k) for k in range(6)]
    np.testing.assert_array_equal(read_image(info, frame=5), seq[5])
    np.testing.assert_array_equal(read_image(info, frame=2), seq[2])
    buf = np.empty(info.shape, info.dtype)
    assert read_image(info, out=buf, frame=4) is buf
    np.testing.assert_array_equal(buf, seq[4])
    with pytest.raises(ValueError):
        read_image(info, frame=23)


@pytest.mark.parametrize("ext", [".gif", ".webp"])
def test_animation_keeps_identical_frames_and_holes(ext, tmp_path):
    colours = [(255, 0, 0), (255, 0, 0), (255, 0, 0), (0, 0, 255), (0, 255, 0)]
    frames = []
    for k, c in enumerate(colours):
        f = np.zeros((H, W, 4), np.uint8)
        f[..., :3] = c
        f[..., 3] = 255
        if k == 3:
            f[5:10, 5:10, 3] = 0  # a hole that must not show frame 2
            f[5:10, 5:10, :3] = 0
        frames.append(f)
    src_info = ImageInfo(
        path=tmp_path / "none.gif",
        format="GIF",
        shape=(H, W, 4),
        dtype=np.dtype(np.uint8),
        n_frames=5,
        mode="P",
        durations=(50, 60, 70, 80, 90),
        loop=2,
    )
    dst = tmp_path / f"o{ext}"
    write_animation(frames, dst, src_info)
    out = probe_image(dst)
    assert (out.n_frames, out.durations, out.loop) == (5, (50, 60, 70, 80, 90), 2)
    for k in range(5):
        np.testing.assert_array_equal(read_image(out, frame=k), frames[k])
    with Image.open(dst) as im:
        assert im.n_frames == 5


def test_animated_gif_to_webp(tmp_path):
    info = probe_image(ANIMATED_GIF)
    frames = (read_image(info, frame=k)[::4, ::4] for k in range(info.n_frames))  # small: fast lossless encode
    write_animation(frames, tmp_path / "o.webp", info)
    out = probe_image(tmp_path / "o.webp")
    assert (out.format, out.n_frames, out.durations, out.loop, out.lossless) == ("WEBP", 23, info.durations, 0, True)
    np.testing.assert_array_equal(read_image(out, frame=9), read_image(info, frame=9)[::4, ::4])


def test_write_animation_errors(tmp_path):
    info = probe_image(ANIMATED_GIF)
    f = np.zeros(info.shape, np.uint8)
    with pytest.raises(ValueError, match="durations"):
        write_animation([f, f], tmp_path / "a.gif", info)
    with pytest.raises(OutputError, match="frame 1"):
        write_animation([f, f[:10]], tmp_path / "b.gif", info, durations=[10, 10])
    with pytest.raises(OutputError, match="cannot hold an animation"):
        write_animation([f, f], tmp_path / "c.jpg", info, durations=[10, 10])
    write_animation([f], tmp_path / "d.png", info)  # one frame: a still image
    assert probe_image(tmp_path / "d.png").n_frames == 1
    assert temps_in(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["d.png"]


# ---------------------------------------------------------------------------
# bad inputs


def _good_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rand((64, 64, 3))).save(buf, "PNG")
    return buf.getvalue()


def _good_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(smooth((64, 64, 3))).save(buf, "JPEG")
    return buf.getvalue()


BAD = {
    "empty.png": lambda p: p.write_bytes(b""),
    "trunc.png": lambda p: p.write_bytes(_good_png()[: len(_good_png()) // 2]),
    "trunc.jpg": lambda p: p.write_bytes(_good_jpeg()[: len(_good_jpeg()) // 2]),
    "noise.png": lambda p: p.write_bytes(rng(3).bytes(4096)),
    "folder.png": lambda p: p.mkdir(),
    "notes.txt": lambda p: p.write_text("not an image\n" * 20),
    "missing.png": lambda p: None,
    "trunc16.png": lambda p: p.write_bytes(png.encode_png16(_rgb16(3))[:300]),
    "trunc.gif": lambda p: p.write_bytes(ANIMATED_GIF.read_bytes()[:300_000]),
    "crc.png": lambda p: p.write_bytes(_good_png()[:60] + bytes([_good_png()[60] ^ 0xFF]) + _good_png()[61:]),
    "lab.tif": lambda p: tifffile.imwrite(p, np.zeros((4, 5, 3), np.uint8), photometric="cielab", metadata=None),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_inputs_give_one_line_input_error(name, tmp_path):
    p = tmp_path / name
    BAD[name](p)
    with pytest.raises(InputError) as err:
        info = probe_image(p)
        for k in range(info.n_frames):
            read_image(info, frame=k)
    message = str(err.value)
    assert str(p) in message and "\n" not in message


def test_truncated_webp(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(rand((64, 64, 3))).save(buf, "WEBP", lossless=True)
    (tmp_path / "t.webp").write_bytes(buf.getvalue()[:-100])
    with pytest.raises(InputError, match=r"t\.webp: truncated"):
        read_image(probe_image(tmp_path / "t.webp"))


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bomb_refused_before_allocation(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    p.write_bytes(_png_header(40000, 40000))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded a bomb"))
    with pytest.raises(InputError) as err:
        probe_image(p)
    assert str(err.value) == (f"{p}: 40000x40000 = 1600000000 pixels exceeds the limit of 178956970 (--max-pixels)")


def test_gif_and_webp_bombs_refused_from_their_headers(tmp_path):
    gif = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b",\0\0\0\0\x01\0\x01\0\0\x02\x02D\x01\0;"
    (tmp_path / "big.gif").write_bytes(gif)
    with pytest.raises(InputError, match=r"65535x65535 = 4294836225 pixels exceeds"):
        probe_image(tmp_path / "big.gif")
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x02, 0, 0, 0]) + webp._p24(16383) + webp._p24(16383)
    anim = b"ANIM" + struct.pack("<I", 6) + b"\0" * 6
    body = b"WEBP" + vp8x + anim
    (tmp_path / "big.webp").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(InputError, match=r"16384x16384 = 268435456 pixels exceeds"):
        probe_image(tmp_path / "big.webp")


def test_max_pixels_option_and_animation_total(tmp_path):
    p = save(Image.fromarray(rand((H, W, 3))), tmp_path / "a.png")
    with pytest.raises(InputError, match=f"{W}x{H} = {W * H} pixels exceeds the limit of 100"):
        probe_image(p, max_pixels=100)
    with pytest.raises(InputError, match=r"23 frames of 480x270 = 2980800 pixels exceeds the limit of 1000000"):
        probe_image(ANIMATED_GIF, max_pixels=1_000_000)


def test_pillow_settings_restored():
    before = Image.MAX_IMAGE_PIXELS
    probe_image(EXIF6_JPEG)
    assert Image.MAX_IMAGE_PIXELS == before


# ---------------------------------------------------------------------------
# out=, atomic writes, overwrite


def test_read_into_shared_memory(tmp_path):
    from multiprocessing import shared_memory

    a = rand((H, W, 3))
    info = probe_image(save(Image.fromarray(a), tmp_path / "a.png"))
    shm = shared_memory.SharedMemory(create=True, size=info.nbytes)
    try:
        view = np.ndarray(info.shape, info.dtype, buffer=shm.buf)
        assert read_image(info, out=view) is view
        np.testing.assert_array_equal(view, a)
        del view
    finally:
        shm.close()
        shm.unlink()
    with pytest.raises(ValueError, match="out must have shape"):
        read_image(info, out=np.empty((H, W), np.uint8))


def test_failing_encoder_leaves_nothing(tmp_path, monkeypatch):
    a = rand((H, W, 3))
    info = probe_image(save(Image.fromarray(a), tmp_path / "a.png"))

    def broken(self, fp, format=None, **params):
        Path(fp).write_bytes(b"partial")
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(Image.Image, "save", broken)
    for ext in (".png", ".jpg", ".webp"):
        with pytest.raises(OutputError, match=rf"o{ext}: cannot write .*encoder exploded"):
            write_image(a, tmp_path / f"o{ext}", info)
        assert not (tmp_path / f"o{ext}").exists()
    monkeypatch.setitem(images.ENCODERS, "TIFF", lambda *a, **k: 1 / 0)
    with pytest.raises(OutputError):
        write_image(a, tmp_path / "o.tif", info)
    assert temps_in(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_overwrite_and_input_protection(tmp_path):
    a = rand((H, W, 3))
    src = save(Image.fromarray(a), tmp_path / "a.png")
    info = probe_image(src)
    before = src.read_bytes()
    with pytest.raises(OutputError, match="output is the input"):
        write_image(a, src, info, overwrite=True)
    (tmp_path / "link.png").symlink_to(src)
    with pytest.raises(OutputError, match="output is the input"):
        write_image(a, tmp_path / "link.png", info, overwrite=True)
    other = tmp_path / "other.png"
    other.write_bytes(b"keep me")
    with pytest.raises(OutputExists):
        write_image(a, other, info)
    assert other.read_bytes() == b"keep me"
    with pytest.raises(OutputError, match="output is the input"):
        write_image(a, other, info, overwrite=True, inputs=[other])
    write_image(a[::-1], other, info, overwrite=True)
    np.testing.assert_array_equal(read_image(probe_image(other)), a[::-1])
    assert src.read_bytes() == before
    assert temps_in(tmp_path) == []
