"""Still and animated images: probe, read into a frame buffer, write back faithfully.

Four calls, in the order the engine makes them::

    info = probe_image(path)                 # parent, header only, refuses bombs
    frame = read_image(info, out=slot)       # decode into a shared-memory view
    ...                                      # tiles, workers, stitch
    write_image(frame, dst, info)            # atomic: temporary name, then rename
    write_animation(frames, dst, info)       # GIF/WebP/APNG: one frame per input frame

Arrays are channels last, RGB order, upright (the EXIF orientation is applied
on read and the written EXIF says 1), and have exactly ``info.shape`` and
``info.dtype``. Supported files: PNG, JPEG (also MPO, read as its first
picture), TIFF (first page), WebP, BMP and GIF, still or (GIF, WebP, APNG)
animated. One module per format does the work (:mod:`tiler.io.png`,
:mod:`~tiler.io.jpeg`, :mod:`~tiler.io.tiff`, :mod:`~tiler.io.webp`,
:mod:`~tiler.io.gif`, :mod:`~tiler.io.bmp`); this one probes, dispatches
through the encoder tables and offers the pipeline an
:class:`ImageSource` and :class:`ImageSink` (:mod:`tiler.io.base`).
TIFF is read and written by tifffile (see :mod:`tiler.io.tiff` for its
sample types); the other formats are decoded by Pillow, 16-bit colour PNG by
OpenCV.

Pillow's process-wide settings (``MAX_IMAGE_PIXELS``,
``LOAD_TRUNCATED_IMAGES``) are never changed: the size is checked from the
header against ``max_pixels`` and the format's decoder is opened directly.
Damaged metadata is left out with one line on the ``tiler.io`` logger naming
the file; the libraries' own warnings are headed off or captured per call
(never with process-wide warnings filters).

Modes
-----
What each source mode becomes, and how it is written back to the same format:

======================  ===========================  ==========================================
source (Pillow mode)    array (shape, dtype)         written back as
======================  ===========================  ==========================================
1                       (H, W) uint8, 0 or 255       1-bit when every pixel is still 0 or 255,
                                                     else 8-bit gray (L)
1 with a tRNS key       (H, W, 2) uint8              LA (the key becomes alpha)
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
16-bit gray+alpha PNG   (H, W, 2) uint16             16-bit gray+alpha
16-bit RGB(A) PNG       (H, W, 3|4) uint16           16-bit RGB(A)   (Pillow would give 8-bit;
                                                     decoded and encoded with OpenCV)
RGB565 / RGB555 BMP     (H, W, 3) uint8              RGB, as Pillow expands it
TIFF, any sample type   see :mod:`tiler.io.tiff`     the file's own sample type
anything else           InputError "unsupported mode X" (LAB, HSV, ...)
======================  ===========================  ==========================================

Animations (GIF, WebP, APNG with more than one frame) read as full-canvas
8-bit RGB, or RGBA when the file declares transparency, composed as Pillow's
``seek`` composes them (GIF disposal 1/2/3 and transparency; libwebp's and
APNG's blending). An APNG whose default image is not an animation frame
reads it as frame 0 (delay 0) and writes it back the same way.

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
* **PNG**: everything but float32; 16-bit stays 16-bit; animations as APNG.
* **TIFF**: everything; 16-bit and float stay as they are.
* float32 to anything but TIFF, or an animation to a still-only format, is
  refused with :class:`~tiler.errors.OutputError` (see :func:`check_image_output`).
* ``quality`` applies to JPEG and WebP only; :func:`quality_ignored` says when it does not.

Metadata kept where the output format allows: ICC profile (JPEG, PNG, TIFF,
WebP; dropped when it no longer matches the colour model), EXIF with the
orientation set to 1 and the thumbnail dropped (JPEG, PNG, TIFF, WebP), XMP
with its orientation set to 1 (JPEG, PNG, TIFF, WebP), DPI (JPEG, PNG, TIFF,
BMP), PNG text chunks. JPEG is re-encoded with the source's own quantization
tables and chroma subsampling when no quality is given, else with the quality
estimated from its tables (default 95); its Huffman tables are optimised
when the source's were (optimised or progressive), else the standard ones.
WebP stays lossless when the source stored pixels losslessly. TIFF is
deflate-compressed (lossless, with horizontal differencing) unless the
source was uncompressed.

Not kept: TIFF pages after the first, the Interoperability IFD of TIFF EXIF,
PNG chunks other than those above (gAMA, sRGB, cHRM: an ICC profile is the
faithful carrier), EXIF that a PNG stores after its image data (reading
it would mean decoding at probe time), JPEG EXIF or XMP larger than a JPEG
segment (64 KiB), MPO secondary pictures, 16-bit samples of an animated PNG
(animations are composed at 8 bits).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import BmpImagePlugin, GifImagePlugin, Image, ImageFile, JpegImagePlugin, PngImagePlugin, WebPImagePlugin

from tiler.errors import InputError, OutputError, TileprocError
from tiler.io import bmp, gif, jpeg, png, webp
from tiler.io._image import (
    DEFAULT_MAX_PIXELS,
    ContainerError,
    DurationMismatch,
    ImageInfo,
    alpha_from_key,
    apply_palette,
    check_array,
    check_pixels,
    clean_exif,
    corrupt,
    exif_of,
    exif_orientation,
    orient,
    orient_into,
    packed_pixels,
    read_bytes,
    reason,
    xmp_of,
    xmp_orientation_reset,
)
from tiler.io.base import Sink, Source
from tiler.io.files import atomic_output, check_input, check_output, output_name

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageInfo",
    "ImageSource",
    "ImageSink",
    "probe_image",
    "read_image",
    "write_image",
    "write_animation",
    "check_image_output",
    "quality_ignored",
    "format_of",
    "output_name",
]

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

Encoder = Callable[[np.ndarray, Path, ImageInfo, "int | None"], None]


def _tiff() -> Any:
    """:mod:`tiler.io.tiff`, imported when a TIFF is read or written (tifffile is large to import)."""
    from tiler.io import tiff

    return tiff


def _encode_tiff(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    _tiff().encode(a, tmp, info, quality)


#: format -> still encoder ``(array, temporary path, info, quality)``.
ENCODERS: dict[str, Encoder] = {
    "PNG": png.encode,
    "JPEG": jpeg.encode,
    "TIFF": _encode_tiff,
    "WEBP": webp.encode,
    "BMP": bmp.encode,
    "GIF": gif.encode,
}
#: format -> animation writer class: ``w = cls(info, quality)``, ``w.add(frame)`` per frame,
#: ``w.finish(temporary path, durations, loop) -> count``.
ANIMATION_ENCODERS: dict[str, Any] = {
    "GIF": gif.AnimationWriter,
    "WEBP": webp.AnimationWriter,
    "PNG": png.AnimationWriter,
}
#: Formats whose encoder uses ``quality``.
LOSSY_FORMATS = frozenset({"JPEG", "WEBP"})

# Pillow's decoder classes, opened directly: Image.open would apply Pillow's
# process-wide MAX_IMAGE_PIXELS, which tileproc neither relies on nor changes
# (the size is checked against max_pixels from the header first).
_PILLOW_OPENERS: dict[str, Callable[[Any], Image.Image]] = {
    "PNG": PngImagePlugin.PngImageFile,
    "JPEG": JpegImagePlugin.JpegImageFile,
    "WEBP": WebPImagePlugin.WebPImageFile,
    "BMP": BmpImagePlugin.BmpImageFile,
    "GIF": GifImagePlugin.GifImageFile,
}


# ---------------------------------------------------------------------------
# opening


def _sniff(path: Path) -> str | None:
    """The format a file's first bytes claim, among those tileproc reads."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({reason(exc)})") from None
    if head.startswith(png.PNG_SIGNATURE):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] == b"GIF8":
        return "GIF"
    return None


def _open_pillow(path: Path, fmt: str) -> Image.Image:
    """Open lazily (header only) with the format's own decoder class."""
    try:
        return _PILLOW_OPENERS[fmt](path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except Image.DecompressionBombError:
        raise _pillow_limit(path) from None
    except (SyntaxError, ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path}: unsupported or corrupt {fmt} file ({reason(exc)})") from None


def _pillow_limit(path: Path) -> InputError:
    """libwebp's and the GIF decoder's own size check read Pillow's process-wide limit, which is the host's."""
    return InputError(
        f"{path}: larger than this process's PIL.Image.MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS}); "
        "tileproc does not change that setting"
    )


def _rawmode(im: Image.Image) -> str:
    """The decoder's raw mode of the first tile: it tells 16-bit colour from 8-bit."""
    if not isinstance(im, ImageFile.ImageFile):  # only an image read from a file has tiles
        return ""
    try:
        tile = im.tile[0]
        args = tile.args if hasattr(tile, "args") else tile[3]  # a plain tuple before Pillow 11
    except (AttributeError, IndexError, TypeError):
        return ""
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return ""


# ---------------------------------------------------------------------------
# probe


def _plan(path: Path, im: Image.Image, fmt: str, animated: bool, alpha_hint: bool) -> tuple[str, int, int, np.dtype]:
    """(logical mode, bits, channels, dtype) of what read_image will produce from Pillow's decoder."""
    mode, raw = im.mode, _rawmode(im)
    trns = "transparency" in im.info
    u8, u16 = np.dtype(np.uint8), np.dtype(np.uint16)
    if animated:
        return mode, 8, (4 if alpha_hint else 3), u8
    if raw.startswith("LA;16"):
        return "LA", 16, 2, u16
    if mode in ("RGB", "RGBA") and ";16" in raw and fmt == "PNG":
        return mode, 16, (4 if mode == "RGBA" or trns else 3), u16
    if mode.startswith("I;16") and not mode.endswith("S"):
        return mode, 16, (2 if trns else 1), u16
    if mode == "I" and raw in ("I;16", "I;16B", "I;16L", "I;16N"):  # Pillow before 11: 16-bit gray PNG
        return "I;16", 16, (2 if trns else 1), u16
    if fmt != "BMP" and ";16" in raw:  # never drop 16-bit samples to 8 without saying so
        raise InputError(f"{path}: unsupported mode {mode} with 16-bit samples ({raw})")
    if mode in ("1", "L"):
        return mode, (1 if mode == "1" else 8), (2 if trns else 1), u8
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
    raise InputError(f"{path}: unsupported mode {mode}")


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
    check_input(path)  # a regular, readable, non-empty file: never opens a FIFO
    fmt = _sniff(path)
    if fmt is None:
        raise InputError(f"{path}: not an image tileproc reads (PNG, JPEG, TIFF, WebP, BMP or GIF)")
    if fmt == "TIFF":
        try:
            return _tiff().probe(path, max_pixels)
        except TileprocError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: unsupported or corrupt TIFF file ({reason(exc)})") from None

    scan: Any = None
    if fmt in ("GIF", "WEBP", "PNG"):
        try:
            if fmt == "PNG":
                scan = png.scan_apng(path)
            else:
                data = read_bytes(path)
                scan = gif.scan_gif(data) if fmt == "GIF" else webp.scan_webp(data)
        except ContainerError as exc:
            raise corrupt(path, exc) from None
        if scan is not None and fmt != "PNG":
            check_pixels(path, scan.width, scan.height, scan.n_frames, max_pixels)
            if getattr(scan, "problem", ""):
                raise InputError(f"{path}: truncated or corrupt image ({scan.problem})")

    im = _open_pillow(path, fmt)
    try:
        return _probe_open(path, fmt, im, scan, max_pixels)
    except TileprocError:
        raise
    except Exception as exc:
        raise corrupt(path, exc) from None
    finally:
        im.close()


def _probe_open(path: Path, fmt: str, im: Image.Image, scan: Any, max_pixels: int) -> ImageInfo:
    width, height = im.size
    n_frames = scan.n_frames if scan is not None else 1
    if isinstance(scan, gif.GifScan | webp.WebpScan):
        width, height = max(width, scan.width), max(height, scan.height)
    check_pixels(path, width, height, n_frames, max_pixels)

    animated = n_frames > 1
    if isinstance(scan, gif.GifScan):
        alpha_hint = scan.transparent
    elif isinstance(scan, webp.WebpScan):
        alpha_hint = scan.alpha
    else:
        alpha_hint = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
    mode, bits, channels, dtype = _plan(path, im, fmt, animated, alpha_hint)

    xmp = xmp_of(im)
    exif = exif_of(im, fmt, path)
    orientation = exif_orientation(exif, xmp)
    exif_bytes = clean_exif(exif)
    if xmp:
        xmp = xmp_orientation_reset(xmp)

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
    optimized = False
    if fmt == "JPEG":
        q = getattr(im, "quantization", None) or {}
        qtables = tuple(tuple(int(v) for v in q[k]) for k in sorted(q)) or None
        quality = jpeg.estimate_quality(qtables) if qtables else None
        sampling = JpegImagePlugin.get_sampling(im)
        subsampling = sampling if sampling in (0, 1, 2) else None
        optimized = jpeg.huffman_optimized(path)

    text: tuple[tuple[str, str], ...] = ()
    if fmt == "PNG":
        skip = {"XML:com.adobe.xmp", "Raw profile type exif", "Raw profile type APP1", "Raw profile type xmp"}
        text = tuple(
            (k, str(v)) for k, v in info.items() if isinstance(k, str) and isinstance(v, str) and k not in skip
        )

    lossless = fmt not in ("JPEG", "WEBP") or (isinstance(scan, webp.WebpScan) and scan.lossless)
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
        jpeg_optimized=optimized,
        lossless=lossless,
        durations=scan.durations if animated else (),
        loop=scan.loop if animated else None,
        text=text,
        apng_default_separate=bool(animated and isinstance(scan, png.ApngScan) and scan.default_separate),
    )


# ---------------------------------------------------------------------------
# read


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:
            pass
    return im.convert("RGB")


def _pillow_pixels(im: Image.Image, info: ImageInfo, out: np.ndarray | None = None) -> np.ndarray:
    """Pixels of a loaded still image, stored orientation, as info promises.

    8-bit gray and RGB are packed straight into ``out`` when it fits (the
    caller's frame buffer, for an upright file); other modes ignore it.
    """
    mode, c = im.mode, info.channels
    trns = im.info.get("transparency")
    if info.dtype == np.uint16:
        a = np.asarray(im).astype(np.uint16)
        return alpha_from_key(a, trns, 65535) if c == 2 else a
    if mode == "P":
        assert im.palette is not None  # an image in mode P has a palette
        rows = np.frombuffer(bytes(im.palette.tobytes()), np.uint8).reshape(-1, len(im.palette.mode))
        if c == 4 and rows.shape[1] == 3:
            alpha = np.full(len(rows), 255, np.uint8)
            if isinstance(trns, bytes):
                alpha[: len(trns)] = np.frombuffer(trns, np.uint8)[: len(rows)]
            elif isinstance(trns, int) and trns < len(rows):
                alpha[trns] = 0
            rows = np.concatenate([rows, alpha[:, None]], axis=1)
        return apply_palette(np.asarray(im), rows if c == 4 else rows[:, :3])
    if mode in ("1", "L") and c == 2:
        gray = np.asarray(im.convert("L"))
        key = 255 if mode == "1" and trns else trns  # a 1-bit key of 1 is white
        return alpha_from_key(gray, key, 255)
    if mode == "CMYK":
        im = _cmyk_to_rgb(im)
    target = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[c]
    if im.mode != target:
        im = im.convert(target)
    if target in ("L", "RGB"):
        w, h = info._stored_size
        fits = out is not None and out.shape[:2] == (h, w) and out.dtype == np.uint8 and out.flags.c_contiguous
        return packed_pixels(im, out if fits else None)
    return np.asarray(im)


def _opencv_pixels(info: ImageInfo) -> np.ndarray:
    """16-bit colour PNG (Pillow would reduce it to 8-bit), stored orientation."""
    from filters._cv2 import cv2

    path = info.path
    try:
        with open(path, "rb") as f:
            data = bytearray(os.fstat(f.fileno()).st_size)
            if f.readinto(data) != len(data):
                raise InputError(f"{path}: changed while it was read")
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({reason(exc)})") from None
    try:
        png.strip_for_pixels(data)
    except ContainerError as exc:
        raise corrupt(path, exc) from None
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    del data
    w, h = info._stored_size
    if decoded is None or decoded.dtype != np.uint16 or decoded.shape[:2] != (h, w) or decoded.ndim != 3:
        raise InputError(f"{path}: truncated or corrupt image (16-bit decoder failed)")
    if info.mode == "LA":
        return decoded[:, :, [0, 3]] if decoded.shape[2] == 4 else alpha_from_key(decoded[:, :, 0], None, 65535)
    rgb = decoded[:, :, [2, 1, 0, 3]] if decoded.shape[2] == 4 else decoded[:, :, ::-1]
    if info.channels == 4 and rgb.shape[2] == 3:
        im = _open_pillow(path, "PNG")
        try:
            key = im.info.get("transparency")
        finally:
            im.close()
        return alpha_from_key(rgb, key, 65535)
    return rgb[:, :, :3] if info.channels == 3 else rgb


def _reopen(info: ImageInfo) -> Image.Image:
    """Open again and make sure it is still the probed file."""
    im = _open_pillow(info.path, info.format)
    w, h = info._stored_size
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
            cur = _FrameCursor(info)
            _cursor = cur
        try:
            cur.im.seek(frame)
            cur.im.load()
            im = cur.im.convert("RGBA" if info.channels == 4 else "RGB")
            cur.pos = frame
        except TileprocError:
            raise
        except EOFError:
            raise InputError(f"{info.path}: has no frame {frame} (truncated?)") from None
        except Image.DecompressionBombError:
            raise _pillow_limit(info.path) from None
        except Exception as exc:
            raise corrupt(info.path, exc) from None
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


def _check_complete(info: ImageInfo) -> None:
    """Refuse a truncated PNG, JPEG or BMP by its structure, for hosts that set Pillow's LOAD_TRUNCATED_IMAGES.

    Hand-written because Pillow's truncation check is that process-wide
    switch and cannot be asked for per call.
    """
    path = info.path
    try:
        if info.format == "PNG":
            for _ in png.png_chunks(read_bytes(path)):
                pass
        elif info.format == "JPEG":
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
                if b"\xff\xd9" not in f.read():
                    raise ContainerError("JPEG has no end-of-image marker")
        elif info.format == "BMP":
            with open(path, "rb") as f:
                head = f.read(54)
            offset, header = struct.unpack_from("<II", head, 10)
            width, height, _, bits, packing = struct.unpack_from("<iiHHI", head, 18)
            stride = (width * bits + 31) // 32 * 4
            if header >= 40 and packing in (0, 3) and offset + stride * abs(height) > os.path.getsize(path):
                raise ContainerError("BMP pixel data is cut short")
    except ContainerError as exc:
        raise corrupt(path, exc) from None


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

    if info.format == "TIFF":
        try:
            stored = _tiff().read(info)
        except TileprocError:
            raise
        except Exception as exc:
            raise corrupt(info.path, exc) from None
    elif info.n_frames > 1:
        stored = _animated_pixels(info, frame)
    elif info._uses_opencv:
        stored = _opencv_pixels(info)
    else:
        if ImageFile.LOAD_TRUNCATED_IMAGES:  # the host asked Pillow to accept truncation: tileproc does not
            _check_complete(info)
        im = _reopen(info)
        try:
            im.load()
            stored = _pillow_pixels(im, info, out if info.orientation == 1 else None)
        except TileprocError:
            raise
        except Exception as exc:
            raise corrupt(info.path, exc) from None
        finally:
            im.close()
    upright_shape = orient(stored, info.orientation).shape
    if upright_shape != info.shape:  # pragma: no cover - a planning bug, never the user's
        raise InputError(f"{info.path}: decoded shape {upright_shape} differs from the probed {info.shape}")
    if out is None:
        if info.orientation == 1 and stored.dtype == info.dtype and stored.flags.c_contiguous:
            return stored
        out = np.empty(info.shape, info.dtype)
    return out if stored is out else orient_into(stored, info.orientation, out)


# ---------------------------------------------------------------------------
# write


def format_of(dst: str | os.PathLike[str]) -> str:
    """The image format an output name asks for (``"PNG"``...), or raise :class:`OutputError`."""
    dst = Path(dst)
    fmt = _EXT_FORMAT.get(dst.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise OutputError(f"{dst}: unknown image format {dst.suffix or '(no extension)'!r}; use one of {known}")
    return fmt


def quality_ignored(dst: str | os.PathLike[str]) -> bool:
    """Whether ``quality`` means nothing for this output (every format but JPEG and WebP)."""
    return _EXT_FORMAT.get(Path(dst).suffix.lower()) not in LOSSY_FORMATS


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
    fmt = format_of(dst)
    frames = info.n_frames if n_frames is None else n_frames
    if frames > 1 and fmt not in ANIMATION_ENCODERS:
        raise OutputError(f"{dst}: {fmt} cannot hold an animation ({frames} frames); write .gif, .webp or .png")
    if info.dtype == np.float32 and fmt != "TIFF":
        raise OutputError(f"{dst}: {fmt} cannot store 32-bit float pixels (mode {info.mode}); write .tif")
    check_output(dst, inputs=[info.path, *map(Path, inputs)], overwrite=overwrite)
    return fmt


def _check_quality(quality: int | None) -> None:
    if quality is not None and not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an integer in 1..100, got {quality!r}")


@contextlib.contextmanager
def _writing(dst: Path, fmt: str) -> Iterator[None]:
    """Turn an encoder's failure into one OutputError line naming the file."""
    try:
        yield
    except (TileprocError, DurationMismatch):
        raise
    except Exception as exc:
        raise OutputError(f"{dst}: cannot write {fmt} ({reason(exc)})") from exc


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
    check_array(array, dst)
    _check_quality(quality)
    view = dataclasses.replace(info, dtype=array.dtype, n_frames=1)
    fmt = check_image_output(view, dst, overwrite=overwrite, inputs=inputs)
    with atomic_output(dst, inputs=[info.path, *map(Path, inputs)], overwrite=overwrite) as tmp:
        with _writing(dst, fmt):
            ENCODERS[fmt](array, tmp, info, quality)


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
    """Write frames as an animated GIF, WebP or PNG: one output frame per input frame, same delays and loop.

    Frames are encoded as they arrive, so a generator keeps memory near one
    frame plus the compressed output. Every frame covers the whole canvas;
    identical neighbours are kept (encoders would merge them). A single frame
    is written as a still image, in any format.

    Parameters
    ----------
    frames : iterable of numpy.ndarray
        Same shape for every frame, uint8 or uint16, as :func:`read_image` returns them.
    dst : path-like
        ``.gif``, ``.webp`` or ``.png`` (APNG).
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
    check_array(first, dst)
    fmt = format_of(dst)
    times = list(durations if durations is not None else info.durations)
    second = next(it, None)
    if second is None:
        write_image(first, dst, info, overwrite=overwrite, inputs=inputs, quality=quality)
        return
    it = itertools.chain([second], it)
    if fmt not in ANIMATION_ENCODERS:
        raise OutputError(f"{dst}: {fmt} cannot hold an animation; write .gif, .webp or .png")
    sink = ImageSink(dst, info, overwrite=overwrite, inputs=inputs, quality=quality, durations=times, animation=True)
    try:
        for k, f in enumerate(itertools.chain([first], it)):
            sink.write(k, np.asarray(f))
        sink.commit()
    finally:
        sink.abort()


def _animation_info(info: ImageInfo, fmt: str) -> ImageInfo:
    """The source's probe as an animation writer for ``fmt`` should see it."""
    if fmt != "PNG" or info.format != "PNG":
        return dataclasses.replace(info, apng_default_separate=False)
    return info


# ---------------------------------------------------------------------------
# the I/O contract


class ImageSource(Source):
    """A still image or an animation as a :class:`~tiler.io.base.Source`.

    A still is decoded on a worker (``runs = "worker"``: it pickles small);
    an animation's frames are read in order in the parent.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.path = Path(path)
        self.max_pixels = max_pixels
        self.info: ImageInfo | None = None

    def probe(self) -> ImageInfo:
        if self.info is None:
            self.info = probe_image(self.path, max_pixels=self.max_pixels)
        self.runs = "worker" if self.info.n_frames == 1 else "parent"
        return self.info

    def read_into(self, index: int, out: np.ndarray) -> None:
        read_image(self.probe(), out, frame=index)


class ImageSink(Sink):
    """An image output as a :class:`~tiler.io.base.Sink`: a still, or an animation encoded as frames arrive.

    A still is written by :meth:`write` (on a worker: ``runs = "worker"``),
    atomically, and :meth:`commit` has nothing left to do. An animation's
    frames are compressed one by one as they arrive in the parent (only the
    compressed frames are kept) and the file appears at :meth:`commit`; a
    single frame is written as a still. :meth:`abort` leaves nothing.
    """

    def __init__(
        self,
        dst: str | os.PathLike[str],
        info: ImageInfo,
        *,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike[str]] = (),
        quality: int | None = None,
        durations: Sequence[int] | None = None,
        animation: bool | None = None,
    ):
        _check_quality(quality)
        self.dst = Path(dst)
        self.info = info
        self.overwrite = overwrite
        self.inputs = [info.path, *map(Path, inputs)]
        self.quality = quality
        self.durations = list(durations if durations is not None else info.durations)
        self.animated = info.n_frames > 1 if animation is None else animation
        self.runs = "parent" if self.animated else "worker"
        self._first: np.ndarray | None = None
        self._writer: Any = None
        self._count = 0
        self._stack: contextlib.ExitStack | None = None  # the atomic output, from the second frame on
        self._tmp: Path | None = None

    def write(self, index: int, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if not self.animated:
            write_image(frame, self.dst, self.info, overwrite=self.overwrite, inputs=self.inputs, quality=self.quality)
            return
        if self._count == 0:
            check_array(frame, self.dst)
            self._first = np.array(frame)  # one frame is a still: wait for the second
        else:
            if self._count == 1:
                assert self._first is not None  # kept by the first write
                self._open(self._first)
            self._add(frame)
        self._count += 1

    def _open(self, first: np.ndarray) -> None:
        dst = self.dst
        fmt = format_of(dst)
        if fmt not in ANIMATION_ENCODERS:
            raise OutputError(f"{dst}: {fmt} cannot hold an animation; write .gif, .webp or .png")
        view = dataclasses.replace(self.info, dtype=first.dtype, n_frames=max(2, len(self.durations)))
        check_image_output(view, dst, overwrite=self.overwrite, inputs=self.inputs[1:])
        self._fmt = fmt
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_output(dst, inputs=self.inputs, overwrite=self.overwrite))
        with _writing(dst, fmt):
            self._writer = ANIMATION_ENCODERS[fmt](_animation_info(self.info, fmt), self.quality)
        self._add(first)

    def _add(self, frame: np.ndarray) -> None:
        first = self._first
        assert first is not None
        if frame.shape != first.shape or frame.dtype != first.dtype:
            raise OutputError(
                f"{self.dst}: frame {self._count} is {frame.shape} {frame.dtype}, frame 0 is {first.shape} {first.dtype}"
            )
        with _writing(self.dst, self._fmt):
            self._writer.add(frame)

    def commit(self) -> None:
        if not self.animated:
            return
        if self._count == 0:
            raise ValueError(f"{self.dst}: no frames to write")
        if self._count == 1:
            assert self._first is not None
            write_image(
                self._first, self.dst, self.info, overwrite=self.overwrite, inputs=self.inputs, quality=self.quality
            )
            self._first = None
            return
        loop = self.info.loop if self.info.n_frames > 1 else 0
        assert self._tmp is not None
        try:
            with _writing(self.dst, self._fmt):
                self._writer.finish(self._tmp, self.durations, loop)
        except DurationMismatch as exc:
            raise ValueError(f"{self.dst}: {exc}") from None
        self._writer = self._first = None
        assert self._stack is not None
        self._stack.close()  # renames the temporary into place
        self._tmp = None

    def abort(self) -> None:
        self._writer = self._first = None
        if self._stack is not None and self._tmp is not None:
            self._stack.__exit__(OutputError, OutputError(f"{self.dst}: aborted"), None)  # removes the temporary
        self._stack = self._tmp = None
