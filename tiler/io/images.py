"""Still and animated images: probe, read into a frame buffer, write back faithfully.

Four calls, in the order the engine makes them::

    info = probe_image(path)                 # parent, header only, refuses bombs
    frame = read_image(info, out=slot)       # decode into a shared-memory view
    ...                                      # tiles, workers, stitch
    write_image(frame, dst, info)            # atomic: temporary name, then rename
    write_animation(frames, dst, info)       # GIF/WebP: one frame per input frame

Arrays are channels last, RGB order, upright (the EXIF orientation is applied
on read and the written EXIF says 1), and have exactly ``info.shape`` and
``info.dtype``. Supported files: PNG, JPEG (also MPO, read as its first
picture), TIFF (first page), WebP, BMP and GIF, still or (GIF, WebP) animated.

Modes
-----
What each source mode becomes, and how it is written back to the same format:

======================  ===========================  ==========================================
source (Pillow mode)    array (shape, dtype)         written back as
======================  ===========================  ==========================================
1                       (H, W) uint8, 0 or 255       1-bit when every pixel is still 0 or 255,
                                                     else 8-bit gray (L)
L                       (H, W) uint8                 L
L with a tRNS key       (H, W, 2) uint8              LA (the key becomes alpha)
LA, La                  (H, W, 2) uint8              LA
P, PA, P + tRNS         (H, W, 3) uint8 RGB, or      palette (P) with an exact palette when the
                        (H, W, 4) RGBA if the        output has at most 256 colours, else RGB(A);
                        palette has transparency     GIF output is re-quantized when needed
RGB, RGBX               (H, W, 3) uint8              RGB (RGB + tRNS key reads as RGBA)
RGBA, RGBa              (H, W, 4) uint8              RGBA
CMYK                    (H, W, 3) uint8              RGB: converted to sRGB through its ICC
                                                     profile when it has one, else by Pillow's
                                                     formula; the CMYK profile is dropped
YCbCr                   (H, W, 3) uint8              RGB
I;16, I;16L/B/N         (H, W) uint16                16-bit gray (a tRNS key adds alpha:
                                                     (H, W, 2) uint16)
16-bit gray+alpha PNG   (H, W, 2) uint16             16-bit gray+alpha (TIFF: 16-bit RGBA, since
                                                     Pillow cannot open 16-bit gray+alpha TIFF)
16-bit RGB(A) PNG/TIFF  (H, W, 3|4) uint16           16-bit RGB(A)   (Pillow would give 8-bit;
                                                     these are decoded with OpenCV)
I (32-bit integer)      (H, W) uint16 when the file  uint16: 16-bit gray; float32: 32-bit
                        stores unsigned <= 16-bit    integer TIFF, rounded (exact for
                        samples, else float32        abs(v) < 2**24)
F (32-bit float)        (H, W) float32, raw values   32-bit float TIFF
anything else           InputError "unsupported mode X" (LAB, HSV, signed 16-bit, ...)
======================  ===========================  ==========================================

Animations (GIF, WebP with more than one frame) read as full-canvas RGB, or
RGBA when the file declares transparency, composed as Pillow's ``seek``
composes them (GIF disposal 1/2/3 and transparency; libwebp's blending).

Output formats
--------------
The output format comes from the output's extension and may differ from the
input's. When it cannot hold what the array holds:

* **JPEG, BMP**: 8-bit gray or RGB. Alpha is composited over white; 16-bit
  samples become 8-bit (``round(v / 257)``).
* **WebP**: 8-bit RGB or RGBA; gray is expanded to RGB; 16-bit becomes 8-bit.
* **GIF**: 256 colours. Exact when the frame has at most 256 (255 with
  alpha), else median-cut with Floyd-Steinberg dithering; alpha < 128 is
  transparent, the rest opaque; delays are rounded to 10 ms.
* **PNG**: everything but float32; 16-bit stays 16-bit.
* **TIFF**: everything; 16-bit and float stay as they are.
* float32 to anything but TIFF, or an animation to a still-only format, is
  refused with :class:`~tiler.errors.OutputError` (see :func:`check_image_output`).

Metadata kept where the output format allows: ICC profile (JPEG, PNG, TIFF,
WebP; dropped when it no longer matches the colour model), EXIF with the
orientation set to 1 and the thumbnail dropped (JPEG, PNG, TIFF, WebP), XMP
with its orientation set to 1 (JPEG, PNG, TIFF, WebP), DPI (JPEG, PNG, TIFF,
BMP), PNG text chunks. JPEG is re-encoded with the source's own quantization
tables and chroma subsampling when no quality is given, else with the quality
estimated from its tables (default 95). WebP stays lossless when the source
stored pixels losslessly. TIFF is deflate-compressed (lossless, with
horizontal differencing) unless the source was uncompressed.

Not kept: APNG animation (the default image is read), TIFF pages after the
first, PNG chunks other than those above (gAMA, sRGB, cHRM: an ICC profile is
the faithful carrier), EXIF that a PNG stores after its image data (reading
it would mean decoding at probe time), JPEG EXIF or XMP larger than a JPEG
segment (64 KiB), MPO secondary pictures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from tiler.errors import InputError, OutputError, TileprocError
from tiler.io import _containers as C
from tiler.io.files import atomic_output, check_input, check_output, output_name

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageInfo",
    "probe_image",
    "read_image",
    "write_image",
    "write_animation",
    "check_image_output",
    "output_name",
]

#: Largest frame (width x height) read without ``--max-pixels``: Pillow's own
#: hard limit, 2 * 89,478,485 (an RGBA uint8 frame of 716 MB, about 13,377 x
#: 13,377). For animations the sum over all frames is held to it too, since
#: every frame is decoded.
DEFAULT_MAX_PIXELS = 178_956_970

#: Extensions that folder scanning treats as images (compare ``path.suffix.lower()``).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"})

_EXT_FORMAT = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
}
_PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF")
_ANIMATED_FORMATS = ("GIF", "WEBP")
_DEFAULT_QUALITY = 95


# ---------------------------------------------------------------------------
# ImageInfo


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What :func:`probe_image` learnt from a file's header: enough to allocate and to write back.

    Attributes
    ----------
    path : Path
        The file.
    format : str
        ``"PNG"``, ``"JPEG"``, ``"TIFF"``, ``"WEBP"``, ``"BMP"`` or ``"GIF"``.
    shape : tuple of int
        Shape of the array :func:`read_image` returns: ``(H, W)`` or
        ``(H, W, C)``, upright (after the EXIF orientation).
    dtype : numpy.dtype
        ``uint8``, ``uint16`` or ``float32``.
    n_frames : int
        Frames in an animation; 1 for a still image.
    mode : str
        The source's Pillow mode (``"P"``, ``"I;16B"``, ``"CMYK"``...), except
        that 16-bit colour, which Pillow reports as 8-bit, is ``"LA"``,
        ``"RGB"`` or ``"RGBA"`` with ``bits == 16``. See the module's table.
    bits : int
        Bits per sample in the file: 1, 8, 16 or 32.
    orientation : int
        EXIF orientation (1-8) that :func:`read_image` undoes.
    icc_profile, exif, xmp : bytes or None
        Metadata to write back. ``exif`` has Orientation 1, no thumbnail and
        no layout tags; ``xmp`` has ``tiff:Orientation`` 1.
    dpi : tuple of float, or None
        Horizontal and vertical resolution.
    quality : int or None
        JPEG quality (1-100) estimated from the quantization tables.
    jpeg_qtables : tuple of tuple of int, or None
        The JPEG's quantization tables (natural order), reused when writing JPEG.
    jpeg_subsampling : int or None
        0 (4:4:4), 1 (4:2:2) or 2 (4:2:0).
    progressive : bool
        The JPEG is progressive.
    compression : str or None
        TIFF compression as Pillow names it (``"raw"``, ``"tiff_lzw"``...).
    lossless : bool
        The file stores pixels losslessly (everything but JPEG and lossy WebP).
    durations : tuple of int
        Milliseconds each frame shows; ``()`` for a still image.
    loop : int or None
        Animation loop count, 0 = forever; None = play once (no loop block).
    text : tuple of (str, str)
        PNG text chunks.
    """

    path: Path
    format: str
    shape: tuple[int, ...]
    dtype: np.dtype
    n_frames: int = 1
    mode: str = "RGB"
    bits: int = 8
    orientation: int = 1
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    quality: int | None = None
    jpeg_qtables: tuple[tuple[int, ...], ...] | None = None
    jpeg_subsampling: int | None = None
    progressive: bool = False
    compression: str | None = None
    lossless: bool = True
    durations: tuple[int, ...] = ()
    loop: int | None = None
    text: tuple[tuple[str, str], ...] = ()

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def channels(self) -> int:
        return 1 if len(self.shape) == 2 else self.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of one frame as :func:`read_image` returns it."""
        return int(np.prod(self.shape)) * self.dtype.itemsize

    @property
    def _stored_size(self) -> tuple[int, int]:
        """(width, height) as stored in the file, before the orientation."""
        h, w = self.shape[:2]
        return (h, w) if self.orientation >= 5 else (w, h)

    @property
    def _uses_opencv(self) -> bool:
        return self.bits == 16 and self.mode in ("LA", "RGB", "RGBA")


# ---------------------------------------------------------------------------
# Pillow, guarded


_PIL_LOCK = threading.RLock()


@contextlib.contextmanager
def _pillow() -> Iterator[None]:
    """Pillow with tileproc's own size check instead of Pillow's, truncation fatal, no warnings.

    The settings are process-wide, so they are changed and restored under a lock.
    """
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: truncated or corrupt image ({_reason(exc)})")


def _open_pillow(path: Path) -> Image.Image:
    """Open lazily (header only); call under :func:`_pillow`."""
    try:
        return Image.open(path, formats=_PILLOW_FORMATS)
    except UnidentifiedImageError:
        fmt = _sniff(path)
        if fmt:
            raise InputError(f"{path}: unsupported or corrupt {fmt} file (Pillow cannot decode it)") from None
        raise InputError(f"{path}: not an image tileproc reads (PNG, JPEG, TIFF, WebP, BMP or GIF)") from None
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except Exception as exc:
        raise _corrupt(path, exc) from None


@functools.cache
def _pillow_orients_tiff() -> bool:
    """Whether this Pillow applies a TIFF's Orientation tag itself on load (Pillow 11.1 and later do)."""
    data = C.encode_tiff(np.array([[0, 255]], np.uint8), {274: 2}, compress=False)
    with _pillow(), Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.getpixel((0, 0)) == 255


def _oriented_by_pillow(info: ImageInfo) -> bool:
    return info.format == "TIFF" and info.orientation != 1 and _pillow_orients_tiff()


def _sniff(path: Path) -> str | None:
    """The format a file's first bytes claim, among those tileproc reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(C.PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] == b"GIF8":
        return "GIF"
    return None


def _rawmode(im: Image.Image) -> str:
    """The decoder's raw mode of the first tile: it tells 16-bit colour from 8-bit."""
    try:
        args = im.tile[0].args
    except (AttributeError, IndexError):
        return ""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


# ---------------------------------------------------------------------------
# probe


def _check_pixels(path: Path, width: int, height: int, frames: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise InputError(f"{path}: {width}x{height} = {pixels} pixels exceeds the limit of {max_pixels} (--max-pixels)")
    if frames > 1 and pixels * frames > max_pixels:
        raise InputError(
            f"{path}: {frames} frames of {width}x{height} = {pixels * frames} pixels "
            f"exceeds the limit of {max_pixels} (--max-pixels)"
        )


def _stat_input(path: Path) -> None:
    check_input(path)  # a regular, readable, non-empty file: never opens a FIFO


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from None


_UNSIGNED_INT_RAW = re.compile(r"I;(8|16)(B|L|N)?")


def _plan(path: Path, im: Image.Image, animated: bool, alpha_hint: bool) -> tuple[str, int, int, np.dtype]:
    """(logical mode, bits, channels, dtype) of what read_image will produce."""
    mode, bits, channels, dtype = _plan_mode(path, im, animated, alpha_hint)
    raw = _rawmode(im)
    if dtype == np.uint8 and ";16" in raw:  # never drop 16-bit samples to 8 without saying so
        raise InputError(f"{path}: unsupported mode {mode} with 16-bit samples ({raw})")
    return mode, bits, channels, dtype


def _plan_mode(path: Path, im: Image.Image, animated: bool, alpha_hint: bool) -> tuple[str, int, int, np.dtype]:
    mode, raw = im.mode, _rawmode(im)
    trns = "transparency" in im.info
    u8, u16, f32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)
    if animated:
        return mode, 8, (4 if alpha_hint else 3), u8
    if raw.startswith("LA;16"):
        return "LA", 16, 2, u16
    if mode in ("RGB", "RGBA") and ";16" in raw:
        return mode, 16, (4 if mode == "RGBA" or trns else 3), u16
    if mode == "1":
        return mode, 1, 1, u8
    if mode == "L":
        return mode, 8, (2 if trns else 1), u8
    if mode in ("LA", "La"):
        return mode, 8, 2, u8
    if mode == "P":
        palette_alpha = im.palette is not None and im.palette.mode == "RGBA"
        return mode, 8, (4 if trns or palette_alpha else 3), u8
    if mode == "PA":
        return mode, 8, 4, u8
    if mode in ("RGB", "RGBX", "YCbCr", "CMYK"):
        return mode, 8, (4 if trns and mode == "RGB" else 3), u8
    if mode in ("RGBA", "RGBa"):
        return mode, 8, 4, u8
    if mode.startswith("I;16") and not mode.endswith("S"):
        return mode, 16, (2 if trns else 1), u16
    if mode == "I":
        if _UNSIGNED_INT_RAW.fullmatch(raw):
            return mode, 16, 1, u16
        return mode, 32, 1, f32
    if mode == "F":
        return mode, 32, 1, f32
    raise InputError(f"{path}: unsupported mode {mode}")


_NOT_EXIF = frozenset(
    {
        254,
        255,
        256,
        257,
        258,
        259,
        262,
        263,
        264,
        265,
        266,
        269,
        273,
        277,
        278,
        279,
        280,
        281,
        282,
        283,
        284,
        285,
        286,
        287,
        290,
        291,
        292,
        293,
        296,
        301,
        317,
        318,
        319,
        320,
        321,
        322,
        323,
        324,
        325,
        330,
        332,
        338,
        339,
        340,
        341,
        347,
        351,
        512,
        513,
        514,
        515,
        517,
        518,
        519,
        520,
        521,
        529,
        530,
        531,
        532,
        700,
        34377,
        34675,
        37724,
        50706,
    }
)  # layout, colour, resolution (kept as dpi), thumbnails, ICC/XMP (kept apart), Photoshop data


def _exif_of(im: Image.Image, fmt: str) -> Image.Exif:
    if fmt == "PNG" and "exif" not in im.info:  # PngImageFile.getexif() would decode the pixels
        exif = Image.Exif()
        raw = im.info.get("Raw profile type exif")
        if isinstance(raw, str):
            with contextlib.suppress(Exception):
                exif.load(bytes.fromhex("".join(raw.split("\n")[3:])))
        return exif
    try:
        return im.getexif()
    except Exception:  # broken EXIF is metadata, not pixels: drop it (see _clean_exif)
        return Image.Exif()


def _clean_exif(exif: Image.Exif) -> bytes | None:
    """EXIF bytes to write beside upright pixels: Orientation 1, no thumbnail, no layout tags."""
    try:
        for tag in [t for t in exif if t in _NOT_EXIF]:
            del exif[tag]
        if 0x0112 in exif:
            exif[0x0112] = 1
        for sub in (0x8769, 0x8825):
            if sub in exif:
                exif.get_ifd(sub)
        if not len(exif):
            return None
        data = exif.tobytes()
        check = Image.Exif()
        check.load(data)
        return data
    except Exception:  # broken EXIF is metadata, not pixels: drop it
        return None


_XMP_ORIENTATION = re.compile(rb"(tiff:Orientation(?:=\"|>))([0-9])")


def _xmp_of(im: Image.Image) -> bytes | None:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    if isinstance(xmp, tuple) and xmp:
        xmp = xmp[0]
    return bytes(xmp) if xmp else None


def _orientation(exif: Image.Exif, xmp: bytes | None) -> int:
    try:
        value = exif.get(0x0112)
    except Exception:
        value = None
    if value is None and xmp:
        m = _XMP_ORIENTATION.search(xmp)
        value = int(m.group(2)) if m else None
    try:
        value = int(value) if value is not None else 1
    except (TypeError, ValueError):
        value = 1
    return value if 1 <= value <= 8 else 1


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


def _estimate_jpeg_quality(qtables: Sequence[Sequence[int]]) -> int | None:
    """The IJG quality (1-100) whose standard tables are nearest to ``qtables``.

    Exact for files written by libjpeg (Pillow, most software); the nearest
    match for camera tables.

    Examples
    --------
    >>> _estimate_jpeg_quality([_ijg_table(_LUMA, 75), _ijg_table(_CHROMA, 75)])
    75
    """
    tables = [np.asarray(t, np.int64) for t in qtables if len(t) == 64]
    if not tables:
        return None
    bases = [_LUMA, _CHROMA, _CHROMA][: len(tables)]
    errors = [sum(int(np.abs(_ijg_table(b, q) - t).sum()) for b, t in zip(bases, tables)) for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


def probe_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Read a file's header: size, mode, frames and metadata; allocate nothing large.

    Parameters
    ----------
    path : path-like
        A PNG, JPEG, TIFF, WebP, BMP or GIF file (the content decides, not the extension).
    max_pixels : int
        Largest width x height accepted (for animations, also the sum over frames).

    Returns
    -------
    ImageInfo

    Raises
    ------
    InputError
        One line naming the file and the reason: missing, a folder, empty,
        not an image, corrupt, unsupported mode, or larger than ``max_pixels``.

    Examples
    --------
    >>> info = probe_image("samples/landscape_exif-orient6.jpg")   # doctest: +SKIP
    >>> info.shape, info.dtype, info.orientation                   # doctest: +SKIP
    ((1200, 1800, 3), dtype('uint8'), 6)
    """
    path = Path(path)
    _stat_input(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from None

    scan: C.GifScan | C.WebpScan | None = None
    if head[:4] == b"GIF8" or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        data = _read_bytes(path)
        try:
            scan = C.scan_gif(data) if head[:4] == b"GIF8" else C.scan_webp(data)
        except C.ContainerError as exc:
            raise _corrupt(path, exc) from None
        _check_pixels(path, scan.width, scan.height, scan.n_frames, max_pixels)
        if getattr(scan, "problem", ""):
            raise InputError(f"{path}: truncated or corrupt image ({scan.problem})")

    with _pillow():
        im = _open_pillow(path)
        try:
            return _probe_open(path, im, scan, max_pixels)
        except TileprocError:
            raise
        except Exception as exc:
            raise _corrupt(path, exc) from None
        finally:
            im.close()


def _probe_open(path: Path, im: Image.Image, scan: Any, max_pixels: int) -> ImageInfo:
    fmt = "JPEG" if im.format == "MPO" else str(im.format)
    width, height = im.size
    if fmt == "TIFF":  # newer Pillow reports TIFF sizes already oriented; the tags are as stored
        width, height = int(im.tag_v2.get(256, width)), int(im.tag_v2.get(257, height))
    n_frames = scan.n_frames if scan is not None else 1
    if scan is not None:
        width, height = max(width, scan.width), max(height, scan.height)
    _check_pixels(path, width, height, n_frames, max_pixels)

    animated = n_frames > 1
    alpha_hint = bool(scan.transparent if isinstance(scan, C.GifScan) else getattr(scan, "alpha", False))
    mode, bits, channels, dtype = _plan(path, im, animated, alpha_hint)
    if bits == 16 and mode in ("LA", "RGB", "RGBA") and fmt not in ("PNG", "TIFF"):  # pragma: no cover
        raise InputError(f"{path}: unsupported mode {mode};16")

    xmp = _xmp_of(im)
    exif = _exif_of(im, fmt)
    orientation = _orientation(exif, xmp)
    exif_bytes = _clean_exif(exif)
    if xmp:
        xmp = _XMP_ORIENTATION.sub(rb"\g<1>1", xmp)

    if orientation >= 5:
        width, height = height, width
    shape = (height, width) if channels == 1 else (height, width, channels)

    info = im.info
    icc = info.get("icc_profile") or None
    if mode == "CMYK":
        icc = None  # pixels are converted to RGB on read
    dpi = info.get("dpi")
    if dpi is not None:
        try:
            dpi = (float(dpi[0]), float(dpi[1]))
            if not all(d > 0 for d in dpi):
                dpi = None
        except (TypeError, ValueError, IndexError):
            dpi = None

    quality = qtables = subsampling = None
    if fmt == "JPEG":
        q = getattr(im, "quantization", None) or {}
        qtables = tuple(tuple(int(v) for v in q[k]) for k in sorted(q)) or None
        quality = _estimate_jpeg_quality(qtables) if qtables else None
        from PIL import JpegImagePlugin

        sampling = JpegImagePlugin.get_sampling(im)
        subsampling = sampling if sampling in (0, 1, 2) else None

    text: tuple[tuple[str, str], ...] = ()
    if fmt == "PNG":
        skip = {"XML:com.adobe.xmp", "Raw profile type exif", "Raw profile type APP1", "Raw profile type xmp"}
        text = tuple(
            (k, str(v)) for k, v in info.items() if isinstance(k, str) and isinstance(v, str) and k not in skip
        )

    lossless = fmt not in ("JPEG", "WEBP") or (isinstance(scan, C.WebpScan) and scan.lossless)
    if fmt == "TIFF" and info.get("compression") in ("jpeg", "tiff_jpeg"):
        lossless = False

    return ImageInfo(
        path=path,
        format=fmt,
        shape=shape,
        dtype=dtype,
        n_frames=n_frames,
        mode=mode,
        bits=bits,
        orientation=orientation,
        icc_profile=bytes(icc) if icc else None,
        exif=exif_bytes,
        xmp=xmp,
        dpi=dpi,
        quality=quality,
        jpeg_qtables=qtables,
        jpeg_subsampling=subsampling,
        progressive=bool(info.get("progressive") or info.get("progression")),
        compression=info.get("compression") if fmt == "TIFF" else None,
        lossless=lossless,
        durations=scan.durations if animated else (),
        loop=scan.loop if animated else None,
        text=text,
    )


# ---------------------------------------------------------------------------
# read


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Undo an EXIF orientation (a view, no copy): stored pixels -> upright pixels."""
    if orientation == 2:
        return a[:, ::-1]
    if orientation == 3:
        return a[::-1, ::-1]
    if orientation == 4:
        return a[::-1]
    if orientation == 5:
        return a.swapaxes(0, 1)
    if orientation == 6:
        return a.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:
        return a.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return a.swapaxes(0, 1)[::-1]
    return a


def _alpha_from_key(gray_or_rgb: np.ndarray, key: Any, full: int) -> np.ndarray:
    """Append an alpha channel: 0 where the pixel equals the tRNS key, ``full`` elsewhere."""
    a = gray_or_rgb if gray_or_rgb.ndim == 3 else gray_or_rgb[:, :, None]
    keyv = np.asarray(key if isinstance(key, (tuple, list)) else [key], a.dtype)
    alpha = np.where(np.all(a == keyv, axis=2), 0, full).astype(a.dtype)
    return np.concatenate([a, alpha[:, :, None]], axis=2)


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:
            pass
    return im.convert("RGB")


def _pillow_pixels(im: Image.Image, info: ImageInfo) -> np.ndarray:
    """Pixels of a loaded still image, stored orientation, as info promises."""
    mode, c = im.mode, info.channels
    trns = im.info.get("transparency")
    if info.dtype == np.uint16:
        a = np.asarray(im).astype(np.uint16)
        return _alpha_from_key(a, trns, 65535) if c == 2 else a
    if info.dtype == np.float32:
        return np.asarray(im).astype(np.float32)
    if mode == "CMYK":
        im = _cmyk_to_rgb(im)
    target = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    if im.mode != target:
        im = im.convert(target)
    return np.asarray(im)


def _opencv_pixels(info: ImageInfo) -> np.ndarray:
    """16-bit colour PNG/TIFF (Pillow would reduce it to 8-bit), stored orientation."""
    import cv2

    path = info.path
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(data) != len(data):
                raise InputError(f"{path}: changed while it was read")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({_reason(exc)})") from None
    if info.format == "TIFF":
        C.tiff_clear_orientation(data)  # OpenCV would apply it, even with IMREAD_IGNORE_ORIENTATION
    if info.format == "PNG":
        try:
            for _ in C.png_chunks(data):
                pass
        except C.ContainerError as exc:
            raise _corrupt(path, exc) from None
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    del data
    w, h = info._stored_size
    if decoded is None or decoded.dtype != np.uint16 or decoded.shape[:2] != (h, w) or decoded.ndim != 3:
        raise InputError(f"{path}: truncated or corrupt image (16-bit decoder failed)")
    if info.mode == "LA":
        return decoded[:, :, [0, 3]] if decoded.shape[2] == 4 else _alpha_from_key(decoded[:, :, 0], None, 65535)
    rgb = decoded[:, :, [2, 1, 0, 3]] if decoded.shape[2] == 4 else decoded[:, :, ::-1]
    if info.channels == 4 and rgb.shape[2] == 3:
        with _pillow(), Image.open(path) as im:
            key = im.info.get("transparency")
        return _alpha_from_key(rgb, key, 65535)
    return rgb[:, :, :3] if info.channels == 3 else rgb


def _reopen(info: ImageInfo) -> Image.Image:
    """Open again under :func:`_pillow` and make sure it is still the probed file."""
    im = _open_pillow(info.path)
    w, h = (info.width, info.height) if _oriented_by_pillow(info) else info._stored_size
    if info.n_frames == 1 and im.size != (w, h):
        im.close()
        raise InputError(f"{info.path}: changed since it was probed ({im.size[0]}x{im.size[1]}, expected {w}x{h})")
    return im


class _FrameCursor:
    """An open animation and the last frame decoded, so frames read in order cost one decode each."""

    def __init__(self, info: ImageInfo):
        self.info = info
        self.im = _reopen(info)
        self.pos = -1

    def close(self) -> None:
        self.im.close()


_cursor: _FrameCursor | None = None
_cursor_lock = threading.Lock()


def _animated_pixels(info: ImageInfo, frame: int) -> np.ndarray:
    global _cursor
    with _cursor_lock:
        cur = _cursor
        if cur is None or cur.info != info or cur.pos >= frame:
            if cur is not None:
                cur.close()
            _cursor = None
            with _pillow():
                cur = _FrameCursor(info)
            _cursor = cur
        try:
            with _pillow():
                cur.im.seek(frame)
                cur.im.load()
                im = cur.im.convert("RGBA" if info.channels == 4 else "RGB")
            cur.pos = frame
        except TileprocError:
            raise
        except EOFError:
            raise InputError(f"{info.path}: has no frame {frame} (truncated?)") from None
        except Exception as exc:
            raise _corrupt(info.path, exc) from None
        finally:
            if cur.pos != frame or frame == info.n_frames - 1:
                cur.close()
                _cursor = None
    a = np.asarray(im)
    w, h = info._stored_size
    if a.shape[:2] != (h, w):  # a GIF frame outside the logical screen grew Pillow's canvas
        canvas = np.zeros((h, w, a.shape[2]), np.uint8)
        hh, ww = min(h, a.shape[0]), min(w, a.shape[1])
        canvas[:hh, :ww] = a[:hh, :ww]
        a = canvas
    return a


def read_image(info: ImageInfo, out: np.ndarray | None = None, *, frame: int = 0) -> np.ndarray:
    """Decode a probed image (or one frame of an animation), upright, into ``out`` or a new array.

    Parameters
    ----------
    info : ImageInfo
        From :func:`probe_image`.
    out : numpy.ndarray, optional
        A writable array of exactly ``info.shape`` and ``info.dtype`` (e.g. a
        view of shared memory). The pixels are copied into it; it is returned.
    frame : int
        Frame of an animation, ``0 <= frame < info.n_frames``. Reading frames
        in increasing order costs one decode per frame (the open animation is
        kept between calls and closed after the last frame); going back
        decodes from the first frame again.

    Returns
    -------
    numpy.ndarray
        ``out``, or a new C-contiguous array.

    Raises
    ------
    InputError
        The file is truncated or corrupt, or changed since it was probed.

    Examples
    --------
    >>> info = probe_image("photo.jpg")                     # doctest: +SKIP
    >>> rgb = read_image(info)                              # doctest: +SKIP
    >>> buf = np.empty(info.shape, info.dtype); _ = read_image(info, out=buf)   # doctest: +SKIP
    """
    if out is not None:
        if out.shape != info.shape or out.dtype != info.dtype:
            raise ValueError(f"out must have shape {info.shape} and dtype {info.dtype}, got {out.shape} {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out must be writable")
    if not 0 <= frame < info.n_frames:
        raise ValueError(f"{info.path}: frame must be in [0, {info.n_frames}), got {frame}")

    orientation = info.orientation
    if info.n_frames > 1:
        stored = _animated_pixels(info, frame)
    elif info._uses_opencv:
        stored = _opencv_pixels(info)
    else:
        if _oriented_by_pillow(info):
            orientation = 1
        with _pillow():
            im = _reopen(info)
            try:
                im.load()
                stored = _pillow_pixels(im, info)
            except TileprocError:
                raise
            except Exception as exc:
                raise _corrupt(info.path, exc) from None
            finally:
                im.close()
    upright = _orient(stored, orientation)
    if upright.shape != info.shape:  # pragma: no cover - a planning bug, never the user's
        raise InputError(f"{info.path}: decoded shape {upright.shape} differs from the probed {info.shape}")
    if out is None:
        return np.ascontiguousarray(upright, dtype=info.dtype)
    np.copyto(out, upright, casting="unsafe")
    return out


# ---------------------------------------------------------------------------
# write


def _format_for(dst: Path) -> str:
    fmt = _EXT_FORMAT.get(dst.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise OutputError(f"{dst}: unknown image format {dst.suffix or '(no extension)'!r}; use one of {known}")
    return fmt


def check_image_output(
    info: ImageInfo,
    dst: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    n_frames: int | None = None,
) -> str:
    """Raise unless ``info``'s pixels can be written to ``dst``; return the output format.

    Call it in the parent before any work: it refuses an unknown extension,
    float32 pixels to a format other than TIFF, an animation to a still-only
    format, the input itself (``info.path`` and ``inputs``), a folder, and an
    existing file unless ``overwrite``.

    Examples
    --------
    >>> check_image_output(info, "out.png")   # doctest: +SKIP
    'PNG'
    """
    dst = Path(dst)
    fmt = _format_for(dst)
    frames = info.n_frames if n_frames is None else n_frames
    if frames > 1 and fmt not in _ANIMATED_FORMATS:
        raise OutputError(f"{dst}: {fmt} cannot hold an animation ({frames} frames); write .gif or .webp")
    if info.dtype == np.float32 and fmt != "TIFF":
        raise OutputError(f"{dst}: {fmt} cannot store 32-bit float pixels (mode {info.mode}); write .tif")
    check_output(dst, inputs=[info.path, *map(Path, inputs)], overwrite=overwrite)
    return fmt


def _check_array(array: np.ndarray, dst: Path) -> None:
    ok_dtype = array.dtype in (np.uint8, np.uint16, np.float32)
    ok_shape = array.ndim == 2 or (array.ndim == 3 and 1 <= array.shape[2] <= 4)
    float_colour = array.dtype == np.float32 and array.ndim == 3 and array.shape[2] > 1
    if not (ok_dtype and ok_shape) or array.size == 0 or float_colour:
        raise OutputError(f"{dst}: cannot write an array of shape {array.shape} and dtype {array.dtype}")


def _as_hwc(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else a[:, :, None]


def _squeeze(a: np.ndarray) -> np.ndarray:
    return a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _flatten_alpha(a: np.ndarray) -> np.ndarray:
    """uint8 gray/RGB with alpha composited over white; without alpha, unchanged."""
    a = _squeeze(a)
    if a.ndim == 2 or a.shape[2] in (1, 3):
        return a
    colour, alpha = a[:, :, :-1].astype(np.uint32), a[:, :, -1:].astype(np.uint32)
    out = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return _squeeze(out.astype(np.uint8))


def _exact_palette(a: np.ndarray, max_colours: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(indices, palette rows) when ``a`` (H, W, 3|4) uint8 has at most ``max_colours`` colours."""
    h, w, c = a.shape
    flat = np.ascontiguousarray(a).reshape(-1, c)
    packed = np.zeros(len(flat), np.uint32)
    for i in range(c):
        packed |= flat[:, i].astype(np.uint32) << np.uint32(8 * i)
    step = max(1, len(packed) // 65536)
    if len(np.unique(packed[::step])) > max_colours:
        return None
    colours, indices = np.unique(packed, return_inverse=True)
    if len(colours) > max_colours:
        return None
    palette = np.stack([(colours >> np.uint32(8 * i)) & 0xFF for i in range(c)], axis=1).astype(np.uint8)
    return indices.reshape(h, w).astype(np.uint8), palette


def _palette_image(indices: np.ndarray, palette: np.ndarray) -> Image.Image:
    h, w = indices.shape
    im = Image.frombuffer("P", (w, h), np.ascontiguousarray(indices).tobytes(), "raw", "P", 0, 1)
    im.putpalette(palette.tobytes(), "RGBA" if palette.shape[1] == 4 else "RGB")
    return im


def _is_binary(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.dtype == np.uint8 and bool(np.all((a == 0) | (a == 255)))


_ICC_SPACE = {1: b"GRAY", 2: b"GRAY", 3: b"RGB ", 4: b"RGB "}


def _icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """The profile, if it describes the colour model of what is written."""
    if not icc or len(icc) < 20:
        return None
    return icc if icc[16:20] == _ICC_SPACE[channels] else None


def _exif_tags(exif: bytes | None) -> dict[int, Any]:
    """EXIF as TIFF tags: IFD0 entries plus the EXIF and GPS sub-IFDs as dicts."""
    tags: dict[int, Any] = {}
    if not exif:
        return tags
    try:
        ex = Image.Exif()
        ex.load(exif)
        for tag, value in ex.items():
            if tag in (0x8769, 0x8825) or tag in _NOT_EXIF:
                continue
            tags[tag] = value
        for sub in (0x8769, 0x8825):
            if sub in ex:
                d = dict(ex.get_ifd(sub))
                if 0xA005 in d:  # Interoperability IFD: rebuild its pointer as a dict
                    interop = ex.get_ifd(0xA005)
                    if interop:
                        d[0xA005] = dict(interop)
                    else:
                        del d[0xA005]
                if d:
                    tags[sub] = d
    except Exception:
        return {}
    return tags


def _tiff_bytes(a: np.ndarray, info: ImageInfo) -> bytes:
    tags = _exif_tags(info.exif)
    channels = _as_hwc(a).shape[2]
    icc = _icc_for(info.icc_profile, channels)
    if icc:
        tags[34675] = icc
    if info.xmp:
        tags[700] = info.xmp
    if info.dpi:
        tags[282], tags[283], tags[296] = float(info.dpi[0]), float(info.dpi[1]), 2
    compress = info.compression != "raw"
    a = _squeeze(a)
    palette = None
    if a.ndim == 3 and a.shape[2] == 2 and a.dtype == np.uint16:
        # Pillow cannot open 16-bit gray+alpha TIFF: write RGBA, which it can
        a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
    if a.dtype == np.float32 and info.mode == "I":
        a = np.clip(np.rint(a), -(2**31), 2**31 - 1).astype(np.int32)
    elif info.mode == "1" and _is_binary(a):
        a = a.astype(bool)
    elif info.mode in ("P", "PA") and a.dtype == np.uint8 and a.ndim == 3:
        rgb = a[:, :, :3] if a.shape[2] == 3 or bool(np.all(a[:, :, 3] == 255)) else None
        found = _exact_palette(rgb, 256) if rgb is not None else None
        if found is not None:
            a, palette = found
    return C.encode_tiff(a, tags, compress=compress, palette=palette)


def _png_save(a: np.ndarray, tmp: Path, info: ImageInfo) -> None:
    a = _squeeze(a)
    channels = _as_hwc(a).shape[2]
    icc = _icc_for(info.icc_profile, channels)
    if a.dtype == np.uint16 and a.ndim == 3:
        chunks = C.png_metadata_chunks(
            icc_profile=icc, exif=info.exif, dpi=_dpi_for("PNG", info.dpi), text=info.text, xmp=info.xmp
        )
        tmp.write_bytes(C.encode_png16(a, chunks))
        return
    from PIL import PngImagePlugin

    pnginfo = PngImagePlugin.PngInfo()
    for key, value in info.text:
        pnginfo.add_text(key, value)
    if info.xmp:
        pnginfo.add_itxt("XML:com.adobe.xmp", info.xmp.decode("utf-8", "replace"))
    im = None
    if info.mode == "1" and _is_binary(a):
        im = Image.fromarray(a).convert("1", dither=Image.Dither.NONE)
    elif info.mode in ("P", "PA") and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] in (3, 4):
        found = _exact_palette(a, 256)
        if found is not None:
            im = _palette_image(*found)
    if im is None:
        im = Image.fromarray(np.ascontiguousarray(a))
    kwargs: dict[str, Any] = {"pnginfo": pnginfo}
    if icc:
        kwargs["icc_profile"] = icc
    if info.exif:
        kwargs["exif"] = info.exif
    if _dpi_for("PNG", info.dpi):
        kwargs["dpi"] = info.dpi
    im.save(tmp, "PNG", **kwargs)


_DPI_LIMIT = {"PNG": (2**32 - 1) * 0.0254, "BMP": (2**31 - 1) * 0.0254, "JPEG": 65535.0}


def _dpi_for(fmt: str, dpi: tuple[float, float] | None) -> tuple[float, float] | None:
    """``dpi`` if ``fmt`` can store it, else None: metadata is kept where the format allows."""
    if not dpi:
        return None
    limit = _DPI_LIMIT.get(fmt)
    if limit is not None and not all(0.5 <= d <= limit for d in dpi):
        return None
    return dpi


def _jpeg_save(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    a = _flatten_alpha(_to_uint8(a))
    channels = _as_hwc(a).shape[2]
    kwargs: dict[str, Any] = {"optimize": True, "progressive": info.progressive}
    same_layout = info.format == "JPEG" and info.jpeg_qtables and len(info.jpeg_qtables) <= 4
    if quality is None and same_layout and (channels == 1) == (len(info.jpeg_qtables or ()) == 1):
        kwargs["qtables"] = [list(t) for t in info.jpeg_qtables or ()]
    else:
        kwargs["quality"] = quality or info.quality or _DEFAULT_QUALITY
    if channels == 3 and info.jpeg_subsampling is not None:
        kwargs["subsampling"] = info.jpeg_subsampling
    icc = _icc_for(info.icc_profile, channels)
    if icc:
        kwargs["icc_profile"] = icc
    if info.exif and len(info.exif) <= 65000:
        kwargs["exif"] = info.exif
    if info.xmp and len(info.xmp) <= 65000:
        kwargs["xmp"] = info.xmp
    if _dpi_for("JPEG", info.dpi):
        kwargs["dpi"] = info.dpi
    Image.fromarray(np.ascontiguousarray(a)).save(tmp, "JPEG", **kwargs)


def _webp_ready(a: np.ndarray) -> np.ndarray:
    a = _as_hwc(_to_uint8(a))
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    elif a.shape[2] == 2:
        a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
    return np.ascontiguousarray(a)


def _webp_options(info: ImageInfo, quality: int | None) -> dict[str, Any]:
    if quality is None and info.lossless:
        return {"lossless": True, "exact": True}  # quality would mean effort here: keep libwebp's default
    return {"quality": quality or info.quality or _DEFAULT_QUALITY}


def _webp_save(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    a = _webp_ready(a)
    kwargs = _webp_options(info, quality)
    icc = _icc_for(info.icc_profile, 3)
    if icc:
        kwargs["icc_profile"] = icc
    if info.exif:
        kwargs["exif"] = info.exif
    if info.xmp:
        kwargs["xmp"] = info.xmp
    Image.fromarray(a).save(tmp, "WEBP", **kwargs)


def _bmp_save(a: np.ndarray, tmp: Path, info: ImageInfo) -> None:
    a = _flatten_alpha(_to_uint8(a))
    im = None
    if info.mode == "1" and _is_binary(a):
        im = Image.fromarray(a).convert("1", dither=Image.Dither.NONE)
    elif info.mode in ("P", "PA") and a.ndim == 3:
        found = _exact_palette(a, 256)
        if found is not None:
            im = _palette_image(*found)
    if im is None:
        im = Image.fromarray(np.ascontiguousarray(a))
    kwargs = {"dpi": info.dpi} if _dpi_for("BMP", info.dpi) else {}
    im.save(tmp, "BMP", **kwargs)


_GRAY_RAMP = np.repeat(np.arange(256, dtype=np.uint8), 3).tobytes()


class _GifFrames:
    """Palette frames for :func:`_containers.assemble_gif`, made one at a time.

    Colours are exact when a frame has at most 255 of them (256 when no
    transparent index is needed), else median-cut quantized. Index 255 is
    kept transparent when possible: for holes (alpha < 128) and, from the
    second frame on, for pixels that look the same as in the frame before,
    which lets LZW shrink the file without changing what is shown.
    """

    def __init__(self, alpha: bool):
        self.alpha = alpha
        self.frames: list[tuple[np.ndarray, bytes, int | None, bool]] = []
        self.holes: list[bool] = []
        self._shown: np.ndarray | None = None

    def add(self, a: np.ndarray) -> None:
        a = _as_hwc(_to_uint8(a))
        if a.shape[2] == 1 and not self.alpha:
            # Gray stays gray: the identity ramp as palette, which readers take for mode L.
            indices = np.ascontiguousarray(a[:, :, 0])
            self._shown = np.concatenate([np.repeat(a, 3, axis=2), np.full_like(a, 255)], axis=2)
            self.frames.append((indices, _GRAY_RAMP, None, False))
            self.holes.append(False)
            return
        if a.shape[2] in (1, 2):
            a = np.concatenate([np.repeat(a[:, :, :1], 3, axis=2), a[:, :, 1:]], axis=2)
        rgb = np.ascontiguousarray(a[:, :, :3])
        mask = a[:, :, 3] < 128 if a.shape[2] == 4 else np.zeros(a.shape[:2], bool)
        holes = bool(mask.any())
        if holes:
            opaque = ~mask
            rgb = rgb.copy()
            rgb[mask] = rgb[opaque][0] if opaque.any() else 0
        found = _exact_palette(rgb, 255)
        slot = True
        if found is None and not (self.alpha or holes):
            found = _exact_palette(rgb, 256)
            slot = found is None
        if found is None:
            q = Image.fromarray(rgb).quantize(255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
            found = np.asarray(q).copy(), np.frombuffer(bytes(q.getpalette() or b""), np.uint8).reshape(-1, 3)[:255]
        indices, palette = found
        shown = np.concatenate([palette[indices], np.where(mask, 0, 255).astype(np.uint8)[:, :, None]], axis=2)
        free, used = None, holes or (self.alpha and not self.frames)  # RGBA in, RGBA out
        if slot:
            free = 255
            palette = np.concatenate([palette, np.zeros((256 - len(palette), 3), np.uint8)])
            indices[mask] = free
            if self._shown is not None and not holes:
                same = np.all(shown == self._shown, axis=2)
                indices[same] = free
                used = used or bool(same.any())
        self._shown = shown
        self.frames.append((indices, palette.tobytes(), free, used))
        self.holes.append(holes)

    def encode(self, durations: Sequence[int], loop: int | None) -> bytes:
        return C.assemble_gif(self.frames, durations=durations, loop=loop, holes=self.holes)


def _encode_still(a: np.ndarray, fmt: str, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    if fmt == "TIFF":
        tmp.write_bytes(_tiff_bytes(a, info))
    elif fmt == "PNG":
        _png_save(a, tmp, info)
    elif fmt == "JPEG":
        _jpeg_save(a, tmp, info, quality)
    elif fmt == "WEBP":
        _webp_save(a, tmp, info, quality)
    elif fmt == "BMP":
        _bmp_save(a, tmp, info)
    else:  # GIF
        gif = _GifFrames(alpha=_as_hwc(a).shape[2] in (2, 4))
        gif.add(a)
        tmp.write_bytes(gif.encode([info.durations[0] if info.durations else 0], None))


def _check_quality(quality: int | None) -> None:
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")


@contextlib.contextmanager
def _writing(dst: Path, fmt: str) -> Iterator[None]:
    """Turn an encoder's failure into one OutputError line naming the file."""
    try:
        yield
    except TileprocError:
        raise
    except Exception as exc:
        raise OutputError(f"{dst}: cannot write {fmt} ({_reason(exc)})") from exc


def write_image(
    array: np.ndarray,
    dst: str | os.PathLike[str],
    info: ImageInfo,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    quality: int | None = None,
) -> None:
    """Write one frame to ``dst`` atomically, in the format of its extension, faithful to ``info``.

    Parameters
    ----------
    array : numpy.ndarray
        Upright pixels as :func:`read_image` gives them: (H, W) or (H, W, C),
        C in 1..4, uint8, uint16 or float32 (single channel). The size may
        differ from ``info.shape``; mode, bit depth and metadata follow ``info``.
    dst : path-like
        Output file. Its extension picks the format (see the module's tables).
    info : ImageInfo
        The source's probe: mode, metadata, JPEG tables, compression.
    overwrite : bool
        Replace an existing ``dst``. ``dst`` is never ``info.path`` nor any of ``inputs``.
    inputs : iterable of path-like
        Other files that must not be overwritten.
    quality : int, optional
        1-100 for JPEG and WebP (lossy); None keeps the source's (JPEG tables,
        lossless WebP) or uses 95. Ignored by lossless formats.

    Raises
    ------
    OutputError
        One line naming ``dst``: unknown extension, output is an input, exists
        (:class:`~tiler.errors.OutputExists`), format cannot hold the pixels,
        or the encoder failed. Nothing is left at ``dst`` or beside it.

    Examples
    --------
    >>> info = probe_image("photo.jpg")                            # doctest: +SKIP
    >>> write_image(read_image(info), "photo.tileproc.png", info)   # doctest: +SKIP
    """
    dst = Path(dst)
    array = np.asarray(array)
    _check_array(array, dst)
    _check_quality(quality)
    view = dataclasses.replace(info, dtype=array.dtype, n_frames=1)
    fmt = check_image_output(view, dst, overwrite=overwrite, inputs=inputs)
    with atomic_output(dst, inputs=[info.path, *map(Path, inputs)], overwrite=overwrite) as tmp:
        with _writing(dst, fmt):
            _encode_still(array, fmt, tmp, info, quality)


def write_animation(
    frames: Iterable[np.ndarray],
    dst: str | os.PathLike[str],
    info: ImageInfo,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike[str]] = (),
    quality: int | None = None,
    durations: Sequence[int] | None = None,
) -> None:
    """Write frames as an animated GIF or WebP: one output frame per input frame, same delays and loop.

    Frames are encoded as they arrive, so a generator keeps memory near one
    frame plus the compressed output. Every frame covers the whole canvas;
    identical neighbours are kept (encoders would merge them). A single frame
    is written as a still image, in any format.

    Parameters
    ----------
    frames : iterable of numpy.ndarray
        Same shape for every frame, uint8 or uint16, as :func:`read_image` returns them.
    dst : path-like
        ``.gif`` or ``.webp``.
    info : ImageInfo
        The source's probe; its ``durations`` and ``loop`` are used.
    overwrite, inputs, quality
        As in :func:`write_image`.
    durations : sequence of int, optional
        Milliseconds per frame, overriding ``info.durations`` (needed when the
        count differs from ``info.n_frames``).

    Raises
    ------
    OutputError
        As :func:`write_image`, and for frames of differing shapes.
    ValueError
        No frames, or durations that do not match the frame count.

    Examples
    --------
    >>> info = probe_image("anim.gif")                                       # doctest: +SKIP
    >>> frames = (read_image(info, frame=k) for k in range(info.n_frames))   # doctest: +SKIP
    >>> write_animation(frames, "anim.tileproc.gif", info)                   # doctest: +SKIP
    """
    dst = Path(dst)
    _check_quality(quality)
    it = iter(frames)
    try:
        first = np.asarray(next(it))
    except StopIteration:
        raise ValueError(f"{dst}: no frames to write") from None
    _check_array(first, dst)
    fmt = _format_for(dst)
    times = list(durations if durations is not None else info.durations)
    if fmt not in _ANIMATED_FORMATS:
        rest = next(it, None)
        if rest is None:
            write_image(first, dst, info, overwrite=overwrite, inputs=inputs, quality=quality)
            return
        raise OutputError(f"{dst}: {fmt} cannot hold an animation; write .gif or .webp")
    view = dataclasses.replace(info, dtype=first.dtype, n_frames=max(2, len(times)))
    check_image_output(view, dst, overwrite=overwrite, inputs=inputs)
    loop = info.loop if info.n_frames > 1 else 0

    def checked() -> Iterator[np.ndarray]:
        yield first
        for k, f in enumerate(it, start=1):
            f = np.asarray(f)
            if f.shape != first.shape or f.dtype != first.dtype:
                raise OutputError(f"{dst}: frame {k} is {f.shape} {f.dtype}, frame 0 is {first.shape} {first.dtype}")
            yield f

    with atomic_output(dst, inputs=[info.path, *map(Path, inputs)], overwrite=overwrite) as tmp:
        with _writing(dst, fmt):
            channels = _as_hwc(first).shape[2]
            if fmt == "GIF":
                gif = _GifFrames(alpha=channels in (2, 4))
                for f in checked():
                    gif.add(f)
                count = len(gif.frames)
            else:
                options = _webp_options(info, quality)
                payloads = []
                for f in checked():
                    buf = io.BytesIO()
                    Image.fromarray(_webp_ready(f)).save(buf, "WEBP", **options)
                    payloads.append(C.webp_frame_payload(buf.getvalue()))
                count = len(payloads)
        _check_durations(dst, times, count)
        with _writing(dst, fmt):
            if fmt == "GIF":
                data = gif.encode(times, loop)
            else:
                h, w = first.shape[:2]
                data = C.assemble_webp(
                    payloads,
                    width=w,
                    height=h,
                    durations=times,
                    loop=loop,
                    alpha=channels in (2, 4),
                    icc_profile=_icc_for(info.icc_profile, 3),
                    exif=info.exif,
                    xmp=info.xmp,
                )
            tmp.write_bytes(data)


def _check_durations(dst: Path, durations: Sequence[int], n: int) -> None:
    if len(durations) != n:
        raise ValueError(f"{dst}: {n} frames but {len(durations)} durations; pass durations=")
