"""Byte-level container work that Pillow does not do the way tileproc needs.

Private to :mod:`tiler.io.images`. Four jobs, each small:

* **scan** GIF, WebP and PNG files without decoding pixels: canvas size,
  frame count, per-frame durations, loop count, truncation. Runs before
  Pillow opens the file, so a declared size is checked before anything
  allocates a canvas (libwebp's animation decoder allocates one at open);
* **assemble** animated GIF and WebP files frame by frame, so the output keeps
  exactly the input's frame count and durations (Pillow's and libwebp's
  animation writers merge identical neighbouring frames);
* **encode** PNG for 16-bit samples with 2, 3 or 4 channels (Pillow stores
  those as 8-bit);
* **encode** TIFF with 1-4 channels of uint8/uint16/int32/float32 and the full
  set of tags (Pillow's libtiff writer cannot carry EXIF sub-IFDs, and Pillow
  has no 16-bit RGB mode).

Every parser raises :class:`ContainerError` with a short reason; the caller
turns it into an :class:`~tiler.errors.InputError` naming the file.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

__all__: list[str] = []  # private module; tiler.io.images is the public face


class ContainerError(ValueError):
    """A file's structure is broken: truncated, or a block points past the end."""


# ---------------------------------------------------------------------------
# GIF


@dataclasses.dataclass(frozen=True)
class GifScan:
    width: int  # canvas: the logical screen, grown to hold every frame as Pillow does
    height: int
    durations: tuple[int, ...]  # milliseconds, one per frame
    disposals: tuple[int, ...]
    transparent: bool  # the composed canvas can show transparent pixels (see scan_gif)
    loop: int | None  # NETSCAPE2.0 loop count (0 = forever); None: no loop extension

    @property
    def n_frames(self) -> int:
        return len(self.durations)


def _skip_sub_blocks(data: bytes, pos: int) -> int:
    n = len(data)
    while True:
        if pos >= n:
            raise ContainerError("truncated GIF data")
        size = data[pos]
        pos += 1
        if size == 0:
            return pos
        pos += size
        if pos > n:
            raise ContainerError("truncated GIF data")


def scan_gif(data: bytes) -> GifScan:
    """Walk a GIF's blocks; no LZW decoding.

    ``transparent`` is True when the composed frames can have transparent
    pixels: the first frame has a transparent index, or a frame with one is
    disposed to the background (Pillow, like browsers, then clears to
    transparent). Transparent pixels of later frames that are not disposed
    only let the frame before show through.
    """
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ContainerError("not a GIF file")
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    pos = 13
    if packed & 0x80:
        pos += 3 << ((packed & 7) + 1)
    durations: list[int] = []
    disposals: list[int] = []
    transparent = False
    loop: int | None = None
    gce: tuple[int, int, bool] | None = None
    n = len(data)
    while pos < n:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension
            if pos + 2 > n:
                raise ContainerError("truncated GIF extension")
            label = data[pos + 1]
            pos += 2
            if label == 0xF9 and pos < n and data[pos] >= 4 and pos + 5 <= n:
                flags, delay = struct.unpack_from("<BH", data, pos + 1)
                gce = (delay * 10, (flags >> 2) & 7, bool(flags & 1))
            elif label == 0xFF and pos + 12 <= n and data[pos] == 11:
                app = data[pos + 1 : pos + 12]
                sub = pos + 12
                if app in (b"NETSCAPE2.0", b"ANIMEXTS1.0") and sub + 4 <= n and data[sub] >= 3 and data[sub + 1] == 1:
                    loop = struct.unpack_from("<H", data, sub + 2)[0]
            pos = _skip_sub_blocks(data, pos)
        elif kind == 0x2C:  # image descriptor
            if pos + 10 > n:
                raise ContainerError("truncated GIF image descriptor")
            x, y, w, h, flags = struct.unpack_from("<HHHHB", data, pos + 1)
            width, height = max(width, x + w), max(height, y + h)
            pos += 10
            if flags & 0x80:
                pos += 3 << ((flags & 7) + 1)
            pos += 1  # LZW minimum code size
            pos = _skip_sub_blocks(data, pos)
            delay, disposal, trns = gce if gce is not None else (0, 0, False)
            durations.append(delay)
            disposals.append(disposal)
            transparent |= trns and (len(durations) == 1 or disposal == 2)
            gce = None
        else:
            if durations:  # junk after the last frame: decoders stop here too
                break
            raise ContainerError(f"unexpected GIF block 0x{kind:02x}")
    if not durations:
        raise ContainerError("GIF has no frames")
    return GifScan(width, height, tuple(durations), tuple(disposals), transparent, loop)


def _gif_frame_parts(single: bytes) -> tuple[bytes, int, bytes]:
    """(colour table, interlace flag, LZW code size + data sub-blocks) of a one-frame GIF."""
    packed = single[10]
    pos = 13
    table = b""
    if packed & 0x80:
        size = 3 << ((packed & 7) + 1)
        table = single[pos : pos + size]
        pos += size
    while True:
        kind = single[pos]
        if kind == 0x21:
            pos = _skip_sub_blocks(single, pos + 2)
        elif kind == 0x2C:
            flags = single[pos + 9]
            pos += 10
            if flags & 0x80:
                size = 3 << ((flags & 7) + 1)
                table = single[pos : pos + size]
                pos += size
            end = _skip_sub_blocks(single, pos + 1)
            return table, flags & 0x40, single[pos:end]
        else:  # pragma: no cover - Pillow always writes a frame
            raise ContainerError("encoder wrote no GIF frame")


def _table_bits(table: bytes) -> int:
    """GIF colour-table size field for a table of len(table) bytes (2**(k+1) entries)."""
    entries = max(2, len(table) // 3)
    return max(0, (entries - 1).bit_length() - 1)


def assemble_gif(
    frames: Sequence[tuple[np.ndarray, bytes, int | None, bool]],
    *,
    durations: Sequence[int],
    loop: int | None,
    holes: Sequence[bool],
) -> bytes:
    """A GIF from full-canvas frames ``(indices, rgb palette, free index or None, index used)``.

    Every frame covers the whole canvas. A frame is disposed to the background
    when the next one has transparent pixels (``holes``), else kept, so
    browsers and Pillow both compose exactly the given frames. The free index
    is declared transparent when the frame uses it or is disposed (so Pillow,
    too, clears to transparent). Each frame has its own colour table; delays
    are rounded to GIF's 10 ms unit.
    """
    from PIL import Image

    height, width = frames[0][0].shape
    out = io.BytesIO()
    # A two-colour global table only so that the background index names a colour
    # (some decoders warn without one); every frame brings its own table.
    out.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF0, 0, 0) + b"\x00\x00\x00\xff\xff\xff")
    if loop is not None:
        out.write(b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", loop) + b"\x00")
    for k, (indices, palette, free, used) in enumerate(frames):
        im = Image.frombuffer("P", (width, height), np.ascontiguousarray(indices, np.uint8).tobytes(), "raw", "P", 0, 1)
        im.putpalette(palette)
        buf = io.BytesIO()
        im.save(buf, "GIF", optimize=False, interlace=False)
        table, interlace, lzw = _gif_frame_parts(buf.getvalue())
        next_holes = k + 1 < len(frames) and holes[k + 1]
        disposal = 2 if next_holes else 1
        trns = free if free is not None and (used or next_holes) else None
        flags = (disposal << 2) | (1 if trns is not None else 0)
        delay = max(0, min(0xFFFF, int(round(durations[k] / 10))))
        out.write(b"!\xf9\x04" + struct.pack("<BHB", flags, delay, trns or 0) + b"\x00")
        bits = _table_bits(table)
        table = table.ljust(3 << (bits + 1), b"\x00")
        out.write(b"," + struct.pack("<HHHHB", 0, 0, width, height, 0x80 | interlace | bits) + table + lzw)
    out.write(b";")
    return out.getvalue()


# ---------------------------------------------------------------------------
# WebP (RIFF)


@dataclasses.dataclass(frozen=True)
class WebpScan:
    width: int
    height: int
    durations: tuple[int, ...]  # milliseconds per frame; (0,) for a still image
    loop: int | None  # 0 = forever; None for a still image
    lossless: bool  # the (first) frame is VP8L
    alpha: bool
    animated: bool
    problem: str = ""  # set when the file has a canvas but no usable image data

    @property
    def n_frames(self) -> int:
        return len(self.durations)


def _u24(b: bytes, at: int) -> int:
    return b[at] | (b[at + 1] << 8) | (b[at + 2] << 16)


def _p24(v: int) -> bytes:
    return bytes((v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF))


def riff_chunks(data: bytes, start: int = 12, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(fourcc, payload start, payload size)`` for each RIFF chunk."""
    end = len(data) if end is None else end
    pos = start
    while pos + 8 <= end:
        fourcc = data[pos : pos + 4]
        size = struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + size > end:
            raise ContainerError(f"truncated WebP chunk {fourcc.decode('latin-1')!r}")
        yield fourcc, pos + 8, size
        pos += 8 + size + (size & 1)
    if pos < end and data[pos:end].strip(b"\x00"):
        raise ContainerError("truncated WebP file")


def scan_webp(data: bytes) -> WebpScan:
    """Canvas size, frames, durations, loop and codec of a WebP; no decoding."""
    if len(data) < 20 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ContainerError("not a WebP file")
    riff_end = 8 + struct.unpack_from("<I", data, 4)[0]
    if riff_end > len(data):
        raise ContainerError("truncated WebP file")
    width = height = 0
    durations: list[int] = []
    loop: int | None = None
    lossless: bool | None = None
    alpha = False
    animated = False
    for fourcc, at, size in riff_chunks(data, 12, riff_end):
        if fourcc == b"VP8X" and size >= 10:
            flags = data[at]
            alpha = bool(flags & 0x10)
            animated = bool(flags & 0x02)
            width, height = 1 + _u24(data, at + 4), 1 + _u24(data, at + 7)
        elif fourcc == b"ANIM" and size >= 6:
            loop = struct.unpack_from("<H", data, at + 4)[0]
        elif fourcc == b"ANMF" and size >= 16:
            durations.append(_u24(data, at + 12))
            if lossless is None:
                for sub, _, _ in riff_chunks(data, at + 16, at + size):
                    if sub in (b"VP8 ", b"VP8L"):
                        lossless = sub == b"VP8L"
                        break
        elif fourcc == b"VP8 " and size >= 10:
            lossless = False
            if not width:
                w, h = struct.unpack_from("<HH", data, at + 6)
                width, height = w & 0x3FFF, h & 0x3FFF
        elif fourcc == b"VP8L" and size >= 5:
            lossless = True
            if not width:
                bits = struct.unpack_from("<I", data, at + 1)[0]
                width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
                alpha = bool((bits >> 28) & 1)
    if not width:
        raise ContainerError("WebP has no image data")
    problem = ""
    if lossless is None:
        problem = "WebP has no image data"
    if not animated:
        durations, loop = [0], None
    elif not durations:
        durations, problem = [0], "animated WebP has no frames"
    return WebpScan(width, height, tuple(durations), loop, bool(lossless), alpha, animated, problem)


def _riff_chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def webp_frame_payload(still: bytes) -> bytes:
    """The ALPH/VP8/VP8L chunks of a still WebP, ready to sit inside an ANMF chunk."""
    parts = []
    for fourcc, at, size in riff_chunks(still):
        if fourcc in (b"ALPH", b"VP8 ", b"VP8L"):
            parts.append(_riff_chunk(fourcc, still[at : at + size]))
    if not parts:  # pragma: no cover - libwebp always writes one
        raise ContainerError("encoder wrote no WebP frame")
    return b"".join(parts)


def assemble_webp(
    payloads: Sequence[bytes],
    *,
    width: int,
    height: int,
    durations: Sequence[int],
    loop: int | None,
    alpha: bool,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    """An animated WebP from full-canvas frame payloads; no blending, no disposal."""
    flags = 0x02 | (0x10 if alpha else 0) | (0x20 if icc_profile else 0)
    flags |= (0x08 if exif else 0) | (0x04 if xmp else 0)
    body = [_riff_chunk(b"VP8X", bytes((flags, 0, 0, 0)) + _p24(width - 1) + _p24(height - 1))]
    if icc_profile:
        body.append(_riff_chunk(b"ICCP", icc_profile))
    body.append(_riff_chunk(b"ANIM", b"\x00\x00\x00\x00" + struct.pack("<H", 0 if loop is None else loop)))
    for payload, duration in zip(payloads, durations):
        head = _p24(0) + _p24(0) + _p24(width - 1) + _p24(height - 1)
        head += _p24(max(0, min(0xFFFFFF, int(duration)))) + b"\x02"  # do not blend, do not dispose
        body.append(_riff_chunk(b"ANMF", head + payload))
    if exif:
        body.append(_riff_chunk(b"EXIF", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    if xmp:
        body.append(_riff_chunk(b"XMP ", xmp))
    data = b"WEBP" + b"".join(body)
    return b"RIFF" + struct.pack("<I", len(data)) + data


# ---------------------------------------------------------------------------
# PNG

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(type, payload)`` for each chunk, checking lengths and CRCs, up to IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise ContainerError("not a PNG file")
    pos, n = 8, len(data)
    while True:
        if pos + 12 > n:
            raise ContainerError("truncated PNG file (no IEND chunk)")
        size = struct.unpack_from(">I", data, pos)[0]
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + size > n:
            raise ContainerError(f"truncated PNG chunk {kind.decode('latin-1')!r}")
        payload = data[pos + 8 : pos + 8 + size]
        crc = struct.unpack_from(">I", data, pos + 8 + size)[0]
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise ContainerError(f"broken PNG chunk {kind.decode('latin-1')!r} (CRC mismatch)")
        yield kind, payload
        if kind == b"IEND":
            return
        pos += 12 + size


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_metadata_chunks(
    *,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    dpi: tuple[float, float] | None = None,
    text: Sequence[tuple[str, str]] = (),
    xmp: bytes | None = None,
) -> list[bytes]:
    """iCCP, pHYs, eXIf, iTXt chunks as Pillow's PNG writer would make them."""
    chunks = []
    if icc_profile:
        chunks.append(png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    if dpi:
        ppm = [int(round(d / 0.0254)) for d in dpi]
        chunks.append(png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1)))
    if exif:
        chunks.append(png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    for key, value in text:
        chunks.append(
            png_chunk(b"iTXt", key.encode("latin-1", "replace")[:79] + b"\x00\x00\x00\x00\x00" + value.encode())
        )
    if xmp:
        chunks.append(png_chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp))
    return chunks


_PNG_COLOUR = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type


def encode_png16(array: np.ndarray, extra_chunks: Sequence[bytes] = (), *, level: int = 4) -> bytes:
    """A 16-bit PNG of a (H, W) or (H, W, C) uint16 array, C in 1..4 (gray, gray+alpha, RGB, RGBA).

    Rows use the Paeth filter, computed in blocks of rows so memory stays near
    one block; ``extra_chunks`` go between IHDR and the image data. zlib level
    4: within a few percent of level 6 in size, without level 6's slow cases.
    """
    a = array if array.ndim == 3 else array[:, :, None]
    height, width, channels = a.shape
    bpp = 2 * channels
    header = struct.pack(">IIBBBBB", width, height, 16, _PNG_COLOUR[channels], 0, 0, 0)
    comp = zlib.compressobj(level)
    idat = []
    block = max(1, (4 << 20) // max(1, width * bpp))
    prev = np.zeros(width * bpp, np.int16)
    for r0 in range(0, height, block):
        rows = np.ascontiguousarray(a[r0 : r0 + block], dtype=">u2").view(np.uint8).reshape(-1, width * bpp)
        cur = rows.astype(np.int16)
        up = np.vstack([prev[None, :], cur[:-1]])
        left = np.zeros_like(cur)
        left[:, bpp:] = cur[:, :-bpp]
        upleft = np.zeros_like(cur)
        upleft[:, bpp:] = up[:, :-bpp]
        p = left + up - upleft
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
        pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        filtered = ((cur - pred) & 0xFF).astype(np.uint8)
        out = np.empty((filtered.shape[0], filtered.shape[1] + 1), np.uint8)
        out[:, 0] = 4
        out[:, 1:] = filtered
        idat.append(comp.compress(out.tobytes()))
        prev = cur[-1]
    idat.append(comp.flush())
    return (
        PNG_SIGNATURE
        + png_chunk(b"IHDR", header)
        + b"".join(extra_chunks)
        + png_chunk(b"IDAT", b"".join(idat))
        + png_chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------
# TIFF


def tiff_clear_orientation(data: bytearray) -> bool:
    """Set the Orientation tag (274) of the first IFD to 1, in place; True if one was changed.

    Decoders disagree on whether they apply it (OpenCV does, even when asked
    not to); with the tag at 1 the caller applies the orientation itself.
    """
    if len(data) < 16 or data[:2] not in (b"II", b"MM"):
        return False
    e = "<" if data[:2] == b"II" else ">"
    magic = struct.unpack_from(e + "H", data, 2)[0]
    if magic == 42:
        offset = struct.unpack_from(e + "I", data, 4)[0]
        count_fmt, entry_size, value_at = "H", 12, 8
    elif magic == 43:
        offset = struct.unpack_from(e + "Q", data, 8)[0]
        count_fmt, entry_size, value_at = "Q", 20, 12
    else:
        return False
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > len(data):
        return False
    count = struct.unpack_from(e + count_fmt, data, offset)[0]
    for k in range(count):
        at = offset + count_size + k * entry_size
        if at + entry_size > len(data):
            return False
        tag, typ = struct.unpack_from(e + "HH", data, at)
        if tag == 274 and typ == 3:  # SHORT, stored in the entry itself
            struct.pack_into(e + "H", data, at + value_at, 1)
            return True
    return False


_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def encode_tiff(
    array: np.ndarray,
    tags: Mapping[int, object] | None = None,
    *,
    compress: bool = True,
    level: int = 4,
    palette: np.ndarray | None = None,
) -> bytes:
    """A little-endian, single-page, chunky TIFF of a (H, W) or (H, W, C) array.

    dtype bool (bilevel, 1 bit, True = white), uint8, uint16, int32 or
    float32; C in 1..4 (gray, gray+alpha, RGB, RGBA; alpha is unassociated).
    With ``palette`` (rows of RGB uint8), a (H, W) uint8 array holds its
    indices. ``compress`` uses deflate, with horizontal differencing for
    integers. ``tags`` adds tags (ICC 34675, XMP 700,
    resolution 282/283/296, descriptive ASCII tags, EXIF 34665 and GPS 34853
    sub-IFDs as dicts); Pillow's IFD writer lays them out.
    """
    from PIL import TiffImagePlugin, TiffTags

    a = array if array.ndim == 3 else array[:, :, None]
    height, width, channels = a.shape
    bilevel = a.dtype == np.bool_
    dtype = np.dtype(np.uint8) if bilevel else a.dtype.newbyteorder("<")
    bits = 1 if bilevel else dtype.itemsize * 8
    predictor = 2 if compress and dtype.kind in "ui" and not bilevel and palette is None else 1
    row_bytes = max(1, (width + 7) // 8 if bilevel else width * channels * dtype.itemsize)
    rows_per_strip = max(1, min(height, (256 << 10) // row_bytes))
    strips = []
    for r0 in range(0, height, rows_per_strip):
        if bilevel:
            block = np.packbits(a[r0 : r0 + rows_per_strip, :, 0], axis=1)
        else:
            block = np.ascontiguousarray(a[r0 : r0 + rows_per_strip], dtype=dtype).reshape(-1, width * channels)
        if predictor == 2:
            diff = block.copy()
            diff[:, channels:] -= block[:, :-channels]
            block = diff
        raw = block.tobytes()
        strips.append(zlib.compress(raw, level) if compress else raw)

    ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    for tag, value in (tags or {}).items():
        ifd[tag] = value
    ifd[256] = width
    ifd[257] = height
    ifd[258] = (bits,) * channels
    ifd[259] = 8 if compress else 1
    ifd[262] = 2 if channels >= 3 else 1
    if palette is not None:
        ifd[262] = 3
        table = np.zeros((256, 3), np.uint16)
        table[: len(palette)] = np.asarray(palette, np.uint16)[:, :3] * 257
        ifd[320] = tuple(int(v) for v in table.T.ravel())
    ifd[277] = channels
    ifd[278] = rows_per_strip
    ifd[279] = tuple(len(s) for s in strips)
    ifd.tagtype[279] = TiffTags.LONG
    ifd[284] = 1
    if predictor != 1:
        ifd[317] = predictor
    if channels in (2, 4):
        ifd[338] = (2,)  # unassociated alpha
    if not bilevel:
        ifd[339] = (_SAMPLE_FORMAT[dtype.kind],) * channels
    # Pillow's IFD writer adds the end of the IFD and its out-of-line data to
    # StripOffsets, so they are given relative to the first strip.
    offsets, pos = [], 0
    for s in strips:
        offsets.append(pos)
        pos += len(s)
    ifd[273] = tuple(offsets)
    ifd.tagtype[273] = TiffTags.LONG
    return b"II*\x00" + struct.pack("<I", 8) + ifd.tobytes(8) + b"".join(strips)
