"""Fuzzing the image path: decode -> tile -> filter -> encode, on hostile files.

Every generated file either goes through ``tiler.process_file`` and leaves a
readable output of the probed shape, or fails with a
:class:`~tiler.errors.TileprocError` whose message is one line naming the
file; never another exception, never a hang, never a partial output or a
temporary left beside it.

Hostile files come from two strategies: random bytes behind a real magic
prefix, and small valid files (Pillow and tileproc's own encoders, in many
modes) that are then truncated, flipped, cut, grown, or given huge or zero
sizes in their headers (PNG IHDR with and without a fixed CRC, GIF screen and
frame, BMP, JPEG SOF, TIFF tags 256/257, WebP VP8X/VP8/VP8L), or changed
inside a PNG chunk with its CRC fixed, or in a TIFF directory entry.

The default suite runs a short, derandomized pass (the same examples every
run); ``-m slow`` runs a longer one; ``TILEPROC_FUZZ_EXPLORE=1`` draws new
examples each run. Cases the fuzzer found are explicit examples of every fuzz
test and regression tests at the end, with their bytes built deterministically.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import signal
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import tiler
from tiler.errors import TileprocError
from tiler.io import png
from tiler.io.images import probe_image, read_image

MAX_PIXELS = 4_000_000  # a declared bomb is refused at probe time, so no example can run long
CHAIN = "blur:sigma=1,invert"
HANG_SECONDS = 60  # far above any honest example (well under a second); a hang fails instead of blocking CI

EXT = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}

# ---------------------------------------------------------------------------
# valid seed files


def _pixels(shape, seed: int, dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape, dtype=dtype)


def _smooth(h: int, w: int, c: int, seed: int) -> np.ndarray:
    """Few distinct colours (palettes stay exact) with some structure."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([((x // 2 + y // 3 + 5 * k + seed) % 7) * 36 for k in range(c)], axis=-1)
    return a.astype(np.uint8)


def _exif6() -> bytes:
    ex = Image.Exif()
    ex[0x0112] = 6
    return ex.tobytes()


def _pil_image(mode: str, h: int, w: int, seed: int) -> Image.Image:
    if mode == "1":
        return Image.fromarray(_pixels((h, w), seed)).convert("1")
    if mode == "L":
        return Image.fromarray(_pixels((h, w), seed))
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(_pixels((h, w), seed)), Image.fromarray(_pixels((h, w), seed + 1))])
    if mode == "P":
        return Image.fromarray(_smooth(h, w, 3, seed)).quantize(32)
    if mode == "RGB":
        return Image.fromarray(_pixels((h, w, 3), seed))
    if mode == "RGBA":
        return Image.fromarray(_pixels((h, w, 4), seed))
    if mode == "CMYK":
        return Image.fromarray(_pixels((h, w, 3), seed)).convert("CMYK")
    if mode == "I;16":
        return Image.fromarray(_pixels((h, w), seed, np.uint16))
    if mode == "I":
        return Image.fromarray(_pixels((h, w), seed, np.int32) >> 4)
    if mode == "F":
        return Image.fromarray(_pixels((h, w), seed, np.float32))
    raise AssertionError(mode)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


# (format, variant) -> builder(h, w, seed) -> bytes
SEEDS: dict[tuple[str, str], Callable[[int, int, int], bytes]] = {}


def _seed(fmt: str, variant: str):
    def register(fn):
        SEEDS[(fmt, variant)] = fn
        return fn

    return register


def _plain(fmt: str, mode: str) -> Callable[[int, int, int], bytes]:
    return lambda h, w, s: _save(_pil_image(mode, h, w, s), fmt)


PLAIN_MODES = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"),
    "BMP": ("1", "L", "P", "RGB"),
    "JPEG": ("L", "RGB", "CMYK"),
}
for _fmt, _modes in PLAIN_MODES.items():
    for _mode in _modes:
        SEEDS[(_fmt, _mode)] = _plain(_fmt, _mode)


@_seed("PNG", "L+tRNS")
def _png_l_trns(h, w, s):
    return _save(_pil_image("L", h, w, s), "PNG", transparency=7)


@_seed("PNG", "P+tRNS")
def _png_p_trns(h, w, s):
    return _save(_pil_image("P", h, w, s), "PNG", transparency=0)


@_seed("PNG", "RGB16")
def _png_rgb16(h, w, s):
    return png.encode_png16(_pixels((h, w, 3), s, np.uint16))


@_seed("PNG", "RGBA16")
def _png_rgba16(h, w, s):
    return png.encode_png16(_pixels((h, w, 4), s, np.uint16))


@_seed("PNG", "LA16")
def _png_la16(h, w, s):
    return png.encode_png16(_pixels((h, w, 2), s, np.uint16))


@_seed("PNG", "RGB+exif6")
def _png_exif6(h, w, s):
    return _save(_pil_image("RGB", h, w, s), "PNG", exif=_exif6())


@_seed("JPEG", "RGB progressive exif6")
def _jpeg_progressive(h, w, s):
    return _save(_pil_image("RGB", h, w, s), "JPEG", progressive=True, exif=_exif6(), quality=80)


@_seed("TIFF", "RGB lzw")
def _tiff_lzw(h, w, s):
    return _save(_pil_image("RGB", h, w, s), "TIFF", compression="tiff_lzw")


@_seed("TIFF", "L deflate")
def _tiff_deflate(h, w, s):
    return _save(_pil_image("L", h, w, s), "TIFF", compression="tiff_adobe_deflate")


@_seed("TIFF", "P packbits")
def _tiff_packbits(h, w, s):
    return _save(_pil_image("P", h, w, s), "TIFF", compression="packbits")


def _tiff(a: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, photometric="rgb", metadata=None, **kwargs)
    return buf.getvalue()


@_seed("TIFF", "RGB16")
def _tiff_rgb16(h, w, s):
    return _tiff(_pixels((h, w, 3), s, np.uint16))


@_seed("TIFF", "RGB exif6")
def _tiff_exif6(h, w, s):
    return _tiff(_pixels((h, w, 3), s), extratags=[(274, 3, 1, 6, True)])


@_seed("BMP", "RGBA 32-bit")
def _bmp_rgba(h, w, s):
    return _save(_pil_image("RGBA", h, w, s), "BMP")


@_seed("GIF", "P")
def _gif_p(h, w, s):
    return _save(_pil_image("P", h, w, s), "GIF")


@_seed("GIF", "L")
def _gif_l(h, w, s):
    return _save(_pil_image("L", h, w, s), "GIF")


@_seed("GIF", "P+transparency")
def _gif_trns(h, w, s):
    return _save(_pil_image("P", h, w, s), "GIF", transparency=0)


@_seed("GIF", "animated")
def _gif_anim(h, w, s):
    frames = [_pil_image("P", h, w, s + k) for k in range(3)]
    return _save(
        frames[0], "GIF", save_all=True, append_images=frames[1:], duration=[40, 50, 60], loop=0, disposal=[1, 2, 1]
    )


@_seed("WEBP", "RGB lossy")
def _webp_lossy(h, w, s):
    return _save(_pil_image("RGB", h, w, s), "WEBP", quality=70)


@_seed("WEBP", "RGBA lossless")
def _webp_lossless(h, w, s):
    return _save(_pil_image("RGBA", h, w, s), "WEBP", lossless=True)


@_seed("WEBP", "RGB exif6")
def _webp_exif(h, w, s):
    return _save(_pil_image("RGB", h, w, s), "WEBP", quality=80, exif=_exif6())


@_seed("WEBP", "animated")
def _webp_anim(h, w, s):
    frames = [_pil_image("RGBA", h, w, s + k) for k in range(3)]
    return _save(
        frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=[40, 50, 60], loop=0, lossless=True
    )


@functools.cache
def _metadata() -> dict:
    from PIL import ImageCms

    ex = Image.Exif()
    ex[0x0112] = 3  # orientation
    ex[0x010F] = "fuzz"  # make
    ex[0x0131] = "tileproc"  # software
    ex.get_ifd(0x8769)[0x9003] = "2024:01:01 00:00:00"  # DateTimeOriginal, in the EXIF sub-IFD
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="3"/></rdf:RDF></x:xmpmeta>'
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return {"exif": ex.tobytes(), "xmp": xmp, "icc_profile": icc, "dpi": (72.5, 300)}


@_seed("PNG", "RGB+metadata")
def _png_metadata(h, w, s):
    from PIL import PngImagePlugin

    meta = _metadata()
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "fuzz")
    text.add_text("Title", "z" * 40, zip=True)
    text.add_itxt("XML:com.adobe.xmp", meta["xmp"].decode())
    return _save(
        _pil_image("RGB", h, w, s),
        "PNG",
        pnginfo=text,
        exif=meta["exif"],
        icc_profile=meta["icc_profile"],
        dpi=meta["dpi"],
    )


@_seed("JPEG", "RGB+metadata")
def _jpeg_metadata(h, w, s):
    return _save(_pil_image("RGB", h, w, s), "JPEG", quality=90, subsampling=1, **_metadata())


@_seed("TIFF", "RGB+metadata")
def _tiff_metadata(h, w, s):
    meta = _metadata()
    return _save(
        _pil_image("RGB", h, w, s),
        "TIFF",
        exif=meta["exif"],
        icc_profile=meta["icc_profile"],
        dpi=meta["dpi"],
        xmp=meta["xmp"],
    )


@_seed("WEBP", "RGB+metadata")
def _webp_metadata(h, w, s):
    meta = _metadata()
    return _save(
        _pil_image("RGB", h, w, s),
        "WEBP",
        lossless=True,
        exif=meta["exif"],
        icc_profile=meta["icc_profile"],
        xmp=meta["xmp"],
    )


SEED_KEYS = sorted(SEEDS)
SIZES = [(1, 1), (1, 9), (7, 1), (5, 7), (16, 16), (13, 31), (131, 140)]  # the last one is tiled on workers


@functools.cache
def seed_file(fmt: str, variant: str, h: int, w: int, seed: int) -> bytes:
    return SEEDS[(fmt, variant)](h, w, seed)


# ---------------------------------------------------------------------------
# header size fields


def _put(data: bytearray, at: int, fmt: str, value: int) -> None:
    if 0 <= at and at + struct.calcsize(fmt) <= len(data):
        bits = 8 * struct.calcsize(fmt)
        value &= (1 << bits) - 1
        if fmt[-1].islower():  # signed field: two's complement
            value = value - (1 << bits) if value >= 1 << (bits - 1) else value
        struct.pack_into(fmt, data, at, value)


def _png_dims(data: bytearray, w: int, h: int, fix_crc: bool) -> None:
    _put(data, 16, ">I", w)
    _put(data, 20, ">I", h)
    if fix_crc and len(data) >= 33:
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))


def _gif_first_descriptor(data: bytes) -> int | None:
    if len(data) < 13:
        return None
    at = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while at < len(data):
        if data[at] == 0x2C:
            return at
        if data[at] != 0x21 or at + 2 > len(data):
            return None
        at += 2
        while at < len(data) and data[at]:
            at += data[at] + 1
        at += 1
    return None


def _gif_dims(data: bytearray, w: int, h: int, frame: bool) -> None:
    at = _gif_first_descriptor(data) if frame else None
    if at is None:
        _put(data, 6, "<H", w)
        _put(data, 8, "<H", h)
    else:
        _put(data, at + 5, "<H", w)
        _put(data, at + 7, "<H", h)


def _bmp_dims(data: bytearray, w: int, h: int) -> None:
    _put(data, 18, "<i", w)
    _put(data, 22, "<i", h)


def _jpeg_dims(data: bytearray, w: int, h: int) -> None:
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            _put(data, at + 5, ">H", h)
            _put(data, at + 7, ">H", w)
            return
        at += 2 + struct.unpack_from(">H", data, at + 2)[0]


def _tiff_dims(data: bytearray, w: int, h: int, as_long: bool) -> None:
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return
    e = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(e + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return
    for k in range(struct.unpack_from(e + "H", data, ifd)[0]):
        at = ifd + 2 + 12 * k
        if at + 12 > len(data):
            return
        tag, typ = struct.unpack_from(e + "HH", data, at)
        if tag in (256, 257):
            value = w if tag == 256 else h
            if as_long:
                _put(data, at + 2, e + "H", 4)
                _put(data, at + 8, e + "I", value)
            elif typ == 3:
                _put(data, at + 8, e + "H", value)
            else:
                _put(data, at + 8, e + "I", value)


def _webp_dims(data: bytearray, w: int, h: int) -> None:
    kind = bytes(data[12:16])
    if kind == b"VP8X":
        if len(data) >= 30:  # canvas width - 1 and height - 1, 24 bits each
            data[24:27] = ((max(w, 1) - 1) & 0xFFFFFF).to_bytes(3, "little")
            data[27:30] = ((max(h, 1) - 1) & 0xFFFFFF).to_bytes(3, "little")
    elif kind == b"VP8L" and len(data) >= 25:
        bits = struct.unpack_from("<I", data, 21)[0]
        bits = (bits & ~0x0FFFFFFF) | ((max(w, 1) - 1) & 0x3FFF) | (((max(h, 1) - 1) & 0x3FFF) << 14)
        struct.pack_into("<I", data, 21, bits)
    elif kind == b"VP8 ":
        _put(data, 26, "<H", w & 0x3FFF)
        _put(data, 28, "<H", h & 0x3FFF)


def set_dims(fmt: str, data: bytes, w: int, h: int, flag: bool) -> bytes:
    """``data`` with the header's width and height overwritten (``flag``: fix the CRC / frame / LONG)."""
    out = bytearray(data)
    if fmt == "PNG":
        _png_dims(out, w, h, flag)
    elif fmt == "GIF":
        _gif_dims(out, w, h, flag)
    elif fmt == "BMP":
        _bmp_dims(out, w, h)
    elif fmt == "JPEG":
        _jpeg_dims(out, w, h)
    elif fmt == "TIFF":
        _tiff_dims(out, w, h, flag)
    else:
        _webp_dims(out, w, h)
    return bytes(out)


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(start of the chunk's data, its length) for each whole chunk."""
    found, at = [], 8
    while at + 12 <= len(data):
        n = struct.unpack_from(">I", data, at)[0]
        if at + 12 + n > len(data):
            break
        found.append((at + 8, n))
        at += 12 + n
    return found


def png_chunk_flip(data: bytes, index: int, offset: int, xor: int) -> bytes:
    """Flip a byte inside one chunk's data and fix its CRC, so the decoder sees the change."""
    chunks = [c for c in _png_chunks(data) if c[1]]
    if not chunks:
        return data
    start, n = chunks[index % len(chunks)]
    out = bytearray(data)
    out[start + offset % n] ^= xor
    struct.pack_into(">I", out, start + n, zlib.crc32(bytes(out[start - 4 : start + n])))
    return bytes(out)


def tiff_entry_set(data: bytes, index: int, field: str, value: int) -> bytes:
    """Overwrite the type, count or value of one entry of the first IFD."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return data
    e = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack_from(e + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return data
    n = min(struct.unpack_from(e + "H", data, ifd)[0], (len(data) - ifd - 2) // 12)
    if n <= 0:
        return data
    out = bytearray(data)
    at = ifd + 2 + 12 * (index % n)
    if field == "type":
        _put(out, at + 2, e + "H", value)
    elif field == "count":
        _put(out, at + 4, e + "I", value)
    else:
        _put(out, at + 8, e + "I", value)
    return bytes(out)


# ---------------------------------------------------------------------------
# strategies

MAGIC = {
    "PNG": [b"\x89PNG\r\n\x1a\n", b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"],
    "JPEG": [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\xff\xd8\xff\xc0\x00\x11\x08"],
    "GIF": [b"GIF87a", b"GIF89a"],
    "BMP": [b"BM", b"BM" + bytes(12) + b"\x28\x00\x00\x00"],
    "TIFF": [b"II*\x00", b"MM\x00*", b"II*\x00\x08\x00\x00\x00"],
    "WEBP": [b"RIFF\x00\x00\x00\x00WEBP", b"RIFF\xff\xff\xff\xffWEBPVP8X", b"RIFF\x00\x10\x00\x00WEBPVP8L"],
}
FORMATS = sorted(MAGIC)
DIM_VALUES = st.sampled_from(
    [0, 1, 2, 255, 256, 2000, 2001, 16383, 16384, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1]
) | st.integers(0, 3000)


@st.composite
def magic_garbage(draw):
    fmt = draw(st.sampled_from(FORMATS))
    prefix = draw(st.sampled_from(MAGIC[fmt]))
    body = draw(st.binary(max_size=600))
    return fmt, f"{fmt} magic + {len(body)} random bytes", prefix + body


@st.composite
def mutated_file(draw):
    fmt, variant = draw(st.sampled_from(SEED_KEYS))
    h, w = draw(st.sampled_from(SIZES))
    seed = draw(st.integers(0, 3))
    data = seed_file(fmt, variant, h, w, seed)
    steps = [f"{fmt} {variant} {w}x{h} seed {seed}"]
    if draw(st.booleans()):
        nw, nh, flag = draw(DIM_VALUES), draw(DIM_VALUES), draw(st.booleans())
        data = set_dims(fmt, data, nw, nh, flag)
        steps.append(f"dims {nw}x{nh} flag={flag}")
    ops = ["truncate", "flip", "insert", "delete"] + {"PNG": ["chunk"], "TIFF": ["entry"]}.get(fmt, [])
    for _ in range(draw(st.integers(0 if len(steps) > 1 else 1, 3))):
        op = draw(st.sampled_from(ops))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "chunk":
            xor = draw(st.integers(1, 255))
            data = png_chunk_flip(data, pos, draw(st.integers(0, 2**16)), xor)
        elif op == "entry":
            field = draw(st.sampled_from(["type", "count", "value"]))
            value = draw(st.integers(0, 20) | DIM_VALUES)
            data = tiff_entry_set(data, pos, field, value)
            op = f"entry {field}={value}"
        elif op == "truncate":
            data = data[:pos]
        elif op == "flip":
            if data:
                data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
        elif op == "insert":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]
        else:
            data = data[:pos] + data[pos + draw(st.integers(1, 16)) :]
        steps.append(f"{op} at {pos}")
    return fmt, "; ".join(steps), data


@st.composite
def hostile_case(draw):
    """(input name, output name, bytes, description)."""
    fmt, description, data = draw(st.one_of(mutated_file(), mutated_file(), magic_garbage()))
    in_ext = EXT[fmt] if draw(st.integers(0, 7)) else draw(st.sampled_from(sorted(EXT.values())))
    out_ext = EXT[fmt] if draw(st.integers(0, 3)) else draw(st.sampled_from(sorted(EXT.values())))
    return "in" + in_ext, "out" + out_ext, data, description


# ---------------------------------------------------------------------------
# what the fuzzer found, as bytes built deterministically


def _png(width: int, height: int, colour_type: int, raw: bytes, *chunks: tuple[bytes, bytes]) -> bytes:
    """A PNG (8-bit samples) from filtered scanlines ``raw`` and extra chunks before IDAT."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    body = b"".join(chunk(k, v) for k, v in chunks)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


BROKEN_EXIF = b"XX*\x00\x08\x00\x00\x00"  # not a TIFF header: "II*" or "MM*" expected


def broken_exif_png() -> bytes:
    """A 2x1 gray PNG whose eXIf chunk (CRC correct) does not start with a TIFF header."""
    return _png(2, 1, 0, b"\x00\x40\xc0", (b"eXIf", BROKEN_EXIF))


def broken_exif_webp() -> bytes:
    """A 2x1 lossless WebP with an EXIF chunk that does not start with a TIFF header."""
    data = _save(
        Image.fromarray(np.array([[[10, 20, 30], [200, 100, 0]]], np.uint8)), "WEBP", lossless=True, exif=BROKEN_EXIF
    )
    assert b"EXIF" in data and BROKEN_EXIF in data
    return data


def broken_exif_jpeg() -> bytes:
    data = _save(Image.fromarray(np.full((8, 8, 3), 90, np.uint8)), "JPEG", exif=b"Exif\x00\x00" + BROKEN_EXIF)
    assert BROKEN_EXIF in data
    return data


def gray_gif() -> bytes:
    """A 1x1 GIF whose 2-entry palette is the identity gray ramp, which Pillow opens as mode L."""
    screen = struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + bytes([0, 0, 0, 1, 1, 1])
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"  # LZW: clear, 0, end
    return b"GIF89a" + screen + image + b"\x3b"


def huge_dpi_tiff() -> bytes:
    """A valid 2x3 RGB TIFF at 10^9 dots per inch (XResolution 1000000000/1)."""
    return _save(Image.fromarray(np.full((2, 3, 3), 50, np.uint8)), "TIFF", dpi=(1e9, 1e9))


FOUND = {
    "png-broken-exif": broken_exif_png(),
    "webp-broken-exif": broken_exif_webp(),
    "jpeg-broken-exif": broken_exif_jpeg(),
    "gif-gray": gray_gif(),
    "tiff-huge-dpi": huge_dpi_tiff(),
}


# ---------------------------------------------------------------------------
# the property


class Hang(Exception):
    """An example ran far longer than any honest one."""


@contextlib.contextmanager
def no_hang(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_case(run: Callable[[Path, Path], Path], in_name: str, out_name: str, data: bytes) -> str:
    """Run one file through ``run(src, out)`` and check the promise; returns "ok" or "refused"."""
    with tempfile.TemporaryDirectory(prefix="tileproc-fuzz-") as tmp:
        folder = Path(tmp)
        src, out = folder / in_name, folder / out_name
        src.write_bytes(data)
        try:
            with no_hang(HANG_SECONDS):
                result = run(src, out)
        except TileprocError as exc:
            message = str(exc)
            assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
            assert str(src) in message or str(out) in message, f"names neither file: {message!r}"
            assert sorted(os.listdir(folder)) == [in_name], f"left behind: {sorted(os.listdir(folder))}"
            assert src.read_bytes() == data
            return "refused"
        assert Path(result) == out
        assert sorted(os.listdir(folder)) == sorted([in_name, out_name]), sorted(os.listdir(folder))
        assert src.read_bytes() == data
        info_in = probe_image(src, max_pixels=MAX_PIXELS)
        info_out = probe_image(out)
        if info_out.format == info_in.format and info_in.format not in ("JPEG", "BMP"):
            assert info_out.shape == info_in.shape, (info_in, info_out)  # same format: same channels
        else:
            assert info_out.shape[:2] == info_in.shape[:2], (info_in, info_out)  # JPEG/BMP drop alpha
        assert info_out.n_frames == info_in.n_frames
        pixels = read_image(info_out, frame=info_out.n_frames - 1)
        assert pixels.shape == info_out.shape
        return "ok"


def in_process(src: Path, out: Path) -> Path:
    return tiler.process_file(src, out, CHAIN, workers=0, max_pixels=MAX_PIXELS)


# Derandomized: the same examples on every run, so CI is stable. TILEPROC_FUZZ_EXPLORE=1 draws new ones.
FUZZ = dict(
    database=None,
    deadline=None,
    derandomize=not os.environ.get("TILEPROC_FUZZ_EXPLORE"),
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
)


def found_cases(f):
    """The cases the fuzzer found, as explicit examples of every fuzz test."""
    for name, data in FOUND.items():
        ext = EXT[name.split("-")[0].upper()]
        f = example(("in" + ext, "out" + ext, data, name))(f)
    return f


@found_cases
@settings(max_examples=500, **FUZZ)
@given(hostile_case())
def test_fuzz_in_process(case):
    in_name, out_name, data, _ = case
    check_case(in_process, in_name, out_name, data)


@pytest.mark.slow
@found_cases
@settings(max_examples=6000, **FUZZ)
@given(hostile_case())
def test_fuzz_in_process_long(case):
    in_name, out_name, data, _ = case
    check_case(in_process, in_name, out_name, data)


def _fuzz_through_engine(max_examples: int) -> None:
    with tiler.Engine(workers=2) as engine:

        def on_workers(src: Path, out: Path) -> Path:
            return engine.process_file(src, out, CHAIN, max_pixels=MAX_PIXELS)

        @found_cases
        @settings(max_examples=max_examples, **FUZZ)
        @given(hostile_case())
        def run(case):
            in_name, out_name, data, _ = case
            check_case(on_workers, in_name, out_name, data)

        run()


def test_fuzz_on_workers():
    _fuzz_through_engine(50)


@pytest.mark.slow
def test_fuzz_on_workers_long():
    _fuzz_through_engine(600)


# ---------------------------------------------------------------------------
# the seeds themselves are valid, and go through untouched


@pytest.mark.parametrize("key", SEED_KEYS, ids=["-".join(k).replace(" ", "_") for k in SEED_KEYS])
def test_every_seed_file_is_processed(key):
    data = seed_file(*key, 5, 7, 0)
    assert check_case(in_process, "in" + EXT[key[0]], "out" + EXT[key[0]], data) == "ok"


# ---------------------------------------------------------------------------
# regressions: the cases the fuzzer found, with what they must do


@pytest.mark.parametrize("name", ["png-broken-exif", "webp-broken-exif", "jpeg-broken-exif"])
@pytest.mark.parametrize("out_ext", [".png", ".jpg", ".tif", ".webp"])
def test_broken_exif_is_dropped_not_fatal(tmp_path, name, out_ext):
    """An EXIF block that is not TIFF data is metadata, not pixels: the image goes through without it.

    Found by the fuzzer (a flipped byte inside the eXIf/EXIF payload of a PNG or
    WebP): Pillow's getexif() raised SyntaxError("not a TIFF file") during the
    probe and the whole file was refused as "truncated or corrupt image".
    """
    src = tmp_path / ("in" + EXT[name.split("-")[0].upper()])
    src.write_bytes(FOUND[name])
    info = probe_image(src)
    assert info.exif is None
    out = tiler.process_file(src, tmp_path / ("out" + out_ext), "invert", workers=0)
    got = read_image(probe_image(out))
    assert got.shape[:2] == info.shape[:2]
    assert probe_image(out).exif is None


def test_gray_gif_is_written_back_gray(tmp_path):
    """Found by the fuzzer: a GIF whose palette is the identity gray ramp reads as (H, W) uint8;
    its output must read back the same (it was written as an RGB palette GIF before)."""
    src = tmp_path / "in.gif"
    src.write_bytes(gray_gif())
    assert Image.open(src).mode == "L"
    info = probe_image(src)
    assert info.shape == (1, 1)
    out = tiler.process_file(src, tmp_path / "out.gif", "invert", workers=0)
    assert probe_image(out).shape == info.shape


@pytest.mark.parametrize("out_ext", [".png", ".bmp"])
def test_dpi_out_of_range_for_the_output_is_dropped(tmp_path, out_ext):
    """A valid TIFF at 10^9 dpi: PNG (pHYs, 32-bit dots per metre) and BMP cannot hold it.
    Metadata is kept "where the format allows", so the DPI is dropped, not the file."""
    src = tmp_path / "in.tif"
    src.write_bytes(huge_dpi_tiff())
    assert probe_image(src).dpi == (1e9, 1e9)
    out = tiler.process_file(src, tmp_path / ("out" + out_ext), "invert", workers=0)
    assert probe_image(out).shape == (2, 3, 3)
