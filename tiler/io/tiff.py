"""TIFF through tifffile: every sample type, planar or contiguous, strips or tiles; metadata kept.

Sample types
------------
The filters work on uint8, uint16 and float32 (nominally 0..1). A TIFF's
samples are brought to one of those on read and back to the file's own type
on write to TIFF, so the identity chain writes the samples it read:

========================  ==============================  =====================================
file samples              array                           rule (and exactness)
========================  ==============================  =====================================
1-bit                     uint8, 0 or 255                 exact
uint8, uint16             uint8, uint16                   as stored (MinIsWhite inverted)
int8, int16               uint8, uint16                   full scale: ``v + 128``, ``v + 32768``;
                                                          exact both ways
uint32, int32             float32, 0..1                   the image's data range ``lo..hi`` maps to
                                                          0..1; back ``rint(x * (hi - lo)) + lo``;
                                                          exact when ``hi - lo < 2**23``
float16, float32,         float32                         kept as they are when every finite value
float64                                                   is in 0..1; else the data range maps to
                                                          0..1 and back (within float32 rounding)
========================  ==============================  =====================================

So ``invert`` of int16 gives ``-1 - v``, of int32 ``lo + hi - v``, and no
filter clips a wide-range file to {0, 1}. The data range is read at probe
time (those types only: it decodes the image once more).

Colour: gray (MinIsBlack/MinIsWhite), RGB, palette (through the one palette
policy of :mod:`tiler.io._image`), CMYK (uint8, converted to RGB as Pillow
converts it), YCbCr (converted to RGB), each with an alpha channel when an
extra sample is declared alpha; extra samples of unspecified meaning are
dropped. The first page is read; a file of several pages says so in
one line (the other pages are left out). The Orientation tag is applied on read by
tileproc (tifffile returns stored pixels) and written as 1.

Writing keeps 16-bit and float samples, the file's own sample type (when
the source was a TIFF), deflate compression with a predictor unless the
source was uncompressed, resolution, ICC profile, XMP, and EXIF: IFD0 tags
as extra tags and the EXIF and GPS sub-IFDs appended and linked by hand,
since tifffile's writer does not write those sub-IFDs (its documentation
says so).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from tiler.errors import InputError
from tiler.io._image import (
    NOT_EXIF,
    ImageInfo,
    apply_palette,
    as_hwc,
    bilevel,
    check_pixels,
    clean_exif,
    icc_for,
    ifd_problems,
    log,
    note,
    palette_for,
    squeeze,
    tifffile_messages,
    xmp_orientation_reset,
)

__all__ = ["probe", "read", "encode", "from_samples", "to_samples"]

_P = tifffile.PHOTOMETRIC
_E = tifffile.EXTRASAMPLE


# ---------------------------------------------------------------------------
# sample types


_ENGINE_DTYPE = {
    "b1": np.uint8,
    "u1": np.uint8,
    "i1": np.uint8,
    "u2": np.uint16,
    "i2": np.uint16,
    "u4": np.float32,
    "i4": np.float32,
    "f2": np.float32,
    "f4": np.float32,
    "f8": np.float32,
}


def _engine_dtype(sample: np.dtype) -> np.dtype:
    """What the filters see for a file's sample type (see the module's table)."""
    found = _ENGINE_DTYPE.get(f"{sample.kind}{sample.itemsize}")
    if found is None:
        raise ValueError(f"unsupported sample type {sample}")
    return np.dtype(found)


def _data_range(a: np.ndarray) -> tuple[float, float] | None:
    """The range that maps to 0..1, or None when the values are kept as they are."""
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a
    if finite.size == 0:
        return None
    lo, hi = float(finite.min()), float(finite.max())
    if a.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return None
    if hi == lo:
        hi = lo + 1.0
    return lo, hi


def from_samples(a: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """File samples -> the array the filters see (see the module's table)."""
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype in (np.uint8, np.uint16):
        return a
    if a.dtype == np.int8:
        return (a.view(np.uint8) ^ np.uint8(0x80)).astype(np.uint8)
    if a.dtype == np.int16:
        return (a.view(np.uint16) ^ np.uint16(0x8000)).astype(np.uint16)
    if value_range is None:
        return a.astype(np.float32)
    lo, hi = value_range
    return ((a.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def to_samples(a: np.ndarray, sample: np.dtype, value_range: tuple[float, float] | None) -> np.ndarray:
    """The inverse of :func:`from_samples`: filtered array -> the file's sample type."""
    if sample == np.int8 and a.dtype == np.uint8:
        return (a ^ np.uint8(0x80)).view(np.int8)
    if sample == np.int16 and a.dtype == np.uint16:
        return (a ^ np.uint16(0x8000)).view(np.int16)
    if a.dtype != np.float32 or sample.kind not in "iuf":
        return a
    wide = a.astype(np.float64)
    if value_range is not None:
        lo, hi = value_range
        wide = wide * (hi - lo) + lo
    if sample.kind == "f":
        return wide.astype(sample)
    info = np.iinfo(sample)
    return np.clip(np.rint(wide), info.min, info.max).astype(sample)


# ---------------------------------------------------------------------------
# probe


_BASE_SAMPLES = {_P.MINISBLACK: 1, _P.MINISWHITE: 1, _P.PALETTE: 1, _P.RGB: 3, _P.YCBCR: 3, _P.SEPARATED: 4}


def _extras(page: Any) -> tuple[int, ...]:
    """The page's extra samples; a file without an ExtraSamples tag but with one sample more than its
    colour model needs (OpenCV writes RGBA so) has alpha there, as libtiff's RGBA reader assumes."""
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    missing = page.samplesperpixel - _BASE_SAMPLES.get(page.photometric, page.samplesperpixel) - len(extras)
    if missing > 0:
        extras += (int(_E.UNASSALPHA) if not extras else 0,) + (0,) * (missing - 1)
    return extras


def _colour(path: Path, page: Any) -> tuple[str, int]:
    """(mode, channels of the array) for a page's photometric and extra samples."""
    photometric = page.photometric
    extras = _extras(page)
    alpha = any(e in (_E.ASSOCALPHA, _E.UNASSALPHA) for e in extras)
    if page.compression in (6, 7) and photometric == _P.YCBCR:
        photometric = _P.RGB  # the JPEG decoder returns RGB
    if photometric in (_P.MINISBLACK, _P.MINISWHITE):
        if page.bitspersample == 1 and not alpha:
            return "1", 1
        return ("LA", 2) if alpha else ("L", 1)
    if photometric == _P.RGB:
        return ("RGBA", 4) if alpha else ("RGB", 3)
    if photometric == _P.PALETTE:
        return ("PA", 4) if alpha else ("P", 3)
    if photometric == _P.SEPARATED and page.samplesperpixel - len(extras) == 4 and page.dtype == np.uint8:
        return "CMYK", 3
    if photometric == _P.YCBCR and page.dtype == np.uint8:
        return "YCbCr", 3
    name = getattr(photometric, "name", str(photometric))
    raise InputError(f"{path}: unsupported TIFF colour model {name} ({page.samplesperpixel} samples of {page.dtype})")


def _resolution(page: Any) -> tuple[float, float] | None:
    tags = page.tags
    try:
        x, y = tags[282].value, tags[283].value
        unit = tags[296].value if 296 in tags else 2
        dpi = [v[0] / v[1] if isinstance(v, tuple) else float(v) for v in (x, y)]
    except (KeyError, ZeroDivisionError, TypeError, IndexError):
        return None
    if int(unit) == 3:
        dpi = [d * 2.54 for d in dpi]
    elif int(unit) != 2:
        return None
    return (dpi[0], dpi[1]) if all(d > 0 for d in dpi) else None


def _exif(path: Path) -> tuple[bytes | None, int]:
    """(EXIF to write back, orientation) from IFD0, parsed by Pillow's EXIF reader once the IFDs check out."""
    ex = Image.Exif()
    try:
        with open(path, "rb") as f:
            problems = ifd_problems(f, os.fstat(f.fileno()).st_size)
            if problems:
                note(path, "damaged TIFF tags left out", problems)
                return None, _orientation_tag(path)
            f.seek(0)
            ex.load_from_fp(f)
            orientation = int(ex.get(0x0112, 1) or 1)
            return clean_exif(ex), orientation if 1 <= orientation <= 8 else 1
    except Exception:  # broken EXIF is metadata, not pixels: drop it
        return None, 1


def _orientation_tag(path: Path) -> int:
    with tifffile_messages(), tifffile.TiffFile(path) as tif:
        tag = tif.pages.first.tags.get(274)
        value = int(tag.value) if tag is not None else 1
    return value if 1 <= value <= 8 else 1


def _page_count(tif: tifffile.TiffFile) -> int:
    """Pages of the file, not counting reduced-resolution copies (previews, thumbnails) of the first."""
    if len(tif.pages) < 2:
        return 1
    return sum(1 for page in tif.pages if not getattr(page, "is_reduced", False))  # a TiffFrame has no flags


def probe(path: Path, max_pixels: int) -> ImageInfo:
    """What :func:`read` will return and what :func:`encode` keeps; decodes only int32/uint32/float files."""
    with tifffile_messages() as quiet, tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        width, height = int(page.imagewidth), int(page.imagelength)
        check_pixels(path, width, height, 1, max_pixels)
        compression = int(page.compression)
        try:
            tifffile.TIFF.DECOMPRESSORS[compression]
        except KeyError:
            name = getattr(page.compression, "name", str(compression))
            raise InputError(f"{path}: unsupported TIFF compression {name} (no decoder in this imagecodecs)") from None
        if page.dtype is None:
            raise InputError(f"{path}: unsupported TIFF samples ({page.bitspersample}-bit, format {page.sampleformat})")
        sample = np.dtype(page.dtype)
        mode, channels = _colour(path, page)
        try:
            dtype = _engine_dtype(sample)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
        if mode in ("CMYK", "YCbCr") and sample != np.uint8:
            raise InputError(f"{path}: unsupported {mode} TIFF with {sample} samples")
        value_range = _data_range(page.asarray()) if dtype == np.float32 else None
        tags = page.tags
        icc = tags[34675].value if 34675 in tags else None
        xmp = tags[700].value if 700 in tags else None
        dpi = _resolution(page)
        pages = _page_count(tif)
    if pages > 1:
        rest = "page 2 is" if pages == 2 else f"pages 2 to {pages} are"
        log.warning("%s: a multi-page TIFF: only page 1 of %d is read (%s left out)", path, pages, rest)
    if mode in ("P", "PA"):
        dtype = np.dtype(np.uint8)
    note(path, "damaged TIFF tags", quiet.messages)
    # Pillow warns (process-wide) on the damaged tags that tifffile reported: leave EXIF out then
    exif, orientation = _exif(path) if not quiet.messages else (None, _orientation_tag(path))
    if isinstance(xmp, str):
        xmp = xmp.encode()
    if mode in ("CMYK", "YCbCr"):
        icc = None
    if orientation >= 5:
        width, height = height, width
    shape = (height, width) if channels == 1 else (height, width, channels)
    if mode in ("L", "LA") and sample != np.uint8:
        mode = {"uint16": "I;16", "int16": "I;16S", "int8": "L;S"}.get(sample.name, "F" if sample.kind == "f" else "I")
        if channels == 2:
            mode += "A"
    return ImageInfo(
        path=path,
        format="TIFF",
        shape=shape,
        dtype=dtype,
        mode=mode,
        bits=1 if mode == "1" else sample.itemsize * 8,
        orientation=orientation,
        icc_profile=bytes(icc) if icc else None,
        exif=exif,
        xmp=xmp_orientation_reset(bytes(xmp)) if xmp else None,
        dpi=dpi,
        compression="raw" if compression == 1 else "tiff_adobe_deflate",
        lossless=compression not in (6, 7, 34892),
        sample_dtype=sample,
        value_range=value_range,
    )


# ---------------------------------------------------------------------------
# read


def read(info: ImageInfo) -> np.ndarray:
    """The first page's pixels as :func:`probe` promised, in stored orientation."""
    path = info.path
    # tifffile's messages about the tags were logged by probe(); decoding failures raise
    with tifffile_messages(), tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        if (int(page.imagewidth), int(page.imagelength)) != info._stored_size:
            raise InputError(f"{path}: changed since it was probed")
        colormap = page.colormap
        photometric = page.photometric
        extras = _extras(page)
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1
        a = page.asarray()
    if planar:  # tifffile returns separate planes plane first: (samples, H, W)
        a = np.moveaxis(a, 0, -1)
    keep = [0] if a.ndim == 2 else list(range(a.shape[2] - len(extras)))
    alpha_at = [i for i, e in enumerate(extras) if e in (_E.ASSOCALPHA, _E.UNASSALPHA)][:1]
    if a.ndim == 3:
        keep += [a.shape[2] - len(extras) + i for i in alpha_at]
        a = a[:, :, keep]
    if photometric == _P.MINISWHITE:
        a = np.logical_not(a) if a.dtype == np.bool_ else _invert_gray(a)
    a = from_samples(a, info.value_range)
    if info.mode in ("P", "PA"):
        rgb = apply_palette(a[:, :, 0] if a.ndim == 3 else a, _palette_rows(colormap))
        a = np.concatenate([rgb, a[:, :, 1:2]], axis=2) if info.mode == "PA" else rgb
    elif info.mode == "CMYK":
        a = _convert(a[:, :, :4], "CMYK")
    elif info.mode == "YCbCr":
        a = _convert(a[:, :, :3], "YCbCr")
    return squeeze(a)


def _convert(a: np.ndarray, mode: str) -> np.ndarray:
    """uint8 CMYK or YCbCr samples to RGB, as Pillow converts them."""
    h, w = a.shape[:2]
    return np.asarray(Image.frombytes(mode, (w, h), np.ascontiguousarray(a).tobytes()).convert("RGB"))


def _invert_gray(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return np.iinfo(a.dtype).max - a if a.dtype.kind == "u" else -1 - a if a.dtype.kind == "i" else 1 - a
    a = a.copy()
    a[:, :, 0] = _invert_gray(a[:, :, 0])
    return a


def _palette_rows(colormap: np.ndarray | None) -> np.ndarray:
    if colormap is None:
        raise ValueError("palette TIFF without a colour map")
    cm = np.asarray(colormap)
    if cm.max() > 255:
        cm = cm >> 8  # 16-bit entries; writers scale by 256 or 257, libtiff reads the high byte
    return cm.T.astype(np.uint8)


# ---------------------------------------------------------------------------
# write


def _ifd_blob(tags: dict[int, Any], offset: int, little: bool) -> bytes:
    """One IFD (and what it points to) serialized by Pillow for file position ``offset``."""
    from PIL.TiffImagePlugin import ImageFileDirectory_v2

    ifd = ImageFileDirectory_v2(prefix=b"II" if little else b"MM")
    for tag, value in tags.items():
        ifd[tag] = value
    return ifd.tobytes(offset)


def _link_sub_ifds(tmp: Path, subs: dict[int, dict[int, Any]]) -> None:
    """Append the EXIF/GPS sub-IFDs and point IFD0's placeholder tags at them (classic TIFF)."""
    with open(tmp, "r+b") as f:
        head = f.read(8)
        e = "<" if head[:2] == b"II" else ">"
        if struct.unpack(e + "H", head[2:4])[0] != 42:  # pragma: no cover - BigTIFF: outputs over 4 GB
            return
        ifd0 = struct.unpack(e + "I", head[4:8])[0]
        f.seek(ifd0)
        (count,) = struct.unpack(e + "H", f.read(2))
        entries = f.read(12 * count)
        places = {}
        for k in range(count):
            tag = struct.unpack_from(e + "H", entries, 12 * k)[0]
            if tag + 1 in subs:
                places[tag + 1] = ifd0 + 2 + 12 * k
        for code, tags in subs.items():
            end = f.seek(0, os.SEEK_END)
            if end & 1:
                f.write(b"\x00")
                end += 1
            f.write(_ifd_blob(tags, end, e == "<"))
            f.seek(places[code])  # the placeholder entry becomes the pointer: code, LONG, 1, offset
            f.write(struct.pack(e + "HHII", code, 4, 1, end))


def _exif_tags(exif: bytes | None) -> tuple[list[tuple[int, int, int, Any, bool]], dict[int, dict[int, Any]]]:
    """EXIF as tifffile extra tags for IFD0, and the EXIF/GPS sub-IFDs to link afterwards."""
    extratags: list[tuple[int, int, int, Any, bool]] = []
    subs: dict[int, dict[int, Any]] = {}
    if not exif:
        return extratags, subs
    try:
        ex = Image.Exif()
        ex.load(exif)
        for tag, value in ex.items():
            if tag in NOT_EXIF or tag in (0x8769, 0x8825, 0x0112):
                continue
            if tag == 270 and isinstance(value, str) and value.startswith('{"shape":'):
                continue  # tifffile's own description of the input array's shape: stale after a resize
            if isinstance(value, str):
                extratags.append((tag, 2, 0, value, True))
            elif isinstance(value, bytes):
                extratags.append((tag, 7, len(value), value, True))
            elif isinstance(value, int) and 0 <= value < 2**16:
                extratags.append((tag, 3, 1, value, True))
        for sub in (0x8769, 0x8825):
            if sub in ex:
                d = dict(ex.get_ifd(sub))
                d.pop(0xA005, None)  # the Interoperability IFD: rarely more than a version; not rebuilt
                if d:
                    subs[sub] = d
                    # tifffile refuses to write 34665/34853 itself: a placeholder one code
                    # lower keeps IFD0's tag order and is renamed when the sub-IFD is linked
                    extratags.append((sub - 1, 4, 1, 0, True))
    except Exception:  # broken EXIF is metadata, not pixels: drop it
        return [], {}
    return extratags, subs


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    """One frame as TIFF with tifffile (``quality`` does not apply: TIFF is written lossless)."""
    a = squeeze(a)
    channels = as_hwc(a).shape[2]
    kwargs: dict[str, Any] = {"photometric": "minisblack", "planarconfig": "contig", "metadata": None}
    if channels >= 3:
        kwargs["photometric"] = "rgb"
    if channels in (2, 4):
        kwargs["extrasamples"] = ("unassalpha",)
    if info.format == "TIFF" and info.sample_dtype is not None:
        a = to_samples(a, info.sample_dtype, info.value_range)
    found = palette_for(a, info, alpha_in_palette=False)
    if bilevel(a, info):
        a = a.astype(bool)
    elif found is not None:
        indices, rows = found
        colormap = np.zeros((3, 256), np.uint16)
        colormap[:, : len(rows)] = rows.T.astype(np.uint16) * 257
        a, kwargs["photometric"], kwargs["colormap"] = indices, "palette", colormap
        kwargs.pop("extrasamples", None)
    if info.compression != "raw" and a.dtype != np.bool_:
        kwargs["compression"] = "zlib"
        kwargs["predictor"] = a.dtype.kind in "iu" or a.dtype.kind == "f"
    icc = icc_for(info.icc_profile, channels)
    if icc:
        kwargs["iccprofile"] = icc
    if info.dpi:
        kwargs["resolution"] = (float(info.dpi[0]), float(info.dpi[1]))
        kwargs["resolutionunit"] = "INCH"
    extratags, subs = _exif_tags(info.exif)
    if info.xmp:
        extratags.append((700, 1, len(info.xmp), info.xmp, True))
    with tifffile_messages():
        tifffile.imwrite(tmp, np.ascontiguousarray(a), extratags=extratags, software=False, **kwargs)
        if subs:
            _link_sub_ifds(tmp, subs)
