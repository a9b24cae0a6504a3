"""JPEG: the quality estimate and the encoder (Pillow's libjpeg, with the source's own tables)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tiler.io._image import DEFAULT_QUALITY, ImageInfo, as_hwc, dpi_for, flatten_alpha, icc_for, to_uint8

__all__ = ["estimate_quality", "encode"]

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


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    a = flatten_alpha(to_uint8(a))
    channels = as_hwc(a).shape[2]
    kwargs: dict[str, Any] = {"optimize": True, "progressive": info.progressive}
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
    Image.fromarray(np.ascontiguousarray(a)).save(tmp, "JPEG", **kwargs)
