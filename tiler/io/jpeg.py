"""JPEG: the quality estimate and the encoder (Pillow's libjpeg, with the source's own tables)."""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tiler.io._image import DEFAULT_QUALITY, ImageInfo, as_hwc, dpi_for, flatten_alpha, icc_for, to_uint8

__all__ = ["estimate_quality", "huffman_optimized", "encode"]

# Hand-written: neither Pillow nor libjpeg reports the quality a file was made
# with (only its tables); this finds the IJG quality whose scaled Annex K
# tables are nearest, as ImageMagick's identify does.
_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    np.int64,
)  # IJG / JPEG Annex K tables, natural order
_CHROMA = np.full(64, 99, np.int64)
_CHROMA[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 47, 66]


def _ijg_table(base: np.ndarray, quality: int) -> np.ndarray:
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((base * scale + 50) // 100, 1, 255)


def estimate_quality(qtables: Sequence[Sequence[int]]) -> int | None:
    """The IJG quality (1-100) whose standard tables are nearest to ``qtables``.

    Exact for files written by libjpeg (Pillow, most software); the nearest
    match for camera tables.

    Examples
    --------
    >>> estimate_quality([_ijg_table(_LUMA, 75), _ijg_table(_CHROMA, 75)])
    75
    """
    tables = [np.asarray(t, np.int64) for t in qtables if len(t) == 64]
    if not tables:
        return None
    bases = [_LUMA, _CHROMA, _CHROMA][: len(tables)]
    errors = [sum(int(np.abs(_ijg_table(b, q) - t).sum()) for b, t in zip(bases, tables)) for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


# Hand-written: neither Pillow nor libjpeg tells which Huffman tables a file
# was coded with (Pillow skips DHT segments), and re-encoding with optimised
# tables costs about three times the plain encode. So the segments before
# the first scan are walked here and their tables compared with the standard
# ones, which are taken from libjpeg itself (an 8x8 encode without
# optimisation) rather than typed in.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # markers without a length


def _dht_tables(f: Any) -> tuple[set[tuple[int, bytes]], bool]:
    """({(class, counts + symbols)} of the DHT segments before the first scan, progressive?) of an open JPEG."""
    tables: set[tuple[int, bytes]] = set()
    if f.read(2) != b"\xff\xd8":
        return tables, False
    while True:
        byte = f.read(1)
        if byte != b"\xff":
            return tables, False  # not at a marker: damaged, Pillow's probe has the last word
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker or marker in (b"\xda", b"\xd9"):  # SOS or EOI: the headers end here
            return tables, False
        if marker[0] in _STANDALONE:
            continue
        head = f.read(2)
        if len(head) < 2:
            return tables, False
        length = struct.unpack(">H", head)[0] - 2
        if marker[0] in (0xC2, 0xC6, 0xCA, 0xCE):  # progressive frame: libjpeg optimises its tables always
            return tables, True
        if marker != b"\xc4":
            f.seek(length, io.SEEK_CUR)
            continue
        body = f.read(length)
        while len(body) >= 17:
            n = sum(body[1:17])
            tables.add((body[0] >> 4, body[1 : 17 + n]))
            body = body[17 + n :]


@functools.cache
def _standard_tables() -> frozenset[tuple[int, bytes]]:
    """The four Huffman tables of JPEG Annex K, as libjpeg writes them without optimisation."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG", optimize=False)
    buf.seek(0)
    return frozenset(_dht_tables(buf)[0])


def huffman_optimized(path: Path) -> bool:
    """Whether a JPEG's Huffman tables are its own (optimised or progressive) rather than the standard ones.

    A file without tables before its first scan (abbreviated, as motion JPEG
    frames are) uses the standard ones. A file that cannot be read says False.

    Examples
    --------
    >>> huffman_optimized(Path("camera.jpg"))   # doctest: +SKIP
    False
    """
    try:
        with open(path, "rb") as f:
            tables, progressive = _dht_tables(f)
    except OSError:
        return False
    return progressive or not tables <= _standard_tables()


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    a = flatten_alpha(to_uint8(a))
    channels = as_hwc(a).shape[2]
    # The input's choice of Huffman tables: optimised when its own were (a
    # third of the encode time, a few percent of the size); Pillow's default
    # (standard tables) for a camera's JPEG and for every other format.
    optimize = info.format == "JPEG" and (info.jpeg_optimized or info.progressive)
    kwargs: dict[str, Any] = {"optimize": optimize, "progressive": info.progressive}
    same_layout = info.format == "JPEG" and info.jpeg_qtables and len(info.jpeg_qtables) <= 4
    if quality is None and same_layout and (channels == 1) == (len(info.jpeg_qtables or ()) == 1):
        kwargs["qtables"] = [list(t) for t in info.jpeg_qtables or ()]
    else:
        kwargs["quality"] = quality or info.quality or DEFAULT_QUALITY
    if channels == 3 and info.jpeg_subsampling is not None:
        kwargs["subsampling"] = info.jpeg_subsampling
    icc = icc_for(info.icc_profile, channels)
    if icc:
        kwargs["icc_profile"] = icc
    if info.exif and len(info.exif) <= 65000:
        kwargs["exif"] = info.exif
    if info.xmp and len(info.xmp) <= 65000:
        kwargs["xmp"] = info.xmp
    if dpi_for("JPEG", info.dpi):
        kwargs["dpi"] = info.dpi
    _pillow_image(a).save(tmp, "JPEG", **kwargs)


def _pillow_image(a: np.ndarray) -> Image.Image:
    """``a`` (uint8, 1 or 3 channels) as a Pillow image to encode.

    Pillow keeps RGB as four bytes a pixel: ``Image.fromarray`` zero-fills a new
    image and unpacks into it (20 ms at 12 MP). RGB is widened to RGBX by
    OpenCV instead (threaded, 2 ms) and mapped by Pillow without a copy; the
    JPEG encoder reads RGBX as RGB (the same bytes out).
    """
    if a.ndim == 3 and a.shape[2] == 3:
        from filters._cv2 import cv2

        rgbx = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2RGBA)
        return Image.frombuffer("RGBX", (a.shape[1], a.shape[0]), rgbx, "raw", "RGBX", 0, 1)
    return Image.fromarray(np.ascontiguousarray(a))
