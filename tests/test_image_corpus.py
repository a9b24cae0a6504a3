"""Odd images made at test time (tifffile, Pillow): each through the identity chain and ``invert``,
end to end on the engine, compared with an independent decode (tifffile or Pillow)."""

from __future__ import annotations

import dataclasses
import io
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import tiler
from filters.registry import BUILTINS
from tiler.errors import InputError
from tiler.io.images import probe_image, read_image, write_image
from tiler.io.tiff import from_samples

H, W = 19, 23  # odd, non-square: a wrong transpose or plane order cannot pass
IDENTITY = "gamma:gamma=1"  # exact for every dtype: a lookup table for integers, v ** 1.0 for float


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _ints(dtype, shape, seed=0) -> np.ndarray:
    info = np.iinfo(dtype)
    a = _rng(seed).integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)
    a.flat[0], a.flat[1] = info.min, info.max
    return a


# name -> (writer(path) -> samples as stored, kwargs of tifffile.imwrite)
TIFFS = {
    "planar_strip_16bit_rgb": (_ints(np.uint16, (H, W, 3)), {"photometric": "rgb", "planarconfig": "separate"}),
    "planar_tiled_16bit_rgba": (
        _ints(np.uint16, (H, W, 4), 1),
        {"photometric": "rgb", "planarconfig": "separate", "tile": (16, 16), "extrasamples": ["unassalpha"]},
    ),
    "contig_tiled_16bit_rgb_lzw": (
        _ints(np.uint16, (H, W, 3), 2),
        {"photometric": "rgb", "tile": (16, 16), "compression": "lzw"},
    ),
    "int16_gray": (_ints(np.int16, (H, W), 3), {"photometric": "minisblack"}),
    "int8_gray": (_ints(np.int8, (H, W), 4), {"photometric": "minisblack"}),
    "int32_gray": (_ints(np.int32, (H, W), 5) // 1024, {"photometric": "minisblack"}),
    "uint32_gray": (_ints(np.uint32, (H, W), 6) // 1024, {"photometric": "minisblack"}),
    "float32_wide": ((_rng(7).standard_normal((H, W)) * 1000).astype(np.float32), {"photometric": "minisblack"}),
    "float32_unit": (_rng(8).random((H, W), dtype=np.float32), {"photometric": "minisblack"}),
    "float64_rgb": ((_rng(9).standard_normal((H, W, 3)) * 5).astype(np.float64), {"photometric": "rgb"}),
}


def _expected_invert(stored: np.ndarray) -> np.ndarray:
    """What ``invert`` means for each sample type (see tiler.io.tiff), from the stored samples."""
    if stored.dtype.kind == "u" and stored.itemsize <= 2:
        return np.iinfo(stored.dtype).max - stored
    if stored.dtype.kind == "i" and stored.itemsize <= 2:
        return -1 - stored
    lo, hi = float(stored.min()), float(stored.max())
    if stored.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return (1 - stored.astype(np.float32)).astype(stored.dtype)
    if stored.dtype.kind in "iu":
        return (lo + hi - stored.astype(np.float64)).astype(stored.dtype)
    return (lo + hi - stored.astype(np.float64)).astype(stored.dtype)


@pytest.fixture
def engine():
    with tiler.Engine(workers=1) as e:
        yield e


@pytest.mark.parametrize("name", list(TIFFS))
def test_tiff_sample_types_identity_and_invert(name, engine, tmp_path):
    stored, kwargs = TIFFS[name]
    src = tmp_path / f"{name}.tif"
    planar = kwargs.get("planarconfig") == "separate"
    tifffile.imwrite(src, np.moveaxis(stored, -1, 0) if planar else stored, metadata=None, **kwargs)
    truth = tifffile.imread(src)
    if truth.ndim == 3 and truth.shape[0] in (3, 4) and truth.shape[1:] == (H, W):
        truth = np.moveaxis(truth, 0, -1)  # tifffile gives planar pages plane first
    np.testing.assert_array_equal(truth, stored)

    engine.process_file(src, tmp_path / "same.tif", IDENTITY)
    out = tifffile.imread(tmp_path / "same.tif")
    assert out.dtype == stored.dtype
    if stored.dtype.kind == "f" and not (stored.min() >= 0 and stored.max() <= 1):
        np.testing.assert_allclose(out, stored, rtol=1e-6, atol=1e-6 * float(np.ptp(stored)))
    else:
        np.testing.assert_array_equal(out, stored)

    engine.process_file(src, tmp_path / "inv.tif", "invert")
    inv = tifffile.imread(tmp_path / "inv.tif")
    expected = _expected_invert(stored)
    if stored.ndim == 3 and stored.shape[2] == 4:  # alpha passes through
        expected[..., 3] = stored[..., 3]
    if stored.dtype.kind == "f" or stored.itemsize == 4:
        np.testing.assert_allclose(inv.astype(np.float64), expected, rtol=1e-6, atol=1e-6 * float(np.ptp(stored)) + 0.5)
    else:
        np.testing.assert_array_equal(inv, expected)


@pytest.mark.parametrize("name", ["int16_gray", "int32_gray", "float32_wide"])
def test_every_builtin_keeps_the_range_of_wide_sample_types(name, tmp_path):
    """No filter clips a wide-range file to {0, 1}: each keeps many distinct values inside the data range."""
    stored, kwargs = TIFFS[name]
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, stored, metadata=None, **kwargs)
    info = probe_image(src)
    frame = read_image(info)
    np.testing.assert_array_equal(frame, from_samples(stored, info.value_range))
    lo, hi = float(stored.min()), float(stored.max())
    for fname in sorted(BUILTINS):
        out = tiler.process(frame, fname, workers=0)
        assert out.dtype == frame.dtype, fname
        tiler.io.images.write_image(out, tmp_path / f"{fname}.tif", info)
        back = tifffile.imread(tmp_path / f"{fname}.tif")
        assert back.dtype == stored.dtype, fname
        assert lo <= float(back.min()) and float(back.max()) <= hi + 1e-3 * (hi - lo), fname
        if fname not in ("threshold",):
            assert len(np.unique(back)) > 2, fname


# ---------------------------------------------------------------------------
# PNG and BMP oddities


def _apng(path: Path, default_separate: bool) -> list[np.ndarray]:
    frames = [np.full((H, W, 4), (c, 255 - c, c // 2, 200), np.uint8) for c in (10, 200, 200, 90)]
    frames[2][3:7, 4:9] = (1, 2, 3, 255)
    ims = [Image.fromarray(f) for f in frames]
    if default_separate:
        default = Image.fromarray(np.full((H, W, 4), 77, np.uint8))
        default.save(path, save_all=True, append_images=ims, default_image=True, duration=[0, 40, 50, 60, 70], loop=2)
        return [np.asarray(default)] + frames
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=[40, 50, 60, 70], loop=2)
    return frames


def _pillow_frames(path: Path) -> tuple[list[np.ndarray], list[int], int]:
    with Image.open(path) as im:
        out, durations = [], []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.asarray(im.convert("RGBA")))
            durations.append(int(im.info.get("duration", 0) or 0))
        return out, durations, im.info.get("loop")


@pytest.mark.parametrize("default_separate", [False, True])
def test_apng_is_an_animation(default_separate, engine, tmp_path):
    src = tmp_path / "a.png"
    frames = _apng(src, default_separate)
    info = probe_image(src)
    assert info.n_frames == len(frames) and info.loop == 2
    assert info.apng_default_separate == default_separate
    decoded, durations, _ = _pillow_frames(src)
    for k in range(info.n_frames):
        np.testing.assert_array_equal(read_image(info, frame=k), decoded[k])

    engine.process_file(src, tmp_path / "same.png", IDENTITY)
    got, got_durations, loop = _pillow_frames(tmp_path / "same.png")
    assert len(got) == len(frames)  # the two identical-looking neighbours are not merged
    for g, d in zip(got, decoded):
        np.testing.assert_array_equal(g, d)
    assert got_durations[1:] == durations[1:] and loop == 2
    if default_separate:
        with Image.open(tmp_path / "same.png") as im:
            assert im.info.get("default_image")

    engine.process_file(src, tmp_path / "inv.png", "invert")
    inv, _, _ = _pillow_frames(tmp_path / "inv.png")
    for g, d in zip(inv, decoded):
        np.testing.assert_array_equal(g[..., :3], 255 - d[..., :3])
        np.testing.assert_array_equal(g[..., 3], d[..., 3])


def test_one_bit_png_with_trns_keeps_its_transparency(engine, tmp_path):
    bits = _rng(3).random((H, W)) > 0.5
    src = tmp_path / "b.png"
    Image.fromarray(bits).save(src, transparency=0)  # black is transparent
    with Image.open(src) as im:
        assert im.mode == "1" and "transparency" in im.info
        truth = np.asarray(im.convert("LA"))
    info = probe_image(src)
    assert info.shape == (H, W, 2)
    np.testing.assert_array_equal(read_image(info), truth)
    engine.process_file(src, tmp_path / "same.png", IDENTITY)
    with Image.open(tmp_path / "same.png") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("LA")), truth)
    engine.process_file(src, tmp_path / "inv.png", "invert")
    with Image.open(tmp_path / "inv.png") as im:
        inv = np.asarray(im.convert("LA"))
    np.testing.assert_array_equal(inv[..., 0], 255 - truth[..., 0])
    np.testing.assert_array_equal(inv[..., 1], truth[..., 1])


def _rgb565_bmp(rgb: np.ndarray) -> bytes:
    """A BITMAPINFOHEADER BMP with BI_BITFIELDS 5-6-5 masks, bottom-up rows padded to 4 bytes."""
    h, w, _ = rgb.shape
    r, g, b = (rgb[..., 0].astype(np.uint16) >> 3), (rgb[..., 1].astype(np.uint16) >> 2), rgb[..., 2] >> 3
    px = ((r << 11) | (g << 5) | b.astype(np.uint16)).astype("<u2")
    stride = (w * 2 + 3) & ~3
    rows = b"".join(px[y].tobytes().ljust(stride, b"\0") for y in range(h - 1, -1, -1))
    masks = struct.pack("<III", 0xF800, 0x07E0, 0x001F)
    header = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 16, 3, len(rows), 2835, 2835, 0, 0)
    offset = 14 + len(header) + len(masks)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + header + masks + rows


def test_rgb565_bmp_is_read(engine, tmp_path):
    src = tmp_path / "565.bmp"
    src.write_bytes(_rgb565_bmp(_ints(np.uint8, (H, W, 3), 4)))
    with Image.open(io.BytesIO(src.read_bytes())) as im:
        truth = np.asarray(im.convert("RGB"))
    info = probe_image(src)
    np.testing.assert_array_equal(read_image(info), truth)
    engine.process_file(src, tmp_path / "same.bmp", IDENTITY)
    with Image.open(tmp_path / "same.bmp") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("RGB")), truth)
    engine.process_file(src, tmp_path / "inv.png", "invert")
    with Image.open(tmp_path / "inv.png") as im:
        np.testing.assert_array_equal(np.asarray(im), 255 - truth)


def test_planar_square_with_as_many_samples_as_rows(tmp_path):
    """4 planes of 4x4: only the file's PlanarConfiguration tells planes from rows."""
    a = _ints(np.uint16, (4, 4, 4), 11)
    src = tmp_path / "sq.tif"
    tifffile.imwrite(
        src, np.moveaxis(a, -1, 0), photometric="rgb", planarconfig="separate", extrasamples=["unassalpha"]
    )
    np.testing.assert_array_equal(read_image(probe_image(src)), a)


@pytest.mark.parametrize("compression", ["jpeg", "tiff_lzw", "packbits", "group4"])
def test_compressed_tiffs_decode_as_pillow_does(compression, tmp_path):
    """Codecs beyond deflate come from imagecodecs; the pixels agree with Pillow's libtiff decode."""
    import imagecodecs

    if compression == "group4" and not hasattr(imagecodecs, "ccittfax4_decode"):
        pytest.skip("this imagecodecs has no CCITT decoder (a clear refusal then: see test_images)")
    rgb = np.stack(np.broadcast_arrays(*np.mgrid[0:H, 0:W] * 9, 77), axis=-1).astype(np.uint8)
    im = Image.fromarray(rgb)
    if compression == "group4":
        im = im.convert("1")
    src = tmp_path / "c.tif"
    im.save(src, compression=compression)
    with Image.open(src) as ref:
        truth = np.asarray(ref.convert("L" if compression == "group4" else "RGB"))
    np.testing.assert_array_equal(read_image(probe_image(src)), truth)


def test_16bit_png_by_opencv_keeps_its_metadata_chunks(tmp_path):
    import cv2
    from PIL import ImageCms, PngImagePlugin

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    a = _ints(np.uint16, (H, W, 3), 12)
    ex = Image.Exif()
    ex[0x010F] = "TestCam"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("Title", "tiles")
    src = tmp_path / "s.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src, icc_profile=srgb, dpi=(300, 150), exif=ex, pnginfo=meta)
    info = dataclasses.replace(probe_image(src), dtype=np.dtype(np.uint16), bits=16)
    write_image(a, tmp_path / "o.png", info)
    out = probe_image(tmp_path / "o.png")
    assert (out.bits, out.icc_profile, dict(out.text)) == (16, srgb, {"Title": "tiles"})
    assert out.dpi == pytest.approx((300, 150), abs=0.05)
    with Image.open(tmp_path / "o.png") as im:
        assert im.getexif()[0x010F] == "TestCam"
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "o.png"), cv2.IMREAD_UNCHANGED)[..., ::-1], a)


def test_palette_tiff_with_16bit_indices(tmp_path):
    indices = _rng(13).integers(0, 300, (H, W)).astype(np.uint16)
    colormap = _rng(14).integers(0, 65536, (3, 65536)).astype(np.uint16)
    src = tmp_path / "p16.tif"
    tifffile.imwrite(src, indices, photometric="palette", colormap=colormap, metadata=None)
    expected = (colormap >> 8).astype(np.uint8).T[indices]
    np.testing.assert_array_equal(read_image(probe_image(src)), expected)


def test_a_compression_without_decoder_is_refused_on_one_line(tmp_path):
    src = tmp_path / "x.tif"
    tifffile.imwrite(src, np.zeros((H, W), np.uint8), metadata=None)
    data = bytearray(src.read_bytes())
    ifd0 = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd0)[0]):
        if struct.unpack_from("<H", data, ifd0 + 2 + 12 * k)[0] == 259:
            struct.pack_into("<H", data, ifd0 + 2 + 12 * k + 8, 60123)  # a compression no library knows
    src.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        probe_image(src)
    assert str(err.value) == f"{src}: unsupported TIFF compression 60123 (no decoder in this imagecodecs)"
