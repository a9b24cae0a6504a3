"""What every image format module shares: the probe's record, errors, pixel helpers, metadata helpers.

Private to the image modules (:mod:`tiler.io.images` is the public face).
The palette policy lives here once (:func:`apply_palette` to read,
:func:`exact_palette` / :func:`palette_image` to write); so do the EXIF,
XMP, ICC and DPI rules every format follows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import re
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
from PIL import Image

from tiler.errors import InputError, OutputError

__all__: list[str] = []  # private; tiler.io.images is the public face

#: Largest frame (width x height) read without ``--max-pixels``: Pillow's own
#: hard limit, 2 * 89,478,485 (an RGBA uint8 frame of 716 MB, about 13,377 x
#: 13,377). For animations the sum over all frames is held to it too, since
#: every frame is decoded.
DEFAULT_MAX_PIXELS = 178_956_970
DEFAULT_QUALITY = 95


class ContainerError(ValueError):
    """A file's structure is broken: truncated, or a block points past the end."""


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
    jpeg_optimized : bool
        The JPEG's Huffman tables are its own (optimised for its data, as
        progressive files always are), not the standard ones that cameras
        and most encoders write; a JPEG output then optimises its tables too.
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
    sample_dtype : numpy.dtype or None
        A TIFF's own sample type (``int16``, ``int32``, ``float64``...), to
        which a TIFF output returns (see :mod:`tiler.io.tiff`).
    value_range : (float, float) or None
        The data range that was mapped to 0..1 (int32, uint32 and wide float TIFF).
    apng_default_separate : bool
        An APNG whose default image is not an animation frame (it is frame 0).
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
    jpeg_optimized: bool = False
    compression: str | None = None
    lossless: bool = True
    durations: tuple[int, ...] = ()
    loop: int | None = None
    text: tuple[tuple[str, str], ...] = ()
    sample_dtype: np.dtype | None = None
    value_range: tuple[float, float] | None = None
    apng_default_separate: bool = False

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
        return self.format == "PNG" and self.n_frames == 1 and self.bits == 16 and self.mode in ("LA", "RGB", "RGBA")


def reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(f"{path}: truncated or corrupt image ({reason(exc)})")


def check_pixels(path: Path, width: int, height: int, frames: int, max_pixels: int) -> None:
    if width < 1 or height < 1:  # a header field of a signed or wrong type can read as zero or negative
        raise InputError(f"{path}: truncated or corrupt image (size {width}x{height})")
    pixels = width * height
    if pixels > max_pixels:
        raise InputError(f"{path}: {width}x{height} = {pixels} pixels exceeds the limit of {max_pixels} (--max-pixels)")
    if frames > 1 and pixels * frames > max_pixels:
        raise InputError(
            f"{path}: {frames} frames of {width}x{height} = {pixels * frames} pixels "
            f"exceeds the limit of {max_pixels} (--max-pixels)"
        )


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({reason(exc)})") from None


NOT_EXIF = frozenset(
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


# ---------------------------------------------------------------------------
# messages of the libraries, per call: never raw on the terminal


class _Capture(logging.Filter):
    """Holds back tifffile's log records made by a thread inside a tileproc call; others pass.

    tifffile reports damaged tags through ``logging.getLogger("tifffile")``;
    without this they would reach the terminal through logging's last-resort
    handler, unnamed. The filter is attached once and changes nothing for
    records from the host's own threads.
    """

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held = getattr(self.local, "held", None)
        if held is None:
            return True
        held.append(record.getMessage())
        return False


_capture = _Capture()
_capture_lock = threading.Lock()


class tifffile_messages:
    """Collect tifffile's messages for this thread while the block runs (``.messages``)."""

    def __enter__(self) -> tifffile_messages:
        with _capture_lock:
            logger = logging.getLogger("tifffile")
            if _capture not in logger.filters:
                logger.addFilter(_capture)
        self.outer = getattr(_capture.local, "held", None)
        self.messages: list[str] = []
        _capture.local.held = self.messages
        return self

    def __exit__(self, *exc: object) -> None:
        _capture.local.held = self.outer


#: Where tileproc reports what it dropped or repaired in an input, one line naming the file
#: (the command line shows these; a host configures ``logging`` as it likes).
log = logging.getLogger("tiler.io")


def note(path: Path, what: str, messages: Sequence[str]) -> None:
    """Log one warning line naming ``path`` for a library's messages about it (nothing when there are none)."""
    if messages:
        first = " ".join(str(messages[0]).split())[:160]
        more = f" and {len(messages) - 1} more" if len(messages) > 1 else ""
        log.warning("%s: %s (%s%s)", path, what, first, more)


_TYPE_SIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}


def ifd_problems(f: Any, size: int) -> list[str]:
    """Entries of a classic TIFF structure's first IFD and its EXIF/GPS/Interop IFDs whose data lie past the end.

    Hand-written: Pillow's IFD reader warns about these (process-wide
    ``warnings.warn``, no way to ask per call) where it should raise; checking
    the same condition first lets tileproc leave damaged EXIF out with one line
    of its own instead. BigTIFF is left to tifffile.
    """
    return _walk_ifds(f, size)[0]


def _walk_ifds(f: Any, size: int) -> tuple[list[str], bool]:
    """(problems, plain): ``plain`` when the walk saw every IFD Pillow would read, i.e. a
    classic structure whose sub-IFD pointers are the usual single LONG or IFD values."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[:2] not in (b"II", b"MM"):
        return ["not a TIFF structure"], True
    e = "<" if head[:2] == b"II" else ">"
    if struct.unpack(e + "H", head[2:4])[0] != 42:
        return [], False
    problems: list[str] = []
    plain = True
    todo, seen = [struct.unpack(e + "I", head[4:8])[0]], set[int]()
    while todo:
        at = todo.pop()
        if at in seen:
            continue
        if len(seen) == 8:
            return problems, False
        seen.add(at)
        f.seek(at)
        raw = f.read(2)
        if len(raw) < 2:
            return [*problems, f"IFD at {at} lies past the end"], plain
        (count,) = struct.unpack(e + "H", raw)
        entries = f.read(12 * count + 4)  # the entries, then the offset of the next IFD
        if len(entries) < 12 * count + 4:
            return [*problems, f"IFD at {at} is cut short"], plain
        total = 0  # Pillow refuses an IFD whose values, all together, outgrow the block
        for k in range(count):
            tag, kind, n, value = struct.unpack_from(e + "HHII", entries, 12 * k)
            if kind not in _TYPE_SIZE:
                continue  # a type Pillow does not know: it skips the entry, quietly
            length = _TYPE_SIZE[kind] * n
            total += length if length > 4 else 0
            if length > 4 and value + length > size:
                problems.append(f"tag {tag}: {length} bytes at {value} lie past the end ({size})")
            elif length > 4 and total > size:
                problems.append(f"tag {tag}: the IFD's values add up to {total} bytes, more than the {size} there are")
            elif tag in (0x8769, 0x8825, 0xA005):
                if kind in (4, 13) and n == 1:
                    todo.append(value)
                else:  # a pointer stored another way (SHORT, SLONG, several values): Pillow follows it too
                    plain = False
    return problems, plain


def exif_problems(data: bytes) -> list[str]:
    """What is wrong in an EXIF block (a TIFF structure), as tifffile and Pillow's reader would find it.

    The structure check alone decides for a plain block (a camera's: its sub-IFD
    pointers single LONG values), so a photo's job needs no tifffile (13 ms to
    import); anything else is read by tifffile as well.
    """
    problems, plain = _walk_ifds(io.BytesIO(data), len(data))
    if problems or plain:
        return problems
    import tifffile

    with tifffile_messages() as quiet:
        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                for tag in tif.pages.first.tags.values():
                    tag.value  # noqa: B018 - reading the value is the check
        except Exception as exc:
            return [reason(exc)]
    return [m for m in quiet.messages if "missing data" not in m and "missing required" not in m]


def exif_of(im: Image.Image, fmt: str, path: Path | None = None) -> Image.Exif:
    """The EXIF of an open image, read from its header; damaged EXIF is dropped with one logged line."""
    raw = im.info.get("exif")
    if raw is None and fmt == "PNG":  # PngImageFile.getexif() would decode the pixels
        text = im.info.get("Raw profile type exif")
        if isinstance(text, str):
            with contextlib.suppress(ValueError):
                raw = bytes.fromhex("".join(text.split("\n")[3:]))
    exif = Image.Exif()
    if not isinstance(raw, bytes) or not raw:
        return exif
    problems = exif_problems(raw[6:] if raw.startswith(b"Exif\x00\x00") else raw)
    if problems:
        note(path or Path("?"), "damaged EXIF left out", problems)
        return exif
    try:
        exif.load(raw)
    except Exception:  # broken EXIF is metadata, not pixels: drop it (see clean_exif)
        return Image.Exif()
    return exif


def clean_exif(exif: Image.Exif) -> bytes | None:
    """EXIF bytes to write beside upright pixels: Orientation 1, no thumbnail, no layout tags."""
    try:
        for tag in [t for t in exif if t in NOT_EXIF]:
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


XMP_ORIENTATION = re.compile(rb"(tiff:Orientation(?:=\"|>))([0-9])")


def xmp_orientation_reset(xmp: bytes) -> bytes:
    """XMP with ``tiff:Orientation`` set to 1, for upright pixels."""
    return XMP_ORIENTATION.sub(rb"\g<1>1", xmp)


def xmp_of(im: Image.Image) -> bytes | None:
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode()
    if isinstance(xmp, tuple) and xmp:
        xmp = xmp[0]
    return bytes(xmp) if xmp else None


def exif_orientation(exif: Image.Exif, xmp: bytes | None) -> int:
    try:
        value = exif.get(0x0112)
    except Exception:
        value = None
    if value is None and xmp:
        m = XMP_ORIENTATION.search(xmp)
        value = int(m.group(2)) if m else None
    try:
        value = int(value) if value is not None else 1
    except (TypeError, ValueError):
        value = 1
    return value if 1 <= value <= 8 else 1


def orient(a: np.ndarray, orientation: int) -> np.ndarray:
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


# EXIF orientation -> the OpenCV calls that turn stored pixels upright: a rotation (cv2.rotate),
# a flip (cv2.flip's code), or a transpose followed by an optional flip.
_CV_ORIENT: dict[int, tuple[str, int | None]] = {
    2: ("flip", 1),
    3: ("flip", -1),
    4: ("flip", 0),
    5: ("transpose", None),
    6: ("rotate", 0),  # cv2.ROTATE_90_CLOCKWISE
    7: ("transpose", -1),
    8: ("rotate", 2),  # cv2.ROTATE_90_COUNTERCLOCKWISE
}


def orient_into(a: np.ndarray, orientation: int, out: np.ndarray) -> np.ndarray:
    """Write the upright pixels of ``a`` (stored as ``orientation`` says) into ``out``; return ``out``.

    The same pixels as ``np.copyto(out, orient(a, orientation))``, faster for
    a rotation: a copy through numpy's strided view of a rotated image walks
    memory column by column, OpenCV's rotate/flip/transpose work by cache
    blocks. numpy does it when OpenCV cannot (another dtype, more than four
    channels, a dtype change, strided arrays).

    Examples
    --------
    >>> a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    >>> orient_into(a, 6, np.empty((3, 2), np.uint8)).tolist()
    [[3, 0], [4, 1], [5, 2]]
    """
    op = _CV_ORIENT.get(orientation)
    channels = 1 if a.ndim == 2 else a.shape[2]
    if (
        op is None
        or a.dtype != out.dtype
        or a.dtype not in _CV_DTYPES
        or not 1 <= channels <= 4
        or not (a.flags.c_contiguous and out.flags.c_contiguous and out.flags.writeable)
        or np.shares_memory(a, out)
    ):
        np.copyto(out, orient(a, orientation), casting="unsafe")
        return out
    from filters._cv2 import cv2

    kind, code = op
    if kind == "flip":
        assert code is not None  # a flip always says which
        done = cv2.flip(a, code, dst=out)
    elif kind == "rotate":
        assert code is not None  # a rotation always says which
        done = cv2.rotate(a, code, dst=out)
    else:
        done = cv2.transpose(a, dst=out)
        if code is not None:
            done = cv2.flip(out, code, dst=out)
    if done is not out and not np.shares_memory(done, out):  # pragma: no cover - OpenCV allocated instead
        np.copyto(out, done.reshape(out.shape))
    return out


_CV_DTYPES = frozenset(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.float32, np.float64))


class _PackedSink:
    """A write-only stream that checks a PPM header and puts the pixel bytes after it into ``target``."""

    def __init__(self, header: bytes, target: np.ndarray):
        self.header, self.seen = header, b""
        self.view = target.data.cast("B")
        self.pos = 0

    def write(self, data: bytes) -> int:
        chunk = memoryview(data)
        if len(self.seen) < len(self.header):
            take = len(self.header) - len(self.seen)
            self.seen += bytes(chunk[:take])
            if not self.header.startswith(self.seen):
                raise ValueError("unexpected PPM header")
            chunk = chunk[take:]
        end = self.pos + len(chunk)
        if end > len(self.view):
            raise ValueError("more pixel bytes than the frame holds")
        self.view[self.pos : end] = chunk
        self.pos = end
        return len(data)

    def flush(self) -> None:
        pass


def packed_pixels(im: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
    """The pixels of a loaded 8-bit ``L`` or ``RGB`` image as (H, W) or (H, W, 3) uint8, copied once.

    Written into ``out`` when given (C-contiguous, that shape and dtype).
    Hand-written: Pillow packs pixels for ``np.asarray(im)`` through
    ``tobytes``, which encodes hundreds of small chunks and joins them into a
    new bytes object (35 ms for 12 MP RGB); it has no call that packs into a
    caller's buffer. Saving as PPM (raw packed samples after a short header)
    to a stream that writes into the array is Pillow's same packer writing
    once (8 ms). Any other mode, or a header other than expected, takes
    ``np.asarray``.

    Examples
    --------
    >>> im = Image.new("RGB", (3, 2), (1, 2, 3))
    >>> packed_pixels(im).shape
    (2, 3, 3)
    """
    if im.mode not in ("RGB", "L"):
        raise ValueError(f"packed_pixels takes mode L or RGB, got {im.mode}")
    w, h = im.size
    shape = (h, w, 3) if im.mode == "RGB" else (h, w)
    if out is None:
        out = np.empty(shape, np.uint8)
    if out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint8 of shape {shape}, got {out.shape} {out.dtype}")
    sink = _PackedSink(b"%s\n%d %d\n255\n" % (b"P6" if im.mode == "RGB" else b"P5", w, h), out)
    try:
        im.save(cast(IO[bytes], sink), "PPM")
        if sink.pos == out.nbytes:
            return out
    except ValueError:  # another Pillow's PPM writer: the plain way
        pass
    np.copyto(out, np.asarray(im))
    return out


def alpha_from_key(gray_or_rgb: np.ndarray, key: Any, full: int) -> np.ndarray:
    """Append an alpha channel: 0 where the pixel equals the tRNS key, ``full`` elsewhere."""
    a = gray_or_rgb if gray_or_rgb.ndim == 3 else gray_or_rgb[:, :, None]
    keyv = np.asarray(key if isinstance(key, (tuple, list)) else [key], a.dtype)
    alpha = np.where(np.all(a == keyv, axis=2), 0, full).astype(a.dtype)
    return np.concatenate([a, alpha[:, :, None]], axis=2)


def check_array(array: np.ndarray, dst: Path) -> None:
    ok_dtype = array.dtype in (np.uint8, np.uint16, np.float32)
    ok_shape = array.ndim == 2 or (array.ndim == 3 and 1 <= array.shape[2] <= 4)
    if not (ok_dtype and ok_shape) or array.size == 0:
        raise OutputError(f"{dst}: cannot write an array of shape {array.shape} and dtype {array.dtype}")


def as_hwc(a: np.ndarray) -> np.ndarray:
    return a if a.ndim == 3 else a[:, :, None]


def squeeze(a: np.ndarray) -> np.ndarray:
    return a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a


def to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def flatten_alpha(a: np.ndarray) -> np.ndarray:
    """uint8 gray/RGB with alpha composited over white; without alpha, unchanged."""
    a = squeeze(a)
    if a.ndim == 2 or a.shape[2] in (1, 3):
        return a
    colour, alpha = a[:, :, :-1].astype(np.uint32), a[:, :, -1:].astype(np.uint32)
    out = (colour * alpha + 255 * (255 - alpha) + 127) // 255
    return squeeze(out.astype(np.uint8))


def exact_palette(a: np.ndarray, max_colours: int) -> tuple[np.ndarray, np.ndarray] | None:
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


def palette_image(indices: np.ndarray, palette: np.ndarray) -> Image.Image:
    h, w = indices.shape
    im = Image.frombuffer("P", (w, h), np.ascontiguousarray(indices).tobytes(), "raw", "P", 0, 1)
    im.putpalette(palette.tobytes(), "RGBA" if palette.shape[1] == 4 else "RGB")
    return im


def is_binary(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.dtype == np.uint8 and bool(np.all((a == 0) | (a == 255)))


ICC_SPACE = {1: b"GRAY", 2: b"GRAY", 3: b"RGB ", 4: b"RGB "}


def icc_for(icc: bytes | None, channels: int) -> bytes | None:
    """The profile, if it describes the colour model of what is written."""
    if not icc or len(icc) < 20:
        return None
    return icc if icc[16:20] == ICC_SPACE[channels] else None


DPI_LIMIT = {"PNG": (2**32 - 1) * 0.0254, "BMP": (2**31 - 1) * 0.0254, "JPEG": 65535.0}


def dpi_for(fmt: str, dpi: tuple[float, float] | None) -> tuple[float, float] | None:
    """``dpi`` if ``fmt`` can store it, else None: metadata is kept where the format allows."""
    if not dpi:
        return None
    limit = DPI_LIMIT.get(fmt)
    if limit is not None and not all(0.5 <= d <= limit for d in dpi):
        return None
    return dpi


class DurationMismatch(ValueError):
    """An animation encoder got a different number of frames than of durations."""


def check_durations(dst: Path, durations: Sequence[int], n: int) -> None:
    if len(durations) != n:
        raise DurationMismatch(f"{n} frames but {len(durations)} durations; pass durations=")


# ---------------------------------------------------------------------------
# The palette policy, once: read through the palette, write back an exact palette when one fits.


def apply_palette(indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Palette indices (H, W) through ``rows`` (N, 3|4) uint8: RGB(A) pixels; indices past N read as black."""
    size = max(256, len(rows)) + 1  # the last row stays black for every index past the palette
    table = np.zeros((size, rows.shape[1]), np.uint8)
    table[: len(rows)] = rows
    return table[np.minimum(indices.astype(np.intp), size - 1)]


def palette_for(
    a: np.ndarray, info: ImageInfo, *, alpha_in_palette: bool = True
) -> tuple[np.ndarray, np.ndarray] | None:
    """(indices, rows) to write ``a`` as a palette image, or None to write it as it is.

    Only a palette source (mode P or PA) is written back as a palette, and only
    when the pixels still fit one exactly (at most 256 colours). Without
    ``alpha_in_palette`` (TIFF, BMP) an RGBA frame fits only when it is opaque.
    """
    if info.mode not in ("P", "PA") or a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    if a.shape[2] == 4 and not alpha_in_palette:
        if not bool(np.all(a[:, :, 3] == 255)):
            return None
        a = a[:, :, :3]
    return exact_palette(a, 256)


def bilevel(a: np.ndarray, info: ImageInfo) -> bool:
    """Write ``a`` as 1-bit: the source was 1-bit and every pixel is still 0 or 255."""
    return info.mode == "1" and is_binary(a)


def policy_image(a: np.ndarray, info: ImageInfo, *, alpha_in_palette: bool = True) -> Image.Image:
    """``a`` as the Pillow image to encode: 1-bit, an exact palette, or as it is (see :func:`palette_for`)."""
    found = palette_for(a, info, alpha_in_palette=alpha_in_palette)
    if bilevel(a, info):
        return Image.fromarray(a).convert("1", dither=Image.Dither.NONE)
    if found is not None:
        return palette_image(*found)
    return Image.fromarray(np.ascontiguousarray(a))
