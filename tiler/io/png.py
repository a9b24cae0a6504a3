"""PNG and APNG: the chunk check, metadata chunks, 8-bit through Pillow, 16-bit through OpenCV, APNG assembly.

Hand-written, each because a library falls short:

* :func:`png_chunks` walks the chunks checking lengths and CRCs before
  OpenCV decodes 16-bit colour (OpenCV's decoder returns a partial image for
  a truncated file where Pillow raises);
* metadata chunks are added to OpenCV's 16-bit output (its encoder writes no
  iCCP, pHYs, eXIf or text), and 16-bit gray+alpha, which neither Pillow nor
  OpenCV writes, has its own small encoder;
* APNG frames are assembled chunk by chunk: Pillow's APNG writer merges
  identical neighbouring frames (and their delays) and crops frames to what
  changed, so an animation would not keep its frame count and timing. Each
  frame is still compressed by Pillow or OpenCV.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image, PngImagePlugin

from tiler.io._image import (
    ContainerError,
    ImageInfo,
    as_hwc,
    check_durations,
    dpi_for,
    icc_for,
    policy_image,
    squeeze,
)

__all__ = [
    "PNG_SIGNATURE",
    "ApngScan",
    "scan_apng",
    "png_chunks",
    "png_chunk",
    "strip_for_pixels",
    "encode",
    "AnimationWriter",
]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_Bytes = TypeVar("_Bytes", bytes, bytearray)


def png_chunks(data: _Bytes) -> Iterator[tuple[_Bytes, _Bytes]]:
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


#: The chunks that make a PNG's pixels (tRNS: a colour key the 16-bit reader applies)
_PIXEL_CHUNKS = {b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND"}


def strip_for_pixels(data: bytearray) -> None:
    """Check every chunk of ``data`` and remove, in place, those that do not make pixels.

    OpenCV's libpng prints its warnings about ancillary chunks (a damaged
    iCCP profile, a broken text chunk) straight on stderr, with no way to
    ask for them per call. The metadata is read by Pillow when the file is
    probed, so OpenCV is handed the pixel chunks alone. Raises
    :class:`~tiler.errors.ContainerError` like :func:`png_chunks`.
    """
    spans, pos = [], 8
    for kind, payload in png_chunks(data):
        end = pos + 12 + len(payload)
        if bytes(kind) not in _PIXEL_CHUNKS:
            spans.append((pos, end))
        pos = end
    for start, end in reversed(spans):  # from the end: earlier offsets stay valid
        del data[start:end]


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


def encode_png16_opencv(a: np.ndarray, extra_chunks: Sequence[bytes] = ()) -> bytes:
    """A 16-bit gray, RGB or RGBA PNG by OpenCV's libpng, ``extra_chunks`` put after IHDR."""
    from filters._cv2 import cv2

    if a.ndim == 3 and a.shape[2] == 3:
        a = a[:, :, ::-1]
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, [2, 1, 0, 3]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(a), [cv2.IMWRITE_PNG_COMPRESSION, 4])
    if not ok:  # pragma: no cover - libpng writes any uint16 array
        raise ValueError("OpenCV could not encode the 16-bit PNG")
    data = buf.tobytes()
    return data[:33] + b"".join(extra_chunks) + data[33:]  # signature and IHDR, then the metadata


def _metadata_chunks(info: ImageInfo, channels: int) -> list[bytes]:
    return png_metadata_chunks(
        icc_profile=icc_for(info.icc_profile, channels),
        exif=info.exif,
        dpi=dpi_for("PNG", info.dpi),
        text=info.text,
        xmp=info.xmp,
    )


def _png16(a: np.ndarray, chunks: Sequence[bytes]) -> bytes:
    if a.ndim == 3 and a.shape[2] == 2:
        return encode_png16(a, chunks)  # neither OpenCV nor Pillow writes 16-bit gray+alpha
    return encode_png16_opencv(a, chunks)


def encode(a: np.ndarray, tmp: Path, info: ImageInfo, quality: int | None) -> None:
    """One frame as PNG; ``quality`` does not apply (PNG is lossless)."""
    a = squeeze(a)
    channels = as_hwc(a).shape[2]
    if a.dtype == np.uint16 and a.ndim == 3:
        tmp.write_bytes(_png16(a, _metadata_chunks(info, channels)))
        return
    pnginfo = PngImagePlugin.PngInfo()
    for key, value in info.text:
        pnginfo.add_text(key, value)
    if info.xmp:
        pnginfo.add_itxt("XML:com.adobe.xmp", info.xmp.decode("utf-8", "replace"))
    im = policy_image(a, info)
    kwargs: dict[str, Any] = {"pnginfo": pnginfo}
    icc = icc_for(info.icc_profile, channels)
    if icc:
        kwargs["icc_profile"] = icc
    if info.exif:
        kwargs["exif"] = info.exif
    if dpi_for("PNG", info.dpi):
        kwargs["dpi"] = info.dpi
    im.save(tmp, "PNG", **kwargs)


# ---------------------------------------------------------------------------
# APNG


@dataclasses.dataclass(frozen=True)
class ApngScan:
    """An APNG's animation control, read from its chunks (no decoding)."""

    n_frames: int  # as Pillow counts them: the default image first when it is not an animation frame
    durations: tuple[int, ...]  # milliseconds per frame (0 for a separate default image)
    loop: int  # acTL num_plays: 0 = forever
    default_separate: bool  # the IDAT image is shown by still-image viewers only


def scan_apng(path: Path) -> ApngScan | None:
    """The animation of a PNG with an acTL chunk, or None for a still PNG.

    Reads chunk headers only (seeking past the data), and the fcTL payloads;
    a still PNG costs the chunks up to its first IDAT.
    """
    loop = 0
    durations: list[int] = []
    animated = False
    default_separate = False
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise ContainerError("not a PNG file")
        while True:
            head = f.read(8)
            if len(head) < 8:
                break  # truncation is the decoder's to report, with the pixels
            size, kind = struct.unpack(">I4s", head)
            if kind == b"acTL" and size >= 8:
                animated = True
                loop = struct.unpack(">II", f.read(8))[1]
                size -= 8
            elif kind == b"fcTL" and size >= 26:
                payload = f.read(26)
                num, den = struct.unpack_from(">HH", payload, 20)
                durations.append(round(1000 * num / (den or 100)))
                size -= 26
            elif kind == b"IDAT":
                if not animated:
                    return None
                default_separate = default_separate or not durations
            elif kind == b"IEND":
                break
            f.seek(size + 4, 1)
    if not animated or not durations:
        return None
    if default_separate:
        durations.insert(0, 0)
    return ApngScan(len(durations), tuple(durations), loop, default_separate)


def _frame_png(a: np.ndarray) -> bytes:
    """A plain PNG of one frame, in the colour type every frame of the animation shares."""
    a = squeeze(a)
    if a.dtype == np.uint16 and a.ndim == 3:
        return _png16(a, ())
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, "PNG")
    return buf.getvalue()


def _fctl(seq: int, width: int, height: int, duration: int) -> bytes:
    delay = max(0, min(0xFFFF, int(duration)))
    return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", seq, width, height, 0, 0, delay, 1000, 0, 0))


class AnimationWriter:
    """An APNG, frame by frame: :meth:`add` each frame as it arrives, then :meth:`finish`.

    Every frame covers the canvas, is not disposed and replaces the one before
    (no blending), so viewers show exactly the given frames. A source whose
    default image was not an animation frame gets its frame 0 back as that
    default image.
    """

    def __init__(self, info: ImageInfo, quality: int | None):
        self.info = info
        self.separate = info.apng_default_separate
        self.head = b""
        self.frames: list[tuple[bytes, int, int]] = []  # (IDAT payload, height, width)
        self.channels = 0

    def add(self, frame: np.ndarray) -> None:
        data = _frame_png(frame)
        if not self.head:
            self.head = data[8:33]  # IHDR: every frame shares the first frame's colour type and depth
            self.channels = as_hwc(frame).shape[2]
        idat = b"".join(p for kind, p in png_chunks(data) if kind == b"IDAT")
        self.frames.append((idat, frame.shape[0], frame.shape[1]))

    def finish(self, tmp: Path, durations: Sequence[int], loop: int | None) -> int:
        """Write the file; returns the frame count."""
        check_durations(tmp, durations, len(self.frames))
        body: list[bytes] = []
        seq = 0
        for k, (idat, h, w) in enumerate(self.frames):
            if not (k == 0 and self.separate):
                body.append(_fctl(seq, w, h, durations[k]))
                seq += 1
            if k == 0:
                body.append(png_chunk(b"IDAT", idat))
            else:
                body.append(png_chunk(b"fdAT", struct.pack(">I", seq) + idat))
                seq += 1
        plays = 0 if loop is None else loop
        actl = png_chunk(b"acTL", struct.pack(">II", len(self.frames) - int(self.separate), plays))
        meta = b"".join(_metadata_chunks(self.info, self.channels))
        tmp.write_bytes(PNG_SIGNATURE + self.head + actl + meta + b"".join(body) + png_chunk(b"IEND", b""))
        return len(self.frames)
